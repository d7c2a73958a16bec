"""What RSA reads from a canonical neural-data file: the shared images shown 3 times, their single trials per repeat
in trial order, and the pipeline that turns trials into patterns (z-scored with the training statistics, projected
on the PCA components), checked on a hand-made design where some shared images have fewer repeats."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from sfhpc.data.neural import NeuralDataError, RoiTrials, TrialDesign, open_neural, write_canonical

N_IMAGES, N_VOXELS = 12, 9
# Shared images 0..5: image 0 shown once, image 1 twice, images 2..5 three times; images 6..11 once (training).
REPEATS = {0: 1, 1: 2, 2: 3, 3: 3, 4: 3, 5: 3}


@pytest.fixture(scope="module")
def neural_path(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    trial_image = rng.permutation(np.concatenate(
        [np.repeat(list(REPEATS), list(REPEATS.values())), np.arange(len(REPEATS), N_IMAGES)]))
    design = TrialDesign(image_ids=np.arange(N_IMAGES), shared=np.arange(N_IMAGES) < len(REPEATS),
                         trial_image=trial_image, trial_session=np.repeat([1, 2], [12, len(trial_image) - 12]))
    # Each trial's responses say which trial it was (column 0) on top of noise, so their order can be checked.
    trials = rng.normal(size=(design.n_trials, N_VOXELS)).astype(np.float32)
    trials[:, 0] = np.arange(design.n_trials)
    path = tmp_path_factory.mktemp("neural data") / "subj01.h5"
    images = rng.integers(0, 256, size=(N_IMAGES, 8, 8, 3), dtype=np.uint8)
    write_canonical(path, "subj01", "simulated", design, [RoiTrials("V1", trials, np.arange(N_VOXELS))],
                    images=images, provenance={})
    return path


def test_only_shared_images_shown_exactly_three_times_are_kept_in_the_order_given(neural_path: Path):
    neural = open_neural(neural_path)
    assert neural.val_index.tolist() == [0, 1, 2, 3, 4, 5]
    assert neural.images_with_repeats(neural.val_index).tolist() == [2, 3, 4, 5]
    assert neural.images_with_repeats([5, 0, 3]).tolist() == [5, 3]
    assert neural.images_with_repeats(neural.val_index, repeats=2).tolist() == [1]


def test_repeat_trials_are_each_images_trials_in_file_order(neural_path: Path):
    neural = open_neural(neural_path)
    with h5py.File(neural_path) as f:
        trial_image = f["trials/image"][()]
    single = neural.repeat_trials("V1", [4, 2])
    assert single.shape == (3, 2, N_VOXELS) and single.dtype == np.float32
    for column, image in enumerate([4, 2]):
        # column 0 of a trial is its index in the file: repeat k is the image's k-th trial
        assert single[:, column, 0].tolist() == np.flatnonzero(trial_image == image).tolist()


def test_the_mean_of_the_repeats_through_the_pipeline_is_the_stored_average(neural_path: Path):
    """z-scoring and projection are linear, so the single-repeat patterns average to the ROI's stored patterns."""
    neural = open_neural(neural_path)
    roi = neural.roi("V1")
    images = neural.images_with_repeats(neural.val_index)
    standardized = roi.standardize(neural.repeat_trials("V1", images))
    np.testing.assert_allclose(standardized.mean(axis=0), roi.mean[images], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(roi.pc_scores(standardized).mean(axis=0), roi.scores[images], rtol=1e-5, atol=1e-5)
    assert roi.pc_scores(standardized).shape == (3, len(images), roi.n_components)


@pytest.mark.parametrize(("images", "message"), [
    ([2, 1], "1 of the 2 images asked for do not have exactly 3 trials \\(first: image index 1\\)"),
    ([0, 1, 3], "2 of the 3 images .* \\(first: image index 0\\)"),
    ([2, N_IMAGES + 5], f"first: image index {N_IMAGES + 5}"),
    ([-1], "first: image index -1"),
])
def test_repeat_trials_refuses_images_without_exactly_three_trials(neural_path: Path, images, message):
    with pytest.raises(NeuralDataError, match=message):
        open_neural(neural_path).repeat_trials("V1", images)


def test_repeat_trials_names_an_unknown_roi(neural_path: Path):
    with pytest.raises(NeuralDataError, match="no ROI 'LO'; this file has V1"):
        open_neural(neural_path).repeat_trials("LO", [2])
