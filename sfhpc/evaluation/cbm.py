"""Critical band masking (CBM, SCIENCE.md section 4): which spatial frequencies a classifier relies on.

Grayscale, contrast-reduced test images get Gaussian noise limited to one-octave bands; the accuracy per
(noise level, band) cell gives a threshold per band, and a Gaussian fitted over band index describes the
classifier's "channel" (bandwidth, centre frequency, peak noise sensitivity).

The module imports numpy and scipy only: the channel fit runs on the login node (``sfhpc cbm fit``), where torch
must not be imported. Only :func:`torch_predictor` needs torch, and imports it when called.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy.optimize import curve_fit

if TYPE_CHECKING:
    import torch

NOISE_SDS: tuple[float, ...] = (0.0, 0.02, 0.04, 0.08, 0.16)
CONTRAST = 0.2
MEAN_LUMINANCE = 0.449
LOWEST_CENTRE_CPI = 1.75
LUMINANCE_WEIGHTS = (0.299, 0.587, 0.114)
MAX_AMPLITUDE = 4.0  # the fit's upper bound on A: thresholds count at most len(NOISE_SDS) - 1 = 4 noise levels
PUBLISHED_START = (1.0, 0.0, 1.0)  # (A, mu, sigma) start of the published fit
MIN_SIGMA = 1e-6  # keeps the Gaussian defined; a real channel is far wider than a millionth of a band

Predictor = Callable[[np.ndarray], np.ndarray]


def band_centres_cpi(image_size: int) -> list[float]:
    """Centres (c/img) of the one-octave CBM bands for square images of ``image_size`` pixels.

    Bands are centred at 1.75 * 2**k c/img and kept while the centre is at most the Nyquist frequency
    (``image_size / 2``). The rule is on the centre, not the upper edge, because the published 224 px set includes
    the 112 c/img band (upper edge 158 c/img): its part above Nyquist along an axis is simply absent from the
    image, while its diagonal part (up to 112 * sqrt(2)) is representable. 224 px gives 7 bands (1.75 .. 112).
    """
    if image_size < 4:
        raise ValueError(f"image_size must be at least 4 px to hold a band, got {image_size}")
    nyquist = image_size / 2
    centres = []
    centre = LOWEST_CENTRE_CPI
    while centre <= nyquist:
        centres.append(centre)
        centre *= 2
    return centres


def _octave_band_mask(height: int, width: int, centre_cpi: float) -> np.ndarray:
    """Boolean mask, in ``rfft2`` layout, of the one-octave band [centre / sqrt(2), centre * sqrt(2)) c/img."""
    fy = np.fft.fftfreq(height, d=1 / height)
    fx = np.fft.rfftfreq(width, d=1 / width)
    radius = np.hypot(fy[:, None], fx[None, :])
    return (radius >= centre_cpi / math.sqrt(2)) & (radius < centre_cpi * math.sqrt(2))


def bandlimited_noise(
    shape: tuple[int, ...], centre_cpi: float, sd: float, generator: np.random.Generator
) -> np.ndarray:
    """Gaussian noise of shape (N, H, W) limited to one octave around ``centre_cpi``, each image with SD ``sd``.

    White noise is filtered in the Fourier domain (a real FFT, since the noise is real: it halves the work), then
    each image is rescaled to exactly ``sd`` so every cell of the CBM grid masks with the nominal noise power. The
    band excludes 0 c/img, so each image's noise has zero mean. ``sd == 0`` gives zeros and draws nothing from
    ``generator``.
    """
    if len(shape) != 3:
        raise ValueError(f"shape must be (N, H, W), got {shape}")
    if sd < 0:
        raise ValueError(f"noise SD must be >= 0, got {sd}")
    _, height, width = shape
    if centre_cpi > min(height, width) / 2:
        raise ValueError(f"band centre {centre_cpi} c/img is above Nyquist for {height}x{width} px images")
    if sd == 0:
        return np.zeros(shape)
    mask = _octave_band_mask(height, width, centre_cpi)
    white = generator.standard_normal(shape)
    noise = np.fft.irfft2(np.fft.rfft2(white) * mask, s=(height, width))
    return noise * (sd / noise.std(axis=(1, 2), keepdims=True))


def to_cbm_images(images: np.ndarray) -> np.ndarray:
    """RGB images (N, 3, H, W), uint8 or float in [0, 1], as CBM test images (N, H, W) float32.

    Grayscale by luminance weights, then contrast reduced to ``CONTRAST`` around ``MEAN_LUMINANCE``, so that
    added noise has headroom before it is clipped to [0, 1].
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be RGB (N, 3, H, W), got shape {images.shape}")
    if images.dtype == np.uint8:
        rgb = images.astype(np.float64) / 255
    else:
        rgb = images.astype(np.float64)
        # A float image in 0..255 would pass silently and give nonsense contrast.
        if rgb.size and (rgb.min() < 0 or rgb.max() > 1):
            raise ValueError(f"float images must lie in [0, 1], got range [{rgb.min()}, {rgb.max()}]")
    gray = np.tensordot(np.asarray(LUMINANCE_WEIGHTS), rgb, axes=([0], [1]))
    centred = gray - gray.mean(axis=(1, 2), keepdims=True)
    return (MEAN_LUMINANCE + CONTRAST * centred).astype(np.float32)


def _cell_accuracy(
    predict: Predictor,
    images: np.ndarray,
    labels: np.ndarray,
    centre_cpi: float,
    sd: float,
    generator: np.random.Generator,
    batch_size: int,
) -> float:
    """Accuracy of ``predict`` on ``images`` with one band's noise at one SD, batch by batch.

    The generator is drawn from batch after batch in order, so the noise (and the result) does not depend on
    ``batch_size``.
    """
    correct = 0
    for start in range(0, len(images), batch_size):
        gray = images[start : start + batch_size]
        noisy = np.clip(gray + bandlimited_noise(gray.shape, centre_cpi, sd, generator), 0, 1)
        batch = np.repeat(noisy[:, None], 3, axis=1).astype(np.float32)
        predicted = np.asarray(predict(batch))
        if predicted.shape != (len(batch),):
            raise ValueError(f"predict must return one label per image, shape ({len(batch)},), got {predicted.shape}")
        correct += int((predicted == labels[start : start + batch_size]).sum())
    return correct / len(images)


def accuracy_grid(
    predict: Predictor,
    images: np.ndarray,
    labels: np.ndarray,
    image_size: int,
    noise_sds: Sequence[float] = NOISE_SDS,
    seed: int = 0,
    batch_size: int = 128,
) -> np.ndarray:
    """Accuracy per (noise level, band) cell, shape (len(noise_sds), number of bands).

    ``images`` are CBM images (N, H, W) from :func:`to_cbm_images`. ``predict`` takes a float32 batch
    (B, 3, H, W) in [0, 1] and returns predicted labels (B,); see :func:`torch_predictor`. Each cell's noise comes
    from its own generator seeded by (seed, level, band), so a cell is reproducible on its own.
    """
    if images.ndim != 3 or images.shape[1:] != (image_size, image_size):
        raise ValueError(f"images must be CBM images (N, {image_size}, {image_size}), got shape {images.shape}")
    if len(images) == 0 or labels.shape != (len(images),):
        raise ValueError(f"need one label per image and at least one image, got {images.shape} and {labels.shape}")
    centres = band_centres_cpi(image_size)
    grid = np.empty((len(noise_sds), len(centres)))
    for level, sd in enumerate(noise_sds):
        for band, centre in enumerate(centres):
            if sd == 0 and band > 0:
                grid[level, band] = grid[level, 0]  # without noise every band sees the same images
                continue
            generator = np.random.default_rng([seed, level, band])
            grid[level, band] = _cell_accuracy(predict, images, labels, centre, sd, generator, batch_size)
    return grid


def torch_predictor(model: torch.nn.Module, device: str = "cpu") -> Predictor:
    """Wrap a classifier that returns logits (B, classes) as a ``predict`` for :func:`accuracy_grid`.

    The model is put in eval mode (batch norm statistics frozen, dropout off) and any input normalisation must
    be part of it, since CBM images are in [0, 1].
    """
    import torch

    model.eval()

    def predict(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            logits = model(torch.from_numpy(batch).to(device))
        if logits.ndim != 2:
            raise ValueError(f"model must return logits (B, classes), got shape {tuple(logits.shape)}")
        return logits.argmax(dim=1).cpu().numpy()

    return predict


def thresholds(accuracy: np.ndarray, chance_level: float = 0.5) -> np.ndarray:
    """Per band, how many noise levels, counted from the highest down, mask it (accuracy <= ``chance_level``).

    ``accuracy`` is (levels, bands) from :func:`accuracy_grid`, level 0 noise-free. Counting stops at the first
    level above the criterion, so a dip at a lower level after a recovery does not count. Only the noisy levels
    (1 .. levels-1) are counted, giving 0 .. levels-1 as SCIENCE.md states: a band that fails even without noise
    is no more masked by noise than one that fails at the lowest noise. ``chance_level`` is the criterion
    (SCIENCE.md: 50%); raise it for datasets with few classes, where 50% may be near chance.
    """
    if accuracy.ndim != 2 or accuracy.shape[0] < 2:
        raise ValueError(f"accuracy must be (levels >= 2, bands), got shape {accuracy.shape}")
    masked = accuracy[:0:-1] <= chance_level  # noisy levels, highest first
    # cumprod stays 1 up to the first unmasked level and is 0 from there on.
    return np.cumprod(masked, axis=0).sum(axis=0).astype(int)


@dataclass(frozen=True)
class ChannelFit:
    """A Gaussian fitted to thresholds over band index, and the channel it describes."""

    amplitude: float  # A, in noise levels
    mu: float  # peak position, in band index
    sigma: float  # SD, in band index (octaves)
    bandwidth_octaves: float  # full width at half maximum
    centre_cpi: float  # peak position in c/img
    peak_sensitivity: float  # 2 ** (A - 4): 1 when the peak band is masked by the lowest noise

    def to_json(self) -> dict:
        """The fit as a JSON-ready dict of plain floats."""
        return {key: float(value) for key, value in asdict(self).items()}


def _gaussian(x: np.ndarray, amplitude: float, mu: float, sigma: float) -> np.ndarray:
    return amplitude * np.exp(-((x - mu) ** 2) / (2 * sigma**2))


def _least_squares(x: np.ndarray, y: np.ndarray, start: Sequence[float]) -> tuple[np.ndarray, float] | None:
    """Bounded least-squares Gaussian fit from ``start``: (parameters, residual sum of squares), or None."""
    bounds = ([0.0, -np.inf, MIN_SIGMA], [MAX_AMPLITUDE, np.inf, np.inf])
    try:
        params, _ = curve_fit(_gaussian, x, y, p0=start, bounds=bounds)
    except RuntimeError:  # no convergence from this start; the other start may converge
        return None
    return params, float(((_gaussian(x, *params) - y) ** 2).sum())


def fit_channel(thresholds: Sequence[float] | np.ndarray) -> ChannelFit:
    """Fit A * exp(-(x - mu)^2 / (2 sigma^2)) to per-band thresholds over band index x = 0 .. n-1.

    Least squares with 0 <= A <= 4, from the published start (A, mu, sigma) = (1, 0, 1) and from a start at the
    data's peak (its height, its first argmax, 1); the better fit is kept. The published start alone lands in a
    poor local optimum when the channel sits far from band 0 (for the human thresholds 0,0,0,0,2,2,0 it gives a
    3.1 octave channel at 0.04 c/img instead of 1.00 octave at 39.6 c/img).
    """
    y = np.asarray(thresholds, dtype=float)
    if y.ndim != 1 or len(y) < 3:
        raise ValueError(f"need thresholds for at least 3 bands to fit 3 parameters, got {list(y)}")
    if not np.isfinite(y).all() or (y < 0).any():
        raise ValueError(f"thresholds must be finite and >= 0, got {list(y)}")
    if not (y > 0).any():
        raise ValueError("no band has a threshold above 0: the channel cannot be fitted")
    x = np.arange(len(y), dtype=float)
    data_start = (min(y.max(), MAX_AMPLITUDE), float(np.argmax(y)), 1.0)
    fits = [fit for start in (PUBLISHED_START, data_start) if (fit := _least_squares(x, y, start)) is not None]
    if not fits:
        raise ValueError(f"the Gaussian fit did not converge for thresholds {list(y)}")
    (amplitude, mu, sigma), _ = min(fits, key=lambda fit: fit[1])
    return ChannelFit(
        amplitude=float(amplitude),
        mu=float(mu),
        sigma=float(sigma),
        bandwidth_octaves=float(2 * math.sqrt(math.log(4)) * sigma),
        centre_cpi=float(LOWEST_CENTRE_CPI * 2**mu),
        peak_sensitivity=float(2 ** (amplitude - 4)),
    )


def parse_thresholds(text: str) -> list[float]:
    """Comma-separated thresholds ("0,0,0,0,2,2,0") as floats; a clear ValueError names a bad item."""
    items = [item.strip() for item in text.split(",")]
    values = []
    for position, item in enumerate(items, start=1):
        try:
            value = float(item)
        except ValueError:
            raise ValueError(f"threshold {position} of {text!r} is not a number: {item!r}") from None
        if not math.isfinite(value):
            raise ValueError(f"threshold {position} of {text!r} is not finite: {item!r}")
        values.append(value)
    return values
