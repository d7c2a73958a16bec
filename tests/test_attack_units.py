"""Epsilons carry their unit (SCIENCE.md section 5): the conversion from the model's normalisation units to
AutoAttack's pixel epsilon, in numbers; what every attack result records; the report's labels and figure axes in both
units. No training and no attack: results are written by hand with the stage's own record of the epsilons."""

from __future__ import annotations

import json
import math
import typing
from pathlib import Path

import numpy as np
import pytest
from test_report_runs import make_run as make_plain_run
from test_report_runs import write_point

from sfhpc.evaluation.attack import (
    EPS_GRIDS,
    EPS_UNITS,
    RANDOM_STARTS,
    conversion_error,
    conversion_sd,
    normalized_epsilon,
    pixel_epsilons,
    validate_attack_settings,
)
from sfhpc.report import build_report
from sfhpc.report.render import headline_rows
from sfhpc.rundir import RunDir
from sfhpc.stages.attack import MODEL_INPUT_STD, AttackParams, robust_curve_name
from sfhpc.stages.attack.report import draw_robust_accuracy, eps_label, format_eps, merge_attack_shards
from sfhpc.sweep import Plan

IMAGENET_SD = (0.229, 0.224, 0.225)
STUDY_LINF = [0.001 + 0.002 * i for i in range(10)]  # SCIENCE.md section 5, normalized units
STUDY_L2_FACTOR = math.sqrt(3 * 224**2)  # the study's L2 list: the Linf list x sqrt(3 * 224^2)


# --- the conversion ---------------------------------------------------------------------------------------------

def test_conversion_uses_the_smallest_imagenet_sd_and_its_error_is_2_18_percent():
    assert conversion_sd(IMAGENET_SD) == 0.224
    # red: exact pixel radius eps * 0.229, used eps * 0.224
    assert conversion_error(IMAGENET_SD) == pytest.approx((0.229 - 0.224) / 0.229)
    assert round(100 * conversion_error(IMAGENET_SD), 2) == 2.18


def test_study_grid_in_pixels():
    pixels = pixel_epsilons({"Linf": STUDY_LINF, "L2": [e * STUDY_L2_FACTOR for e in STUDY_LINF]}, "normalized",
                            IMAGENET_SD)
    linf_255 = [round(e * 255, 4) for e in pixels["Linf"]]
    assert linf_255[0] == 0.0571 and linf_255[-1] == 1.0853  # "about 0.06/255 .. 1.1/255" (SCIENCE.md)
    assert pixels["L2"][0] == pytest.approx(0.001 * 387.979 * 0.224, rel=1e-6)  # about 0.09
    assert pixels["L2"][-1] == pytest.approx(0.019 * 387.979 * 0.224, rel=1e-6)  # about 1.65
    assert [normalized_epsilon(e, IMAGENET_SD) for e in pixels["Linf"]] == pytest.approx(STUDY_LINF, rel=1e-12)


def test_pixel_unit_leaves_epsilons_as_given():
    given = {"Linf": (1 / 255, 8 / 255), "L2": (0.5,)}
    assert pixel_epsilons(given, "pixel") == given
    assert normalized_epsilon(8 / 255, IMAGENET_SD) == pytest.approx(0.140056, rel=1e-5)


@pytest.mark.parametrize("norm", ["Linf", "L2", "L1"])
def test_attacks_ball_never_leaves_the_studys_normalized_ball(norm):
    """The worst perturbations AutoAttack may try in pixels (each channel at the full radius) stay inside the
    normalized ball in every channel; the mean SD (0.226) would leave it."""
    eps = 0.01
    ord_ = {"Linf": np.inf, "L2": 2, "L1": 1}[norm]
    radius = pixel_epsilons({norm: [eps]}, "normalized", IMAGENET_SD)[norm][0]
    rng = np.random.default_rng(0)
    directions = np.vstack([np.eye(3), np.ones((1, 3)), rng.normal(size=(200, 3))])
    perturbations = radius * directions / np.linalg.norm(directions, ord=ord_, axis=1, keepdims=True)
    normalized = np.linalg.norm(perturbations / np.array(IMAGENET_SD), ord=ord_, axis=1)
    assert normalized.max() <= eps * (1 + 1e-12)
    mean_sd = np.mean(IMAGENET_SD)
    assert np.linalg.norm(eps * mean_sd * np.array([0, 1, 0]) / IMAGENET_SD, ord=ord_) > eps


def test_model_input_std_is_what_every_classifier_normalises_with():
    from sfhpc.models.bands import BANDS
    from sfhpc.models.classifier import IMAGENET_STD, build_classifier
    from sfhpc.stages.attack.run import normalization_std

    assert MODEL_INPUT_STD == IMAGENET_STD == IMAGENET_SD
    for arch in ("small_resnet", "resnet18"):
        for band in BANDS:
            model = build_classifier(arch, 4, band, 128, width=4)
            assert normalization_std(model) == MODEL_INPUT_STD, (arch, band)


@pytest.mark.parametrize(("given", "unit", "message"), [
    ({"Linf": [5.0]}, "normalized", r"Linf epsilon 5 in normalized units is 1\.12 in pixel units \(x SD 0\.224\)"),
    ({"Linf": [1.0]}, "pixel", r"Linf epsilon 1 \(pixel units of \[0, 1\] images\) is 1 or more"),
    ({"Linf": [0.01]}, "percent", r"unknown epsilon unit 'percent'; choose from pixel, normalized"),
])
def test_bad_units_and_balls_that_hold_every_image_are_refused(given, unit, message):
    with pytest.raises(ValueError, match=message):
        validate_attack_settings("standard", None, list(given), given, 1, 10, unit, IMAGENET_SD)


def test_large_normalized_l2_and_linf_below_one_pixel_are_accepted():
    validate_attack_settings("standard", None, ["Linf", "L2"], {"Linf": [4.0], "L2": [50.0]}, 1, 10, "normalized",
                             IMAGENET_SD)


def test_the_params_units_are_the_conversions():
    assert typing.get_args(AttackParams.model_fields["attack_eps_unit"].annotation) == EPS_UNITS
    assert AttackParams().attack_eps_unit == "pixel"


def test_the_params_grids_are_the_evaluations_and_monotone_is_the_default():
    assert typing.get_args(AttackParams.model_fields["attack_eps_grid"].annotation) == EPS_GRIDS
    assert AttackParams().attack_eps_grid == "monotone"


def test_the_params_random_starts_reach_the_settings_and_the_result():
    from sfhpc.stages.attack.run import epsilon_record, settings_of

    assert typing.get_args(AttackParams.model_fields["attack_random_start"].annotation) == RANDOM_STARTS
    for params, expected in ((AttackParams(), "image"), (AttackParams(attack_random_start="batch"), "batch")):
        settings = settings_of(params, IMAGENET_SD)
        assert {s.random_start for s in settings} == {expected}
        assert {e["random_start"] for e in json.loads(epsilon_record(params, settings, IMAGENET_SD)["settings"])} \
            == {expected}


# --- what a result records ----------------------------------------------------------------------------------------

def test_epsilon_record_states_both_units():
    from sfhpc.stages.attack.run import epsilon_record, settings_of

    params = AttackParams(attack_eps_unit="normalized", attack_eps={"Linf": [0.001, "1/255"], "L2": [0.5]})
    settings = settings_of(params, IMAGENET_SD)
    assert [(s.norm, s.eps) for s in settings] == [("Linf", 0.001 * 0.224), ("Linf", 1 / 255 * 0.224),
                                                   ("L2", 0.5 * 0.224)]
    record = epsilon_record(params, settings, IMAGENET_SD)
    assert record["eps_unit"] == "normalized" and record["eps_sd"] == 0.224
    assert record["normalization_std"] == [0.229, 0.224, 0.225]
    entries = json.loads(record["settings"])
    assert [e["eps"] for e in entries] == [s.eps for s in settings]  # pixel: what AutoAttack ran with
    assert [e["eps_normalized"] for e in entries] == pytest.approx([0.001, 1 / 255, 0.5], rel=1e-12)

    pixel = AttackParams(attack_eps={"Linf": ["8/255"]})
    (entry,) = json.loads(epsilon_record(pixel, settings_of(pixel, IMAGENET_SD), IMAGENET_SD)["settings"])
    assert entry["eps"] == 8 / 255 and entry["eps_normalized"] == pytest.approx(8 / 255 / 0.224)


def test_settings_follow_the_grid_and_the_result_records_it():
    from sfhpc.stages.attack.run import grid_record, settings_of

    eps = {"Linf": ["4/255", "1/255", "2/255"], "L2": [0.5]}
    monotone = AttackParams(attack_eps=eps)
    settings = settings_of(monotone, IMAGENET_SD)
    assert [(s.norm, s.eps, s.smaller_eps) for s in settings] == [
        ("Linf", 4 / 255, (1 / 255, 2 / 255)), ("Linf", 1 / 255, ()), ("Linf", 2 / 255, (1 / 255,)), ("L2", 0.5, ())]
    assert {s.eps_grid for s in settings} == {"monotone"}
    flags = {s.key(): np.array(robust, dtype=bool)
             for s, robust in zip(settings, ([0, 0, 1], [1, 1, 0], [1, 0, 1], [1, 1, 1]), strict=True)}
    record = grid_record(monotone, settings, flags)
    assert record["eps_grid"] == "monotone"
    assert json.loads(record["nonmonotone_images"]) == {"Linf": 1, "L2": 0}  # image 2: robust at 2/255 and 4/255 only

    independent = AttackParams(attack_eps=eps, attack_eps_grid="independent")
    assert {(s.eps_grid, s.smaller_eps) for s in settings_of(independent, IMAGENET_SD)} == {("independent", ())}


# --- the report ---------------------------------------------------------------------------------------------------

SWEEP = """\
name: units
executor: local
data: {image_size: 32, n_classes: 4, n_train: 64, n_val: 16, n_test: 8}
grid:
  band: [none, lsf]
  seed: [0, 1]
stages:
  train:
    params: {width: 4, epochs: 1}
  attack:
    params:
      attack_eps_unit: normalized
      attack_eps: {Linf: [0.001, 0.019], L2: [0.387979]}
      attack_shards: 2
"""


def make_run(folder: Path) -> tuple[RunDir, Plan]:
    """A run folder with the manifest `sweep launch` writes, train results, and attack shards written with the stage's
    own record of the epsilons (4 images each; robust counts chosen)."""
    from sfhpc.stages.attack.run import epsilon_record, settings_of

    run, plan = make_plain_run(folder, SWEEP)
    for point in plan.stage("train").points:
        write_point(run, "train", point.id, {"test_accuracy": 0.8, "val_accuracy": 0.8, "chance": 0.25})
    for point in plan.stage("attack").points:
        params = AttackParams.model_validate(point.params)
        settings = settings_of(params, IMAGENET_SD)
        curves = {"clean_correct": np.array([True, True, True, False]),
                  **{robust_curve_name(s.norm, s.eps): np.array([True, i == 0, False, False])
                     for i, s in enumerate(settings)}}
        write_point(run, "attack", point.id, {"images": 4}, curves,
                    {"upstream": point.upstream[0], "shard": params.attack_shard, "shards": 2,
                     **epsilon_record(params, settings, IMAGENET_SD)})
    return run, plan


@pytest.fixture(scope="module")
def units_run(tmp_path_factory) -> tuple[RunDir, Plan]:
    return make_run(tmp_path_factory.mktemp("units"))


def test_merged_shards_keep_both_units(units_run):
    run, plan = units_run
    shards = [run.result_path("attack", p.id) for p in plan.stage("attack").points[:2]]
    merged = merge_attack_shards(shards)
    assert merged.eps_sd == 0.224
    assert merged.eps_normalized == pytest.approx({("Linf", 0.001 * 0.224): 0.001, ("Linf", 0.019 * 0.224): 0.019,
                                                   ("L2", 0.387979 * 0.224): 0.387979}, rel=1e-12)
    assert merged.robust_accuracy[("Linf", 0.001 * 0.224)] == 4 / 8  # 2 robust images of 4 per shard
    assert merged.robust_accuracy[("L2", 0.387979 * 0.224)] == 2 / 8
    assert merged.eps_grid == "independent"  # results that record no grid were attacked before grids existed


def test_report_tables_and_terminal_show_both_units(units_run):
    run, _ = units_run
    report = build_report(run)
    labels = [metric.label for metric in report.metrics.values()]
    assert "robust accuracy, L∞ ε=0.0571/255 px (0.001 norm.)" in labels
    assert "robust accuracy, L∞ ε=1.09/255 px (0.019 norm.)" in labels
    assert "robust accuracy, L2 ε=0.08691 px (0.388 norm.)" in labels
    header, _ = headline_rows(report)
    assert "L∞ ε=1.09/255 px (0.019 norm.)" in header and "L2 ε=0.08691 px (0.388 norm.)" in header


def test_figure_has_a_normalized_axis_over_the_pixel_axis(units_run, monkeypatch, tmp_path):
    import sfhpc.stages.attack.report as attack_report

    run, _ = units_run
    figures = []
    monkeypatch.setattr(attack_report, "save_figure", lambda fig, path: figures.append(fig))
    assert draw_robust_accuracy(build_report(run), tmp_path / "robust.png")
    (figure,) = figures
    figure.draw_without_rendering()  # lays out the secondary axes' limits
    panels = [ax for ax in figure.axes if ax.get_ylabel() == "accuracy"]
    assert [ax.get_xlabel() for ax in panels] == ["ε × 255, pixels (0 = clean)",
                                                  "ε (L2), pixels of images in [0, 1] (0 = clean)"]
    for ax, scale in zip(panels, (255, 1), strict=True):
        (top,) = ax.child_axes
        assert top.get_xlabel() == "ε, normalized units (pixel ε / SD 0.224)"
        np.testing.assert_allclose(top.get_xlim(), np.array(ax.get_xlim()) / scale / 0.224)


def test_labels_without_a_recorded_unit_are_pixels():
    assert format_eps("Linf", 8 / 255) == "8/255" and format_eps("Linf", 0.1) == "25.5/255"
    assert eps_label("Linf", 8 / 255, None) == "ε=8/255 px"
    assert eps_label("L2", 0.5, 0.5 / 0.224) == "ε=0.5 px (2.23 norm.)"


def test_shards_converted_with_other_sds_do_not_merge(units_run, tmp_path):
    import h5py

    run, plan = units_run
    shards = [run.result_path("attack", p.id) for p in plan.stage("attack").points[:2]]
    copies = []
    for i, path in enumerate(shards):
        copy = tmp_path / f"shard{i}" / "result.h5"
        copy.parent.mkdir()
        copy.write_bytes(path.read_bytes())
        copies.append(copy)
    with h5py.File(copies[1], "a") as f:
        f.attrs["eps_sd"] = 0.226
    with pytest.raises(ValueError, match="other settings than the others"):
        merge_attack_shards(copies)


def test_shards_attacked_on_other_epsilon_grids_do_not_merge(units_run, tmp_path):
    import h5py

    run, plan = units_run
    copies = []
    for i, point in enumerate(plan.stage("attack").points[:2]):
        copy = tmp_path / f"shard{i}" / "result.h5"
        copy.parent.mkdir()
        copy.write_bytes(run.result_path("attack", point.id).read_bytes())
        copies.append(copy)
    for copy in copies:
        with h5py.File(copy, "a") as f:
            f.attrs["eps_grid"] = "monotone"
    assert merge_attack_shards(copies).eps_grid == "monotone"
    with h5py.File(copies[1], "a") as f:
        f.attrs["eps_grid"] = "independent"
    with pytest.raises(ValueError, match="shard1 was attacked on the independent epsilon grid, the others on the "
                                         "monotone grid"):
        merge_attack_shards(copies)
