"""A 10-epsilon Linf grid attacked monotone against independent: total CPU time ratio (goal: <= 0.5).

The study's Linf grid (SCIENCE.md section 5) is the odd multiples of its smallest epsilon, 0.001 ... 0.019 in
normalised units: 1/19 to 19/19 of its largest, from where an ImageNet ResNet is nearly as accurate as on clean
images to where it is nearly never right. This script spans the 64 px model's range the same way: 0.5/255, 1.5/255,
..., 9.5/255 in pixels (odd multiples of 0.5/255), the largest where that model's robust accuracy is near zero (it
prints the robust accuracy per epsilon, so the span can be read off).

The model is attack_shards.py's: the train stage's small_resnet (width 16, or --width) trained for 4 epochs by the
stage's own `train_epoch` on 64 px (or --image-size) synthetic images (seeded: the same model every run). The attack
is the stage's own `attack_shard` on --images test images (128) with a quick custom AutoAttack (pyautoattack):
APGD-CE, 10 iterations (--iterations; AutoAttack's own is 100), 1 restart, batch size 64, seed 0; once with the
monotone grid (each epsilon attacks only the images still robust at the previous one; the others carry their
adversarial example forward, checked by a forward pass) and once with the independent grid (every epsilon attacks
every clean-correct image). CPU time is this process's (`time.process_time`, every thread), on one torch thread so
that thread spinning does not blur it; the two grids run --repeat times, alternating, with fresh state folders, and
the medians are compared.

What the monotone grid saves: APGD runs all its iterations on every image of a batch, so the work of an epsilon is
about proportional to the images it attacks; the script prints how many each grid attacked. What it adds: one
forward pass over the carried examples per epsilon, and one file of examples per epsilon in the state folder.

--version standard runs AutoAttack's standard attacks instead (APGD-CE, APGD-T, FAB-T, Square), each shortened by
the same factor as APGD (--iterations 10 of 100: FAB-T 10 of 100 iterations, Square 500 of 5,000 queries), so that
their costs keep their proportions. The synthetic data has at most 8 classes (--classes 8), so APGD-T and FAB-T
target the 7 other classes instead of AutoAttack's 9. There the attacks after APGD-CE run only on the images APGD-CE
could not break, on either grid, and the monotone grid saves only APGD-CE's work on images already broken: this is
the ratio the paper sweep's estimate follows.

Robust accuracy per epsilon: the monotone grid counts an image broken at a smaller epsilon as broken (its example is
still adversarial and inside the larger ball), so it can only be lower than the independent run's where the two
attacks at that epsilon agree. They agree: APGD's random start is drawn per image (`attack_random_start: image`,
the stage's default: from the seed, the restart and the image's bytes), and APGD treats every other step per image,
so an image the monotone grid attacks at an epsilon meets the very attack the independent grid runs on it there,
although its batch holds other, fewer images. The flags that differ are counted by cause: broken on the monotone
grid at a smaller epsilon only (the independent attack at this epsilon missed an example a smaller ball holds),
broken on the monotone grid by this epsilon's attack only, and broken by the independent attack only; with per-image
starts the last two are 0 (up to floating-point differences between batch sizes, which this CPU did not show).
--random-start batch runs AutoAttack's own per-batch starts instead (one draw for the whole batch after reseeding,
so an image's start depends on its place in its batch, and the monotone grid's batches hold fewer images): then
the last two causes appear too, in a few images each way.

Run: .venv/bin/python benchmarks/attack_grid.py [--images 128] [--iterations 10] [--repeat 3] [--image-size 64]
     [--width 16] [--version custom|standard] [--classes 4 (standard: 8)] [--random-start image|batch]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyautoattack
import torch
from attack_shards import trained_model

from sfhpc.evaluation.attack import RANDOM_STARTS, AttackSettings, attack_shard, grid_settings

GRID = tuple((2 * k - 1) * 0.5 / 255 for k in range(1, 11))  # 0.5/255 ... 9.5/255: odd multiples, as the study's
BATCH_SIZE = 64
STANDARD_FAB_ITERATIONS, STANDARD_SQUARE_QUERIES = 100, 5000  # AutoAttack's standard version


def shortened_standard(iterations: int, n_classes: int) -> type:
    """pyautoattack's AutoAttack whose FAB-T and Square are shortened by the factor APGD is (iterations / 100), and
    whose targeted attacks target at most the other n_classes - 1 classes."""
    factor = iterations / 100

    class Shortened(pyautoattack.AutoAttack):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.fab.n_iter = max(round(STANDARD_FAB_ITERATIONS * factor), 1)
            self.square.n_queries = max(round(STANDARD_SQUARE_QUERIES * factor), 1)
            for attack in (self.apgd_targeted, self.fab):
                attack.n_target_classes = min(attack.n_target_classes, n_classes - 1)

    return Shortened


def attacked_images() -> tuple[list[int], Callable[[], None]]:
    """A list that collects the size of every batch AutoAttack attacks, and a function that stops collecting."""
    sizes: list[int] = []
    real = pyautoattack.AutoAttack.run_standard_evaluation

    def counting(self, x, y, **kwargs):
        sizes.append(len(x) * len(self.attacks_to_run))
        return real(self, x, y, **kwargs)

    pyautoattack.AutoAttack.run_standard_evaluation = counting

    def stop() -> None:
        pyautoattack.AutoAttack.run_standard_evaluation = real

    return sizes, stop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=10, help="APGD iterations (AutoAttack's own: 100)")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--width", type=int, default=16, help="small_resnet width")
    parser.add_argument("--version", choices=("custom", "standard"), default="custom",
                        help="custom: APGD-CE alone; standard: AutoAttack's four attacks, shortened alike")
    parser.add_argument("--classes", type=int, default=4, help="classes of the synthetic data (at most 8)")
    parser.add_argument("--random-start", choices=RANDOM_STARTS, default="image",
                        help="APGD's random start per image (the stage's default) or per batch (AutoAttack's own)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, x, y = trained_model(args.images, args.image_size, args.width, args.classes)
    standard = args.version == "standard"
    if standard:
        pyautoattack.AutoAttack = shortened_standard(args.iterations, args.classes)  # looked up at call time
    grids = {grid: grid_settings({"Linf": GRID}, grid, version=args.version, attacks=None if standard else ["apgd-ce"],
                                 seed=0, batch_size=BATCH_SIZE, apgd_iterations=args.iterations,
                                 apgd_restarts=None if standard else 1, random_start=args.random_start)
             for grid in ("monotone", "independent")}
    seconds: dict[str, list[float]] = {grid: [] for grid in grids}
    flags: dict[str, dict[float, np.ndarray]] = {}
    attacked: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="sfhpc-attack-grid-") as tmp:
        for _ in range(args.repeat):
            for grid, settings in grids.items():
                sizes, stop = attacked_images()
                tic = time.process_time()
                result = attack_shard(model, x, y, settings, Path(tempfile.mkdtemp(dir=tmp)))
                seconds[grid].append(time.process_time() - tic)
                stop()
                flags[grid] = {s.eps: result[s.key()] for s in settings}
                attacked[grid] = sum(sizes)
    report(args, model, x, y, grids, seconds, flags, attacked)


def report(args: argparse.Namespace, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
           grids: dict[str, list[AttackSettings]], seconds: dict[str, list[float]],
           flags: dict[str, dict[float, np.ndarray]], attacked: dict[str, int]) -> None:
    with torch.no_grad():
        clean = float((model(x).argmax(1) == y).float().mean())
    attacks = ("APGD-CE, APGD-T, FAB-T, Square (standard, shortened alike)" if args.version == "standard"
               else "APGD-CE, 1 restart")
    print(f"small_resnet width {args.width}, {len(y)} test images of {args.image_size} px, {args.classes} classes "
          f"(clean accuracy {clean:.3f}); {attacks}, {args.iterations} APGD iterations, Linf eps 0.5/255 ... "
          f"9.5/255 (10 values), batch {BATCH_SIZE}, random start per {args.random_start}, 1 torch thread; median of "
          f"{args.repeat}")
    for grid in grids:
        print(f"{grid:<12} {statistics.median(seconds[grid]):7.2f} s CPU  (each: "
              f"{', '.join(f'{t:.2f}' for t in seconds[grid])}); image-attacks run: {attacked[grid]}")
    ratio = statistics.median(seconds["monotone"]) / statistics.median(seconds["independent"])
    print(f"ratio monotone / independent  {ratio:6.3f}  goal <= 0.5: {'met' if ratio <= 0.5 else 'MISSED'}")
    monotone, independent = flags["monotone"], flags["independent"]
    print("eps (px)   robust accuracy monotone  independent   flags that differ: broken on the monotone grid at a "
          "smaller eps only / by this eps's attack only / by the independent attack only")
    higher = []
    broken_before = np.zeros(len(y), dtype=bool)  # on the monotone grid
    broken_before_independent = np.zeros(len(y), dtype=bool)
    totals = {"carried": 0, "carried_own": 0, "attack": 0, "independent": 0}
    for eps in GRID:
        mono, ind = monotone[eps], independent[eps]
        carried = ~mono & ind & broken_before
        print(f"{eps * 255:4.1f}/255   {mono.mean():24.3f}  {ind.mean():11.3f}   {int(carried.sum()):4d} / "
              f"{int((~mono & ind & ~broken_before).sum()):4d} / {int((mono & ~ind).sum()):4d}")
        if mono.mean() > ind.mean():
            higher.append(f"{eps * 255:.1f}/255")
        totals["carried"] += int(carried.sum())
        totals["carried_own"] += int((carried & broken_before_independent).sum())
        totals["attack"] += int((~mono & ind & ~broken_before).sum())
        totals["independent"] += int((mono & ~ind).sum())
        broken_before |= ~mono
        broken_before_independent |= ~ind
    differ = totals["carried"] + totals["attack"] + totals["independent"]
    print(f"flags that differ: {differ} of {len(y) * len(GRID)}: {totals['carried']} broken on the monotone grid at a "
          f"smaller eps only (of them {totals['carried_own']} broken at a smaller eps by the independent run too: "
          f"its own flags are not monotone there), {totals['attack']} by the monotone grid's attack at that eps only, "
          f"{totals['independent']} by the independent attack only")
    print("monotone robust accuracy no higher than independent at every eps: " +
          ("yes" if not higher else "NO, higher at " + ", ".join(higher)))


if __name__ == "__main__":
    main()
