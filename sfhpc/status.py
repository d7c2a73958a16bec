"""Where every point of a run is. Result files are the truth; the executor's view comes second.

Login-node code: no torch; h5py only for result files not seen before; at most one sacct (and one squeue) call
per refresh, for the jobs whose points have neither a result nor an error yet.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sfhpc.results import RESULT_NAME, ResultCheck, ResultIndex
from sfhpc.rundir import ERROR_NAME, MANIFEST_NAME, JobRecord, RunDir, manifest_points, process_identity, tail

if TYPE_CHECKING:
    from sfhpc.slurm import SlurmState

STATES = ("done", "failed", "running", "pending", "not submitted")
# `file_counts`' states: without the scheduler, a submitted point with neither result nor error is only "active"
FILE_STATES = ("done", "failed", "active", "not submitted")

# What a job killed for its memory leaves in its stderr when SLURM calls the job itself FAILED: a step killed in its
# memory cgroup (submitit runs the point as an srun step: the step ends OUT_OF_MEMORY, the job FAILED), or the
# accounting plugin's kill (JobAcctGatherParams=OverMemoryKill, clusters without memory cgroups).
MEMORY_KILL_MARKERS = ("oom-kill event", ": Out Of Memory", "Exceeded job memory limit", "exceeded memory limit")


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


def run_status(run: RunDir, index: ResultIndex | None = None,
               progress: Callable[[int, int], None] | None = None) -> list[PointStatus]:
    """The state of every point of the run, in manifest order. `index`: the run's result index, for a caller that
    wants the metrics it reads on the way (`ResultIndex.metrics`); `progress(opened, to_open)`: called as result
    files not seen before are opened (`ResultIndex.check_many`)."""
    manifest = run.read_manifest()
    jobs = run.latest_jobs()
    index = index or run.result_index()
    keys = [(stage, point["id"]) for stage, point in manifest_points(manifest)]
    folders = {key: run.point_dir(*key) for key in keys}  # built once: 10,000 points make pathlib count
    checks = index.check_many([(folders[key] / RESULT_NAME, key[1]) for key in keys], progress=progress)
    results = dict(zip(keys, checks, strict=True))
    errors = _error_files([key for key in keys if results[key].state == "missing"], folders)
    undecided = [jobs[k] for k in keys if k in jobs and results[k].state == "missing" and k not in errors]
    scheduler = scheduler_states(run, undecided)
    # A job that ended after its result was looked for, and before the scheduler was asked, left its result (or
    # its error) in between: look again, or a point that just finished would read "COMPLETED but no result".
    ended = [(r.stage, r.point) for r in undecided if r.job_id in scheduler and scheduler[r.job_id].terminal]
    for key, check in zip(ended, index.check_many([(folders[key] / RESULT_NAME, key[1]) for key in ended]),
                          strict=True):
        results[key] = check
    errors.update(_error_files([key for key in ended if results[key].state == "missing"], folders))
    index.save()
    return [point_status(run, *key, jobs.get(key), results[key], scheduler, errors.get(key)) for key in keys]


def _error_files(keys: list[tuple[str, str]], folders: dict[tuple[str, str], Path]) -> dict[tuple[str, str], Path]:
    """The error file of each of these points that has one."""
    paths = {key: folders[key] / ERROR_NAME for key in keys}
    return {key: path for key, path in paths.items() if path.exists()}


def scheduler_states(run: RunDir, records: list[JobRecord]) -> dict[str, SlurmState]:
    """SLURM's view of these records' jobs (one sacct call at most), {} when none is a SLURM job."""
    ids = [r.job_id for r in records if r.executor == "slurm" and r.job_id]
    if not ids:
        return {}
    from sfhpc.slurm import StateCache, query_states

    states, _ = query_states(ids, StateCache(run.path / ".slurm-states.json"))
    return states


def point_status(run: RunDir, stage: str, point_id: str, job: JobRecord | None, result: ResultCheck,
                 scheduler: dict[str, SlurmState], error: Path | None) -> PointStatus:
    """`error`: the point's error file, when it has one."""
    job_id = job.job_id if job else None
    if result.state == "ok":
        return PointStatus(stage, point_id, "done", job_id=job_id, result="ok")
    if result.state == "corrupt":
        return PointStatus(stage, point_id, "failed", f"corrupt result: {result.reason}", job_id, result="corrupt")
    if error is not None:
        summary = error.read_text(errors="replace").split("\n", 1)[0]
        return PointStatus(stage, point_id, "failed", summary, job_id, tail(error))
    if job is None:
        return PointStatus(stage, point_id, "not submitted")
    if job.blocked_by:
        return PointStatus(stage, point_id, "not submitted", f"not run: its input {job.blocked_by} has no result")
    if job.executor == "slurm":
        return _slurm_point_status(run, stage, point_id, job, scheduler.get(job_id) if job_id else None)
    if job_is_alive(job):
        return PointStatus(stage, point_id, "running" if job.job_id else "pending", job_id=job_id)
    if job.job_id is None:
        return PointStatus(stage, point_id, "not submitted", "its launcher stopped before starting it")
    return PointStatus(stage, point_id, "failed", "job ended without a result (killed or timed out?)",
                       job_id, tail(stderr_log(run, job)))


def _slurm_point_status(run: RunDir, stage: str, point_id: str, job: JobRecord, state: SlurmState | None
                        ) -> PointStatus:
    from sfhpc.slurm import PENDING_STATES, RUNNING_STATES

    if state is None:
        return PointStatus(stage, point_id, "pending", "not yet in sacct or squeue", job.job_id)
    if state.state in PENDING_STATES:
        return PointStatus(stage, point_id, "pending", state.describe(), job.job_id)
    if state.state in RUNNING_STATES:
        return PointStatus(stage, point_id, "running", state.describe(), job.job_id)
    reason = state.describe()
    if state.state == "COMPLETED":
        reason = "SLURM says COMPLETED but the job left no result"
    cause = failure_cause(run, job, state)
    if cause != state.state:
        reason = f"{cause} ({reason})"
    return PointStatus(stage, point_id, "failed", reason, job.job_id, tail(stderr_log(run, job)))


def failure_cause(run: RunDir, job: JobRecord, state: SlurmState) -> str:
    """SLURM's state of a finished job, except that a FAILED job whose stderr shows it was killed for its memory
    (MEMORY_KILL_MARKERS) is OUT_OF_MEMORY, as SLURM calls it where the whole job is killed."""
    if state.state == "FAILED" and memory_killed(stderr_log(run, job)):
        return "OUT_OF_MEMORY"
    return state.state


def memory_killed(log: Path) -> bool:
    """Whether this job log's end says SLURM killed the job (or a step of it) for its memory."""
    try:
        with open(log, "rb") as f:
            f.seek(max(0, f.seek(0, 2) - 65536))
            text = f.read().decode(errors="replace")
    except OSError:
        return False
    return any(marker in text for marker in MEMORY_KILL_MARKERS)


def job_is_alive(job: JobRecord, scheduler: dict[str, SlurmState] | None = None) -> bool:
    """Could this job still produce its point's result? Local jobs: is the very process recorded (or the launcher
    still queueing it) alive; a PID now held by another process is not. SLURM jobs: is the job known and not
    finished."""
    if job.executor == "slurm":
        state = (scheduler or {}).get(job.job_id) if job.job_id else None
        return state is not None and not state.terminal
    if job.blocked_by:
        return False
    if job.job_id and job.executor == "local":
        return _is_recorded_process(int(job.job_id), job.job_process)
    return _is_recorded_process(job.launcher_pid, job.launcher_process)


def _is_recorded_process(pid: int, identity: str | None) -> bool:
    """Is `pid` the live process recorded with this `process_identity`? Never for a record without one."""
    return identity is not None and process_identity(pid) == identity


def active_points(run: RunDir, keys: list[tuple[str, str]]) -> set[tuple[str, str]]:
    """Those of these (stage, point) keys whose last submission may still deliver: never submitted twice."""
    jobs = run.latest_jobs()
    # A point whose attempt left an error is over, even while its job is still exiting.
    records = [jobs[key] for key in keys if key in jobs and not run.error_path(*key).exists()]
    scheduler = scheduler_states(run, records)
    return {(r.stage, r.point) for r in records if job_is_alive(r, scheduler)}


def stderr_log(run: RunDir, job: JobRecord) -> Path:
    """submitit's stderr file of the job's first task (log_dir is relative to the run folder)."""
    return run.path / job.log_dir / f"{job.job_id}_0_log.err"


def count_by_stage(statuses: list[PointStatus]) -> dict[str, Counter]:
    counts: dict[str, Counter] = {}
    for status in statuses:
        counts.setdefault(status.stage, Counter())[status.state] += 1
    return counts


def file_counts(run: RunDir, progress: Callable[[int, int], None] | None = None) -> dict[str, Counter]:
    """Per stage, how many points are in each of FILE_STATES, from the run folder's files alone: no scheduler is
    asked (a submitted point with neither result nor error file is "active": `sfhpc status` asks SLURM whether it is
    pending, running or gone), no file's contents but results are read, and nothing is written: the result index is
    used, not updated, so result files it does not know yet are opened on every call (`progress(opened, to_open)`
    as they are)."""
    manifest = run.read_manifest()
    jobs = run.latest_jobs()
    index = run.result_index()
    keys = [(stage, point["id"]) for stage, point in manifest_points(manifest)]
    folders = {key: run.point_dir(*key) for key in keys}
    checks = index.check_many([(folders[key] / RESULT_NAME, key[1]) for key in keys], progress=progress)
    errors = _error_files([key for key, check in zip(keys, checks, strict=True) if check.state == "missing"], folders)
    counts: dict[str, Counter] = {}
    for key, check in zip(keys, checks, strict=True):
        counts.setdefault(key[0], Counter())[_file_state(jobs.get(key), check, key in errors)] += 1
    return counts


def _file_state(job: JobRecord | None, result: ResultCheck, has_error: bool) -> str:
    """A point's state as `point_status` decides it, without the scheduler and without reading an error or a log."""
    if result.state == "ok":
        return "done"
    if result.state == "corrupt" or has_error:
        return "failed"
    if job is None or job.blocked_by:
        return "not submitted"
    if job.executor == "slurm" or job_is_alive(job):
        return "active"
    return "failed" if job.job_id else "not submitted"  # ended without a result; or its launcher stopped first


def run_folders(folder: Path) -> list[Path]:
    """`folder` itself when it is a run folder, else its sub-folders that hold a manifest (a run's or not), by name."""
    if (folder / MANIFEST_NAME).exists():
        return [folder]
    return sorted(child for child in folder.iterdir() if (child / MANIFEST_NAME).exists())
