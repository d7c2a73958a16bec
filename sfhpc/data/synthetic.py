"""The embedded default dataset: seeded, shape-coded RGB images with natural-image-like spectra.

Each image is a textured shape (the class) drawn at a random position, scale, tilt (+-30 degrees) and colour on a
coloured background whose amplitude spectrum falls as 1/f with random phases. Colour, brightness and
texture are drawn independently of the class, so only the shape (and therefore its edges, which carry
energy at every spatial frequency) identifies it. That keeps the class recoverable after band-pass
filtering, which the spectral-steering experiments rely on.

Numpy only: this module is imported on the login node and by the local executor without torch.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.fft

from sfhpc.data.dataset import Dataset, Split  # the types every loader returns (Split was defined here first)

CLASS_NAMES: tuple[str, ...] = ("disk", "square", "triangle", "cross", "ring", "star", "bars", "ellipse")
MIN_IMAGE_SIZE = 32

# Images are generated in fixed-size chunks so that peak memory stays small (a few tens of MB at
# 128 px). The chunk size is a constant so the random stream, and hence the arrays, never depend on it.
_CHUNK = 128

# Ranges of the per-image draws (uniform). Shape radius as a fraction of the image size; rotation in
# radians either side of upright; colours and contrasts in [0, 1] pixel units. Tuned so that a small
# CNN learns the classes within a couple of epochs: with full 360-degree rotation it needs roughly
# twice the steps, so shapes are upright with a +-30 degree jitter (as objects in photographs are).
RADIUS_FRACTION = (0.26, 0.4)
MAX_ROTATION = np.pi / 6
BACKGROUND_MEAN = (0.35, 0.65)
BACKGROUND_CONTRAST = (0.03, 0.06)  # SD of the background's luminance field
SHAPE_CONTRAST = (0.3, 0.45)  # shape minus background mean, either sign
COLOUR_JITTER = 0.08  # per-channel offset of the shape colour
TEXTURE_CONTRAST = (0.03, 0.08)  # relative SD of the shape's texture
# SyntheticSpec.class_cue (off by default): a grating inside each shape whose orientation names the class, at this
# fraction of the image size in c/img (22.4 c/img at 112 px), in image coordinates (the shape's tilt does not turn it).
CUE_FREQUENCY_FRACTION = 0.2


@dataclass(frozen=True)
class SyntheticSpec:
    """What to generate: image size, number of classes, split sizes and the master seed."""

    image_size: int = 128
    n_classes: int = 8
    n_train: int = 2000
    n_val: int = 400
    n_test: int = 400
    seed: int = 0
    # Relative contrast of a class-specific fine grating inside each shape (CUE_FREQUENCY_FRACTION): a shortcut
    # that names the class from fine frequencies alone, for positive controls. 0 (the default) draws nothing extra,
    # so the images are those of a spec without it.
    class_cue: float = 0.0


@dataclass(frozen=True)
class SyntheticDataset(Dataset):
    """The three splits of one :class:`SyntheticSpec`, with the names of the classes in label order, and the spec."""

    spec: SyntheticSpec


# --- shapes -------------------------------------------------------------------------------------------
# Each shape is an approximate signed distance d(u, v) in shape units (circumradius about 1; negative
# inside). Multiplying by the radius in pixels gives pixels, which gives a one-pixel anti-aliased edge.


def _polar(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.hypot(u, v), np.arctan2(v, u)


def _sdf_disk(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.hypot(u, v) - 0.9


def _sdf_square(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.maximum(np.abs(u), np.abs(v)) - 0.72


def _sdf_triangle(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    # Regular polygon: distance to the nearest edge line, from the angle within the edge's sector.
    r, phi = _polar(u, v)
    sector = 2 * np.pi / 3
    return r * np.cos(np.mod(phi, sector) - sector / 2) - 0.5


def _sdf_cross(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    au, av = np.abs(u), np.abs(v)
    half_width = 0.3
    return np.minimum(np.maximum(au - 1.0, av - half_width), np.maximum(au - half_width, av - 1.0))


def _sdf_ring(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.abs(np.hypot(u, v) - 0.7) - 0.25


def _sdf_star(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    # Five points: the boundary radius follows a triangle wave in angle between 0.45 and 1.0.
    r, phi = _polar(u, v)
    period = 2 * np.pi / 5
    tri = np.abs(np.mod(phi, period) / period * 2 - 1)  # 1 at the points, 0 between them
    return r - (0.45 + 0.55 * tri)


def _sdf_bars(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    # Three parallel bars (centred at v = -0.6, 0, 0.6, each 0.3 wide) inside a 1.8 x 1.5 box.
    stripes = np.abs(np.mod(v + 0.3, 0.6) - 0.3) - 0.15
    return np.maximum(np.maximum(np.abs(u) - 0.9, np.abs(v) - 0.75), stripes)


def _sdf_ellipse(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    # First-order distance to the ellipse q = 1: (q - 1) / |grad q|.
    a, b = 1.0, 0.5
    q = np.hypot(u / a, v / b)
    grad = np.hypot(u / a**2, v / b**2) / np.maximum(q, 1e-6)
    return (q - 1) / np.maximum(grad, 1e-6)


_SDFS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "disk": _sdf_disk,
    "square": _sdf_square,
    "triangle": _sdf_triangle,
    "cross": _sdf_cross,
    "ring": _sdf_ring,
    "star": _sdf_star,
    "bars": _sdf_bars,
    "ellipse": _sdf_ellipse,
}


# --- random fields ------------------------------------------------------------------------------------


def _inverse_f_amplitude(size: int) -> np.ndarray:
    """1/f amplitude on the rfft2 grid (f in c/img), zero at DC so fields are zero-mean."""
    fy = np.fft.fftfreq(size, 1 / size)[:, None]
    fx = np.fft.rfftfreq(size, 1 / size)[None, :]
    f = np.hypot(fx, fy)
    amplitude = np.zeros_like(f)
    amplitude[f > 0] = 1 / f[f > 0]
    return amplitude.astype(np.float32)


def _pink_fields(rng: np.random.Generator, shape: tuple[int, ...], amplitude: np.ndarray) -> np.ndarray:
    """Unit-variance real fields with a 1/f amplitude spectrum and uniform random phases.

    ``shape`` is the leading batch shape. Each Fourier coefficient is a circular complex Gaussian scaled
    by ``amplitude``: uniform phase, Rayleigh-distributed modulus with mean proportional to 1/f (the
    classic 1/f-noise recipe, and cheaper than drawing phases and taking their cosine and sine).
    """
    size = amplitude.shape[0]
    normals = rng.standard_normal((*shape, *amplitude.shape, 2), dtype=np.float32)
    spectrum = normals.view(np.complex64)[..., 0]
    spectrum *= amplitude
    fields = scipy.fft.irfft2(spectrum, s=(size, size), workers=_fft_workers())
    fields /= fields.std(axis=(-2, -1), keepdims=True)
    return fields


def _fft_workers() -> int:
    """CPUs this process may use (respects SLURM/taskset affinity); the FFT result does not depend on it."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


# --- generation ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Draws:
    """Per-image random parameters of one chunk (all arrays have the chunk length first)."""

    labels: np.ndarray
    radius_px: np.ndarray
    centre_px: np.ndarray  # (n, 2): x, y
    angle: np.ndarray
    background_mean: np.ndarray  # (n, 3)
    background_contrast: np.ndarray  # (n,)
    chroma_direction: np.ndarray  # (n, 3)
    shape_colour: np.ndarray  # (n, 3)
    texture_contrast: np.ndarray  # (n,)


def _draw_parameters(rng: np.random.Generator, labels: np.ndarray, size: int) -> _Draws:
    n = len(labels)
    radius = rng.uniform(*RADIUS_FRACTION, n) * size
    # Keep most of the shape inside the frame: the centre stays at least 0.85 radius from the edge.
    margin = 0.85 * radius[:, None]
    centre = margin + rng.random((n, 2)) * (size - 2 * margin)
    background_mean = rng.uniform(*BACKGROUND_MEAN, (n, 3))
    # The shape differs from the background mostly in brightness, of either sign, plus a colour jitter,
    # so neither colour nor brightness says which class it is.
    sign = rng.choice([-1.0, 1.0], n)
    shape_colour = (
        background_mean
        + (sign * rng.uniform(*SHAPE_CONTRAST, n))[:, None]
        + rng.uniform(-COLOUR_JITTER, COLOUR_JITTER, (n, 3))
    )
    chroma = rng.normal(size=(n, 3))
    chroma -= chroma.mean(axis=1, keepdims=True)  # chroma without luminance
    chroma /= np.linalg.norm(chroma, axis=1, keepdims=True) + 1e-9
    return _Draws(
        labels=labels,
        radius_px=radius,
        centre_px=centre,
        angle=rng.uniform(-MAX_ROTATION, MAX_ROTATION, n),
        background_mean=background_mean,
        background_contrast=rng.uniform(*BACKGROUND_CONTRAST, n),
        chroma_direction=chroma,
        shape_colour=shape_colour,
        texture_contrast=rng.uniform(*TEXTURE_CONTRAST, n),
    )


def _shape_alpha(draws: _Draws, size: int, class_names: tuple[str, ...]) -> np.ndarray:
    """Anti-aliased coverage (n, H, W) in [0, 1] of each image's shape."""
    grid = np.arange(size, dtype=np.float32) + 0.5
    dx = grid[None, None, :] - draws.centre_px[:, 0, None, None].astype(np.float32)
    dy = grid[None, :, None] - draws.centre_px[:, 1, None, None].astype(np.float32)
    cos = np.cos(draws.angle).astype(np.float32)[:, None, None]
    sin = np.sin(draws.angle).astype(np.float32)[:, None, None]
    radius = draws.radius_px.astype(np.float32)[:, None, None]
    u = (dx * cos + dy * sin) / radius
    v = (dy * cos - dx * sin) / radius
    distance_px = np.empty_like(u)
    for label, name in enumerate(class_names):
        members = draws.labels == label
        if members.any():
            distance_px[members] = _SDFS[name](u[members], v[members]) * radius[members]
    return np.clip(0.5 - distance_px, 0.0, 1.0)


def _class_gratings(rng: np.random.Generator, labels: np.ndarray, size: int, n_classes: int) -> np.ndarray:
    """float32 (n, H, W) unit-amplitude gratings at CUE_FREQUENCY_FRACTION * size c/img, oriented at pi * label /
    n_classes, each with a random phase."""
    grid = (np.arange(size, dtype=np.float32) + 0.5) / size
    theta = (np.pi * labels / n_classes).astype(np.float32)[:, None, None]
    phase = rng.uniform(0, 2 * np.pi, len(labels)).astype(np.float32)[:, None, None]
    along = grid[None, None, :] * np.cos(theta) + grid[None, :, None] * np.sin(theta)
    return np.cos(np.float32(2 * np.pi * CUE_FREQUENCY_FRACTION * size) * along + phase)


def _render_chunk(rng: np.random.Generator, labels: np.ndarray, size: int, class_names: tuple[str, ...],
                  class_cue: float = 0.0) -> np.ndarray:
    draws = _draw_parameters(rng, labels, size)
    n = len(labels)
    # Three 1/f fields per image: background luminance, background chroma, shape texture.
    luminance, chroma, texture = np.moveaxis(_pink_fields(rng, (n, 3), _inverse_f_amplitude(size)), 1, 0)
    f32 = np.float32
    # Built in place on one (n, 3, H, W) float32 buffer: temporaries of that size dominate the run time.
    contrast = draws.background_contrast.astype(f32)[:, None, None, None]
    image = np.repeat(contrast * luminance[:, None], 3, axis=1)
    image += (0.5 * contrast * draws.chroma_direction.astype(f32)[:, :, None, None]) * chroma[:, None]
    image += draws.background_mean.astype(f32)[:, :, None, None]
    modulation = 1 + draws.texture_contrast.astype(f32)[:, None, None] * texture
    if class_cue > 0:  # drawn last, and only then: the stream of a spec without the cue is unchanged
        modulation += f32(class_cue) * _class_gratings(rng, labels, size, len(class_names))
    fill = draws.shape_colour.astype(f32)[:, :, None, None] * modulation[:, None]
    fill -= image
    fill *= _shape_alpha(draws, size, class_names)[:, None]
    image += fill
    np.clip(image, 0.0, 1.0, out=image)
    image *= 255
    return np.rint(image, out=image).astype(np.uint8)


def _balanced_labels(rng: np.random.Generator, n: int, n_classes: int) -> np.ndarray:
    """Labels with class counts differing by at most one, in random order."""
    return rng.permutation(np.arange(n) % n_classes).astype(np.int64)


def _make_split(n: int, seed: int, split_index: int, spec: SyntheticSpec) -> Split:
    # Each split has its own stream derived from (seed, split), so changing n_train leaves val/test as is.
    rng = np.random.default_rng([seed, split_index])
    labels = _balanced_labels(rng, n, spec.n_classes)
    class_names = CLASS_NAMES[: spec.n_classes]
    images = np.empty((n, 3, spec.image_size, spec.image_size), dtype=np.uint8)
    for start in range(0, n, _CHUNK):
        stop = min(start + _CHUNK, n)
        images[start:stop] = _render_chunk(rng, labels[start:stop], spec.image_size, class_names, spec.class_cue)
    return Split(images=images, labels=labels)


def _validate(spec: SyntheticSpec) -> None:
    if spec.image_size < MIN_IMAGE_SIZE:
        raise ValueError(
            f"synthetic image_size must be >= {MIN_IMAGE_SIZE} px (shapes need room for their edges); "
            f"got {spec.image_size}"
        )
    if not 2 <= spec.n_classes <= len(CLASS_NAMES):
        raise ValueError(
            f"synthetic n_classes must be between 2 and {len(CLASS_NAMES)} (the available shapes: "
            f"{', '.join(CLASS_NAMES)}); got {spec.n_classes}"
        )
    if not 0 <= spec.class_cue <= 1:
        raise ValueError(f"synthetic class_cue must be between 0 and 1; got {spec.class_cue}")
    for name in ("n_train", "n_val", "n_test"):
        if getattr(spec, name) < 1:
            raise ValueError(f"synthetic {name} must be >= 1; got {getattr(spec, name)}")


def make_synthetic(spec: SyntheticSpec) -> SyntheticDataset:
    """Generate the train/val/test splits of ``spec``; the same spec always gives bit-identical arrays.

    Raises ValueError for an image size below 32 px, more classes than :data:`CLASS_NAMES`, or an
    empty split.
    """
    _validate(spec)
    sizes = (spec.n_train, spec.n_val, spec.n_test)
    train, val, test = (_make_split(n, spec.seed, index, spec) for index, n in enumerate(sizes))
    return SyntheticDataset(spec=spec, class_names=CLASS_NAMES[: spec.n_classes], train=train, val=val, test=test)
