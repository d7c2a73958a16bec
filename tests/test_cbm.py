"""Critical band masking: bands, band-limited noise, accuracy grid, thresholds and the channel fit."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

from sfhpc.evaluation import cbm


@pytest.mark.parametrize(
    ("image_size", "n_bands", "highest"),
    [(224, 7, 112.0), (128, 6, 56.0), (32, 4, 14.0)],
)
def test_band_centres_are_octaves_from_1_75_up_to_nyquist(image_size, n_bands, highest):
    centres = cbm.band_centres_cpi(image_size)
    assert centres == [1.75 * 2**k for k in range(n_bands)]
    assert centres[-1] == highest


@pytest.mark.parametrize("centre", [1.75, 7.0, 14.0])
def test_bandlimited_noise_has_the_requested_sd_and_lies_in_the_octave(centre):
    noise = cbm.bandlimited_noise((4, 32, 32), centre, 0.08, np.random.default_rng(0))
    assert noise.shape == (4, 32, 32)
    np.testing.assert_allclose(noise.std(axis=(1, 2)), 0.08, rtol=1e-9)
    power = np.abs(np.fft.fft2(noise)) ** 2
    fy, fx = np.meshgrid(np.fft.fftfreq(32, 1 / 32), np.fft.fftfreq(32, 1 / 32), indexing="ij")
    radius = np.hypot(fy, fx)
    in_band = (radius >= centre / math.sqrt(2)) & (radius < centre * math.sqrt(2))
    assert power[:, in_band].sum() / power.sum() > 0.95


def test_bandlimited_noise_of_sd_zero_is_zero_and_above_nyquist_is_refused():
    rng = np.random.default_rng(0)
    assert not cbm.bandlimited_noise((2, 32, 32), 7.0, 0.0, rng).any()
    with pytest.raises(ValueError, match="above Nyquist"):
        cbm.bandlimited_noise((2, 32, 32), 28.0, 0.1, rng)


def test_to_cbm_images_is_gray_at_reduced_contrast_around_the_mean():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(3, 3, 8, 8), dtype=np.uint8)
    out = cbm.to_cbm_images(images)
    assert out.shape == (3, 8, 8) and out.dtype == np.float32
    np.testing.assert_allclose(out.mean(axis=(1, 2)), cbm.MEAN_LUMINANCE, atol=1e-6)
    gray = np.tensordot([0.299, 0.587, 0.114], images / 255, axes=([0], [1]))
    np.testing.assert_allclose(out.std(axis=(1, 2)), 0.2 * gray.std(axis=(1, 2)), rtol=1e-5)
    np.testing.assert_allclose(cbm.to_cbm_images(images / 255), out)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        cbm.to_cbm_images(images.astype(np.float32))


def _noise_sensitive_predictor(clean: np.ndarray, labels: np.ndarray, n_classes: int):
    """Right when an image is within 0.06 RMS of a clean image (noise SD <= 0.04), a random guess otherwise."""
    guesses = np.random.default_rng(1)
    flat_clean = clean.reshape(len(clean), -1).astype(np.float64)

    def predict(batch: np.ndarray) -> np.ndarray:
        assert batch.dtype == np.float32 and batch.shape[1] == 3 and 0 <= batch.min() and batch.max() <= 1
        flat = batch[:, 0].reshape(len(batch), -1).astype(np.float64)
        rms = np.sqrt(((flat[:, None] - flat_clean[None]) ** 2).mean(axis=2))
        nearest = rms.argmin(axis=1)
        random = guesses.integers(0, n_classes, size=len(batch))
        return np.where(rms.min(axis=1) < 0.06, labels[nearest], random)

    return predict


def test_accuracy_grid_with_a_noise_sensitive_predictor():
    rng = np.random.default_rng(0)
    images = cbm.to_cbm_images(rng.integers(0, 256, size=(100, 3, 32, 32), dtype=np.uint8))
    labels = rng.integers(0, 10, size=100)
    predict = _noise_sensitive_predictor(images, labels, n_classes=10)
    grid = cbm.accuracy_grid(predict, images, labels, image_size=32, batch_size=32)
    assert grid.shape == (5, 4)
    np.testing.assert_array_equal(grid[:3], 1.0)  # SD 0, 0.02, 0.04: every image recognised
    assert (grid[3:] < 0.3).all()  # SD 0.08, 0.16: guesses among 10 classes
    np.testing.assert_array_equal(cbm.thresholds(grid), [2, 2, 2, 2])


def test_accuracy_grid_is_reproducible_and_independent_of_batch_size():
    rng = np.random.default_rng(0)
    images = cbm.to_cbm_images(rng.integers(0, 256, size=(10, 3, 16, 16), dtype=np.uint8))
    labels = np.zeros(10, dtype=int)
    sums = []

    def predict(batch: np.ndarray) -> np.ndarray:  # depends on every pixel, so any change in the noise shows
        sums.append(batch.astype(np.float64).sum(axis=(1, 2, 3)))
        return (sums[-1] * 1e4).astype(int) % 2

    first = cbm.accuracy_grid(predict, images, labels, image_size=16, seed=3, batch_size=4)
    first_sums, sums[:] = np.concatenate(sums), []
    second = cbm.accuracy_grid(predict, images, labels, image_size=16, seed=3, batch_size=10)
    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(first_sums, np.concatenate(sums))


def test_accuracy_grid_refuses_a_predict_that_returns_scores():
    images = np.full((2, 16, 16), cbm.MEAN_LUMINANCE, dtype=np.float32)
    with pytest.raises(ValueError, match="one label per image"):
        cbm.accuracy_grid(lambda batch: np.zeros((len(batch), 10)), images, np.zeros(2, dtype=int), image_size=16)


def test_a_tiny_torch_model_runs_end_to_end():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, kernel_size=3, stride=4),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(4, 3),
    )
    rng = np.random.default_rng(0)
    images = cbm.to_cbm_images(rng.integers(0, 256, size=(8, 3, 32, 32), dtype=np.uint8))
    grid = cbm.accuracy_grid(cbm.torch_predictor(model), images, rng.integers(0, 3, size=8), image_size=32)
    assert grid.shape == (5, len(cbm.band_centres_cpi(32)))
    assert ((grid >= 0) & (grid <= 1)).all()
    assert not model.training


# Columns are bands; rows are noise levels, noise-free first.
THRESHOLD_CASES = {
    "all robust": ([[0.9], [0.9], [0.8], [0.7], [0.6]], [0]),
    "dip then recovery: counting stops at the first level above": ([[0.9], [0.4], [0.6], [0.3], [0.2]], [2]),
    "at the criterion counts as masked": ([[0.9], [0.8], [0.7], [0.5], [0.5]], [2]),
    "failing without noise still counts only noisy levels": ([[0.3], [0.3], [0.3], [0.3], [0.3]], [4]),
    "bands independent": ([[1, 1, 1], [1, 0.4, 1], [1, 0.1, 0.6], [0.9, 0.1, 0.2], [0.4, 0.0, 0.1]], [1, 4, 2]),
}


@pytest.mark.parametrize("case", THRESHOLD_CASES)
def test_thresholds(case):
    accuracy, expected = THRESHOLD_CASES[case]
    result = cbm.thresholds(np.array(accuracy, dtype=float))
    assert result.dtype.kind == "i"
    np.testing.assert_array_equal(result, expected)


def test_thresholds_criterion_is_a_parameter():
    accuracy = np.array([[1.0], [0.8], [0.7], [0.6], [0.55]])
    assert cbm.thresholds(accuracy)[0] == 0
    assert cbm.thresholds(accuracy, chance_level=0.75)[0] == 3


def test_fit_recovers_a_synthetic_gaussian():
    x = np.arange(7)
    fit = cbm.fit_channel(3 * np.exp(-((x - 3.2) ** 2) / (2 * 0.8**2)))
    assert fit.amplitude == pytest.approx(3, abs=1e-3)
    assert fit.mu == pytest.approx(3.2, abs=1e-3)
    assert fit.sigma == pytest.approx(0.8, abs=1e-3)
    assert fit.bandwidth_octaves == pytest.approx(2 * math.sqrt(math.log(4)) * 0.8, abs=1e-3)
    assert fit.centre_cpi == pytest.approx(1.75 * 2**3.2, rel=1e-3)
    assert fit.peak_sensitivity == pytest.approx(0.5, abs=1e-3)


def test_fit_reproduces_the_human_reference_channel():
    fit = cbm.fit_channel(cbm.parse_thresholds("0,0,0,0,2,2,0"))
    assert fit.bandwidth_octaves == pytest.approx(1.00, abs=0.05)
    assert fit.centre_cpi == pytest.approx(39.6, abs=0.5)
    assert set(fit.to_json()) == {"amplitude", "mu", "sigma", "bandwidth_octaves", "centre_cpi", "peak_sensitivity"}


@pytest.mark.parametrize("flat", [[0] * 7, [1] * 7, [4] * 4])
def test_a_flat_profile_has_no_channel(flat):
    with pytest.raises(cbm.NoChannel, match=f"flat threshold profile: all {len(flat)} bands have threshold {flat[0]}"):
        cbm.fit_channel(flat)


@pytest.mark.parametrize("text", ["0,0,x,2", "0,,1", "", "1,nan,2"])
def test_parse_thresholds_refuses_junk(text):
    with pytest.raises(ValueError, match="threshold"):
        cbm.parse_thresholds(text)


def test_parse_thresholds_reads_commas_and_spaces():
    assert cbm.parse_thresholds("0, 0,1 ,2.5") == [0.0, 0.0, 1.0, 2.5]


def test_importing_cbm_does_not_import_torch():
    probe = "import sys, sfhpc.evaluation.cbm; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_masking_criterion_is_fixed_or_midway_to_chance():
    from sfhpc.stages.cbm.run import masking_criterion

    assert masking_criterion(0.5, 0.9, 16) == 0.5
    assert masking_criterion("midpoint", 0.625, 8) == pytest.approx((0.125 + 0.625) / 2)  # chance: 1 / categories


def test_criterion_must_be_an_accuracy_or_midpoint():
    from pydantic import ValidationError

    from sfhpc.stages.cbm import CbmParams

    assert CbmParams(cbm_criterion="midpoint").cbm_criterion == "midpoint"
    with pytest.raises(ValidationError, match="between 0 and 1"):
        CbmParams(cbm_criterion=1.5)
    with pytest.raises(ValidationError):
        CbmParams(cbm_criterion="median")


def test_the_stimulus_test_is_a_binomial_test_against_the_criterion():
    from scipy.stats import binomtest

    from sfhpc.stages.cbm import ABOVE_CRITERION_P
    from sfhpc.stages.cbm.run import above_criterion_p_value

    for correct, criterion in ((29, 0.5), (112, 0.5), (130, 0.5), (79, 0.26)):
        expected = binomtest(correct, 200, criterion, alternative="greater").pvalue
        assert above_criterion_p_value(correct / 200, 200, criterion) == pytest.approx(expected, rel=1e-9)
    # 200 images at the 50% criterion: 112 right (56%) is not well above it, 130 (65%) is.
    assert above_criterion_p_value(112 / 200, 200, 0.5) > ABOVE_CRITERION_P
    assert above_criterion_p_value(130 / 200, 200, 0.5) < 1e-4
