"""sweeps/paper.yaml, the study's full design, expands as the README says once its data are in place."""

from __future__ import annotations

import json
import os
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
    (tmp_path / "sweeps").mkdir()
    for name in ("paper.yaml", "imagenet50_classes.txt"):
        (tmp_path / "sweeps" / name).write_text((REPO / "sweeps" / name).read_text())
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_paper_sweep_expands_to_the_documented_design(in_data_folder: Path):
    plan = expand_file(Path("sweeps/paper.yaml"))
    counts = {stage.name: len(stage.points) for stage in plan.stages}
    # predictors: 4 subjects x 7 ROIs x (trained, shuffled, random); train: 4 bands x 3 seeds unguided, plus
    # 4 x 7 x 3 seeds guided at alpha 0.9 with each predictor control and at alpha 0.5 with the trained one
    assert counts == {"predictor": 84, "train": 12 + 4 * 7 * 3 * 3 + 4 * 7 * 3, "attack": 348 * 5, "cbm": 348,
                      "rsa": 348}
    train = plan.stage("train")
    assert sum(bool(p.upstream) for p in train.points) == 336
    assert (train.resources.gpus_per_node, train.resources.tasks_per_node) == (2, 2)
    assert plan.sweep.data.n_classes == 50
    hours = {stage.name: stage.hours()["gpu_hours"] for stage in plan.stages}
    assert hours["train"] == pytest.approx(348 * 40 / 60 * 2)
    assert all(value > 0 for value in hours.values())


def test_paper_sweep_without_prepared_nsd_files_names_the_command(in_data_folder: Path):
    os.remove(in_data_folder / "data" / "nsd-prepared" / "subj05.h5")
    with pytest.raises(SweepError) as caught:
        expand_file(Path("sweeps/paper.yaml"))
    assert "subj05.h5" in caught.value.message and "sfhpc data nsd-prepare" in caught.value.message
