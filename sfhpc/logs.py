"""Where a point's output is: the stdout and stderr files of its last job (submitit's names, under the run's logs/,
one pair per task) and the error file of a failed attempt, with their last lines.

Login-node code: reads files only (never the whole of a large log), asks no scheduler.
"""

from __future__ import annotations

import difflib
import glob
import os
from dataclasses import dataclass
from pathlib import Path

from sfhpc.errors import RunError
from sfhpc.rundir import JobRecord, RunDir, manifest_points

MOST_SUGGESTIONS = 8
TAIL_BYTES = 256 * 1024  # a tail reads at most this much of the end of a file, however large the file


@dataclass(frozen=True)
class LogFile:
    kind: str  # stdout | stderr | error
    path: Path
    task: int | None = None  # the job's task (rank), for stdout and stderr


@dataclass(frozen=True)
class PointLogs:
    stage: str
    point: str
    job: JobRecord | None  # its last submission; None when it was never submitted
    files: list[LogFile]  # stdout and stderr per task, then the error file when there is one

    @property
    def key(self) -> str:
        return f"{self.stage}/{self.point}"


def find_point(run: RunDir, text: str) -> tuple[str, str]:
    """The (stage, point id) that `text` names, as `sfhpc status` prints it (`stage/point`) or as a point id alone
    when one stage has it. A RunError otherwise, which lists the points with close names."""
    keys = [(stage, point["id"]) for stage, point in manifest_points(run.read_manifest())]
    if "/" in text:
        stage, point = text.split("/", 1)
        if (stage, point) in keys:
            return stage, point
    matches = [key for key in keys if key[1] == text]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise RunError(f"point {text!r} is in several stages of {run.path}; give one of: "
                       + ", ".join(f"{stage}/{point}" for stage, point in matches))
    raise RunError(f"no point {text!r} in {run.path}" + _suggestions(text, [f"{s}/{p}" for s, p in keys]))


def _suggestions(text: str, names: list[str]) -> str:
    """`; did you mean: ...` with the names that contain `text` or look like it, or what `sfhpc status` lists."""
    bare = text.rsplit("/", 1)[-1]
    close = [name for name in names if bare and bare in name]
    close += [name for name in difflib.get_close_matches(text, names, n=MOST_SUGGESTIONS, cutoff=0.6)
              if name not in close]
    if not close:
        return " (`sfhpc status RUN --all` lists its points)"
    more = f" and {len(close) - MOST_SUGGESTIONS} more" if len(close) > MOST_SUGGESTIONS else ""
    return "; close: " + ", ".join(close[:MOST_SUGGESTIONS]) + more


def point_logs(run: RunDir, stage: str, point: str) -> PointLogs:
    """The log files of the point's last job (those its tasks wrote; task 0's where none is written yet), and its
    error file when it has one."""
    job = run.latest_jobs().get((stage, point))
    files = job_log_files(run, job) if job is not None and job.job_id else []
    error = run.error_path(stage, point)
    if error.exists():
        files.append(LogFile("error", error))
    return PointLogs(stage, point, job, files)


def job_log_files(run: RunDir, job: JobRecord) -> list[LogFile]:
    """submitit's `<job>_<task>_log.out` and `.err` under the job's log folder, in task order."""
    folder = run.path / job.log_dir
    prefix = f"{job.job_id}_"
    tasks = sorted({int(task) for name in glob.glob(glob.escape(prefix) + "*_log.*", root_dir=folder)
                    if (task := name[len(prefix):].split("_", 1)[0]).isdigit()}) or [0]
    return [LogFile(kind, folder / f"{job.job_id}_{task}_log.{suffix}", task)
            for task in tasks for kind, suffix in (("stdout", "out"), ("stderr", "err"))]


def last_lines(path: Path, count: int, most_bytes: int = TAIL_BYTES) -> list[str]:
    """The last `count` lines of a text file, read from at most its last `most_bytes` bytes. A line rewritten in
    place with carriage returns (a progress bar) is what a terminal would show: its last version."""
    if count <= 0:
        return []
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        f.seek(max(0, size - most_bytes))
        data = f.read()
    lines = data.decode(errors="replace").rstrip("\r\n").split("\n")
    if size > most_bytes:
        lines = lines[1:]  # the first may be the end of a longer line
    return [line.rstrip("\r").rsplit("\r", 1)[-1] for line in lines[-count:]] if data.strip() else []
