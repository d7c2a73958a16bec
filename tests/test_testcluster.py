"""Smoke tests of the real SLURM test cluster itself (slurm_templates/testcluster.sh)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import cloudpickle
import pytest
import submitit

# The fixture is registered under its own name, slurm_cluster (also importable from tests/conftest.py).
from slurm_cluster import slurm_cluster as _slurm_cluster_fixture  # noqa: F401

pytestmark = pytest.mark.slurm

# The job's python cannot import this test module by name (tests/ is not on its sys.path), so ship the
# job function by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

SACCT_DEADLINE_S = 60


def run(cmd: list[str], env: dict[str, str], timeout: float = 60) -> str:
    """Run a SLURM client command against the test cluster and return its stdout."""
    proc = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, f"{cmd} exited {proc.returncode}: {proc.stderr}"
    return proc.stdout


def test_sinfo_lists_both_nodes(slurm_cluster: dict[str, str]) -> None:
    nodes = run(["sinfo", "-h", "-N", "-o", "%N"], slurm_cluster).split()
    assert {"node1", "node2"} <= set(nodes)


def test_srun_spans_both_nodes(slurm_cluster: dict[str, str]) -> None:
    out = run(["srun", "-N2", "-n2", "-l", "printenv", "SLURMD_NODENAME"], slurm_cluster)
    names = {line.split(":", 1)[1].strip() for line in out.splitlines() if ":" in line}
    assert names == {"node1", "node2"}


def sacct_states(job_id: str, env: dict[str, str]) -> dict[str, str]:
    """Allocation-level states of a job (array tasks as JOBID_N) according to accounting."""
    out = run(["sacct", "-j", job_id, "-X", "-n", "-P", "-o", "JobID,State"], env)
    return dict(line.split("|", 1) for line in out.splitlines() if "|" in line)


def test_throttled_array_completes_in_accounting(slurm_cluster: dict[str, str], tmp_path: Path) -> None:
    out_dir = tmp_path / "array out"  # awkward path on purpose
    out_dir.mkdir()
    submitted = run(
        [
            "sbatch",
            "--parsable",
            "--array=0-3%2",
            "--chdir",
            str(out_dir),
            "--output",
            str(out_dir / "task %A_%a.out"),
            "--wrap",
            "echo task $SLURM_ARRAY_TASK_ID",
        ],
        slurm_cluster,
    )
    job_id = submitted.strip().split(";")[0]
    expected = {f"{job_id}_{task}" for task in range(4)}
    # sacct lags behind the controller: poll until every task is recorded as COMPLETED.
    deadline = time.monotonic() + SACCT_DEADLINE_S
    states: dict[str, str] = {}
    while time.monotonic() < deadline:
        states = sacct_states(job_id, slurm_cluster)
        if set(states) == expected and set(states.values()) == {"COMPLETED"}:
            break
        time.sleep(1)
    assert set(states) == expected and set(states.values()) == {"COMPLETED"}, states
    outputs = sorted(p.read_text().strip() for p in out_dir.glob("task *.out"))
    assert outputs == [f"task {task}" for task in range(4)]


def test_a_job_over_its_memory_request_is_killed(slurm_cluster: dict[str, str], tmp_path: Path) -> None:
    """--mem is a limit here, as on a production cluster: by the job's memory cgroup (it ends OUT_OF_MEMORY), or,
    where testcluster.sh found no writable memory cgroup, by the accounting plugin (FAILED, and it says why)."""
    conf = Path(slurm_cluster["SLURM_CONF"]).read_text()
    log = tmp_path / "hog.out"
    submitted = run(["sbatch", "--parsable", "--mem=200M", "--output", str(log), "--wrap",
                     "python3 -c 'import time; x = b\"x\" * (600 * 2**20); time.sleep(5)'"], slurm_cluster)
    job_id = submitted.strip().split(";")[0]
    deadline = time.monotonic() + SACCT_DEADLINE_S
    while (state := sacct_states(job_id, slurm_cluster).get(job_id, "PENDING")) in ("PENDING", "RUNNING"):
        assert time.monotonic() < deadline, state
        time.sleep(1)
    if "TaskPlugin=task/cgroup" in conf:
        assert state == "OUT_OF_MEMORY", state
    else:
        assert "JobAcctGatherParams=OverMemoryKill" in conf, "memory is not enforced"
        assert state == "FAILED" and "Exceeded job memory limit" in log.read_text(), state


def gloo_all_reduce() -> tuple[int, float]:
    """Inside a 2-task submitit job: all_reduce(rank + 1) over gloo; returns (rank, reduced value)."""
    import torch
    import torch.distributed as dist

    from sfhpc.distributed import rendezvous_port

    # submitit's own port (20000-60000) may be an ephemeral port in use: take sfhpc's, below that range
    os.environ.setdefault("MASTER_PORT", str(rendezvous_port(submitit.JobEnvironment().job_id)))
    dist_env = submitit.helpers.TorchDistributedEnvironment().export(overwrite=True)
    dist.init_process_group("gloo", rank=dist_env.rank, world_size=dist_env.world_size)
    try:
        value = torch.tensor([float(dist_env.rank + 1)])
        dist.all_reduce(value)
        return dist_env.rank, value.item()
    finally:
        dist.destroy_process_group()


def test_submitit_gloo_all_reduce_across_nodes(slurm_cluster: dict[str, str], tmp_path: Path) -> None:
    executor = submitit.AutoExecutor(folder=tmp_path / "submitit logs")  # awkward path on purpose
    executor.update_parameters(slurm_partition="debug", nodes=2, tasks_per_node=1, cpus_per_task=1, timeout_min=5)
    job = executor.submit(gloo_all_reduce)
    deadline = time.monotonic() + 120
    while not job.done() and time.monotonic() < deadline:
        time.sleep(1)
    if not job.done():
        job.cancel()
        pytest.fail(f"submitit job {job.job_id} not done in time; stderr:\n{job.stderr()}")
    assert sorted(job.results()) == [(0, 3.0), (1, 3.0)]
