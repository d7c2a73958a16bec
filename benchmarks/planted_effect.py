"""A positive control: does the pipeline see a low-frequency shift that was planted in the simulated brain?

Runs `sweeps/planted.yaml` (or --sweep) on the local executor: TO-guided models and their same-alpha controls
(a TO predictor trained on shuffled image-response pairs) on a simulated subject whose ROIs above V1 respond to the
energy of the coarsest band (2-4 c/img) only (data.neural.tuning coarse_above_v1). Then `sfhpc aggregate --json`,
and prints the Findings rows of claim (a) as the report computed them (effect, 95% CI, p, degrees of freedom,
verdict): the fitted CBM channel's centre of guided models against their controls, and the low-pass half-accuracy
cut-off (the lowest frequency below which a model's own test images are still recognised half as far above chance
as unfiltered ones; a second measure, not the study's, that needs no noise and no fit). Also each condition's
headline numbers (clean accuracy, CBM bandwidth and centre), each seed's CBM thresholds and each model's cut-off, so
that a failure can be told apart (no channel, no accuracy, no shift).

Detected means: the low-pass row came out `consistent` (guided models' cut-off lower, p < 0.05, df >= 2) and the
CBM centre row did not contradict it.

What it checks: that sfhpc can detect an effect that is there by construction. It is not evidence about brains,
and it says nothing about whether guidance by a real ROI shifts a network's frequency reliance.

Run: .venv/bin/python benchmarks/planted_effect.py [--sweep sweeps/planted.yaml] [--run-dir DIR] [--parallel 2]
Exit status 0 when the shift was detected, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SFHPC = [sys.executable, "-m", "sfhpc.cli"]
CENTRE_CLAIM = "CBM channel centre is lower"
LOWPASS_CLAIM = "from lower frequencies"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", type=Path, default=ROOT / "sweeps" / "planted.yaml")
    parser.add_argument("--run-dir", type=Path, default=None, help="run folder (default: a temporary one)")
    parser.add_argument("--parallel", type=int, default=2)
    args = parser.parse_args()
    run_dir = args.run_dir or Path(tempfile.mkdtemp(prefix="sfhpc-planted-")) / "run"
    tic = time.perf_counter()
    subprocess.run([*SFHPC, "sweep", "launch", str(args.sweep), "-o", str(run_dir), "--executor", "local",
                    "--parallel", str(args.parallel)], check=True, stdout=subprocess.DEVNULL)
    launched = time.perf_counter() - tic
    report = json.loads(subprocess.run([*SFHPC, "aggregate", str(run_dir), "--json"], check=True,
                                       capture_output=True, text=True).stdout)
    print(f"sweep {args.sweep.name}: launched and finished in {launched / 60:.1f} min; run folder {run_dir}")
    for condition in report["conditions"]:  # the terminal's headline table: mean ± SEM per column
        print("  " + "; ".join(f"{key}: {value}" for key, value in condition.items()))
    rows = [c for c in report["findings"]["claims"] if c["section"] == "(a)"]
    for row in rows:
        low, high = row["ci95"]
        print(f"(a) {row['claim']}\n    effect {row['effect']} {row['unit']}, 95% CI [{low}, {high}], "
              f"p {row['p_value']}, df {row['df']}: {row['verdict']} ({row['why']})")
    print_threshold_profiles(run_dir)
    lowpass = [row for row in rows if LOWPASS_CLAIM in row["claim"]]
    centre = [row for row in rows if CENTRE_CLAIM in row["claim"]]
    detected = (bool(lowpass) and all(row["verdict"] == "consistent" for row in lowpass)
                and not any(row["verdict"] == "contradicts" for row in centre))
    print(f"planted low-frequency shift detected: {'yes' if detected else 'NO'}")
    return 0 if detected else 1


def config_of(folder: Path, point: str = ".") -> dict:
    """A point's config.yaml (`point`: "stage/point id" under the run folder, or the folder itself)."""
    import yaml

    return yaml.safe_load((folder / point / "config.yaml").read_text())


def print_threshold_profiles(run_dir: Path) -> None:
    """Each model's CBM thresholds per band and its low-pass half-accuracy cut-off (from its cbm result file),
    guided beside control by seed. Only the cbm points of the run's manifest count (a relaunch with other cbm
    settings leaves the earlier ones in the folder)."""
    import json

    import h5py
    import numpy as np

    from sfhpc.rundir import RunDir, manifest_points
    from sfhpc.stages.cbm import LOWPASS_HALF, THRESHOLDS_CURVE

    current = {point["id"] for stage, point in manifest_points(RunDir(run_dir).read_manifest()) if stage == "cbm"}
    profiles: dict[tuple[str, int], tuple[np.ndarray, float]] = {}
    for result in sorted((run_dir / "cbm").glob("*/result.h5")):
        if result.parent.name not in current:
            continue
        model = config_of(run_dir, config_of(result.parent)["upstream"][0])  # the train point it measured
        predictor = config_of(run_dir, model["upstream"][0])["params"]["predictor"]  # trained or shuffled
        with h5py.File(result) as f:
            half = json.loads(f.attrs["metric_values"]).get(LOWPASS_HALF, float("nan"))
            profiles[(predictor, int(model["params"]["seed"]))] = (f["curves"][THRESHOLDS_CURVE][()], float(half))
    for seed in sorted({seed for _, seed in profiles}):
        guided, control = profiles.get(("trained", seed)), profiles.get(("shuffled", seed))
        if guided is None or control is None:
            continue
        print(f"  seed {seed}: CBM thresholds guided {guided[0].tolist()}, control {control[0].tolist()}; low-pass "
              f"half-accuracy cut-off guided {guided[1]:.2f}, control {control[1]:.2f} c/img")


if __name__ == "__main__":
    sys.exit(main())
