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


def repeat_pearson_ceiling(repeat_scores: np.ndarray) -> float:
    """The mean per-image Pearson r (per_image_pearson's, across components) that a perfect predictor could expect
    against the mean of each image's repeats, estimated from the repeats themselves: `repeat_scores` (repeats, n, k)
    holds each single trial's scores (z-scored and projected as the averages were).

    Each single trial is signal s plus independent noise e. The mean over images and pairs of repeats of the r
    between two repeats estimates rho1 = S / (S + E); the mean of n repeats has reliability R = n rho1 / (1 + (n - 1)
    rho1) (Spearman-Brown), and a predictor that outputs s itself reaches r = sqrt(R) against it. rho1 is pooled over
    images before the transformation: per image it is too noisy (clipped at 0, it would bias pure noise upward). On
    the simulated brain, where s is known, it is a little above the r of s itself (1,500 scenes at 128 px: V1 0.586
    against 0.561, TO 0.668 against 0.658)."""
    scores = np.asarray(repeat_scores, np.float64)
    if scores.ndim != 3 or scores.shape[0] < 2:
        raise ValueError(f"repeat scores must be (repeats >= 2, images, k), got {scores.shape}")
    n = scores.shape[0]
    pairs = [(a, b) for a in range(n) for b in range(a + 1, n)]
    rho1 = float(np.nanmean([per_image_pearson(scores[a], scores[b]) for a, b in pairs]))
    rho1 = min(max(rho1, 0.0), 1.0) if np.isfinite(rho1) else 0.0
    return float(np.sqrt(n * rho1 / (1 + (n - 1) * rho1)))


def _paired(predicted: np.ndarray, measured: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    predicted, measured = np.asarray(predicted, np.float64), np.asarray(measured, np.float64)
    if predicted.shape != measured.shape or predicted.ndim != 2:
        raise ValueError(f"predicted {predicted.shape} and measured {measured.shape} must be equal (images, k)")
    return predicted, measured
