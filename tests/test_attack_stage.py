"""The attack stage in a sweep: shards expand per trained point, bad settings fail at expand time, shards run
through the local executor and combine exactly."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from sfhpc.cli import app
from sfhpc.config import SweepError
from sfhpc.stages.attack.report import merge_attack_shards
from sfhpc.sweep import expand_file

runner = CliRunner()

SWEEP = """\
name: attacked
executor: local
data: {{image_size: 32, n_classes: 4, n_train: 64, n_val: 16, n_test: 12}}
grid:
  band: [none]
stages:
  train:
    params: {{width: 4, epochs: 1, batch_size: 32}}
  attack:
    params:
{attack}
"""
QUICK = """\
      attack_version: custom
      attack_names: [apgd-ce]
      attack_eps: {Linf: [8/255, 0.1]}
      attack_shards: 3
      attack_batch_size: 4
"""


def test_shards_expand_per_trained_point(write_sweep):
    plan = expand_file(write_sweep(SWEEP.format(attack=QUICK)))
    (train,) = plan.stage("train").points
    shards = plan.stage("attack").points
    assert [p.params["attack_shard"] for p in shards] == [0, 1, 2]
    assert all(p.upstream == (f"train/{train.id}",) for p in shards)
    assert [p.id.rsplit("-", 1)[0] for p in shards] == [f"band=none-attack_shard={i}" for i in range(3)]
    assert shards[0].params["attack_eps"] == {"Linf": [8 / 255, 0.1]}


@pytest.mark.parametrize("attack, words", [
    ("      attack_eps: {Linf: []}\n", ["empty epsilon list"]),
    ("      attack_eps: {Linf: [-0.1]}\n", ["must be a finite number > 0"]),
    ("      attack_version: custom\n      attack_names: [apgd-xyz]\n", ["unknown attack 'apgd-xyz'", "apgd-ce"]),
    ("      attack_eps: {Lmax: [0.1]}\n", ["norm 'Lmax' is not supported", "Linf, L2, L1"]),
    ("      attack_shards: 13\n", ["13 attack shards for a test set of 12 images"]),
    ("      attack_eps: {Linf: [8/zero]}\n", ["'8/zero' is not a number"]),
    ("      attack_eps_unit: percent\n", ["'pixel'", "'normalized'"]),
    ("      attack_eps_unit: normalized\n      attack_eps: {Linf: [0.001, 5]}\n",
     ["Linf epsilon 5 in normalized units is 1.12 in pixel units (x SD 0.224)"]),
    ("      attack_eps: {Linf: [0.5, 1]}\n", ["Linf epsilon 1 (pixel units of [0, 1] images) is 1 or more"]),
    ("      attack_eps: {Linf: [8/255, 0.1, 0.1]}\n", ["epsilon(s) [0.1] given twice for norm Linf"]),
    ("      attack_eps_grid: sideways\n", ["'monotone'", "'independent'"]),
])
def test_bad_attack_settings_fail_at_expand_time(write_sweep, attack, words):
    path = write_sweep(SWEEP.format(attack=attack))
    with pytest.raises(SweepError) as info:
        expand_file(path)
    assert info.value.key.startswith("stages.attack.params.attack_"), str(info.value)
    assert info.value.line is not None
    for word in words:
        assert word in str(info.value), str(info.value)


def test_sharded_attack_runs_and_combines_exactly(write_sweep, awkward_dir: Path):
    sweep = write_sweep(SWEEP.format(attack=QUICK))
    run = awkward_dir / "run"
    result = runner.invoke(app, ["sweep", "launch", str(sweep), "--output", str(run)])
    assert result.exit_code == 0, result.output
    status = json.loads(runner.invoke(app, ["status", str(run), "--json"]).stdout)
    assert status["counts"] == {"train": {"done": 1}, "attack": {"done": 3}}

    shard_files = sorted(run.glob("attack/*/result.h5"))
    sizes, robust = [], []
    for path in shard_files:
        with h5py.File(path) as f:
            sizes.append(f.attrs["shard_stop"] - f.attrs["shard_start"])
            robust.append(f["curves/robust_Linf_eps0.0313725"][()])
            assert not (f["curves/robust_Linf_eps0.0313725"][()] & ~f["curves/clean_correct"][()]).any()
            # the default grid is monotone: never robust at 0.1 where 8/255 broke an image, and recorded so
            assert not (f["curves/robust_Linf_eps0.1"][()] & ~f["curves/robust_Linf_eps0.0313725"][()]).any()
            assert f.attrs["eps_grid"] == "monotone" and json.loads(f.attrs["nonmonotone_images"]) == {"Linf": 0}
        assert not list((path.parent / "attack_state").glob("*.examples.npz"))
    assert sizes == [4, 4, 4]
    merged = merge_attack_shards(shard_files)
    assert merged.eps_grid == "monotone"
    accuracy = merged.robust_accuracy
    assert accuracy[("Linf", 8 / 255)] == np.concatenate(robust).sum() / 12
    assert accuracy[("Linf", 0.1)] <= accuracy[("Linf", 8 / 255)] <= merged.clean_accuracy

    before = {p: p.read_bytes() for p in shard_files}
    again = runner.invoke(app, ["sweep", "launch", str(sweep), "--output", str(run)])
    assert "attack: submitted 0 points (3 already done)" in again.stdout
    assert {p: p.read_bytes() for p in shard_files} == before


NORMALIZED = """\
      attack_version: custom
      attack_names: [apgd-ce]
      attack_apgd_iterations: 2
      attack_apgd_restarts: 1
      attack_eps_unit: normalized
      attack_eps: {Linf: [0.01, 0.05]}
      attack_images: 4
      attack_shards: 1
      attack_batch_size: 4
"""


def test_normalized_epsilons_run_as_eps_times_the_models_sd(write_sweep, awkward_dir: Path):
    """AutoAttack gets eps x 0.224 (the smallest of the model's ImageNet SDs); the result and the report state both
    units."""
    sweep = write_sweep(SWEEP.format(attack=NORMALIZED))
    run = awkward_dir / "run"
    result = runner.invoke(app, ["sweep", "launch", str(sweep), "--output", str(run)])
    assert result.exit_code == 0, result.output
    (result_file,) = run.glob("attack/*/result.h5")
    with h5py.File(result_file) as f:
        assert f.attrs["eps_unit"] == "normalized" and f.attrs["eps_sd"] == 0.224
        assert list(f.attrs["normalization_std"]) == [0.229, 0.224, 0.225]
        settings = json.loads(f.attrs["settings"])
        metrics = json.loads(f.attrs["metric_values"])
    assert [s["eps"] for s in settings] == [0.01 * 0.224, 0.05 * 0.224]
    assert [s["eps_normalized"] for s in settings] == pytest.approx([0.01, 0.05], rel=1e-12)
    assert {"robust_accuracy_Linf_eps0.00224", "robust_accuracy_Linf_eps0.0112"} <= set(metrics)
    # the settings AutoAttack was constructed with, as its resumable state recorded them
    manifest = json.loads((result_file.parent / "attack_state" / "manifest.json").read_text())
    assert sorted(entry["settings"]["eps"] for entry in manifest.values()) == [0.01 * 0.224, 0.05 * 0.224]

    report = runner.invoke(app, ["aggregate", str(run)])
    assert report.exit_code == 0, report.output
    text = (run / "report.md").read_text()
    assert "robust accuracy, L∞ ε=0.571/255 px (0.01 norm.)" in text
    assert "robust accuracy, L∞ ε=2.86/255 px (0.05 norm.)" in text


def test_quick_runs_shorten_apgd_as_its_constructor_would():
    import pyautoattack
    import torch

    from sfhpc.evaluation.attack import AttackSettings, _shorten_apgd

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    autoattack = pyautoattack.AutoAttack(model, norm="Linf", eps=0.1, version="custom", attacks=["apgd-ce"], seed=0)
    _shorten_apgd(autoattack, AttackSettings("custom", ("apgd-ce",), "Linf", 0.1, 0, 8, apgd_iterations=20,
                                             apgd_restarts=1))
    reference = pyautoattack.autopgd_base.APGDAttack(model, n_iter=20, n_restarts=1, eps=0.1)
    for name in ("n_iter", "n_iter_orig", "n_iter_2", "n_iter_min", "size_decr", "n_restarts"):
        assert getattr(autoattack.apgd, name) == getattr(reference, name), name
