"""Frequency responses of the spectral-steering bands, in cycles per image (c/img).

Numpy only: config validation on the login node calls :func:`check_band_fits` without importing torch.
Responses are defined in c/img, so a band means the same thing at any image size; the torch filters in
:mod:`sfhpc.models.spectral` are built to match these functions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

BANDS: tuple[str, ...] = ("none", "lsf", "human", "lsf+human")

# The reference image size at which the LSF blur sigma is specified (SCIENCE.md section 3).
REFERENCE_SIZE_PX = 224
# The human channel's frequency axis is log2(f / 1.75 c/img).
HUMAN_BASE_CPI = 1.75
# Norm order of the smooth maximum that unites the LSF and human pass bands (see band_gain).
UNION_NORM_P = 4


@dataclass(frozen=True)
class BandParams:
    """Steering strengths: LSF blur sigma and the human channel's log-Gaussian centre, width and floor.

    ``human_floor`` False gives a pure band-pass (DC gain 0); True gives gain (0.5 + 1.5 g) / 2, which
    passes a quarter of the out-of-band content.
    """

    lsf_sigma_px224: float = 1.5
    human_mu: float = 4.5
    human_s: float = 0.4246
    human_floor: bool = False


def _check_band(band: str) -> None:
    if band not in BANDS:
        raise ValueError(f"unknown band {band!r}; expected one of {', '.join(BANDS)}")


def lsf_gain(f_cpi: np.ndarray, params: BandParams = BandParams()) -> np.ndarray:
    """Gaussian blur response exp(-2 pi^2 sigma^2 (f/224)^2), sigma in px at 224 px (0.5 near 28 c/img)."""
    f = np.asarray(f_cpi, dtype=np.float64)
    return np.exp(-2 * np.pi**2 * params.lsf_sigma_px224**2 * (f / REFERENCE_SIZE_PX) ** 2)


def human_gain(f_cpi: np.ndarray, params: BandParams = BandParams()) -> np.ndarray:
    """Radial log-Gaussian g(f) = exp(-(log2(f/1.75) - mu)^2 / (2 s^2)); g(0) = 0.

    With ``params.human_floor`` the gain is (0.5 + 1.5 g) / 2 instead (0.25 at DC, 1 at the centre).
    """
    f = np.asarray(f_cpi, dtype=np.float64)
    g = np.zeros_like(f)
    positive = f > 0  # log2(0) is -inf: the log-Gaussian is exactly 0 at DC
    octaves = np.log2(f[positive] / HUMAN_BASE_CPI) - params.human_mu
    g[positive] = np.exp(-(octaves**2) / (2 * params.human_s**2))
    if params.human_floor:
        return (0.5 + 1.5 * g) / 2
    return g


def band_gain(band: str, f_cpi: np.ndarray, params: BandParams = BandParams()) -> np.ndarray:
    """Amplitude gain of ``band`` at radial frequencies ``f_cpi`` (c/img).

    'lsf+human' is "LSF plus human channel" as one front-end passing both bands: the union of the two
    pass bands, taken as a smooth maximum, the L4 norm (lsf^4 + human^4)^(1/4). A hard
    ``np.maximum`` has a kink where the gains cross (about 28 c/img, gain 0.5) that no 31-tap kernel
    can realise: the built filter would miss it by 0.08. The L4 union is within 0.015 of the larger gain
    more than 4 c/img from the crossing (pure variant), at most 0.1 above it at the crossing (0.59
    instead of 0.5), never above 1.001, and the built kernels match it to within 0.035 at 128 and
    224 px (tests/test_spectral.py).
    """
    _check_band(band)
    f = np.asarray(f_cpi, dtype=np.float64)
    if band == "none":
        return np.ones_like(f)
    if band == "lsf":
        return lsf_gain(f, params)
    if band == "human":
        return human_gain(f, params)
    lsf, human = lsf_gain(f, params), human_gain(f, params)
    return (lsf**UNION_NORM_P + human**UNION_NORM_P) ** (1 / UNION_NORM_P)


def band_upper_edge_cpi(band: str, params: BandParams = BandParams()) -> float:
    """Highest frequency (c/img) the band needs the images to represent.

    0 for 'none' and 'lsf' (a blur never needs more than the image has); for 'human' and 'lsf+human' the
    human channel's upper half-maximum edge 1.75 * 2**(mu + s * sqrt(2 ln 2)) (56 c/img by default).
    """
    _check_band(band)
    if band in ("none", "lsf"):
        return 0.0
    half_max_octaves = params.human_s * math.sqrt(2 * math.log(2))
    return HUMAN_BASE_CPI * 2 ** (params.human_mu + half_max_octaves)


def check_band_fits(band: str, image_size: int, params: BandParams = BandParams()) -> None:
    """Raise ValueError if ``band`` needs frequencies above the Nyquist frequency of ``image_size`` px.

    A band above Nyquist would silently filter nothing but aliases, so it is a configuration error.
    """
    edge = band_upper_edge_cpi(band, params)
    nyquist = image_size / 2
    if edge > nyquist:
        min_size = 2 * math.ceil(edge)
        raise ValueError(
            f"band {band!r} needs frequencies up to {edge:.1f} c/img but {image_size} px images have "
            f"Nyquist {nyquist:g} c/img; use image_size >= {min_size} or lower the band "
            f"(human_mu={params.human_mu}, human_s={params.human_s})"
        )
