"""All distributed setup in one place: where rank and world size come from, the device, the process group,
per-rank seeds and batch splitting. One function per source: submitit (SLURM or local tasks), torchrun, single.
"""

from __future__ import annotations

import os
import socket
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    source: str  # "submitit" | "torchrun" | "single"
    node: str

    @property
    def is_main(self) -> bool:
        """Only this rank writes checkpoints and results."""
        return self.rank == 0


def from_torchrun() -> DistEnv | None:
    """torchrun (or any env:// launcher) exports RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT."""
    launched_by_torchrun = "TORCHELASTIC_RUN_ID" in os.environ
    env_init = all(k in os.environ for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR"))
    env_init = env_init and "SUBMITIT_EXECUTOR" not in os.environ
    if not (launched_by_torchrun or env_init):
        return None
    return DistEnv(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)),
                   "torchrun", node_name())


def rendezvous_port(job_id: str) -> int:
    """The TCP port rank 0 listens on, the same for every task of a job: derived from the job id, and below
    Linux's ephemeral range (32768-60999), where submitit's own choice can collide with open connections."""
    return 20000 + zlib.crc32(job_id.encode()) % 12000


def from_submitit() -> DistEnv | None:
    """A submitit job (SLURM or local) with several tasks: submitit knows the tasks and the first node's name."""
    if "SUBMITIT_EXECUTOR" not in os.environ:
        return None
    import submitit

    os.environ.setdefault("MASTER_PORT", str(rendezvous_port(submitit.JobEnvironment().job_id)))
    env = submitit.helpers.TorchDistributedEnvironment()
    if env.world_size == 1:
        return None
    env.export(set_cuda_visible_devices=False, overwrite=True)  # device: by local rank, in setup()
    return DistEnv(env.rank, env.world_size, env.local_rank, "submitit", node_name())


def node_name() -> str:
    """SLURM's name for this node (several slurmd can share a host), else the host name."""
    return os.environ.get("SLURMD_NODENAME") or socket.gethostname()


def single() -> DistEnv:
    return DistEnv(0, 1, 0, "single", node_name())


def detect() -> DistEnv:
    """The environment this process runs in; torchrun wins over the scheduler when both are present."""
    return from_torchrun() or from_submitit() or single()


def setup(env: DistEnv) -> torch.device:
    """Pick the device and, for more than one rank, join the process group (nccl on GPUs, gloo on CPUs).
    Returns the torch.device to use."""
    import torch
    import torch.distributed as dist

    if torch.cuda.is_available():
        device = torch.device("cuda", env.local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if env.world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=env.rank,
                                world_size=env.world_size)
    return device


def teardown(env: DistEnv) -> None:
    import torch.distributed as dist

    if env.world_size > 1 and dist.is_initialized():
        dist.destroy_process_group()


def rank_seed(seed: int, rank: int) -> int:
    """A different random stream per rank (augmentation), reproducible from the point's seed."""
    return seed * 1009 + rank


def per_rank_batch(batch_size: int, world_size: int) -> int:
    """The per-rank share of a global batch; refuses a split that would silently change the batch size."""
    if batch_size % world_size:
        raise ValueError(f"batch_size {batch_size} is not divisible by the world size {world_size}; "
                         "choose a batch size that is a multiple of nodes x tasks per node")
    return batch_size // world_size


def all_hosts(env: DistEnv) -> list[str]:
    """The host name of every rank, gathered to all ranks (recorded in results)."""
    if env.world_size == 1:
        return [env.node]
    import torch.distributed as dist

    hosts: list[str | None] = [None] * env.world_size
    dist.all_gather_object(hosts, env.node)
    return [str(h) for h in hosts]
