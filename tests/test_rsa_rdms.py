"""The rsa stage's RDM files in rsatoolbox's HDF5 layout: a tiny trained model against two small simulated subjects,
with the PCA-score and the voxel ROI RDMs (two rsa points). rsatoolbox itself (the `test` extra) reads every file
back: its values are the RDMs sfhpc computes, its Spearman rho is the rho each result stores, its descriptors name
model, layer, ROI, subject and images."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml
from test_report_runs import make_run

from sfhpc.config import ROIS
from sfhpc.data import neural_file
from sfhpc.data.neural import open_neural
from sfhpc.evaluation import rsa
from sfhpc.job import run_point
from sfhpc.launch import point_config
from sfhpc.rundir import RunDir
from sfhpc.stages.common import load_trained
from sfhpc.stages.rsa import RDM_FILES_ATTR
from sfhpc.stages.rsa.rdm_file import SubjectRdms, write_rdm_file
from sfhpc.stages.rsa.run import layer_features
from sfhpc.sweep import Plan

rsatoolbox = pytest.importorskip(
    "rsatoolbox", reason="rsatoolbox is not installed: install the test extra (pip install -e '.[test]')")

SWEEP = """\
name: rdms
executor: local
data: {image_size: 32, n_classes: 4, n_train: 64, n_val: 16, n_test: 8, neural: {n_images: 40, n_shared: 12}}
grid:
  band: [none]
  seed: [0]
  rsa_roi_patterns: [pca_scores, voxels]
stages:
  train:
    params: {width: 4, epochs: 1, batch_size: 32, lr: 0.05}
  rsa:
    params: {rsa_subjects: [subj01, subj02], rsa_permutations: 5}
"""
SUBJECTS = ("subj01", "subj02")


def run_every_point(run: RunDir, plan: Plan) -> None:
    """Each point in its folder as a job runs it (config.yaml beside it, one thread), upstream stages first."""
    for stage in plan.stages:
        for point in stage.points:
            config = {**point_config(run, plan, stage, point, "test"), "threads": 1}
            folder = run.point_dir(stage.name, point.id)
            folder.mkdir(parents=True)
            (folder / "config.yaml").write_text(yaml.safe_dump(config))
            run_point(config, folder)


def plant_image_ids(run: RunDir, plan: Plan) -> None:
    """Make each simulated subject's file (as its first job would) and give its images ids unlike their rows, as NSD's
    73k ids are: a simulated subject's ids are its rows, which could not tell the two apart."""
    for subject in SUBJECTS:
        path = neural_file(plan.sweep.data.neural, subject, run.path / "data", plan.sweep.data.image_size)
        with h5py.File(path, "r+") as f:
            f["images/ids"][...] = 1000 + 7 * np.arange(len(f["images/ids"]))


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[RunDir, Plan]:
    """A run folder with one trained model and two finished rsa points (PCA-score and voxel ROI RDMs)."""
    run, plan = make_run(tmp_path_factory.mktemp("rdms") / "lab's runs", SWEEP)
    plant_image_ids(run, plan)
    run_every_point(run, plan)
    return run, plan


def rsa_points(plan: Plan) -> dict[str, str]:
    """rsa point id -> its ROI patterns."""
    return {point.id: point.params.get("rsa_roi_patterns", "pca_scores") for point in plan.stage("rsa").points}


def result_of(run: RunDir, point: str) -> tuple[dict, dict]:
    with h5py.File(run.result_path("rsa", point)) as f:
        return dict(f.attrs), {name: f["curves"][name][()] for name in f["curves"]}


def neural_of(run: RunDir, subject: str):
    (path,) = (run.path / "data" / "neural").glob(f"{subject}-*.h5")
    return open_neural(path)


def expected_roi_rdm(neural, roi: str, patterns: str) -> np.ndarray:
    """The ROI RDM straight from the neural file: PC scores, or the voxel averages z-scored by hand."""
    with h5py.File(neural.path) as f:
        shared, group = f["split/val"][()], f["rois"][roi]
        if patterns == "pca_scores":
            return rsa.rdm(group["scores"][()][shared])
        return rsa.rdm((group["mean"][()][shared] - group["zscore_mean"][()]) / group["zscore_sd"][()])


def load(path: Path):
    return rsatoolbox.rdm.load_rdm(str(path), file_type="hdf5")


def test_each_rsa_point_writes_one_file_per_subject_that_rsatoolbox_reads_with_named_rdms(finished):
    run, plan = finished
    (model,) = [f"train/{point.id}" for point in plan.stage("train").points]
    for point in rsa_points(plan):
        folder = run.point_dir("rsa", point)
        attrs, _ = result_of(run, point)
        records = json.loads(attrs[RDM_FILES_ATTR])
        assert [record["subject"] for record in records] == list(SUBJECTS)
        assert sorted(p.name for p in folder.iterdir()) == ["config.yaml", "rdms-subj01.h5", "rdms-subj02.h5",
                                                             "result.h5"]  # no temporary file left
        for record in records:
            loaded = load(folder / record["file"])
            assert loaded.dissimilarity_measure == "correlation"  # rsatoolbox's name for 1 - Pearson r
            assert loaded.n_rdm == 1 + len(ROIS) and loaded.n_cond == record["images"] == 12
            descriptors = {name: [str(v) for v in values] for name, values in loaded.rdm_descriptors.items()}
            assert descriptors["kind"] == ["model"] + ["roi"] * len(ROIS)
            assert descriptors["model"] == [model] + [""] * len(ROIS)
            assert descriptors["layer"] == ["pooled"] + [""] * len(ROIS)
            assert descriptors["roi"] == ["", *ROIS]
            assert descriptors["subject"] == [record["subject"]] * loaded.n_rdm
            neural = neural_of(run, record["subject"])
            assert list(loaded.pattern_descriptors["image_id"]) == [1000 + 7 * row for row in neural.val_index]
            assert loaded.descriptors["point"] == f"rsa/{point}"
            assert loaded.subset("kind", "roi").n_rdm == len(ROIS)  # rsatoolbox selects by our descriptors


def test_the_rdms_are_sfhpcs_and_rsatoolbox_gets_the_rho_each_result_stores_from_them(finished):
    run, plan = finished
    model, _ = load_trained(run.path, plan.stage("rsa").points[0].upstream[0])
    for point, patterns in rsa_points(plan).items():
        attrs, curves = result_of(run, point)
        stored = {(subject.decode(), layer.decode(), roi.decode()): rho for subject, layer, roi, rho in
                  zip(curves["subject"], curves["layer"], curves["roi"], curves["rho"], strict=True)}
        for record in json.loads(attrs[RDM_FILES_ATTR]):
            subject = record["subject"]
            loaded = load(run.point_dir("rsa", point) / record["file"])
            matrices = loaded.get_matrices()
            neural = neural_of(run, subject)
            model_rdm = rsa.rdm(layer_features(model, neural.images(neural.val_index, 32))["pooled"])
            np.testing.assert_allclose(matrices[0], model_rdm, rtol=0, atol=1e-9)
            for index, roi in enumerate(ROIS, start=1):
                np.testing.assert_allclose(matrices[index], expected_roi_rdm(neural, roi, patterns), rtol=0,
                                           atol=1e-6)
            rhos = rsatoolbox.rdm.compare(loaded.subset("kind", "model"), loaded.subset("kind", "roi"),
                                          method="spearman")[0]
            for roi, rho in zip(ROIS, rhos, strict=True):
                assert rho == pytest.approx(stored[subject, "pooled", roi], abs=1e-12)


def test_a_file_that_fails_to_write_leaves_the_previous_one_whole(tmp_path: Path):
    """A rerun of a point writes each file atomically: a failure midway leaves the old file and no partial one."""
    rng = np.random.default_rng(0)
    matrices = {name: rsa.rdm(rng.standard_normal((5, 4))) for name in ("pooled", "V1")}
    path = tmp_path / "rdms-subj01.h5"
    good = SubjectRdms("subj01", "train/bandé", np.arange(5), {"pooled": matrices["pooled"]}, {"V1": matrices["V1"]})
    write_rdm_file(path, good, {"point": "rsa/p"})
    before = path.read_bytes()
    bad = SubjectRdms("subj01", "train/x", np.arange(5), {"pooled": matrices["pooled"]}, {"V1": np.zeros((4, 4))})
    with pytest.raises(ValueError, match="must all be over its 5 images"):
        write_rdm_file(path, bad, {"point": "rsa/p"})
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == [path.name]
    loaded = load(path)
    assert list(loaded.rdm_descriptors["model"]) == ["train/band\\xe9", ""]  # ASCII, as rsatoolbox decodes it
    np.testing.assert_array_equal(loaded.get_matrices()[1], matrices["V1"])
