"""`sfhpc runs [DIR]`: the run folders under a folder with their points per stage and state, from their files alone
(no scheduler, nothing written); folders that are not runs are skipped or reported, never a crash. Run folders are
made by hand (no job runs)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from test_report_runs import make_run, write_point
from typer.testing import CliRunner

from sfhpc.cli import app
from sfhpc.rundir import JobRecord, RunDir

runner = CliRunner()
SWEEP = """\
name: listed
executor: local
data: {image_size: 32, n_classes: 4, n_train: 64, n_val: 16, n_test: 8}
grid: {band: [none, lsf], seed: [0, 1, 2]}
stages:
  train:
    params: {width: 4, epochs: 1}
"""
DEAD_PID = 2**22 + 1  # above the kernel's largest pid: never a live process


def sfhpc(*args: object, code: int = 0):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


def job(point: str, executor: str, job_id: str | None, blocked_by: str | None = None) -> JobRecord:
    return JobRecord("train", point, executor, job_id, f"logs/{job_id}", "2026-12-03T10:00:00.000+00:00", DEAD_PID,
                     blocked_by)


def listed_run(folder: Path, name: str) -> RunDir:
    """Six train points: two done, one failed (an error file), one on SLURM without result (active), one local
    job that ended without a result (failed), one blocked (not submitted)."""
    made, plan = make_run(folder / f".{name}-sweep", SWEEP)
    run = RunDir(shutil.move(made.path, folder / name))
    ids = [p.id for p in plan.stage("train").points]
    for point in ids[:2]:
        write_point(run, "train", point, {"test_accuracy": 0.5})
    run.point_dir("train", ids[2]).mkdir(parents=True)
    run.error_path("train", ids[2]).write_text("ValueError: no\n")
    run.record_jobs([job(ids[3], "slurm", "77_3"), job(ids[4], "local", str(DEAD_PID)),
                     job(ids[5], "local", None, blocked_by="predictor/p")])
    return run


@pytest.fixture
def runs_folder(tmp_path: Path) -> Path:
    """runs/ with two runs (one named with a space, a quote and a newline), a damaged manifest, a plain folder and
    a file."""
    folder = tmp_path / "runs"
    folder.mkdir()
    listed_run(folder, "first")
    listed_run(folder, "lab's\nsecond")
    (folder / "damaged").mkdir()
    (folder / "damaged" / "manifest.json").write_text("{not json")
    (folder / "notes").mkdir()
    (folder / "README").write_text("not a run")
    return folder


def test_runs_lists_each_run_and_stage_with_its_counts(runs_folder: Path):
    out = sfhpc("runs", runs_folder, "--format", "tsv").stdout
    assert out.splitlines() == ["run\tstage\tdone\tfailed\tactive\tnot submitted\ttotal",
                                "first\ttrain\t2\t2\t1\t1\t6",
                                "lab's\\nsecond\ttrain\t2\t2\t1\t1\t6"]


def test_runs_on_a_terminal_shows_a_table_and_what_it_skipped(runs_folder: Path):
    result = sfhpc("runs", runs_folder)
    assert "│ lab's\\nsecond │ train │    2 │      2 │      1 │             1 │     6 │" in result.stdout
    assert f"skipped {runs_folder / 'damaged'}: cannot read" in result.stderr
    assert "notes" not in result.output and "README" not in result.output
    assert "checking the results" not in result.output  # no progress in a pipe


def test_runs_as_json(runs_folder: Path):
    payload = json.loads(sfhpc("runs", runs_folder, "--json").stdout)
    assert [r["run"] for r in payload["runs"]] == [str(runs_folder / "first"), str(runs_folder / "lab's\nsecond")]
    assert payload["runs"][0]["counts"] == {"train": {"done": 2, "failed": 2, "active": 1, "not submitted": 1}}
    assert len(payload["skipped"]) == 1 and "damaged" in payload["skipped"][0]


def test_runs_reads_and_never_writes(runs_folder: Path):
    before = {p: p.stat().st_mtime_ns for p in runs_folder.rglob("*")}
    sfhpc("runs", runs_folder)
    assert {p: p.stat().st_mtime_ns for p in runs_folder.rglob("*")} == before  # no result index, no cache


def test_runs_defaults_to_runs_here_and_takes_one_run_folder(runs_folder: Path, monkeypatch):
    monkeypatch.chdir(runs_folder.parent)
    assert "first" in sfhpc("runs").stdout
    lines = sfhpc("runs", runs_folder / "first", "--format", "tsv").stdout.splitlines()
    assert lines[1].startswith(f"{runs_folder / 'first'}\ttrain\t2\t")


def test_a_missing_or_unreadable_folder_is_an_error_not_a_traceback(tmp_path: Path):
    assert "no folder" in sfhpc("runs", tmp_path / "nowhere", code=2).output
    (tmp_path / "file").write_text("x")
    assert "no folder" in sfhpc("runs", tmp_path / "file", code=2).output
    assert "no run folders in" in sfhpc("runs", tmp_path).stdout


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every folder")
def test_a_run_folder_without_permission_is_skipped(runs_folder: Path):
    (runs_folder / "first").chmod(0)
    try:
        result = sfhpc("runs", runs_folder)
    finally:
        (runs_folder / "first").chmod(0o755)
    assert "skipped" in result.stderr and "second" in result.stdout
