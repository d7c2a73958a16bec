"""Per-condition statistics: n, mean and SEM over seeds, and each condition against its baseline condition by a
paired t-test over the seeds present in both; some conditions also against each of their control conditions, by the
same test. What a baseline and a control are comes from the models' stage (its StageReport's `Baseline` and
`Controls`); this module names no stage and no metric: metrics are rows keyed by name.

Login-node code: numpy, and scipy's Student t distribution when there is a test to run.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from sfhpc.report.model import Baseline, ConditionRow, ControlPairs, ControlRow, Controls, Model

TEST_NAME = "paired t-test over seeds"
BASELINE_ROW = "(baseline)"


def no_baseline_test(baseline: Baseline | None) -> str:
    """The `test` of a condition that has no baseline to be compared with."""
    if baseline is None:
        return "none: the models' stage declares no baseline"
    return f"none: no baseline condition ({baseline.description}) with these other axes"


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


def compares_with(model: Model, reference: Model, paired_axes: tuple[str, ...]) -> bool:
    """Equal on every other axis; an axis the reference (a baseline or a control) has no value for (an unguided
    model's subject and ROI) matches any value, so every guided condition is compared with the one unguided model of
    its band and seed."""
    axes = (set(model.labels) | set(reference.labels)) - set(paired_axes)
    return all(reference.labels.get(k) is None or reference.labels.get(k) == model.labels.get(k) for k in axes)


def baselines(models: list[Model], baseline: Baseline | None) -> dict[str, str | None]:
    """Each condition's baseline condition: one whose models `baseline` calls baselines, equal on every axis but
    the paired ones (an exact match first, then one whose other axes are empty); None without a rule."""
    first: dict[str, Model] = {}
    for model in models:
        first.setdefault(model.condition, model)
    if baseline is None:
        return dict.fromkeys(first)
    candidates = sorted((m for m in first.values() if baseline.is_baseline(m.params)),
                        key=lambda m: sum(v is None for v in m.labels.values()))
    return {c: next((b.condition for b in candidates if compares_with(m, b, baseline.paired_axes)), None)
            for c, m in first.items()}


def values_by_condition(models: list[Model], conditions: list[str], metric: str) -> dict[str, dict[Any, float]]:
    """Each condition's value of `metric` per seed (NaN where a model lacks it)."""
    per_condition: dict[str, dict[Any, float]] = {c: {} for c in conditions}
    for m in models:  # one pass (not one per condition: 1,000 conditions of 10,000 models took a second)
        per_condition[m.condition][m.seed] = m.values.get(metric, math.nan)
    return per_condition


def condition_statistics(models: list[Model], conditions: list[str], metrics: list[str], baseline: Baseline | None
                         ) -> list[ConditionRow]:
    """n, mean, SEM per condition and metric, and the paired test against the condition's baseline."""
    base_of = baselines(models, baseline)
    no_baseline = no_baseline_test(baseline)
    rows = []
    for metric in metrics:
        per_condition = values_by_condition(models, conditions, metric)
        for condition in conditions:
            values = per_condition[condition]
            n, mean, sem = describe(list(values.values()))
            base = base_of[condition]
            if base is None:
                rows.append(ConditionRow(condition, metric, n, mean, sem, None, math.nan, 0, math.nan, math.nan,
                                         no_baseline))
                continue
            base_mean = describe(list(per_condition[base].values()))[1]
            if base == condition:
                rows.append(ConditionRow(condition, metric, n, mean, sem, base, base_mean, 0, math.nan, math.nan,
                                         BASELINE_ROW))
                continue
            pairs, delta, p = paired_test(values, per_condition[base])
            rows.append(ConditionRow(condition, metric, n, mean, sem, base, base_mean, pairs, delta, p, TEST_NAME))
    return rows


def control_pairs(models: list[Model], controls: Controls | None) -> ControlPairs:
    """Each compared condition's control conditions of each kind: those whose models the kind calls controls, that
    fit the compared models (its `matches`) and are equal to them on every axis but its free ones (an axis the
    control has no value for matches any). Conditions are judged by their first model: a condition's models differ
    only in the seed."""
    if controls is None:
        return {}
    first: dict[str, Model] = {}
    for model in models:
        first.setdefault(model.condition, model)
    settings = {condition: model.settings() for condition, model in first.items()}
    candidates = {kind.name: [c for c in first if kind.is_control(settings[c])] for kind in controls.kinds}
    pairs: ControlPairs = {}
    for condition, model in first.items():
        if not controls.compared(settings[condition]):
            continue
        pairs[condition] = {
            kind.name: [c for c in candidates[kind.name] if c != condition
                        and compares_with(model, first[c], kind.free_axes)
                        and (kind.matches is None or kind.matches(settings[condition], settings[c]))]
            for kind in controls.kinds}
    return pairs


def control_statistics(models: list[Model], conditions: list[str], metrics: list[str], pairs: ControlPairs
                       ) -> list[ControlRow]:
    """Each compared condition against each of its control conditions, per metric: the paired test over the seeds
    present in both, as against the baseline. Rows in metric, condition, kind, control order."""
    used = list(dict.fromkeys(c for kinds in pairs.values() for controls in kinds.values() for c in controls))
    rows = []
    for metric in metrics:
        per_condition = values_by_condition(models, conditions, metric)
        # once per control, not once per comparison: a weight-decay control serves every guided condition
        mean_of = {control: describe(list(per_condition[control].values()))[1] for control in used}
        for condition, kinds in pairs.items():
            for kind, controls in kinds.items():
                for control in controls:
                    n_pairs, delta, p = paired_test(per_condition[condition], per_condition[control])
                    rows.append(ControlRow(condition, metric, kind, control, mean_of[control], n_pairs, delta, p,
                                           TEST_NAME))
    return rows
