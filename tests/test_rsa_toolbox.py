"""RSA as the rsa stage computes it, checked against rsatoolbox itself (the `test` extra) on a simulated subject:
the ROI RDMs (from the z-scored PCA scores, the default, and from the voxels), the model's Spearman rho, its mean rho
against the single-repeat RDMs, and both bounds of the RDM noise ceiling. The ROI patterns are rebuilt by hand from
the neural file's datasets, so that the stage's pattern pipeline is checked too."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from sfhpc.config import NeuralConfig
from sfhpc.data.neural import open_neural
from sfhpc.data.simulated_nsd import make_simulated_subject
from sfhpc.evaluation import rsa
from sfhpc.stages.rsa.run import roi_patterns

rsatoolbox = pytest.importorskip(
    "rsatoolbox", reason="rsatoolbox is not installed: install the test extra (pip install -e '.[test]')")
RDMs = rsatoolbox.rdm.RDMs
compare = rsatoolbox.rdm.compare

REPEATS = 3


@pytest.fixture(scope="module")
def subject(tmp_path_factory) -> Path:
    """A small simulated subject: 40 scenes at 32 px, 12 of them shared and shown 3 times."""
    path = tmp_path_factory.mktemp("neural") / "subj01.h5"
    make_simulated_subject(NeuralConfig(n_images=40, n_shared=12), "subj01", 32, path)
    return path


def hand_patterns(path: Path, roi: str, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """(mean patterns (n_shared, n_units), single-repeat patterns (3, n_shared, n_units)) of the shared images,
    straight from the file: each shared image's trials in file order, z-scored with the training images'
    statistics, projected on the PCA components for PCA scores."""
    with h5py.File(path, "r") as f:
        shared, trial_image = f["split/val"][()], f["trials/image"][()]
        group = f["rois"][roi]
        trials, averages = group["trials"][()], group["mean"][()]
        zscore_mean, zscore_sd = group["zscore_mean"][()], group["zscore_sd"][()]
        components, scores = group["pca_components"][()], group["scores"][()]
    single = np.stack([trials[np.flatnonzero(trial_image == image)] for image in shared], axis=1)
    assert single.shape[0] == REPEATS  # the simulated subject shows every shared image 3 times
    z_single = (single - zscore_mean) / zscore_sd
    if kind == "pca_scores":
        return scores[shared], z_single.astype(np.float64) @ components.astype(np.float64).T
    return (averages[shared] - zscore_mean) / zscore_sd, z_single


def toolbox_rdm(patterns: np.ndarray):
    """rsatoolbox's correlation-distance RDM (1 - Pearson r) of (n_images, n_units) patterns."""
    return rsatoolbox.rdm.calc_rdm(rsatoolbox.data.Dataset(np.asarray(patterns, dtype=np.float64)),
                                   method="correlation")


def model_features(path: Path) -> np.ndarray:
    """A stand-in for a model layer: the shared images' pixels, as floats."""
    with h5py.File(path, "r") as f:
        pixels = f["images/pixels"][()][f["split/val"][()]]
    return pixels.reshape(len(pixels), -1).astype(np.float64) / 255


@pytest.mark.parametrize("kind", ["pca_scores", "voxels"])
@pytest.mark.parametrize("roi", ["V1", "TO"])
def test_rho_ceiling_and_rho_against_repeats_equal_rsatoolbox(subject: Path, roi: str, kind: str):
    neural = open_neural(subject)
    images = neural.images_with_repeats(neural.val_index)
    np.testing.assert_array_equal(images, neural.val_index)  # every shared image has its 3 trials
    ours = roi_patterns(neural, neural.roi(roi), images, kind)
    mean, single = hand_patterns(subject, roi, kind)
    np.testing.assert_allclose(ours.mean, mean, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(ours.repeats, single, rtol=1e-6, atol=1e-6)

    features = model_features(subject)
    (row,) = rsa.rsa_against_rois({"pooled": features}, {roi: ours}, n_permutations=10, seed=0)
    model_rdm = toolbox_rdm(features)
    repeat_rdms = rsatoolbox.rdm.concat([toolbox_rdm(repeat) for repeat in single])
    assert row.rho == pytest.approx(compare(model_rdm, toolbox_rdm(mean), method="spearman")[0, 0], abs=1e-12)
    assert row.rho_repeats == pytest.approx(compare(model_rdm, repeat_rdms, method="spearman").mean(), abs=1e-12)
    lower, upper = rsatoolbox.inference.boot_noise_ceiling(repeat_rdms, method="spearman", rdm_descriptor="index")
    assert (row.ceiling_lower, row.ceiling_upper) == pytest.approx((lower, upper), abs=1e-12)
    assert 0 < row.ceiling_lower < row.ceiling_upper < 1


def test_the_pca_score_and_the_voxel_rdms_are_different_rdms(subject: Path):
    """The option is not cosmetic: on the simulated subject the two ROI RDMs agree only partly."""
    neural = open_neural(subject)
    roi = neural.roi("TO")
    scores, voxels = (roi_patterns(neural, roi, neural.val_index, kind) for kind in ("pca_scores", "voxels"))
    rho = rsa.compare_rdms(rsa.rdm(scores.mean), rsa.rdm(voxels.mean))
    assert 0.2 < rho < 0.98


def test_our_spearman_is_rsatoolboxs_spearman_not_rho_a_when_dissimilarities_tie():
    """rsatoolbox's 'spearman' is SciPy's (average ranks, Pearson r of the ranks), as ours; its 'rho-a' leaves out
    the tie correction and differs once an RDM has ties (the model RDMs of ReLU features can)."""
    rng = np.random.default_rng(0)
    shared = rng.standard_normal((15, 6))
    tied = np.round(rsa.rdm(shared + 0.5 * rng.standard_normal((15, 6))), 1)  # 105 pairs on about 15 values
    other = rsa.rdm(shared + 0.5 * rng.standard_normal((15, 6)))
    ours = rsa.compare_rdms(tied, other)
    vectors = RDMs(rsa.upper_triangle(tied)[None]), RDMs(rsa.upper_triangle(other)[None])
    assert ours == pytest.approx(compare(*vectors, method="spearman")[0, 0], abs=1e-12)
    assert ours > 0.5
    assert abs(ours - compare(*vectors, method="rho-a")[0, 0]) > 1e-3
