"""Datasets. `synthetic` is the embedded default; every loader returns train/val/test splits of uint8 images
(N, 3, H, W) with int64 labels."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sfhpc.config import DataConfig
    from sfhpc.data.synthetic import SyntheticDataset


def load_dataset(config: DataConfig) -> SyntheticDataset:
    """The dataset a sweep's `data` section describes."""
    from sfhpc.data.synthetic import SyntheticSpec, make_synthetic

    return make_synthetic(SyntheticSpec(**config.model_dump(exclude={"kind"})))
