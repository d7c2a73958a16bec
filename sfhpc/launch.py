"""Submitting a sweep through submitit: local, debug and SLURM executors, resumable launches.

Login-node code: never imports torch. The pickled job is :class:`PointJob`, which imports its stage module only
when it runs on the node.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import submitit
import yaml

from sfhpc.config import PROJECT_ROOT
from sfhpc.errors import RunError
from sfhpc.results import ResultIndex, git_sha, now_iso
from sfhpc.rundir import JobRecord, RunDir
from sfhpc.sweep import Plan, Point, StagePlan

CHECKPOINT_NAME = "checkpoint.pt"


# ----------------------------------------------------------------------------------------- the job
class PointJob(submitit.helpers.Checkpointable):
    """What runs on the node: one point of one stage. Small and picklable; on a time limit or preemption
    submitit calls `checkpoint`, which requeues this same job, and the stage resumes from its checkpoint."""

    def __init__(self, run_dir: str, stage: str, entry: str, point_id: str, config: dict[str, Any]):
        self.run_dir, self.stage, self.entry, self.point_id, self.config = run_dir, stage, entry, point_id, config

    def __call__(self) -> str:
        import importlib

        point_dir = RunDir(self.run_dir).point_dir(self.stage, self.point_id)
        try:
            module = importlib.import_module(self.entry)
            return str(module.run(self.config, point_dir))
        except Exception as err:
            # Kept beside the point so that `sfhpc status` can show why, whatever the scheduler says:
            # a one-line summary first, then the traceback.
            summary = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
            (point_dir / "error.txt").write_text(f"{summary}\n\n{traceback.format_exc()}")
            raise


# ------------------------------------------------------------------------------------- launching
@dataclass
class LaunchReport:
    run_dir: Path
    executor: str
    dry_run: bool
    to_run: dict[str, list[str]] = field(default_factory=dict)  # stage -> point ids submitted (or to submit)
    skipped_done: dict[str, int] = field(default_factory=dict)
    skipped_active: dict[str, list[str]] = field(default_factory=dict)
    blocked: dict[str, list[str]] = field(default_factory=dict)  # upstream failed: not run
    finished: dict[str, dict[str, str]] = field(default_factory=dict)  # local/debug: point -> done | failed


ProgressHook = Callable[[str, str, str], None]  # (stage, point_id, "started" | "done" | "failed")


def resolve_executor(name: str) -> str:
    if name == "auto":
        return "slurm" if shutil.which("sbatch") else "local"
    return name


def launch(plan: Plan, *, executor: str | None = None, output: Path | None = None, force: bool = False,
           dry_run: bool = False, allow_changed: bool = False, parallel: int = 1,
           progress: ProgressHook | None = None) -> LaunchReport:
    """Submit every point of `plan` without a valid result. Local and debug executors wait for the jobs;
    SLURM returns once everything is queued."""
    kind = resolve_executor(executor or plan.sweep.executor)
    run = RunDir(output or Path(plan.sweep.output or Path("runs") / plan.sweep.name))
    manifest = _checked_manifest(run, plan, allow_changed)
    report = LaunchReport(run.path, kind, dry_run)
    active = _active_points(run)
    index = run.result_index()
    todo: dict[str, list[Point]] = {}
    for stage in plan.stages:
        pending = [p for p in stage.points if force or not _has_result(run, index, stage.name, p.id)]
        report.skipped_done[stage.name] = len(stage.points) - len(pending)
        report.skipped_active[stage.name] = [p.id for p in pending if (stage.name, p.id) in active]
        todo[stage.name] = [p for p in pending if (stage.name, p.id) not in active]
        report.to_run[stage.name] = [p.id for p in todo[stage.name]]
    if dry_run:
        return report
    run.path.mkdir(parents=True, exist_ok=True)
    run.write_manifest(manifest)
    (run.path / "sweep.yaml").write_text(plan.source.read_text())
    for stage in plan.stages:
        for point in todo[stage.name]:
            _prepare_point_dir(run, point_config(run, plan, stage, point, manifest["git_sha"], None), force)
    if kind in ("local", "debug"):
        _run_in_waves(run, plan, todo, kind, parallel, report, progress, index)
    else:
        raise RunError("the SLURM executor is not available in this version; use --executor local")
    index.save()
    return report


def _checked_manifest(run: RunDir, plan: Plan, allow_changed: bool) -> dict[str, Any]:
    manifest = {
        "schema_version": 1,
        "name": plan.sweep.name,
        "sweep_file": str(plan.source.resolve()),
        "fingerprint": plan.fingerprint(),
        "git_sha": git_sha(PROJECT_ROOT),
        "created": now_iso(),
        "plan": plan.to_json(),
    }
    if run.exists():
        old = run.read_manifest()
        if old.get("fingerprint") != manifest["fingerprint"] and not allow_changed:
            raise RunError(
                f"{run.path} was launched from a different sweep ({old.get('sweep_file')}; "
                f"{describe_change(old['plan'], manifest['plan'])}). Relaunching would mix results of two designs. "
                "Use --allow-changed to update this run (finished points whose settings did not change are kept), "
                "or --output for a new run folder."
            )
        manifest["created"] = old.get("created", manifest["created"])
        manifest["updated"] = now_iso()
    return manifest


def describe_change(old_plan: dict[str, Any], new_plan: dict[str, Any]) -> str:
    """A short human description of how two resolved plans differ."""
    old_ids = {p["id"] for s in old_plan["stages"] for p in s["points"]}
    new_ids = {p["id"] for s in new_plan["stages"] for p in s["points"]}
    return f"{len(new_ids - old_ids)} new points, {len(old_ids - new_ids)} points no longer in the sweep"


def _active_points(run: RunDir) -> set[tuple[str, str]]:
    """Points whose last submission is still alive: never submitted twice at once."""
    from sfhpc.status import job_is_alive

    return {key for key, record in run.latest_jobs().items() if job_is_alive(record)}


def _prepare_point_dir(run: RunDir, config: dict[str, Any], force: bool) -> None:
    stage, point_id = config["stage"], config["point_id"]
    folder = run.point_dir(stage, point_id)
    folder.mkdir(parents=True, exist_ok=True)
    stale = [run.error_path(stage, point_id)]
    if force:  # redo from scratch: an old checkpoint would otherwise be resumed
        stale += [run.result_path(stage, point_id), folder / CHECKPOINT_NAME]
    for path in stale:
        path.unlink(missing_ok=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def point_config(run: RunDir, plan: Plan, stage: StagePlan, point: Point, sha: str,
                 threads: int | None) -> dict[str, Any]:
    """The resolved configuration a stage runs with; also written beside the result and inside it."""
    return {
        "stage": stage.name,
        "point_id": point.id,
        "params": point.params,
        "data": plan.sweep.data.model_dump(mode="json"),
        "upstream": list(point.upstream),
        "resources": stage.resources.model_dump(mode="json"),
        "run_dir": str(run.path.resolve()),
        "git_sha": sha,
        "threads": threads,
    }


# -------------------------------------------------------------------------- local and debug runs
def _run_in_waves(run: RunDir, plan: Plan, todo: dict[str, list[Point]], kind: str, parallel: int,
                  report: LaunchReport, progress: ProgressHook | None, index: ResultIndex) -> None:
    """Run stage after stage with at most `parallel` points at a time; a point whose upstream failed is
    blocked, not run. Each point is its own process (local) so that one crash loses nothing else."""
    threads = max(1, (os.cpu_count() or 1) // parallel)
    sha = run.read_manifest()["git_sha"]
    for stage in plan.stages:
        points = todo[stage.name]
        runnable = [p for p in points if all(_has_result(run, index, *up.split("/", 1)) for up in p.upstream)]
        report.blocked[stage.name] = [p.id for p in points if p not in runnable]
        run.record_jobs([_record(run, stage.name, p.id, kind, None) for p in runnable])
        executor = _local_executor(run, kind, stage)
        outcome = report.finished.setdefault(stage.name, {})
        queue = list(runnable)
        running: list[tuple[Point, Any]] = []
        while queue or running:
            while queue and len(running) < parallel:
                point = queue.pop(0)
                job_fn = PointJob(str(run.path), stage.name, stage.entry, point.id,
                                  point_config(run, plan, stage, point, sha, threads))
                job = executor.submit(job_fn)
                run.record_jobs([_record(run, stage.name, point.id, kind, str(job.job_id))])
                if progress:
                    progress(stage.name, point.id, "started")
                running.append((point, job))
            for point, job in [(p, j) for p, j in running if kind == "debug" or j.done()]:
                running.remove((point, job))
                state = _finish(job, run, index, stage.name, point.id)
                outcome[point.id] = state
                if progress:
                    progress(stage.name, point.id, state)
            if running:
                time.sleep(0.2)


def _local_executor(run: RunDir, kind: str, stage: StagePlan) -> submitit.Executor:
    folder = run.logs / "%j"
    if kind == "debug":
        return submitit.DebugExecutor(folder=folder)
    executor = submitit.LocalExecutor(folder=folder)
    executor.update_parameters(timeout_min=stage.resources.timeout_min,
                               tasks_per_node=stage.resources.tasks_per_node)
    return executor


def _finish(job: Any, run: RunDir, index: ResultIndex, stage: str, point_id: str) -> str:
    try:
        job.result()
    except Exception:  # the error is in error.txt and the job's log; status shows it
        pass
    return "done" if _has_result(run, index, stage, point_id) else "failed"


def _has_result(run: RunDir, index: ResultIndex, stage: str, point_id: str) -> bool:
    return index.check(run.result_path(stage, point_id), point_id).state == "ok"


def _record(run: RunDir, stage: str, point_id: str, kind: str, job_id: str | None) -> JobRecord:
    return JobRecord(stage=stage, point=point_id, executor=kind, job_id=job_id,
                     log_dir=str(run.logs / job_id) if job_id else "",
                     submitted=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                     launcher_pid=os.getpid())
