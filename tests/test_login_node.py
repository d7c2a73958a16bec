"""The login-node path stays light: no torch import for --help, expand, launch up to submission, status, aggregate."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

PROBE = """
import sys
from sfhpc.cli import app
try:
    app(sys.argv[1:], standalone_mode=False)
except SystemExit:
    pass
heavy = sorted(m for m in ("torch", "torchvision", "pyautoattack", "matplotlib") if m in sys.modules)
print("HEAVY:" + ",".join(heavy))
"""


def heavy_modules_after(*args: str) -> str:
    out = subprocess.run([sys.executable, "-c", PROBE, *map(str, args)], capture_output=True, text=True, timeout=120)
    line = next(line for line in out.stdout.splitlines() if line.startswith("HEAVY:"))
    return line.removeprefix("HEAVY:")


def test_importing_the_cli_does_not_import_torch():
    out = subprocess.run([sys.executable, "-c", "import sys, sfhpc.cli; print('torch' in sys.modules)"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("command", [["--help"], ["sweep", "expand", "{sweep}"],
                                     ["sweep", "launch", "{sweep}", "--dry-run", "--output", "{run}"]])
def test_login_node_commands_do_not_import_torch(command, tiny_sweep: Path, tmp_path: Path):
    args = [c.format(sweep=tiny_sweep, run=tmp_path / "run") for c in command]
    assert heavy_modules_after(*args) == ""


def test_expanding_the_guided_quickstart_does_not_import_torch():
    quickstart = Path(__file__).resolve().parents[1] / "sweeps" / "quickstart.yaml"
    assert heavy_modules_after("sweep", "expand", quickstart, "--json") == ""


def test_status_and_aggregate_do_not_import_torch(tiny_sweep: Path, tmp_path: Path):
    run = tmp_path / "run"
    subprocess.run([sys.executable, "-m", "sfhpc.cli", "sweep", "launch", str(tiny_sweep), "--output", str(run)],
                   check=True, capture_output=True)
    assert heavy_modules_after("status", run, "--all") == ""
    assert heavy_modules_after("aggregate", run) == ""
