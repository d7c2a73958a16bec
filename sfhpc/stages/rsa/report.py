"""What the rsa stage adds to the report (torch-free): each model's Spearman rho per (layer, ROI), ROIs in hierarchy
order, each labelled with the ROI's mean noise ceiling; the per-ROI figure; the terminal's pooled-layer rho of the
earliest and the latest ROI. matplotlib is imported when the figure is drawn.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np

from sfhpc.config import ROIS
from sfhpc.report.figures import new_figure, plot_conditions, save_figure
from sfhpc.report.model import (
    Collection,
    Column,
    Family,
    FigureSpec,
    Metric,
    Report,
    StageReport,
    variant_key,
    variant_label,
)
from sfhpc.stages.rsa import LAYERS, POOLED_LAYER, SPEC, noise_ceiling_metric, rho_metric

FAMILY = "rsa"
RSA_FIGURE = "rsa_per_roi.png"
CEILINGS = "noise_ceilings"  # Report.extras[rsa][CEILINGS]: ROI -> mean noise ceiling (%) over the rsa results


def report_metric(layer: str, roi: str) -> str:
    """The report's name of a layer's rho against an ROI (conditions.csv: rsa_rho_pooled_V1)."""
    return f"{SPEC.name}_{rho_metric(layer, roi)}"


def collect(collection: Collection) -> None:
    """Each model's rho per (layer, ROI) from its rsa result's scalars; the metric rows in layer, then hierarchy
    order, labelled with the ROI's mean noise ceiling over the results (kept in extras for the figure)."""
    ceilings: dict[str, list[float]] = {}
    found: set[tuple[str, str, str]] = set()
    for point in collection.points:
        scalars = collection.result_scalars(point)
        if scalars is None:
            continue  # listed by summarize
        model, variant = collection.model_and_variant(point)
        for layer, roi in itertools.product(LAYERS, ROIS):
            if rho_metric(layer, roi) in scalars:
                model.values[variant_key(report_metric(layer, roi), variant)] = float(scalars[rho_metric(layer, roi)])
                ceilings.setdefault(roi, []).append(float(scalars[noise_ceiling_metric(roi)]))
                found.add((layer, roi, variant))
    mean_ceilings = {roi: float(np.mean(values)) for roi, values in ceilings.items()}
    for layer, roi in itertools.product(LAYERS, ROIS):
        for variant in sorted({v for l_, r, v in found if (l_, r) == (layer, roi)}):
            key = variant_key(report_metric(layer, roi), variant)
            label = f"RSA ρ {roi}, {LAYERS[layer]} (noise ceiling {mean_ceilings[roi]:.1f}%)"
            collection.metrics[key] = Metric(key, variant_label(label, variant), FAMILY)
    collection.extras[CEILINGS] = mean_ceilings


def _pooled_rois(report: Report) -> list[str]:
    """The ROIs (hierarchy order) whose pooled-layer rho the report has, without a variant."""
    return [roi for roi in ROIS if report_metric(POOLED_LAYER, roi) in report.metrics]


def headline(report: Report) -> list[Column]:
    """The pooled layer's rho of the earliest and of the latest ROI."""
    rois = _pooled_rois(report)
    earliest_and_latest = rois[:1] + (rois[-1:] if len(rois) > 1 else [])
    return [Column(f"RSA ρ {roi}", report_metric(POOLED_LAYER, roi)) for roi in earliest_and_latest]


def draw_rsa_per_roi(report: Report, path: Path) -> bool:
    """Pooled-layer rho per ROI (hierarchy order) per condition, with the ROIs' noise ceilings as grey bars on a
    second axis. Returns False (and draws nothing) when no model has an rsa result."""
    rois = _pooled_rois(report)
    if not rois:
        return False
    x = np.arange(len(rois))
    fig = new_figure(7.5, 4.0)
    ax = fig.subplots()
    ceiling_ax = ax.twinx()
    ceilings = [report.extras[SPEC.name][CEILINGS][roi] for roi in rois]
    ceiling_ax.bar(x, ceilings, width=0.6, color="0.85", zorder=0)
    ceiling_ax.set_ylabel("noise ceiling (%)")
    ceiling_ax.set_ylim(0, max(100.0, max(ceilings) * 1.1))
    ax.set_zorder(ceiling_ax.get_zorder() + 1)
    ax.patch.set_visible(False)
    plot_conditions(ax, report, x, [report_metric(POOLED_LAYER, roi) for roi in rois])
    ax.axhline(0, color="k", linewidth=0.8)
    ax.set_xticks(x, rois)
    ax.set_xlabel("ROI (ventral hierarchy)")
    ax.set_ylabel("Spearman ρ (model vs ROI RDM)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", title="condition", title_fontsize="small")
    save_figure(fig, path)
    return True


REPORT = StageReport(
    families=(Family(FAMILY, "Similarity to human neural geometry (RSA)",
                     "Spearman ρ between the model's RDM (1 - Pearson r of features on the subject's shared validation "
                     "images) and each ROI's RDM (z-scored repeat averages), averaged over the subjects each model is "
                     "compared with; the ROI's mean noise ceiling (NSD method, %) is in the metric's name. Per-model "
                     "permutation p-values are in each rsa result file."),),
    collect=collect,
    figures=(FigureSpec(RSA_FIGURE, FAMILY, "RSA ρ of the pooled layer per ROI in hierarchy order (mean ± SEM over "
                        "seeds), one line per condition; grey bars: the ROI's mean noise ceiling (%, right axis).",
                        draw_rsa_per_roi),),
    headline=headline,
)
