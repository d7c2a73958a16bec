"""Expanding a 10,000-point sweep (goal: < 1 s), in-process and as the `sfhpc sweep expand --json` command.

Run: .venv/bin/python benchmarks/expand_scale.py [--repeat N]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sfhpc.sweep import expand_file

SWEEP = """\
name: scale
data: {image_size: 128}
grid:
  band: [none, lsf, human, lsf+human]
  seed: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
  lr: [0.1, 0.05, 0.02, 0.01, 0.005]
  weight_decay: [0.0001, 0.0002, 0.0005, 0.001, 0.002]
  width: [8, 12, 16, 24, 32, 48, 64, 96, 128, 192]
stages:
  train: {}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    repeat = parser.parse_args().repeat
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "scale.yaml"
        path.write_text(SWEEP)
        in_process = []
        for _ in range(repeat):
            tic = time.perf_counter()
            plan = expand_file(path)
            in_process.append(time.perf_counter() - tic)
        command = []
        for _ in range(repeat):
            tic = time.perf_counter()
            subprocess.run([sys.executable, "-m", "sfhpc.cli", "sweep", "expand", str(path), "--json"], check=True,
                           capture_output=True)
            command.append(time.perf_counter() - tic)
    print(f"points: {plan.n_points}")
    print(f"expand in-process     median {statistics.median(in_process):.3f} s  (goal < 1 s: "
          f"{'met' if statistics.median(in_process) < 1 else 'MISSED'})")
    print(f"sfhpc sweep expand --json (cold process, JSON of every point) median {statistics.median(command):.3f} s")


if __name__ == "__main__":
    main()
