"""Datasets. `synthetic` is the embedded default; every loader returns train/val/test splits of uint8 images
(N, 3, H, W) with int64 labels."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sfhpc.config import DataConfig
    from sfhpc.data.synthetic import SyntheticDataset

SPLITS = ("train", "val", "test")


def load_dataset(config: DataConfig, cache_dir: Path | None = None) -> SyntheticDataset:
    """The dataset a sweep's `data` section describes. With `cache_dir` (a run folder's data/), the first job
    generates it and saves it there; the others load it instead of generating it again."""
    from sfhpc.data.synthetic import SyntheticSpec, make_synthetic

    spec = SyntheticSpec(**config.model_dump(exclude={"kind", "neural"}))
    if cache_dir is None:
        return make_synthetic(spec)
    settings = config.model_dump(mode="json", exclude={"neural"})  # the images do not depend on the fMRI data
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

    from sfhpc.data.synthetic import Split, SyntheticDataset

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
