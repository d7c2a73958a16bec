"""Progress where work is long (checking many result files, expanding and launching a sweep): shown on a terminal,
never in a pipe or a file, whatever FORCE_COLOR says. The terminal is a real pseudo-terminal."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest
from test_report_runs import make_run, write_point
from typer.testing import CliRunner

from sfhpc.cli import _LaunchProgress, app
from sfhpc.rundir import RunDir

SWEEP = """\
name: progress
executor: local
data: {image_size: 32, n_classes: 4, n_train: 64, n_val: 16, n_test: 8}
grid: {band: [none, lsf], seed: [0, 1, 2]}
stages:
  train:
    params: {width: 4, epochs: 1}
"""
PROGRESS_WORDS = ("checking result files", "writing summary.csv", "expanding", "preparing and submitting", "0:00:0")


@pytest.fixture
def finished_run(tmp_path: Path) -> RunDir:
    """Six train points with results, never checked (no result index)."""
    run, plan = make_run(tmp_path / "lab's runs", SWEEP)
    for i, point in enumerate(plan.stage("train").points):
        write_point(run, "train", point.id, {"test_accuracy": 0.5 + i / 100})
    return run


def on_a_terminal(*args: str) -> str:
    """What a terminal shows of `python -m sfhpc.cli ARGS` (stdout and stderr both on a pseudo-terminal)."""
    leader, follower = pty.openpty()
    process = subprocess.Popen([sys.executable, "-m", "sfhpc.cli", *args], stdout=follower, stderr=follower,
                               stdin=subprocess.DEVNULL)
    os.close(follower)
    received = b""
    while chunk := _read(leader):
        received += chunk
    os.close(leader)
    assert process.wait(timeout=120) == 0, received
    return received.decode(errors="replace")


def _read(fd: int) -> bytes:
    try:
        return os.read(fd, 65536)
    except OSError:  # the other side closed
        return b""


def test_check_many_reports_the_files_it_opens(finished_run: RunDir):
    index = finished_run.result_index()
    results = [(path, path.parent.name) for path in sorted(finished_run.path.glob("train/*/result.h5"))]
    seen: list[tuple[int, int]] = []
    assert all(c.state == "ok" for c in index.check_many(results, progress=lambda *done: seen.append(done)))
    assert seen == [(i, 6) for i in range(1, 7)]
    seen.clear()
    index.check_many(results, progress=lambda *done: seen.append(done))
    assert seen == []  # known files are not opened


def test_aggregate_on_a_terminal_shows_its_progress(finished_run: RunDir):
    shown = on_a_terminal("aggregate", str(finished_run.path))
    assert "writing summary.csv, report.md and figures" in shown
    assert "train: 6 points with results" in shown


@pytest.mark.parametrize("env", [{}, {"FORCE_COLOR": "1", "TTY_COMPATIBLE": "1"}])
def test_piped_output_has_no_progress(finished_run: RunDir, write_sweep, env: dict[str, str]):
    runner = CliRunner()
    result = runner.invoke(app, ["aggregate", str(finished_run.path)], env=env)
    assert result.exit_code == 0 and "train: 6 points with results" in result.stdout
    assert not any(word in result.output for word in PROGRESS_WORDS), result.output
    sweep = write_sweep(SWEEP)
    result = runner.invoke(app, ["sweep", "expand", str(sweep)], env=env)
    assert result.exit_code == 0 and not any(word in result.output for word in PROGRESS_WORDS), result.output


def test_a_piped_launch_prints_its_points_but_no_bar(capsys):
    with _LaunchProgress(enabled=True) as progress:
        for event in ("queued", "started", "done"):
            progress.update("train", "a", event)
        for event in ("queued", "started", "failed"):
            progress.update("train", "b", event)
    assert capsys.readouterr().out == "  done train/a\nfailed train/b\n"
