"""The canonical neural-data file: noise ceiling, preparation arithmetic, layout, reading, errors, config checks."""

from __future__ import annotations

import json
import os

import h5py
import numpy as np
import pytest

from sfhpc.config import NeuralConfig
from sfhpc.data import neural_file
from sfhpc.data.neural import (
    SCHEMA_VERSION,
    NeuralDataError,
    NeuralFileNotFound,
    NeuralSubjectMismatch,
    Pca,
    RoiTrials,
    TrialDesign,
    check_neural,
    noise_ceiling,
    open_neural,
    write_canonical,
)


def reference_noise_ceiling(trials, trial_image, trial_session, n_average=3):
    """SCIENCE.md section 1, written out voxel by voxel and image by image."""
    z = np.empty_like(trials, dtype=np.float64)
    for session in np.unique(trial_session):
        rows = trial_session == session
        z[rows] = (trials[rows] - trials[rows].mean(axis=0)) / trials[rows].std(axis=0)
    ceilings = []
    for voxel in range(trials.shape[1]):
        variances = [z[trial_image == image, voxel].var(ddof=1) for image in np.unique(trial_image)
                     if (trial_image == image).sum() == 3]
        sigma = np.sqrt(np.mean(variances))
        ncsnr = np.sqrt(max(1 - sigma**2, 0)) / sigma
        ceilings.append(100 * ncsnr**2 / (ncsnr**2 + 1 / n_average))
    return np.array(ceilings)


def tiny_design(rng: np.random.Generator, n_images: int = 30, n_shared: int = 10) -> TrialDesign:
    """Every image once, the shared ones three times, one image twice (ignored by the ceiling), two sessions."""
    trial_image = np.concatenate([np.arange(n_images), np.repeat(np.arange(n_shared), 2), [n_shared]])
    trial_image = rng.permutation(trial_image)
    trial_session = np.repeat([1, 2], [len(trial_image) // 2, len(trial_image) - len(trial_image) // 2])
    return TrialDesign(image_ids=np.arange(100, 100 + n_images), shared=np.arange(n_images) < n_shared,
                       trial_image=trial_image, trial_session=trial_session)


def tiny_trials(rng: np.random.Generator, design: TrialDesign, n_voxels: int) -> np.ndarray:
    signal = rng.normal(size=(design.n_images, n_voxels))
    return (signal[design.trial_image] + rng.normal(size=(design.n_trials, n_voxels))).astype(np.float32)


def write_tiny(path, rng: np.random.Generator, rois=("V1", "TO"), n_voxels: int = 12, subject: str = "subj01",
               **kwargs) -> TrialDesign:
    design = tiny_design(rng)
    images = rng.integers(0, 256, (design.n_images, 20, 20, 3), dtype=np.uint8)
    rois = [RoiTrials(name, tiny_trials(rng, design, n_voxels), np.arange(n_voxels) * 7) for name in rois]
    kwargs = {"images": images, "provenance": {"simulation": {"seed": 1}}} | kwargs
    write_canonical(path, subject, "simulated", design, rois, **kwargs)
    return design


# ------------------------------------------------------------------------------------------ ceiling
def test_noise_ceiling_matches_the_science_formula_written_out():
    rng = np.random.default_rng(0)
    design = tiny_design(rng)
    trials = tiny_trials(rng, design, 8)
    ours = noise_ceiling(trials, design.trial_image, design.trial_session)
    np.testing.assert_allclose(ours, reference_noise_ceiling(trials, design.trial_image, design.trial_session),
                               atol=1e-4)
    assert ours.dtype == np.float32


def test_noise_ceiling_of_pure_noise_is_low_and_of_pure_signal_is_100():
    rng = np.random.default_rng(1)
    design = tiny_design(rng, n_images=200, n_shared=150)
    noise = rng.normal(size=(design.n_trials, 50))
    assert noise_ceiling(noise, design.trial_image, design.trial_session).mean() < 10
    signal = rng.normal(size=(design.n_images, 3))[design.trial_image]
    # Not exactly 100: each session is z-scored with its own mean and SD, so repeats in different sessions differ.
    np.testing.assert_allclose(noise_ceiling(signal, design.trial_image, design.trial_session), 100, atol=0.5)


def test_a_voxel_constant_in_a_session_has_no_ceiling():
    rng = np.random.default_rng(2)
    design = tiny_design(rng)
    trials = tiny_trials(rng, design, 3)
    trials[design.trial_session == 1, 1] = 4.0
    ceiling = noise_ceiling(trials, design.trial_image, design.trial_session)
    assert ceiling[1] == 0 and np.isfinite(ceiling).all()


def test_noise_ceiling_needs_images_with_three_trials():
    with pytest.raises(NeuralDataError, match="no image has exactly 3 trials"):
        noise_ceiling(np.ones((4, 2)), np.array([0, 0, 1, 1]), np.array([1, 1, 1, 1]))


@pytest.mark.parametrize("shape", [(40, 12), (12, 40)])  # by the covariance and by the Gram matrix
def test_pca_matches_an_svd(shape):
    rng = np.random.default_rng(12)
    data = rng.normal(size=shape) @ rng.normal(size=(shape[1], shape[1]))
    data -= data.mean(axis=0)
    pca = Pca.fit(data)
    _, singular, vt = np.linalg.svd(data, full_matrices=False)
    variance = singular**2 / (shape[0] - 1)
    k = len(pca.components)
    assert variance[:k].sum() / variance.sum() >= 0.95 > variance[:k - 1].sum() / variance.sum()
    np.testing.assert_allclose(pca.explained_variance, variance[:k], rtol=1e-8)
    np.testing.assert_allclose(np.abs(pca.components @ vt[:k].T), np.eye(k), atol=1e-6)  # the same up to sign
    assert (pca.components[np.arange(k), np.abs(pca.components).argmax(axis=1)] > 0).all()


# -------------------------------------------------------------------------------------- write, read
def test_file_layout_and_preparation_arithmetic(tmp_path):
    rng = np.random.default_rng(3)
    path = tmp_path / "subj01.h5"
    design = tiny_design(rng)
    trials = tiny_trials(rng, design, 12)
    images = rng.integers(0, 256, (design.n_images, 20, 20, 3), dtype=np.uint8)
    write_canonical(path, "subj01", "simulated", design, [RoiTrials("TO", trials, np.arange(12))],
                    images=images, provenance={"simulation": {"seed": 1}, "note": "x"})
    with h5py.File(path, "r") as f:
        assert f.attrs["schema_version"] == SCHEMA_VERSION and f.attrs["kind"] == "simulated"
        assert f.attrs["n_images"] == 30 and f.attrs["variance_kept"] == 0.95 and f.attrs["stimulus_file"] == ""
        assert json.loads(f.attrs["simulation"]) == {"seed": 1} and f.attrs["note"] == "x"
        assert f.attrs["sfhpc_version"] and f.attrs["created"]
        np.testing.assert_array_equal(f["images/ids"], design.image_ids)
        np.testing.assert_array_equal(f["images/pixels"], images)
        np.testing.assert_array_equal(f["split/val"], np.arange(10))
        np.testing.assert_array_equal(f["split/train"], np.arange(10, 30))
        np.testing.assert_array_equal(f["trials/image"], design.trial_image)
        np.testing.assert_array_equal(f["trials/session"], design.trial_session)
        roi = f["rois/TO"]
        np.testing.assert_array_equal(roi["trials"], trials)
        means = np.stack([trials[design.trial_image == i].mean(axis=0) for i in range(30)])
        np.testing.assert_allclose(roi["mean"], means, rtol=1e-5)
        train = means[10:].astype(np.float64)
        np.testing.assert_allclose(roi["zscore_mean"], train.mean(axis=0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(roi["zscore_sd"], train.std(axis=0), rtol=1e-5)
        z = (means - train.mean(axis=0)) / train.std(axis=0)
        components = roi["pca_components"][()]
        k = roi.attrs["n_components"]
        assert components.shape == (k, 12) and roi["scores"].shape == (30, k)
        np.testing.assert_allclose(components @ components.T, np.eye(k), atol=1e-5)
        np.testing.assert_allclose(roi["scores"], z @ components.T, atol=1e-4)
        # The kept components explain >= 95% of the training variance, one fewer would not.
        variance = np.linalg.svd(z[10:], compute_uv=False) ** 2 / 19
        np.testing.assert_allclose(roi["pca_explained_variance"], variance[:k], rtol=1e-4)
        assert variance[:k].sum() / variance.sum() >= 0.95 > variance[:k - 1].sum() / variance.sum()
        ceiling = reference_noise_ceiling(trials, design.trial_image, design.trial_session)
        np.testing.assert_allclose(roi["noise_ceiling"], ceiling, atol=1e-4)
        assert roi.attrs["noise_ceiling_mean"] == pytest.approx(ceiling.mean(), abs=1e-4)
        assert roi.attrs["n_voxels"] == 12


def test_open_neural_reads_rois_in_hierarchy_order(tmp_path):
    path = tmp_path / "lab's data" / "subj01.h5"
    write_tiny(path, np.random.default_rng(4), rois=("TO", "early", "V1"))
    data = open_neural(path)
    assert (data.subject, data.kind, data.n_images) == ("subj01", "simulated", 30)
    assert data.rois == ("V1", "TO", "early")
    np.testing.assert_array_equal(data.val_index, np.arange(10))
    roi = data.roi("TO")
    assert roi.n_voxels == 12 and roi.scores.shape == (30, roi.n_components)
    np.testing.assert_allclose(roi.mean[data.train_index].mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(roi.mean[data.train_index].std(axis=0), 1, atol=1e-4)
    np.testing.assert_array_equal(roi.voxel_index, np.arange(12) * 7)
    with pytest.raises(NeuralDataError, match=r"no ROI 'LO'; this file has V1, TO, early") as err:
        data.roi("LO")
    assert str(path) in str(err.value)


def test_images_inline_in_any_order_and_resized(tmp_path):
    rng = np.random.default_rng(5)
    path = tmp_path / "subj01.h5"
    write_tiny(path, rng)
    data = open_neural(path)
    with h5py.File(path, "r") as f:
        pixels = f["images/pixels"][()]
    same = data.images([3, 1, 3], 20)
    assert same.shape == (3, 3, 20, 20) and same.dtype == np.uint8
    np.testing.assert_array_equal(same, pixels[[3, 1, 3]].transpose(0, 3, 1, 2))
    smaller = data.images(np.arange(4), 8)
    assert smaller.shape == (4, 3, 8, 8)
    # antialiased: the small image's mean stays the big one's mean
    np.testing.assert_allclose(smaller.mean(axis=(2, 3)), pixels[:4].mean(axis=(1, 2)), atol=4)


def test_images_from_a_stimulus_file_by_id(tmp_path):
    rng = np.random.default_rng(6)
    brick = rng.integers(0, 256, (140, 16, 16, 3), dtype=np.uint8)
    stimuli = tmp_path / "nsd_stimuli.hdf5"
    with h5py.File(stimuli, "w") as f:
        f["imgBrick"] = brick
    path = tmp_path / "subj01.h5"
    write_tiny(path, rng, images=None, stimulus_file=str(stimuli))
    data = open_neural(path)
    np.testing.assert_array_equal(data.images([2, 0], 16), brick[[102, 100]].transpose(0, 3, 1, 2))
    stimuli.unlink()
    with pytest.raises(NeuralFileNotFound, match="nsd_stimuli.hdf5: stimulus file not found"):
        data.images([0], 16)


def test_open_neural_errors_name_the_file(tmp_path):
    missing = tmp_path / "subj01.h5"
    with pytest.raises(FileNotFoundError, match="subj01.h5: neural-data file not found"):
        open_neural(missing)
    with pytest.raises(NeuralDataError):
        open_neural(missing)
    (tmp_path / "junk.h5").write_text("not hdf5")
    with pytest.raises(NeuralDataError, match="junk.h5: not a canonical neural-data file"):
        open_neural(tmp_path / "junk.h5")
    write_tiny(missing, np.random.default_rng(7))
    with h5py.File(missing, "a") as f:
        f.attrs["schema_version"] = 99
    with pytest.raises(NeuralDataError, match="schema_version 99, expected 1"):
        open_neural(missing)


def test_a_failed_write_leaves_no_file(tmp_path):
    rng = np.random.default_rng(8)
    design = tiny_design(rng)

    def rois():
        yield RoiTrials("V1", tiny_trials(rng, design, 4), np.arange(4))
        raise RuntimeError("simulation failed")

    with pytest.raises(RuntimeError):
        write_canonical(tmp_path / "subj01.h5", "subj01", "simulated", design, rois(),
                        images=np.zeros((30, 4, 4, 3), np.uint8), provenance={})
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(("change", "message"), [
    ({"shared": np.zeros(30, bool)}, "need both shared"),
    ({"trial_image": np.arange(51) % 29}, "1 images have no trial"),
    ({"trial_session": np.ones(3, int)}, "shapes differ"),
])
def test_bad_designs_are_refused(tmp_path, change, message):
    import dataclasses

    design = dataclasses.replace(tiny_design(np.random.default_rng(9)), **change)
    with pytest.raises(NeuralDataError, match=message):
        write_canonical(tmp_path / "x.h5", "subj01", "simulated", design, [], images=None, stimulus_file="s",
                        provenance={})


# --------------------------------------------------------------------------------------- config
def test_check_neural_accepts_the_defaults():
    check_neural(NeuralConfig(), ["subj01", "subj08"], ["V1", "TO"])


@pytest.mark.parametrize(("config", "subjects", "rois", "message"), [
    (NeuralConfig(), ["subj09"], ["V1"], "unknown subject 'subj09'; subjects: subj01, subj02"),
    (NeuralConfig(), ["subj01"], ["V3"], "unknown ROI 'V3'; ROIs: V1, V2, V4, VO, PHC, LO, TO"),
    (NeuralConfig(noise_ceiling={"V5": 30}), ["subj01"], ["V1"], "noise_ceiling: unknown ROI V5"),
    (NeuralConfig(noise_ceiling={"V1": 100}), ["subj01"], ["V1"], "between 0 and 100"),
    (NeuralConfig(n_images=50, n_shared=50), ["subj01"], ["V1"], r"n_shared \(50\) must be below n_images"),
    (NeuralConfig(kind="nsd"), ["subj01"], ["V1"], "data.neural.dir is not set"),
])
def test_check_neural_errors(config, subjects, rois, message):
    with pytest.raises(NeuralDataError, match=message):
        check_neural(config, subjects, rois)


def test_check_neural_nsd_files(tmp_path):
    config = NeuralConfig(kind="nsd", dir=str(tmp_path))
    with pytest.raises(NeuralFileNotFound, match=r"subj01.h5: prepared NSD file not found .*nsd-prepare"):
        check_neural(config, ["subj01"], ["V1"])
    write_tiny(tmp_path / "subj01.h5", np.random.default_rng(10), rois=("V1", "ventral"))
    check_neural(config, ["subj01"], ["V1", "ventral"])  # ROIs of other atlases are fine when the file has them
    with pytest.raises(NeuralDataError, match="subj01.h5: no ROI TO; the file has V1, ventral"):
        check_neural(config, ["subj01"], ["V1", "TO"])


def test_neural_file_generates_a_simulated_subject_once(tmp_path):
    config = NeuralConfig(n_images=40, n_shared=12)
    path = neural_file(config, "subj02", tmp_path, 32)
    assert path.parent == tmp_path / "neural" and path.name.startswith("subj02-")
    stamp = path.stat().st_mtime_ns
    assert neural_file(config, "subj02", tmp_path, 32) == path and path.stat().st_mtime_ns == stamp
    assert neural_file(config, "subj02", tmp_path, 48) != path  # other settings, other file
    assert open_neural(path).rois == ("V1", "V2", "V4", "VO", "PHC", "LO", "TO")


def test_neural_file_of_nsd_must_exist(tmp_path):
    config = NeuralConfig(kind="nsd", dir=str(tmp_path))
    with pytest.raises(NeuralFileNotFound, match="subj03.h5"):
        neural_file(config, "subj03", tmp_path, 128)
    write_tiny(tmp_path / "subj03.h5", np.random.default_rng(11), subject="subj03")
    assert neural_file(config, "subj03", tmp_path / "cache", 128) == tmp_path / "subj03.h5"


def test_a_file_holding_another_subject_is_refused(tmp_path):
    """subj01's data saved (or renamed) as subj02.h5 would guide subj02's models with the wrong brain."""
    write_tiny(tmp_path / "subj02.h5", np.random.default_rng(12), subject="subj01")
    config = NeuralConfig(kind="nsd", dir=str(tmp_path))
    message = r"subj02.h5: holds subject 'subj01' \(its `subject` attribute\), but is read for 'subj02'"
    with pytest.raises(NeuralSubjectMismatch, match=message):
        check_neural(config, ["subj02"], ["V1"])
    with pytest.raises(NeuralSubjectMismatch, match=message):  # and again where a job opens it
        neural_file(config, "subj02", tmp_path / "cache", 128)
