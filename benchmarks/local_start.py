"""The local executor's per-point start-up: points forked from the warm pool against one fresh Python per point.

The same small sweep (N tiny train points: 32 px, 64 images, one epoch, so that start-up dominates) is launched on
the local executor twice into fresh run folders, `--parallel 2`:

- `forkpool`: what `sfhpc sweep launch --executor local` does, each point forked from one process that imported
  torch and the stages once (`sfhpc.forkpool`);
- `submitit`: each point started by submitit's LocalExecutor, a fresh Python that imports everything itself (what
  the local executor did before, and still does for points of several tasks).

Printed: wall time and the CPU time of every process the launch started (`RUSAGE_CHILDREN`, so the pool's parent
and every point, waited for), per point, and the ratio. Both sides run --repeat times, alternating; medians.

Run: .venv/bin/python benchmarks/local_start.py [--points 8] [--repeat 2]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import textwrap
import time
from pathlib import Path

from sfhpc import launch as launch_module
from sfhpc.sweep import expand_file

SWEEP = """\
name: local-start
executor: local
data: {{image_size: 32, n_classes: 4, n_train: 64, n_val: 32, n_test: 32}}
grid:
  seed: {seeds}
stages:
  train:
    params: {{width: 4, epochs: 1, batch_size: 32}}
"""


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def launch_once(points: int, fork: bool, folder: Path) -> tuple[float, float]:
    """(wall s, CPU s of every started process) of one local launch of `points` points."""
    sweep = folder / "sweep.yaml"
    sweep.write_text(textwrap.dedent(SWEEP.format(seeds=list(range(points)))))
    plan = expand_file(sweep)
    original = launch_module._LocalStarter.start
    if not fork:  # the submitit path, as for points of several tasks
        launch_module._LocalStarter.start = launch_module._LocalStarter.start_with_submitit
    try:
        cpu, wall = children_cpu(), time.perf_counter()
        report = launch_module.launch(plan, executor="local", output=folder / "run", parallel=2)
        wall, cpu = time.perf_counter() - wall, children_cpu() - cpu
    finally:
        launch_module._LocalStarter.start = original
    done = sum(state == "done" for state in report.finished["train"].values())
    if done != points:
        raise SystemExit(f"only {done} of {points} points finished; see {folder / 'run'}")
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    results: dict[str, list[tuple[float, float]]] = {"forkpool": [], "submitit": []}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.repeat):
            for name in results:
                folder = Path(tmp) / f"{name}-{round_}"
                folder.mkdir()
                results[name].append(launch_once(args.points, name == "forkpool", folder))
    print(f"{args.points} tiny train points on the local executor, --parallel 2, median of {args.repeat}:")
    medians = {}
    for name, runs in results.items():
        wall, cpu = statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)
        medians[name] = (wall, cpu)
        print(f"  {name:9s} wall {wall:6.1f} s   CPU {cpu:6.1f} s   ({cpu / args.points:.2f} CPU-s per point)")
    (fork_wall, fork_cpu), (sub_wall, sub_cpu) = medians["forkpool"], medians["submitit"]
    print(f"  forkpool / submitit: wall {fork_wall / sub_wall:.2f}, CPU {fork_cpu / sub_cpu:.2f}; "
          f"{(sub_cpu - fork_cpu) / args.points:.2f} CPU-s saved per point")


if __name__ == "__main__":
    main()
