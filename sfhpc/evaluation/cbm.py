"""Critical band masking (CBM, SCIENCE.md section 4): which spatial frequencies a classifier relies on.

Grayscale, contrast-reduced test images get Gaussian noise limited to one-octave bands; the accuracy per
(noise level, band) cell gives a threshold per band, and a Gaussian fitted over band index describes the
classifier's "channel" (bandwidth, centre frequency, peak noise sensitivity).

Decisions are among categories (:class:`Categories`): the classifier's softmax probabilities are averaged over each
category's classes and the most probable category is its answer; accuracy is category accuracy. With every class
its own category this is the argmax over classes. Thresholds that describe no channel (a flat profile, a fit wider
than the bands tested or centred outside them) raise :class:`NoChannel`, never give a fit.

The module imports numpy and scipy only: the channel fit runs on the login node (``sfhpc cbm fit``), where torch
must not be imported. Only :func:`torch_probabilities` (and :func:`torch_predictor`, which uses it) needs torch,
and imports it when called.
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
PUBLISHED_START = (1.0, 0.0, 1.0)  # (A, mu, sigma) start of the published fit
MIN_SIGMA = 1e-6  # keeps the Gaussian defined; a real channel is far wider than a millionth of a band
MIN_BANDS = 3  # a Gaussian has 3 parameters
# The most bands of any image size sfhpc measures: data.image_size is at most 1024 px, whose bands are centred at
# 1.75 .. 448 c/img (9 bands; 224 px has 7). More thresholds than that describe no image of a sweep.
MAX_IMAGE_SIZE = 1024

Predictor = Callable[[np.ndarray], np.ndarray]
Probabilities = Callable[[np.ndarray], np.ndarray]  # a float32 batch (B, 3, H, W) -> class probabilities (B, C)


class NoChannel(ValueError):
    """Thresholds that describe no channel: a flat profile, or a fit wider than the bands tested or centred outside
    them. The message gives the reason."""


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


MAX_BANDS = len(band_centres_cpi(MAX_IMAGE_SIZE))


def _radial_frequency(height: int, width: int) -> np.ndarray:
    """Each coefficient's radial frequency in c/img, in ``rfft2`` layout (height, width // 2 + 1)."""
    fy = np.fft.fftfreq(height, d=1 / height)
    fx = np.fft.rfftfreq(width, d=1 / width)
    return np.hypot(fy[:, None], fx[None, :])


def _octave_band_mask(height: int, width: int, centre_cpi: float) -> np.ndarray:
    """Boolean mask, in ``rfft2`` layout, of the one-octave band [centre / sqrt(2), centre * sqrt(2)) c/img."""
    radius = _radial_frequency(height, width)
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


@dataclass(frozen=True)
class Categories:
    """The categories CBM decides among and the category of each of a classifier's classes (label order)."""

    names: tuple[str, ...]  # in order of first appearance among the classes
    of_class: np.ndarray  # (classes,) int: the index into `names` of each class label's category

    @classmethod
    def of_classes(cls, class_categories: Sequence[str]) -> Categories:
        """From the category name of each class label (DataConfig.categories); at least 2 distinct categories."""
        names = tuple(dict.fromkeys(class_categories))
        if len(names) < 2:
            raise ValueError(f"CBM decides among at least 2 categories, got {list(names)}")
        index = {name: position for position, name in enumerate(names)}
        return cls(names, np.asarray([index[name] for name in class_categories], dtype=np.int64))

    @property
    def n_classes(self) -> int:
        return len(self.of_class)

    @property
    def chance(self) -> float:
        """Chance accuracy of a decision among the categories (SCIENCE.md section 4: 1/16 for the study's)."""
        return 1.0 / len(self.names)

    @property
    def decision_rule(self) -> str:
        """The rule in words, as results and reports name it."""
        if len(self.names) == self.n_classes:
            return f"argmax over {self.n_classes} classes (each its own category)"
        return f"mean probability over {len(self.names)} categories ({self.n_classes} classes)"

    def labels(self, class_labels: np.ndarray) -> np.ndarray:
        """The category index of each class label."""
        return self.of_class[np.asarray(class_labels)]

    def decide(self, probabilities: np.ndarray) -> np.ndarray:
        """Per image, the category with the highest mean probability over its classes (B,), from class
        probabilities (B, classes). A tie goes to the category that appears first."""
        probabilities = np.asarray(probabilities, dtype=np.float64)
        if probabilities.ndim != 2 or probabilities.shape[1] != self.n_classes:
            raise ValueError(f"need class probabilities (B, {self.n_classes}) for {self.n_classes} classes in "
                             f"{len(self.names)} categories, got shape {probabilities.shape}")
        membership = np.zeros((self.n_classes, len(self.names)))
        membership[np.arange(self.n_classes), self.of_class] = 1.0
        return (probabilities @ (membership / membership.sum(axis=0))).argmax(axis=1)


def category_predictor(probabilities: Probabilities, categories: Categories) -> Predictor:
    """A ``predict`` for :func:`accuracy_grid` that answers with categories: ``probabilities`` gives each image's
    class probabilities, and the answer is the category of highest mean probability (:meth:`Categories.decide`).
    Pass category labels (:meth:`Categories.labels`) to :func:`accuracy_grid` with it."""

    def predict(batch: np.ndarray) -> np.ndarray:
        return categories.decide(probabilities(batch))

    return predict


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
    (B, 3, H, W) in [0, 1] and returns predicted labels (B,), compared with ``labels``: categories with
    :func:`category_predictor` and :meth:`Categories.labels` (see :func:`torch_predictor`). Each cell's noise comes
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


# ------------------------------------------------------------------------------------- low-pass accuracy
# A second measure of spatial-frequency reliance, not the study's: the model's accuracy on its own test images with
# every frequency above a cut-off removed, and the cut-off at which it keeps half its accuracy above chance. A model
# that recognises images from their low frequencies keeps its accuracy down to a lower cut-off. It needs no noise
# and no fit, and it reads the images the model was trained on (colour, full contrast), where the CBM stimulus is a
# grayscale, low-contrast version of them.
LOWPASS_LOWEST_CPI = 2.0  # the lowest cut-off; then one every half octave


def lowpass_cutoffs_cpi(image_size: int) -> list[float]:
    """Cut-offs (c/img) of the low-pass measurement: 2 * 2**(j/2), j = 0, 1, ..., below the highest frequency a
    square image of ``image_size`` px holds (its corner, Nyquist * sqrt(2)). The unfiltered image follows them."""
    corner = image_size / 2 * math.sqrt(2)
    cutoffs = []
    j = 0
    while (cutoff := LOWPASS_LOWEST_CPI * 2 ** (j / 2)) < corner * (1 - 1e-9):  # 128 px: 90.51 is the corner
        cutoffs.append(cutoff)
        j += 1
    return cutoffs


def lowpass_accuracy(predict: Predictor, images: np.ndarray, labels: np.ndarray, cutoffs: Sequence[float],
                     batch_size: int = 128) -> np.ndarray:
    """Accuracy of ``predict`` on ``images`` (N, 3, H, W), uint8 or float in [0, 1], low-passed at each cut-off,
    then unfiltered: shape (len(cutoffs) + 1,). The low pass is ideal and radial, per colour channel: frequencies
    below the cut-off (and the mean) are kept, the rest removed, and the result clipped to [0, 1]. Each batch's
    spectrum is computed once for all cut-offs."""
    if images.ndim != 4 or images.shape[1] != 3 or images.shape[2] != images.shape[3]:
        raise ValueError(f"images must be square RGB (N, 3, H, H), got shape {images.shape}")
    if len(images) == 0 or labels.shape != (len(images),):
        raise ValueError(f"need one label per image and at least one image, got {images.shape} and {labels.shape}")
    size = images.shape[-1]
    radius = _radial_frequency(size, size)
    masks = [(radius < cutoff) | (radius == 0) for cutoff in cutoffs]  # the mean is always kept
    correct = np.zeros(len(cutoffs) + 1)
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size]
        pixels = batch.astype(np.float64) / 255 if batch.dtype == np.uint8 else batch.astype(np.float64)
        spectrum = np.fft.rfft2(pixels)
        truth = labels[start:start + batch_size]
        for index, kept in enumerate(masks):
            filtered = np.clip(np.fft.irfft2(spectrum * kept, s=(size, size)), 0, 1).astype(np.float32)
            correct[index] += int((np.asarray(predict(filtered)) == truth).sum())
        correct[-1] += int((np.asarray(predict(pixels.astype(np.float32))) == truth).sum())
    return correct / len(images)


def half_accuracy_cutoff(cutoffs: Sequence[float], accuracy: Sequence[float] | np.ndarray, chance: float) -> float:
    """The lowest cut-off (c/img) at which the low-passed images are recognised half as far above chance as the
    unfiltered ones (``accuracy[-1]``): the first crossing of that level, interpolated in log frequency between the
    cut-offs around it, or linearly from (0 c/img, chance) below the lowest one; the unfiltered point sits half an
    octave above the last cut-off (at or past the image's corner frequency). NaN when the unfiltered accuracy is not
    above chance."""
    if len(accuracy) != len(cutoffs) + 1 or not cutoffs:
        raise ValueError(f"need one accuracy per cut-off and the unfiltered one, got {len(accuracy)} for "
                         f"{len(cutoffs)} cut-offs")
    clean = float(accuracy[-1])
    if not clean > chance:
        return math.nan
    level = chance + (clean - chance) / 2
    points = [*cutoffs, cutoffs[-1] * math.sqrt(2)]
    index = next(i for i, value in enumerate(accuracy) if value >= level)  # the unfiltered one at the latest
    value = float(accuracy[index])
    if index == 0:
        return points[0] * (level - chance) / (value - chance)
    low, high = math.log2(points[index - 1]), math.log2(points[index])
    before = float(accuracy[index - 1])
    return float(2 ** (low + (level - before) / (value - before) * (high - low)))


def torch_probabilities(model: torch.nn.Module, device: str | torch.device = "cpu") -> Probabilities:
    """Wrap a classifier that returns logits (B, classes) as a function from a float32 batch to its softmax
    probabilities (B, classes), for :func:`category_predictor`.

    The model is put in eval mode (batch norm statistics frozen, dropout off) and any input normalisation must
    be part of it, since CBM images are in [0, 1].
    """
    import torch

    model.eval()

    def probabilities(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            logits = model(torch.from_numpy(batch).to(device))
        if logits.ndim != 2:
            raise ValueError(f"model must return logits (B, classes), got shape {tuple(logits.shape)}")
        return torch.softmax(logits.double(), dim=1).cpu().numpy()

    return probabilities


def torch_predictor(model: torch.nn.Module, categories: Categories | None = None,
                    device: str | torch.device = "cpu") -> Predictor:
    """A ``predict`` for :func:`accuracy_grid` from a classifier that returns logits: its category by mean softmax
    probability over each category's classes (SCIENCE.md section 4), or, without ``categories``, its class (argmax
    over classes: every class its own category)."""
    probabilities = torch_probabilities(model, device)
    if categories is not None:
        return category_predictor(probabilities, categories)
    return lambda batch: probabilities(batch).argmax(axis=1)


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


def _least_squares(x: np.ndarray, y: np.ndarray, start: Sequence[float], max_amplitude: float
                   ) -> tuple[np.ndarray, float] | None:
    """Bounded least-squares Gaussian fit from ``start``: (parameters, residual sum of squares), or None."""
    bounds = ([0.0, -np.inf, MIN_SIGMA], [max_amplitude, np.inf, np.inf])
    try:
        params, _ = curve_fit(_gaussian, x, y, p0=start, bounds=bounds)
    except RuntimeError:  # no convergence from this start; the other start may converge
        return None
    return params, float(((_gaussian(x, *params) - y) ** 2).sum())


def fit_channel(thresholds: Sequence[float] | np.ndarray, levels: int = len(NOISE_SDS)) -> ChannelFit:
    """Fit A * exp(-(x - mu)^2 / (2 sigma^2)) to per-band thresholds over band index x = 0 .. n-1.

    ``levels``: the noise levels of the measurement (the noise-free one included), so thresholds lie in
    0 .. levels-1 and bound A; peak sensitivity is 2 ** (A - (levels-1)) (SCIENCE.md: 2 ** (A - 4) for 5 levels).
    Least squares with 0 <= A <= levels-1, from the published start (A, mu, sigma) = (1, 0, 1) and from a start at
    the data's peak (its height, its first argmax, 1); the better fit is kept. The published start alone lands in a
    poor local optimum when the channel sits far from band 0 (for the human thresholds 0,0,0,0,2,2,0 it gives a
    3.1 octave channel at 0.04 c/img instead of 1.00 octave at 39.6 c/img).

    Raises ValueError for input that is not a threshold profile (fewer than 3 or more than MAX_BANDS bands, values
    outside 0 .. levels-1, no convergence) and :class:`NoChannel` for one that describes no channel: a flat profile
    (all thresholds equal, all zero included: the Gaussian's width and centre are then undetermined, and least
    squares returns whatever it drifts to, thousands of octaves), or a fit wider than the bands tested (n bands
    span n octaves) or centred outside them (beyond the outer bands' edges, half a band past their centres).
    """
    y = _checked_profile(thresholds, levels)
    if np.all(y == y[0]):
        raise NoChannel(f"flat threshold profile: all {len(y)} bands have threshold {y[0]:g}, so no band is masked "
                        "more than another and there is no channel to fit")
    x = np.arange(len(y), dtype=float)
    max_amplitude = float(levels - 1)
    data_start = (min(y.max(), max_amplitude), float(np.argmax(y)), 1.0)
    fits = [found for start in (PUBLISHED_START, data_start)
            if (found := _least_squares(x, y, start, max_amplitude)) is not None]
    if not fits:
        raise ValueError(f"the Gaussian fit did not converge for thresholds {_profile_text(y)}")
    (amplitude, mu, sigma), _ = min(fits, key=lambda found: found[1])
    fit = ChannelFit(
        amplitude=float(amplitude),
        mu=float(mu),
        sigma=float(sigma),
        bandwidth_octaves=float(2 * math.sqrt(math.log(4)) * sigma),
        centre_cpi=float(LOWEST_CENTRE_CPI * 2**mu),
        peak_sensitivity=float(2 ** (amplitude - max_amplitude)),
    )
    _check_within_tested_bands(fit, len(y))
    return fit


def _checked_profile(thresholds: Sequence[float] | np.ndarray, levels: int) -> np.ndarray:
    """The thresholds as floats, or a ValueError that says what is wrong with them."""
    if levels < 2:
        raise ValueError(f"a measurement has at least 2 noise levels (the noise-free one and one more), got {levels}")
    y = np.asarray(thresholds, dtype=float)
    if y.ndim != 1 or not MIN_BANDS <= len(y) <= MAX_BANDS:
        count = len(y) if y.ndim == 1 else y.size
        raise ValueError(f"need thresholds for {MIN_BANDS} to {MAX_BANDS} bands (a Gaussian has 3 parameters; "
                         f"{MAX_IMAGE_SIZE} px images, the largest a sweep takes, have {MAX_BANDS} bands, 224 px "
                         f"have 7), got {count}")
    if not np.isfinite(y).all() or (y < 0).any() or (y > levels - 1).any():
        bad = next(value for value in y if not (math.isfinite(value) and 0 <= value <= levels - 1))
        raise ValueError(f"thresholds count noise levels, 0 to {levels - 1} with {levels} levels, got {bad:g} in "
                         f"{_profile_text(y)}")
    return y


def _check_within_tested_bands(fit: ChannelFit, n_bands: int) -> None:
    """NoChannel when the fitted Gaussian is wider than the bands tested or centred outside them."""
    if fit.bandwidth_octaves > n_bands:
        raise NoChannel(f"the fitted bandwidth, {fit.bandwidth_octaves:.3g} octaves, is wider than the {n_bands} "
                        f"octaves the {n_bands} bands span: the thresholds do not bound a channel")
    lowest, highest = LOWEST_CENTRE_CPI * 2**-0.5, LOWEST_CENTRE_CPI * 2 ** (n_bands - 0.5)
    if not -0.5 <= fit.mu <= n_bands - 0.5:
        raise NoChannel(f"the fitted centre, {fit.centre_cpi:.3g} c/img, lies outside the bands tested "
                        f"({lowest:.3g} to {highest:.3g} c/img): the thresholds do not locate a channel")


def _profile_text(values: np.ndarray, most: int = 12) -> str:
    """Thresholds as a message shows them: comma-separated, the first `most` of a long list."""
    shown = ",".join(f"{value:g}" for value in values[:most])
    return shown + (f",... ({len(values)} values)" if len(values) > most else "")


def check_threshold_counts(thresholds: Sequence[float], levels: int = len(NOISE_SDS)) -> list[int]:
    """Thresholds as a measurement gives them (``sfhpc cbm fit``): 3 to MAX_BANDS bands, each a whole number of
    noise levels 0 .. levels-1. Returns them as ints; a ValueError says what is wrong."""
    y = _checked_profile(thresholds, levels)
    fractional = [position for position, value in enumerate(y, start=1) if value != round(value)]
    if fractional:
        raise ValueError(f"threshold {fractional[0]} of {_profile_text(y)} is {y[fractional[0] - 1]:g}: a threshold "
                         "counts noise levels, a whole number")
    return [int(value) for value in y]


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
