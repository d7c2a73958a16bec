"""`sfhpc aggregate` over 10,000 result files (goal: >= 2,000 files/s, cold), beside a plain h5py + pandas loop.

The run folder is what `sfhpc sweep launch` and 10,000 finished train points leave: the manifest of a real 10,000-point
sweep expansion and one result file per point, written by `sfhpc.results.write_result` with the train stage's
metrics, curves and attributes (numbers made up, deterministic). Cold: no result index (`.result-index.json`) and
no earlier outputs, so every file is opened and checked; the warm figure (index present, as on a second aggregate)
is printed too. Both sides run as fresh processes, imports included, as a user types them:
  - `sfhpc aggregate RUN`: checks every file (schema version, point id), reads its metrics, writes summary.csv and
    summary.md, conditions.csv, report.md and the figures;
  - the plain loop (in benchmarks/.venv, which has pandas; the project does not depend on it): h5py opens every
    result file, reads the same scalar metrics into a list of dicts, then a pandas DataFrame written as a CSV.
The ratio is sfhpc's files/s over the loop's. Each side runs --repeat times; the median is printed.

Run: .venv/bin/python benchmarks/aggregate_scale.py [--points 10000] [--repeat 3]
(`make bench` creates benchmarks/.venv; without it the plain loop is skipped.)
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH_PYTHON = REPO / "benchmarks" / ".venv" / "bin" / "python"
SWEEP = """\
name: aggscale
executor: local
data: {{image_size: 128}}
grid:
  band: [none, lsf, human, lsf+human]
  seed: {seeds}
  lr: [0.1, 0.05, 0.02, 0.01, 0.005]
  weight_decay: [0.0001, 0.0002, 0.0005, 0.001, 0.002]
  width: [8, 12, 16, 24, 32, 48, 64, 96, 128, 192]
stages:
  train: {{}}
"""
PLAIN_LOOP = """\
import sys, time
tic = time.perf_counter()
from pathlib import Path
import h5py
import pandas as pd
run, out = Path(sys.argv[1]), sys.argv[2]
rows = []
for path in sorted(run.glob("train/*/result.h5")):
    with h5py.File(path, "r") as f:
        rows.append({"point": f.attrs["point_id"], **{name: f["metrics"][name][()].item() for name in f["metrics"]}})
pd.DataFrame(rows).to_csv(out, index=False)
print(len(rows))
"""


def make_run(folder: Path, seeds: int) -> Path:
    """A run folder as `sweep launch` writes it, with a valid train result for every point."""
    import numpy as np

    from sfhpc.config import PROJECT_ROOT
    from sfhpc.results import Provenance, git_sha, now_iso, write_result
    from sfhpc.rundir import RunDir
    from sfhpc.sweep import expand_file

    sweep = folder / "aggscale.yaml"
    sweep.write_text(SWEEP.format(seeds=list(range(seeds))))
    plan = expand_file(sweep)
    run = RunDir(folder / "run")
    run.path.mkdir()
    sha = git_sha(PROJECT_ROOT)
    run.write_manifest({"schema_version": 1, "name": plan.sweep.name, "sweep_file": str(sweep.resolve()),
                        "fingerprint": plan.fingerprint(), "git_sha": sha, "executor": "local",
                        "created": now_iso(), "plan": plan.to_json()})
    rng = np.random.default_rng(0)
    stage = plan.stage("train")
    data = plan.sweep.data.model_dump(mode="json")
    for point in stage.points:
        config = {"stage": "train", "point_id": point.id, "params": point.params, "data": data, "upstream": [],
                  "resources": stage.resources.model_dump(mode="json"), "run_dir": str(run.path), "git_sha": sha}
        loss = rng.uniform(0.5, 2.0, 3)
        write_result(run.result_path("train", point.id), stage="train", point_id=point.id, config=config,
                     provenance=Provenance(sha, now_iso(), now_iso()),
                     metrics={"test_accuracy": float(rng.uniform(0.3, 0.9)),
                              "val_accuracy": float(rng.uniform(0.3, 0.9)), "train_loss": float(loss[-1]),
                              "chance": 0.125, "epochs": 3,
                              "train_seconds": float(rng.uniform(20, 40)), "world_size": 1,
                              "neural_fit_r": float("nan")},
                     curves={"train_loss": loss, "val_accuracy": rng.uniform(0.3, 0.9, 3), "attempt": [0, 0, 0],
                             "epoch_seconds": rng.uniform(5, 10, 3)},
                     extra_attrs={"hosts": '["node1"]', "world_size": 1, "dist_source": "single", "device": "cpu",
                                  "resumed_from_epoch": 0, "attempts": 1})
    return run.path


def cold_aggregate(run: Path) -> float:
    for name in (".result-index.json", "summary.csv", "summary.md", "conditions.csv", "report.md"):
        (run / name).unlink(missing_ok=True)
    return timed([sys.executable, "-m", "sfhpc.cli", "aggregate", str(run)])


def timed(args: list[str]) -> float:
    tic = time.perf_counter()
    subprocess.run(args, check=True, capture_output=True)
    return time.perf_counter() - tic


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=10_000, help="a multiple of 1,000")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sfhpc-aggregate-scale-") as tmp:
        folder = Path(tmp)
        tic = time.perf_counter()
        run = make_run(folder, args.points // 1000)
        print(f"wrote {args.points} result files in {time.perf_counter() - tic:.1f} s")
        cold = [cold_aggregate(run) for _ in range(args.repeat)]
        warm = [timed([sys.executable, "-m", "sfhpc.cli", "aggregate", str(run)]) for _ in range(args.repeat)]
        plain = None
        if BENCH_PYTHON.exists():
            plain = [timed([str(BENCH_PYTHON), "-c", PLAIN_LOOP, str(run), str(folder / "plain.csv")])
                     for _ in range(args.repeat)]
        else:
            print(f"plain h5py + pandas loop skipped: {BENCH_PYTHON} is missing (make bench creates it)")
    rate = args.points / statistics.median(cold)
    print(f"sfhpc aggregate RUN, cold   {statistics.median(cold):6.2f} s  {rate:7.0f} files/s  goal >= 2000 files/s: "
          f"{'met' if rate >= 2000 else 'MISSED'}  (each: {', '.join(f'{t:.2f}' for t in cold)})")
    print(f"sfhpc aggregate RUN, warm   {statistics.median(warm):6.2f} s  {args.points / statistics.median(warm):7.0f} "
          f"files/s  (result index present)")
    if plain:
        plain_rate = args.points / statistics.median(plain)
        print(f"plain h5py + pandas loop    {statistics.median(plain):6.2f} s  {plain_rate:7.0f} files/s  "
              f"(each: {', '.join(f'{t:.2f}' for t in plain)})")
        print(f"ratio sfhpc / plain loop    {rate / plain_rate:6.2f} x (files/s)")


if __name__ == "__main__":
    main()
