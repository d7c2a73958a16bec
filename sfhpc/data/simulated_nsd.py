"""A simulated NSD subject: the embedded default's neural data, from a fixed, seeded encoding model.

Images: scenes of the synthetic generator (sfhpc.data.synthetic) at the sweep's image size, from a seed derived
from NeuralConfig.seed (so they are not the classification images); every subject sees the same images, as NSD's
subjects all see the shared images. The first `n_shared` images are the shared (validation) images.

Encoding model, per ROI and voxel (a population-receptive-field energy model with a category term):
  1. Oriented quadrature (log-Gabor) energy of the image's luminance in octave bands centred at size/4, size/8, ...
     c/img (down to 2 c/img), 4 orientations, computed by FFT and resampled onto a POOL_GRID x POOL_GRID map.
  2. Each voxel pools each band's energy over a Gaussian receptive field at its own position, then compresses it
     (square root), and weights bands and orientations by its tuning.
  3. The tuning moves smoothly along the hierarchy V1, V2, V4, VO, PHC, LO, TO (depth 0 to 1): receptive fields
     grow from 3.5% to 30% of the image, the preferred band moves from the finest to the coarsest ones,
     orientation selectivity fades, and a category term (a random tuning over the image's class label) grows from
     none to 60% of the signal variance. Early ROIs thus follow local, oriented, high-frequency energy; higher ROIs
     coarse shape and category structure.
     Planted effects (NeuralConfig.tuning, for positive controls): with `coarse_above_v1` every ROI above V1
     responds to the coarsest band's energy only (2-4 c/img at any image size), with no category term; with
     `coarse_category_above_v1` it responds to that energy and, in place of the category term, to the category as
     the coarse bands alone show it: the class probabilities of a linear discriminant of the image's amplitude
     spectrum up to COARSE_EVIDENCE_CPI c/img (coarse_category_evidence), fitted on the scenes, with the
     hierarchy's category share. A model guided by such an ROI is pushed toward low frequencies by construction: a
     sweep on it checks that the pipeline can see a shift that is there. It says nothing about brains.
  4. Each voxel's signal is scaled to a gain in % signal change (log-normal around 1%) over a baseline.
Every subject's voxels differ (positions, tuning, gains, noise) by a seed derived from (NeuralConfig.seed, subject).

Trials: every image 3 times, as in NSD (whose subjects who finished all sessions saw each of their 10,000 images 3
times), in random order, split into sessions of about 200 trials (at most 4). Averages over 3 trials are what the
noise ceiling is defined for, on the training images as on the shared ones. Gaussian trial noise is scaled per
voxel so that the NSD noise ceiling is what the config asks for. With responses z-scored per session, a voxel
with signal variance S and noise variance N has, in expectation,
sigma_noise^2 = N / (S + N), so ncsnr^2 = (1 - sigma_noise^2) / sigma_noise^2 = S / N = r and the 3-trial ceiling
NC = 100 r / (r + 1/3). Hence r = (NC/100) / (3 (1 - NC/100)) and the noise SD is gain / sqrt(r). That is the
ceiling of the true noise variance; the estimate from n_shared images is noisy and NC is concave in it, so the
estimator is biased low (about 1 point at NC 30% with 100 shared images). The noise is therefore set so that the
*expected estimate* is the target (expected_ceiling, noise_sd_for_ceiling). Voxel ceilings are spread
(beta-distributed) around the ROI's configured mean, which they match exactly before noise is drawn.

Measured: a subject of 7 ROIs x 600 images at 128 px (1,310 voxels, 800 trials), written, takes about 3 s of CPU
on one core of a 2-core AMD EPYC machine (1 s of it the scenes, 1 s the energy maps).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import scipy.fft
import scipy.stats

from sfhpc.config import ROIS, SUBJECTS, Tuning
from sfhpc.data.neural import (
    NeuralDataError,
    RoiTrials,
    TrialDesign,
    check_names,
    check_simulated_settings,
    simulated_ceilings,
    write_canonical,
)
from sfhpc.data.synthetic import CLASS_NAMES, SyntheticSpec, _fft_workers, make_synthetic

if TYPE_CHECKING:
    from sfhpc.config import NeuralConfig

# Bump when the model changes: cached files are named by a digest that includes it.
# 2: every image is shown 3 times (1: only the shared ones were).
SIMULATION_VERSION = 2
N_VOXELS: dict[str, int] = {"V1": 300, "V2": 260, "V4": 200, "VO": 140, "PHC": 120, "LO": 160, "TO": 130}
REPEATS = 3  # trials per image
TRIALS_PER_SESSION = 200  # NSD has 750; at most MAX_SESSIONS sessions keep per-session z-scoring meaningful
MAX_SESSIONS = 4
POOL_GRID = 32  # energy maps are pooled on this grid, whatever the image size
N_ORIENTATIONS = 4
BAND_SIGMA_OCTAVES = 0.42  # log-Gabor radial SD: about one octave at half height
ORIENTATION_SIGMA = np.pi / 8
LOWEST_BAND_CPI = 2.0
COARSE_BAND_WIDTH = 0.35  # coarse_above_v1: SD (in bands) of the tuning to the coarsest band
COARSE_EVIDENCE_CPI = 4.0  # coarse_category_above_v1: the category evidence is read from frequencies up to this
DISCRIMINANT_SHRINKAGE = 0.1  # of the pooled covariance toward its mean variance (a stable inverse)
PLANTED = ("coarse_above_v1", "coarse_category_above_v1")
_STIMULUS_TAG = 0x5EED_0F_B0  # mixed into the image seed so neural images differ from classification images
_QUANTILES = 256  # nodes of the average over the noise-variance estimate's distribution
_IMAGE_CHUNK = 100  # images per FFT batch: bounds the complex temporaries (about 25 MB at 128 px)


@dataclass(frozen=True)
class RoiTuning:
    """How one ROI responds, from its depth in the hierarchy (0 = V1 .. 1 = TO)."""

    depth: float
    rf_sigma: float  # receptive-field SD as a fraction of the image size
    preferred_band: float  # band index, 0 = finest (size/4 c/img), as a fraction of the available bands
    band_width: float  # SD of the band tuning, in octaves
    orientation_concentration: float  # von Mises concentration over orientation (0 = untuned)
    category_share: float  # fraction of the signal variance from the category term


def roi_tuning(roi: str, tuning: Tuning = "hierarchy") -> RoiTuning:
    """The tuning of `roi`, interpolated smoothly along the hierarchy config.ROIS. With tuning `coarse_above_v1` (a
    planted effect, NeuralConfig.tuning) every ROI above V1 keeps its receptive field size and orientation tuning
    but responds to the coarsest band (2-4 c/img) only, with no category term."""
    depth = ROIS.index(roi) / (len(ROIS) - 1)
    hierarchy = RoiTuning(depth=depth, rf_sigma=0.035 * (0.30 / 0.035) ** depth, preferred_band=0.05 + 0.9 * depth,
                          band_width=0.6 + 0.6 * depth, orientation_concentration=2.0 * (1 - depth) ** 2,
                          category_share=0.6 * depth**1.5)
    if tuning in PLANTED and depth > 0:
        return replace(hierarchy, preferred_band=1.0, band_width=COARSE_BAND_WIDTH,
                       category_share=hierarchy.category_share if tuning == "coarse_category_above_v1" else 0.0)
    return hierarchy


# ------------------------------------------------------------------------------------------ images
def image_seed(config: NeuralConfig) -> int:
    """The scenes' seed: derived from NeuralConfig.seed, far from the small seeds classification data uses."""
    return int(np.random.SeedSequence([_STIMULUS_TAG, config.seed]).generate_state(1)[0])


def simulated_images(config: NeuralConfig, image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 (n_images, 3, H, W), int64 labels) of the scenes every simulated subject sees."""
    spec = SyntheticSpec(image_size=image_size, n_classes=len(CLASS_NAMES), n_train=config.n_images, n_val=1,
                         n_test=1, seed=image_seed(config))
    split = make_synthetic(spec).train
    return split.images, split.labels


# ------------------------------------------------------------------------------------------ energy
def band_frequencies(image_size: int) -> np.ndarray:
    """Centre frequencies (c/img) of the octave bands: size/4, size/8, ... down to LOWEST_BAND_CPI."""
    n_bands = int(np.floor(np.log2(image_size / 4 / LOWEST_BAND_CPI))) + 1
    return image_size / 4 / 2.0 ** np.arange(n_bands)


def _working_size(image_size: int, frequency: float) -> int:
    """Grid on which a band's response is computed: its filter is negligible above 2.4 x its centre (3 SDs), so
    the spectrum is cropped to an even size with Nyquist 2.5 x the centre (or the whole image)."""
    return min(image_size, 2 * int(np.ceil(2.5 * frequency)))


def _log_gabor_filters(size: int, frequency: float) -> np.ndarray:
    """float32 (orientations, size, size) on the fft2 grid of a size x size image (frequencies in c/img). One-sided
    in orientation, so the filtered image is complex and its squared modulus is the quadrature (phase-invariant)
    energy."""
    f = np.fft.fftfreq(size, 1 / size)
    fy, fx = f[:, None], f[None, :]
    radius = np.hypot(fx, fy)
    radial = np.exp(-(np.log2(np.where(radius > 0, radius, 1.0) / frequency) ** 2) / (2 * BAND_SIGMA_OCTAVES**2))
    radial[radius == 0] = 0.0
    filters = np.empty((N_ORIENTATIONS, size, size), dtype=np.float32)
    for o in range(N_ORIENTATIONS):
        offset = np.angle(np.exp(1j * (np.arctan2(fy, fx) - np.pi * o / N_ORIENTATIONS)))  # one half-plane passes
        filters[o] = radial * np.exp(-(offset**2) / (2 * ORIENTATION_SIGMA**2))
    return filters


def _crop_spectrum(spectrum: np.ndarray, size: int) -> np.ndarray:
    """The (..., size, size) low-frequency block of a full (..., H, H) fft2 spectrum, in fft2 order."""
    h = spectrum.shape[-1]
    if size == h:
        return spectrum
    keep = np.r_[0:size // 2, h - size // 2:h]
    return spectrum[..., keep[:, None], keep[None, :]]


def _resample(maps: np.ndarray, size: int) -> np.ndarray:
    """Resample (..., H, H) real maps to (..., size, size) by cropping or padding their spectrum (ideal low-pass),
    keeping their mean."""
    h = maps.shape[-1]
    if h == size:
        return maps
    spectrum = scipy.fft.rfft2(maps, workers=_fft_workers())
    half = min(h, size) // 2
    out = np.zeros((*maps.shape[:-2], size, size // 2 + 1), dtype=spectrum.dtype)
    out[..., :half, :half + 1] = spectrum[..., :half, :half + 1]
    out[..., -half:, :half + 1] = spectrum[..., -half:, :half + 1]
    return scipy.fft.irfft2(out, s=(size, size), workers=_fft_workers()) * (size / h) ** 2


def _luminance(images: np.ndarray) -> np.ndarray:
    """float32 (n, H, W) luminance in [0, 1] of uint8 (n, 3, H, W) images (Rec. 601 weights)."""
    weights = np.array([0.299, 0.587, 0.114], dtype=np.float32)[:, None, None]
    return (images.astype(np.float32) / 255 * weights).sum(axis=1)


def energy_maps(images: np.ndarray) -> np.ndarray:
    """float32 (n, bands, orientations, POOL_GRID, POOL_GRID): oriented band energy of each image's luminance."""
    size = images.shape[-1]
    frequencies = band_frequencies(size)
    working = [_working_size(size, f) for f in frequencies]
    # Scaled so that a response on a cropped grid has the amplitude it would have on the full one.
    filters = [_log_gabor_filters(w, f) * (w / size) ** 2 for w, f in zip(working, frequencies, strict=True)]
    maps = np.empty((len(images), len(frequencies), N_ORIENTATIONS, POOL_GRID, POOL_GRID), dtype=np.float32)
    for start in range(0, len(images), _IMAGE_CHUNK):
        luminance = _luminance(images[start:start + _IMAGE_CHUNK])
        spectrum = scipy.fft.fft2(luminance - luminance.mean(axis=(1, 2), keepdims=True), workers=_fft_workers())
        for b, (size_b, filters_b) in enumerate(zip(working, filters, strict=True)):
            response = scipy.fft.ifft2(_crop_spectrum(spectrum, size_b)[:, None] * filters_b, overwrite_x=True,
                                       workers=_fft_workers())
            energy = np.square(response.real)
            energy += np.square(response.imag)
            maps[start:start + _IMAGE_CHUNK, b] = _resample(energy, POOL_GRID)
    return maps


def _pooled_at(spectra: np.ndarray, sigma: float, centres: np.ndarray) -> np.ndarray:
    """float32 (n, bands, orientations, voxels): energy maps (given by their rfft2 `spectra` on the POOL_GRID)
    blurred by a Gaussian of SD `sigma` (fraction of the image), read at each voxel's centre ((voxels, 2) x, y as
    fractions) by bilinear interpolation. A blurred map is smooth, so it is synthesised on a coarser grid, still
    fine enough for bilinear reading: Nyquist frequency 1.2 / sigma c/img, where the blur is below 1e-12."""
    grid = min(POOL_GRID, 2 * int(np.ceil(1.2 / sigma)))
    half = grid // 2
    rows = np.r_[0:half, POOL_GRID - half:POOL_GRID]
    cropped = spectra[..., rows, :half + 1]
    fy = np.fft.fftfreq(grid, 1 / grid)[:, None]
    fx = np.arange(half + 1)[None, :]
    blur = np.exp(-2 * np.pi**2 * sigma**2 * (fx**2 + fy**2)).astype(np.float32)
    blurred = scipy.fft.irfft2(cropped * blur, s=(grid, grid), workers=_fft_workers())
    blurred = blurred.reshape(*spectra.shape[:-2], grid * grid)
    blurred *= np.float32((grid / POOL_GRID) ** 2)
    position = centres * grid - 0.5
    low = np.floor(position).astype(int)
    frac = (position - low).astype(np.float32)
    x0, y0 = low[:, 0] % grid, low[:, 1] % grid
    x1, y1 = (x0 + 1) % grid, (y0 + 1) % grid
    fx_, fy_ = frac[:, 0], frac[:, 1]
    return (np.take(blurred, y0 * grid + x0, axis=-1) * ((1 - fx_) * (1 - fy_))
            + np.take(blurred, y0 * grid + x1, axis=-1) * (fx_ * (1 - fy_))
            + np.take(blurred, y1 * grid + x0, axis=-1) * ((1 - fx_) * fy_)
            + np.take(blurred, y1 * grid + x1, axis=-1) * (fx_ * fy_))


# ------------------------------------------------------------------------------------------ category
def one_hot(labels: np.ndarray, n_classes: int = len(CLASS_NAMES)) -> np.ndarray:
    """float64 (n, n_classes): each image's class as a row of zeros with a one: the category term's input."""
    return np.eye(n_classes)[labels]


def coarse_spectrum_features(images: np.ndarray, max_cpi: float = COARSE_EVIDENCE_CPI) -> np.ndarray:
    """float64 (n, features): log amplitude of each image's luminance spectrum at the frequencies from 1 to `max_cpi`
    c/img (half plane): what the coarse bands show, whatever the shape's position or contrast sign."""
    size = images.shape[-1]
    fy = np.fft.fftfreq(size, 1 / size)[:, None]
    fx = np.fft.rfftfreq(size, 1 / size)[None, :]
    radius = np.hypot(fy, fx)
    keep = (radius >= 1) & (radius <= max_cpi) & ~((fx == 0) & (fy < 0))  # each real image's coefficient once
    features = []
    for start in range(0, len(images), _IMAGE_CHUNK):
        luminance = _luminance(images[start:start + _IMAGE_CHUNK])
        amplitude = np.abs(scipy.fft.rfft2(luminance, workers=_fft_workers())[:, keep]) / size**2
        features.append(np.log(amplitude.astype(np.float64) + 1e-6))
    return np.concatenate(features)


def coarse_category_evidence(images: np.ndarray, labels: np.ndarray, n_classes: int = len(CLASS_NAMES)
                             ) -> np.ndarray:
    """float64 (n, n_classes): the category as the coarse bands alone show it: class probabilities of a linear
    discriminant (class means, a shrunk pooled covariance, equal priors) of coarse_spectrum_features, fitted on
    these images. Rows sum to 1."""
    features = coarse_spectrum_features(images)
    features = (features - features.mean(axis=0)) / np.maximum(features.std(axis=0), 1e-12)
    means = np.stack([features[labels == c].mean(axis=0) if (labels == c).any() else np.zeros(features.shape[1])
                      for c in range(n_classes)])
    within = features - means[labels]
    covariance = within.T @ within / max(len(features) - n_classes, 1)
    covariance = ((1 - DISCRIMINANT_SHRINKAGE) * covariance
                  + DISCRIMINANT_SHRINKAGE * np.trace(covariance) / len(covariance) * np.eye(len(covariance)))
    projected = np.linalg.solve(covariance, means.T)  # (features, classes)
    scores = features @ projected - 0.5 * np.sum(means.T * projected, axis=0)
    scores -= scores.max(axis=1, keepdims=True)
    probabilities = np.exp(scores)
    return probabilities / probabilities.sum(axis=1, keepdims=True)


def category_inputs(images: np.ndarray, labels: np.ndarray, tuning: Tuning) -> np.ndarray:
    """What the category term of every ROI reads: the class itself, or (coarse_category_above_v1) its coarse-band
    evidence."""
    return coarse_category_evidence(images, labels) if tuning == "coarse_category_above_v1" else one_hot(labels)


# ------------------------------------------------------------------------------------------ voxels
def _standardize(values: np.ndarray) -> np.ndarray:
    """Columns to zero mean and unit SD over images (rows)."""
    centred = values - values.mean(axis=0)
    return centred / np.maximum(centred.std(axis=0), 1e-12)


def _energy_tuning(rng: np.random.Generator, tuning: RoiTuning, n_bands: int, n_voxels: int) -> np.ndarray:
    """(voxels, bands, orientations) positive weights: a Gaussian over band index around the ROI's preferred band
    (jittered per voxel) times a von Mises over orientation around each voxel's preferred orientation."""
    preferred = tuning.preferred_band * (n_bands - 1) + rng.normal(0, 0.3, n_voxels)
    bands = np.arange(n_bands)
    band_weight = np.exp(-((bands[None, :] - preferred[:, None]) ** 2) / (2 * tuning.band_width**2))
    theta = np.pi * np.arange(N_ORIENTATIONS) / N_ORIENTATIONS
    preferred_theta = rng.uniform(0, np.pi, n_voxels)
    tuning_curve = np.cos(2 * (theta[None, :] - preferred_theta[:, None]))
    orientation_weight = np.exp(tuning.orientation_concentration * tuning_curve)
    weights = band_weight[:, :, None] * orientation_weight[:, None, :]
    return weights / weights.sum(axis=(1, 2), keepdims=True)


def voxel_signals(rng: np.random.Generator, roi: str, spectra: np.ndarray, category: np.ndarray,
                  n_voxels: int, tuning: Tuning = "hierarchy") -> np.ndarray:
    """float64 (n_images, voxels) noise-free responses with unit variance over images, from the energy maps'
    rfft2 `spectra` (n_images, bands, orientations, POOL_GRID, POOL_GRID // 2 + 1) and the category term's input
    (n_images, classes): one_hot(labels), or coarse_category_evidence (category_inputs)."""
    roi_tuned = roi_tuning(roi, tuning)
    centres = rng.uniform(0.05, 0.95, (n_voxels, 2))
    pooled = np.sqrt(np.maximum(_pooled_at(spectra, roi_tuned.rf_sigma, centres), 0))  # compressive, as in pRF models
    energy = np.einsum("nbov,vbo->nv", pooled, _energy_tuning(rng, roi_tuned, spectra.shape[1], n_voxels))
    category = category @ rng.normal(size=(len(CLASS_NAMES), n_voxels))  # one-hot rows pick a class's row exactly
    share = roi_tuned.category_share
    signal = np.sqrt(1 - share) * _standardize(energy) + np.sqrt(share) * _standardize(category)
    return _standardize(signal)


def voxel_ceilings(rng: np.random.Generator, mean_ceiling: float, n_voxels: int) -> np.ndarray:
    """Per-voxel noise ceilings (%), beta-distributed around `mean_ceiling` and shifted to match it exactly."""
    mean = mean_ceiling / 100
    concentration = 30.0
    draws = rng.beta(mean * concentration, (1 - mean) * concentration, n_voxels)
    return 100 * np.clip(draws - draws.mean() + mean, 0.01, 0.99)


def expected_ceiling(noise_fraction: np.ndarray, n_repeated: int) -> np.ndarray:
    """E[estimated NC] (%) of voxels whose z-scored noise variance is `noise_fraction` (N / (S + N)) when the
    NSD formula estimates it from `n_repeated` images with 3 trials. The estimate of noise_fraction is
    noise_fraction * chi2(k) / k with k = 2 n_repeated degrees of freedom, and NC is concave in it, so the
    estimator is biased low (about 1 point at NC 30% with 100 images): averaged here over equal-probability
    quantiles of that distribution."""
    dof = (REPEATS - 1) * n_repeated
    spread = scipy.stats.chi2.ppf((np.arange(_QUANTILES) + 0.5) / _QUANTILES, dof) / dof
    estimate = np.asarray(noise_fraction)[..., None] * spread
    signal = np.maximum(1 - estimate, 0)
    return (100 * signal / (signal + estimate / REPEATS)).mean(axis=-1)


def noise_sd_for_ceiling(gain: np.ndarray, ceiling: np.ndarray, n_repeated: int) -> np.ndarray:
    """Trial-noise SD that gives voxels of signal SD `gain` an expected estimated noise ceiling `ceiling` (%).
    Without the estimator's bias, r = S/N = (NC/100) / (3 (1 - NC/100)) and SD = gain / sqrt(r) (module
    docstring); here the noise fraction v = N / (S + N) is found by inverting expected_ceiling(v), and
    SD = gain * sqrt(v / (1 - v)). Ceilings too low to reach with `n_repeated` images get the highest noise."""
    grid = np.linspace(0.001, 0.995, 2000)
    expected = expected_ceiling(grid, n_repeated)  # decreasing in the noise fraction
    fraction = np.interp(ceiling, expected[::-1], grid[::-1])
    return gain * np.sqrt(fraction / (1 - fraction))


# ------------------------------------------------------------------------------------------ trials
def simulated_design(rng: np.random.Generator, n_images: int, n_shared: int) -> TrialDesign:
    """Each image REPEATS times, shuffled and split into sessions; the first `n_shared` images are the shared
    (validation) ones."""
    shared = np.arange(n_images) < n_shared
    trial_image = rng.permutation(np.repeat(np.arange(n_images), REPEATS))
    n_sessions = int(np.clip(len(trial_image) // TRIALS_PER_SESSION, 1, MAX_SESSIONS))
    trial_session = np.repeat(np.arange(1, n_sessions + 1), np.diff(np.linspace(0, len(trial_image),
                                                                                n_sessions + 1).astype(int)))
    return TrialDesign(image_ids=np.arange(n_images, dtype=np.int64), shared=shared,
                       trial_image=trial_image.astype(np.int64), trial_session=trial_session.astype(np.int64))


def simulated_roi_trials(config: NeuralConfig, subject: str, roi: str, spectra: np.ndarray, category: np.ndarray,
                         design: TrialDesign) -> RoiTrials:
    """One ROI's single-trial responses (% signal change) for one subject."""
    rng = np.random.default_rng([config.seed, SUBJECTS.index(subject), ROIS.index(roi)])
    n_voxels = N_VOXELS[roi]
    signal = voxel_signals(rng, roi, spectra, category, n_voxels, config.tuning)
    gain = rng.lognormal(np.log(1.0), 0.3, n_voxels)
    baseline = rng.normal(0.5, 0.5, n_voxels)
    ceilings = voxel_ceilings(rng, simulated_ceilings(config)[roi], n_voxels)
    # The NSD estimator uses every image with 3 trials: here all of them.
    noise_sd = noise_sd_for_ceiling(gain, ceilings, int((np.bincount(design.trial_image) == REPEATS).sum()))
    noise = rng.standard_normal((design.n_trials, n_voxels)) * noise_sd
    trials = baseline + gain * signal[design.trial_image] + noise
    return RoiTrials(name=roi, trials=trials.astype(np.float32), voxel_index=np.arange(n_voxels, dtype=np.int64))


def make_simulated_subject(config: NeuralConfig, subject: str, image_size: int, path: Path | str,
                           rois: tuple[str, ...] = ROIS) -> None:
    """Generate `subject`'s simulated responses in every ROI and write its canonical file at `path` (atomically).
    The same config, subject and image size always give identical arrays."""
    check_simulated_settings(config)
    if subject not in SUBJECTS:
        raise NeuralDataError(f"unknown subject {subject!r}; subjects: {', '.join(SUBJECTS)}")
    images, labels = simulated_images(config, image_size)
    # The energy maps' spectra, computed once: every ROI's receptive-field pooling starts from them.
    spectra = scipy.fft.rfft2(energy_maps(images), workers=_fft_workers())
    category = category_inputs(images, labels, config.tuning)
    design = simulated_design(np.random.default_rng([config.seed, SUBJECTS.index(subject)]), config.n_images,
                              config.n_shared)
    settings = {"simulation_version": SIMULATION_VERSION, "seed": config.seed, "image_seed": image_seed(config),
                "tuning": config.tuning,
                "image_size": image_size, "n_images": config.n_images, "n_shared": config.n_shared,
                "noise_ceiling": {roi: simulated_ceilings(config)[roi] for roi in rois},
                "voxels": {roi: N_VOXELS[roi] for roi in rois}}
    write_canonical(path, subject, "simulated", design,
                    (simulated_roi_trials(config, subject, roi, spectra, category, design) for roi in rois),
                    images=np.ascontiguousarray(images.transpose(0, 2, 3, 1)),
                    provenance={"simulation": json.dumps(settings)})


def simulation_digest(config: NeuralConfig, image_size: int) -> str:
    """12 hex digits naming a simulated subject's settings: any change to them (or to the simulation) is a new
    file in the cache."""
    settings = {"simulation_version": SIMULATION_VERSION, "image_size": image_size, "n_images": config.n_images,
                "n_shared": config.n_shared, "noise_ceiling": simulated_ceilings(config), "seed": config.seed,
                "tuning": config.tuning}
    return hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


def simulated_subject_file(config: NeuralConfig, subject: str, cache_dir: Path, image_size: int) -> Path:
    """`subject`'s simulated canonical file, cache_dir/neural/<subject>-<digest>.h5, generated when absent (written
    atomically, so jobs racing to make it are harmless)."""
    check_names([subject], [], config.kind)
    path = Path(cache_dir) / "neural" / f"{subject}-{simulation_digest(config, image_size)}.h5"
    if not path.exists():
        make_simulated_subject(config, subject, image_size, path)
    return path
