"""Everything the report package writes or prints, as text: summary.csv and summary.md (one row per point),
conditions.csv and report.md (per condition), controls.csv (conditions against their controls), the controls as
JSON, and the tables the terminal shows (`sfhpc aggregate`'s headline and point tables). Pure functions of a Summary
or a Report; no stage's or metric's name: titles, captions, labels and formats come from the stages' StageReports
through the Report.
"""

from __future__ import annotations

import csv
import io
import math
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sfhpc.report.figures import FIGURES_DIR
from sfhpc.report.findings import NOT_IN_SWEEP, RULE
from sfhpc.report.model import (
    Baseline,
    ConditionRow,
    ControlRow,
    Controls,
    FigureSpec,
    Finding,
    Metric,
    Problem,
    Report,
)
from sfhpc.report.stats import TEST_NAME

if TYPE_CHECKING:
    from sfhpc.report.summary import StageTable, Summary


# ------------------------------------------------------------------------------------ one row per point
def format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, (list, tuple)):
        return "x".join(str(v) for v in value)
    return str(value)


def summary_rows(summary: Summary) -> tuple[list[str], list[list[str]]]:
    """summary.csv's header and rows: one row per point with every parameter and metric; points without a result
    have their state and its reason."""
    # each name once: an axis is a parameter too, and a stage may record a parameter as a metric (train's epochs)
    named = (c for table in summary.tables for c in [*table.axes, *table.params, *table.metrics])
    columns = list(dict.fromkeys(["stage", "point", "state", *named, "reason"]))
    rows = [{"stage": table.stage, "state": "done", **{k: format_value(v) for k, v in row.items()}}
            for table in summary.tables for row in table.rows]
    rows += [dict(problem) for problem in summary.problems]
    return columns, [[row.get(column, "") for column in columns] for row in rows]


def summary_csv(summary: Summary) -> str:
    """summary.csv: `summary_rows` as CSV."""
    out = io.StringIO()
    header, rows = summary_rows(summary)
    writer = csv.writer(out)
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue()


def summary_markdown(summary: Summary, title: str) -> str:
    """summary.md: one table per stage (its axes and metrics), then the points without a valid result."""
    parts = [f"# {title}"]
    for table in summary.tables:
        columns = [*row_keys(table), *table.metrics]
        rows = [[format_value(row.get(c, "")) for c in columns] for row in table.rows]
        parts.append(f"## {table.stage} ({len(table.rows)} points with results)\n\n" + markdown_table(columns, rows))
    if summary.problems:
        rows = [[p["stage"], p["point"], p["state"], p["reason"]] for p in summary.problems]
        parts.append(f"## Points without a valid result ({len(rows)})\n\n"
                     + markdown_table(["stage", "point", "state", "reason"], rows))
    else:
        parts.append("Every point has a valid result.")
    return "\n\n".join(parts) + "\n"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(map(markdown_cell, header)) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(map(markdown_cell, row)) + " |" for row in rows]
    return "\n".join(lines)


def markdown_cell(text: str) -> str:
    """Text as one cell of a markdown table: `|` escaped, a line break as <br> (a newline would end the row)."""
    return text.replace("|", "\\|").replace("\r\n", "\n").replace("\n", "<br>")


def row_keys(table: StageTable) -> list[str]:
    """The columns that tell the stage's points apart: their labels (the axes, and the shard of a sharded stage),
    with the point id first when those do not (or the id alone for a stage without axes)."""
    keys = table.labels or table.axes
    distinct = len({tuple(repr(row.get(k)) for k in keys) for row in table.rows}) == len(table.rows)
    return keys if keys and distinct else ["point", *keys]


def display_columns(table: StageTable) -> list[str]:
    """For a terminal: the columns that tell the points apart (`row_keys`), then the metrics that differ between
    points; the constant ones are listed once by `constant_metrics`."""
    constant = constant_metrics(table)
    return [*row_keys(table), *(m for m in table.metrics if m not in constant)]


def constant_metrics(table: StageTable) -> dict[str, Any]:
    if len(table.rows) < 2:
        return {}
    return {m: table.rows[0].get(m) for m in table.metrics if len({repr(r.get(m)) for r in table.rows}) == 1}


# ---------------------------------------------------------------------------------------- per condition
CONDITIONS_CSV_COLUMNS = ["condition", "metric", "n", "mean", "sem", "baseline", "baseline_mean", "pairs", "delta",
                          "p_value", "test"]


CONTROLS_CSV_COLUMNS = ["condition", "metric", "kind", "control", "control_mean", "pairs", "delta", "p_value", "test"]


def conditions_csv(rows: list[ConditionRow]) -> str:
    """conditions.csv: full precision; an empty cell for NaN or no baseline."""
    return _rows_csv(CONDITIONS_CSV_COLUMNS, rows)


def controls_csv(rows: list[ControlRow]) -> str:
    """controls.csv: one row per compared condition, control condition and metric; full precision, an empty cell
    for NaN."""
    return _rows_csv(CONTROLS_CSV_COLUMNS, rows)


def _rows_csv(columns: list[str], rows: list[ConditionRow] | list[ControlRow]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_cell(getattr(row, c)) for c in columns])
    return out.getvalue()


def _cell(value: Any) -> Any:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else value


def _mean_sem(row: ConditionRow | None, fmt: str) -> str:
    if row is None:
        return "no data"
    if row.n == 0:  # results, but no finite value (a channel not fitted, a metric that does not apply)
        return "n/a"
    return f"{row.mean:{fmt}} ± {row.sem:{fmt}}" if row.n >= 2 else f"{row.mean:{fmt}} ± n/a"


def _delta_and_p(row: ConditionRow | None, fmt: str) -> tuple[str, str]:
    if row is None or row.baseline is None:
        return "no baseline", "n/a"
    if row.baseline == row.condition:
        return "baseline", ""
    return _paired_cells(row.pairs, row.delta, row.p_value, fmt)


def _paired_cells(pairs: int, delta: float, p_value: float, fmt: str) -> tuple[str, str]:
    """Δ and p of a paired comparison, as report.md shows them."""
    if pairs == 0:
        return "no paired seeds", "n/a"
    if pairs < 2:
        return f"{delta:+{fmt}}", "n/a (1 pair)"
    p = "n/a" if math.isnan(p_value) else ("< 0.001" if p_value < 0.001 else f"{p_value:.3f}")
    return f"{delta:+{fmt}}", f"{p} (df {pairs - 1})"


def family_table(report: Report, family: str) -> str:
    """The markdown table of one metric family: metric | condition | n | mean ± SEM | Δ vs baseline | p."""
    lines = []
    for metric in (m for m in report.metrics.values() if m.family == family):
        for i, condition in enumerate(report.conditions):
            row = report.row(condition, metric.key)
            delta, p = _delta_and_p(row, metric.fmt)
            n = str(row.n) if row else "0"
            lines.append([metric.label if i == 0 else "", condition, n, _mean_sem(row, metric.fmt), delta, p])
    return markdown_table(["metric", "condition", "n", "mean ± SEM", "Δ vs baseline", "p"], lines)


def _has_a_value(report: Report, family: str) -> bool:
    """Whether any model has a number (not NaN) in any metric of the family."""
    keys = [m.key for m in report.metrics.values() if m.family == family]
    return any(math.isfinite(model.values.get(key, math.nan)) for model in report.models for key in keys)


def report_markdown(report: Report, figures: set[str]) -> str:
    """report.md: what the run is, one table per family (each followed by its figures), the figures that could not
    be drawn and why, and the problems. `figures`: the file names drawn under figures/."""
    any_baseline = any(r.baseline is not None for r in report.rows)
    parts = [f"# Report: {report.manifest.get('name', report.run.path.name)}",
             _introduction(report, any_baseline)]
    test = f"Test: {TEST_NAME}." if any_baseline else "Test: none (no baseline condition)."
    shown = set()
    for family in report.families:
        if not _has_a_value(report, family.key):  # a run without guided models has no Neural guidance table
            continue
        caption = " ".join(part for part in (family.caption, test) if part)
        parts.append(f"## {family.title}\n\n*{caption}*\n\n{family_table(report, family.key)}")
        notes = family.notes(report) if family.notes is not None else ""
        parts += [notes] if notes else []
        links = [figure for _, figure in report.figures if figure.name in figures and figure.family == family.key]
        parts += [_figure_link(figure) for figure in links]
        shown |= {figure.name for figure in links}
    parts += [_figure_link(figure) for _, figure in report.figures if figure.name in figures - shown]
    controls = controls_markdown(report)
    parts += [controls] if controls else []
    parts += [findings_markdown(report.findings)] if report.findings else []
    parts += [_figure_missing(report, stage, figure) for stage, figure in report.figures if figure.name not in figures]
    parts.append(problems_markdown(report.problems))
    return "\n\n".join(parts) + "\n"


# ------------------------------------------------------------------------------------ against the controls
MOST_NAMED_CONDITIONS = 10  # report.md names this many conditions that lack a control, then counts the rest


def controls_markdown(report: Report) -> str | None:
    """report.md's part on the controls, after the baseline tables: a section with one table per family of the
    comparisons the sweep has, naming the controls it lacks; a line when it has none of them, or nothing to compare
    with them; None when the models' stage declares no controls."""
    controls = report.controls
    if controls is None:
        return None
    if not report.control_pairs:
        return f"*No control comparisons: this sweep has no {controls.description}.*"
    missing = missing_controls(report)
    absent = [kind.name for kind in controls.kinds if len(missing[kind.name]) == len(report.control_pairs)]
    if len(absent) == len(controls.kinds):
        return (f"*No control comparisons: this sweep has none of the controls ({', '.join(absent)}) of the "
                f"{controls.description}, so they are tested against the baseline only.*")
    parts = [f"## {controls.title}", f"*{_controls_caption(controls)}*"]
    parts += [_missing_sentence(report, kind, conditions) for kind, conditions in missing.items() if conditions]
    for family in report.families:
        table = _control_table(report, [m for m in report.metrics.values() if m.family == family.key])
        if table:
            parts.append(f"### {family.title}\n\n{table}")
    return "\n\n".join(parts)


def missing_controls(report: Report) -> dict[str, list[str]]:
    """Per control kind, the compared conditions the sweep has no control of that kind for."""
    kinds = [kind.name for kind in report.controls.kinds] if report.controls else []
    return {kind: [c for c, found in report.control_pairs.items() if not found[kind]] for kind in kinds}


def _controls_caption(controls: Controls) -> str:
    kinds = "; ".join(f"{kind.name}: {kind.description}" for kind in controls.kinds)
    return (f"Each condition of the {controls.description} against each of its control conditions in this sweep, "
            f"by kind — {kinds}. "
            f"Test: {TEST_NAME}; Δ is the mean seed-paired difference (condition − control), p is n/a with fewer "
            "than 2 pairs. The control column names the control's kind and the axes in which it differs.")


def _missing_sentence(report: Report, kind: str, conditions: list[str]) -> str:
    if len(conditions) == len(report.control_pairs):
        return f"This sweep has no {kind} control."
    named = "; ".join(f"`{c}`" for c in conditions[:MOST_NAMED_CONDITIONS])
    more = len(conditions) - MOST_NAMED_CONDITIONS
    return (f"No {kind} control for {len(conditions)} of the {len(report.control_pairs)} compared conditions: "
            f"{named}" + (f" and {more} more." if more > 0 else "."))


def _control_table(report: Report, metrics: list[Metric]) -> str | None:
    """metric | condition | control | pairs | Δ vs control | p, for these metrics; None without a comparison."""
    labels = {model.condition: model.labels for model in report.models}  # a condition's models differ in the seed
    by_metric: dict[str, list[ControlRow]] = {}
    for row in report.control_rows:
        by_metric.setdefault(row.metric, []).append(row)
    lines = []
    for metric in metrics:
        for i, row in enumerate(by_metric.get(metric.key, [])):
            delta, p = _paired_cells(row.pairs, row.delta, row.p_value, metric.fmt)
            differences = _differences(labels[row.condition], labels[row.control])
            control = f"{row.kind} ({differences})" if differences else row.kind
            lines.append([metric.label if i == 0 else "", row.condition, control, str(row.pairs), delta, p])
    return markdown_table(["metric", "condition", "control", "pairs", "Δ vs control", "p"], lines) if lines else None


def _differences(labels: dict[str, Any], control: dict[str, Any]) -> str:
    """The control's axes that differ from the condition's, with a value (not the seed): `predictor=shuffled`."""
    return ", ".join(f"{axis}={value}" for axis, value in control.items()
                     if axis != "seed" and value is not None and value != labels.get(axis))


def controls_json(report: Report) -> dict[str, Any] | None:
    """The controls for `aggregate --json`: the compared models, each kind's description, per kind the compared
    conditions without such a control, and every comparison (NaN as null); None when the models' stage declares no
    controls."""
    if report.controls is None:
        return None
    return {"compared": report.controls.description,
            "kinds": {kind.name: kind.description for kind in report.controls.kinds},
            "missing": missing_controls(report),
            "comparisons": [{column: _json_number(getattr(row, column)) for column in CONTROLS_CSV_COLUMNS}
                            for row in report.control_rows]}


# ------------------------------------------------------------------------------------------------ findings
FINDINGS_COLUMNS = ["claim", "metric", "contrast", "effect", "95% CI", "unit", "test", "n (pairs)", "df", "p",
                    "verdict"]


def findings_markdown(findings: list[Finding]) -> str:
    """report.md's Findings: the claims the sweep can test, each with its numbers and verdict, then those whose
    conditions it lacks, with what they need."""
    tested = [f for f in findings if f.verdict != NOT_IN_SWEEP]
    missing = [f for f in findings if f.verdict == NOT_IN_SWEEP]
    parts = ["## Findings", f"*The study's claims tested on this run's numbers. {RULE}*"]
    if tested:
        parts.append(markdown_table(FINDINGS_COLUMNS, [_finding_cells(f) for f in tested]))
    else:
        parts.append("*This sweep has the conditions of none of the study's claims.*")
    if missing:
        parts.append(f"{NOT_IN_SWEEP.capitalize()}:\n\n" + "\n".join(
            f"- {f.claim.section} {f.claim.text} ({f.claim.metric}): {f.why}" for f in missing))
    return "\n\n".join(parts)


def findings_line(findings: list[Finding]) -> str | None:
    """The terminal's count of verdicts ("findings (report.md): 3 consistent, 1 inconclusive, 9 not in this
    sweep"); None without claims."""
    if not findings:
        return None
    counts = Counter(finding.verdict for finding in findings)
    return "findings (report.md): " + ", ".join(f"{n} {verdict}" for verdict, n in counts.items())


def _finding_cells(finding: Finding) -> list[str]:
    claim = finding.claim
    contrast = (f"({claim.contrast.words}) − ({claim.minus.words})" if claim.minus is not None
                else claim.contrast.words)
    ci = "–" if math.isnan(finding.ci_low) else f"[{finding.ci_low:+.3g}, {finding.ci_high:+.3g}]"
    effect = "–" if math.isnan(finding.effect) else f"{finding.effect:+.3g}"
    p = "–" if math.isnan(finding.p_value) else f"{finding.p_value:.3g}"
    direction = "> 0" if claim.direction > 0 else "< 0"
    return [f"{claim.section} {claim.text} (claimed {direction})", claim.metric, contrast, effect, ci, claim.unit,
            finding.test, str(finding.pairs), str(finding.df), p, f"**{finding.verdict}** ({finding.why})"]


def findings_json(findings: list[Finding]) -> dict[str, Any]:
    """The Findings for `aggregate --json`: the rule and one entry per claim (NaN as null)."""
    return {"rule": RULE, "claims": [
        {"section": f.claim.section, "claim": f.claim.text, "metric": f.claim.metric, "unit": f.claim.unit,
         "claimed_direction": f.claim.direction, "contrast": f.claim.contrast.words,
         "minus": f.claim.minus.words if f.claim.minus is not None else None, "needs": f.claim.needs,
         "effect": _json_number(f.effect), "ci95": [_json_number(f.ci_low), _json_number(f.ci_high)],
         "p_value": _json_number(f.p_value), "pairs": f.pairs, "df": f.df, "test": f.test, "verdict": f.verdict,
         "why": f.why} for f in findings]}


def _json_number(value: Any) -> Any:
    return None if isinstance(value, float) and math.isnan(value) else value


def _introduction(report: Report, any_baseline: bool) -> str:
    manifest = report.manifest
    name = manifest.get("name", report.run.path.name)
    with_result = sum(model.has_result for model in report.models)
    seeds = sorted({str(m.seed) for m in report.models})
    return (f"Run `{name}` in `{report.run.path}` (sweep file `{manifest.get('sweep_file', '?')}`, code "
            f"`{manifest.get('git_sha', '?')}`, stages {', '.join(report.stages())}). {with_result} trained models "
            f"with a valid result, of {len(report.models)} planned, in {len(report.conditions)} conditions (seeds "
            f"{', '.join(seeds)}). Values are mean ± SEM over seeds (SEM with ddof=1; n counts the seeds with a "
            "finite value). " + _test_sentence(report.baseline, any_baseline) + _few_seeds_sentence(report))


# Below this many degrees of freedom a paired t-test's p says little: its critical t at 0.05 is 12.7 at df 1 and
# 4.3 at df 2 (against 2.0 at large df), so only an effect many times its seed-to-seed spread can reach p < 0.05.
INFORMATIVE_DF = 3


def _few_seeds_sentence(report: Report) -> str:
    """Says, when it applies, that the tests have too few seeds to inform: the degrees of freedom are beside each p."""
    tested = [row.pairs - 1 for row in report.rows if row.pairs >= 2]
    if not tested or min(tested) >= INFORMATIVE_DF:
        return ""
    few = sum(df < INFORMATIVE_DF for df in tested)
    return (f" Degrees of freedom (df = paired seeds - 1) are beside each p. {few} of {len(tested)} tests have df "
            f"below {INFORMATIVE_DF} (critical t at 0.05: 12.7 at df 1, 4.3 at df 2): too few seeds for such a test "
            "to inform; a p above 0.05 there is inconclusive, not evidence of no effect.")


def _test_sentence(baseline: Baseline | None, any_baseline: bool) -> str:
    if any_baseline and baseline is not None:
        return (f"Statistical test: {TEST_NAME} — each condition against its baseline ({baseline.description}, the "
                "same other axes), over the seeds present in both; Δ is the mean seed-paired difference, p is n/a "
                "with fewer than 2 pairs.")
    rule = f" ({baseline.description})" if baseline else ""
    return (f"No baseline condition{rule}: this sweep has none, so no condition is tested against one and the tables "
            "give mean ± SEM only.")


def _figure_link(figure: FigureSpec) -> str:
    return f"![{Path(figure.name).stem.replace('_', ' ')}]({FIGURES_DIR}/{figure.name})\n\n*{figure.caption}*"


def _figure_missing(report: Report, stage: str, figure: FigureSpec) -> str:
    why = ("this sweep has no such stage" if stage not in report.stages() else
           f"no model has a complete `{stage}` result yet")
    return f"*No figure {FIGURES_DIR}/{figure.name}: the `{stage}` stage provides its data, and {why}.*"


def problems_markdown(problems: list[Problem]) -> str:
    if not problems:
        return "## Problems\n\nNone: every planned point has a valid result."
    lines = [f"- **{p['stage']}** `{p['point']}`: {p['state']} — {p['reason']}" for p in problems]
    return (f"## Problems ({len(problems)})\n\nEach keeps its point out of the numbers it concerns; the point's other "
            "metrics are still used above.\n\n" + "\n".join(lines))


def headline_rows(report: Report) -> tuple[list[str], list[list[str]]]:
    """(header, rows) for a terminal: condition | n (models with a result) | the stages' headline columns (clean
    accuracy, robust accuracy at the largest ε and AUC per norm, CBM bandwidth and centre, ...); cells are
    `mean ± SEM`; a stage without data adds no column."""
    header = ["condition", "n", *(column.title for column in report.headline)]
    rows = []
    for condition in report.conditions:
        n = sum(1 for m in report.models if m.condition == condition and m.has_result)
        rows.append([condition, str(n), *(_mean_sem(report.row(condition, column.key), column.fmt)
                                          for column in report.headline)])
    return header, rows
