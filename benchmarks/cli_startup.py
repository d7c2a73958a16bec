"""Cold-start time of the login-node commands: `sfhpc --help` and `sfhpc status RUN` (goal: <= 0.3 s each).

Each command runs as a fresh process, as a user would type it; the median of several runs is printed.
Run: .venv/bin/python benchmarks/cli_startup.py [--repeat N]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

SFHPC = [sys.executable, "-m", "sfhpc.cli"]
SWEEP = textwrap.dedent("""\
    name: bench
    executor: local
    data: {image_size: 32, n_classes: 4, n_train: 32, n_val: 16, n_test: 16}
    grid: {band: [none, lsf], seed: [0, 1]}
    stages:
      train:
        params: {width: 4, epochs: 1, batch_size: 16}
    """)


def cold_start_seconds(args: list[str], repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        tic = time.perf_counter()
        subprocess.run(args, check=True, capture_output=True)
        times.append(time.perf_counter() - tic)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=10)
    repeat = parser.parse_args().repeat
    with tempfile.TemporaryDirectory() as folder:
        sweep, run = Path(folder) / "bench.yaml", Path(folder) / "run"
        sweep.write_text(SWEEP)
        subprocess.run([*SFHPC, "sweep", "launch", str(sweep), "--output", str(run)], check=True, capture_output=True)
        cases = {"sfhpc --help": ["--help"], "sfhpc status RUN (4 points)": ["status", str(run)]}
        python_only = statistics.median(cold_start_seconds([sys.executable, "-c", "pass"], repeat))
        print(f"{'command':<30} {'median s':>9} {'min s':>7}  goal")
        print(f"{'python -c pass (floor)':<30} {python_only:>9.3f}")
        for name, args in cases.items():
            times = cold_start_seconds([*SFHPC, *args], repeat)
            median = statistics.median(times)
            verdict = "met" if median <= 0.3 else "MISSED"
            print(f"{name:<30} {median:>9.3f} {min(times):>7.3f}  <= 0.300 ({verdict})")


if __name__ == "__main__":
    main()
