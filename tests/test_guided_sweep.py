"""Sweep wiring of neural guidance: predictors per subject x ROI, shared by their guided train points; the unguided
baseline (alpha = 0) expands once per band and seed, whatever the subject and ROI axes say."""

from __future__ import annotations

import pytest

from sfhpc.errors import SweepError
from sfhpc.sweep import expand_file

GUIDED = """\
name: guided
data: {image_size: 32, n_train: 16, n_val: 8, n_test: 8}
grid:
  subject: [subj01, subj02]
  roi: [V1, TO]
  alpha: [0, 0.9]
  seed: [0, 1]
stages:
  predictor: {params: {predictor_epochs: 1}}
  train: {params: {epochs: 1, width: 4}}
  rsa: {}
"""


def test_baseline_expands_once_per_seed_and_predictors_are_shared(write_sweep):
    plan = expand_file(write_sweep(GUIDED))
    predictors = plan.stage("predictor").points
    train = plan.stage("train").points
    assert [(p.params["subject"], p.params["roi"]) for p in predictors] == [
        ("subj01", "V1"), ("subj01", "TO"), ("subj02", "V1"), ("subj02", "TO")]
    baseline = [p for p in train if p.params["alpha"] == 0]
    guided = [p for p in train if p.params["alpha"] > 0]
    assert len(baseline) == 2 and len(guided) == 8  # 2 seeds; 2 subjects x 2 ROIs x 2 seeds
    assert all(p.upstream == () for p in baseline)
    assert all(p.labels["subject"] is None and p.labels["roi"] is None for p in baseline)
    for point in guided:
        (upstream,) = point.upstream
        predictor = next(p for p in predictors if f"predictor/{p.id}" == upstream)
        assert (predictor.params["subject"], predictor.params["roi"]) == (point.labels["subject"],
                                                                          point.labels["roi"])
    users = {f"predictor/{p.id}": sum(f"predictor/{p.id}" in t.upstream for t in train) for p in predictors}
    assert set(users.values()) == {2}  # each predictor serves its subject and ROI's two seeds
    assert len(plan.stage("rsa").points) == len(train)


def test_adding_a_roi_keeps_the_baseline_ids(write_sweep):
    before = expand_file(write_sweep(GUIDED, "a.yaml")).stage("train")
    after = expand_file(write_sweep(GUIDED.replace("roi: [V1, TO]", "roi: [V1, TO, V4]"), "b.yaml")).stage("train")
    assert {p.id for p in before.points} < {p.id for p in after.points}


def test_predictor_controls_are_sweep_values(write_sweep):
    text = GUIDED.replace("  seed: [0, 1]\n", "  seed: [0]\n  predictor: [trained, shuffled, random]\n")
    plan = expand_file(write_sweep(text))
    assert len(plan.stage("predictor").points) == 2 * 2 * 3
    guided = [p for p in plan.stage("train").points if p.params["alpha"] > 0]
    assert sorted({p.labels["predictor"] for p in guided}) == ["random", "shuffled", "trained"]


@pytest.mark.parametrize(("change", "line", "key", "message"), [
    (("roi: [V1, TO]", "roi: [V1, IT]"), 5, "grid.roi[1]", "unknown ROI 'IT'"),
    (("subject: [subj01, subj02]", "subject: [subj01, subj09]"), 4, "grid.subject[1]", "unknown subject 'subj09'"),
])
def test_unknown_subjects_and_rois_are_located(write_sweep, change, line, key, message):
    with pytest.raises(SweepError) as caught:
        expand_file(write_sweep(GUIDED.replace(*change)))
    assert (caught.value.line, caught.value.key) == (line, key)
    assert message in caught.value.message


def test_guided_points_need_the_predictor_stage(write_sweep):
    text = "name: x\ngrid:\n  alpha: [0, 0.9]\nstages:\n  train: {}\n"
    with pytest.raises(SweepError) as caught:
        expand_file(write_sweep(text))
    assert (caught.value.line, caught.value.key) == (3, "grid.alpha[1]")
    assert "needs the 'predictor' stage" in caught.value.message


def test_a_predictor_stage_needs_an_roi(write_sweep):
    text = "name: x\ngrid: {seed: [0]}\nstages:\n  predictor: {}\n  train: {}\n"
    with pytest.raises(SweepError) as caught:
        expand_file(write_sweep(text))
    assert caught.value.key == "stages.predictor.params.roi"
    assert "required" in caught.value.message
