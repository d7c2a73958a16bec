"""Guided models against their controls (SCIENCE.md section 2): the same-alpha shuffled- and random-predictor models
and the weight-decay-only models, each seed-paired, checked against scipy.stats.ttest_rel and against the pairs a
reader would pick by hand from the sweep's labels. Run folders are made by hand (a manifest from a real expansion,
result files with chosen numbers): no training."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
from pathlib import Path
from typing import get_args

import numpy as np
import pytest
from scipy import stats
from test_report_runs import make_run, write_point

from sfhpc.report import control_pairs, controls_json, write_report
from sfhpc.report.model import Family, Model, ReportedMetric
from sfhpc.report.render import CONTROLS_CSV_COLUMNS
from sfhpc.report.stats import TEST_NAME
from sfhpc.stages.predictor import PredictorParams
from sfhpc.stages.train import report as train_report
from sfhpc.stages.train.report import CONTROLS, RANDOM, SHUFFLED, TRAINED

GRID = """\
name: controls
executor: local
data: {{image_size: 32, n_classes: 4, n_train: 64, n_val: 16, n_test: 8, neural: {{n_images: 40, n_shared: 10}}}}
grid:
  subject: [subj01, subj02]
  roi: [V1, TO]
  predictor: {predictors}
  alpha: [0, 0.5, 0.9]
  weight_decay: {weight_decays}
  seed: [0, 1, 2]
exclude:
{exclude}
stages:
  predictor: {{params: {{predictor_width: 4, predictor_epochs: 1}}}}
  train: {{params: {{width: 4, epochs: 1}}}}
"""
# The study's design in small: shuffled and random predictors at alpha 0.9 only (alpha 0.5 lacks them), and
# weight-decay-only models at alpha 0.
STUDY = GRID.format(predictors="[trained, shuffled, random]", weight_decays="[0.0001, 0.003, 0.01]", exclude="""\
  - {alpha: [0.5, 0.9], weight_decay: [0.003, 0.01]}
  - {alpha: 0.5, predictor: [shuffled, random]}""")
NO_WEIGHT_DECAY = GRID.format(predictors="[trained, shuffled]", weight_decays="[0.0001]",
                              exclude="  - {alpha: 0.5, predictor: shuffled}")
NONE_OF_THEM = GRID.format(predictors="[trained]", weight_decays="[0.0001]", exclude="  - {alpha: 0.5}")
VALIDATION = "val_accuracy"  # a second metric, in a second family: one control table per family
SHUFFLED_V1 = {"subject": "subj01", "roi": "V1", "predictor": "shuffled", "alpha": 0.9}
MISSING = {**SHUFFLED_V1, "seed": 2}  # never written
NAN_VALIDATION = {**SHUFFLED_V1, "seed": 1}  # its validation accuracy is NaN: one pair left, no p


@pytest.fixture
def two_families(monkeypatch):
    """The train stage's report with a second metric in a second family (the report reads REPORT when it runs)."""
    report = dataclasses.replace(
        train_report.REPORT, families=(*train_report.REPORT.families, Family("validation", "Validation", "")),
        metrics=(*train_report.REPORT.metrics, ReportedMetric(VALIDATION, "validation accuracy", "validation")))
    monkeypatch.setattr(train_report, "REPORT", report)


def is_model(labels: dict, which: dict) -> bool:
    return all(labels.get(axis) == value for axis, value in which.items())


def fabricated_run(folder: Path, sweep: str):
    """The sweep's run with a test and a validation accuracy for every model but MISSING (NAN_VALIDATION's is NaN);
    returns (run, plan, values: metric -> condition -> seed -> finite value)."""
    run, plan = make_run(folder, sweep)
    rng = np.random.default_rng(13)
    values: dict[str, dict[str, dict[int, float]]] = {"test_accuracy": {}, VALIDATION: {}}
    for point in plan.stage("train").points:
        if is_model(point.labels, MISSING):
            continue
        written = {"test_accuracy": float(rng.uniform(0.5, 0.9)), VALIDATION: float(rng.uniform(0.4, 0.8))}
        if is_model(point.labels, NAN_VALIDATION):
            written[VALIDATION] = math.nan
        write_point(run, "train", point.id, written)
        for metric, value in written.items():
            by_seed = values[metric].setdefault(condition_of(point.labels), {})
            if math.isfinite(value):
                by_seed[point.labels["seed"]] = value
    return run, plan, values


def condition_of(labels: dict) -> str:
    return ", ".join(f"{axis}={value}" for axis, value in labels.items() if axis != "seed")


def expected_comparisons(plan) -> set[tuple[str, str, str]]:
    """(condition, kind, control) as a reader picks them from the labels: a model guided by the trained predictor
    against the shuffled and the random one of its own subject, ROI and alpha, and against each alpha-0 model with
    more weight decay."""
    labels = {condition_of(p.labels): p.labels for p in plan.stage("train").points}
    expected = set()
    for condition, guided in labels.items():
        if guided["predictor"] != TRAINED or guided["alpha"] == 0:
            continue
        for other, control in labels.items():
            same_guidance = all(control[axis] == guided[axis] for axis in ("subject", "roi", "alpha", "weight_decay"))
            if same_guidance and control["predictor"] in (SHUFFLED, RANDOM):
                expected.add((condition, f"{control['predictor']}-predictor", other))
            if control["alpha"] == 0 and control["weight_decay"] > guided["weight_decay"]:
                expected.add((condition, "weight-decay-only", other))
    return expected


@pytest.fixture
def study_run(tmp_path: Path, two_families):
    run, plan, values = fabricated_run(tmp_path / "lab's runs", STUDY)
    return run, plan, values, write_report(run)


def test_each_comparison_is_the_seed_paired_t_test_of_scipy(study_run):
    _, plan, values, files = study_run
    rows = files.report.control_rows
    assert {(r.condition, r.kind, r.control) for r in rows} == expected_comparisons(plan)
    assert len(rows) == 2 * len(expected_comparisons(plan))  # one row per metric
    for row in rows:
        guided, control = values[row.metric][row.condition], values[row.metric][row.control]
        seeds = sorted(set(guided) & set(control))
        a, b = [guided[s] for s in seeds], [control[s] for s in seeds]
        assert row.pairs == len(seeds) and row.test == TEST_NAME
        assert row.delta == pytest.approx(np.mean(np.subtract(a, b)))
        if len(seeds) >= 2:
            assert row.p_value == pytest.approx(stats.ttest_rel(a, b).pvalue, rel=1e-9)
        else:
            assert math.isnan(row.p_value)
        assert row.control_mean == pytest.approx(np.mean(list(control.values())))
    shuffled_v1 = condition_of({**SHUFFLED_V1, "weight_decay": 0.0001})
    short = {r.metric: r.pairs for r in rows if r.control == shuffled_v1}
    assert short == {"test_accuracy": 2, VALIDATION: 1}  # MISSING left out of the pairs, NaN too; never filled in


def test_a_guided_model_is_never_compared_with_a_control_of_another_subject_roi_or_alpha(study_run):
    _, plan, _, files = study_run
    labels = {condition_of(p.labels): p.labels for p in plan.stage("train").points}
    predictor_rows = [r for r in files.report.control_rows if r.kind != "weight-decay-only"]
    assert len(predictor_rows) == 2 * 2 * 2 * 2  # subjects x ROIs x (shuffled, random) x metrics, alpha 0.9
    for row in predictor_rows:
        guided, control = labels[row.condition], labels[row.control]
        assert [guided[a] for a in ("subject", "roi", "alpha")] == [control[a] for a in ("subject", "roi", "alpha")]
        assert guided["alpha"] == 0.9 and control["predictor"] != TRAINED
    for row in files.report.control_rows:
        assert labels[row.condition]["predictor"] == TRAINED and labels[row.condition]["alpha"] > 0


def test_controls_csv_holds_every_comparison(study_run):
    run, _, _, files = study_run
    assert files.controls_csv == run.path / "controls.csv"
    lines = list(csv.DictReader(io.StringIO(files.controls_csv.read_text())))
    assert list(lines[0]) == CONTROLS_CSV_COLUMNS
    assert len(lines) == len(files.report.control_rows) == 2 * (8 * 2 + 4 * 2)  # metrics x (wd, predictor kinds)
    for line, row in zip(lines, files.report.control_rows, strict=True):
        assert (line["condition"], line["metric"], line["kind"], line["control"]) == (
            row.condition, row.metric, row.kind, row.control)
        assert (int(line["pairs"]), float(line["delta"])) == (row.pairs, row.delta)
        assert line["p_value"] == ("" if math.isnan(row.p_value) else repr(row.p_value))  # NaN: an empty cell
    conditions = {line["condition"] for line in csv.DictReader(io.StringIO(files.conditions_csv.read_text()))}
    assert {line["control"] for line in lines} <= conditions  # a control is named as conditions.csv names it


def test_report_md_compares_with_the_controls_after_the_baseline_tables_and_names_what_is_missing(study_run):
    _, _, _, files = study_run
    text = files.report_md.read_text()
    section = text.index("## Guided models against their controls")
    assert text.index("## Accuracy and robust accuracy") < section < text.index("## Problems")
    assert text.count("| metric | condition | control | pairs | Δ vs control | p |") == 2  # one table per family
    assert text.index("### Accuracy and robust accuracy") < text.index("### Validation")
    assert "No shuffled-predictor control for 4 of the 8 compared conditions: " in text
    assert "No random-predictor control for 4 of the 8 compared conditions: " in text
    assert "`subject=subj02, roi=TO, predictor=trained, alpha=0.5, weight_decay=0.0001`" in text
    assert "no weight-decay-only control" not in text
    row = next(r for r in files.report.control_rows if r.kind == "shuffled-predictor" and r.metric == "test_accuracy"
               and r.pairs == 3)
    assert (f" | {row.condition} | shuffled-predictor (predictor=shuffled) | 3 | {row.delta:+.3f} | "
            f"{row.p_value:.3f} (df 2) |") in text
    one = next(r for r in files.report.control_rows if r.pairs == 1)
    assert (f" | {one.condition} | shuffled-predictor (predictor=shuffled) | 1 | {one.delta:+.3f} | n/a (1 pair) |"
            in text)
    first = files.report.control_rows[0]
    assert f"| clean test accuracy | {first.condition} | {first.kind} (" in text  # the metric on its first row
    assert "| weight-decay-only (alpha=0.0, weight_decay=0.01) | 3 |" in text


def test_json_names_the_missing_controls_and_writes_nan_as_null(tmp_path: Path, two_families):
    run, _, _ = fabricated_run(tmp_path, NO_WEIGHT_DECAY)
    files = write_report(run)
    found = controls_json(files.report)
    guided = [c for c in files.report.conditions if "predictor=trained" in c]
    assert found is not None and found["missing"]["weight-decay-only"] == guided
    assert found["missing"]["shuffled-predictor"] == [c for c in guided if "alpha=0.5" in c]
    assert found["missing"]["random-predictor"] == guided
    assert set(found["kinds"]) == {kind.name for kind in CONTROLS.kinds}
    short = {c["metric"]: c["p_value"] for c in found["comparisons"] if c["pairs"] < 3}
    assert short["test_accuracy"] is not None and short[VALIDATION] is None  # 2 pairs: a p; 1 pair: none (NaN)
    assert list(found["comparisons"][0]) == CONTROLS_CSV_COLUMNS
    assert json.loads(json.dumps(found, allow_nan=False)) == found  # strict JSON
    text = files.report_md.read_text()
    assert "This sweep has no random-predictor control." in text
    assert "This sweep has no weight-decay-only control." in text


def test_a_sweep_without_any_control_gains_one_line_and_keeps_its_other_outputs(tmp_path: Path, monkeypatch):
    run, _, _ = fabricated_run(tmp_path, NONE_OF_THEM)
    files = write_report(run)
    text = files.report_md.read_text()
    assert ("*No control comparisons: this sweep has none of the controls (shuffled-predictor, random-predictor, "
            "weight-decay-only) of the guided models (alpha > 0, trained predictor), so they are tested against the "
            "baseline only.*") in text
    assert "## Guided models against their controls" not in text
    assert files.controls_csv.read_text().splitlines() == [",".join(CONTROLS_CSV_COLUMNS)]  # its header alone
    with_controls = {name: (run.path / name).read_bytes() for name in ("conditions.csv", "report.md")}
    monkeypatch.setattr(train_report, "REPORT", dataclasses.replace(train_report.REPORT, controls=None))
    write_report(run)
    assert (run.path / "conditions.csv").read_bytes() == with_controls["conditions.csv"]
    without = (run.path / "report.md").read_text()
    line = next(part for part in text.split("\n\n") if "No control comparisons" in part)
    assert "No control comparisons" not in without and text.replace(line + "\n\n", "") == without


def test_conditions_csv_is_the_same_with_or_without_the_controls(study_run, monkeypatch):
    run, _, _, files = study_run
    before = files.conditions_csv.read_bytes()
    monkeypatch.setattr(train_report, "REPORT", dataclasses.replace(train_report.REPORT, controls=None))
    assert write_report(run).conditions_csv.read_bytes() == before


def test_a_sweep_without_guided_models_says_there_is_nothing_to_compare(tmp_path: Path):
    steering = GRID.format(predictors="[trained]", weight_decays="[0.0001, 0.003]", exclude="  - {alpha: [0.5, 0.9]}")
    run, _, _ = fabricated_run(tmp_path, steering)
    files = write_report(run)
    assert files.report.control_rows == [] and files.report.control_pairs == {}
    assert ("*No control comparisons: this sweep has no guided models (alpha > 0, trained predictor).*"
            in files.report_md.read_text())


def model(condition: str, predictor: str | None = None, **labels) -> Model:
    """A model as the report builds it (seed 0): its labels, its train parameters, and its predictor's parameters
    among its upstream ones when it is guided."""
    labels = {"roi": None, "predictor": predictor, "alpha": 0.0, "band": "none", "weight_decay": 1e-4, "lr": 0.1,
              **labels, "seed": 0}
    params = {axis: labels[axis] for axis in ("alpha", "band", "weight_decay", "lr", "seed")}
    upstream = {"roi": labels["roi"], "predictor": predictor} if predictor else {}
    return Model(condition, labels, params, condition, 0, upstream_params=upstream)


def test_control_rules_pair_equal_axes_want_more_weight_decay_and_read_the_predictor_upstream():
    models = [
        model("guided V1", TRAINED, roi="V1", alpha=0.9),
        model("guided V1, wd 0.003", TRAINED, roi="V1", alpha=0.9, weight_decay=0.003),
        model("guided V1, lr 0.05", TRAINED, roi="V1", alpha=0.9, lr=0.05),
        model("shuffled V1", SHUFFLED, roi="V1", alpha=0.9),
        model("shuffled TO", SHUFFLED, roi="TO", alpha=0.9),
        model("shuffled V1, alpha 0.5", SHUFFLED, roi="V1", alpha=0.5),
        model("random V1, lr 0.05", RANDOM, roi="V1", alpha=0.9, lr=0.05),
        model("baseline"),
        model("wd 0.003", weight_decay=0.003),
        model("wd 0.01", weight_decay=0.01),
        model("wd 0.01, lr 0.05", weight_decay=0.01, lr=0.05),
        model("steered, wd 0.01", band="lsf", weight_decay=0.01),  # steered: no weight-decay-only control
    ]
    pairs = control_pairs(models, CONTROLS)
    assert pairs == {
        "guided V1": {"shuffled-predictor": ["shuffled V1"], "random-predictor": [],
                      "weight-decay-only": ["wd 0.003", "wd 0.01"]},
        "guided V1, wd 0.003": {"shuffled-predictor": [], "random-predictor": [], "weight-decay-only": ["wd 0.01"]},
        "guided V1, lr 0.05": {"shuffled-predictor": [], "random-predictor": ["random V1, lr 0.05"],
                               "weight-decay-only": ["wd 0.01, lr 0.05"]},
    }
    # The predictor's kind is a parameter of the point a model reads: a sweep that fixes it (no axis) still tells
    # a model guided by a shuffled predictor from one guided by a trained predictor.
    fixed = model("guided by a fixed shuffled predictor", SHUFFLED, roi="V1", alpha=0.9)
    fixed.labels["predictor"] = None
    assert control_pairs([fixed, *(m for m in models if m.params["alpha"] == 0)], CONTROLS) == {}
    assert control_pairs(models, None) == {}


def test_the_control_rules_name_the_predictor_stage_s_parameter_and_values():
    field = PredictorParams.model_fields[train_report.PREDICTOR]
    assert set(get_args(field.annotation)) == {TRAINED, SHUFFLED, RANDOM} and field.default == TRAINED
    assert train_report.DEFAULT_WEIGHT_DECAY == 1e-4
