"""What the attack stage adds to the report (torch-free): each model's shards merged into one accuracy per
(norm, eps) from their per-image flags (robust count / N over all shards, SCIENCE.md section 5), the area under its
accuracy-eps curve, the robust accuracy figure, and the terminal's robust accuracy at the largest eps and AUC per
norm. A model whose shards are not all valid, or do not make one whole test set, gets no attack numbers at all,
never a partial merge. Every epsilon is shown in both units: pixels of [0, 1] images (the one AutoAttack ran with,
which names the metrics) and the model's normalisation units ("ε=0.0571/255 px (0.001 norm.)"), in the tables, the
terminal and the figure. h5py is imported when shards are merged, matplotlib when the figure is drawn.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sfhpc.report.figures import figure_legend, new_figure, plot_conditions, save_figure
from sfhpc.report.model import (
    Collection,
    Column,
    Family,
    FigureSpec,
    Model,
    Report,
    StageReport,
    variant_key,
    variant_label,
)
from sfhpc.stages.attack import (
    CLEAN_CORRECT_CURVE,
    EPS_GRID_ATTR,
    EPS_NORMALIZED_KEY,
    EPS_SD_ATTR,
    SETTINGS_ATTR,
    SHARD_ATTR,
    SHARD_COUNT_ATTR,
    SHARDS,
    SPEC,
    robust_accuracy_metric,
    robust_curve_name,
)

# The report's own metrics (no result file holds them): derived from the merged shards.
CLEAN_ACCURACY = "attack_clean_accuracy"  # accuracy of the attacked images without attack (eps 0 of the curve)
ACCURACY_FAMILY = "accuracy"  # the table the train stage's clean accuracy opens
AUC_FAMILY = "auc"
ROBUST_FIGURE = "robust_accuracy.png"
PANELS = "panels"  # Report.extras[attack][PANELS]: (norm, variant) -> its pixel epsilons, ascending
PANEL_SDS = "panel_sds"  # Report.extras[attack][PANEL_SDS]: (norm, variant) -> the conversion SDs of its models


def auc_metric(norm: str) -> str:
    """The area under a model's accuracy-eps curve of one norm."""
    return f"auc_{norm}"


@dataclass(frozen=True)
class MergedAttack:
    images: int
    clean_accuracy: float
    robust_accuracy: dict[tuple[str, float], float]  # (norm, pixel eps) -> robust count / images
    # (norm, pixel eps) -> the same eps in normalized units, and the SD that converted: absent (empty, None) in
    # results written before epsilons recorded their units
    eps_normalized: dict[tuple[str, float], float]
    eps_sd: float | None
    eps_grid: str  # monotone or independent (results written before grids existed: independent)


def merge_attack_shards(paths: list[Path]) -> MergedAttack:
    """One model's accuracies from the per-sample flags of all its attack shards: counts over all shards / N
    (SCIENCE.md section 5). Raises ValueError when the shards do not make one whole, equally attacked test set."""
    import h5py

    images = clean = 0
    robust: dict[tuple[str, float], int] = {}
    epsilons: ShardEpsilons | None = None
    shards = []
    for path in paths:
        with h5py.File(path, "r") as f:
            own = ShardEpsilons.of(f.attrs)
            if epsilons is not None and own.grid != epsilons.grid:
                raise ValueError(f"shard {path.parent.name} was attacked on the {own.grid} epsilon grid, the others "
                                 f"on the {epsilons.grid} grid")
            if epsilons is not None and own != epsilons:
                raise ValueError(f"shard {path.parent.name} was attacked with other settings than the others")
            epsilons = own
            shards.append((int(f.attrs[SHARD_ATTR]), int(f.attrs[SHARD_COUNT_ATTR])))
            flags = f["curves"][CLEAN_CORRECT_CURVE][()]
            images += len(flags)
            clean += int(np.count_nonzero(flags))
            for norm, eps, _ in own.settings:
                name = robust_curve_name(norm, eps)
                if name not in f["curves"]:
                    raise ValueError(f"shard {path.parent.name} has no {name} flags")
                robust[(norm, eps)] = robust.get((norm, eps), 0) + int(np.count_nonzero(f["curves"][name][()]))
    if epsilons is None:
        raise ValueError("no shard files to merge")
    if sorted(shards) != [(i, len(paths)) for i in range(len(paths))]:
        raise ValueError(f"shard files (shard, of) {sorted(shards)} are not shards 0..{len(paths) - 1} of {len(paths)}")
    normalized = {(norm, eps): value for norm, eps, value in epsilons.settings if value is not None}
    return MergedAttack(images, clean / images, {key: count / images for key, count in robust.items()}, normalized,
                        epsilons.sd, epsilons.grid)


@dataclass(frozen=True)
class ShardEpsilons:
    """What a shard's result says of its epsilons: (norm, pixel eps, normalized eps) per setting, the SD that
    converted, and the grid they were attacked on; the normalized eps and the SD are None in results written before
    epsilons recorded their units, and the grid is independent in results written before grids existed."""

    settings: tuple[tuple[str, float, float | None], ...]
    sd: float | None
    grid: str = "independent"

    @classmethod
    def of(cls, attrs: Any) -> ShardEpsilons:
        """From a result file's attributes (h5py's AttributeManager)."""
        settings = tuple((s["norm"], float(s["eps"]), float(s[EPS_NORMALIZED_KEY]) if EPS_NORMALIZED_KEY in s else None)
                         for s in json.loads(attrs[SETTINGS_ATTR]))
        return cls(settings, float(attrs[EPS_SD_ATTR]) if EPS_SD_ATTR in attrs else None,
                   str(attrs.get(EPS_GRID_ATTR, "independent")))


def accuracy_auc(clean: float, robust: dict[float, float]) -> float:
    """Area under the accuracy-eps curve over [0, eps_max], with the clean accuracy at eps 0, divided by eps_max:
    the curve's average accuracy, in [0, 1] (trapezoid rule)."""
    curve = [(0.0, clean), *sorted(robust.items())]
    area = sum((b - a) * (ya + yb) / 2 for (a, ya), (b, yb) in itertools.pairwise(curve))
    return area / curve[-1][0]


def format_eps(norm: str, eps: float, exact: bool = False) -> str:
    """A pixel epsilon: Linf in steps of 1/255, as Linf epsilons are quoted ('8/255', '0.0571/255'), others as a
    plain number; `exact`: with the 6 significant digits of the metric names, which tell a run's epsilons apart."""
    if norm == "Linf":
        return f"{eps * 255:.6g}/255" if exact else f"{eps * 255:.3g}/255"
    return f"{eps:.6g}" if exact else f"{eps:.4g}"


def eps_label(norm: str, eps: float, normalized: float | None) -> str:
    """'ε=8/255 px (0.14 norm.)': a pixel epsilon and, when known, the same in normalized units."""
    pixels = f"ε={format_eps(norm, eps)} px"
    return pixels if normalized is None else f"{pixels} ({normalized:.3g} norm.)"


def norm_label(norm: str) -> str:
    return {"Linf": "L∞"}.get(norm, norm)


# -------------------------------------------------------------------------------------------- collecting
def collect(collection: Collection) -> None:
    """Merge each model's shards (of each variant) into its values; a model whose shards are not all valid, or do
    not merge, is listed instead."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for point in collection.points:
        model, variant = collection.model_and_variant(point)
        groups.setdefault((model.point, variant), []).append(point)
    states = {(p["stage"], p["point"]): p["state"] for p in collection.summary.problems}
    for (model_id, variant), shards in groups.items():
        where = variant_label(f"{collection.models_stage}/{model_id}", variant)
        bad = [(p["labels"].get(SHARDS.index, i), states.get((collection.stage, p["id"]), "missing"))
               for i, p in enumerate(shards) if collection.result_scalars(p) is None]
        if bad:
            listed = "; ".join(f"shard {shard}: {state}" for shard, state in bad)
            collection.add_problem(where, "incomplete", f"{len(bad)} of {len(shards)} shards without a valid result "
                                                        f"({listed}); no attack numbers for this model")
            continue
        try:
            merged = merge_attack_shards([collection.run.result_path(collection.stage, p["id"]) for p in shards])
        except (ValueError, KeyError, OSError) as err:
            collection.add_problem(where, "corrupt", f"shards do not merge: {err}; no attack numbers for this model")
            continue
        _store(collection, collection.models[model_id], variant, merged)


def _store(collection: Collection, model: Model, variant: str, merged: MergedAttack) -> None:
    collection.set_value(model, CLEAN_ACCURACY, "clean accuracy, attacked images", ACCURACY_FAMILY, variant,
                         merged.clean_accuracy)
    panels: dict[tuple[str, str], list[float]] = collection.extras.setdefault(PANELS, {})
    sds: dict[tuple[str, str], set[float | None]] = collection.extras.setdefault(PANEL_SDS, {})
    for norm in dict.fromkeys(norm for norm, _ in merged.robust_accuracy):
        curve = {eps: acc for (n, eps), acc in merged.robust_accuracy.items() if n == norm}
        panels[(norm, variant)] = sorted(set(panels.get((norm, variant), [])) | set(curve))
        sds.setdefault((norm, variant), set()).add(merged.eps_sd)
        for eps in sorted(curve):
            label = eps_label(norm, eps, merged.eps_normalized.get((norm, eps)))
            collection.set_value(model, robust_accuracy_metric(norm, eps),
                                 f"robust accuracy, {norm_label(norm)} {label}", ACCURACY_FAMILY, variant, curve[eps])
        collection.set_value(model, auc_metric(norm), f"AUC {norm_label(norm)}", AUC_FAMILY, variant,
                             accuracy_auc(merged.clean_accuracy, curve))


def _panels(report: Report) -> dict[tuple[str, str], list[float]]:
    return report.extras.get(SPEC.name, {}).get(PANELS, {})


def panel_sd(report: Report, norm: str, variant: str) -> float | None:
    """The SD that converted the epsilons of a panel's models between the units; None when their results do not
    record one, or record different ones (then no one conversion holds for the panel)."""
    sds = report.extras.get(SPEC.name, {}).get(PANEL_SDS, {}).get((norm, variant), set())
    return next(iter(sds)) if len(sds) == 1 else None


def headline(report: Report) -> list[Column]:
    """Per norm (and variant): robust accuracy at its largest eps, and the AUC."""
    columns = []
    for (norm, variant), epsilons in _panels(report).items():
        largest, sd = epsilons[-1], panel_sd(report, norm, variant)
        label = eps_label(norm, largest, None if sd is None else largest / sd)
        columns.append(Column(variant_label(f"{norm_label(norm)} {label}", variant),
                              variant_key(robust_accuracy_metric(norm, largest), variant)))
        columns.append(Column(variant_label(f"AUC {norm_label(norm)}", variant),
                              variant_key(auc_metric(norm), variant)))
    return columns


# ---------------------------------------------------------------------------------------------- figure
def draw_robust_accuracy(report: Report, path: Path) -> bool:
    """Accuracy vs eps (eps 0: clean accuracy of the attacked images), one panel per norm, one line per condition
    with SEM error bars; eps in pixels below each panel and, where its models record the conversion, in normalized
    units above it. Returns False (and draws nothing) when no model has attack numbers."""
    panels = list(_panels(report).items())
    if not panels:
        return False
    fig = new_figure(4.4 * len(panels) + 2.2, 3.8)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, ((norm, variant), epsilons) in zip(axes, panels, strict=True):
        scale = 255 if norm == "Linf" else 1
        keys = [variant_key(CLEAN_ACCURACY, variant),
                *(variant_key(robust_accuracy_metric(norm, eps), variant) for eps in epsilons)]
        plot_conditions(ax, report, np.array([0.0, *epsilons]) * scale, keys)
        ax.set_xlabel("ε × 255, pixels (0 = clean)" if norm == "Linf" else f"ε ({norm_label(norm)}), pixels of "
                      "images in [0, 1] (0 = clean)")
        _normalized_axis(ax, scale, panel_sd(report, norm, variant))
        ax.set_ylabel("accuracy")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(variant_label(f"{norm_label(norm)} robust accuracy", variant))
        ax.grid(alpha=0.3)
    figure_legend(fig, axes, loc="outside right upper", title="condition (mean ± SEM)", title_fontsize="small")
    save_figure(fig, path)
    return True


def _normalized_axis(ax: Any, scale: float, sd: float | None) -> None:
    """A top axis in the model's normalisation units (normalized = pixel / sd) over the pixel axis drawn in
    `scale` x pixels; none when the panel has no one conversion SD."""
    if sd is None:
        return
    top = ax.secondary_xaxis("top", functions=(lambda x: x / scale / sd, lambda n: n * sd * scale))
    top.set_xlabel(f"ε, normalized units (pixel ε / SD {sd:g})", fontsize="small")


REPORT = StageReport(
    families=(
        Family(ACCURACY_FAMILY, "Accuracy and robust accuracy",
               "Clean accuracy of the attacked images (ε = 0) and robust accuracy per norm and ε under AutoAttack, "
               "each merged over all attack shards of a model (count / N). ε in pixel units of [0, 1] images (px), "
               "the ones AutoAttack ran with, and in the model's input-normalisation units (norm.): pixel ε / the "
               "smallest of its per-channel SDs. On a monotone ε grid (attack_eps_grid, the default) an image "
               "broken at a smaller ε counts as broken at every larger one (its adversarial example checked again), "
               "and only the others are attacked there; on an independent grid each ε is attacked on its own."),
        Family(AUC_FAMILY, "Area under the accuracy-ε curve",
               "Per norm: trapezoid rule over [0, ε_max] with the clean accuracy at ε = 0, divided by ε_max, so that "
               "it is the curve's average accuracy, in [0, 1]."),
    ),
    collect=collect,
    figures=(FigureSpec(ROBUST_FIGURE, ACCURACY_FAMILY, "Robust accuracy vs ε, one panel per norm (mean ± SEM over "
                        "seeds; ε = 0 is the clean accuracy of the attacked images); ε in pixels below, in the "
                        "models' normalisation units above.", draw_robust_accuracy),),
    headline=headline,
)
