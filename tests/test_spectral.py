"""Spectral-steering bands and filters: the built kernels match their defining frequency responses."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sfhpc.models import bands, spectral
from sfhpc.models.bands import BandParams

STEERED_BANDS = ("lsf", "human", "lsf+human")
TEST_FREQS_CPI = (4, 8, 16, 28, 40, 56)
# Achieved max |response - band_gain| over the whole DFT grid up to Nyquist, default params:
#   128 px: lsf 0.027, human 0.035, lsf+human 0.034;  224 px: lsf 0.005, human 0.002, lsf+human 0.021.
# At the test frequencies (<= 56 c/img) the errors are at most 0.021.
TOLERANCE = 0.05
GRID_TOLERANCE = 0.04


def _kernel_response(kernel: torch.Tensor, image_size: int) -> np.ndarray:
    """|DFT| of the kernel zero-padded to image_size x image_size with its centre at the origin."""
    k = kernel.detach().double().numpy()
    half = k.shape[0] // 2
    padded = np.zeros((image_size, image_size))
    padded[: k.shape[0], : k.shape[1]] = k
    padded = np.roll(padded, (-half, -half), axis=(0, 1))  # circular: centre tap at (0, 0)
    return np.abs(np.fft.fft2(padded))


def _radial_freqs(image_size: int) -> np.ndarray:
    freqs = np.fft.fftfreq(image_size, 1 / image_size)
    return np.hypot(freqs[None, :], freqs[:, None])


# --- bands (numpy) ------------------------------------------------------------------------------------


def test_human_channel_numbers() -> None:
    centre = 1.75 * 2**4.5
    assert centre == pytest.approx(39.6, abs=0.05)
    gain = bands.band_gain("human", np.array([0.0, 28.0, centre, 56.0]))
    np.testing.assert_allclose(gain, [0.0, 0.5, 1.0, 0.5], atol=0.005)
    assert bands.band_upper_edge_cpi("human") == pytest.approx(56.0, abs=0.01)
    assert bands.band_upper_edge_cpi("lsf+human") == bands.band_upper_edge_cpi("human")
    assert bands.band_upper_edge_cpi("lsf") == 0.0
    assert bands.band_upper_edge_cpi("none") == 0.0


def test_lsf_gain_half_amplitude_near_28_cpi() -> None:
    assert bands.lsf_gain(np.array(0.0)) == pytest.approx(1.0)
    assert bands.lsf_gain(np.array(28.0)) == pytest.approx(0.5, abs=0.03)


def test_human_floor_variant() -> None:
    params = BandParams(human_floor=True)
    gain = bands.human_gain(np.array([0.0, 1.75 * 2**4.5, 500.0]), params)
    np.testing.assert_allclose(gain, [0.25, 1.0, 0.25], atol=1e-6)


def test_union_band_passes_both_bands() -> None:
    f = np.linspace(0, 64, 641)
    lsf, human = bands.lsf_gain(f), bands.human_gain(f)
    union = bands.band_gain("lsf+human", f)
    assert np.all(union >= np.maximum(lsf, human) - 1e-12)
    assert union.max() < 1.002
    np.testing.assert_allclose(bands.band_gain("none", f), 1.0)


def test_unknown_band_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown band 'hsf'"):
        bands.band_gain("hsf", np.array([1.0]))


def test_band_above_nyquist_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match=r"56\.0 c/img but 64 px images have Nyquist 32 c/img.*>= 112"):
        spectral.build_filter("human", 64)
    with pytest.raises(ValueError, match="'lsf\\+human' needs frequencies up to 56.0"):
        bands.check_band_fits("lsf+human", 100)
    bands.check_band_fits("human", 112)
    bands.check_band_fits("lsf", 32)  # a blur fits any size


# --- filters (torch) ----------------------------------------------------------------------------------


@pytest.mark.parametrize("image_size", [128, 224])
@pytest.mark.parametrize("band", STEERED_BANDS)
def test_filter_matches_its_frequency_response(band: str, image_size: int) -> None:
    module = spectral.build_filter(band, image_size)
    response = _kernel_response(module.kernel[0, 0], image_size)
    for f in TEST_FREQS_CPI:
        assert response[0, f] == pytest.approx(bands.band_gain(band, np.array(f)), abs=TOLERANCE), f
        k = round(f / math.sqrt(2))  # nearest DFT bin on the diagonal
        expected = bands.band_gain(band, np.array(k * math.sqrt(2)))
        assert response[k, k] == pytest.approx(expected, abs=TOLERANCE), f
    f_grid = _radial_freqs(image_size)
    assert np.abs(response - bands.band_gain(band, f_grid)).max() < GRID_TOLERANCE


@pytest.mark.parametrize("band", STEERED_BANDS)
def test_floor_variant_filters_match_too(band: str) -> None:
    params = BandParams(human_floor=True)
    module = spectral.build_filter(band, 128, params)
    response = _kernel_response(module.kernel[0, 0], 128)
    assert np.abs(response - bands.band_gain(band, _radial_freqs(128), params)).max() < GRID_TOLERANCE


@pytest.mark.parametrize("band", STEERED_BANDS)
@pytest.mark.parametrize("f_cpi", [8, 28, 40, 56])
def test_grating_is_scaled_by_the_band_gain(band: str, f_cpi: int) -> None:
    size = 128
    x = torch.arange(size, dtype=torch.float64)
    wave = torch.cos(2 * math.pi * f_cpi * x / size)
    # Grating along x in channel 0, along y in channel 1, a constant in channel 2.
    image = torch.stack(
        [
            0.5 + 0.25 * wave.expand(size, size),
            0.5 + 0.25 * wave[:, None].expand(size, size),
            torch.full((size, size), 0.5, dtype=torch.float64),
        ]
    )[None].float()
    out = spectral.build_filter(band, size)(image)[0].double()
    expected = float(bands.band_gain(band, np.array(f_cpi)))
    for channel, grating in ((0, wave.expand(size, size)), (1, wave[:, None].expand(size, size))):
        amplitude = (out[channel] * grating).sum() / (grating * grating).sum() / 0.25
        assert float(amplitude) == pytest.approx(expected, abs=TOLERANCE)


def test_kernel_sizes_scale_with_image_size() -> None:
    assert spectral.kernel_size_for(224) == 31
    assert spectral.kernel_size_for(128) == 17
    assert spectral.kernel_size_for(32) == 7
    assert spectral.build_filter("human", 224).kernel.shape == (3, 1, 31, 31)
    assert spectral.lsf_kernel(224).shape == (9, 9)  # half-width ceil(2.5 * 1.5) = 4


def test_lsf_kernel_sums_to_one_and_keeps_constant_images() -> None:
    for size in (32, 128, 224):
        assert float(spectral.lsf_kernel(size).sum()) == pytest.approx(1.0, abs=1e-6)
    image = torch.full((2, 3, 64, 64), 0.7)
    torch.testing.assert_close(spectral.build_filter("lsf", 64)(image), image)


def test_pure_human_band_passes_no_dc() -> None:
    image = torch.full((1, 3, 128, 128), 0.6)
    out = spectral.build_filter("human", 128)(image)
    assert float(out.mean().abs()) < 0.01 * 0.6


def test_kernel_is_a_buffer_not_a_parameter() -> None:
    module = spectral.build_filter("human", 128)
    assert list(module.parameters()) == []
    assert "kernel" in module.state_dict()
    assert not module.kernel.requires_grad


def test_none_band_builds_no_filter() -> None:
    assert spectral.build_filter("none", 64) is None


def test_filter_refuses_other_image_sizes() -> None:
    module = spectral.build_filter("lsf", 64)
    with pytest.raises(ValueError, match="built for 3 x 64 x 64"):
        module(torch.zeros(1, 3, 32, 32))


def test_filter_passes_gradients_to_its_input() -> None:
    # Attacks differentiate through the front-end.
    image = torch.rand(1, 3, 128, 128, requires_grad=True)
    spectral.build_filter("lsf+human", 128)(image).square().sum().backward()
    assert image.grad is not None and float(image.grad.abs().sum()) > 0


@pytest.mark.parametrize("band", STEERED_BANDS)
def test_filter_equals_circular_depthwise_convolution(band: str) -> None:
    # The filter is computed with FFTs; its definition is a per-channel cross-correlation with circular padding.
    module = spectral.build_filter(band, 128)
    images = torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    pad = module.kernel.shape[-1] // 2
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad), mode="circular")
    expected = torch.nn.functional.conv2d(padded, module.kernel, groups=3)
    torch.testing.assert_close(module(images), expected, atol=1e-5, rtol=0)


def test_filter_is_a_cross_correlation_not_a_convolution() -> None:
    # An asymmetric kernel tells the two apart: a unit impulse comes out as the kernel mirrored.
    kernel = torch.zeros(7, 7)
    kernel[3, 5] = 1.0  # taps the pixel two to the right
    image = torch.zeros(1, 3, 16, 16)
    image[..., 8, 8] = 1.0
    out = spectral.SpectralFilter(kernel, 16, "test")(image)
    assert out[0, 0, 8, 6] == pytest.approx(1.0, abs=1e-6)
    assert float(out.abs().sum()) == pytest.approx(3.0, abs=1e-5)
