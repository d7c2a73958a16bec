"""A run's report from its result files: the models and their numbers, per-condition statistics, the comparisons
with controls, report.md, conditions.csv, controls.csv and the figures (SCIENCE.md sections 2 and 4 to 7).

The report iterates the stage registry (sfhpc.stages.registry), in its order, over the stages the run's manifest
plans, and asks each for its StageReport (spec.load_report()). The stage whose StageReport says `models` makes the
models, one per point, with its reported metrics; a sweep without it has no models and no conditions (its points
are in summary.md). Every other stage that reads the models' stage adds its numbers to the models it evaluates: its
`metrics` from each point's valid result scalars (the generic way), then whatever its `collect` hook adds (merged
shards, curves for its figures). The stages' families make report.md's tables, their figures follow their
family's table, and their headline columns make the terminal's conditions table. The models' stage's baseline rule
gives each condition its baseline (conditions.csv); its controls, the control conditions of the conditions it
compares with them (controls.csv, a section of report.md).

Only valid result files are read. Points without one are listed with the reason, and so is what a stage's hook
leaves out (a model whose attack shards are not all valid gets no attack numbers, never a partial merge).

Login-node code: no torch. The stages' report modules import h5py and scipy when needed, matplotlib only when
there is a figure to draw.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sfhpc.report.figures import FIGURES_DIR
from sfhpc.report.findings import evaluate_claims
from sfhpc.report.html import report_html
from sfhpc.report.model import (
    Collection,
    Column,
    Family,
    Metric,
    Model,
    Report,
    ReportedMetric,
    StageReport,
    condition_name,
    metric_columns,
)
from sfhpc.report.render import conditions_csv, controls_csv, report_markdown
from sfhpc.report.stats import condition_statistics, control_pairs, control_statistics
from sfhpc.report.summary import Summary, summarize
from sfhpc.results import atomic_write
from sfhpc.rundir import RunDir
from sfhpc.stages.registry import registry


@dataclass
class ReportFiles:
    """What `write_report` wrote, and the report it wrote it from (for the CLI's headline table)."""

    report_md: Path
    conditions_csv: Path
    figures: list[Path]
    report: Report
    controls_csv: Path
    report_html: Path


def build_report(run: RunDir, summary: Summary | None = None) -> Report:
    """Read every valid result file of the run and compute the condition statistics."""
    manifest = run.read_manifest()
    planned = {stage["name"]: stage for stage in manifest["plan"]["stages"]}
    summary = summary or summarize(run)  # it has checked every result file and read their scalars
    every_part = _stage_reports(planned)
    parts = {name: part for name, part in every_part.items() if name in planned}
    models_stage = next((name for name, part in parts.items() if part.models), None)
    models: dict[str, Model] = {}
    metrics: dict[str, Metric] = {}
    problems = list(summary.problems)
    extras: dict[str, Any] = {}
    if models_stage is not None:
        models_part = parts[models_stage]
        models = _models(models_stage, planned, summary, models_part.metrics)
        if models:  # the metrics some model has (a sweep without guided models has no neural share)
            metrics.update({m.name: Metric(m.name, m.label, m.family, m.fmt) for m in models_part.metrics
                            if any(m.name in model.values for model in models.values())})
        for name, part in parts.items():
            if name == models_stage or models_stage in registry()[name].upstream_in(planned):
                collection = Collection(run, name, planned[name]["points"], models_stage, models, summary, metrics,
                                        extras.setdefault(name, {}))
                _collect(part, collection, is_models_stage=name == models_stage)
                problems += collection.problems
    conditions = list(dict.fromkeys(model.condition for model in models.values()))
    baseline = parts[models_stage].baseline if models_stage is not None else None
    controls = parts[models_stage].controls if models_stage is not None else None
    rows = condition_statistics(list(models.values()), conditions, list(metrics), baseline)
    pairs = control_pairs(list(models.values()), controls)
    report = Report(run, manifest, list(models.values()), conditions, metrics, rows, problems, baseline, extras,
                    families=_families(parts, metrics),
                    figures=[(name, figure) for name, part in every_part.items() for figure in part.figures],
                    controls=controls, control_pairs=pairs,
                    control_rows=control_statistics(list(models.values()), conditions, list(metrics), pairs))
    report.headline = _headline(parts, report)
    declared = parts[models_stage].findings if models_stage is not None else None
    if declared is not None:
        report.findings = evaluate_claims(report.models, declared(report), report.metrics)
    return report


def write_report(run: RunDir, summary: Summary | None = None) -> ReportFiles:
    """Write conditions.csv, controls.csv, report.md, the figures (under figures/) and report.html (report.md as one
    self-contained page: figures embedded, sortable tables, a condition filter) into the run folder. A figure
    without data is not written (a stale one is removed) and report.md says which stage would provide it.
    controls.csv is written on every run, with its header alone when there is no comparison, so that it is never a
    stale file of an earlier aggregate."""
    report = build_report(run, summary)
    csv_path, md_path = run.path / "conditions.csv", run.path / "report.md"
    controls_path = run.path / "controls.csv"
    atomic_write(csv_path, lambda tmp: tmp.write_text(conditions_csv(report.rows)))
    atomic_write(controls_path, lambda tmp: tmp.write_text(controls_csv(report.control_rows)))
    figures = _draw_figures(report, run.path / FIGURES_DIR)
    markdown = report_markdown(report, {p.name for p in figures})
    atomic_write(md_path, lambda tmp: tmp.write_text(markdown))
    html_path = run.path / "report.html"
    atomic_write(html_path, lambda tmp: tmp.write_text(report_html(markdown, run.path)))
    return ReportFiles(md_path, csv_path, figures, report, controls_path, html_path)


def _stage_reports(planned: dict[str, Any]) -> dict[str, StageReport]:
    """Every registry stage's StageReport, in registry order (a stage without one adds nothing to the report). An
    absent stage's is read for its figures' names; a plugin whose report cannot be imported stops only the
    reports of the sweeps that use it."""
    parts = {}
    for name, spec in registry().stages.items():
        try:
            part = spec.load_report()
        except Exception:  # noqa: BLE001 - a plugin's import can raise anything; its stage is not in this run
            if name in planned:
                raise
            continue
        if part is not None:
            parts[name] = part
    return parts


def _models(stage: str, planned: dict[str, Any], summary: Summary, reported: tuple[ReportedMetric, ...]
            ) -> dict[str, Model]:
    """One model per point of the models' stage, with the parameters of the points it reads (what its control rules
    may ask: a guided model's predictor) and its reported metrics when it has a valid result."""
    params_of = {f"{name}/{point['id']}": point["params"] for name, planned_stage in planned.items()
                 for point in planned_stage["points"]}
    models = {}
    for point in planned[stage]["points"]:
        labels = point["labels"]
        model = Model(point["id"], labels, point["params"], condition_name(labels),
                      labels.get("seed", point["params"].get("seed")),
                      upstream_params={name: value for key in point["upstream"] if key in params_of
                                       for name, value in params_of[key].items()})
        scalars = summary.metrics.get((stage, point["id"]))
        if scalars is not None:
            model.has_result = True
            model.values.update({m.name: float(scalars[m.name]) for m in reported if m.name in scalars})
        models[point["id"]] = model
    return models


def _collect(part: StageReport, collection: Collection, is_models_stage: bool) -> None:
    """A stage's numbers: its reported metrics from each point's scalars (the models' stage has set its own), then
    its hook."""
    if not is_models_stage:
        collect_reported_metrics(collection, part.metrics)
    if part.collect is not None:
        part.collect(collection)


def collect_reported_metrics(collection: Collection, metrics: tuple[ReportedMetric, ...]) -> None:
    """The generic collector: each point's valid result scalars named by `metrics`, as values of the model the point
    evaluates (its variant: the point's own axes)."""
    if not metrics:
        return
    for point in collection.points:
        scalars = collection.result_scalars(point)
        if scalars is None or not collection.evaluates_a_model(point):
            continue  # without a result: listed by summarize
        model, variant = collection.model_and_variant(point)
        for metric in metrics:
            if metric.name in scalars:
                collection.set_value(model, metric.name, metric.label, metric.family, variant,
                                     float(scalars[metric.name]), metric.fmt)


def _families(parts: dict[str, StageReport], metrics: dict[str, Metric]) -> list[Family]:
    """report.md's tables in registry order: a family several stages declare keeps the first title and joins their
    captions; a family that a metric names and no stage declares is titled by its key."""
    merged: dict[str, Family] = {}
    for part in parts.values():
        for family in part.families:
            known = merged.get(family.key)
            merged[family.key] = family if known is None else Family(
                known.key, known.title, " ".join(caption for caption in (known.caption, family.caption) if caption),
                known.notes or family.notes)
    for metric in metrics.values():
        merged.setdefault(metric.family, Family(metric.family, metric.family, ""))
    return list(merged.values())


def _headline(parts: dict[str, StageReport], report: Report) -> list[Column]:
    """Each stage's headline columns in registry order: its hook's, else its metrics that have a column title."""
    columns: list[Column] = []
    for part in parts.values():
        columns += part.headline(report) if part.headline is not None else metric_columns(report, part.metrics)
    return columns


def _draw_figures(report: Report, folder: Path) -> list[Path]:
    """Draw the figures of the run's stages; a stale file of one without data is removed."""
    drawn = []
    for stage, figure in report.figures:
        path = folder / figure.name
        path.unlink(missing_ok=True)
        if stage in report.stages() and figure.draw(report, path):
            drawn.append(path)
    return drawn
