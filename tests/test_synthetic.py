"""The embedded synthetic dataset: determinism, layout, natural-image-like spectra, spec validation."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from sfhpc.data import synthetic
from sfhpc.data.synthetic import CLASS_NAMES, SyntheticSpec, make_synthetic

SMALL = SyntheticSpec(image_size=64, n_classes=8, n_train=64, n_val=16, n_test=24, seed=3)


def _radial_amplitude_slope(images: np.ndarray, f_min: float = 4, f_max: float = 50) -> float:
    """Log-log slope of the radially averaged amplitude spectrum of (N, H, W) images over [f_min, f_max]."""
    size = images.shape[-1]
    centred = images - images.mean(axis=(-2, -1), keepdims=True)
    amplitude = np.abs(np.fft.fft2(centred)).mean(axis=0)
    freqs = np.fft.fftfreq(size, 1 / size)
    radius = np.rint(np.hypot(freqs[None, :], freqs[:, None])).astype(int).ravel()
    profile = np.bincount(radius, amplitude.ravel()) / np.bincount(radius)
    f = np.arange(f_min, f_max + 1)
    return float(np.polyfit(np.log(f), np.log(profile[f]), 1)[0])


def _assert_same(a: synthetic.SyntheticDataset, b: synthetic.SyntheticDataset) -> None:
    for name in ("train", "val", "test"):
        np.testing.assert_array_equal(getattr(a, name).images, getattr(b, name).images)
        np.testing.assert_array_equal(getattr(a, name).labels, getattr(b, name).labels)


def test_same_spec_gives_identical_arrays() -> None:
    _assert_same(make_synthetic(SMALL), make_synthetic(SMALL))


def test_different_seed_gives_different_images() -> None:
    a = make_synthetic(SMALL)
    b = make_synthetic(dataclasses.replace(SMALL, seed=4))
    assert not np.array_equal(a.train.images, b.train.images)
    assert not np.array_equal(a.test.images, b.test.images)


def test_splits_do_not_depend_on_the_other_splits_sizes() -> None:
    a = make_synthetic(SMALL)
    b = make_synthetic(dataclasses.replace(SMALL, n_train=32))
    np.testing.assert_array_equal(a.test.images, b.test.images)
    np.testing.assert_array_equal(a.val.labels, b.val.labels)


def test_splits_differ_from_each_other() -> None:
    ds = make_synthetic(dataclasses.replace(SMALL, n_val=24))
    assert not np.array_equal(ds.val.images, ds.test.images)


def test_shapes_dtypes_and_balanced_labels() -> None:
    ds = make_synthetic(SMALL)
    assert ds.class_names == CLASS_NAMES[: SMALL.n_classes]
    for split, n in ((ds.train, SMALL.n_train), (ds.val, SMALL.n_val), (ds.test, SMALL.n_test)):
        assert split.images.shape == (n, 3, SMALL.image_size, SMALL.image_size)
        assert split.images.dtype == np.uint8
        assert split.labels.shape == (n,)
        assert split.labels.dtype == np.int64
        counts = np.bincount(split.labels, minlength=SMALL.n_classes)
        assert counts.max() - counts.min() <= 1
        assert counts.sum() == n


def test_fewer_classes_uses_the_first_names() -> None:
    ds = make_synthetic(dataclasses.replace(SMALL, n_classes=3))
    assert ds.class_names == CLASS_NAMES[:3]
    assert set(np.unique(ds.train.labels)) == {0, 1, 2}


def test_images_use_the_dynamic_range_and_are_not_constant() -> None:
    images = make_synthetic(SMALL).train.images.astype(np.float64)
    assert images.std(axis=(1, 2, 3)).min() > 5  # every image has structure
    assert 60 < images.mean() < 200


def test_class_is_not_given_away_by_mean_brightness() -> None:
    # The shape polarity and colour are drawn independently of the class, so per-class mean brightness
    # stays close to the overall mean (the class is in the shape, not the brightness).
    spec = dataclasses.replace(SMALL, n_train=800)
    ds = make_synthetic(spec)
    brightness = ds.train.images.astype(np.float64).mean(axis=(1, 2, 3))
    per_class = np.array([brightness[ds.train.labels == c].mean() for c in range(spec.n_classes)])
    assert np.abs(per_class - brightness.mean()).max() < 0.25 * brightness.std()


def test_backgrounds_have_a_one_over_f_amplitude_spectrum() -> None:
    rng = np.random.default_rng(0)
    fields = synthetic._pink_fields(rng, (32,), synthetic._inverse_f_amplitude(128))
    assert fields.dtype == np.float32
    np.testing.assert_allclose(fields.std(axis=(-2, -1)), 1, rtol=1e-4)
    assert -1.1 < _radial_amplitude_slope(fields) < -0.9


def test_images_have_a_natural_image_like_spectrum() -> None:
    # Measured slope about -1.35 (1/f background plus edges, which fall slightly faster).
    ds = make_synthetic(SyntheticSpec(image_size=128, n_train=64, n_val=8, n_test=8))
    grey = ds.train.images.astype(np.float64).mean(axis=1)
    assert -1.6 < _radial_amplitude_slope(grey) < -0.7


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"image_size": 16}, "image_size must be >= 32"),
        ({"n_classes": len(CLASS_NAMES) + 1}, "n_classes must be between 2 and 8"),
        ({"n_classes": 1}, "n_classes must be between 2 and 8"),
        ({"n_val": 0}, "n_val must be >= 1"),
    ],
)
def test_bad_spec_raises_a_clear_error(change: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_synthetic(dataclasses.replace(SMALL, **change))


def test_run_cache_gives_the_same_dataset_and_survives_damage(tmp_path):
    from sfhpc.config import DataConfig
    from sfhpc.data import load_dataset

    config = DataConfig(image_size=32, n_classes=4, n_train=16, n_val=8, n_test=8)
    fresh = load_dataset(config)
    first = load_dataset(config, tmp_path)  # generates and saves
    (cache,) = tmp_path.glob("synthetic-*.npz")
    second = load_dataset(config, tmp_path)  # loads
    for dataset in (first, second):
        assert dataset.class_names == fresh.class_names
        for split in ("train", "val", "test"):
            assert np.array_equal(getattr(dataset, split).images, getattr(fresh, split).images)
            assert np.array_equal(getattr(dataset, split).labels, getattr(fresh, split).labels)
    cache.write_bytes(b"damaged")
    assert np.array_equal(load_dataset(config, tmp_path).test.images, fresh.test.images)


def test_the_class_cue_is_a_grating_whose_orientation_names_the_class() -> None:
    cued = make_synthetic(dataclasses.replace(SMALL, class_cue=0.3)).train
    plain = make_synthetic(SMALL).train
    np.testing.assert_array_equal(cued.labels, plain.labels)
    changed = (cued.images != plain.images).any(axis=1)
    assert changed.any() and not changed[:, :2, :2].any()  # only inside the shapes (never at the corners here)
    # The grating's energy at its frequency lies along the class's orientation: the nearest class orientation to
    # the strongest Fourier coefficient at that frequency is the label.
    size = SMALL.image_size
    difference = cued.images.astype(float).mean(axis=1) - plain.images.astype(float).mean(axis=1)
    spectrum = np.abs(np.fft.fft2(difference))
    f = np.fft.fftfreq(size, 1 / size)
    radius, angle = np.hypot(f[None, :], f[:, None]), np.mod(np.arctan2(f[:, None], f[None, :]), np.pi)
    ring = np.abs(radius - synthetic.CUE_FREQUENCY_FRACTION * size) < 1.5
    peaks = [angle[ring][np.argmax(image[ring])] for image in spectrum]
    orientations = np.pi * np.arange(SMALL.n_classes) / SMALL.n_classes
    distance = np.abs(np.angle(np.exp(2j * (np.array(peaks)[:, None] - orientations[None, :])))) / 2
    assert (distance.argmin(axis=1) == cued.labels).mean() > 0.9


def test_a_sweep_without_the_cue_keeps_its_data_config_dump() -> None:
    from sfhpc.config import DataConfig

    assert "class_cue" not in DataConfig().model_dump() and DataConfig(class_cue=0.2).model_dump()["class_cue"] == 0.2
    with pytest.raises(ValueError, match="class_cue must be between 0 and 1"):
        make_synthetic(dataclasses.replace(SMALL, class_cue=1.5))
