"""A stage from another package, plugged in through the `sfhpc.stages` entry-point group: one module, one entry
point and one job file, and `sweep expand`, a local launch, `status`, `aggregate` and report.md pick it up with no
edit to sfhpc. The plugin is a real installed distribution (a dist-info folder on the path, as pip makes it)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

TOY_STAGE = '''\
"""A toy analysis stage: the error rate of each trained model, scaled. Torch-free, like a spec must be."""

from pathlib import Path

from pydantic import Field

from sfhpc.config import Closed, Float
from sfhpc.report.model import Family, ReportedMetric, StageReport
from sfhpc.stages.spec import StageSpec

TOY_ERROR = "toy_error"


class ToyParams(Closed):
    toy_scale: Float = Field(1.0, gt=0, description="what the error rate is multiplied by")


def run(point) -> Path:
    from sfhpc.results import RESULT_NAME, read_metrics
    from sfhpc.stages.train import TEST_ACCURACY

    metrics, _ = read_metrics(point.run_dir / point.only_upstream() / RESULT_NAME)
    return point.write_result({TOY_ERROR: point.params.toy_scale * (1 - metrics[TEST_ACCURACY])}, {})


REPORT = StageReport(
    families=(Family("toy", "Toy errors", "One minus the clean test accuracy, times toy_scale."),),
    metrics=(ReportedMetric(TOY_ERROR, "toy error", "toy", column="toy err"),),
)
SPEC = StageSpec(name="toy", entry=__name__, params=ToyParams, runner=f"{__name__}:run", upstream=("train",),
                 report=f"{__name__}:REPORT")
'''

TOY_JOB = """\
entry: toy_plugin.stage
resources: {cpus_per_task: 1, mem_gb: 1, timeout_min: 5}
"""

SWEEP = """\
name: toy
executor: local
data: {image_size: 32, n_classes: 4, n_train: 64, n_val: 32, n_test: 32}
grid:
  band: [none, lsf]
  seed: [0, 1]
stages:
  train:
    params: {width: 4, epochs: 1, batch_size: 32}
  toy:
    job: ./toy.yaml
    params: {toy_scale: 2.0}
"""


def install_plugin(site: Path, name: str, entry_points: str, modules: dict[str, str]) -> None:
    """A distribution as pip installs it: its package and a dist-info folder with its entry points."""
    for relative, text in modules.items():
        (site / relative).parent.mkdir(parents=True, exist_ok=True)
        (site / relative).write_text(text)
    info = site / f"{name}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(entry_points)


@pytest.fixture
def plugin_site(tmp_path: Path) -> Path:
    site = tmp_path / "site-packages"
    install_plugin(site, "toy_plugin", "[sfhpc.stages]\ntoy = toy_plugin.stage:SPEC\n",
                   {"toy_plugin/__init__.py": "", "toy_plugin/stage.py": TOY_STAGE})
    return site


def sfhpc(site: Path, *args: object, code: int | None = 0) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "sfhpc.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=600)
    if code is not None:
        assert done.returncode == code, done.stdout + done.stderr
    return done


def test_a_plugin_stage_runs_and_reaches_status_aggregate_and_the_report(plugin_site: Path, tmp_path: Path):
    folder = tmp_path / "sweeps"
    folder.mkdir()
    (folder / "toy.yaml").write_text(TOY_JOB)
    (folder / "sweep.yaml").write_text(SWEEP)
    run = tmp_path / "run"

    plan = json.loads(sfhpc(plugin_site, "sweep", "expand", folder / "sweep.yaml", "--json").stdout)
    toy = next(stage for stage in plan["stages"] if stage["name"] == "toy")
    assert len(toy["points"]) == 4 and all(len(point["upstream"]) == 1 for point in toy["points"])

    sfhpc(plugin_site, "sweep", "launch", folder / "sweep.yaml", "--output", run)
    status = json.loads(sfhpc(plugin_site, "status", run, "--json").stdout)
    assert status["counts"]["toy"] == {"done": 4}

    shown = sfhpc(plugin_site, "aggregate", run).stdout
    assert "toy err" in shown  # its headline column in the terminal
    rows = {(row["condition"], row["metric"]): row for row in csv.DictReader((run / "conditions.csv").open())}
    for band in ("none", "lsf"):
        toy_row, accuracy = rows[(f"band={band}", "toy_error")], rows[(f"band={band}", "test_accuracy")]
        assert int(toy_row["n"]) == 2
        assert float(toy_row["mean"]) == pytest.approx(2.0 * (1 - float(accuracy["mean"])))
    assert float(rows[("band=lsf", "toy_error")]["pairs"]) == 2  # tested against its baseline like any metric
    report = (run / "report.md").read_text()
    assert "## Toy errors" in report and "One minus the clean test accuracy" in report
    summary = list(csv.DictReader((run / "summary.csv").open()))
    assert sum(row["stage"] == "toy" and row["state"] == "done" for row in summary) == 4


def test_a_plugin_that_cannot_load_is_named_when_a_sweep_uses_its_stage(tmp_path: Path):
    site = tmp_path / "site-packages"
    install_plugin(site, "broken_plugin", "[sfhpc.stages]\nbroken = broken_plugin.stage:SPEC\n",
                   {"broken_plugin/__init__.py": "", "broken_plugin/stage.py": "import not_installed_anywhere\n"})
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(textwrap.dedent("""\
        name: uses-broken
        grid: {seed: [0]}
        stages:
          train: {}
          broken: {}
        """))
    done = sfhpc(site, "sweep", "expand", sweep, code=2)
    assert "Traceback" not in done.stderr
    message = done.stdout + done.stderr
    assert f"{sweep}:5:" in message and "stages.broken" in message and "unknown stage" in message
    assert "broken_plugin" in message and "ModuleNotFoundError" in message
    sweep.write_text(sweep.read_text().replace("  broken: {}\n", ""))
    sfhpc(site, "sweep", "expand", sweep)  # a sweep without it is not stopped by it


def test_a_plugin_cannot_replace_a_built_in_stage(tmp_path: Path):
    site = tmp_path / "site-packages"
    install_plugin(site, "shadow_plugin", "[sfhpc.stages]\ntrain = shadow_plugin.stage:SPEC\n",
                   {"shadow_plugin/__init__.py": "", "shadow_plugin/stage.py": TOY_STAGE.replace('"toy"', '"train"')})
    probe = ("from sfhpc.stages.registry import registry; r = registry(); "
             "print(r['train'].entry); print(r.broken['train'])")
    env = {**os.environ, "PYTHONPATH": str(site)}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, check=True).stdout
    entry, why = out.splitlines()
    assert entry == "sfhpc.stages.train" and "already a stage" in why
