"""The run folder: manifest, one folder per point, and the record of every submission.

    runs/<name>/
      manifest.json            resolved sweep, points per stage, code version (written by `sweep launch`)
      sweep.yaml               the sweep file as launched
      jobs.jsonl               one line per submission: stage, point, executor, job id, log folder, time
      .lock                    held by the one launch, resubmit or cancel at work here; says who it is
      logs/                    submitit's stdout/stderr and pickles, per job
      <stage>/<point_id>/      config.yaml, result.h5, checkpoint, error.txt (traceback of a failed attempt)
        .replaced/             what a rerun moved out of its way, until its replacement is on its way
"""

from __future__ import annotations

import fcntl
import functools
import json
import os
import shlex
import signal
import sys
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sfhpc.errors import RunError
from sfhpc.results import RESULT_NAME, ResultIndex, atomic_write, now_iso

MANIFEST_NAME = "manifest.json"
ERROR_NAME = "error.txt"
CHECKPOINT_NAME = "checkpoint.pt"  # a stage's resumable state, beside its result
MODEL_NAME = "model.pt"  # a finished train or predictor point's weights, beside its result
LOCK_NAME = ".lock"
REPLACED_DIR = ".replaced"


@dataclass(frozen=True)
class JobRecord:
    stage: str
    point: str
    executor: str
    job_id: str | None  # None: queued by a local launcher, not started yet
    log_dir: str
    submitted: str
    launcher_pid: int
    blocked_by: str | None = None  # local runs: the input ("stage/point") without a result that kept it from running
    # `process_identity` of the local job's process and of the launcher: a PID alone proves nothing once the process
    # has ended and the PID is reused. None in records written before they were kept: such a process is never
    # signalled nor counted as running.
    job_process: str | None = None
    launcher_process: str | None = None
    # SLURM: what this submission changed in its stage's resources for this point (sfhpc.retry.Override: mem_gb,
    # timeout_min, exclude), and why (`resubmit --failed` right-sizing a point that ran out of memory or time, or
    # lost its node). Later submissions of the point keep the changes.
    resources: dict[str, Any] | None = None
    retry: str | None = None


def process_identity(pid: int) -> str | None:
    """What tells the live process `pid` from every other process that had or will have its PID: the boot it runs
    in and its start time (clock ticks after boot, field 22 of /proc/PID/stat). None when no such process lives
    (ended, a zombie, or no /proc to ask)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()  # the name may hold ")" or spaces
    except (OSError, IndexError):
        return None
    if fields[0] in ("Z", "X"):  # exited, not yet reaped by its parent
        return None
    return f"{_boot_id()}:{fields[19]}"


@functools.cache
def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


# (resolved run folder, thread) of the locks this process holds: a resubmit holds its lock while it launches.
_HELD: set[tuple[Path, int]] = set()


class RunDir:
    def __init__(self, path: Path | str):
        self.path = Path(path)

    @classmethod
    def find(cls, name_or_path: str | Path) -> RunDir:
        """A run folder by path, or by sweep name under ./runs."""
        for candidate in (Path(name_or_path), Path("runs") / str(name_or_path)):
            if (candidate / MANIFEST_NAME).exists():
                return cls(candidate)
        raise RunError(f"no run folder at {name_or_path!s} (no {MANIFEST_NAME} there or under runs/); "
                       "create one with `sfhpc sweep launch SWEEP.yaml`")

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST_NAME

    @property
    def logs(self) -> Path:
        return self.path / "logs"

    def exists(self) -> bool:
        return self.manifest_path.exists()

    def read_manifest(self) -> dict[str, Any]:
        """The run's manifest; a RunError with one line when it cannot be read or is not sfhpc's."""
        try:
            manifest = json.loads(self.manifest_path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
            raise RunError(f"cannot read {self.manifest_path}: {err}") from None
        problem = manifest_problem(manifest)
        if problem:
            raise RunError(f"{self.manifest_path} is not an sfhpc run manifest ({problem}); give a run folder made "
                           "by `sfhpc sweep launch`, or launch again with --output in a new folder")
        return manifest

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        atomic_write(self.manifest_path, lambda tmp: tmp.write_text(json.dumps(manifest, indent=1)))

    def point_dir(self, stage: str, point_id: str) -> Path:
        return self.path / stage / point_id

    def result_path(self, stage: str, point_id: str) -> Path:
        return self.point_dir(stage, point_id) / RESULT_NAME

    def result_index(self) -> ResultIndex:
        return ResultIndex(self.path / ".result-index.json")

    def error_path(self, stage: str, point_id: str) -> Path:
        return self.point_dir(stage, point_id) / ERROR_NAME

    @contextmanager
    def exclusive(self, action: str) -> Iterator[None]:
        """Hold the run folder's advisory lock (flock on RUN/.lock, made first, with the folder if need be) for a
        launch, resubmit or cancel: one at a time per run folder. Another holder makes it a RunError at once, which
        names that holder. Reentrant within one thread (a resubmit launches). Readers (status, aggregate) never
        take it. The kernel drops the lock when its holder ends, however it ends: a lock is never stale."""
        key = (self.path.resolve(), threading.get_ident())
        if key in _HELD:
            yield
            return
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            lock = open(self.path / LOCK_NAME, "a+")  # "a+": the holder's note stays until we hold the lock
        except OSError as err:
            raise RunError(f"cannot use {self.path} as a run folder: {err.strerror or err}") from None
        with lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                lock.seek(0)
                raise RunLocked(self.path, _lock_note(lock.read())) from None
            lock.truncate(0)
            lock.write(json.dumps({"action": action, "pid": os.getpid(), "process": process_identity(os.getpid()),
                                   "started": now_iso(), "command": shlex.join(sys.argv)}) + "\n")
            lock.flush()
            _HELD.add(key)
            try:
                yield
            finally:
                _HELD.discard(key)

    # -------------------------------------------------------------------------------- job records
    @property
    def jobs_path(self) -> Path:
        return self.path / "jobs.jsonl"

    def record_jobs(self, records: list[JobRecord]) -> None:
        """Append submissions; one write per batch keeps the file consistent under concurrent readers."""
        text = "".join(json.dumps(record.__dict__) + "\n" for record in records)
        with open(self.jobs_path, "a") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    def all_jobs(self) -> list[JobRecord]:
        """Every submission ever recorded for this run, oldest first."""
        if not self.jobs_path.exists():
            return []
        records = []
        for line in self.jobs_path.read_text().splitlines():
            try:
                records.append(JobRecord(**json.loads(line)))
            except (json.JSONDecodeError, TypeError):
                continue  # a line cut by a crash mid-write: older records stay usable
        return records

    def latest_jobs(self) -> dict[tuple[str, str], JobRecord]:
        """The last submission of each (stage, point)."""
        return {(record.stage, record.point): record for record in self.all_jobs()}


class RunLocked(RunError):
    """Another launch, resubmit or cancel holds the run folder's lock; `holder` is its note (action, pid, process,
    started, command), as far as it could be read."""

    def __init__(self, path: Path, holder: dict[str, Any]):
        self.holder = holder
        who = (f"{holder.get('action', 'process')} (pid {holder.get('pid', '?')}, started {holder.get('started', '?')}"
               f": {holder.get('command', '?')})")
        super().__init__(f"another sfhpc {who} holds {path}; wait for it to end (or stop it) and try again. "
                         "status and aggregate work meanwhile." + (" `sfhpc cancel` stops a local launch."
                                                                   if holder.get("action") in STOPPABLE_ACTIONS
                                                                   else ""))


def _lock_note(text: str) -> dict[str, Any]:
    """The holder's note in a lock file; {} when it has not written one yet (or it is not ours)."""
    try:
        note = json.loads(text)
    except ValueError:
        return {}
    return note if isinstance(note, dict) else {}


# Lock holders that `sfhpc cancel` may stop: launches that run their points on this machine until they end.
STOPPABLE_ACTIONS = ("local launch", "local resubmit", "debug launch", "debug resubmit")


def terminate_process(pid: int, identity: str | None) -> bool:
    """SIGTERM `pid` if, and only if, it is still the very process with this `process_identity` (a PID alone proves
    nothing: it is reused). Where the kernel has pidfds, the process is pinned before it is checked, so that its PID
    cannot pass to another in between. True when it was signalled."""
    try:
        pinned: int | None = os.pidfd_open(pid)
    except ProcessLookupError:
        return False  # it ended on its own meanwhile
    except (AttributeError, OSError):  # no pidfds in this Python or kernel: check, then signal at once
        pinned = None
    try:
        if identity is None or process_identity(pid) != identity:
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


class SetAside:
    """Files a rerun moves out of its way (into their point's `.replaced/` folder: a rename on the same file system,
    so nothing is copied and nothing can half-exist) and deletes only once their replacement is on its way; when it
    is not, they go back where they were, byte for byte."""

    def __init__(self) -> None:
        self.moved: dict[tuple[str, str], list[Path]] = {}  # (stage, point) -> original paths of the files moved

    def move(self, key: tuple[str, str], paths: Iterable[Path]) -> None:
        for path in paths:
            if path.exists():
                _aside(path).parent.mkdir(exist_ok=True)
                os.replace(path, _aside(path))
                self.moved.setdefault(key, []).append(path)

    def discard(self, keys: Iterable[tuple[str, str]]) -> None:
        """Delete these points' files: their replacements are on their way (submitted) or written."""
        for key in keys:
            for path in self.moved.pop(key, []):
                _aside(path).unlink(missing_ok=True)
                _remove_if_empty(_aside(path).parent)

    def restore(self, keys: Iterable[tuple[str, str]] | None = None) -> list[Path]:
        """Put back the files of these points (default: all still set aside) whose place is still empty, and
        return their paths; a file whose place now holds a newer one has its replacement, and goes."""
        restored = []
        for key in list(self.moved if keys is None else keys):
            for path in self.moved.pop(key, []):
                if path.exists():
                    _aside(path).unlink(missing_ok=True)
                else:
                    os.replace(_aside(path), path)
                    restored.append(path)
                _remove_if_empty(_aside(path).parent)
        return restored


def _aside(path: Path) -> Path:
    return path.parent / REPLACED_DIR / path.name


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass  # not empty: a file set aside by a launch that was killed before it could put it back


def manifest_problem(manifest: Any) -> str | None:
    """Why `manifest` is not the shape sfhpc writes (what `manifest_points` and the readers need), or None."""
    if not isinstance(manifest, dict) or "schema_version" not in manifest:
        return "no schema_version"
    stages = manifest.get("plan", {}).get("stages") if isinstance(manifest.get("plan"), dict) else None
    if not isinstance(stages, list):
        return "no plan.stages"
    for i, stage in enumerate(stages):
        if not (isinstance(stage, dict) and _is_name(stage.get("name")) and isinstance(stage.get("axes"), list)
                and isinstance(stage.get("points"), list)):
            return f"plan.stages[{i}] lacks a name, axes or points"
        for point in stage["points"]:
            # (labels came later than the rest: a manifest without them is an older sfhpc's, and readable)
            if not (isinstance(point, dict) and _is_name(point.get("id")) and isinstance(point.get("params"), dict)
                    and isinstance(point.get("labels", {}), dict) and isinstance(point.get("upstream"), list)):
                return f"a point of stage {stage['name']} lacks an id, params or upstream"
    return None


def _is_name(value: Any) -> bool:
    """A stage name or point id that names one folder inside the run folder."""
    return isinstance(value, str) and value not in ("", ".", "..") and "/" not in value and "\0" not in value


def manifest_points(manifest: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(stage name, point dict) for every point, in launch order."""
    return [(stage["name"], point) for stage in manifest["plan"]["stages"] for point in stage["points"]]


def tail(path: Path, lines: int = 12) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").rstrip().splitlines()[-lines:])
    except OSError:
        return ""
