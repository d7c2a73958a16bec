"""sweeps/paper.yaml, the study's full design, expands as the README says once its data are in place."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import pytest

from sfhpc.config import ROIS
from sfhpc.data.neural import SCHEMA_VERSION
from sfhpc.errors import SweepError
from sfhpc.sweep import expand_file

REPO = Path(__file__).resolve().parents[1]
SUBJECTS = ("subj01", "subj02", "subj05", "subj07")


@pytest.fixture
def in_data_folder(tmp_path: Path, monkeypatch) -> Path:
    """A folder laid out as paper.yaml expects: an ImageNet root and prepared NSD files (attributes only: sweep
    expansion reads no more than that), with the sweep and its class list beside them."""
    for split in ("train", "val"):
        (tmp_path / "data" / "imagenet" / split).mkdir(parents=True)
    prepared = tmp_path / "data" / "nsd-prepared"
    prepared.mkdir(parents=True)
    for subject in SUBJECTS:
        with h5py.File(prepared / f"{subject}.h5", "w") as f:
            f.attrs.update(schema_version=SCHEMA_VERSION, kind="nsd", subject=subject, rois=json.dumps(list(ROIS)))
    weights = tmp_path / "data" / "weights"
    weights.mkdir(parents=True)
    (weights / "resnet18-imagenet.pth").write_bytes(b"expansion checks only that the file exists")
    (tmp_path / "sweeps").mkdir()
    for name in ("paper.yaml", "imagenet50_classes.txt"):
        (tmp_path / "sweeps" / name).write_text((REPO / "sweeps" / name).read_text())
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_paper_sweep_expands_to_the_documented_design(in_data_folder: Path):
    plan = expand_file(Path("sweeps/paper.yaml"))
    counts = {stage.name: len(stage.points) for stage in plan.stages}
    # predictors: 4 subjects x 7 ROIs x (trained, shuffled, random). Train, 3 seeds each: the guided arm's baseline
    # (alpha 0, band none); guided at alpha 0.9 by each predictor and at 0.5 by the trained one (4 x 7 ROIs);
    # the steering arm (4 bands, pretrained); 5 weight-decay-only controls.
    guided_arm = 3 + 4 * 7 * 3 * 3 + 4 * 7 * 3
    steering_arm, weight_decay_controls = 4 * 3, 5 * 3
    train_points = guided_arm + steering_arm + weight_decay_controls
    assert counts == {"predictor": 84, "train": train_points, "attack": train_points * 5, "cbm": train_points,
                      "rsa": train_points}
    train = plan.stage("train")
    assert sum(bool(p.upstream) for p in train.points) == 4 * 7 * 3 * 3 + 4 * 7 * 3
    steering = [p for p in train.points if p.params.get("pretrained")]
    assert len(steering) == steering_arm and all(
        (p.params["lr"], p.params["epochs"], p.params["batch_size"], p.params["alpha"]) == (0.01, 42, 1024, 0.0)
        for p in steering)
    assert {p.params["band"] for p in train.points if not p.params.get("pretrained")} == {"none"}
    assert (train.resources.gpus_per_node, train.resources.tasks_per_node) == (2, 2)
    assert plan.sweep.data.n_classes == 50 and len(set(plan.sweep.data.categories or ())) == 16
    attack = plan.stage("attack").points[0].params
    assert attack["attack_eps_unit"] == "normalized" and attack["attack_eps"]["Linf"][0] == 0.001
    assert [len(values) for values in attack["attack_eps"].values()] == [10, 10]
    hours = {stage.name: stage.hours()["gpu_hours"] for stage in plan.stages}
    assert hours["train"] == pytest.approx(train_points * 6 / 60 * 2)  # jobs/paper_train.yaml: 6 min, 2 GPUs
    assert all(value > 0 for value in hours.values())


def test_paper_sweep_plans_without_its_data_and_lists_what_it_skipped(tmp_path: Path, monkeypatch):
    """A lab plans (points, GPU-hours) before copying ImageNet, preparing NSD or fetching weights; launching
    still checks all of it."""
    (tmp_path / "sweeps").mkdir()
    for name in ("paper.yaml", "imagenet50_classes.txt"):
        (tmp_path / "sweeps" / name).write_text((REPO / "sweeps" / name).read_text())
    monkeypatch.chdir(tmp_path)
    skipped: list[str] = []
    plan = expand_file(Path("sweeps/paper.yaml"), skipped=skipped)
    assert len(plan.stage("train").points) == 366 and plan.sweep.data.n_classes == 50
    assert any(note.startswith("data.root:") and "does not exist" in note for note in skipped)
    assert sum("prepared NSD file not found" in note for note in skipped) == len(SUBJECTS)
    assert any(note.startswith("train: no such file") and "resnet18-imagenet.pth" in note for note in skipped)
    with pytest.raises(SweepError) as caught:  # what launch calls: every check runs
        expand_file(Path("sweeps/paper.yaml"))
    assert "data/imagenet" in caught.value.message


def test_sweep_expand_prints_the_skipped_checks_and_launch_refuses(tmp_path: Path):
    (tmp_path / "sweeps").mkdir()
    for name in ("paper.yaml", "imagenet50_classes.txt"):
        (tmp_path / "sweeps" / name).write_text((REPO / "sweeps" / name).read_text())
    sfhpc = [sys.executable, "-m", "sfhpc.cli"]
    expand = subprocess.run([*sfhpc, "sweep", "expand", "sweeps/paper.yaml", "--json"], cwd=tmp_path,
                            capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert expand.returncode == 0, expand.stderr
    planned = json.loads(expand.stdout)
    assert planned["counts"]["train"] == 366 and len(planned["skipped_data_checks"]) == 6
    launch = subprocess.run([*sfhpc, "sweep", "launch", "sweeps/paper.yaml", "--dry-run"], cwd=tmp_path,
                            capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert launch.returncode == 2 and "Traceback" not in launch.stderr
    assert "paper.yaml:" in launch.stderr + launch.stdout and "data.root" in launch.stderr + launch.stdout


def test_paper_sweep_without_prepared_nsd_files_names_the_command(in_data_folder: Path):
    os.remove(in_data_folder / "data" / "nsd-prepared" / "subj05.h5")
    with pytest.raises(SweepError) as caught:
        expand_file(Path("sweeps/paper.yaml"))
    assert "subj05.h5" in caught.value.message and "sfhpc data nsd-prepare" in caught.value.message
