"""Acting on an existing run: cancel its jobs, resubmit its failed or missing points. Each holds the run folder's
lock (`RunDir.exclusive`): one launch, resubmit or cancel at a time."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from sfhpc.rundir import STOPPABLE_ACTIONS, JobRecord, RunDir, RunLocked, terminate_process
from sfhpc.status import job_is_alive, run_status, scheduler_states

if TYPE_CHECKING:
    from sfhpc.launch import LaunchReport, ProgressHook
    from sfhpc.retry import Retry
    from sfhpc.sweep import Plan

LAUNCH_STOP_WAIT_S = 60  # how long cancel waits for a local launch it stopped to stop its points and let go


def cancel_run(run: RunDir, stage: str | None = None) -> list[str]:
    """Cancel every live job ever recorded for this run (optionally of one stage), not only each point's latest;
    returns the job ids cancelled. Jobs of other runs and users are never touched, nor a process whose PID now
    belongs to someone else. A local launch still running the run's points is stopped first (it stops them and
    puts back what --force set aside). A foreign or damaged run folder is a RunError."""
    sweep = str(run.read_manifest().get("name", ""))
    try:
        return _cancel_live_jobs(run, stage, sweep)
    except RunLocked as locked:
        if locked.holder.get("action") not in STOPPABLE_ACTIONS:
            raise
        live = {r.job_id for r in _live_records(run, stage) if r.executor != "slurm" and r.job_id}
        if not terminate_process(locked.holder.get("pid", 0), locked.holder.get("process")):
            raise
    deadline = time.monotonic() + LAUNCH_STOP_WAIT_S
    while True:
        try:
            return sorted(live | set(_cancel_live_jobs(run, stage, sweep)))
        except RunLocked:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _live_records(run: RunDir, stage: str | None) -> list[JobRecord]:
    """Every job recorded for the run (once each, optionally of one stage) that is still alive."""
    records = [r for r in run.all_jobs() if r.job_id and (stage is None or r.stage == stage)]
    records = list({(r.executor, r.job_id): r for r in records}.values())  # a job recorded twice: once
    scheduler = scheduler_states(run, records)
    return [r for r in records if job_is_alive(r, scheduler)]


def _cancel_live_jobs(run: RunDir, stage: str | None, sweep: str) -> list[str]:
    with run.exclusive("cancel"):
        live = _live_records(run, stage)
        slurm_records = {str(r.job_id): r for r in live if r.executor == "slurm" and r.job_id}
        slurm_ids: list[str] = []
        if slurm_records:
            from sfhpc.slurm import array_of, arrays_still_ours, cancel, job_name

            ours = set(arrays_still_ours({array_of(job_id): job_name(sweep, r.stage)
                                          for job_id, r in slurm_records.items()}))
            slurm_ids = [job_id for job_id in slurm_records if array_of(job_id) in ours]
            cancel(slurm_ids)
        stopped = [r.job_id for r in live
                   if r.executor == "local" and r.job_id and terminate_process(int(r.job_id), r.job_process)]
    return slurm_ids + stopped


def resubmit_run(run: RunDir, failed_only: bool, executor: str | None = None, progress: ProgressHook | None = None
                 ) -> LaunchReport:
    """Launch again the run's own sweep copy, for its failed points only or for every point without a result;
    points still pending or running are left alone. On SLURM, failed points are right-sized (sfhpc.retry): more
    memory after OUT_OF_MEMORY, more time after a TIMEOUT without checkpoint progress, the failed node excluded
    after NODE_FAIL; the report's `retries` lists every change."""
    from sfhpc.launch import launch, resolve_executor
    from sfhpc.sweep import expand_file

    manifest = run.read_manifest()
    kind = resolve_executor(executor or manifest.get("executor", "auto"))
    with run.exclusive(f"{kind} resubmit"):
        # The run's copy of its sweep: relative job and profile paths in it are the original file's; its size was
        # accepted at launch (perhaps with --max-points), and its points are the manifest's.
        plan = expand_file(run.path / "sweep.yaml", base_dir=Path(manifest["sweep_file"]).parent,
                           max_points=sys.maxsize)
        failed = [(s.stage, s.point) for s in run_status(run) if s.state == "failed"]
        retries = _right_sized(run, plan, failed) if kind == "slurm" else {}
        return launch(plan, executor=kind, output=run.path, only=set(failed) if failed_only else None,
                      progress=progress, retries=retries)


def _right_sized(run: RunDir, plan: Plan, failed: list[tuple[str, str]]) -> dict[tuple[str, str], Retry]:
    """The retries of these failed points (their jobs' states are cached: no new sacct call); none when sinfo
    cannot tell the partition's nodes (the launch then says why it cannot submit)."""
    from sfhpc import slurm
    from sfhpc.retry import plan_retries

    jobs = run.latest_jobs()
    states = scheduler_states(run, [jobs[key] for key in failed if key in jobs])
    try:
        nodes = slurm.partition_nodes(plan.cluster.partition)
    except slurm.SlurmError:
        return {}
    return plan_retries(run, plan, failed, states, nodes)
