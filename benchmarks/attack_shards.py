"""AutoAttack split into K shards against one run over all images: total CPU time ratio (goal: <= 1.05).

The model is the train stage's small_resnet (width 8, or --width) trained for a few epochs by the stage's own
`train_epoch` on 32 px (or --image-size) synthetic images (seeded: the same model every run; eval mode is
deterministic, which `attack_shard` checks). The attack is a quick custom AutoAttack (pyautoattack): APGD-CE with 10
iterations (--iterations; AutoAttack's own is 100) and 1 restart, Linf eps 2/255 and 8/255, batch size 64, seed 0,
on the attack stage's default epsilon grid, monotone (8/255 attacks only the images still robust at 2/255), or with
--eps-grid independent (each epsilon attacks every clean-correct image; the only grid before grids existed).
The sharded side attacks each of K contiguous shards of the test images (`shard_bounds`, as the attack stage splits
them) with `attack_shard`, the stage's own call; the other side attacks all images in one `attack_shard` call. CPU
time is this process's (`time.process_time`, every thread), on one torch thread so that thread spinning does not
blur it; each side runs --repeat times, alternating, with fresh state folders, and the medians are compared.

Not in the ratio, and printed beside it: each shard is its own SLURM task, which also pays a process start, the
torch import and loading the model (measured here as a fresh `python -c "import sfhpc.stages.attack.run"`).

What the shards cost beyond the attack itself: every AutoAttack call (one per shard and (norm, eps)) runs a clean
pass over its images, and each shard attacks its own still-robust images in its own batches: more, smaller
batches. What that costs depends on how the cost per image on one CPU thread changes with the batch size. On the
32 px width-8 model, where a forward and backward pass takes a few milliseconds, fixed costs per call make a batch
of 45 about 4% dearer per image than one of 64, and the shards cost 10-14% more. On 64 px width 16 (about 8 times
the work per image) the difference is within the noise, and so is the ratio. (pyautoattack's model checks, seven
forward passes of a batch per call, one of them traced, used to add to that: `attack_shard` now checks the model
once per shard.)

The merged flags of the shards are compared with the unsharded flags. With APGD's random start drawn per image (the
stage's default, `attack_random_start: image`) they are the same: an image's attack does not depend on the other
images of its batch. With --random-start batch (AutoAttack's own: it reseeds for every batch, so an image's random
start depends on its place in its batch, and a shard's batches are not one run's) they can differ in a few images.
Either way robust accuracy from the shards is exact for the shards' own runs (robust count / N), and each shard's
flags equal a direct AutoAttack call on its images (tests/test_attack.py).

Run: .venv/bin/python benchmarks/attack_shards.py [--shards 4] [--images 256] [--iterations 10] [--repeat 3]
     [--image-size 32] [--width 8] [--eps-grid monotone|independent] [--random-start image|batch]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from sfhpc import distributed
from sfhpc.config import DataConfig
from sfhpc.data import load_dataset
from sfhpc.evaluation.attack import EPS_GRIDS, RANDOM_STARTS, attack_shard, grid_settings, shard_bounds
from sfhpc.stages.common import build_model
from sfhpc.stages.train import TrainParams
from sfhpc.stages.train.run import train_epoch


def trained_model(images: int, image_size: int = 32, width: int = 8, n_classes: int = 4
                  ) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """A small classifier trained by the stage's train_epoch, and `images` test images in [0, 1] with labels."""
    data = DataConfig(kind="synthetic", image_size=image_size, n_classes=n_classes, n_train=1024, n_val=64,
                      n_test=images)
    dataset = load_dataset(data, None)
    params = TrainParams(arch="small_resnet", width=width, batch_size=64, lr=0.05, epochs=4)
    torch.manual_seed(params.seed)
    model = build_model(params, len(dataset.class_names), data.image_size)
    optimizer = torch.optim.SGD(model.parameters(), lr=params.lr, momentum=params.momentum,
                                weight_decay=params.weight_decay)
    for epoch in range(params.epochs):
        train_epoch(model, optimizer, dataset.train.images, dataset.train.labels, params, epoch,
                    distributed.single(), params.batch_size, torch.device("cpu"))
    model.eval()
    x = torch.from_numpy(dataset.test.images).float().div_(255.0)
    return model, x, torch.from_numpy(dataset.test.labels)


def cpu_seconds(run) -> tuple[float, dict[str, np.ndarray]]:
    tic = time.process_time()
    flags = run()
    return time.process_time() - tic, flags


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=10, help="APGD iterations (AutoAttack's own: 100)")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--width", type=int, default=8, help="small_resnet width")
    parser.add_argument("--eps-grid", choices=EPS_GRIDS, default="monotone", help="the attack stage's default")
    parser.add_argument("--random-start", choices=RANDOM_STARTS, default="image",
                        help="APGD's random start per image (the stage's default) or per batch (AutoAttack's own)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, x, y = trained_model(args.images, args.image_size, args.width)
    settings = grid_settings({"Linf": (2 / 255, 8 / 255)}, args.eps_grid, version="custom", attacks=["apgd-ce"], seed=0,
                             batch_size=64, apgd_iterations=args.iterations, apgd_restarts=1,
                             random_start=args.random_start)
    bounds = [shard_bounds(len(y), args.shards, shard) for shard in range(args.shards)]
    with tempfile.TemporaryDirectory(prefix="sfhpc-attack-shards-") as tmp:
        def whole() -> dict[str, np.ndarray]:
            return attack_shard(model, x, y, settings, Path(tempfile.mkdtemp(dir=tmp)))

        def sharded() -> dict[str, np.ndarray]:
            parts = [attack_shard(model, x[a:b], y[a:b], settings, Path(tempfile.mkdtemp(dir=tmp)))
                     for a, b in bounds]
            return {s.key(): np.concatenate([part[s.key()] for part in parts]) for s in settings}

        one, many = [], []
        for _ in range(args.repeat):
            seconds, one_flags = cpu_seconds(whole)
            one.append(seconds)
            seconds, merged_flags = cpu_seconds(sharded)
            many.append(seconds)
    startup = job_startup_cpu_seconds()
    ratio = statistics.median(many) / statistics.median(one)
    with torch.no_grad():
        clean = float((model(x).argmax(1) == y).float().mean())
    print(f"small_resnet width {args.width}, {len(y)} test images of {args.image_size} px (clean accuracy "
          f"{clean:.3f}), APGD-CE {args.iterations} iterations, Linf eps 2/255 and 8/255 ({args.eps_grid} grid), "
          f"batch 64, random start per {args.random_start}, 1 torch thread; median of {args.repeat}")
    print(f"one run over all images       {statistics.median(one):7.2f} s CPU  (each: "
          f"{', '.join(f'{t:.2f}' for t in one)})")
    print(f"{args.shards} shards {str([b - a for a, b in bounds]):<20} {statistics.median(many):7.2f} s CPU  (each: "
          f"{', '.join(f'{t:.2f}' for t in many)})")
    print(f"ratio shards / one run          {ratio:6.3f}  goal <= 1.05: {'met' if ratio <= 1.05 else 'MISSED'}")
    why_flags_differ = (" (APGD's random start depends on an image's place in its batch)"
                        if args.random_start == "batch" else "")
    for s in settings:
        a, b = one_flags[s.key()], merged_flags[s.key()]
        print(f"  Linf eps {s.eps * 255:.0f}/255: robust accuracy {a.mean():.3f} (one run) vs {b.mean():.3f} "
              f"(merged shards); flags that differ: {int((a != b).sum())} of {len(a)}{why_flags_differ}")
    print(f"per shard job, outside the ratio: {startup:.2f} s CPU to start python and import torch and the stage "
          f"(x {args.shards} shards: {args.shards * startup:.1f} s, against {1 * startup:.1f} s for one job)")
    # The batch sizes the two sides attack: the shards about 1/K of the clean-correct images at the first epsilon and
    # of the images still robust at the second, one run full batches of 64.
    attacked = [round(clean * len(y)), int(one_flags[settings[0].key()].sum())]
    print_batch_costs(model, x, sorted({*(count // args.shards for count in attacked), 64}))


def print_batch_costs(model: torch.nn.Module, x: torch.Tensor, batches: list[int]) -> None:
    """What a batch costs, by its size: one APGD-CE iteration (AutoAttack's APGD, 10 iterations timed) against the
    model's forward and backward pass alone, the best of 5 timings each, in CPU ms; the difference is what
    AutoAttack's own bookkeeping costs per batch and iteration. Labels are the model's own answers, so that APGD
    attacks every image of the batch (it leaves the misclassified ones out)."""
    model.requires_grad_(False)
    with torch.no_grad():
        answers = model(x).argmax(1)
    for batch in batches:
        iteration, model_pass = batch_costs(model, x[:batch], answers[:batch])
        print(f"batch {batch:3d}: an APGD-CE iteration {1000 * iteration:5.1f} ms CPU, the model's forward and "
              f"backward pass {1000 * model_pass:5.1f} ms ({1000 * (iteration - model_pass):4.1f} ms of AutoAttack's)")


def batch_costs(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """CPU seconds of one APGD-CE iteration and of one forward and backward pass on this batch (best of 5)."""
    from pyautoattack import AutoAttack

    apgd = AutoAttack(model, norm="Linf", eps=8 / 255, version="custom", attacks=["apgd-ce"], seed=0).apgd
    apgd.n_iter, apgd.n_restarts = 10, 1

    def attack() -> None:
        apgd.perturb(images, labels)

    def passes() -> None:
        for _ in range(10):
            inputs = images.clone().requires_grad_(True)
            torch.autograd.grad(torch.nn.functional.cross_entropy(model(inputs), labels), inputs)

    attack()  # warm-up
    passes()
    return (min(cpu_seconds(attack)[0] for _ in range(5)) / 10, min(cpu_seconds(passes)[0] for _ in range(5)) / 10)


def job_startup_cpu_seconds() -> float:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, "-c", "import sfhpc.stages.attack.run"], check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


if __name__ == "__main__":
    main()
