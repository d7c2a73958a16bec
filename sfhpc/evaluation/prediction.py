"""How well predicted neural responses match measured ones (SCIENCE.md section 2). Numpy only."""

from __future__ import annotations

import numpy as np


def per_image_pearson(predicted: np.ndarray, measured: np.ndarray) -> np.ndarray:
    """Pearson r between the predicted and the measured response vector of each image (rows of (n, k) arrays).
    An image whose vectors are constant has r = NaN: there is no pattern to correlate."""
    predicted, measured = _paired(predicted, measured)
    p = predicted - predicted.mean(axis=1, keepdims=True)
    m = measured - measured.mean(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (p * m).sum(axis=1) / np.sqrt((p * p).sum(axis=1) * (m * m).sum(axis=1))


def r2_per_component(predicted: np.ndarray, measured: np.ndarray) -> np.ndarray:
    """Coefficient of determination of each component (column) over images: 1 - SSE / total sum of squares."""
    predicted, measured = _paired(predicted, measured)
    residual = ((measured - predicted) ** 2).sum(axis=0)
    total = ((measured - measured.mean(axis=0)) ** 2).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return 1 - residual / total


def _paired(predicted: np.ndarray, measured: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    predicted, measured = np.asarray(predicted, np.float64), np.asarray(measured, np.float64)
    if predicted.shape != measured.shape or predicted.ndim != 2:
        raise ValueError(f"predicted {predicted.shape} and measured {measured.shape} must be equal (images, k)")
    return predicted, measured
