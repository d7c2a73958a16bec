"""What every report figure shares: where figures go, their resolution, a figure, one line per condition with its
SEM, the legend and saving. No stage's knowledge: each stage draws its own figures (StageReport.figures) with these.

matplotlib is imported when a figure is made, never at import: a report without figures does not load it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from sfhpc.report.model import Report

FIGURES_DIR = "figures"  # under the run folder; report.md links its figures relative to it
DPI = 120


def new_figure(width: float, height: float) -> Figure:
    """An empty figure (constrained layout), off any GUI backend."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def condition_curve(report: Report, condition: str, keys: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """A condition's mean per metric key (NaN without a row) and its SEM (0 where it is not finite)."""
    rows = [report.row(condition, key) for key in keys]
    mean = np.array([r.mean if r else math.nan for r in rows])
    sem = np.array([r.sem if r and math.isfinite(r.sem) else 0.0 for r in rows])
    return mean, sem


def plot_conditions(ax: Any, report: Report, x: np.ndarray, keys: list[str]) -> None:
    """One line per condition with SEM error bars: the mean of metric keys[i] at x[i], where it is finite."""
    for i, condition in enumerate(report.conditions):
        y, err = condition_curve(report, condition, keys)
        shown = np.isfinite(y)
        if shown.any():
            ax.errorbar(x[shown], y[shown], yerr=err[shown], marker="o", markersize=4, capsize=3, linewidth=1.5,
                        color=f"C{i % 10}", label=condition)


def figure_legend(fig: Figure, axes: Any, **options: Any) -> None:
    """One legend for the whole figure, each label once however many panels show it."""
    handles = {label: h for ax in axes for h, label in zip(*ax.get_legend_handles_labels(), strict=True)}
    fig.legend(handles.values(), handles.keys(), fontsize="small", **options)


def save_figure(fig: Figure, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
