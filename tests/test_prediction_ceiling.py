"""The predictor's ceiling: the validation r a perfect predictor could expect against repeat averages, estimated from
the repeats alone (sfhpc.evaluation.prediction.repeat_pearson_ceiling). Checked against the r of the true signal,
which a simulation knows."""

from __future__ import annotations

import numpy as np
import pytest

from sfhpc.evaluation.prediction import per_image_pearson, repeat_pearson_ceiling


@pytest.mark.parametrize("noise_sd", [0.5, 1.0, 2.0])
def test_the_estimate_matches_the_true_signals_r(noise_sd: float):
    rng = np.random.default_rng(0)
    signal = rng.normal(size=(400, 60)) * np.linspace(3, 0.5, 60)  # components of falling variance, as PCs
    repeats = signal + rng.normal(scale=noise_sd, size=(3, *signal.shape))
    truth = per_image_pearson(signal, repeats.mean(axis=0))  # what a predictor that outputs the signal reaches
    estimate = repeat_pearson_ceiling(repeats)
    assert estimate == pytest.approx(truth.mean(), abs=0.02)
    assert 0 < estimate < 1


def test_noise_alone_has_no_ceiling_and_a_noise_free_signal_a_perfect_one():
    rng = np.random.default_rng(1)
    assert repeat_pearson_ceiling(rng.normal(size=(3, 200, 30))) < 0.2
    same = np.broadcast_to(rng.normal(size=(200, 30)), (3, 200, 30))
    assert repeat_pearson_ceiling(same) == pytest.approx(1.0)


def test_a_single_repeat_is_refused():
    with pytest.raises(ValueError, match="repeats >= 2"):
        repeat_pearson_ceiling(np.zeros((1, 5, 4)))
