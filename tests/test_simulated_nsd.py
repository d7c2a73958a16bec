"""The simulated NSD subjects: configured noise ceilings, determinism, subject differences, ROI tuning."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from sfhpc.config import REFERENCE_NOISE_CEILING, ROIS, DataConfig, NeuralConfig
from sfhpc.data import load_dataset
from sfhpc.data.neural import NeuralDataError, noise_ceiling, open_neural
from sfhpc.data.simulated_nsd import (
    N_VOXELS,
    REPEATS,
    expected_ceiling,
    make_simulated_subject,
    simulated_images,
)

SIZE = 64  # smaller than the default 128 px to keep the tests quick; the model is the same at any size
CONFIG = NeuralConfig()  # 600 images, 100 shared, reference ceilings
CEILING_TOLERANCE = 3.0  # percentage points on an ROI's mean; seen: within 1.5 over subjects and seeds


@pytest.fixture(scope="module")
def subjects(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("simulated")
    paths = {name: folder / f"{name}.h5" for name in ("subj01", "subj02")}
    for name, path in paths.items():
        make_simulated_subject(CONFIG, name, SIZE, path)
    return paths


def read_all(path: Path) -> dict[str, np.ndarray]:
    arrays = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, item: arrays.__setitem__(name, item[()]) if isinstance(item, h5py.Dataset)
                     else None)
    return arrays


def test_the_file_has_every_roi_and_the_designed_trials(subjects):
    data = open_neural(subjects["subj01"])
    assert data.kind == "simulated" and data.rois == ROIS and data.n_images == CONFIG.n_images
    np.testing.assert_array_equal(data.val_index, np.arange(CONFIG.n_shared))
    with h5py.File(subjects["subj01"], "r") as f:
        counts = np.bincount(f["trials/image"][()])
        assert (counts == REPEATS).all() and len(counts) == CONFIG.n_images
        assert len(np.unique(f["trials/session"][()])) == 4
        for roi in ROIS:
            assert f["rois"][roi]["trials"].shape == (counts.sum(), N_VOXELS[roi])
    order = np.arange(CONFIG.n_images)[::-1]  # more images than one read chunk, in an order h5py cannot read
    with h5py.File(subjects["subj01"], "r") as f:
        np.testing.assert_array_equal(data.images(order, SIZE), f["images/pixels"][()][order].transpose(0, 3, 1, 2))


@pytest.mark.parametrize("subject", ["subj01", "subj02"])
def test_the_science_formula_recovers_the_configured_noise_ceiling(subjects, subject):
    with h5py.File(subjects[subject], "r") as f:
        image, session = f["trials/image"][()], f["trials/session"][()]
        for roi in ROIS:
            # Recomputed from the trials, not read from the file's own attribute.
            measured = noise_ceiling(f["rois"][roi]["trials"][()], image, session).mean()
            assert measured == pytest.approx(REFERENCE_NOISE_CEILING[roi], abs=CEILING_TOLERANCE), roi


def test_other_ceilings_are_honoured(tmp_path):
    config = NeuralConfig(n_images=300, n_shared=150, noise_ceiling={"V1": 60.0, "TO": 10.0})
    make_simulated_subject(config, "subj03", 32, tmp_path / "s.h5", rois=("V1", "TO"))
    with h5py.File(tmp_path / "s.h5", "r") as f:
        assert f["rois/V1"].attrs["noise_ceiling_mean"] == pytest.approx(60, abs=CEILING_TOLERANCE)
        assert f["rois/TO"].attrs["noise_ceiling_mean"] == pytest.approx(10, abs=CEILING_TOLERANCE)


def test_expected_ceiling_without_estimation_noise_is_the_closed_form():
    noise_fraction = np.array([0.3, 0.6, 0.87])
    snr = (1 - noise_fraction) / noise_fraction
    np.testing.assert_allclose(expected_ceiling(noise_fraction, 10**7), 100 * snr / (snr + 1 / 3), atol=0.01)
    assert (expected_ceiling(noise_fraction, 100) < expected_ceiling(noise_fraction, 10**7)).all()  # biased low


def test_the_same_seed_gives_identical_arrays(subjects, tmp_path):
    make_simulated_subject(CONFIG, "subj01", SIZE, tmp_path / "again.h5")
    first, again = read_all(subjects["subj01"]), read_all(tmp_path / "again.h5")
    assert first.keys() == again.keys()
    for name in first:
        np.testing.assert_array_equal(first[name], again[name], err_msg=name)


def test_subjects_see_the_same_images_but_respond_differently(subjects):
    one, two = read_all(subjects["subj01"]), read_all(subjects["subj02"])
    np.testing.assert_array_equal(one["images/pixels"], two["images/pixels"])
    assert not np.array_equal(one["trials/image"], two["trials/image"])
    for roi in ROIS:
        assert not np.allclose(one[f"rois/{roi}/mean"], two[f"rois/{roi}/mean"])


def test_the_images_are_not_the_classification_images():
    neural, _ = simulated_images(NeuralConfig(n_images=20, n_shared=10), 32)
    classification = load_dataset(DataConfig(image_size=32, n_train=20, n_val=1, n_test=1)).train.images
    assert not np.array_equal(neural, classification)


def _correlation_with(responses: np.ndarray, feature: np.ndarray) -> float:
    """Mean over voxels of the Pearson correlation between each voxel's responses and a per-image feature."""
    z = (responses - responses.mean(axis=0)) / responses.std(axis=0)
    f = (feature - feature.mean()) / feature.std()
    return float((z * f[:, None]).mean())


def test_early_rois_follow_fine_detail_and_higher_rois_coarse_structure_and_category(subjects):
    # Fails without the ROI tuning: every ROI would relate to these image properties alike.
    images, labels = simulated_images(CONFIG, SIZE)
    luminance = images.astype(np.float64).mean(axis=1)
    power = np.abs(np.fft.fft2(luminance - luminance.mean(axis=(1, 2), keepdims=True))) ** 2
    f = np.fft.fftfreq(SIZE, 1 / SIZE)
    radius = np.hypot(f[:, None], f[None, :])
    high, low = power[:, radius >= SIZE / 5].sum(axis=1), power[:, (radius > 0) & (radius < SIZE / 10)].sum(axis=1)
    fine_over_coarse = np.log(high / low)
    data = open_neural(subjects["subj01"])
    v1, to = data.roi("V1").mean, data.roi("TO").mean
    # Measured at 64 px: V1 +0.06..0.07, TO -0.03..-0.07 over four seeds.
    assert _correlation_with(v1, fine_over_coarse) > 0.03 > -0.01 > _correlation_with(to, fine_over_coarse)
    assert _correlation_with(to, np.log(low)) > _correlation_with(v1, np.log(low)) + 0.05

    def class_share(responses: np.ndarray) -> float:
        """Fraction of each voxel's variance over images explained by the image's class, averaged over voxels."""
        class_means = np.stack([responses[labels == c].mean(axis=0) for c in range(labels.max() + 1)])
        return float((class_means[labels].var(axis=0) / responses.var(axis=0)).mean())

    assert class_share(to) > 3 * class_share(v1)


def test_bad_settings_are_refused(tmp_path):
    with pytest.raises(NeuralDataError, match="n_shared"):
        make_simulated_subject(NeuralConfig(n_images=30, n_shared=30), "subj01", 32, tmp_path / "x.h5")
    with pytest.raises(ValueError, match="unknown subject 'subj9'"):
        make_simulated_subject(CONFIG, "subj9", 32, tmp_path / "x.h5")


def _signals_of(images: np.ndarray, roi: str, tuning: str, labels: np.ndarray) -> np.ndarray:
    import scipy.fft

    from sfhpc.data.simulated_nsd import category_inputs, energy_maps, voxel_signals

    spectra = scipy.fft.rfft2(energy_maps(images))
    return voxel_signals(np.random.default_rng(7), roi, spectra, category_inputs(images, labels, tuning), 60, tuning)


def _low_passed(images: np.ndarray, cutoff_cpi: float) -> np.ndarray:
    spectrum = np.fft.fft2(images.astype(np.float64) / 255)
    f = np.fft.fftfreq(images.shape[-1], 1 / images.shape[-1])
    keep = np.hypot(f[:, None], f[None, :]) <= cutoff_cpi
    return np.clip(np.fft.ifft2(spectrum * keep).real * 255, 0, 255).astype(np.uint8)


def test_the_planted_tuning_makes_higher_rois_respond_to_coarse_bands_only():
    from sfhpc.data.simulated_nsd import roi_tuning, simulated_images

    images, labels = simulated_images(NeuralConfig(n_images=120, n_shared=20), SIZE)
    blurred = _low_passed(images, 6.0)  # keeps the coarsest band (2-4 c/img), removes the finer ones

    def kept(roi: str, tuning: str) -> float:  # mean over voxels of r(response to the image, to its low-pass)
        a, b = _signals_of(images, roi, tuning, labels), _signals_of(blurred, roi, tuning, labels)
        return float(np.mean([np.corrcoef(a[:, v], b[:, v])[0, 1] for v in range(a.shape[1])]))

    assert kept("TO", "coarse_above_v1") > 0.95 and kept("V4", "coarse_above_v1") > 0.95 > kept("V4", "hierarchy")
    assert kept("V1", "coarse_above_v1") < 0.7  # V1 keeps its fine, local tuning
    assert roi_tuning("V1", "coarse_above_v1") == roi_tuning("V1")
    assert roi_tuning("TO", "coarse_above_v1").category_share == 0 < roi_tuning("TO").category_share


def test_the_coarse_category_tuning_carries_the_category_as_coarse_bands_show_it():
    from sfhpc.data.simulated_nsd import coarse_category_evidence, roi_tuning, simulated_images

    images, labels = simulated_images(NeuralConfig(n_images=400, n_shared=20), SIZE)
    evidence = coarse_category_evidence(images, labels)
    assert np.allclose(evidence.sum(axis=1), 1) and (evidence.argmax(axis=1) == labels).mean() > 0.5  # chance 1/8
    blurred = _low_passed(images, 6.0)  # keeps every frequency the evidence reads (up to 4 c/img)
    from_blurred = coarse_category_evidence(blurred, labels)  # the same up to the blurred images' uint8 rounding
    assert np.abs(from_blurred - evidence).mean() < 0.02 and (from_blurred.argmax(1) == evidence.argmax(1)).mean() > 0.9
    shuffled = np.random.default_rng(0).permutation(labels)  # no class to find: near-uniform evidence for it
    assert (coarse_category_evidence(images, shuffled).argmax(axis=1) == shuffled).mean() < 0.35

    def kept(roi: str) -> float:  # as in the test above, with the coarse category term
        a = _signals_of(images, roi, "coarse_category_above_v1", labels)
        b = _signals_of(blurred, roi, "coarse_category_above_v1", labels)
        return float(np.mean([np.corrcoef(a[:, v], b[:, v])[0, 1] for v in range(a.shape[1])]))

    assert kept("TO") > 0.95 > kept("V1")
    assert roi_tuning("TO", "coarse_category_above_v1").category_share == roi_tuning("TO").category_share > 0


def test_the_category_term_reads_one_hot_labels_exactly_as_class_rows():
    from sfhpc.data.simulated_nsd import category_inputs

    labels = np.array([3, 0, 7, 3])
    weights = np.random.default_rng(1).normal(size=(8, 5))
    assert np.array_equal(category_inputs(np.zeros((4, 3, 8, 8), np.uint8), labels, "hierarchy") @ weights,
                          weights[labels])
