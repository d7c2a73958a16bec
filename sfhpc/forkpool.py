"""The local executor's processes: every point runs in its own process, forked from one warm parent that has
imported torch and the stage modules once.

A fresh Python costs a point about 4 CPU-seconds of imports (torch, torchvision, scipy, h5py) before any work;
forked, a point costs 3.3 CPU-seconds less (`benchmarks/local_start.py`), close to 3 CPU-minutes over the
quickstart's 52 points. A fork keeps what a process per point is for: a crash, an abort or a leak loses only its
own point. The parent never runs a torch operation, so no thread pool is inherited across the fork.

The parent (``python -m sfhpc.forkpool ENTRY...``) talks JSON lines over its stdin and stdout:

    launcher -> parent   {"run": {PointJob's fields}, "timeout_s": N}
    parent -> launcher   {"started": pid, "process": identity}   then, once it has exited,   {"ended": pid, "code": N}

The identity (`sfhpc.rundir.process_identity`) is read by the parent, which cannot have reaped the child yet: it is
the child's own, never a later process's that got its PID.

A child writes its output where submitit's local jobs do (``logs/<pid>/<pid>_0_log.out`` and ``.err``), so
``sfhpc status`` shows the last lines of a failed point's log either way. Points of several tasks (local DDP)
still run under submitit's LocalExecutor, which starts and wires their tasks.

This module imports neither torch nor a stage on the launcher's side; the parent imports them in its own process.
"""

from __future__ import annotations

import importlib
import json
import os
import queue
import selectors
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, NoReturn

from sfhpc.errors import RunError
from sfhpc.job import PointJob
from sfhpc.rundir import RunDir, process_identity

POOL_LOG = "forkpool.err"  # the parent's own stderr, under the run's logs/
KILL_GRACE_S = 30  # after SIGTERM at a point's time limit, SIGKILL this much later


# ----------------------------------------------------------------------------------- launcher side
class ForkedJob:
    """The launcher's handle on one forked point; enough of submitit's Job for the local scheduler."""

    def __init__(self, pool: ForkPool, pid: int, process: str | None):
        self.pool, self.job_id, self.process = pool, str(pid), process

    def done(self) -> bool:
        return int(self.job_id) in self.pool.ended or not self.pool.alive()

    def result(self) -> None:
        """The outcome is the point's result file, read by the caller; nothing is returned here."""
        return None


class ForkPool:
    """Starts the warm parent for these stage modules; `submit` forks one point from it."""

    def __init__(self, logs: Path, entries: list[str], env: dict[str, str] | None = None):
        """`env`: the parent's environment (default the launcher's), e.g. one that imports sfhpc from a run's copy
        of the code (sfhpc.snapshot)."""
        logs.mkdir(parents=True, exist_ok=True)
        self.log = logs / POOL_LOG
        with open(self.log, "ab") as stderr:
            self.process = subprocess.Popen([sys.executable, "-m", "sfhpc.forkpool", *entries],
                                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr,
                                            text=True, bufsize=1, env=env)
        assert self.process.stdin is not None and self.process.stdout is not None  # both are pipes
        self.requests, self.events = self.process.stdin, self.process.stdout
        self.ended: dict[int, int] = {}
        self._started: queue.Queue[tuple[int, str | None] | None] = queue.Queue()
        threading.Thread(target=self._read_events, daemon=True).start()

    def submit(self, job: Any, timeout_min: float) -> ForkedJob:
        """Fork `job` (a PointJob) in the warm parent; returns once the child exists."""
        message = {"run": {"run_dir": job.run_dir, "stage": job.stage, "entry": job.entry,
                           "point_id": job.point_id, "config": job.config},
                   "timeout_s": 60 * timeout_min}
        try:
            self.requests.write(json.dumps(message) + "\n")
            self.requests.flush()
        except (BrokenPipeError, OSError):
            self._stopped()
        started = self._started.get()
        if started is None:
            self._stopped()
        return ForkedJob(self, *started)

    def alive(self) -> bool:
        return self.process.poll() is None

    def close(self) -> None:
        """End the parent once its children have ended (closing its input tells it so)."""
        if not self.requests.closed:
            self.requests.close()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()

    def _read_events(self) -> None:
        for line in self.events:
            event = json.loads(line)
            if "started" in event:
                self._started.put((event["started"], event["process"]))
            elif "ended" in event:
                self.ended[event["ended"]] = event["code"]
        self._started.put(None)  # the parent is gone: nothing more will start

    def _stopped(self) -> NoReturn:
        raise RunError(f"the local executor's process pool stopped unexpectedly; its log is {self.log}")


# ------------------------------------------------------------------------------------- parent side
def serve(entries: list[str]) -> None:
    """Import, then fork a child per request until the launcher closes our input and every child has ended."""
    for entry in ["sfhpc.job", *entries]:
        importlib.import_module(entry)
    deadlines: dict[int, tuple[float, str]] = {}  # pid -> (time limit, its stderr log)
    killed: dict[int, float] = {}  # pid -> when SIGTERM was sent
    selector = selectors.DefaultSelector()
    selector.register(sys.stdin, selectors.EVENT_READ)
    pending, open_input = "", True
    while open_input or deadlines:
        _reap(deadlines, killed)
        _enforce_time_limits(deadlines, killed)
        if not open_input:
            time.sleep(0.1)
            continue
        if not selector.select(timeout=0.1):
            continue
        chunk = os.read(sys.stdin.fileno(), 1 << 16).decode()
        if not chunk:
            open_input = False
            continue
        pending += chunk
        while "\n" in pending:
            line, pending = pending.split("\n", 1)
            request = json.loads(line)
            pid = os.fork()
            if pid == 0:
                _run_child(request["run"])  # never returns
            log = _log_paths(request["run"]["run_dir"], pid)[1]
            deadlines[pid] = (time.monotonic() + request["timeout_s"], str(log))
            _send({"started": pid, "process": process_identity(pid)})


def _reap(deadlines: dict[int, tuple[float, str]], killed: dict[int, float]) -> None:
    while deadlines:
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid == 0:
            return
        deadlines.pop(pid, None)
        killed.pop(pid, None)
        _send({"ended": pid, "code": os.waitstatus_to_exitcode(status)})


def _enforce_time_limits(deadlines: dict[int, tuple[float, str]], killed: dict[int, float]) -> None:
    now = time.monotonic()
    for pid, (deadline, log) in deadlines.items():
        if now > deadline and pid not in killed:
            with open(log, "a") as f:
                f.write("sfhpc: the point ran past its stage's timeout_min and was stopped (SIGTERM)\n")
            os.kill(pid, signal.SIGTERM)
            killed[pid] = now
        elif pid in killed and now > killed[pid] + KILL_GRACE_S:
            os.kill(pid, signal.SIGKILL)


def _send(event: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def _log_paths(run_dir: str, pid: int) -> tuple[Path, Path]:
    """The point's stdout and stderr files, named as submitit names a local job's (`sfhpc status` reads them)."""
    folder = RunDir(run_dir).logs / str(pid)
    return folder / f"{pid}_0_log.out", folder / f"{pid}_0_log.err"


def _run_child(fields: dict[str, Any]) -> NoReturn:
    """In the forked child: output to the point's log files, run the point, exit without the parent's cleanup."""
    code = 1
    try:
        out, err = _log_paths(fields["run_dir"], os.getpid())
        out.parent.mkdir(parents=True, exist_ok=True)
        for fd, path, mode in ((1, out, "w"), (2, err, "w"), (0, os.devnull, "r")):
            with open(path, mode) as f:
                os.dup2(f.fileno(), fd)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        PointJob(**fields)()
        code = 0
    except BaseException:  # noqa: BLE001 - the child must exit whatever happened; the traceback goes to its log
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


if __name__ == "__main__":
    serve(sys.argv[1:])
