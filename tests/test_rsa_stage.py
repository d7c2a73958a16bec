"""The rsa stage on the node: a tiny trained model against a small simulated subject, once with the default ROI RDM
(the z-scored PCA scores, the study's) and once with `rsa_roi_patterns: voxels`; each result's rho recomputed from
the model and the neural file, its RDM noise ceiling and its table of the data."""

from __future__ import annotations

from pathlib import Path
from typing import get_args

import h5py
import numpy as np
import pytest
import yaml

from sfhpc.config import ROIS
from sfhpc.data.neural import open_neural
from sfhpc.data.simulated_nsd import N_VOXELS
from sfhpc.evaluation import rsa
from sfhpc.job import run_point
from sfhpc.stages.common import load_trained
from sfhpc.stages.rsa import (
    ROI_PATTERNS,
    ROI_PATTERNS_ATTR,
    RsaParams,
    data_rows_from_curves,
    noise_ceiling_metric,
    rdm_ceiling_lower_metric,
    rdm_ceiling_upper_metric,
    rho_metric,
    rho_repeats_metric,
)
from sfhpc.stages.rsa.run import layer_features

from conftest import located_error, point_config

DATA = {"kind": "synthetic", "image_size": 32, "n_classes": 4, "n_train": 64, "n_val": 16, "n_test": 8, "seed": 0,
        "neural": {"n_images": 40, "n_shared": 12}}
TRAIN = {"band": "none", "width": 4, "epochs": 1, "batch_size": 32, "lr": 0.05, "seed": 0}
RSA = {"rsa_subjects": ["subj01"], "rsa_permutations": 20}


def run_in(run_dir: Path, stage: str, point_id: str, params: dict, upstream: list[str]) -> Path:
    """Run one point inside run_dir as the local executor does (its config.yaml beside it); its result's path."""
    point_dir = run_dir / stage / point_id
    point_dir.mkdir(parents=True)
    config = point_config(stage, params, DATA, point_id=point_id, run_dir=str(run_dir), upstream=upstream)
    (point_dir / "config.yaml").write_text(yaml.safe_dump(config))
    return run_point(config, point_dir)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A run folder with a trained model (train/t) and two rsa points: `default` and `voxels`."""
    folder = tmp_path_factory.mktemp("rsa") / "lab's run"
    run_in(folder, "train", "t", TRAIN, [])
    run_in(folder, "rsa", "default", RSA, ["train/t"])
    run_in(folder, "rsa", "voxels", {**RSA, "rsa_roi_patterns": "voxels"}, ["train/t"])
    return folder


def result(run_dir: Path, point: str) -> dict:
    with h5py.File(run_dir / "rsa" / point / "result.h5") as f:
        curves = {name: f["curves"][name][()] for name in f["curves"]}
        return {"metrics": {name: f["metrics"][name][()].item() for name in f["metrics"]}, "curves": curves,
                "attrs": dict(f.attrs), "data": data_rows_from_curves(f["curves"])}


def expected_roi_rdm(path: Path, roi: str, patterns: str) -> np.ndarray:
    """The ROI RDM straight from the file's datasets: PC scores, or the voxel averages z-scored by hand."""
    with h5py.File(path) as f:
        shared, group = f["split/val"][()], f["rois"][roi]
        if patterns == "pca_scores":
            return rsa.rdm(group["scores"][()][shared])
        return rsa.rdm((group["mean"][()][shared] - group["zscore_mean"][()]) / group["zscore_sd"][()])


def test_the_default_roi_rdm_is_the_pca_score_one_and_the_option_gives_the_voxel_one(run_dir: Path):
    assert RsaParams().rsa_roi_patterns == "pca_scores"
    model, trained = load_trained(run_dir, "train/t")
    (neural_path,) = (run_dir / "data" / "neural").glob("subj01-*.h5")
    neural = open_neural(neural_path)
    model_rdm = rsa.rdm(layer_features(model, neural.images(neural.val_index, 32))["pooled"])
    rhos = {}
    for point, patterns in (("default", "pca_scores"), ("voxels", "voxels")):
        found = result(run_dir, point)
        assert found["attrs"][ROI_PATTERNS_ATTR] == patterns
        rows = dict(zip(np.char.decode(found["curves"]["roi"]).tolist(), found["curves"]["rho"], strict=True))
        assert list(rows) == list(ROIS)  # an unguided model: the pooled layer only, every ROI
        for roi in ROIS:
            expected = rsa.compare_rdms(model_rdm, expected_roi_rdm(neural_path, roi, patterns))
            assert rows[roi] == pytest.approx(expected, abs=1e-9)
            assert found["metrics"][rho_metric("pooled", roi)] == pytest.approx(expected, abs=1e-9)
        rhos[patterns] = np.array(list(rows.values()))
    assert np.abs(rhos["pca_scores"] - rhos["voxels"]).max() > 1e-3  # the two are different RDMs


def test_every_rho_has_its_rdm_ceiling_and_the_voxel_ceiling_is_in_the_data_table(run_dir: Path):
    (neural_path,) = (run_dir / "data" / "neural").glob("subj01-*.h5")
    for point in ("default", "voxels"):
        found = result(run_dir, point)
        metrics, curves = found["metrics"], found["curves"]
        assert [(row.subject, row.roi) for row in found["data"]] == [("subj01", roi) for roi in ROIS]
        for row in found["data"]:
            assert metrics[rdm_ceiling_lower_metric(row.roi)] == row.ceiling_lower
            assert metrics[rdm_ceiling_upper_metric(row.roi)] == row.ceiling_upper
            assert -1 < row.ceiling_lower < row.ceiling_upper <= 1
            per_row = np.char.decode(curves["roi"]) == row.roi
            assert (curves["ceiling_lower"][per_row] == row.ceiling_lower).all()
            assert metrics[rho_repeats_metric("pooled", row.roi)] == curves["rho_repeats"][per_row][0]
            with h5py.File(neural_path) as f:
                attrs = f["rois"][row.roi].attrs
                assert (row.voxels, row.components) == (N_VOXELS[row.roi], attrs["n_components"])
                assert row.voxel_noise_ceiling == pytest.approx(attrs["noise_ceiling_mean"], rel=1e-6)
            assert metrics[noise_ceiling_metric(row.roi)] == pytest.approx(row.voxel_noise_ceiling)
            assert (row.images, row.shared_images) == (12, 12)
        assert "subj01 12 of 12" in found["attrs"]["images"]
        assert "boot_noise_ceiling" in found["attrs"]["rdm_noise_ceiling"]
    default, voxels = result(run_dir, "default")["data"], result(run_dir, "voxels")["data"]
    assert [row.ceiling_lower for row in default] != [row.ceiling_lower for row in voxels]


def test_every_roi_pattern_choice_has_a_description_for_the_result():
    assert set(get_args(RsaParams.model_fields["rsa_roi_patterns"].annotation)) == set(ROI_PATTERNS)


def test_an_unknown_roi_pattern_is_a_located_error(write_sweep):
    text = ("name: bad\nexecutor: local\ndata: {image_size: 32}\ngrid:\n  band: [none]\nstages:\n  train: {}\n"
            "  rsa:\n    params: {rsa_roi_patterns: pca}\n")
    located_error(write_sweep, text, 9, "stages.rsa.params.rsa_roi_patterns", ["'pca_scores'", "'voxels'"])
