"""The report's Neural guidance table (SCIENCE.md section 2): each guided model's share of the loss its neural term
had, its predictor's validation r beside the r a perfect predictor could expect, and a warning naming conditions
whose guidance was negligible. Run folders made by hand (a real expansion, result files with chosen numbers)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

from test_report_runs import make_run, write_point

from sfhpc.report import write_report

SWEEP = """\
name: guidance
executor: local
data: {image_size: 32, n_classes: 4, n_train: 64, n_val: 16, n_test: 8, neural: {n_images: 40, n_shared: 10}}
grid:
  roi: [V1, TO]
  alpha: [0, 0.9]
  seed: [0, 1]
stages:
  predictor: {params: {predictor_width: 4, predictor_epochs: 1}}
  train: {params: {width: 4, epochs: 1}}
"""
SHARE = {"V1": 0.04, "TO": 0.4}  # V1's guidance is negligible (under 10% of the loss)
PREDICTOR_R = {"V1": (0.31, 0.57), "TO": (0.53, 0.67)}  # (validation r, ceiling)


def fabricated(folder: Path):
    run, plan = make_run(folder, SWEEP)
    for point in plan.stage("predictor").points:
        r, ceiling = PREDICTOR_R[point.labels["roi"]]
        write_point(run, "predictor", point.id, {"val_pearson_mean": r, "val_pearson_ceiling": ceiling})
    for point in plan.stage("train").points:
        guided = float(point.labels["alpha"]) > 0
        share = SHARE[point.labels["roi"]] + 0.01 * point.labels["seed"] if guided else math.nan
        write_point(run, "train", point.id, {"test_accuracy": 0.5, "neural_loss_share": share})
    return run


def rows(path: Path) -> dict[tuple[str, str], dict[str, str]]:
    with path.open() as f:
        return {(row["condition"], row["metric"]): row for row in csv.DictReader(f)}


def test_guided_conditions_show_their_share_of_the_loss_and_their_predictors_fit(tmp_path: Path):
    files = write_report(fabricated(tmp_path))
    table = rows(files.conditions_csv)
    to = "roi=TO, alpha=0.9"
    assert float(table[(to, "neural_loss_share")]["mean"]) == 0.405
    assert float(table[(to, "predictor_val_pearson_mean")]["mean"]) == 0.53
    assert float(table[(to, "predictor_val_pearson_ceiling")]["mean"]) == 0.67
    markdown = files.report_md.read_text()
    assert "## Neural guidance" in markdown


def test_the_report_warns_where_guidance_was_negligible(tmp_path: Path):
    markdown = write_report(fabricated(tmp_path)).report_md.read_text()
    warning = next(line for line in markdown.splitlines() if "guidance was negligible" in line)
    assert "roi=V1, alpha=0.9" in warning and "roi=TO" not in warning and "10%" in warning


def test_a_run_without_guided_models_has_no_guidance_table(tmp_path: Path):
    run, plan = make_run(tmp_path, SWEEP.replace("  roi: [V1, TO]\n  alpha: [0, 0.9]\n", "").replace(
        "  predictor: {params: {predictor_width: 4, predictor_epochs: 1}}\n", ""))
    for point in plan.stage("train").points:  # unguided: the train stage writes NaN for the neural share
        write_point(run, "train", point.id, {"test_accuracy": 0.5, "neural_loss_share": math.nan})
    markdown = write_report(run).report_md.read_text()
    assert "## Accuracy and robust accuracy" in markdown and "Neural guidance" not in markdown
