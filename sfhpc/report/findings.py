"""The Findings: a study's claims (declared by the models' stage, `StageReport.findings`) tested on a run's own
numbers. This module names no stage, no metric and no claim: it pairs models as a claim's contrasts say, tests the
per-seed differences and gives each claim a verdict by one rule, written here and in report.md:

- per seed, the claim's difference is the mean over the contrast's pairs of that seed (a compared model against a
  reference model equal to it on every other axis, e.g. each subject's guided model against its control), less the
  same for the second contrast when the claim compares two shifts; the seeds are the pairs (n), df = n - 1;
- the effect is the mean of those differences; its 95% CI is effect ± t(0.975, df) × SD / √n; p is the two-sided
  paired t-test's (scipy.stats.ttest_rel of the two sides, the one-sample t-test of the differences);
- consistent: the effect is in the claimed direction and p < 0.05; contradicts: the opposite direction and
  p < 0.05; inconclusive otherwise, and always with df < 2 ("too few seeds");
- not in this sweep: the run lacks the conditions (or the metric) the claim needs.

Login-node code: numpy, and scipy when there is a test to run.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np

from sfhpc.report.model import Claim, Contrast, Finding, Model
from sfhpc.report.stats import compares_with, paired_t_p_value

LEVEL = 0.05  # a verdict's significance level, two-sided
MIN_DF = 2  # fewer degrees of freedom than this: too few seeds for a verdict
CONSISTENT, CONTRADICTS, INCONCLUSIVE, NOT_IN_SWEEP = "consistent", "contradicts", "inconclusive", "not in this sweep"
TEST = "seed-paired t-test (scipy.stats.ttest_rel over seeds)"
RULE = (f"Verdict rule: per seed, the mean difference over the contrast's pairs of that seed (less the second "
        f"contrast's, for a shift against a shift); effect = mean over seeds, 95% CI from Student's t with df = seeds "
        f"- 1; {CONSISTENT}: effect in the claimed direction and p < {LEVEL}; {CONTRADICTS}: the opposite direction "
        f"and p < {LEVEL}; {INCONCLUSIVE} otherwise (always with df < {MIN_DF}: too few seeds); {NOT_IN_SWEEP}: the "
        "run lacks the conditions the claim needs. Computed from this run's result files; no verdict is written by "
        "hand.")


def evaluate_claims(models: list[Model], claims: list[Claim], metrics: Iterable[str]) -> list[Finding]:
    """Each claim tested on the models' values, in the order declared; `metrics`: the report's metric keys (a claim
    on another metric is not in this sweep)."""
    known = set(metrics)
    first: dict[str, Model] = {}
    for model in models:
        first.setdefault(model.condition, model)
    settings = {condition: model.settings() for condition, model in first.items()}
    return [_test_claim(models, first, settings, claim) if claim.metric in known
            else _not_in_sweep(claim, f"no model has {claim.metric}") for claim in claims]


def _test_claim(models: list[Model], first: dict[str, Model], settings: dict[str, Any], claim: Claim) -> Finding:
    sides = [claim.contrast, *([claim.minus] if claim.minus is not None else [])]
    pairs = [_condition_pairs(first, settings, contrast) for contrast in sides]
    lacking = [contrast.words for contrast, found in zip(sides, pairs, strict=True) if not found]
    if lacking:
        return _not_in_sweep(claim, "no pair of conditions for " + " nor ".join(lacking))
    per_seed = [_seed_differences(models, found, claim) for found in pairs]
    seeds = [s for s in per_seed[0] if all(s in side for side in per_seed)]
    differences = np.array([per_seed[0][s] - (per_seed[1][s] if len(per_seed) > 1 else 0.0) for s in seeds])
    return verdict(claim, differences)


def _not_in_sweep(claim: Claim, lacking: str) -> Finding:
    return Finding(claim, math.nan, math.nan, math.nan, math.nan, 0, 0, TEST, NOT_IN_SWEEP,
                   f"needs {claim.needs} ({lacking})")


def _condition_pairs(first: dict[str, Model], settings: dict[str, Any], contrast: Contrast) -> list[tuple[str, str]]:
    """(compared condition, reference condition) pairs: equal on every axis but the contrast's free ones."""
    compared = [c for c in first if contrast.compared(settings[c])]
    references = [c for c in first if contrast.reference(settings[c])]
    return [(c, r) for c in compared for r in references
            if c != r and compares_with(first[c], first[r], contrast.free_axes)]


def _seed_differences(models: list[Model], pairs: list[tuple[str, str]], claim: Claim) -> dict[Any, float]:
    """Per seed: the mean over the condition pairs of (compared - reference) where both have a finite value."""
    value: dict[tuple[str, Any], float] = {}
    for model in models:
        raw = model.values.get(claim.metric, math.nan)
        value[(model.condition, model.seed)] = claim.transform(raw) if claim.transform and math.isfinite(raw) else raw
    seeds = list(dict.fromkeys(model.seed for model in models))
    per_seed: dict[Any, float] = {}
    for seed in seeds:
        found = [value.get((c, seed), math.nan) - value.get((r, seed), math.nan) for c, r in pairs]
        finite = [d for d in found if math.isfinite(d)]
        if finite:
            per_seed[seed] = float(np.mean(finite))
    return per_seed


def verdict(claim: Claim, differences: np.ndarray) -> Finding:
    """The claim's finding from its per-seed differences, by the rule of this module's docstring."""
    n = len(differences)
    if n == 0:
        return Finding(claim, math.nan, math.nan, math.nan, math.nan, 0, 0, TEST, INCONCLUSIVE,
                       "no seed has a value on every side")
    effect, df = float(differences.mean()), n - 1
    if df < 1:
        return Finding(claim, effect, math.nan, math.nan, math.nan, n, df, TEST, INCONCLUSIVE, "too few seeds (df 0)")
    from scipy.stats import t

    half = float(t.ppf(1 - LEVEL / 2, df) * differences.std(ddof=1) / math.sqrt(n))
    p = paired_t_p_value(differences)
    if df < MIN_DF:
        label, why = INCONCLUSIVE, f"too few seeds (df {df})"
    elif not math.isfinite(p) or p >= LEVEL or effect == 0:
        label, why = INCONCLUSIVE, f"p ≥ {LEVEL}" if math.isfinite(p) else "no variation (every difference 0)"
    elif math.copysign(1, effect) == claim.direction:
        label, why = CONSISTENT, f"claimed direction, p < {LEVEL}"
    else:
        label, why = CONTRADICTS, f"opposite direction, p < {LEVEL}"
    return Finding(claim, effect, effect - half, effect + half, p, n, df, TEST, label, why)
