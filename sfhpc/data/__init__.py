"""Datasets. `synthetic` is the embedded default, `imagefolder` reads an ImageNet-style class subset; every loader
returns a :class:`Dataset`: train/val/test splits of uint8 images (N, 3, H, W) with int64 labels (`load_dataset`).
The fMRI responses that guide training are one canonical file per subject (`neural_file`), simulated or NSD's."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

from sfhpc.data.dataset import SPLITS, Dataset, Split

if TYPE_CHECKING:
    from sfhpc.config import DataConfig, NeuralConfig
    from sfhpc.data.synthetic import SyntheticDataset, SyntheticSpec

# DataConfig's keys that only the imagefolder loader reads: left out of the synthetic cache's name, which therefore
# stays what it was before they existed.
IMAGEFOLDER_KEYS = frozenset({"root", "classes_file", "max_per_class"})


def load_dataset(config: DataConfig, cache_dir: Path | None = None) -> Dataset:
    """The dataset a sweep's `data` section describes. With `cache_dir` (a run folder's data/), the first job
    generates or decodes it and saves it there; the others load it instead of making it again."""
    if config.kind == "imagefolder":
        from sfhpc.data.imagefolder import ImageFolderSpec, load_imagefolder

        assert config.root is not None and config.classes_file is not None  # DataConfig requires both for the kind
        spec = ImageFolderSpec(Path(config.root), Path(config.classes_file), config.image_size,
                               config.max_per_class, config.seed)
        return load_imagefolder(spec, cache_dir)
    return _load_synthetic(config, cache_dir)


def neural_file(config: NeuralConfig, subject: str, cache_dir: Path, image_size: int) -> Path:
    """The canonical neural-data file (sfhpc.data.neural) of `subject` that a sweep's `data.neural` section names.
    Simulated: cache_dir/neural/<subject>-<digest>.h5, generated when absent (sfhpc.data.simulated_nsd). NSD:
    <config.dir>/<subject>.h5, which must exist and hold that subject (checked again here: the file may have changed
    since `sweep expand`)."""
    if config.kind == "nsd":
        from sfhpc.data.neural import checked_nsd_file

        return checked_nsd_file(config, subject)
    from sfhpc.data.simulated_nsd import simulated_subject_file

    return simulated_subject_file(config, subject, cache_dir, image_size)


def _load_synthetic(config: DataConfig, cache_dir: Path | None) -> SyntheticDataset:
    from sfhpc.data.synthetic import SyntheticSpec, make_synthetic

    spec = SyntheticSpec(**config.model_dump(exclude={"kind", "neural", *IMAGEFOLDER_KEYS}))
    if cache_dir is None:
        return make_synthetic(spec)
    # the images do not depend on the fMRI data, nor on the imagefolder loader's keys
    settings = config.model_dump(mode="json", exclude={"neural", *IMAGEFOLDER_KEYS})
    digest = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    path = Path(cache_dir) / f"synthetic-{digest}.npz"
    cached = _read_cache(path, spec)
    if cached is not None:
        return cached
    dataset = make_synthetic(spec)
    _write_cache(path, dataset)
    return dataset


def _read_cache(path: Path, spec: SyntheticSpec) -> SyntheticDataset | None:
    import numpy as np

    from sfhpc.data.synthetic import SyntheticDataset

    try:
        with np.load(path) as arrays:
            splits = {name: Split(arrays[f"{name}_images"], arrays[f"{name}_labels"]) for name in SPLITS}
            names = tuple(str(n) for n in arrays["class_names"])
    except (OSError, KeyError, ValueError):
        return None  # absent or damaged: generate again
    return SyntheticDataset(spec=spec, class_names=names, **splits)


def _write_cache(path: Path, dataset: SyntheticDataset) -> None:
    import numpy as np

    from sfhpc.results import atomic_write

    arrays = {f"{name}_{part}": getattr(getattr(dataset, name), part)
              for name in SPLITS for part in ("images", "labels")}

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would append .npz to a path
            np.savez(f, class_names=np.asarray(dataset.class_names), **arrays)

    try:
        atomic_write(path, write)
    except OSError:
        pass  # a cache that cannot be written only costs time
