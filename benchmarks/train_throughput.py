"""The train stage's step throughput against a minimal hand-written PyTorch loop (goal: ratio >= 0.95).

Same model (the stage's `build_model`: small_resnet, width 16, 128 px, 8 classes, as in sweeps/quickstart.yaml), same
data (the embedded synthetic dataset), same batch size (64), same optimizer (SGD, lr 0.05, momentum 0.9, the stage's
weight decay), same batches in the same order, same number of steps, on this machine's CPUs with torch's default
threads. The sfhpc side is the stage's own `train_epoch` (which calls `train_step`), with augmentation off so that
both sides do the same work; the hand-written side indexes the uint8 images, scales them to [0, 1] and runs
zero_grad / forward / cross-entropy / backward / step. One warm-up epoch per side is excluded; then the sides
alternate, one epoch each, --repeat times, and the medians are compared. The stage's default augmentation (random
crop and flip) is timed too, for information: it is work the hand-written loop does not do.

Run: .venv/bin/python benchmarks/train_throughput.py [--steps 20] [--repeat 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

from sfhpc import distributed
from sfhpc.config import DataConfig
from sfhpc.data import load_dataset
from sfhpc.stages.common import build_model, epoch_order
from sfhpc.stages.train import TrainParams
from sfhpc.stages.train.run import rank_batches, train_epoch

BATCH = 64


def hand_written_epoch(model: torch.nn.Module, optimizer: torch.optim.Optimizer, images: np.ndarray,
                       labels: np.ndarray, batches: list[torch.Tensor]) -> float:
    model.train()
    losses = []
    for index in batches:
        x = torch.from_numpy(images[index.numpy()]).float().div_(255.0)
        y = torch.from_numpy(labels[index.numpy()])
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return float(np.mean(losses))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="SGD steps per epoch")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    data = DataConfig(kind="synthetic", image_size=128, n_classes=8, n_train=BATCH * args.steps, n_val=64, n_test=64)
    dataset = load_dataset(data, None)
    images, labels = dataset.train.images, dataset.train.labels
    params = TrainParams(arch="small_resnet", width=16, batch_size=BATCH, lr=0.05, augment=False)
    env = distributed.single()

    def setup() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        torch.manual_seed(0)
        model = build_model(params, len(dataset.class_names), data.image_size)
        return model, torch.optim.SGD(model.parameters(), lr=params.lr, momentum=params.momentum,
                                      weight_decay=params.weight_decay)

    ours, theirs, augmented = setup(), setup(), setup()
    with_augment = params.model_copy(update={"augment": True})

    def stage_epoch(epoch: int) -> float:
        return train_epoch(*ours, images, labels, params, epoch, env, BATCH, torch.device("cpu")).total

    def hand_epoch(epoch: int) -> float:
        batches = rank_batches(epoch_order(len(labels), params.seed, epoch), BATCH, env, BATCH)  # the same batches
        return hand_written_epoch(*theirs, images, labels, batches)

    def augmented_epoch(epoch: int) -> float:
        return train_epoch(*augmented, images, labels, with_augment, epoch, env, BATCH, torch.device("cpu")).total

    sides = {"sfhpc train_epoch": stage_epoch, "hand-written loop": hand_epoch,
             "sfhpc train_epoch, augmented": augmented_epoch}
    rates: dict[str, list[float]] = {name: [] for name in sides}
    losses: dict[str, float] = {}
    for epoch in range(args.repeat + 1):
        for name, run_epoch in sides.items():
            tic = time.perf_counter()
            losses[name] = run_epoch(epoch)
            if epoch:  # epoch 0 is the warm-up
                rates[name].append(args.steps * BATCH / (time.perf_counter() - tic))
    print(f"{args.steps} steps of {BATCH} images per epoch, {torch.get_num_threads()} threads; median of "
          f"{args.repeat} epochs after one warm-up epoch")
    for name, values in rates.items():
        print(f"{name:<30} {statistics.median(values):8.1f} images/s  (each: {', '.join(f'{v:.0f}' for v in values)}; "
              f"last loss {losses[name]:.4f})")
    ratio = statistics.median(rates["sfhpc train_epoch"]) / statistics.median(rates["hand-written loop"])
    print(f"ratio sfhpc / hand-written       {ratio:6.3f}  goal >= 0.95: {'met' if ratio >= 0.95 else 'MISSED'}")
    print("(same losses on both sides: "
          f"{'yes' if abs(losses['sfhpc train_epoch'] - losses['hand-written loop']) < 1e-4 else 'NO'})")


if __name__ == "__main__":
    main()
