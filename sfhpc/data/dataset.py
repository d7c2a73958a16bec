"""The types every image loader returns: a :class:`Dataset` of train/val/test :class:`Split` s of uint8 images
(N, 3, H, W) with int64 labels. A module of its own, below the package's `load_dataset`, so that the loaders
(sfhpc.data.synthetic, sfhpc.data.imagefolder) import it without importing the package that imports them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

SPLITS = ("train", "val", "test")


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
