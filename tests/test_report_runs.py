"""Run folders made by hand for the report's tests (test_report.py, test_report_controls.py): the manifest a real
sweep expansion gives, and result files with chosen numbers, without training; or, for the exports' tests, every
point of such a run run in this process (`run_every_point`). Helpers only: no test is defined here, and nothing here
imports a stage's report module, so that a report test reads only the stages it builds."""

from __future__ import annotations

from pathlib import Path

import yaml

from sfhpc.job import run_point
from sfhpc.launch import point_config
from sfhpc.results import Provenance, now_iso, write_result
from sfhpc.rundir import RunDir
from sfhpc.sweep import Plan, expand_file


def make_run(folder: Path, sweep_text: str) -> tuple[RunDir, Plan]:
    """A run folder with the manifest `sweep launch` writes, and no results yet."""
    folder.mkdir(parents=True, exist_ok=True)
    sweep = folder / "sweep.yaml"
    sweep.write_text(sweep_text)
    plan = expand_file(sweep)
    run = RunDir(folder / "run")
    run.path.mkdir()
    run.write_manifest({"schema_version": 1, "name": plan.sweep.name, "sweep_file": str(sweep.resolve()),
                        "fingerprint": plan.fingerprint(), "git_sha": "test", "executor": "local",
                        "created": now_iso(), "plan": plan.to_json()})
    return run, plan


def write_point(run: RunDir, stage: str, point_id: str, metrics: dict, curves: dict | None = None,
                attrs: dict | None = None, claims: str | None = None) -> None:
    write_result(run.result_path(stage, point_id), stage=stage, point_id=claims or point_id, config={},
                 provenance=Provenance("test", now_iso(), now_iso()), metrics=metrics, curves=curves or {},
                 extra_attrs=attrs)


def run_every_point(run: RunDir, plan: Plan) -> None:
    """Each point in its folder as a job runs it (config.yaml beside it, one thread), upstream stages first."""
    for stage in plan.stages:
        for point in stage.points:
            config = {**point_config(run, plan, stage, point, "test"), "threads": 1}
            folder = run.point_dir(stage.name, point.id)
            folder.mkdir(parents=True)
            (folder / "config.yaml").write_text(yaml.safe_dump(config))
            run_point(config, folder)
