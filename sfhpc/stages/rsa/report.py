"""What the rsa stage adds to the report (torch-free): each model's Spearman rho per (layer, ROI), ROIs in hierarchy
order, each labelled with the ROI RDM's noise ceiling (lower-upper, in rho's units); the models' rho against the
single-repeat RDMs, the quantity that ceiling bounds; the table of the data (per subject and ROI: voxels, PCs, the
voxel noise ceiling in %, images, the RDM ceiling); the per-ROI figure; the terminal's pooled-layer rho of the
earliest and the latest ROI. h5py is imported when results are read, matplotlib when the figure is drawn.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sfhpc.config import ROIS
from sfhpc.report.figures import figure_legend, new_figure, plot_conditions, save_figure
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
from sfhpc.report.render import markdown_table
from sfhpc.stages.rsa import (
    LAYERS,
    POOLED_LAYER,
    ROI_PATTERNS_ATTR,
    SPEC,
    RoiDataRow,
    data_rows_from_curves,
    rdm_ceiling_lower_metric,
    rdm_ceiling_upper_metric,
    rho_metric,
    rho_repeats_metric,
)

FAMILY = "rsa"
RSA_FIGURE = "rsa_per_roi.png"
# Report.extras[rsa][CEILINGS]: (ROI, variant) -> (lower, upper) RDM noise ceiling, mean over the rsa results
CEILINGS = "rdm_ceilings"
DATA = "data"  # Report.extras[rsa][DATA]: (subject, ROI, ROI patterns) -> RoiDataRow, from the rsa results
UNKNOWN_PATTERNS = "?"  # a result written before the ROI patterns were recorded


def report_metric(layer: str, roi: str) -> str:
    """The report's name of a layer's rho against an ROI (conditions.csv: rsa_rho_pooled_V1)."""
    return f"{SPEC.name}_{rho_metric(layer, roi)}"


def repeats_report_metric(layer: str, roi: str) -> str:
    """The report's name of a layer's mean rho against the ROI's single-repeat RDMs (rsa_rho_repeats_pooled_V1)."""
    return f"{SPEC.name}_{rho_repeats_metric(layer, roi)}"


@dataclass(frozen=True)
class _RowKind:
    """A kind of metric row: the result scalar it reads, its name in the report and its label (before the
    ceiling), each per (layer, ROI)."""

    scalar: Callable[[str, str], str]
    name: Callable[[str, str], str]
    label: str  # formatted with roi and layer (the layer's readable name)


_ROW_KINDS = (_RowKind(rho_metric, report_metric, "RSA ρ {roi}, {layer}"),
              _RowKind(rho_repeats_metric, repeats_report_metric, "RSA ρ {roi} vs single-repeat RDMs, {layer}"))


def collect(collection: Collection) -> None:
    """Each model's rho and rho against the single-repeat RDMs per (layer, ROI) from its rsa result's scalars; the
    metric rows by kind, layer, then hierarchy order, each labelled with the ROI's mean RDM noise ceiling over the
    results of its variant (kept in extras for the figure); the table of the data from the results' curves."""
    ceilings: dict[tuple[str, str], list[tuple[float, float]]] = {}
    found: set[tuple[str, str]] = set()  # (report metric name, variant)
    for point in collection.points:
        scalars = collection.result_scalars(point)
        if scalars is None or not _read_data_rows(collection, point):
            continue  # a point without a valid result is listed by summarize, one with a broken table just now
        model, variant = collection.model_and_variant(point)
        for roi in ROIS:
            if rdm_ceiling_lower_metric(roi) in scalars and rdm_ceiling_upper_metric(roi) in scalars:
                ceilings.setdefault((roi, variant), []).append(
                    (float(scalars[rdm_ceiling_lower_metric(roi)]), float(scalars[rdm_ceiling_upper_metric(roi)])))
        for kind, layer, roi in itertools.product(_ROW_KINDS, LAYERS, ROIS):
            if kind.scalar(layer, roi) in scalars:
                model.values[variant_key(kind.name(layer, roi), variant)] = float(scalars[kind.scalar(layer, roi)])
                found.add((kind.name(layer, roi), variant))
    mean_ceilings = {key: (float(np.mean([c[0] for c in values])), float(np.mean([c[1] for c in values])))
                     for key, values in ceilings.items()}
    for kind, layer, roi in itertools.product(_ROW_KINDS, LAYERS, ROIS):
        for variant in sorted(v for name, v in found if name == kind.name(layer, roi)):
            key = variant_key(kind.name(layer, roi), variant)
            label = kind.label.format(roi=roi, layer=LAYERS[layer])
            text = f"{label} ({ceiling_text(mean_ceilings.get((roi, variant)))})"
            collection.metrics[key] = Metric(key, variant_label(text, variant), FAMILY)
    collection.extras[CEILINGS] = mean_ceilings


def ceiling_text(ceiling: tuple[float, float] | None) -> str:
    """`RDM ceiling 0.286–0.690`, or that the results have none (written before it was computed)."""
    return "no RDM ceiling" if ceiling is None else f"RDM ceiling {ceiling[0]:.3f}–{ceiling[1]:.3f}"


def _read_data_rows(collection: Collection, point: dict[str, Any]) -> bool:
    """Add the point's table of the data to extras[DATA] (the first result that names a (subject, ROI, patterns)
    gives its row: every result reads the same neural file). False, with the point listed as a problem, when the
    result's table is incomplete; a result without one (older) adds nothing and is fine."""
    import h5py

    try:
        with h5py.File(collection.run.result_path(collection.stage, point["id"]), "r") as f:
            rows = data_rows_from_curves(f["curves"])
            patterns = str(f.attrs.get(ROI_PATTERNS_ATTR, UNKNOWN_PATTERNS))
    except (OSError, KeyError, ValueError, TypeError) as err:
        collection.add_problem(point["id"], "corrupt", f"the table of the data in its result is incomplete "
                                                       f"({type(err).__name__}: {err})")
        return False
    table: dict[tuple[str, str, str], RoiDataRow] = collection.extras.setdefault(DATA, {})
    for row in rows:
        table.setdefault((row.subject, row.roi, patterns), row)
    return True


def data_table(report: Report) -> str:
    """The rsa section's table of the data (markdown): per subject, ROI and ROI patterns, the ROI's voxels, PCs,
    mean voxel noise ceiling (%, NSD method: a property of the data, not comparable with rho), the shared images
    in the RDMs and the RDM noise ceiling (ρ). Empty when no rsa result has the table."""
    table: dict[tuple[str, str, str], RoiDataRow] = report.extras.get(SPEC.name, {}).get(DATA, {})
    if not table:
        return ""
    order = {roi: i for i, roi in enumerate(ROIS)}
    keys = sorted(table, key=lambda k: (k[0], order.get(k[1], len(ROIS)), k[1], k[2]))
    rows = [[subject, roi, str(row.voxels), str(row.components), f"{row.voxel_noise_ceiling:.1f}",
             f"{row.images} of {row.shared_images}", patterns, f"{row.ceiling_lower:.3f}–{row.ceiling_upper:.3f}"]
            for (subject, roi, patterns), row in ((key, table[key]) for key in keys)]
    header = ["subject", "ROI", "voxels", "PCs", "voxel noise ceiling (%)", "shared images in the RDMs",
              "ROI patterns", "RDM noise ceiling (ρ)"]
    return ("**The data compared with.** The voxel noise ceiling (NSD method, mean over voxels) describes the data; "
            "it is not in ρ's units. The RDMs use the shared images shown 3 times.\n\n" + markdown_table(header, rows))


def _pooled_rois(report: Report, metric: Callable[[str, str], str] = report_metric) -> list[str]:
    """The ROIs (hierarchy order) whose pooled-layer `metric` the report has, without a variant."""
    return [roi for roi in ROIS if metric(POOLED_LAYER, roi) in report.metrics]


def headline(report: Report) -> list[Column]:
    """The pooled layer's rho of the earliest and of the latest ROI."""
    rois = _pooled_rois(report)
    earliest_and_latest = rois[:1] + (rois[-1:] if len(rois) > 1 else [])
    return [Column(f"RSA ρ {roi}", report_metric(POOLED_LAYER, roi)) for roi in earliest_and_latest]


def draw_rsa_per_roi(report: Report, path: Path) -> bool:
    """Pooled-layer rho per ROI (hierarchy order) per condition against the ROI RDMs; beside it, where the results
    have it, the rho against the single-repeat RDMs with the RDM noise ceiling as a grey band (lower to upper
    bound): the two are in the same units. Returns False (and draws nothing) when no model has an rsa result."""
    rois = _pooled_rois(report)
    if not rois:
        return False
    repeat_rois = _pooled_rois(report, repeats_report_metric)
    fig = new_figure(11.0 if repeat_rois else 7.5, 4.0)
    axes = fig.subplots(1, 2 if repeat_rois else 1, squeeze=False)[0]
    _rho_panel(axes[0], report, rois, report_metric, "Spearman ρ (model vs ROI RDM)", band=False)
    if repeat_rois:
        _rho_panel(axes[1], report, repeat_rois, repeats_report_metric,
                   "Spearman ρ (model vs single-repeat RDMs)", band=True)
    figure_legend(fig, axes, loc="outside right upper")
    save_figure(fig, path)
    return True


def _rho_panel(ax: Any, report: Report, rois: list[str], metric: Callable[[str, str], str], ylabel: str,
               band: bool) -> None:
    """One panel: the pooled layer's `metric` per ROI per condition; with `band`, the RDM noise ceiling behind it."""
    x = np.arange(len(rois))
    ceilings: dict[tuple[str, str], tuple[float, float]] = report.extras[SPEC.name].get(CEILINGS, {})
    shown = [(i, ceilings[(roi, "")]) for i, roi in enumerate(rois) if (roi, "") in ceilings] if band else []
    if shown:
        lower = np.array([c[0] for _, c in shown])
        upper = np.array([c[1] for _, c in shown])
        ax.bar([i for i, _ in shown], upper - lower, bottom=lower, width=0.6, color="0.85", zorder=0,
               label="RDM noise ceiling")
    plot_conditions(ax, report, x, [metric(POOLED_LAYER, roi) for roi in rois])
    ax.axhline(0, color="k", linewidth=0.8)
    ax.set_xticks(x, rois)
    ax.set_xlabel("ROI (ventral hierarchy)")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)


REPORT = StageReport(
    families=(Family(FAMILY, "Similarity to human neural geometry (RSA)",
                     "Spearman ρ between the model's RDM (1 - Pearson r of features on the subject's shared validation "
                     "images shown 3 times) and each ROI's RDM (by default from the ROI's z-scored PCA scores, the "
                     "study's; the result's `roi_patterns` attribute names it), averaged over the subjects each model "
                     "is compared with. Each row names the ROI RDM's noise ceiling in ρ (lower–upper, as rsatoolbox's "
                     "boot_noise_ceiling computes it over the 3 single-repeat RDMs). That ceiling bounds the ρ against "
                     "single-repeat RDMs (the rows 'vs single-repeat RDMs'); the ρ against the ROI RDM of repeat "
                     "averages is less noisy and can exceed it. Per-model permutation p-values are in each rsa result "
                     "file.", notes=data_table),),
    collect=collect,
    figures=(FigureSpec(RSA_FIGURE, FAMILY, "RSA ρ of the pooled layer per ROI in hierarchy order (mean ± SEM over "
                        "seeds), one line per condition: against the ROI RDMs (left) and against the single-repeat "
                        "RDMs (right, where the results have it), where the grey band is the RDM noise ceiling "
                        "(lower to upper bound), in the same units.", draw_rsa_per_roi),),
    headline=headline,
)
