"""The cbm stage: critical band masking of one trained model (SCIENCE.md section 4).

Grayscale, contrast-reduced test images with one-octave band-limited noise at several levels; the model decides
among the data's CBM categories by its mean softmax probability over each category's classes; category accuracy
per (noise level, band) cell, a threshold per band, and the Gaussian channel fitted to the thresholds, or "no
channel" and the reason.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from sfhpc.data import load_dataset
from sfhpc.data.dataset import Split
from sfhpc.evaluation import cbm
from sfhpc.job import PointRun
from sfhpc.stages.cbm import (
    ABOVE_CRITERION_P,
    BAND_CENTRES_CURVE,
    BANDWIDTH,
    CENTRE,
    CHANCE,
    CHANNEL_FIT_ATTR,
    CLEAN_GRAYSCALE_ACCURACY,
    CRITERION_ATTR,
    CRITERION_RULE_ATTR,
    DECISION_RULE_ATTR,
    FITTED,
    LOWPASS_ACCURACY_CURVE,
    LOWPASS_CUTOFFS_CURVE,
    LOWPASS_HALF,
    MIDPOINT,
    NOISE_SDS_CURVE,
    NOT_FITTED,
    PEAK_SENSITIVITY,
    THRESHOLDS_CURVE,
    CbmParams,
    criterion_rule,
)
from sfhpc.stages.common import evaluation_model

STATUS = "status"  # the channel's status ("fitted", or "not fitted: <why>"), written as CHANNEL_FIT_ATTR


def run(point: PointRun[CbmParams]) -> Path:
    """Measure one trained model's spatial-frequency reliance and write the point's result file."""
    params = point.params
    model, trained, plan = evaluation_model(point)
    data_cfg = trained.data
    categories = cbm.Categories.of_classes(data_cfg.class_categories())
    test = load_dataset(data_cfg, point.data_cache).test
    count = min(params.cbm_images or len(test.labels), len(test.labels))
    images = cbm.to_cbm_images(test.images[:count])
    predictor = cbm.torch_predictor(model, categories, plan.device)  # batches of cbm_batch_size images
    accuracy = cbm.accuracy_grid(predictor, images, categories.labels(test.labels[:count]),
                                 data_cfg.image_size, noise_sds=params.cbm_noise_sds, seed=params.cbm_seed,
                                 batch_size=params.cbm_batch_size)
    noise_free = float(accuracy[0].mean())
    criterion = masking_criterion(params.cbm_criterion, noise_free, len(categories.names))
    thresholds = cbm.thresholds(accuracy, criterion)
    channel = _channel(thresholds, noise_free, count, criterion, len(params.cbm_noise_sds))
    metrics: dict[str, float] = {}
    curves: dict[str, np.ndarray] = {}
    if params.cbm_lowpass:
        metrics, curves = lowpass_measurement(predictor, test, categories, data_cfg.image_size, params)
    return point.write_result(
        metrics={BANDWIDTH: channel[BANDWIDTH], CENTRE: channel[CENTRE], PEAK_SENSITIVITY: channel[PEAK_SENSITIVITY],
                 CLEAN_GRAYSCALE_ACCURACY: noise_free, CHANCE: categories.chance, "images": count, **metrics},
        curves={"accuracy": accuracy, THRESHOLDS_CURVE: thresholds, NOISE_SDS_CURVE: np.asarray(params.cbm_noise_sds),
                BAND_CENTRES_CURVE: np.asarray(cbm.band_centres_cpi(data_cfg.image_size)), **curves},
        attrs={"upstream": point.only_upstream(), CHANNEL_FIT_ATTR: channel[STATUS], CRITERION_ATTR: criterion,
               CRITERION_RULE_ATTR: criterion_rule(params.cbm_criterion),
               DECISION_RULE_ATTR: categories.decision_rule, **plan.attrs()},
    )


def masking_criterion(setting: float | str, noise_free_accuracy: float, n_categories: int) -> float:
    """The category accuracy at or below which a noise level masks a band: the configured number, or the midpoint
    between chance (1 / categories) and the model's own noise-free accuracy (a fixed 50% says nothing about a model
    that never reaches it; it is a different measure, named as such in every result)."""
    if setting == MIDPOINT:
        return (1.0 / n_categories + noise_free_accuracy) / 2
    return float(setting)


def lowpass_measurement(predictor: cbm.Predictor, test: Split, categories: cbm.Categories, image_size: int,
                        params: CbmParams) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """The low-pass half-accuracy cut-off (cbm_lowpass) on the first cbm_lowpass_images test images: its metrics
    and curves."""
    count = min(params.cbm_lowpass_images or len(test.labels), len(test.labels))
    cutoffs = cbm.lowpass_cutoffs_cpi(image_size)
    accuracy = cbm.lowpass_accuracy(predictor, test.images[:count], categories.labels(test.labels[:count]), cutoffs,
                                    params.cbm_batch_size)
    return ({LOWPASS_HALF: lowpass_half(cutoffs, accuracy, categories.chance, count), "lowpass_images": count},
            {LOWPASS_CUTOFFS_CURVE: np.asarray(cutoffs), LOWPASS_ACCURACY_CURVE: accuracy})


def lowpass_half(cutoffs: list[float], accuracy: np.ndarray, chance: float, n_images: int) -> float:
    """The low-pass half-accuracy cut-off (c/img), or NaN when the model's unfiltered accuracy is not above chance
    (one-sided binomial p >= ABOVE_CRITERION_P, as for the CBM criterion): half of nothing is no cut-off."""
    if above_criterion_p_value(float(accuracy[-1]), n_images, chance) >= ABOVE_CRITERION_P:
        return math.nan
    return cbm.half_accuracy_cutoff(cutoffs, accuracy, chance)


def above_criterion_p_value(noise_free_accuracy: float, n_images: int, criterion: float) -> float:
    """One-sided binomial p-value of the model's noise-free accuracy on the CBM stimulus (`n_images` images)
    against the criterion: the chance of at least as many right answers from a model whose true accuracy is the
    criterion."""
    from scipy.stats import binom

    correct = round(noise_free_accuracy * n_images)
    return float(binom.sf(correct - 1, n_images, criterion))


def _channel(thresholds: np.ndarray, noise_free_accuracy: float, n_images: int, criterion: float,
             levels: int) -> dict[str, Any]:
    """The fitted channel, or NaNs with the reason there is none: the model's noise-free accuracy is not above the
    criterion (ABOVE_CRITERION_P), the thresholds are flat, or the fit is wider than the bands tested or centred
    outside them. Each is a result of the measurement, not an error."""
    p_value = above_criterion_p_value(noise_free_accuracy, n_images, criterion)
    if p_value >= ABOVE_CRITERION_P:
        return _not_fitted(f"the model's noise-free accuracy on the stimulus, {noise_free_accuracy:.3f} on {n_images} "
                           f"images, is not above the criterion {criterion:.3f} (one-sided binomial p = "
                           f"{p_value:.2g}, not below {ABOVE_CRITERION_P})")
    try:
        fit = cbm.fit_channel(thresholds, levels)
    except ValueError as err:  # NoChannel, or a fit that did not converge
        return _not_fitted(str(err))
    return {BANDWIDTH: float(fit.bandwidth_octaves), CENTRE: float(fit.centre_cpi),
            PEAK_SENSITIVITY: float(fit.peak_sensitivity), STATUS: FITTED}


def _not_fitted(reason: str) -> dict[str, Any]:
    return {BANDWIDTH: math.nan, CENTRE: math.nan, PEAK_SENSITIVITY: math.nan, STATUS: NOT_FITTED + reason}
