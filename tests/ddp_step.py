"""One training step as a rank of a torchrun-style gloo group, for the DDP equality tests of plain and guided
training (tests/test_train.py, tests/test_cotraining.py). Run by torch.multiprocessing.spawn, so it lives in a
module the spawned processes can import."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import torch

import sfhpc.stages.train.run as train
from sfhpc import distributed
from sfhpc.stages.common import build_model, load_predictor
from sfhpc.stages.train import TrainParams


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_step(rank: int, world: int, port: int, out: Path, predictor_run_dir: Path | None = None) -> None:
    """One SGD step on a fixed batch of 8, split over `world` ranks; rank 0 saves the model. With
    `predictor_run_dir`, the step is guided (alpha 0.5) by the predictor point `predictor/p` found there."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    env = distributed.detect()
    assert (env.source, env.rank, env.world_size) == ("torchrun", rank, world)
    torch.set_num_threads(1)
    device = distributed.setup(env)
    guide = None
    if predictor_run_dir is not None:
        guide = train.NeuralGuide(load_predictor(predictor_run_dir, "predictor/p"), alpha=0.5)
    params = TrainParams(width=4, band="none", batch_size=8, seed=1)
    torch.manual_seed(params.seed)
    model = build_model(params, 4, 32, guide.n_outputs if guide else None)
    model.eval()  # frozen BatchNorm statistics: on CPUs each rank would normalise its own share (no SyncBN)
    wrapped = train._wrap_ddp(model, env, device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    images = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(8) % 4
    (index,) = train.rank_batches(torch.arange(8), 8, env, distributed.per_rank_batch(8, world))
    train.train_step(wrapped, optimizer, images[index], labels[index], guide)
    if env.is_main:
        torch.save(model.state_dict(), out)
    distributed.teardown(env)
