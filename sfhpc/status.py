"""Where every point of a run is. Result files are the truth; the executor's view comes second.

Login-node code: no torch; h5py only to check result files.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from sfhpc.results import ResultIndex
from sfhpc.rundir import JobRecord, RunDir, manifest_points, tail

STATES = ("done", "failed", "running", "pending", "not submitted")


@dataclass(frozen=True)
class PointStatus:
    stage: str
    point: str
    state: str
    reason: str = ""  # one line: why failed, or what the executor says
    job_id: str | None = None
    detail: str = ""  # last lines of the error or log of a failed point
    result: str = "missing"  # the result file: ok | missing | corrupt

    def to_json(self) -> dict:
        return asdict(self)


def run_status(run: RunDir) -> list[PointStatus]:
    """The state of every point of the run, in manifest order."""
    manifest = run.read_manifest()
    jobs = run.latest_jobs()
    index = run.result_index()
    statuses = [point_status(run, stage, point["id"], jobs.get((stage, point["id"])), index)
                for stage, point in manifest_points(manifest)]
    index.save()
    return statuses


def point_status(run: RunDir, stage: str, point_id: str, job: JobRecord | None, index: ResultIndex) -> PointStatus:
    result = index.check(run.result_path(stage, point_id), point_id)
    job_id = job.job_id if job else None
    if result.state == "ok":
        return PointStatus(stage, point_id, "done", job_id=job_id, result="ok")
    if result.state == "corrupt":
        return PointStatus(stage, point_id, "failed", f"corrupt result: {result.reason}", job_id, result="corrupt")
    error = run.error_path(stage, point_id)
    if error.exists():
        summary = error.read_text(errors="replace").split("\n", 1)[0]
        return PointStatus(stage, point_id, "failed", summary, job_id, tail(error))
    if job is None:
        return PointStatus(stage, point_id, "not submitted")
    if job_is_alive(job):
        return PointStatus(stage, point_id, "running" if job.job_id else "pending", job_id=job_id)
    if job.job_id is None:
        return PointStatus(stage, point_id, "not submitted", "its launcher stopped before starting it")
    detail = tail(_stderr_log(job))
    return PointStatus(stage, point_id, "failed", "job ended without a result (killed or timed out?)",
                       job_id, detail)


def job_is_alive(job: JobRecord) -> bool:
    """Local and debug jobs: is the process (or the launcher still queueing it) alive?"""
    pid = int(job.job_id) if job.job_id and job.executor == "local" else job.launcher_pid
    return _pid_alive(pid)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    try:  # an exited child that its parent has not reaped yet is a zombie: not running
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def _stderr_log(job: JobRecord) -> Path:
    return Path(job.log_dir) / f"{job.job_id}_0_log.err"


def count_by_stage(statuses: list[PointStatus]) -> dict[str, Counter]:
    counts: dict[str, Counter] = {}
    for status in statuses:
        counts.setdefault(status.stage, Counter())[status.state] += 1
    return counts
