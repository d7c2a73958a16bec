"""What a hostile or careless user types at the command line: user text that looks like markup, foreign and damaged
run folders, unknown stages, `~` in paths, exit codes scripts rely on, JSON errors, file modes under a umask, and
a result damaged in place with its modification time put back."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sfhpc.cli import app

from conftest import TINY_SWEEP

runner = CliRunner()
ONE_POINT = TINY_SWEEP.replace("band: [none, lsf]", "band: [none]")


def sfhpc(*args, code: int = 0):
    result = runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "400"})  # long paths on one line
    assert result.exit_code == code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


@pytest.fixture(scope="module")
def finished_template(tmp_path_factory) -> Path:
    """One real local launch of a one-point sweep, made under umask 022 (as most sites set it)."""
    folder = tmp_path_factory.mktemp("template") / "lab's [bold]sweeps"
    folder.mkdir()
    sweep = folder / "one.yaml"
    sweep.write_text(ONE_POINT)
    old = os.umask(0o022)
    try:
        sfhpc("sweep", "launch", sweep, "--output", folder / "runs" / "one")
    finally:
        os.umask(old)
    return folder / "runs" / "one"


@pytest.fixture
def run(finished_template: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "exp[a] [/red]" / "one"
    shutil.copytree(finished_template, copy)
    return copy


def point_dir(run: Path) -> Path:
    return next(run.glob("train/band=none-*"))


def fail_point(run: Path, first_line: str) -> Path:
    """The point's result gone and its error file saying `first_line`, as a failed attempt leaves them."""
    folder = point_dir(run)
    (folder / "result.h5").unlink()
    (folder / "error.txt").write_text(f"{first_line}\n\nTraceback (most recent call last):\n  [/] [red]\n")
    return folder


def test_files_of_a_run_follow_the_umask(finished_template: Path):
    files = [p for p in finished_template.rglob("*") if p.is_file()]
    assert any(p.name == "result.h5" for p in files) and any(p.name == "manifest.json" for p in files)
    unreadable = [str(p.relative_to(finished_template)) for p in files
                  if stat.S_IMODE(p.stat().st_mode) & 0o044 != 0o044]
    assert unreadable == [], "files a group member could not read under umask 022"


def test_markup_in_error_lines_and_paths_prints_as_written(run: Path):
    fail_point(run, "ValueError: bad [/red] value exp[a]")
    out = sfhpc("status", run, code=1).stdout  # a failed point: exit 1
    assert "ValueError: bad [/red] value exp[a]" in out
    assert "[/] [red]" in out  # the traceback lines too
    assert "exp[a] [/red]" in out  # the run folder's own path in the title
    agg = sfhpc("aggregate", run).stdout
    assert "ValueError: bad [/red] value exp[a]" in agg


def test_exit_codes_say_whether_everything_is_done(run: Path):
    sfhpc("status", run)
    sfhpc("aggregate", run, "--strict")
    fail_point(run, "RuntimeError: out of luck")
    sfhpc("status", run, code=1)
    assert json.loads(sfhpc("status", run, "--json", code=1).stdout)["counts"]["train"] == {"failed": 1}
    sfhpc("aggregate", run)  # the report is written all the same
    sfhpc("aggregate", run, "--strict", code=1)


def test_damaged_result_with_its_mtime_put_back_is_noticed(run: Path):
    sfhpc("status", run)  # the index now knows the result as valid
    result = point_dir(run) / "result.h5"
    before = result.stat()
    data = bytearray(result.read_bytes())
    data[:8] = b"\0" * 8  # the HDF5 signature: same size, unreadable
    result.write_bytes(bytes(data))
    os.utime(result, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert result.stat().st_size == before.st_size and result.stat().st_mtime_ns == before.st_mtime_ns
    point = json.loads(sfhpc("status", run, "--json", code=1).stdout)["points"][0]
    assert point["state"] == "failed" and point["result"] == "corrupt"


@pytest.mark.parametrize("command", ["status", "aggregate", "cancel"])
def test_a_foreign_manifest_is_a_json_error_with_json(tmp_path: Path, command: str):
    (tmp_path / "manifest.json").write_text('{"hello": 1}')  # (every shape, without --json: test_run_safety.py)
    assert "manifest.json" in json.loads(sfhpc(command, tmp_path, "--json", code=2).stdout)["error"]


@pytest.mark.parametrize("command", ["status", "cancel"])
def test_unknown_stage_lists_the_stages(run: Path, command: str):
    out = sfhpc(command, run, "--stage", "trian", code=2).output
    assert "'trian'" in out and "its stages: train" in out


def test_errors_are_json_with_json(write_sweep, tmp_path: Path):
    bad = write_sweep("name: bad\ngrid: {seed: [0]}\nstages: {trian: {}}\n")
    for args in (["sweep", "expand", bad, "--json"], ["sweep", "launch", bad, "--json", "--dry-run"],
                 ["status", tmp_path / "nothing", "--json"], ["cbm", "fit", "a,b", "--json"]):
        error = json.loads(sfhpc(*args, code=2).stdout)["error"]
        assert error and "Traceback" not in error


def test_markup_and_brackets_in_messages_survive(write_sweep):
    out = sfhpc("sweep", "expand", write_sweep("name: 'bad name!'\ngrid: {seed: [0]}\nstages: {train: {}}\n"),
                code=2).output
    assert "[A-Za-z0-9]" in out  # the allowed pattern, not eaten as a style
    out = sfhpc("sweep", "expand", write_sweep(
        "name: x\ndata: {image_size: 32}\ngrid: {roi: ['[/red]']}\nstages: {train: {params: {alpha: 0.5}}, "
        "predictor: {}}\n"), code=2).output
    assert "[/red]" in out


def test_output_with_tilde_is_the_home_folder(write_sweep, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    sweep = write_sweep(ONE_POINT)
    out = sfhpc("sweep", "launch", sweep, "--dry-run", "--output", "~/x").stdout
    assert f"run folder: {tmp_path / 'home' / 'x'} (executor local)" in out
    assert not Path("~").exists() and not (tmp_path / "home").exists()  # a dry run writes nothing


def test_output_naming_a_file_or_too_long_is_refused_before_anything_is_made(write_sweep, tmp_path: Path):
    sweep = write_sweep(ONE_POINT)
    a_file = tmp_path / "taken"
    a_file.write_text("mine")
    assert "not a folder" in sfhpc("sweep", "launch", sweep, "--output", a_file, code=2).output
    assert a_file.read_text() == "mine"
    long_name = tmp_path / ("x" * 300)
    out = sfhpc("sweep", "launch", sweep, "--output", long_name, code=2).output
    assert "allows names of at most 255 bytes" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lab's sweeps", "taken"]  # nothing made


@pytest.mark.parametrize("words", [[], ["sweep"], ["sweep", "launch"], ["status"], ["cost"], ["cbm", "fit"], ["export"],
                                   ["export", "rdms"]])
def test_dash_h_is_help_on_every_command(words: list[str]):
    short, long = runner.invoke(app, [*words, "-h"]), runner.invoke(app, [*words, "--help"])
    assert short.exit_code == 0 and short.stdout == long.stdout and "Usage: " in short.stdout


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
def test_output_to_a_full_disk_is_one_line_and_exit_1(run: Path):
    """`sfhpc status RUN --json > FILE` on a full disk (here /dev/full, which refuses every write): one line on
    stderr and exit status 1 (not everything done), never a traceback."""
    import subprocess
    import sys

    with open("/dev/full", "w") as full:
        result = subprocess.run([sys.executable, "-m", "sfhpc.cli", "status", str(run), "--json"], stdout=full,
                                stderr=subprocess.PIPE, text=True, timeout=120)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip() == "error: could not write: No space left on device (ENOSPC)"
