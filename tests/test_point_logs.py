"""`sfhpc logs RUN POINT`: where a point's stdout and stderr are, and their last lines; a clear error for a point the
run does not have. The run folder and its job records are made by hand (no job runs)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_report_runs import make_run
from typer.testing import CliRunner

from sfhpc.cli import app
from sfhpc.logs import last_lines
from sfhpc.rundir import JobRecord, RunDir

runner = CliRunner()
SWEEP = """\
name: logged
executor: local
data: {image_size: 32, n_classes: 4, n_train: 64, n_val: 16, n_test: 8}
grid: {band: [none, lsf], seed: [0, 1]}
stages:
  train:
    params: {width: 4, epochs: 1}
"""


def sfhpc(*args: object, code: int = 0):
    result = runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "400"})  # long paths on one line
    assert result.exit_code == code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


def record(run: RunDir, point: str, job_id: str | None, executor: str = "slurm", blocked_by: str | None = None
           ) -> None:
    run.record_jobs([JobRecord("train", point, executor, job_id, f"logs/{job_id}" if job_id else "",
                               "2026-12-03T10:00:00.000+00:00", 1, blocked_by)])


@pytest.fixture
def logged_run(tmp_path: Path) -> tuple[RunDir, list[str]]:
    """Four train points: the first ran as a 2-task SLURM array job (stdout with a progress bar rewritten by
    carriage returns and an escape sequence; an error file), the second is blocked, the others were never submitted."""
    run, plan = make_run(tmp_path / "lab's runs", SWEEP)
    ids = [p.id for p in plan.stage("train").points]
    record(run, ids[0], "4242_7")
    folder = run.path / "logs" / "4242_7"
    folder.mkdir(parents=True)
    (folder / "4242_7_0_log.out").write_text("".join(f"line {i}\n" for i in range(30))
                                             + "epoch 1 10%\repoch 1 50%\repoch 1 100%\n\x1b[31mdone\x1b[0m\n")
    (folder / "4242_7_0_log.err").write_text("")
    (folder / "4242_7_1_log.out").write_text("rank 1\n")
    run.point_dir("train", ids[0]).mkdir(parents=True)
    run.error_path("train", ids[0]).write_text("RuntimeError: out of memory\n\nTraceback ...\n")
    record(run, ids[1], None, "local", blocked_by="predictor/x")
    return run, ids


def test_logs_shows_each_tasks_files_and_their_last_lines(logged_run):
    run, ids = logged_run
    out = sfhpc("logs", run.path, f"train/{ids[0]}", "--lines", "3").stdout
    folder = (run.path / "logs" / "4242_7").absolute()
    assert "job   4242_7 (slurm, submitted 2026-12-03T10:00:00.000+00:00)" in out
    assert f"stdout (task 0) {folder / '4242_7_0_log.out'}\n" in out
    assert "  | line 29\n  | epoch 1 100%\n  | \\x1b[31mdone\\x1b[0m\n" in out  # what a terminal showed last
    assert f"stderr (task 0) {folder / '4242_7_0_log.err'} (empty)" in out
    assert f"stdout (task 1) {folder / '4242_7_1_log.out'}\n  | rank 1\n" in out
    assert f"stderr (task 1) {folder / '4242_7_1_log.err'} (not written yet)" in out
    assert f"error  {run.error_path('train', ids[0]).absolute()}" in out and "  | Traceback ..." in out
    assert "\x1b" not in out and "line 26" not in out


def test_a_point_id_alone_names_the_point_and_json_gives_the_paths(logged_run):
    run, ids = logged_run
    files = json.loads(sfhpc("logs", run.path, ids[0], "--json", "-n", "1").stdout)["files"]
    assert [(f["kind"], f["task"], f["exists"]) for f in files] == [
        ("stdout", 0, True), ("stderr", 0, True), ("stdout", 1, True), ("stderr", 1, False), ("error", None, True)]
    assert files[0]["last_lines"] == ["\x1b[31mdone\x1b[0m"] and Path(files[0]["path"]).is_absolute()


def test_a_point_without_a_job_says_why_it_has_no_logs(logged_run):
    run, ids = logged_run
    assert "its input predictor/x has no result" in sfhpc("logs", run.path, ids[1]).stdout
    assert "never submitted" in sfhpc("logs", run.path, ids[2]).stdout


@pytest.mark.parametrize("typed", ["band=none", "train/band=nnoe-seed=0", "train/" + "x" * 300, "a\nb\x1b[2J"])
def test_an_unknown_point_is_an_error_that_lists_close_ones(logged_run, typed: str):
    run, ids = logged_run
    out = sfhpc("logs", run.path, typed, code=2).output
    assert out.startswith("error: no point") and "Traceback" not in out and "\x1b" not in out
    if typed.startswith(("band=none", "train/band")):
        assert "; close: " in out and f"train/{ids[0]}" in out


def test_a_missing_run_folder_is_an_error(tmp_path: Path):
    assert "no run folder" in sfhpc("logs", tmp_path / "nothing", "p", code=2).output


def test_last_lines_reads_only_the_end_of_a_large_file(tmp_path: Path):
    log = tmp_path / "big.log"
    log.write_text("x" * 10_000 + "\n" + "".join(f"{i}\n" for i in range(100)))
    assert last_lines(log, 3, most_bytes=64) == ["97", "98", "99"]
    assert last_lines(log, 1000, most_bytes=64)[0] != "x" * 10_000  # a line cut by the window is left out
    assert last_lines(log, 0) == []
