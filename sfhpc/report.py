"""Per-condition statistics, tables and figures of a run (SCIENCE.md sections 4, 5 and 7).

A *model* is a train point; a *condition* is a model's sweep labels without the seed (`band=lsf`). Each model's
numbers come from its own valid result files: clean test accuracy (train); robust accuracy per (norm, eps) merged
over all its attack shards (robust count / N) and the area under its accuracy-eps curve (attack); the fitted CBM
channel (cbm). Axes of a downstream stage that the train stage lacks (an `attack_seed` axis, say) make variants of
its metrics, named `metric[axis=value]`.

Per condition and metric: n (seeds with a finite value), mean and SEM (ddof=1). Each condition is compared with its
baseline (band none, alpha 0, equal on every other axis but the seed) by a paired t-test over the seeds present in
both. Metrics are rows keyed by name, so a new stage's numbers (e.g. `rsa_rho_<roi>`) are just more rows.

Only valid result files are read. Points without one are listed with the reason, and so are models whose attack
shards are not all valid: those get no attack numbers at all, never a partial merge.

Login-node code: no torch. h5py and scipy are imported when needed, matplotlib only when there is a figure to draw.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sfhpc.aggregate import Summary, markdown_table, summarize
from sfhpc.evaluation.attack import robust_curve_name
from sfhpc.evaluation.cbm import LOWEST_CENTRE_CPI  # band k is centred at 1.75 * 2**k c/img
from sfhpc.results import atomic_write
from sfhpc.rundir import RunDir

TEST_NAME = "paired t-test over seeds"
NO_BASELINE = "none: no baseline condition (band=none, alpha=0) with these other axes"
BASELINE_ROW = "(baseline)"
SHARD_LABEL = "attack_shard"
FIGURES_DIR = "figures"
ROBUST_FIGURE = "robust_accuracy.png"
CBM_FIGURE = "cbm_channels.png"
RSA_FIGURE = "rsa_per_roi.png"
RSA_LAYERS = {"pooled": "pooled layer", "neural_head": "neural head"}
DPI = 120
HUMAN_CHANNEL = (4.0, 4.5, 0.4246)  # A, mu, sigma in band-index units: 1.00 octave at 39.6 c/img
CBM_METRICS = {"bandwidth_octaves": ("CBM bandwidth (octaves)", ".2f"), "centre_cpi": ("CBM centre (c/img)", ".1f"),
               "peak_sensitivity": ("CBM peak noise sensitivity", ".3f"),
               "clean_grayscale_accuracy": ("CBM clean grayscale accuracy", ".3f")}
FAMILIES = {
    "accuracy": ("Accuracy and robust accuracy",
                 "Clean test accuracy (train stage); clean accuracy of the attacked images (ε = 0) and robust accuracy "
                 "per norm and ε under AutoAttack, each merged over all attack shards of a model (count / N)."),
    "auc": ("Area under the accuracy-ε curve",
            "Per norm: trapezoid rule over [0, ε_max] with the clean accuracy at ε = 0, divided by ε_max, so that it "
            "is the curve's average accuracy, in [0, 1]."),
    "rsa": ("Similarity to human neural geometry (RSA)",
            "Spearman ρ between the model's RDM (1 - Pearson r of features on the subject's shared validation images) "
            "and each ROI's RDM (z-scored repeat averages), averaged over the subjects each model is compared with; "
            "the ROI's mean noise ceiling (NSD method, %) is in the metric's name. Per-model permutation p-values "
            "are in each rsa result file."),
    "cbm": ("CBM channel",
            "Gaussian channel fitted to each model's critical-band-masking thresholds (SCIENCE.md section 4). A "
            "model has no fit, and does not count in n, when its thresholds are all 0 or when it is at chance on "
            "the noise-free stimulus (one-sided binomial p >= 0.01); each cbm result's `channel_fit` attribute "
            "says which. n/a: no model of the condition has a fit. Human reference: 1.00 octave at 39.6 c/img."),
}


@dataclass(frozen=True)
class Metric:
    """A row name of the condition table, with how to show it."""

    key: str  # name in conditions.csv, e.g. robust_accuracy_Linf_eps0.0313725
    label: str  # name in report.md
    family: str  # the table it belongs to: a key of FAMILIES
    fmt: str = ".3f"


@dataclass
class Model:
    """One trained model (train point) and every number derived from its result files."""

    point: str  # train point id
    labels: dict[str, Any]
    params: dict[str, Any]
    condition: str
    seed: Any
    values: dict[str, float] = field(default_factory=dict)  # metric key -> value (NaN allowed)
    thresholds: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # cbm variant -> centres, thr


@dataclass(frozen=True)
class ConditionRow:
    """One condition's statistics for one metric: a line of conditions.csv."""

    condition: str
    metric: str
    n: int  # seeds with a finite value
    mean: float
    sem: float  # standard error over seeds, ddof=1; NaN when n < 2
    baseline: str | None  # the baseline condition (itself for a baseline); None when there is none
    baseline_mean: float
    pairs: int  # seeds with a finite value in both this condition and its baseline
    delta: float  # mean over those seeds of (this condition - baseline)
    p_value: float  # NaN with fewer than 2 pairs (and for the baseline itself)
    test: str


@dataclass
class Report:
    """Everything report.md, conditions.csv and the figures show."""

    run: RunDir
    manifest: dict[str, Any]
    models: list[Model]
    conditions: list[str]
    metrics: dict[str, Metric]  # in table order
    rows: list[ConditionRow]
    problems: list[dict[str, str]]  # stage, point, state (missing | failed | corrupt | incomplete), reason
    attack_panels: dict[tuple[str, str], list[float]]  # (norm, variant) -> its epsilons, ascending
    noise_ceilings: dict[str, float] = field(default_factory=dict)  # ROI -> mean noise ceiling (%) of rsa results

    def row(self, condition: str, metric: str) -> ConditionRow | None:
        return next((r for r in self.rows if r.condition == condition and r.metric == metric), None)

    def stages(self) -> list[str]:
        return [stage["name"] for stage in self.manifest["plan"]["stages"]]


@dataclass
class ReportFiles:
    """What `write_report` wrote, and the report it wrote it from (for the CLI's headline table)."""

    report_md: Path
    conditions_csv: Path
    figures: list[Path]
    report: Report


# ------------------------------------------------------------------------------------------ building
def build_report(run: RunDir, summary: Summary | None = None) -> Report:
    """Read every valid result file of the run and compute the condition statistics."""
    manifest = run.read_manifest()
    stages = {stage["name"]: stage for stage in manifest["plan"]["stages"]}
    summary = summary or summarize(run)  # it has checked every result file and read their scalars
    problems = list(summary.problems)
    # A sweep of predictors only has no trained models, hence no conditions: its points are in summary.md.
    models = _train_models(stages["train"]["points"], summary) if "train" in stages else {}
    metrics: dict[str, Metric] = ({"test_accuracy": Metric("test_accuracy", "clean test accuracy", "accuracy")}
                                  if models else {})
    panels: dict[tuple[str, str], list[float]] = {}
    if "attack" in stages:
        problems += _add_attack(run, stages["attack"]["points"], models, summary, metrics, panels)
    if "cbm" in stages:
        problems += _add_cbm(run, stages["cbm"]["points"], models, summary, metrics)
    ceilings = _add_rsa(stages["rsa"]["points"], models, summary, metrics) if "rsa" in stages else {}
    conditions = list(dict.fromkeys(model.condition for model in models.values()))
    rows = condition_statistics(list(models.values()), conditions, list(metrics))
    return Report(run, manifest, list(models.values()), conditions, metrics, rows, problems, panels, ceilings)


def condition_name(labels: dict[str, Any]) -> str:
    """`band=lsf, alpha=0.9`: the labels without the seed, in axis order."""
    return ", ".join(f"{axis}={value}" for axis, value in labels.items() if axis != "seed") or "all models"


def _train_models(points: list[dict[str, Any]], summary: Summary) -> dict[str, Model]:
    models = {}
    for point in points:
        model = Model(point["id"], point["labels"], point["params"], condition_name(point["labels"]),
                      point["labels"].get("seed", point["params"].get("seed")))
        metrics = summary.metrics.get(("train", point["id"]))
        if metrics is not None:
            model.values["test_accuracy"] = float(metrics["test_accuracy"])
        models[point["id"]] = model
    return models


def _model_and_variant(point: dict[str, Any], models: dict[str, Model]) -> tuple[Model, str]:
    """The trained model a downstream point evaluates, and the downstream axes the train stage lacks."""
    (upstream,) = point["upstream"]
    model = models[upstream.split("/", 1)[1]]
    extra = {k: v for k, v in point["labels"].items() if k not in model.labels and k != SHARD_LABEL}
    return model, ", ".join(f"{k}={v}" for k, v in extra.items())


def _key(name: str, variant: str) -> str:
    return f"{name}[{variant}]" if variant else name


def _label(name: str, variant: str) -> str:
    return f"{name} ({variant})" if variant else name


# -------------------------------------------------------------------------------------------- attack
@dataclass(frozen=True)
class MergedAttack:
    images: int
    clean_accuracy: float
    robust_accuracy: dict[tuple[str, float], float]  # (norm, eps) -> robust count / images


def merge_attack_shards(paths: list[Path]) -> MergedAttack:
    """One model's accuracies from the per-sample flags of all its attack shards: counts over all shards / N
    (SCIENCE.md section 5). Raises ValueError when the shards do not make one whole, equally attacked test set."""
    import h5py

    images = clean = 0
    robust: dict[tuple[str, float], int] = {}
    settings: list[tuple[str, float]] | None = None
    shards = []
    for path in paths:
        with h5py.File(path, "r") as f:
            own = [(s["norm"], float(s["eps"])) for s in json.loads(f.attrs["settings"])]
            if settings is not None and own != settings:
                raise ValueError(f"shard {path.parent.name} was attacked with other settings than the others")
            settings = own
            shards.append((int(f.attrs["shard"]), int(f.attrs["shards"])))
            flags = f["curves/clean_correct"][()]
            images += len(flags)
            clean += int(np.count_nonzero(flags))
            for norm, eps in settings:
                name = robust_curve_name(norm, eps)
                if name not in f["curves"]:
                    raise ValueError(f"shard {path.parent.name} has no {name} flags")
                robust[(norm, eps)] = robust.get((norm, eps), 0) + int(np.count_nonzero(f["curves"][name][()]))
    if sorted(shards) != [(i, len(paths)) for i in range(len(paths))]:
        raise ValueError(f"shard files (shard, of) {sorted(shards)} are not shards 0..{len(paths) - 1} of {len(paths)}")
    return MergedAttack(images, clean / images, {key: count / images for key, count in robust.items()})


def accuracy_auc(clean: float, robust: dict[float, float]) -> float:
    """Area under the accuracy-eps curve over [0, eps_max], with the clean accuracy at eps 0, divided by eps_max:
    the curve's average accuracy, in [0, 1] (trapezoid rule)."""
    curve = [(0.0, clean), *sorted(robust.items())]
    area = sum((b - a) * (ya + yb) / 2 for (a, ya), (b, yb) in itertools.pairwise(curve))
    return area / curve[-1][0]


def format_eps(norm: str, eps: float) -> str:
    """8/255 for Linf epsilons on the 1/255 grid, else a plain number."""
    steps = eps * 255
    if norm == "Linf" and abs(steps - round(steps)) < 1e-6:
        return f"{round(steps)}/255"
    return f"{eps:.4g}"


def _norm_label(norm: str) -> str:
    return {"Linf": "L∞"}.get(norm, norm)


def _add_attack(run: RunDir, points: list[dict[str, Any]], models: dict[str, Model], summary: Summary, metrics,
                panels) -> list[dict[str, str]]:
    """Merge each model's shards into its values; returns the models whose shards are not all valid."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for point in points:
        model, variant = _model_and_variant(point, models)
        groups.setdefault((model.point, variant), []).append(point)
    states = {(p["stage"], p["point"]): p["state"] for p in summary.problems}
    problems = []
    for (model_id, variant), shards in groups.items():
        where = _label(f"train/{model_id}", variant)
        bad = [(p["labels"].get(SHARD_LABEL, i), states.get(("attack", p["id"]), "missing"))
               for i, p in enumerate(shards) if ("attack", p["id"]) not in summary.metrics]
        if bad:
            listed = "; ".join(f"shard {shard}: {state}" for shard, state in bad)
            problems.append({"stage": "attack", "point": where, "state": "incomplete",
                             "reason": f"{len(bad)} of {len(shards)} shards without a valid result ({listed}); "
                                       "no attack numbers for this model"})
            continue
        try:
            merged = merge_attack_shards([run.result_path("attack", p["id"]) for p in shards])
        except (ValueError, KeyError, OSError) as err:
            problems.append({"stage": "attack", "point": where, "state": "corrupt",
                             "reason": f"shards do not merge: {err}; no attack numbers for this model"})
            continue
        _store_attack(models[model_id], variant, merged, metrics, panels)
    return problems


def _store_attack(model: Model, variant: str, merged: MergedAttack, metrics: dict[str, Metric], panels) -> None:
    clean_key = _key("attack_clean_accuracy", variant)
    metrics.setdefault(clean_key, Metric(clean_key, _label("clean accuracy, attacked images", variant), "accuracy"))
    model.values[clean_key] = merged.clean_accuracy
    norms = dict.fromkeys(norm for norm, _ in merged.robust_accuracy)
    for norm in norms:
        curve = {eps: acc for (n, eps), acc in merged.robust_accuracy.items() if n == norm}
        panels[(norm, variant)] = sorted(set(panels.get((norm, variant), [])) | set(curve))
        for eps in sorted(curve):
            key = _key(f"robust_accuracy_{norm}_eps{eps:.6g}", variant)
            label = _label(f"robust accuracy, {_norm_label(norm)} ε={format_eps(norm, eps)}", variant)
            metrics.setdefault(key, Metric(key, label, "accuracy"))
            model.values[key] = curve[eps]
        key = _key(f"auc_{norm}", variant)
        metrics.setdefault(key, Metric(key, _label(f"AUC {_norm_label(norm)}", variant), "auc"))
        model.values[key] = accuracy_auc(merged.clean_accuracy, curve)


def robust_key(norm: str, eps: float, variant: str = "") -> str:
    return _key(f"robust_accuracy_{norm}_eps{eps:.6g}", variant)


# ----------------------------------------------------------------------------------------------- cbm
def _add_cbm(run: RunDir, points: list[dict[str, Any]], models: dict[str, Model], summary: Summary, metrics
             ) -> list[dict[str, str]]:
    import h5py

    problems = []
    for point in points:
        values = summary.metrics.get(("cbm", point["id"]))
        if values is None:
            continue  # listed by summarize
        model, variant = _model_and_variant(point, models)
        path = run.result_path("cbm", point["id"])
        try:
            with h5py.File(path, "r") as f:
                centres, thresholds = f["curves/band_centres_cpi"][()], f["curves/thresholds"][()]
        except (KeyError, OSError) as err:
            problems.append({"stage": "cbm", "point": point["id"], "state": "corrupt",
                             "reason": f"incomplete cbm result ({type(err).__name__}: {err})"})
            continue
        for name, (label, fmt) in CBM_METRICS.items():
            key = _key(name, variant)
            metrics.setdefault(key, Metric(key, _label(label, variant), "cbm", fmt))
            model.values[key] = float(values[name])
        model.thresholds[variant] = (np.asarray(centres, float), np.asarray(thresholds, float))
    return problems


# ----------------------------------------------------------------------------------------------- rsa
def _add_rsa(points: list[dict[str, Any]], models: dict[str, Model], summary: Summary, metrics: dict[str, Metric]
             ) -> dict[str, float]:
    """Each model's rho per (layer, ROI), from its rsa result's scalars, ROIs in hierarchy order; returns each ROI's
    mean noise ceiling."""
    from sfhpc.config import ROIS

    ceilings: dict[str, list[float]] = {}
    found: set[tuple[str, str, str]] = set()
    for point in points:
        values = summary.metrics.get(("rsa", point["id"]))
        if values is None:
            continue  # listed by summarize
        model, variant = _model_and_variant(point, models)
        for layer, roi in itertools.product(RSA_LAYERS, ROIS):
            if f"rho_{layer}_{roi}" in values:
                model.values[_key(f"rsa_rho_{layer}_{roi}", variant)] = float(values[f"rho_{layer}_{roi}"])
                ceilings.setdefault(roi, []).append(float(values[f"noise_ceiling_{roi}"]))
                found.add((layer, roi, variant))
    for layer, roi in itertools.product(RSA_LAYERS, ROIS):
        for variant in sorted({v for l_, r, v in found if (l_, r) == (layer, roi)}):
            key = _key(f"rsa_rho_{layer}_{roi}", variant)
            label = f"RSA ρ {roi}, {RSA_LAYERS[layer]} (noise ceiling {np.mean(ceilings[roi]):.1f}%)"
            metrics[key] = Metric(key, _label(label, variant), "rsa")
    return {roi: float(np.mean(values)) for roi, values in ceilings.items()}


def channel_parameters(bandwidth_octaves: float, centre_cpi: float, peak_sensitivity: float
                       ) -> tuple[float, float, float]:
    """(A, mu, sigma) in band-index units of a fitted channel, inverting the formulas of SCIENCE.md section 4:
    bandwidth = 2 sqrt(ln 4) sigma, centre = 1.75 * 2**mu, peak sensitivity = 2**(A - 4)."""
    return (math.log2(peak_sensitivity) + 4, math.log2(centre_cpi / LOWEST_CENTRE_CPI),
            bandwidth_octaves / (2 * math.sqrt(math.log(4))))


def gaussian_channel(x: np.ndarray, amplitude: float, mu: float, sigma: float) -> np.ndarray:
    return amplitude * np.exp(-((x - mu) ** 2) / (2 * sigma**2))


# ---------------------------------------------------------------------------------------- statistics
def describe(values: list[float]) -> tuple[int, float, float]:
    """(n, mean, SEM with ddof=1) of the finite values; NaN mean when n = 0, NaN SEM when n < 2."""
    finite = np.asarray([v for v in values if math.isfinite(v)], dtype=float)
    n = len(finite)
    mean = float(finite.mean()) if n else math.nan
    sem = float(finite.std(ddof=1) / math.sqrt(n)) if n >= 2 else math.nan
    return n, mean, sem


def paired_test(values: dict[Any, float], baseline: dict[Any, float]) -> tuple[int, float, float]:
    """Seed-paired comparison: (pairs, mean difference, p of scipy.stats.ttest_rel) over the seeds with a finite
    value in both; p is NaN with fewer than 2 pairs (and scipy's NaN when every difference is 0)."""
    seeds = [s for s in values if s in baseline and math.isfinite(values[s]) and math.isfinite(baseline[s])]
    if not seeds:
        return 0, math.nan, math.nan
    a = np.array([values[s] for s in seeds])
    b = np.array([baseline[s] for s in seeds])
    delta = float((a - b).mean())
    if len(seeds) < 2:
        return len(seeds), delta, math.nan
    return len(seeds), delta, paired_t_p_value(a - b)


def paired_t_p_value(differences: np.ndarray) -> float:
    """Two-sided p of the paired t-test, as scipy.stats.ttest_rel gives it (NaN when every difference is 0, 0 when
    they are equal and not 0), from Student's t distribution directly: a report of 10,000 models makes a thousand
    of these, and ttest_rel's input handling costs 300 times the arithmetic."""
    from scipy.special import stdtr

    n = len(differences)
    mean, sd = float(differences.mean()), float(differences.std(ddof=1))
    if sd == 0:
        return math.nan if mean == 0 else 0.0
    t = mean / (sd / math.sqrt(n))
    return float(2 * stdtr(n - 1, -abs(t)))


def is_baseline(model: Model) -> bool:
    """Unguided and unsteered: band none and alpha 0 (a sweep without an alpha axis has alpha 0)."""
    return model.params.get("band", "none") == "none" and float(model.params.get("alpha", 0.0)) == 0.0


PAIRED_AXES = ("seed", "band", "alpha")  # the axes a condition differs from its baseline in (seed: the pairing)


def _compares_with(model: Model, baseline: Model) -> bool:
    """Equal on every other axis; an axis the baseline has no value for (an unguided model's subject and ROI)
    matches any value, so every guided condition is compared with the one unguided model of its band and seed."""
    axes = (set(model.labels) | set(baseline.labels)) - set(PAIRED_AXES)
    return all(baseline.labels.get(k) is None or baseline.labels.get(k) == model.labels.get(k) for k in axes)


def baselines(models: list[Model]) -> dict[str, str | None]:
    """Each condition's baseline condition: band none, alpha 0, equal on every other axis except the seed (an exact
    match first, then one whose guidance axes are empty)."""
    first = {}
    for model in models:
        first.setdefault(model.condition, model)
    candidates = sorted((m for m in first.values() if is_baseline(m)),
                        key=lambda m: sum(v is None for v in m.labels.values()))
    return {c: next((b.condition for b in candidates if _compares_with(m, b)), None) for c, m in first.items()}


def condition_statistics(models: list[Model], conditions: list[str], metrics: list[str]) -> list[ConditionRow]:
    """n, mean, SEM per condition and metric, and the paired test against the condition's baseline."""
    base_of = baselines(models)
    rows = []
    for metric in metrics:
        per_condition: dict[str, dict[Any, float]] = {c: {} for c in conditions}
        for m in models:  # one pass (not one per condition: 1,000 conditions of 10,000 models took a second)
            per_condition[m.condition][m.seed] = m.values.get(metric, math.nan)
        for condition in conditions:
            values = per_condition[condition]
            n, mean, sem = describe(list(values.values()))
            base = base_of[condition]
            if base is None:
                rows.append(ConditionRow(condition, metric, n, mean, sem, None, math.nan, 0, math.nan, math.nan,
                                         NO_BASELINE))
                continue
            base_mean = describe(list(per_condition[base].values()))[1]
            if base == condition:
                rows.append(ConditionRow(condition, metric, n, mean, sem, base, base_mean, 0, math.nan, math.nan,
                                         BASELINE_ROW))
                continue
            pairs, delta, p = paired_test(values, per_condition[base])
            rows.append(ConditionRow(condition, metric, n, mean, sem, base, base_mean, pairs, delta, p, TEST_NAME))
    return rows


# -------------------------------------------------------------------------------------------- output
def write_report(run: RunDir, summary: Summary | None = None) -> ReportFiles:
    """Write conditions.csv, report.md and the figures (under figures/) into the run folder. A figure without data
    is not written (a stale one is removed) and report.md says which stage would provide it."""
    report = build_report(run, summary)
    csv_path, md_path = run.path / "conditions.csv", run.path / "report.md"
    atomic_write(csv_path, lambda tmp: tmp.write_text(to_csv(report.rows)))
    figures_dir = run.path / FIGURES_DIR
    figures = []
    for name, draw in ((ROBUST_FIGURE, draw_robust_accuracy), (CBM_FIGURE, draw_cbm_channels),
                       (RSA_FIGURE, draw_rsa_per_roi)):
        path = figures_dir / name
        path.unlink(missing_ok=True)
        if draw(report, path):
            figures.append(path)
    atomic_write(md_path, lambda tmp: tmp.write_text(to_markdown(report, {p.name for p in figures})))
    return ReportFiles(md_path, csv_path, figures, report)


CSV_COLUMNS = ["condition", "metric", "n", "mean", "sem", "baseline", "baseline_mean", "pairs", "delta", "p_value",
               "test"]


def to_csv(rows: list[ConditionRow]) -> str:
    """conditions.csv: full precision; an empty cell for NaN or no baseline."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        writer.writerow(["" if v is None or (isinstance(v, float) and math.isnan(v)) else v
                         for v in (getattr(row, c) for c in CSV_COLUMNS)])
    return out.getvalue()


def _mean_sem(row: ConditionRow | None, fmt: str) -> str:
    if row is None:
        return "no data"
    if row.n == 0:  # results, but no finite value (a channel not fitted, a metric that does not apply)
        return "n/a"
    return f"{row.mean:{fmt}} ± {row.sem:{fmt}}" if row.n >= 2 else f"{row.mean:{fmt}} ± n/a"


def _delta_and_p(row: ConditionRow, fmt: str) -> tuple[str, str]:
    if row.baseline is None:
        return "no baseline", "n/a"
    if row.baseline == row.condition:
        return "baseline", ""
    if row.pairs == 0:
        return "no paired seeds", "n/a"
    p = "n/a" if math.isnan(row.p_value) else ("< 0.001" if row.p_value < 0.001 else f"{row.p_value:.3f}")
    return f"{row.delta:+{fmt}}", p


def family_table(report: Report, family: str) -> str:
    """The markdown table of one metric family: metric | condition | n | mean ± SEM | Δ vs baseline | p."""
    lines = []
    for metric in (m for m in report.metrics.values() if m.family == family):
        for i, condition in enumerate(report.conditions):
            row = report.row(condition, metric.key)
            delta, p = _delta_and_p(row, metric.fmt)
            lines.append([metric.label if i == 0 else "", condition, str(row.n), _mean_sem(row, metric.fmt), delta, p])
    return markdown_table(["metric", "condition", "n", "mean ± SEM", "Δ vs baseline", "p"], lines)


def to_markdown(report: Report, figures: set[str]) -> str:
    manifest = report.manifest
    trained = [m for m in report.models if "test_accuracy" in m.values]
    seeds = sorted({str(m.seed) for m in report.models})
    any_baseline = any(r.baseline is not None for r in report.rows)
    parts = [f"# Report: {manifest.get('name', report.run.path.name)}", (
        f"Run `{manifest.get('name', report.run.path.name)}` in `{report.run.path}` (sweep file "
        f"`{manifest.get('sweep_file', '?')}`, code `{manifest.get('git_sha', '?')}`, stages "
        f"{', '.join(report.stages())}). {len(trained)} trained models with a valid result, of "
        f"{len(report.models)} planned, in {len(report.conditions)} conditions (seeds {', '.join(seeds)}). "
        "Values are mean ± SEM over seeds (SEM with ddof=1; n counts the seeds with a finite value). "
        + (f"Statistical test: {TEST_NAME} — each condition against its baseline (band=none, alpha=0, the same "
           "other axes), over the seeds present in both; Δ is the mean seed-paired difference, p is n/a with "
           "fewer than 2 pairs." if any_baseline else
           "No baseline condition (band=none, alpha=0): this sweep has none, so no condition is tested against "
           "one and the tables give mean ± SEM only."))]
    for family, (title, caption) in FAMILIES.items():
        if not any(m.family == family for m in report.metrics.values()):
            continue
        test = f" Test: {TEST_NAME}." if any_baseline else " Test: none (no baseline condition)."
        parts.append(f"## {title}\n\n*{caption}{test}*\n\n{family_table(report, family)}")
        parts += [_figure_link(figure) for figure in FIGURE_CAPTIONS if figure in figures
                  and FIGURE_FAMILY[figure] == family]
    for figure, stage in FIGURE_STAGE.items():
        if figure not in figures:
            why = ("this sweep has no such stage" if stage not in report.stages() else
                   f"no model has a complete `{stage}` result yet")
            parts.append(f"*No figure {FIGURES_DIR}/{figure}: the `{stage}` stage provides its data, and {why}.*")
    parts.append(problems_markdown(report.problems))
    return "\n\n".join(parts) + "\n"


FIGURE_STAGE = {ROBUST_FIGURE: "attack", CBM_FIGURE: "cbm", RSA_FIGURE: "rsa"}  # the stage a figure shows
FIGURE_FAMILY = {ROBUST_FIGURE: "accuracy", CBM_FIGURE: "cbm", RSA_FIGURE: "rsa"}  # the table it follows
FIGURE_CAPTIONS = {
    ROBUST_FIGURE: "Robust accuracy vs ε, one panel per norm (mean ± SEM over seeds; ε = 0 is the clean accuracy of "
                   "the attacked images).",
    CBM_FIGURE: "CBM thresholds per band (mean ± SEM over seeds) and the channel drawn from the mean fitted "
                "parameters (its centre is the geometric mean of the models' centres); dashed: the human reference "
                "channel (1.00 octave at 39.6 c/img).",
    RSA_FIGURE: "RSA ρ of the pooled layer per ROI in hierarchy order (mean ± SEM over seeds), one line per "
                "condition; grey bars: the ROI's mean noise ceiling (%, right axis).",
}


def _figure_link(name: str) -> str:
    return f"![{Path(name).stem.replace('_', ' ')}]({FIGURES_DIR}/{name})\n\n*{FIGURE_CAPTIONS[name]}*"


def problems_markdown(problems: list[dict[str, str]]) -> str:
    if not problems:
        return "## Problems\n\nNone: every planned point has a valid result."
    lines = [f"- **{p['stage']}** `{p['point']}`: {p['state']} — {p['reason']}" for p in problems]
    return f"## Problems ({len(problems)})\n\nNot used in any number above.\n\n" + "\n".join(lines)


def headline_rows(report: Report) -> tuple[list[str], list[list[str]]]:
    """(header, rows) for a terminal: condition | n | clean acc | robust acc at the largest ε per norm | AUC per
    norm | CBM bandwidth | CBM centre; cells are `mean ± SEM`, columns without data are left out."""
    columns = [("clean acc", "test_accuracy", ".3f")]
    for (norm, variant), eps in report.attack_panels.items():
        columns.append((_label(f"{_norm_label(norm)} ε={format_eps(norm, eps[-1])}", variant),
                        robust_key(norm, eps[-1], variant), ".3f"))
        columns.append((_label(f"AUC {_norm_label(norm)}", variant), _key(f"auc_{norm}", variant), ".3f"))
    for name in ("bandwidth_octaves", "centre_cpi"):
        columns += [(m.label, m.key, m.fmt) for m in report.metrics.values() if m.key.split("[")[0] == name]
    rsa = [m for m in report.metrics.values() if m.key.startswith("rsa_rho_pooled_") and "[" not in m.key]
    earliest_and_latest_roi = rsa[:1] + (rsa[-1:] if len(rsa) > 1 else [])
    columns += [(f"RSA ρ {m.key.rsplit('_', 1)[1]}", m.key, m.fmt) for m in earliest_and_latest_roi]
    header = ["condition", "n", *(title for title, _, _ in columns)]
    rows = []
    for condition in report.conditions:
        n = sum(1 for m in report.models if m.condition == condition and "test_accuracy" in m.values)
        rows.append([condition, str(n), *(_mean_sem(report.row(condition, key), fmt) for _, key, fmt in columns)])
    return header, rows


# ------------------------------------------------------------------------------------------- figures
def draw_robust_accuracy(report: Report, path: Path) -> bool:
    """Accuracy vs eps (eps 0: clean accuracy of the attacked images), one panel per norm, one line per condition
    with SEM error bars. Returns False (and draws nothing) when no model has attack numbers."""
    if not report.attack_panels:
        return False
    from matplotlib.figure import Figure

    panels = list(report.attack_panels.items())
    fig = Figure(figsize=(4.4 * len(panels) + 2.2, 3.8), dpi=DPI, layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, ((norm, variant), epsilons) in zip(axes, panels, strict=True):
        scale = 255 if norm == "Linf" else 1
        keys = [_key("attack_clean_accuracy", variant), *(robust_key(norm, e, variant) for e in epsilons)]
        x = np.array([0.0, *epsilons]) * scale
        for i, condition in enumerate(report.conditions):
            rows = [report.row(condition, key) for key in keys]
            y = np.array([r.mean if r else math.nan for r in rows])
            err = np.array([r.sem if r and math.isfinite(r.sem) else 0.0 for r in rows])
            shown = np.isfinite(y)
            if shown.any():
                ax.errorbar(x[shown], y[shown], yerr=err[shown], marker="o", markersize=4, capsize=3, linewidth=1.5,
                            color=f"C{i % 10}", label=condition)
        ax.set_xlabel("ε × 255 (0 = clean)" if norm == "Linf" else f"ε ({_norm_label(norm)}, images in [0, 1]; "
                      "0 = clean)")
        ax.set_ylabel("accuracy")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(_label(f"{_norm_label(norm)} robust accuracy", variant))
        ax.grid(alpha=0.3)
    handles = {label: h for ax in axes for h, label in zip(*ax.get_legend_handles_labels(), strict=True)}
    fig.legend(handles.values(), handles.keys(), loc="outside right upper", title="condition (mean ± SEM)",
               fontsize="small", title_fontsize="small")
    _save(fig, path)
    return True


def draw_cbm_channels(report: Report, path: Path) -> bool:
    """Per condition: mean thresholds vs band centre (log2 axis), the channel from the mean fitted parameters and
    the human reference channel. Returns False (and draws nothing) when no model has a cbm result."""
    panels = [(c, v) for c in report.conditions
              for v in dict.fromkeys(v for m in report.models if m.condition == c for v in m.thresholds)]
    if not panels:
        return False
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullLocator

    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(4.2 * ncols, 3.3 * nrows + 0.7), dpi=DPI, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=True, sharey=True).ravel()
    top = HUMAN_CHANNEL[0]
    for ax, (condition, variant) in zip(axes, panels, strict=False):  # spare axes hidden below
        models = [m for m in report.models if m.condition == condition and variant in m.thresholds]
        centres = models[0].thresholds[variant][0]
        stack = np.array([m.thresholds[variant][1] for m in models if np.array_equal(m.thresholds[variant][0],
                                                                                       centres)])
        sem = stack.std(0, ddof=1) / math.sqrt(len(stack)) if len(stack) > 1 else np.zeros(len(centres))
        ax.errorbar(centres, stack.mean(0), yerr=sem, fmt="o", color="C0", capsize=3,
                    label="thresholds (mean ± SEM over seeds)")
        top = max(top, float(stack.max()))
        x = np.linspace(-0.5, max(len(centres) - 1, HUMAN_CHANNEL[1] + 1.5) + 0.3, 400)
        frequency = LOWEST_CENTRE_CPI * 2**x
        fitted, n_fitted = _mean_channel(models, variant)
        title = f"{_label(condition, variant)} (n={len(stack)}, {n_fitted} fitted)"
        if fitted:
            ax.plot(frequency, gaussian_channel(x, *fitted), color="C1", linewidth=2,
                    label="channel from the mean fitted parameters")
            bandwidth = 2 * math.sqrt(math.log(4)) * fitted[2]
            title += f"\n{bandwidth:.2f} oct at {LOWEST_CENTRE_CPI * 2 ** fitted[1]:.1f} c/img"
        else:
            title += "\nno channel fitted"
        ax.plot(frequency, gaussian_channel(x, *HUMAN_CHANNEL), "k--", linewidth=1.2, label="human (reference)")
        ax.set_title(title, fontsize="medium")
        ax.set_xscale("log", base=2)
        ticks = LOWEST_CENTRE_CPI * 2.0 ** np.arange(0, math.floor(x[-1]) + 1)
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.xaxis.set_minor_locator(NullLocator())
        ax.grid(alpha=0.3)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    for ax in axes[max(0, len(panels) - ncols):len(panels)]:  # the lowest panel of each column shows its ticks
        ax.tick_params(labelbottom=True)
    axes[0].set_ylim(-0.2, top + 0.5)
    fig.supxlabel("band centre (c/img, log scale)", fontsize="medium")
    fig.supylabel("threshold (noise levels masking the band)", fontsize="medium")
    handles = {label: h for ax in axes for h, label in zip(*ax.get_legend_handles_labels(), strict=True)}
    fig.legend(handles.values(), handles.keys(), loc="outside upper center", ncols=3, fontsize="small")
    _save(fig, path)
    return True


def draw_rsa_per_roi(report: Report, path: Path) -> bool:
    """Pooled-layer rho per ROI (hierarchy order) per condition, with the ROIs' noise ceilings as grey bars on a
    second axis. Returns False (and draws nothing) when no model has an rsa result."""
    from sfhpc.config import ROIS

    keys = {roi: f"rsa_rho_pooled_{roi}" for roi in ROIS if f"rsa_rho_pooled_{roi}" in report.metrics}
    if not keys:
        return False
    from matplotlib.figure import Figure

    rois = list(keys)
    x = np.arange(len(rois))
    fig = Figure(figsize=(7.5, 4.0), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    ceiling_ax = ax.twinx()
    ceilings = [report.noise_ceilings[roi] for roi in rois]
    ceiling_ax.bar(x, ceilings, width=0.6, color="0.85", zorder=0)
    ceiling_ax.set_ylabel("noise ceiling (%)")
    ceiling_ax.set_ylim(0, max(100.0, max(ceilings) * 1.1))
    ax.set_zorder(ceiling_ax.get_zorder() + 1)
    ax.patch.set_visible(False)
    for i, condition in enumerate(report.conditions):
        rows = [report.row(condition, keys[roi]) for roi in rois]
        y = np.array([r.mean if r else math.nan for r in rows])
        err = np.array([r.sem if r and math.isfinite(r.sem) else 0.0 for r in rows])
        if np.isfinite(y).any():
            ax.errorbar(x, y, yerr=err, marker="o", markersize=4, capsize=3, color=f"C{i % 10}", label=condition)
    ax.axhline(0, color="k", linewidth=0.8)
    ax.set_xticks(x, rois)
    ax.set_xlabel("ROI (ventral hierarchy)")
    ax.set_ylabel("Spearman ρ (model vs ROI RDM)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", title="condition", title_fontsize="small")
    _save(fig, path)
    return True


def _mean_channel(models: list[Model], variant: str) -> tuple[tuple[float, float, float] | None, int]:
    """The mean (A, mu, sigma) over the models with a fitted channel (None when none has one), and their number."""
    keys = [_key(name, variant) for name in ("bandwidth_octaves", "centre_cpi", "peak_sensitivity")]
    fits = [channel_parameters(*(m.values[k] for k in keys)) for m in models
            if all(math.isfinite(m.values.get(k, math.nan)) for k in keys)]
    return (tuple(np.mean(fits, axis=0).tolist()) if fits else None), len(fits)


def _save(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
