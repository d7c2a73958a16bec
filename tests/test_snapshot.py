"""A run's frozen copy of its code (sfhpc.snapshot): what a launch copies and records, and that its points import
sfhpc from that copy. (tests/test_slurm.py: a queued SLURM job runs the launched code after the tree is edited.)"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
from typer.testing import CliRunner

from sfhpc import snapshot
from sfhpc.cli import app
from sfhpc.config import PROJECT_ROOT

from conftest import TINY_SWEEP

runner = CliRunner()


def test_a_launch_copies_the_code_its_points_run(tmp_path: Path, write_sweep):
    sweep, run = write_sweep(TINY_SWEEP, "tiny.yaml"), tmp_path / "run"
    assert runner.invoke(app, ["sweep", "launch", str(sweep), "--output", str(run)]).exit_code == 0
    code = json.loads((run / "manifest.json").read_text())["code"]
    folder = run / code["folder"]
    assert (folder / "sfhpc" / "stages" / "train" / "run.py").read_bytes() == \
        (PROJECT_ROOT / "sfhpc" / "stages" / "train" / "run.py").read_bytes()
    assert (folder / "jobs" / "train.yaml").exists()
    assert "torch==" in (folder / "requirements.txt").read_text()
    versions = json.loads((folder / "versions.json").read_text())
    assert versions["python"].startswith("3.") and versions["torch"]
    assert (folder / "git.txt").read_text().startswith("commit ")
    for result in run.glob("train/*/result.h5"):
        with h5py.File(result) as f:
            assert f.attrs["sfhpc_source"] == str((folder / "sfhpc").resolve())

    # the same code again: the same copy, nothing new
    assert runner.invoke(app, ["sweep", "launch", str(sweep), "--output", str(run), "--force"]).exit_code == 0
    assert [p.name for p in (run / "code").iterdir()] == [code["digest"]]


def test_a_changed_file_is_a_new_copy(tmp_path: Path):
    project = tmp_path / "project"
    (project / "sfhpc").mkdir(parents=True)
    (project / "jobs").mkdir()
    (project / "sfhpc" / "__init__.py").write_text("A = 1\n")
    (project / "jobs" / "train.yaml").write_text("entry: sfhpc.stages.train\n")
    first = snapshot.freeze_code(tmp_path / "run", project)
    assert (first.folder / "sfhpc" / "__init__.py").read_text() == "A = 1\n" and first.git_sha is None
    (project / "sfhpc" / "__init__.py").write_text("A = 2\n")
    second = snapshot.freeze_code(tmp_path / "run", project)
    assert second.digest != first.digest and (first.folder / "sfhpc" / "__init__.py").read_text() == "A = 1\n"
    env = second.environment({"PYTHONPATH": "/lab/lib"})
    assert env["PYTHONPATH"] == f"{second.folder}:/lab/lib" and env["PYTHONSAFEPATH"] == "1"
    assert second.setup_lines()[1].startswith(f"export PYTHONPATH={second.folder}")
