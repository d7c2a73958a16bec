"""The rsa stage's RDM files in rsatoolbox's HDF5 layout, and `sfhpc export rdms`: a tiny trained model against two
small simulated subjects, with the PCA-score and the voxel ROI RDMs (two rsa points). rsatoolbox itself (the `test`
extra) reads every file back: its values are the RDMs sfhpc computes, its Spearman rho is the rho each result
stores, its descriptors name model, layer, ROI, subject and images; the export copies every file, lists what it
cannot copy, and fails in one line."""

from __future__ import annotations

import filecmp
import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from test_login_node import heavy_modules_after
from test_report_runs import make_run, run_every_point
from typer.testing import CliRunner

from sfhpc.cli import app
from sfhpc.config import ROIS
from sfhpc.data import neural_file
from sfhpc.data.neural import open_neural
from sfhpc.evaluation import rsa
from sfhpc.rundir import RunDir
from sfhpc.stages.common import load_trained
from sfhpc.stages.rsa import RDM_FILES_ATTR
from sfhpc.stages.rsa.rdm_file import SubjectRdms, write_rdm_file
from sfhpc.stages.rsa.run import layer_features
from sfhpc.sweep import Plan

from conftest import TINY_SWEEP

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
runner = CliRunner()


def sfhpc(*args, code: int = 0):
    result = runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "400"})  # long paths on one line
    assert result.exit_code == code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception  # no traceback
    return result


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


def test_export_copies_every_file_under_a_name_saying_point_and_subject_with_an_index(finished, tmp_path: Path):
    run, plan = finished
    out = tmp_path / "for rsatoolbox"
    report = json.loads(sfhpc("export", "rdms", run.path, out, "--json").stdout)
    expected = [(point, subject) for point in rsa_points(plan) for subject in SUBJECTS]
    assert [(entry["point"], entry["subject"]) for entry in report["files"]] == expected
    assert report["problems"] == []
    assert json.loads((out / "rdms.json").read_text()) == report
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["rdms.json", *(f"{point}.{subject}.rdms.h5" for point, subject in expected)])
    for entry in report["files"]:
        exported = out / entry["file"]
        assert filecmp.cmp(exported, entry["source"], shallow=False)
        loaded = load(exported)
        assert loaded.descriptors["point"] == f"rsa/{entry['point']}"
        assert entry["model"] == loaded.rdm_descriptors["model"][0]
        assert (entry["layers"], entry["rois"]) == (["pooled"], list(ROIS))

    text = sfhpc("export", "rdms", run.path, out).stdout  # again into the same folder: replaced, not duplicated
    assert f"copied 4 RDM files of 2 points into {out}" in text
    assert "load_rdm(path, file_type='hdf5')" in text
    assert len(list(out.iterdir())) == 5


def test_export_lists_a_point_without_result_and_a_changed_file_and_copies_the_rest(finished, tmp_path: Path):
    run, plan = finished
    copy = RunDir(shutil.copytree(run.path, tmp_path / "copy"))
    changed, gone = rsa_points(plan)
    with h5py.File(copy.point_dir("rsa", changed) / "rdms-subj02.h5", "r+") as f:
        f["dissimilarities"][0, 0] += 0.5  # a file that is not the one its result was written with
    copy.result_path("rsa", gone).unlink()
    out = tmp_path / "out"
    report = json.loads(sfhpc("export", "rdms", copy.path, out, "--json").stdout)
    assert [entry["file"] for entry in report["files"]] == [f"{changed}.subj01.rdms.h5"]
    assert sorted((p["point"], p["state"]) for p in report["problems"]) == sorted(
        [(changed, "file changed"), (gone, "missing")])
    assert not (out / f"{changed}.subj02.rdms.h5").exists()
    text = sfhpc("export", "rdms", copy.path, out, "--strict", code=1).stdout
    assert "file changed" in text and "rdms-subj02.h5: not the file its result was written with" in text


def test_export_errors_are_one_line_without_traceback(finished, tmp_path: Path):
    run, _ = finished
    assert "no run folder at" in sfhpc("export", "rdms", tmp_path / "nowhere", tmp_path / "out", code=2).output
    no_rsa, _ = make_run(tmp_path / "train only", TINY_SWEEP)
    out = sfhpc("export", "rdms", no_rsa.path, tmp_path / "out", code=2).output
    assert "has no rsa stage (its stages: train)" in out
    unfinished, _ = make_run(tmp_path / "unfinished", SWEEP)
    error = json.loads(sfhpc("export", "rdms", unfinished.path, tmp_path / "out", "--json", code=2).stdout)["error"]
    assert error.startswith("nothing to export: none of the 2 rsa points") and "2 missing" in error
    a_file = tmp_path / "taken"
    a_file.write_text("mine")
    assert "is a file" in sfhpc("export", "rdms", run.path, a_file, code=2).output
    assert a_file.read_text() == "mine"
    assert not (tmp_path / "out").exists()  # nothing made for a failed export


def test_export_does_not_import_torch(finished, tmp_path: Path):
    run, _ = finished
    assert heavy_modules_after("export", "rdms", run.path, tmp_path / "out") == ""
    assert (tmp_path / "out" / "rdms.json").exists()


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
