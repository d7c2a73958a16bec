"""Acting on an existing run: cancel its jobs, resubmit its failed or missing points."""

from __future__ import annotations

import os
import signal

from sfhpc.rundir import RunDir
from sfhpc.status import job_is_alive, run_status, scheduler_states


def cancel_run(run: RunDir, stage: str | None = None) -> list[str]:
    """Cancel the live jobs of this run (optionally of one stage), found from its own job records; returns
    the job ids cancelled. Jobs of other runs and users are never touched."""
    records = [r for r in run.latest_jobs().values() if stage is None or r.stage == stage]
    scheduler = scheduler_states(run, records)
    live = [r for r in records if r.job_id and job_is_alive(r, scheduler)]
    slurm_ids = [r.job_id for r in live if r.executor == "slurm"]
    if slurm_ids:
        from sfhpc.slurm import cancel

        cancel(slurm_ids)
    for record in live:
        if record.executor == "local":
            try:
                os.kill(int(record.job_id), signal.SIGTERM)
            except ProcessLookupError:
                pass  # it ended on its own meanwhile
    return [r.job_id for r in live]


def resubmit_run(run: RunDir, failed_only: bool, executor: str | None = None, progress=None):
    """Launch again the run's own sweep copy, for its failed points only or for every point without a result;
    points still pending or running are left alone."""
    from sfhpc.launch import launch
    from sfhpc.sweep import expand_file

    manifest = run.read_manifest()
    plan = expand_file(run.path / "sweep.yaml")
    only = {(s.stage, s.point) for s in run_status(run) if s.state == "failed"} if failed_only else None
    return launch(plan, executor=executor or manifest.get("executor"), output=run.path, only=only,
                  progress=progress)
