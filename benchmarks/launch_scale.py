"""Launching and watching a 10,000-point sweep on the SLURM test cluster, beside a hydra-submitit-launcher multirun.

Goals (issue 6): `sfhpc sweep launch` of a 10,000-point train sweep returns in < 10 s after one sbatch call per array
chunk (the test cluster's MaxArraySize=1001 makes 10 chunks); `sfhpc status RUN` on that run answers in < 1 s after
one sacct call.

Method. The sweep's tasks are held (`cluster: {additional: {hold: true}}`): queued, never run, so the job body costs
nothing and only the login-node command is measured; they are cancelled afterwards. Each command runs as a fresh
process, as a user types it. Shims on PATH log every call of sbatch, sacct, squeue and scontrol with its start and
end time: that is how calls are counted. The hydra side runs a grid of the same shape as a hydra multirun
(hydra-core 1.3.8, hydra-submitit-launcher 1.2.0 from benchmarks/.venv; a task function that returns at once; its
jobs held too). Hydra blocks until every job has finished, so its figure is the time from its start until its sbatch
call returned (the sbatch shim's log); the process is then stopped and its jobs cancelled. The ratio is hydra's time
per point, times the sfhpc sweep's points, over sfhpc's time. Hydra's grid is 1,000 points by default, labelled and
extrapolated: its launcher (submitit's map_array) submits the whole multirun as one array, which sbatch refuses
beyond MaxArraySize; a hydra user on this cluster would set hydra.sweeper.max_batch_size=1000, and hydra submits
each batch only after the previous one has finished. Its time is linear in the points (it composes every job's
config before it submits), about 60 ms a point here.

MaxJobCount: SLURM counts every task of a pending array as one job, and the default 10,000 (the test cluster's)
refuses a 10,000-task sweep outright (sbatch retries, then fails). For the sfhpc side the benchmark then raises it,
with MinJobAge=5 so that the cancelled tasks are purged before the limit comes back: it holds testcluster.sh's lock
(so that no `testcluster.sh start` puts the template back meanwhile), restarts slurmctld (MaxJobCount cannot be
reconfigured), and at the end cancels its jobs, waits until they are purged, restores slurm.conf, restarts slurmctld
and checks the cluster, also after an error or Ctrl-C. Other users' jobs survive the restarts (SLURM keeps its
state), but their SLURM commands fail for the few seconds of each restart. A site that runs sweeps of this size has
a MaxJobCount to match.

Run (as root, with the test cluster up; `make bench` creates benchmarks/.venv for the hydra side):
    bash slurm_templates/testcluster.sh start
    .venv/bin/python benchmarks/launch_scale.py [--points 10000] [--hydra-points 1000] [--repeat 3] [--no-hydra]
Without a running test cluster it prints why and exits 0; without benchmarks/.venv it skips the hydra side.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLUSTER_SCRIPT = REPO / "slurm_templates" / "testcluster.sh"
HYDRA_PYTHON = REPO / "benchmarks" / ".venv" / "bin" / "python"
SFHPC = [sys.executable, "-m", "sfhpc.cli"]
COUNTED = ("sbatch", "sacct", "squeue", "scontrol")
SFHPC_SWEEP = f"launchscale{os.getpid()}"
SFHPC_JOBS = f"sfhpc.{SFHPC_SWEEP}.train"  # sfhpc names its arrays sfhpc.<sweep>.<stage>
HYDRA_JOBS = f"hydrascale{os.getpid()}"
GRID = {  # 4 x seeds x 5 x 5 x 10 points: 1,000 per seed
    "band": ["none", "lsf", "human", "lsf+human"],
    "lr": [0.1, 0.05, 0.02, 0.01, 0.005],
    "weight_decay": [0.0001, 0.0002, 0.0005, 0.001, 0.002],
    "width": [8, 12, 16, 24, 32, 48, 64, 96, 128, 192],
}
SWEEP = """\
name: {name}
executor: slurm
cluster:
  profile: testcluster
  additional: {{hold: true}}
data: {{image_size: 128}}
grid:
  band: {band}
  seed: {seeds}
  lr: {lr}
  weight_decay: {weight_decay}
  width: {width}
stages:
  train:
    resources: {{mem_gb: 1, cpus_per_task: 1}}
"""
HYDRA_TASK = """\
import hydra


@hydra.main(version_base=None, config_path=".", config_name="config")
def main(cfg) -> int:
    return cfg.seed


if __name__ == "__main__":
    main()
"""
HYDRA_CONFIG = """\
defaults:
  - override hydra/launcher: submitit_slurm
  - _self_
band: none
seed: 0
lr: 0.1
weight_decay: 0.0001
width: 8
hydra:
  sweep:
    dir: {sweep_dir}
  launcher:
    name: {name}
    partition: debug
    cpus_per_task: 1
    mem_gb: 1
    timeout_min: 60
    additional_parameters: {{hold: true}}
"""


# ----------------------------------------------------------------------------------------- helpers
class Calls:
    """Shims for the SLURM commands: each logs 'name start end exit-code' to one file, then exits as the real one."""

    def __init__(self, folder: Path):
        self.bin, self.log = folder / "bin", folder / "calls.log"
        self.bin.mkdir()
        for name in COUNTED:
            real = shutil.which(name, path=os.environ["PATH"] + ":/usr/sbin:/usr/bin")
            shim = self.bin / name
            shim.write_text(f'#!/bin/sh\nstart=$(date +%s.%N)\n"{real}" "$@"\nrc=$?\n'
                            f'echo "{name} $start $(date +%s.%N) $rc" >> "{self.log}"\nexit $rc\n')
            shim.chmod(0o755)

    def clear(self) -> None:
        self.log.unlink(missing_ok=True)

    def records(self) -> list[tuple[str, float, float, int]]:
        if not self.log.exists():
            return []
        return [(n, float(a), float(b), int(rc)) for n, a, b, rc in (line.split() for line in self.log.open())]

    def count(self, name: str) -> int:
        return sum(1 for record in self.records() if record[0] == name)

    def last_end(self, name: str) -> float | None:
        ends = [end for n, _, end, rc in self.records() if n == name and rc == 0]
        return max(ends) if ends else None


def cluster_env() -> dict[str, str] | None:
    """SLURM_CONF of the running test cluster, or None (with the reason printed) when it is not running."""
    status = subprocess.run(["bash", str(CLUSTER_SCRIPT), "status"], capture_output=True, text=True)
    if status.returncode != 0:
        print("skipped: the SLURM test cluster is not running (start it: bash slurm_templates/testcluster.sh start)")
        print("\n".join("  " + line for line in status.stdout.strip().splitlines()))
        return None
    line = subprocess.run(["bash", str(CLUSTER_SCRIPT), "env"], capture_output=True, text=True).stdout.strip()
    return {"SLURM_CONF": line.partition("=")[2]}


def scontrol_value(key: str) -> str:
    out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, check=True).stdout
    return re.search(rf"^{key}\s*=\s*(\S+)", out, re.M).group(1)


def with_settings(text: str, settings: dict[str, int]) -> str:
    """slurm.conf text with these KEY=VALUE lines replaced (or added)."""
    for key, value in settings.items():
        text, found = re.subn(rf"^{key}=.*$", f"{key}={value}", text, flags=re.M)
        if not found:
            text += f"\n{key}={value}\n"
    return text


def restart_slurmctld(run_dir: Path) -> None:
    """Stop slurmctld (its state survives) and start it again on the current slurm.conf, as testcluster.sh does."""
    pid = int((run_dir / "slurmctld.pid").read_text())
    subprocess.run(["scontrol", "shutdown", "slurmctld"], check=True, capture_output=True)
    wait(lambda: not Path(f"/proc/{pid}").exists(), 60, "slurmctld to stop")
    log = run_dir.parent / "log" / "slurmctld.stdout"
    with open(log, "a") as out:
        subprocess.run([shutil.which("slurmctld", path=os.environ["PATH"] + ":/usr/sbin")], stdin=subprocess.DEVNULL,
                       stdout=out, stderr=out, check=True, start_new_session=True)
    wait(lambda: subprocess.run(["scontrol", "ping"], capture_output=True).returncode == 0, 60, "slurmctld")
    wait(lambda: re.fullmatch(r"(idle|mixed|allocated)\n(idle|mixed|allocated)\n", subprocess.run(
        ["sinfo", "-h", "-N", "-p", "debug", "-o", "%T"], capture_output=True, text=True).stdout) is not None,
         60, "the nodes to register")


def wait(done, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.2)


def purge(names: list[str], forgotten: bool = True) -> None:
    """Cancel our jobs (by job name) and, with `forgotten`, wait until slurmctld has purged them (MinJobAge)."""
    for name in names:
        subprocess.run(["scancel", "--name", name], capture_output=True)
    if not forgotten:
        return

    def gone() -> bool:
        out = subprocess.run(["squeue", "-h", "-t", "all", "-o", "%j"], capture_output=True, text=True).stdout
        return not set(out.split()) & set(names)

    wait(gone, 300, "the cancelled jobs to be purged")


@contextlib.contextmanager
def room_for(points: int, job_names: list[str]) -> Iterator[bool]:
    """Make room for `points` queued tasks (see the module docstring). When MaxJobCount is too low: hold
    testcluster.sh's lock (a concurrent `testcluster.sh start` would otherwise put the template's slurm.conf back
    mid-benchmark), raise MaxJobCount with MinJobAge=5 (a slurmctld restart); afterwards cancel these jobs, wait until
    they are purged, restore slurm.conf, restart slurmctld, release the lock and check the cluster's health.
    Yields whether it raised the limit (then cancelled jobs are purged within seconds, not MinJobAge's minutes)."""
    if int(scontrol_value("MaxJobCount")) > points + 1000:
        try:
            yield False
        finally:
            purge(job_names, forgotten=False)
        return
    conf = Path(os.environ["SLURM_CONF"])
    state = conf.parent.parent
    before = {key: scontrol_value(key) for key in ("MaxJobCount", "MaxArraySize", "MinJobAge")}
    with open(state / "lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        original = conf.read_text()
        conf.write_text(with_settings(original, {"MaxJobCount": max(100_000, 4 * points), "MinJobAge": 5}))
        try:
            restart_slurmctld(state / "run")
            yield True
        finally:
            try:
                purge(job_names)
            finally:
                conf.write_text(original)
                restart_slurmctld(state / "run")
    after = {key: scontrol_value(key) for key in before}
    health = subprocess.run(["bash", str(CLUSTER_SCRIPT), "start"], capture_output=True, text=True)
    print(f"test cluster restored: {after}" + ("" if after == before and health.returncode == 0 else
                                                f"  WARNING: it was {before}; testcluster.sh start: {health.stderr}"))


# ------------------------------------------------------------------------------------------- sides
def sfhpc_side(folder: Path, calls: Calls, seeds: int, repeat: int, purged: bool) -> dict:
    name = SFHPC_SWEEP
    sweep = folder / "scale.yaml"
    sweep.write_text(SWEEP.format(name=name, seeds=list(range(seeds)), **GRID))
    launches, sbatch_calls, status_times, sacct_calls, squeue_calls = [], [], [], [], []
    for attempt in range(repeat):
        run = folder / f"run{attempt}"
        calls.clear()
        tic = time.perf_counter()
        subprocess.run([*SFHPC, "sweep", "launch", str(sweep), "--output", str(run)], check=True, capture_output=True)
        launches.append(time.perf_counter() - tic)
        sbatch_calls.append(calls.count("sbatch"))
        for _ in range(3):
            calls.clear()
            tic = time.perf_counter()
            out = subprocess.run([*SFHPC, "status", str(run)], check=True, capture_output=True, text=True).stdout
            status_times.append(time.perf_counter() - tic)
            sacct_calls.append(calls.count("sacct"))
            squeue_calls.append(calls.count("squeue"))
        purge([SFHPC_JOBS], forgotten=purged)  # (the run folders go with the temporary folder, at the end)
    pending = re.search(r"train\D+(\d+)\D+(\d+)\D+(\d+)\D+(\d+)", out)
    return {"launch": launches, "sbatch": sbatch_calls, "status": status_times, "sacct": sacct_calls,
            "squeue": squeue_calls, "status_line": pending.group(0) if pending else out.strip().splitlines()[-2]}


def hydra_side(folder: Path, calls: Calls, seeds: int) -> float:
    """Seconds from the start of `task.py -m <grid>` until its sbatch call returned."""
    (folder / "task.py").write_text(HYDRA_TASK)
    (folder / "config.yaml").write_text(HYDRA_CONFIG.format(sweep_dir=folder / "multirun", name=HYDRA_JOBS))
    overrides = [f"seed=range(0,{seeds})"] + [f"{key}={','.join(map(str, values))}" for key, values in GRID.items()]
    calls.clear()
    with open(folder / "hydra.log", "w") as log:
        start = time.time()
        process = subprocess.Popen([str(HYDRA_PYTHON), "task.py", "-m", *overrides], cwd=folder, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait(lambda: calls.count("sbatch") or process.poll() is not None, 1800, "hydra's sbatch")
        finally:
            os.killpg(process.pid, signal.SIGTERM)  # it would wait for its held jobs forever
            process.wait()
    end = calls.last_end("sbatch")
    if end is None:
        log = (folder / "hydra.log").read_text()
        raise RuntimeError(f"hydra submitted nothing; the end of its log:\n{log[-2000:]}")
    return end - start


def verdict(met: bool) -> str:
    return "met" if met else "MISSED"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=10_000, help="sfhpc's sweep, a multiple of 1,000")
    parser.add_argument("--hydra-points", type=int, default=1_000,
                        help="hydra's multirun, a multiple of 1,000 below MaxArraySize (one array)")
    parser.add_argument("--repeat", type=int, default=3, help="sfhpc launches (each followed by 3 status calls)")
    parser.add_argument("--no-hydra", action="store_true")
    args = parser.parse_args()
    env = cluster_env()
    if env is None:
        return
    os.environ.update(env)
    hydra = not args.no_hydra and HYDRA_PYTHON.exists()
    if not args.no_hydra and not hydra:
        print(f"hydra side skipped: {HYDRA_PYTHON} is missing (make bench creates it)")
    max_array = int(scontrol_value("MaxArraySize"))
    if hydra and args.hydra_points >= max_array:
        parser.error(f"--hydra-points: the hydra launcher submits one array, and MaxArraySize is {max_array}")
    print(f"load average at start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory(prefix="sfhpc-launch-scale-") as tmp:
        folder = Path(tmp)
        calls = Calls(folder)
        os.environ["PATH"] = f"{calls.bin}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
        with room_for(args.points, [SFHPC_JOBS]) as raised:
            ours = sfhpc_side(folder, calls, args.points // 1000, args.repeat, purged=raised)
        launch = report_sfhpc(ours, args.points, args.repeat, max_array)
        if hydra:
            with room_for(args.hydra_points, [HYDRA_JOBS]):
                theirs = hydra_side(folder, calls, args.hydra_points // 1000)
            scaled = theirs * args.points / args.hydra_points
            label = "" if args.hydra_points == args.points else f", {args.hydra_points} points"
            print(f"hydra multirun       {theirs:7.2f} s  until its sbatch returned (one array{label})")
            if args.hydra_points != args.points:
                print(f"  per point, x {args.points}: {scaled:7.1f} s  (extrapolated: linear in points)")
            print(f"ratio hydra / sfhpc  {scaled / launch:7.1f} x")


def report_sfhpc(ours: dict, points: int, repeat: int, max_array: int) -> float:
    """Print the sfhpc figures; returns the median launch time."""
    chunks = -(-points // max_array)
    launch, status = statistics.median(ours["launch"]), statistics.median(ours["status"])
    print(f"\n{points} points, MaxArraySize={max_array} ({chunks} arrays); median of {repeat} launches and "
          f"{len(ours['status'])} status calls")
    print(f"sfhpc sweep launch   {launch:7.2f} s  goal < 10 s: {verdict(launch < 10)}  "
          f"(each: {', '.join(f'{t:.2f}' for t in ours['launch'])})")
    print(f"  sbatch calls       {max(ours['sbatch']):7d}    goal {chunks}: {verdict(set(ours['sbatch']) == {chunks})}")
    print(f"sfhpc status RUN     {status:7.2f} s  goal < 1 s: {verdict(status < 1)}  "
          f"(each: {', '.join(f'{t:.2f}' for t in ours['status'])})")
    print(f"  sacct calls        {max(ours['sacct']):7d}    goal 1: {verdict(set(ours['sacct']) == {1})}  "
          f"(squeue calls, each: {ours['squeue']}; it said: {ours['status_line']})", flush=True)
    return launch


if __name__ == "__main__":
    main()
