"""The cbm stage end to end: tiny models trained and measured on the local executor, each result recording its
measure (criterion and decision rule) and the class-to-category map in its resolved config; the report labels every
channel with its measure and lists each model without a channel, with the reason."""

from __future__ import annotations

import json
import math
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml
from PIL import Image
from test_report_runs import make_run, write_point
from typer.testing import CliRunner

from sfhpc.cli import app
from sfhpc.evaluation.cbm import half_accuracy_cutoff, lowpass_cutoffs_cpi
from sfhpc.report import write_report
from sfhpc.stages.cbm import (
    CHANCE,
    CHANNEL_FIT_ATTR,
    CRITERION_ATTR,
    CRITERION_RULE_ATTR,
    DECISION_RULE_ATTR,
    FITTED,
    LOWPASS_ACCURACY_CURVE,
    LOWPASS_CUTOFFS_CURVE,
    LOWPASS_HALF,
    NOT_FITTED,
)
from sfhpc.stages.cbm.report import CBM_FIGURE, NO_CHANNEL

runner = CliRunner()
CLASS_LIST = "n01 first | x\nn02 second | y\nn03 third | x\nn04 fourth | y\n"
SWEEP = """\
name: measured
executor: local
data: {data}
grid:
  seed: [0]
stages:
  train:
    params: {{width: 4, epochs: 1, batch_size: 16}}
  cbm:
    params: {{cbm_images: 16, cbm_criterion: {criterion}, cbm_lowpass: {lowpass}}}
"""


def _image_tree(root: Path) -> None:
    """4 classes of 8 train and 4 val images (random pixels), 40 x 36 px."""
    rng = np.random.default_rng(0)
    for folder, count in (("train", 8), ("val", 4)):
        for label in range(1, 5):
            class_dir = root / folder / f"n0{label}"
            class_dir.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (36, 40, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(class_dir / f"{i}.png")


def _launch(awkward_dir: Path, data: str, criterion: str, lowpass: bool) -> Path:
    sweep = awkward_dir / "measured.yaml"
    sweep.write_text(SWEEP.format(data=data, criterion=criterion, lowpass=str(lowpass).lower()))
    run = awkward_dir / "runs" / "measured"
    result = runner.invoke(app, ["sweep", "launch", str(sweep), "--output", str(run)])
    assert result.exit_code == 0, result.output
    return run


@pytest.mark.parametrize("kind", ["imagefolder", "synthetic"])
def test_every_cbm_result_records_its_measure_and_categories(awkward_dir: Path, kind: str):
    if kind == "imagefolder":
        _image_tree(awkward_dir / "image net")
        (awkward_dir / "classes.txt").write_text(CLASS_LIST)
        data = json.dumps({"kind": "imagefolder", "root": str(awkward_dir / "image net"),
                           "classes_file": str(awkward_dir / "classes.txt"), "image_size": 32})
        criterion, categories = "0.5", ["x", "y", "x", "y"]
        rules = ("50%", "mean probability over 2 categories (4 classes)")
    else:
        data = "{image_size: 32, n_classes: 4, n_train: 32, n_val: 8, n_test: 16}"
        criterion, categories = "midpoint", None  # each class its own category: nothing to record
        rules = ("midpoint between chance and the model's noise-free accuracy",
                 "argmax over 4 classes (each its own category)")
    run = _launch(awkward_dir, data, criterion, lowpass=kind == "synthetic")
    (result,) = run.glob("cbm/*/result.h5")
    with h5py.File(result, "r") as f:
        attrs = dict(f.attrs)
        config = yaml.safe_load(attrs["config"])
        metrics = json.loads(attrs["metric_values"])
        noise_free = float(f["curves"]["accuracy"][0, 0])
        curves = {name: f["curves"][name][()] for name in f["curves"]}
    assert config["data"].get("categories") == categories  # the resolved config records the map
    if kind == "synthetic":  # cbm_lowpass: every half-octave cut-off of 32 px images, then the unfiltered images,
        # whose accuracy is the model's own test accuracy (each class its own category, every test image used)
        cutoffs, lowpass = curves[LOWPASS_CUTOFFS_CURVE], curves[LOWPASS_ACCURACY_CURVE]
        assert cutoffs.tolist() == pytest.approx(lowpass_cutoffs_cpi(32)) and len(lowpass) == len(cutoffs) + 1
        assert metrics["lowpass_images"] == 16
        (train,) = run.glob("train/*/result.h5")
        with h5py.File(train, "r") as f:
            assert lowpass[-1] == pytest.approx(json.loads(f.attrs["metric_values"])["test_accuracy"])
        half = metrics[LOWPASS_HALF]
        assert math.isnan(half) or half == pytest.approx(half_accuracy_cutoff(cutoffs.tolist(), lowpass,
                                                                               metrics[CHANCE]))
    else:  # off by default: no low-pass numbers, and no time spent on them
        assert LOWPASS_HALF not in metrics and LOWPASS_CUTOFFS_CURVE not in curves
    assert (attrs[CRITERION_RULE_ATTR], attrs[DECISION_RULE_ATTR]) == rules
    assert metrics[CHANCE] == 1 / (2 if categories else 4)
    expected_criterion = 0.5 if criterion == "0.5" else (metrics[CHANCE] + noise_free) / 2
    assert attrs[CRITERION_ATTR] == pytest.approx(expected_criterion)
    status = attrs[CHANNEL_FIT_ATTR]
    assert status == FITTED or status.startswith(NOT_FITTED)
    assert math.isnan(metrics["bandwidth_octaves"]) == (status != FITTED)

    report = runner.invoke(app, ["aggregate", str(run)])
    assert report.exit_code == 0, report.output
    text = (run / "report.md").read_text()
    assert f"| CBM bandwidth (octaves) [criterion {rules[0]}, {rules[1]}] |" in text
    if status != FITTED:  # the reason stands where the numbers would
        assert f"`{result.parent.name}`: {NO_CHANNEL} — {status.removeprefix(NOT_FITTED)}" in text


SWEEP_FOR_REPORT = """\
name: reported
executor: local
data: {image_size: 32, n_classes: 4, n_train: 64, n_val: 16, n_test: 8}
grid:
  band: [none, lsf]
  seed: [0, 1]
stages:
  train:
    params: {width: 4, epochs: 1}
  cbm:
    params: {cbm_images: 8}
"""
STUDY = {CRITERION_RULE_ATTR: "50%", DECISION_RULE_ATTR: "mean probability over 16 categories (50 classes)"}
MIDPOINT = {CRITERION_RULE_ATTR: "midpoint between chance and the model's noise-free accuracy",
            DECISION_RULE_ATTR: "mean probability over 16 categories (50 classes)"}
FLAT = "flat threshold profile: all 4 bands have threshold 0, so no band is masked more than another and there is " \
       "no channel to fit"


def _write_cbm(run, plan, band: str, seed: int, bandwidth: float, attrs: dict) -> str:
    (point,) = [p for p in plan.stage("cbm").points if (p.labels["band"], p.labels["seed"]) == (band, seed)]
    fitted = math.isfinite(bandwidth)  # as the stage writes it: NaNs without a channel
    write_point(run, "cbm", point.id, {"bandwidth_octaves": bandwidth, "centre_cpi": 7.0 if fitted else math.nan,
                                       "peak_sensitivity": 0.5 if fitted else math.nan,
                                       "clean_grayscale_accuracy": 0.9},
                {"thresholds": np.array([0, 1, 3, 2]), "band_centres_cpi": [1.75, 3.5, 7.0, 14.0]},
                {"upstream": point.upstream[0], **attrs})
    return point.id


def test_the_report_labels_each_channel_with_its_measure_and_lists_no_channel(tmp_path: Path):
    run, plan = make_run(tmp_path / "lab's runs", SWEEP_FOR_REPORT)
    for point in plan.stage("train").points:
        write_point(run, "train", point.id, {"test_accuracy": 0.8})
    _write_cbm(run, plan, "none", 0, 4.0, {**STUDY, CHANNEL_FIT_ATTR: FITTED})
    _write_cbm(run, plan, "none", 1, 5.0, {**STUDY, CHANNEL_FIT_ATTR: FITTED})
    flat = _write_cbm(run, plan, "lsf", 0, math.nan, {**STUDY, CHANNEL_FIT_ATTR: NOT_FITTED + FLAT})
    other = _write_cbm(run, plan, "lsf", 1, 3.0, {**MIDPOINT, CHANNEL_FIT_ATTR: FITTED})
    files = write_report(run)
    text = files.report_md.read_text()
    measure = "criterion 50%, mean probability over 16 categories (50 classes)"
    assert f"| CBM bandwidth (octaves) [{measure}] | band=none | 2 | 4.50 ± 0.50 |" in text
    assert f"| CBM centre (c/img) [{measure}] |" in text
    assert "| band=lsf | 0 | n/a |" in text  # no model of the condition has a channel
    problems = {p["point"]: p for p in files.report.problems}
    assert (problems[flat]["state"], problems[flat]["reason"]) == (NO_CHANNEL, FLAT)
    assert f"`{flat}`: {NO_CHANNEL} — {FLAT}" in text
    # Another measure is never averaged with the first: listed, left out.
    assert problems[other]["state"] == "inconsistent" and "midpoint" in problems[other]["reason"]
    assert not any(m.values.get("bandwidth_octaves") == 3.0 for m in files.report.models)
    assert (run.path / "figures" / CBM_FIGURE).stat().st_size > 10_000


def test_a_result_written_before_the_measure_was_recorded_says_so(tmp_path: Path):
    run, plan = make_run(tmp_path / "runs", SWEEP_FOR_REPORT)
    for point in plan.stage("train").points:
        write_point(run, "train", point.id, {"test_accuracy": 0.8})
    _write_cbm(run, plan, "none", 0, 4.0, {})
    text = write_report(run).report_md.read_text()
    assert "| CBM bandwidth (octaves) [criterion and decision rule not recorded (a result written before they " \
           "were)] |" in text
