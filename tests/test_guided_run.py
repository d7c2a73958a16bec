"""A guided sweep end to end on the local executor: predictors, guided and unguided training, RSA, the report."""

from __future__ import annotations

import csv
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from sfhpc.cli import app
from sfhpc.config import ROIS

GUIDED_SWEEP = """\
name: guided
executor: local
data:
  image_size: 32
  n_classes: 4
  n_train: 64
  n_val: 32
  n_test: 32
  neural: {n_images: 60, n_shared: 20}
grid:
  alpha: [0, 0.9]
  roi: [TO]
  seed: [0, 1]
stages:
  predictor: {params: {predictor_width: 4, predictor_epochs: 2, predictor_batch_size: 16}}
  train: {params: {width: 4, epochs: 1, batch_size: 32}}
  rsa: {params: {rsa_permutations: 50}}
"""
runner = CliRunner()


@pytest.fixture(scope="module")
def guided_run(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("guided") / "lab's runs"
    folder.mkdir()
    sweep = folder / "guided.yaml"
    sweep.write_text(GUIDED_SWEEP)
    run_dir = folder / "runs" / "guided"
    result = runner.invoke(app, ["sweep", "launch", str(sweep), "--output", str(run_dir), "--parallel", "2"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["aggregate", str(run_dir)])
    assert result.exit_code == 0, result.output
    return run_dir


def rsa_rows(result: Path) -> list[tuple[str, str, str]]:
    with h5py.File(result) as f:
        return list(zip(*(np.char.decode(f[f"curves/{name}"][()], "utf-8").tolist()
                          for name in ("subject", "layer", "roi")), strict=True))


def test_every_point_finishes_and_guided_models_read_their_predictor(guided_run: Path):
    assert len(list(guided_run.glob("predictor/*/result.h5"))) == 1
    assert len(list(guided_run.glob("train/*/result.h5"))) == 2 + 2  # unguided and TO-guided, per seed
    for path in guided_run.glob("train/*/result.h5"):
        with h5py.File(path) as f:
            guided = "alpha: 0.9" in f.attrs["config"]
            assert np.isfinite(f["metrics/neural_fit_r"][()]) == guided


def test_rsa_compares_each_model_with_every_roi_of_its_subject(guided_run: Path):
    results = list(guided_run.glob("rsa/*/result.h5"))
    assert len(results) == 4
    for path in results:
        rows = rsa_rows(path)
        layers = {layer for _, layer, _ in rows}
        guided = path.parent.name.startswith("alpha=0.9")
        assert layers == ({"pooled", "neural_head"} if guided else {"pooled"})
        assert [roi for _, layer, roi in rows if layer == "pooled"] == list(ROIS)
        assert {subject for subject, _, _ in rows} == {"subj01"}
        with h5py.File(path) as f:
            p = f["curves/p_value"][()]
            assert ((p >= 1 / 51) & (p <= 1)).all() and f["curves/null"].shape == (len(rows), 50)


def test_report_tests_guided_conditions_against_the_unguided_baseline(guided_run: Path):
    rows = list(csv.DictReader((guided_run / "conditions.csv").open()))
    guided = [r for r in rows if r["condition"].startswith("alpha=0.9") and r["metric"] == "test_accuracy"]
    assert {r["condition"] for r in guided} == {"alpha=0.9, roi=TO"}
    assert {r["baseline"] for r in guided} == {"alpha=0.0, roi=None"}
    assert all(r["pairs"] == "2" and r["p_value"] != "" for r in guided)
    assert any(r["metric"] == "rsa_rho_pooled_TO" for r in rows)
    report = (guided_run / "report.md").read_text()
    assert "Similarity to human neural geometry (RSA)" in report and "figures/rsa_per_roi.png" in report
    assert (guided_run / "figures" / "rsa_per_roi.png").stat().st_size > 10_000
