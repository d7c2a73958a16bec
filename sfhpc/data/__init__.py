"""Datasets. `synthetic` is the embedded default, `imagefolder` reads an ImageNet-style class subset; every loader
returns a :class:`Dataset`: train/val/test splits of uint8 images (N, 3, H, W) with int64 labels."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

    from sfhpc.config import DataConfig
    from sfhpc.data.synthetic import SyntheticDataset

SPLITS = ("train", "val", "test")
# DataConfig's keys that only the imagefolder loader reads: left out of the synthetic cache's name, which therefore
# stays what it was before they existed.
IMAGEFOLDER_KEYS = frozenset({"root", "classes_file", "max_per_class"})


@dataclass(frozen=True)
class Split:
    """One split: ``images`` uint8 (N, 3, H, W) in [0, 255]; ``labels`` int64 (N,)."""

    images: np.ndarray
    labels: np.ndarray


@dataclass(frozen=True)
class Dataset:
    """What every loader returns: the three splits and the names of the classes in label order."""

    class_names: tuple[str, ...]
    train: Split
    val: Split
    test: Split


def load_dataset(config: DataConfig, cache_dir: Path | None = None) -> Dataset:
    """The dataset a sweep's `data` section describes. With `cache_dir` (a run folder's data/), the first job
    generates or decodes it and saves it there; the others load it instead of making it again."""
    if config.kind == "imagefolder":
        from sfhpc.data.imagefolder import ImageFolderSpec, load_imagefolder

        spec = ImageFolderSpec(Path(config.root), Path(config.classes_file), config.image_size,
                               config.max_per_class, config.seed)
        return load_imagefolder(spec, cache_dir)
    return _load_synthetic(config, cache_dir)


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


def _read_cache(path: Path, spec) -> SyntheticDataset | None:
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
