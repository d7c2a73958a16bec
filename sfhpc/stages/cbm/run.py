"""The cbm stage: critical band masking of one trained model (SCIENCE.md section 4).

Grayscale, contrast-reduced test images with one-octave band-limited noise at several levels; accuracy per
(noise level, band) cell, a threshold per band, and the Gaussian channel fitted to the thresholds.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from sfhpc.data import load_dataset
from sfhpc.evaluation import cbm
from sfhpc.job import PointRun
from sfhpc.stages.cbm import (
    BAND_CENTRES_CURVE,
    BANDWIDTH,
    CENTRE,
    CHANNEL_FIT_ATTR,
    CLEAN_GRAYSCALE_ACCURACY,
    PEAK_SENSITIVITY,
    THRESHOLDS_CURVE,
    CbmParams,
)
from sfhpc.stages.common import load_upstream_model

READS_STIMULUS_P = 0.01  # a channel is fitted only when the noise-free accuracy is above chance at this level
STATUS = "status"  # the fitted channel's status ("fitted", or "not fitted: <why>"), written as CHANNEL_FIT_ATTR


def run(point: PointRun[CbmParams]) -> Path:
    """Measure one trained model's spatial-frequency reliance and write the point's result file."""
    params = point.params
    model, trained = load_upstream_model(point)
    data_cfg = trained.data
    test = load_dataset(data_cfg, point.data_cache).test
    count = min(params.cbm_images or len(test.labels), len(test.labels))
    images = cbm.to_cbm_images(test.images[:count])
    accuracy = cbm.accuracy_grid(cbm.torch_predictor(model), images, test.labels[:count], data_cfg.image_size,
                                 noise_sds=params.cbm_noise_sds, seed=params.cbm_seed,
                                 batch_size=params.cbm_batch_size)
    noise_free = float(accuracy[0].mean())
    criterion = masking_criterion(params.cbm_criterion, noise_free, data_cfg.n_classes)
    thresholds = cbm.thresholds(accuracy, criterion)
    channel = _channel(thresholds, noise_free, count, data_cfg.n_classes)
    return point.write_result(
        metrics={BANDWIDTH: channel[BANDWIDTH], CENTRE: channel[CENTRE], PEAK_SENSITIVITY: channel[PEAK_SENSITIVITY],
                 CLEAN_GRAYSCALE_ACCURACY: noise_free, "images": count},
        curves={"accuracy": accuracy, THRESHOLDS_CURVE: thresholds, "noise_sds": np.asarray(params.cbm_noise_sds),
                BAND_CENTRES_CURVE: np.asarray(cbm.band_centres_cpi(data_cfg.image_size))},
        attrs={"upstream": point.only_upstream(), CHANNEL_FIT_ATTR: channel[STATUS], "criterion": criterion},
    )


def masking_criterion(setting: float | str, noise_free_accuracy: float, n_classes: int) -> float:
    """The accuracy at or below which a noise level masks a band: the configured number, or the midpoint between
    chance and the model's own noise-free accuracy (a fixed 50% says nothing about a model that never reaches it)."""
    if setting == "midpoint":
        return (1.0 / n_classes + noise_free_accuracy) / 2
    return float(setting)


def stimulus_p_value(noise_free_accuracy: float, n_images: int, n_classes: int) -> float:
    """One-sided binomial p-value of the model's noise-free accuracy on the CBM stimulus against chance. A model
    that cannot tell the classes apart on gray, contrast-0.2 images even without noise has no thresholds to
    measure: any noise "masks" every band, and the fit would describe chance, not a channel."""
    from scipy.stats import binom

    correct = round(noise_free_accuracy * n_images)
    return float(binom.sf(correct - 1, n_images, 1.0 / n_classes))


def _channel(thresholds: np.ndarray, noise_free_accuracy: float, n_images: int, n_classes: int) -> dict[str, Any]:
    """The fitted channel, or NaNs with the reason: when the model is at chance on the noise-free stimulus, or
    when no band has a threshold (a model that noise never masks has no channel to fit: a result, not an error)."""
    p_reads = stimulus_p_value(noise_free_accuracy, n_images, n_classes)
    if p_reads >= READS_STIMULUS_P:
        return _not_fitted(f"the model does not read the noise-free stimulus: accuracy {noise_free_accuracy:.3f} "
                           f"against chance {1 / n_classes:.3f} on {n_images} images (binomial p = {p_reads:.2g})")
    try:
        fit = cbm.fit_channel(thresholds)
    except ValueError as err:
        return _not_fitted(str(err))
    return {BANDWIDTH: float(fit.bandwidth_octaves), CENTRE: float(fit.centre_cpi),
            PEAK_SENSITIVITY: float(fit.peak_sensitivity), STATUS: "fitted"}


def _not_fitted(reason: str) -> dict[str, Any]:
    return {BANDWIDTH: math.nan, CENTRE: math.nan, PEAK_SENSITIVITY: math.nan, STATUS: f"not fitted: {reason}"}
