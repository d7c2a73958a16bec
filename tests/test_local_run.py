"""End to end on the local executor: launch -> status -> aggregate, failures, relaunch, changed sweeps."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sfhpc.cli import app

from conftest import TINY_SWEEP

runner = CliRunner()


def sfhpc(*args: str, code: int = 0):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == code, result.output
    return result


def status_json(run_dir: Path) -> dict:
    result = runner.invoke(app, ["status", str(run_dir), "--json"])
    assert result.exit_code in (0, 1), result.output  # 1: a point failed
    return json.loads(result.stdout)


def snapshot(run_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in run_dir.glob("train/*/result.h5")}


@pytest.fixture(scope="module")
def finished_template(tmp_path_factory) -> tuple[Path, Path]:
    """One real launch per module (each point is a real process); tests work on copies of it."""
    folder = tmp_path_factory.mktemp("template") / "lab's sweeps"
    folder.mkdir()
    sweep = folder / "tiny.yaml"
    sweep.write_text(TINY_SWEEP)
    sfhpc("sweep", "launch", sweep, "--output", folder / "runs" / "tiny run")
    return sweep, folder / "runs" / "tiny run"


@pytest.fixture
def tiny_sweep(finished_template, awkward_dir: Path) -> Path:
    return Path(shutil.copy(finished_template[0], awkward_dir / "tiny.yaml"))


@pytest.fixture
def finished_run(finished_template, awkward_dir: Path) -> Path:
    return Path(shutil.copytree(finished_template[1], awkward_dir / "runs" / "tiny run"))


def test_launch_status_aggregate(finished_run: Path):
    status = status_json(finished_run)
    assert status["counts"] == {"train": {"done": 2}}
    assert {p["point"].split("-")[0] for p in status["points"]} == {"band=none", "band=lsf"}

    table = sfhpc("aggregate", finished_run).stdout
    assert "band" in table and "test_accuracy" in table and "lsf" in table
    csv_lines = (finished_run / "summary.csv").read_text().splitlines()
    assert csv_lines[0].startswith("stage,point,state,")
    assert len(csv_lines) == 3 and all(",done," in line for line in csv_lines[1:])
    summary = (finished_run / "summary.md").read_text()
    assert "Every point has a valid result." in summary

    manifest = json.loads((finished_run / "manifest.json").read_text())
    assert manifest["name"] == "tiny" and len(manifest["plan"]["stages"][0]["points"]) == 2
    assert (finished_run / "sweep.yaml").read_text().startswith("name: tiny")


def test_relaunch_of_a_finished_run_submits_nothing(finished_run: Path, tiny_sweep: Path):
    before = snapshot(finished_run)
    out = sfhpc("sweep", "launch", tiny_sweep, "--output", finished_run).stdout
    assert "submitted 0 points (2 already done)" in out
    assert snapshot(finished_run) == before


def test_a_failed_point_is_shown_and_relaunch_reruns_only_it(finished_run: Path, tiny_sweep: Path):
    lsf_dir = next(finished_run.glob("train/band=lsf-*"))
    none_dir = next(finished_run.glob("train/band=none-*"))
    # Damage one point: its result is gone and its checkpoint is garbage, so its rerun fails.
    (lsf_dir / "result.h5").unlink()
    (lsf_dir / "checkpoint.pt").write_bytes(b"not a checkpoint")
    untouched = snapshot(finished_run)

    out = sfhpc("sweep", "launch", tiny_sweep, "--output", finished_run, code=1).stdout  # a point failed: exit 1
    assert "1 done" not in out and "1 failed" in out
    status = status_json(finished_run)
    assert status["counts"]["train"] == {"done": 1, "failed": 1}
    failed = next(p for p in status["points"] if p["state"] == "failed")
    assert failed["point"] == lsf_dir.name
    assert "checkpoint" in failed["reason"] and "unreadable" in failed["reason"]
    human = sfhpc("status", finished_run, code=1).stdout
    assert "failed" in human and lsf_dir.name in human and "RuntimeError: checkpoint" in human
    watched = sfhpc("status", finished_run, "--watch", "1", code=1).stdout  # nothing left to wait for: a point failed
    assert "RuntimeError: checkpoint" in watched

    agg = sfhpc("aggregate", finished_run).stdout
    assert "failed" in agg and lsf_dir.name in agg
    assert "failed" in (finished_run / "summary.md").read_text()

    # The user fixes the cause; relaunching reruns only the failed point, the others stay byte for byte.
    (lsf_dir / "checkpoint.pt").unlink()
    out = sfhpc("sweep", "launch", tiny_sweep, "--output", finished_run).stdout
    assert "submitted 1 points (1 already done)" in out
    assert status_json(finished_run)["counts"]["train"] == {"done": 2}
    sfhpc("status", finished_run, "--watch", "1")  # every point done: exit code 0
    after = snapshot(finished_run)
    assert after[f"train/{none_dir.name}/result.h5"] == untouched[f"train/{none_dir.name}/result.h5"]
    assert not (lsf_dir / "error.txt").exists()


def test_corrupt_result_is_reported_never_used(finished_run: Path):
    victim = next(finished_run.glob("train/band=none-*")) / "result.h5"
    victim.write_bytes(victim.read_bytes()[:100])
    status = status_json(finished_run)
    bad = next(p for p in status["points"] if p["point"] == victim.parent.name)
    assert bad["state"] == "failed" and bad["reason"].startswith("corrupt result")
    sfhpc("aggregate", finished_run)
    csv = (finished_run / "summary.csv").read_text()
    assert f"train,{victim.parent.name},corrupt," in csv


def test_changed_sweep_is_refused_unless_allowed(finished_run: Path, tiny_sweep: Path, write_sweep):
    changed = write_sweep(tiny_sweep.read_text().replace("seed: [0]", "seed: [0, 1]"), "tiny2.yaml")
    err = sfhpc("sweep", "launch", changed, "--output", finished_run, code=2).output
    assert "different sweep" in err and "2 new points" in err and "--allow-changed" in err
    assert "Traceback" not in err
    before = snapshot(finished_run)
    out = sfhpc("sweep", "launch", changed, "--output", finished_run, "--allow-changed", "--dry-run").stdout
    assert "would submit 2 points (2 already done)" in out
    assert snapshot(finished_run) == before


def test_a_stage_that_gained_a_parameter_keeps_the_design_of_earlier_runs(finished_run: Path, tiny_sweep: Path):
    """A run launched before a stage had a parameter (its manifest's params lack it; the new default keeps results,
    and the point ids are the same) relaunches as the same design: nothing to allow, nothing submitted."""
    manifest_path = finished_run / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    for stage in manifest["plan"]["stages"]:
        for point in stage["points"]:
            point["params"].pop("lr_step", None)  # as if the train stage had no lr_step yet
    manifest_path.write_text(json.dumps(manifest))
    out = sfhpc("sweep", "launch", tiny_sweep, "--output", finished_run).stdout
    assert "different sweep" not in out and "submitted 0 points (2 already done)" in out


def test_changing_only_resources_is_not_a_new_design(finished_run: Path, tiny_sweep: Path, write_sweep):
    resized = write_sweep(tiny_sweep.read_text().replace("    params:\n      width: 4",
                                                         "    resources: {mem_gb: 3, timeout_min: 20}\n"
                                                         "    params:\n      width: 4"), "resized.yaml")
    before = snapshot(finished_run)
    out = sfhpc("sweep", "launch", resized, "--output", finished_run).stdout
    assert "different sweep" not in out and "submitted 0 points (2 already done)" in out
    assert "train: mem_gb 8 -> 3" in out and "train: timeout_min 60 -> 20" in out
    assert snapshot(finished_run) == before
    changes = json.loads((finished_run / "manifest.json").read_text())["changes"]
    assert changes[-1]["settings"] == ["train: mem_gb 8 -> 3", "train: timeout_min 60 -> 20"]
    # the same settings again: nothing more to record
    out = sfhpc("sweep", "launch", resized, "--output", finished_run).stdout
    assert "settings changed" not in out
    assert json.loads((finished_run / "manifest.json").read_text())["changes"] == changes


def test_force_redoes_finished_points(finished_run: Path, tiny_sweep: Path):
    out = sfhpc("sweep", "launch", tiny_sweep, "--output", finished_run, "--force").stdout
    assert "submitted 2 points" in out
    assert status_json(finished_run)["counts"]["train"] == {"done": 2}


def test_dry_run_writes_nothing(tiny_sweep: Path, awkward_dir: Path):
    run_dir = awkward_dir / "never"
    out = sfhpc("sweep", "launch", tiny_sweep, "--output", run_dir, "--dry-run").stdout
    assert "would submit 2 points" in out and "band=none-" in out
    assert not run_dir.exists()


def test_status_of_a_missing_run_is_a_clear_error(tmp_path: Path):
    err = sfhpc("status", tmp_path / "nothing", code=2).output
    assert "no run folder" in err and "sfhpc sweep launch" in err


def test_a_failed_model_blocks_only_its_own_evaluations(finished_run: Path, tiny_sweep: Path, write_sweep):
    # Add a CBM stage, and make the lsf model's (re)training fail: its CBM point cannot run, the other model's does.
    lsf_dir = next(finished_run.glob("train/band=lsf-*"))
    (lsf_dir / "result.h5").unlink()
    (lsf_dir / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with_cbm = write_sweep(tiny_sweep.read_text() + "  cbm:\n    params: {cbm_images: 16}\n", "with_cbm.yaml")
    out = sfhpc("sweep", "launch", with_cbm, "--output", finished_run, "--allow-changed", code=1).stdout
    assert "1 points not run: an input has no result" in out

    points = {(p["stage"], p["point"].split("-")[0]): p for p in status_json(finished_run)["points"]}
    assert points["train", "band=lsf"]["state"] == "failed"
    assert points["cbm", "band=none"]["state"] == "done"
    assert points["cbm", "band=lsf"]["state"] == "not submitted"
    assert points["cbm", "band=lsf"]["reason"] == f"not run: its input train/{lsf_dir.name} has no result"
    assert not any(finished_run.glob("cbm/band=lsf-*/result.h5"))

    # Once the cause is fixed, a relaunch runs the failed model and then its evaluation.
    (lsf_dir / "checkpoint.pt").unlink()
    out = sfhpc("sweep", "launch", with_cbm, "--output", finished_run).stdout
    assert "not run" not in out
    assert status_json(finished_run)["counts"] == {"train": {"done": 2}, "cbm": {"done": 2}}


def test_a_job_that_ends_while_status_looks_is_done_not_failed(finished_run: Path, monkeypatch):
    # The result is looked for first, the scheduler asked second: a job may write its result and end in between.
    from sfhpc import status as status_module
    from sfhpc.rundir import JobRecord, RunDir
    from sfhpc.slurm import SlurmState

    point_dir = next(finished_run.glob("train/band=none-*"))
    result, aside = point_dir / "result.h5", point_dir.parent / "result.h5.aside"
    result.rename(aside)
    RunDir(finished_run).record_jobs([JobRecord("train", point_dir.name, "slurm", "77_0", "logs/77_0",
                                                "2026-01-01T00:00:00+00:00", 1)])

    def job_ends_meanwhile(run, records):
        assert [r.job_id for r in records] == ["77_0"]
        aside.rename(result)
        return {"77_0": SlurmState("COMPLETED", "0:0")}

    monkeypatch.setattr(status_module, "scheduler_states", job_ends_meanwhile)
    point = next(p for p in status_json(finished_run)["points"] if p["point"] == point_dir.name)
    assert point["state"] == "done", point
