"""Acting on an existing run: cancel its jobs, resubmit its failed or missing points. Each holds the run folder's
lock (`RunDir.exclusive`): one launch, resubmit or cancel at a time."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from sfhpc.rundir import JobRecord, RunDir, process_identity
from sfhpc.status import job_is_alive, run_status, scheduler_states


def cancel_run(run: RunDir, stage: str | None = None) -> list[str]:
    """Cancel every live job ever recorded for this run (optionally of one stage), not only each point's latest;
    returns the job ids cancelled. Jobs of other runs and users are never touched, nor a process whose PID now
    belongs to someone else. A foreign or damaged run folder is a RunError."""
    run.read_manifest()
    with run.exclusive("cancel"):
        records = [r for r in run.all_jobs() if r.job_id and (stage is None or r.stage == stage)]
        records = list({(r.executor, r.job_id): r for r in records}.values())  # a job recorded twice: once
        scheduler = scheduler_states(run, records)
        live = [r for r in records if job_is_alive(r, scheduler)]
        slurm_ids = [r.job_id for r in live if r.executor == "slurm"]
        if slurm_ids:
            from sfhpc.slurm import cancel

            cancel(slurm_ids)
        stopped = [r.job_id for r in live if r.executor == "local" and _terminate(r)]
    return slurm_ids + stopped


def _terminate(record: JobRecord) -> bool:
    """SIGTERM a local job's process if, and only if, it is still the very process recorded. Where the kernel has
    pidfds, the process is pinned before it is checked, so that its PID cannot pass to another in between."""
    pid = int(record.job_id)
    try:
        pinned: int | None = os.pidfd_open(pid)
    except ProcessLookupError:
        return False  # it ended on its own meanwhile
    except (AttributeError, OSError):  # no pidfds in this Python or kernel: check, then signal at once
        pinned = None
    try:
        if process_identity(pid) != record.job_process:
            return False
        if pinned is None:
            os.kill(pid, signal.SIGTERM)
        else:
            signal.pidfd_send_signal(pinned, signal.SIGTERM)
        return True
    except ProcessLookupError:
        return False
    finally:
        if pinned is not None:
            os.close(pinned)


def resubmit_run(run: RunDir, failed_only: bool, executor: str | None = None, progress=None):
    """Launch again the run's own sweep copy, for its failed points only or for every point without a result;
    points still pending or running are left alone."""
    from sfhpc.launch import launch
    from sfhpc.sweep import expand_file

    manifest = run.read_manifest()
    with run.exclusive("resubmit"):
        # The run's copy of its sweep: relative job and profile paths in it are the original file's; its size was
        # accepted at launch (perhaps with --max-points), and its points are the manifest's.
        plan = expand_file(run.path / "sweep.yaml", base_dir=Path(manifest["sweep_file"]).parent,
                           max_points=sys.maxsize)
        only = {(s.stage, s.point) for s in run_status(run) if s.state == "failed"} if failed_only else None
        return launch(plan, executor=executor or manifest.get("executor"), output=run.path, only=only,
                      progress=progress)
