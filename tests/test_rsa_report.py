"""The rsa stage's part of the report: every rho labelled with its RDM noise ceiling (lower–upper, per variant),
the rho against the single-repeat RDMs, the table of the data (voxels, PCs, voxel noise ceiling in %), the figure's
ceiling band; results written before the ceiling existed still report. Run folders are made by hand (a manifest from
a real sweep expansion, rsa results with chosen numbers): no training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_report_runs import make_run, write_point

from sfhpc.report import build_report, write_report
from sfhpc.rundir import RunDir
from sfhpc.stages.rsa import (
    DATA_CURVE_PREFIX,
    ROI_PATTERNS_ATTR,
    RoiDataRow,
    data_rows_from_curves,
    data_rows_to_curves,
    noise_ceiling_metric,
    rdm_ceiling_lower_metric,
    rdm_ceiling_upper_metric,
    rho_metric,
    rho_repeats_metric,
)
from sfhpc.stages.rsa import report as rsa_report
from sfhpc.sweep import Plan

SWEEP = """\
name: rsaceiling
executor: local
data: {{image_size: 32, n_classes: 4, n_train: 64, n_val: 16, n_test: 8, neural: {{n_images: 40, n_shared: 10}}}}
grid:
  band: [none, lsf]
  seed: [0, 1]
{axis}stages:
  train:
    params: {{width: 4, epochs: 1}}
  rsa:
    params: {{rsa_permutations: 0}}
"""
RHO = {"none": [0.10, 0.20], "lsf": [0.30, 0.50]}  # pooled layer; the single-repeat rho is 60% of it
# (subject, ROI) -> voxels, PCs, voxel noise ceiling (%), RDM ceiling (lower, upper) of the PCA-score RDM
DATA = {("subj01", "V1"): (300, 12, 31.1, (0.30, 0.70)), ("subj01", "TO"): (130, 9, 43.0, (0.50, 0.80)),
        ("subj02", "V1"): (290, 11, 29.0, (0.20, 0.60)), ("subj02", "TO"): (120, 8, 40.0, (0.40, 0.70))}
VOXEL_RDM_SHIFT = -0.1  # the voxel RDM's ceilings, where a sweep has both
SUBJECTS = ("subj01", "subj02")


def data_rows(shift: float = 0.0) -> list[RoiDataRow]:
    return [RoiDataRow(subject=subject, roi=roi, voxels=voxels, components=pcs, voxel_noise_ceiling=voxel_ceiling,
                       images=98, shared_images=100, ceiling_lower=lower + shift, ceiling_upper=upper + shift)
            for (subject, roi), (voxels, pcs, voxel_ceiling, (lower, upper)) in DATA.items()]


def rsa_result(rho: float, rows: list[RoiDataRow]) -> dict:
    """The scalars the stage writes: means over the subjects of each rho, RDM ceiling bound and voxel ceiling."""
    metrics: dict[str, float] = {"n_subjects": len(SUBJECTS), "n_images": 98}
    for roi, scale in (("V1", 1.0), ("TO", 0.5)):
        per_roi = [row for row in rows if row.roi == roi]
        metrics |= {rho_metric("pooled", roi): rho * scale, rho_repeats_metric("pooled", roi): 0.6 * rho * scale,
                    rdm_ceiling_lower_metric(roi): float(np.mean([row.ceiling_lower for row in per_roi])),
                    rdm_ceiling_upper_metric(roi): float(np.mean([row.ceiling_upper for row in per_roi])),
                    noise_ceiling_metric(roi): float(np.mean([row.voxel_noise_ceiling for row in per_roi]))}
    return metrics


def write_rsa(run: RunDir, plan: Plan, with_ceiling: bool = True) -> None:
    """Every rsa point's result; without the ceiling: as the stage wrote them before it had one."""
    for point in plan.stage("rsa").points:
        band, seed = point.labels["band"], point.labels["seed"]
        patterns = point.labels.get("rsa_roi_patterns", "pca_scores")
        rows = data_rows(VOXEL_RDM_SHIFT if patterns == "voxels" else 0.0)
        metrics = rsa_result(RHO[band][seed], rows)
        if not with_ceiling:
            metrics = {name: value for name, value in metrics.items() if "ceiling" not in name and "repeats" not in
                       name} | {noise_ceiling_metric(roi): 40.0 for roi in ("V1", "TO")}
        write_point(run, "rsa", point.id, metrics, data_rows_to_curves(rows) if with_ceiling else {},
                    {"upstream": point.upstream[0], **({ROI_PATTERNS_ATTR: patterns} if with_ceiling else {})})


def write_train(run: RunDir, plan: Plan) -> None:
    for point in plan.stage("train").points:
        write_point(run, "train", point.id, {"test_accuracy": 0.8, "val_accuracy": 0.8, "chance": 0.25})


def reported_run(folder: Path, axis: str = "", with_ceiling: bool = True) -> tuple[RunDir, Plan]:
    run, plan = make_run(folder, SWEEP.format(axis=axis))
    write_train(run, plan)
    write_rsa(run, plan, with_ceiling)
    return run, plan


def test_every_rho_row_names_its_rdm_ceiling_and_no_voxel_ceiling(tmp_path: Path):
    run, _ = reported_run(tmp_path)
    files = write_report(run)
    text = files.report_md.read_text()
    # V1's ceiling: the mean over the two subjects, 0.30-0.70 and 0.20-0.60
    assert "| RSA ρ V1, pooled layer (RDM ceiling 0.250–0.650) | band=none | 2 | 0.150 ± 0.050 | baseline |  |" in text
    assert "| RSA ρ TO, pooled layer (RDM ceiling 0.450–0.750) | band=none | 2 | 0.075 ± 0.025 |" in text
    assert "| RSA ρ V1 vs single-repeat RDMs, pooled layer (RDM ceiling 0.250–0.650) | band=none | 2 | 0.090 ± " \
           "0.030 |" in text
    table = text.split("**The data compared with.**")[1]
    assert "| subj01 | V1 | 300 | 12 | 31.1 | 98 of 100 | pca_scores | 0.300–0.700 |" in table
    assert table.index("| subj02 | TO |") < table.index("![rsa per roi]")  # after the rho table, before the figure
    assert "noise ceiling 3" not in text and "%)" not in text.split("## Similarity")[1].split("\n\n")[2]
    assert files.report.problems == []


def test_the_table_of_the_data_has_each_subject_and_roi_once(tmp_path: Path):
    run, _ = reported_run(tmp_path)
    table = rsa_report.data_table(build_report(run))
    lines = [line for line in table.splitlines() if line.startswith("| subj0")]
    assert lines == ["| subj01 | V1 | 300 | 12 | 31.1 | 98 of 100 | pca_scores | 0.300–0.700 |",
                     "| subj01 | TO | 130 | 9 | 43.0 | 98 of 100 | pca_scores | 0.500–0.800 |",
                     "| subj02 | V1 | 290 | 11 | 29.0 | 98 of 100 | pca_scores | 0.200–0.600 |",
                     "| subj02 | TO | 120 | 8 | 40.0 | 98 of 100 | pca_scores | 0.400–0.700 |"]
    assert "| subject | ROI | voxels | PCs | voxel noise ceiling (%) |" in table and "not in ρ's units" in table


def test_each_roi_pattern_variant_has_its_own_ceiling_and_table_rows(tmp_path: Path):
    run, _ = reported_run(tmp_path, axis="  rsa_roi_patterns: [pca_scores, voxels]\n")
    report = build_report(run)
    labels = {metric.key: metric.label for metric in report.metrics.values()}
    assert labels["rsa_rho_pooled_V1[rsa_roi_patterns=pca_scores]"] == \
        "RSA ρ V1, pooled layer (RDM ceiling 0.250–0.650) (rsa_roi_patterns=pca_scores)"
    assert labels["rsa_rho_pooled_V1[rsa_roi_patterns=voxels]"] == \
        "RSA ρ V1, pooled layer (RDM ceiling 0.150–0.550) (rsa_roi_patterns=voxels)"
    table = rsa_report.data_table(report)
    assert "| subj01 | V1 | 300 | 12 | 31.1 | 98 of 100 | voxels | 0.200–0.600 |" in table
    assert len([line for line in table.splitlines() if line.startswith("| subj0")]) == 8


def test_results_without_a_ceiling_still_report(tmp_path: Path):
    run, _ = reported_run(tmp_path, with_ceiling=False)
    files = write_report(run)
    text = files.report_md.read_text()
    assert "| RSA ρ V1, pooled layer (no RDM ceiling) | band=none | 2 | 0.150 ± 0.050 |" in text
    assert "single-repeat" not in text.split("## Similarity")[1].split("\n\n")[2]  # no such rows
    assert rsa_report.data_table(files.report) == ""
    assert [path.name for path in files.figures] == [rsa_report.RSA_FIGURE]


def test_a_result_with_a_broken_table_of_the_data_is_listed_and_not_used(tmp_path: Path):
    run, plan = reported_run(tmp_path)
    point = next(p for p in plan.stage("rsa").points if p.labels == {"band": "lsf", "seed": 1})
    curves = data_rows_to_curves(data_rows())
    del curves[DATA_CURVE_PREFIX + "voxels"]
    write_point(run, "rsa", point.id, rsa_result(9.0, data_rows()), curves, {"upstream": point.upstream[0]})
    report = build_report(run)
    assert [(p["point"], p["state"]) for p in report.problems] == [(point.id, "corrupt")]
    assert "data_voxels" in report.problems[0]["reason"]
    assert report.row("band=lsf", "rsa_rho_pooled_V1").n == 1  # the other seed; never the 9.0


def test_the_figure_shows_the_ceiling_band_beside_the_rho_against_single_repeats(tmp_path: Path, monkeypatch):
    run, _ = reported_run(tmp_path)
    drawn = []
    monkeypatch.setattr(rsa_report, "save_figure", lambda fig, path: drawn.append(fig))
    assert rsa_report.draw_rsa_per_roi(build_report(run), tmp_path / "rsa.png")
    (fig,) = drawn
    averages, single_repeats = fig.axes[:2]
    assert averages.get_ylabel() == "Spearman ρ (model vs ROI RDM)" and not averages.patches
    bands = [(patch.get_y(), patch.get_y() + patch.get_height()) for patch in single_repeats.patches]
    assert bands == [pytest.approx((0.25, 0.65)), pytest.approx((0.45, 0.75))]  # V1, TO


def test_without_a_ceiling_the_figure_has_one_panel_and_no_band(tmp_path: Path, monkeypatch):
    run, _ = reported_run(tmp_path, with_ceiling=False)
    drawn = []
    monkeypatch.setattr(rsa_report, "save_figure", lambda fig, path: drawn.append(fig))
    assert rsa_report.draw_rsa_per_roi(build_report(run), tmp_path / "rsa.png")
    (fig,) = drawn
    assert len(fig.axes) == 1 and not fig.axes[0].patches


def test_the_table_of_the_data_round_trips_through_its_curves():
    rows = data_rows()
    assert data_rows_from_curves(data_rows_to_curves(rows)) == rows
    assert data_rows_from_curves({}) == []
