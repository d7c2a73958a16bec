"""The run report: every number from valid result files, checked against hand counts and scipy; incomplete attack
shards and corrupt files are listed, never used. Run folders are made by hand (a manifest from a real sweep
expansion, result files with chosen numbers): no training."""

from __future__ import annotations

import csv
import io
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats
from test_report_runs import make_run, write_point

from sfhpc.report import baselines, build_report, headline_rows, write_report
from sfhpc.report.stats import TEST_NAME, no_baseline_test
from sfhpc.rundir import RunDir
from sfhpc.stages.attack.report import ROBUST_FIGURE, accuracy_auc, merge_attack_shards
from sfhpc.stages.cbm.report import CBM_FIGURE
from sfhpc.stages.rsa import noise_ceiling_metric, rdm_ceiling_lower_metric, rdm_ceiling_upper_metric, rho_metric
from sfhpc.stages.rsa.report import RSA_FIGURE
from sfhpc.stages.train.report import REPORT as TRAIN_REPORT
from sfhpc.sweep import Plan

NO_BASELINE = no_baseline_test(TRAIN_REPORT.baseline)

SWEEP = """\
name: reported
executor: local
data: {image_size: 32, n_classes: 4, n_train: 64, n_val: 16, n_test: 8}
grid:
  band: [none, lsf]
  seed: [0, 1, 2]
stages:
  train:
    params: {width: 4, epochs: 1}
  cbm:
    params: {cbm_images: 8}
  attack:
    params:
      attack_version: custom
      attack_names: [apgd-ce]
      attack_eps: {Linf: [2/255, 8/255], L2: [0.5]}
      attack_shards: 2
"""
N = 8  # attacked images per model, 4 per shard
LINF = (2 / 255, 8 / 255)
TEST_ACCURACY = {"none": [0.80, 0.84, 0.78], "lsf": [0.70, 0.75, 0.71]}
# Correct images out of 8 per seed: clean, Linf 2/255, Linf 8/255, L2 0.5.
COUNTS = {"none": [(7, 5, 2, 4), (8, 6, 3, 5), (6, 4, 1, 3)],
          "lsf": [(6, 5, 3, 4), (8, 6, 5, 6), (7, 5, 3, 5)]}
MISSING_SHARD = ("lsf", 2, 1)  # band, seed, shard: never written
CORRUPT_CBM = ("none", 1)  # written for another point, with absurd numbers that must never show up
# bandwidth, centre, peak sensitivity, thresholds over the 4 bands of 32 px images (1.75 .. 14 c/img)
CBM = {"none": [(4.0, 7.0, 0.5, [0, 1, 3, 2]), (99.0, 99.0, 99.0, [4, 4, 4, 4]), (5.0, 9.0, 0.25, [1, 2, 3, 1])],
       "lsf": [(math.nan, math.nan, math.nan, [0, 0, 0, 0]), (3.0, 3.5, 1.0, [3, 2, 1, 0]),
               (3.4, 4.0, 0.5, [2, 3, 1, 0])]}


def points(plan: Plan, stage: str, band: str, seed: int) -> list:
    return [p for p in plan.stage(stage).points if p.labels["band"] == band and p.labels["seed"] == seed]


def flags(count: int, shift: int) -> np.ndarray:
    """`count` correct images out of N, spread over both shards."""
    return np.roll(np.arange(N) < count, shift)


def write_train(run: RunDir, plan: Plan, accuracy: dict[str, list[float]]) -> None:
    for band, values in accuracy.items():
        for seed, value in enumerate(values):
            (point,) = points(plan, "train", band, seed)
            write_point(run, "train", point.id, {"test_accuracy": value, "val_accuracy": value, "chance": 0.25})


def write_attack(run: RunDir, plan: Plan) -> None:
    settings = json.dumps([{"norm": "Linf", "eps": LINF[0]}, {"norm": "Linf", "eps": LINF[1]},
                           {"norm": "L2", "eps": 0.5}])
    for band, per_seed in COUNTS.items():
        for seed, (clean, r2, r8, l2) in enumerate(per_seed):
            curves = {"clean_correct": flags(clean, 0), f"robust_Linf_eps{LINF[0]:.6g}": flags(r2, 1),
                      f"robust_Linf_eps{LINF[1]:.6g}": flags(r8, 3), "robust_L2_eps0.5": flags(l2, 6)}
            for point in points(plan, "attack", band, seed):
                shard = point.labels["attack_shard"]
                if (band, seed, shard) == MISSING_SHARD:
                    continue
                part = {name: value[4 * shard:4 * shard + 4] for name, value in curves.items()}
                write_point(run, "attack", point.id, {"images": 4}, part,
                            {"upstream": point.upstream[0], "shard": shard, "shards": 2, "settings": settings})


def write_cbm(run: RunDir, plan: Plan) -> None:
    for band, per_seed in CBM.items():
        for seed, (bandwidth, centre, peak, thresholds) in enumerate(per_seed):
            (point,) = points(plan, "cbm", band, seed)
            claims = points(plan, "cbm", band, 0)[0].id if (band, seed) == CORRUPT_CBM else None
            write_point(run, "cbm", point.id,
                        {"bandwidth_octaves": bandwidth, "centre_cpi": centre, "peak_sensitivity": peak,
                         "clean_grayscale_accuracy": 0.9},
                        {"thresholds": np.array(thresholds), "band_centres_cpi": [1.75, 3.5, 7.0, 14.0],
                         "accuracy": np.full((5, 4), 0.5), "noise_sds": [0, 0.02, 0.04, 0.08, 0.16]},
                        {"upstream": point.upstream[0]}, claims=claims)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """The band [none, lsf] x seed [0, 1, 2] run with every stage, its report written once."""
    run, plan = make_run(tmp_path_factory.mktemp("report") / "lab's runs", SWEEP)
    write_train(run, plan, TEST_ACCURACY)
    write_attack(run, plan)
    write_cbm(run, plan)
    files = write_report(run)
    return run, plan, files


def rows_of(files) -> dict[tuple[str, str], object]:
    return {(r.condition, r.metric): r for r in files.report.rows}


def model_of(files, plan: Plan, band: str, seed: int):
    (point,) = points(plan, "train", band, seed)
    return next(m for m in files.report.models if m.point == point.id)


def test_shards_merge_to_the_hand_count(full_run):
    run, plan, files = full_run
    shard_paths = [run.result_path("attack", p.id) for p in points(plan, "attack", "none", 0)]
    merged = merge_attack_shards(shard_paths)
    assert merged.images == N and merged.clean_accuracy == 7 / 8
    assert merged.robust_accuracy == {("Linf", LINF[0]): 5 / 8, ("Linf", LINF[1]): 2 / 8, ("L2", 0.5): 4 / 8}
    values = model_of(files, plan, "none", 0).values
    assert values["attack_clean_accuracy"] == 7 / 8
    assert values[f"robust_accuracy_Linf_eps{LINF[1]:.6g}"] == 2 / 8
    assert values["robust_accuracy_L2_eps0.5"] == 4 / 8


def test_auc_is_the_average_accuracy_over_eps(full_run):
    assert accuracy_auc(1.0, {0.5: 0.5, 1.0: 0.0}) == pytest.approx(0.5)
    assert accuracy_auc(0.8, {0.25: 0.8}) == pytest.approx(0.8)  # a flat curve averages to itself
    _, plan, files = full_run
    for band, per_seed in COUNTS.items():
        for seed, (clean, r2, r8, l2) in enumerate(per_seed):
            if (band, seed) == MISSING_SHARD[:2]:
                continue
            c, a, b, l2 = clean / N, r2 / N, r8 / N, l2 / N
            linf = (LINF[0] * (c + a) / 2 + (LINF[1] - LINF[0]) * (a + b) / 2) / LINF[1]
            values = model_of(files, plan, band, seed).values
            assert values["auc_Linf"] == pytest.approx(linf)
            assert values["auc_L2"] == pytest.approx((c + l2) / 2)


def hand_values(metric: str) -> dict[str, dict[int, float]]:
    """Per condition, seed -> value as the test data define it (missing shard and corrupt file left out)."""
    column = {"test_accuracy": None, "attack_clean_accuracy": 0, f"robust_accuracy_Linf_eps{LINF[0]:.6g}": 1,
              f"robust_accuracy_Linf_eps{LINF[1]:.6g}": 2, "robust_accuracy_L2_eps0.5": 3,
              "bandwidth_octaves": 0, "centre_cpi": 1, "peak_sensitivity": 2}[metric]
    out = {}
    for band in ("none", "lsf"):
        if metric == "test_accuracy":
            out[band] = dict(enumerate(TEST_ACCURACY[band]))
        elif metric in ("bandwidth_octaves", "centre_cpi", "peak_sensitivity"):
            out[band] = {s: v[column] for s, v in enumerate(CBM[band])
                         if (band, s) != CORRUPT_CBM and math.isfinite(v[column])}
        else:
            out[band] = {s: v[column] / N for s, v in enumerate(COUNTS[band]) if (band, s) != MISSING_SHARD[:2]}
    return out


@pytest.mark.parametrize("metric", ["test_accuracy", "attack_clean_accuracy", f"robust_accuracy_Linf_eps{LINF[1]:.6g}",
                                    "robust_accuracy_L2_eps0.5", "bandwidth_octaves", "centre_cpi"])
def test_mean_sem_and_paired_test_equal_scipy(full_run, metric):
    _, _, files = full_run
    rows = rows_of(files)
    values = hand_values(metric)
    for band in ("none", "lsf"):
        row = rows[(f"band={band}", metric)]
        seeds = values[band]
        assert row.n == len(seeds)
        assert row.mean == pytest.approx(np.mean(list(seeds.values())))
        assert row.sem == pytest.approx(stats.sem(list(seeds.values())), nan_ok=True)
        assert row.baseline == "band=none"
    lsf = rows[("band=lsf", metric)]
    paired = sorted(set(values["lsf"]) & set(values["none"]))
    assert lsf.pairs == len(paired) and lsf.test == TEST_NAME
    a, b = [values["lsf"][s] for s in paired], [values["none"][s] for s in paired]
    assert lsf.delta == pytest.approx(np.mean(np.subtract(a, b)))
    if len(paired) >= 2:
        assert lsf.p_value == pytest.approx(stats.ttest_rel(a, b).pvalue)
    else:
        assert math.isnan(lsf.p_value)
    assert lsf.baseline_mean == pytest.approx(np.mean(list(values["none"].values())))


def test_model_with_a_missing_shard_is_incomplete_and_left_out(full_run):
    _, plan, files = full_run
    band, seed, shard = MISSING_SHARD
    model = model_of(files, plan, band, seed)
    assert not any(key.startswith(("robust_", "auc_", "attack_")) for key in model.values)
    assert "test_accuracy" in model.values
    incomplete = [p for p in files.report.problems if p["state"] == "incomplete"]
    assert [p["point"] for p in incomplete] == [f"train/{model.point}"]
    assert f"shard {shard}: missing" in incomplete[0]["reason"]
    rows = rows_of(files)
    assert rows[("band=lsf", "auc_Linf")].n == 2 and rows[("band=lsf", "test_accuracy")].n == 3
    assert f"train/{model.point}" in files.report_md.read_text()


def test_corrupt_result_is_listed_and_never_read(full_run):
    _, plan, files = full_run
    (point,) = points(plan, "cbm", *CORRUPT_CBM)
    (problem,) = [p for p in files.report.problems if p["point"] == point.id]
    assert problem["state"] == "corrupt" and "made for point" in problem["reason"]
    assert not any(v == 99.0 for m in files.report.models for v in m.values.values())
    assert rows_of(files)[("band=none", "bandwidth_octaves")].n == 2
    assert point.id in files.report_md.read_text()


def test_unfitted_channel_counts_not_in_n(full_run):
    _, _, files = full_run
    row = rows_of(files)[("band=lsf", "bandwidth_octaves")]
    assert row.n == 2 and row.mean == pytest.approx(3.2)
    assert row.pairs == 1 and row.delta == pytest.approx(3.4 - 5.0) and math.isnan(row.p_value)


def test_report_markdown_has_tables_test_and_figures(full_run):
    run, _, files = full_run
    text = files.report_md.read_text()
    assert text.startswith("# Report: reported")
    assert "6 trained models with a valid result, of 6 planned, in 2 conditions" in text
    for title in ("## Accuracy and robust accuracy", "## Area under the accuracy-ε curve", "## CBM channel"):
        assert title in text
    assert text.count("| metric | condition | n | mean ± SEM | Δ vs baseline | p |") == 3
    assert text.count(f"Test: {TEST_NAME}.") == 3
    assert "divided by ε_max" in text and "in [0, 1]" in text
    assert "| robust accuracy, L∞ ε=8/255 px | band=none | 3 |" in text
    lsf_auc = next(r for r in files.report.rows if r.condition == "band=lsf" and r.metric == "auc_Linf")
    assert (f"{lsf_auc.mean:.3f} ± {lsf_auc.sem:.3f} | {lsf_auc.delta:+.3f} | {lsf_auc.p_value:.3f} "
            f"(df {lsf_auc.pairs - 1}) |") in text
    # two paired seeds: df 1, and the report says that is too few for a test to inform
    assert lsf_auc.pairs == 2 and "tests have df below 3" in text and "too few seeds for such a test to inform" in text
    links = re.findall(r"!\[[^\]]*\]\((figures/[^)]+)\)", text)
    assert sorted(links) == [f"figures/{CBM_FIGURE}", f"figures/{ROBUST_FIGURE}"]
    assert sorted(files.figures) == sorted(run.path / link for link in links)
    for path in files.figures:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
    assert "## Problems" in text and "incomplete" in text and "corrupt" in text


def test_conditions_csv_holds_every_row(full_run):
    _, _, files = full_run
    lines = list(csv.DictReader(io.StringIO(files.conditions_csv.read_text())))
    assert list(lines[0])[:5] == ["condition", "metric", "n", "mean", "sem"]
    assert {"baseline_mean", "delta", "p_value", "test"} <= set(lines[0])
    assert len(lines) == len(files.report.rows) == 2 * len(files.report.metrics)
    for line, row in zip(lines, files.report.rows, strict=True):
        assert (line["condition"], line["metric"], int(line["n"])) == (row.condition, row.metric, row.n)
        assert float(line["mean"]) == row.mean
        assert line["p_value"] == ("" if math.isnan(row.p_value) else repr(row.p_value))
    baseline = next(line for line in lines if line["condition"] == "band=none")
    assert baseline["delta"] == "" and baseline["test"] == "(baseline)"


def test_headline_rows(full_run):
    _, _, files = full_run
    header, rows = headline_rows(files.report)
    assert header == ["condition", "n", "clean acc", "L∞ ε=8/255 px", "AUC L∞", "L2 ε=0.5 px", "AUC L2",
                      "CBM bandwidth (octaves)", "CBM centre (c/img)"]
    assert [row[:2] for row in rows] == [["band=none", "3"], ["band=lsf", "3"]]
    assert rows[1][3] == f"{np.mean([3 / 8, 5 / 8]):.3f} ± {stats.sem([3 / 8, 5 / 8]):.3f}"


TRAIN_ONLY = """\
name: {name}
executor: local
data: {{image_size: 32, n_classes: 4, n_train: 64, n_val: 16, n_test: 8}}
grid:
{grid}
stages:
  train:
    params: {{width: 4, epochs: 1}}
"""


def test_without_a_baseline_the_report_says_so(tmp_path: Path):
    run, plan = make_run(tmp_path, TRAIN_ONLY.format(name="nobase", grid="  band: [lsf]\n  seed: [0, 1]"))
    write_train(run, plan, {"lsf": [0.7, 0.6]})
    files = write_report(run)
    text = files.report_md.read_text()
    assert "No baseline condition (band=none, alpha=0)" in text and "Test: none (no baseline condition)" in text
    assert "| clean test accuracy | band=lsf | 2 | 0.650 ± 0.050 | no baseline | n/a |" in text
    assert all(r.test == NO_BASELINE and r.baseline is None for r in files.report.rows)
    assert files.figures == [] and not (run.path / "figures").exists()
    assert "the `attack` stage provides its data" in text and "the `cbm` stage provides its data" in text
    assert "## Problems" in text and "None: every planned point has a valid result." in text


PREDICTORS_ONLY = """\
name: predictors
executor: local
data: {image_size: 32, n_classes: 4, n_train: 64, n_val: 16, n_test: 8, neural: {n_images: 40, n_shared: 10}}
grid: {roi: [V1, TO]}
stages:
  predictor: {params: {predictor_width: 4, predictor_epochs: 1}}
"""


def test_a_sweep_without_a_train_stage_has_a_report_without_conditions(tmp_path: Path):
    run, plan = make_run(tmp_path, PREDICTORS_ONLY)
    write_point(run, "predictor", plan.stage("predictor").points[0].id, {"val_pearson_mean": 0.3})
    files = write_report(run)
    text = files.report_md.read_text()
    assert files.report.rows == [] and files.figures == []
    assert "0 trained models" in text and "## Accuracy" not in text
    assert len(files.report.problems) == 1  # the predictor without a result
    assert files.conditions_csv.read_text().splitlines() == [CONDITIONS_HEADER]
    for stage in ("attack", "cbm", "rsa"):
        assert f"the `{stage}` stage provides its data, and this sweep has no such stage" in text
    assert headline_rows(files.report) == (["condition", "n"], [])


CONDITIONS_HEADER = "condition,metric,n,mean,sem,baseline,baseline_mean,pairs,delta,p_value,test"
WITHOUT_ATTACK = """\
name: noattack
executor: local
data: {image_size: 32, n_classes: 4, n_train: 64, n_val: 16, n_test: 8}
grid:
  band: [none, lsf]
  seed: [0, 1, 2]
stages:
  train:
    params: {width: 4, epochs: 1}
  cbm:
    params: {cbm_images: 8}
"""


def metrics_in(files) -> list[str]:
    return list(dict.fromkeys(line["metric"] for line in csv.DictReader(io.StringIO(files.conditions_csv.read_text()))))


def test_a_sweep_without_an_attack_stage_reports_the_rest(tmp_path: Path):
    run, plan = make_run(tmp_path, WITHOUT_ATTACK)
    write_train(run, plan, TEST_ACCURACY)
    write_cbm(run, plan)
    files = write_report(run)
    text = files.report_md.read_text()
    assert metrics_in(files) == ["test_accuracy", "bandwidth_octaves", "centre_cpi", "peak_sensitivity",
                                 "clean_grayscale_accuracy"]
    assert "## Accuracy and robust accuracy" in text and "## CBM channel" in text and "## Area under" not in text
    assert "AutoAttack" not in text  # the attack stage's caption comes with its numbers only
    assert "No figure figures/robust_accuracy.png: the `attack` stage provides its data, and this sweep has no such " \
           "stage" in text
    assert "No figure figures/rsa_per_roi.png: the `rsa` stage provides its data, and this sweep has no such " \
           "stage" in text
    assert [p.name for p in files.figures] == [CBM_FIGURE] and f"](figures/{CBM_FIGURE})" in text
    header, rows = headline_rows(files.report)
    assert header == ["condition", "n", "clean acc", "CBM bandwidth (octaves)", "CBM centre (c/img)"]
    assert rows[1][:4] == ["band=lsf", "3", f"{np.mean(TEST_ACCURACY['lsf']):.3f} ± "
                           f"{stats.sem(TEST_ACCURACY['lsf']):.3f}", "3.20 ± 0.20"]
    assert [p["state"] for p in files.report.problems] == ["corrupt"]  # CORRUPT_CBM


WITH_RSA = """\
name: withrsa
executor: local
data: {image_size: 32, n_classes: 4, n_train: 64, n_val: 16, n_test: 8, neural: {n_images: 40, n_shared: 10}}
grid:
  band: [none, lsf]
  seed: [0, 1]
stages:
  train:
    params: {width: 4, epochs: 1}
  rsa:
    params: {rsa_permutations: 0}
"""
RHO = {"none": [0.10, 0.20], "lsf": [0.30, 0.50]}  # pooled layer, V1; TO is half of it, the neural head a third
CEILING = {"V1": 40.0, "TO": 20.0}
RDM_CEILING = {"V1": (0.3, 0.7), "TO": (0.2, 0.5)}  # lower and upper bound, in rho


def write_rsa(run: RunDir, plan: Plan) -> None:
    for band, per_seed in RHO.items():
        for seed, rho in enumerate(per_seed):
            (point,) = points(plan, "rsa", band, seed)
            metrics = {"n_subjects": 1, "n_images": 10}
            for roi, scale in (("V1", 1.0), ("TO", 0.5)):
                metrics |= {rho_metric("pooled", roi): rho * scale, rho_metric("neural_head", roi): rho * scale / 3,
                            noise_ceiling_metric(roi): CEILING[roi], rdm_ceiling_lower_metric(roi): RDM_CEILING[roi][0],
                            rdm_ceiling_upper_metric(roi): RDM_CEILING[roi][1]}
            write_point(run, "rsa", point.id, metrics, {}, {"upstream": point.upstream[0]})


def test_a_sweep_with_train_and_rsa_only_reports_rho_per_roi(tmp_path: Path):
    run, plan = make_run(tmp_path, WITH_RSA)
    write_train(run, plan, {band: values[:2] for band, values in TEST_ACCURACY.items()})
    write_rsa(run, plan)
    files = write_report(run)
    text = files.report_md.read_text()
    assert metrics_in(files) == ["test_accuracy", "rsa_rho_pooled_V1", "rsa_rho_pooled_TO", "rsa_rho_neural_head_V1",
                                 "rsa_rho_neural_head_TO"]
    assert "## Similarity to human neural geometry (RSA)" in text and "## CBM channel" not in text
    assert "| RSA ρ V1, pooled layer (RDM ceiling 0.300–0.700) | band=none | 2 | 0.150 ± 0.050 | baseline |  |" in text
    assert "RSA ρ TO, neural head (RDM ceiling 0.200–0.500)" in text and "40.0%" not in text
    lsf = rows_of(files)[("band=lsf", "rsa_rho_pooled_V1")]
    assert lsf.pairs == 2 and lsf.delta == pytest.approx(0.25) and lsf.p_value == pytest.approx(
        stats.ttest_rel(RHO["lsf"], RHO["none"]).pvalue)
    assert [p.name for p in files.figures] == [RSA_FIGURE] and f"](figures/{RSA_FIGURE})" in text
    for stage in ("attack", "cbm"):
        assert f"the `{stage}` stage provides its data, and this sweep has no such stage" in text
    header, rows = headline_rows(files.report)
    assert header == ["condition", "n", "clean acc", "RSA ρ V1", "RSA ρ TO"]
    assert rows[0][3:] == ["0.150 ± 0.050", "0.075 ± 0.025"]
    assert files.report.problems == [] and "None: every planned point has a valid result." in text


def test_each_value_of_another_axis_has_its_own_baseline(tmp_path: Path):
    grid = "  band: [none, lsf]\n  lr: [0.1, 0.05]\n  seed: [0, 1]"
    run, plan = make_run(tmp_path, TRAIN_ONLY.format(name="lrs", grid=grid))
    report = build_report(run)
    assert baselines(report.models, report.baseline) == {"band=none, lr=0.1": "band=none, lr=0.1",
                                        "band=none, lr=0.05": "band=none, lr=0.05",
                                        "band=lsf, lr=0.1": "band=none, lr=0.1",
                                        "band=lsf, lr=0.05": "band=none, lr=0.05"}
    assert all(r.n == 0 for r in report.rows)  # nothing written yet: every train point is listed as missing
    assert len(report.problems) == 8


PROBE = """
import sys
from sfhpc.report import write_report
from sfhpc.rundir import RunDir
write_report(RunDir(sys.argv[1]))
print("HEAVY:" + ",".join(m for m in ("torch", "matplotlib") if m in sys.modules))
"""


def test_report_does_not_import_torch(full_run, tmp_path: Path):
    run, _, _ = full_run
    out = subprocess.run([sys.executable, "-c", PROBE, str(run.path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "HEAVY:matplotlib"  # figures drawn, torch never imported
    light, plan = make_run(tmp_path, TRAIN_ONLY.format(name="light", grid="  band: [none]\n  seed: [0]"))
    write_train(light, plan, {"none": [0.5]})
    out = subprocess.run([sys.executable, "-c", PROBE, str(light.path)], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == "HEAVY:"  # nothing to draw: not even matplotlib


def test_a_stage_without_results_yet_draws_no_figure_and_says_why(tmp_path: Path):
    run, plan = make_run(tmp_path, SWEEP)
    write_train(run, plan, TEST_ACCURACY)
    files = write_report(run)
    text = files.report_md.read_text()
    assert files.figures == [] and "](figures/" not in text
    assert "no model has a complete `attack` result yet" in text and "no model has a complete `cbm` result yet" in text
    assert sum(p["state"] == "incomplete" for p in files.report.problems) == 6


def test_paired_t_p_value_equals_scipy_ttest_rel():
    from sfhpc.report import paired_t_p_value

    rng = np.random.default_rng(0)
    for n in (2, 3, 5, 10):
        for _ in range(50):
            a, b = rng.normal(size=n), rng.normal(size=n)
            assert paired_t_p_value(a - b) == pytest.approx(stats.ttest_rel(a, b).pvalue, rel=1e-9, abs=1e-12)
    assert paired_t_p_value(np.full(3, 0.5)) == 0.0  # equal, non-zero differences: scipy's t is inf, p is 0
    assert np.isnan(paired_t_p_value(np.zeros(3)))
