"""The report's types, shared by the report package and by the stages that add to it (torch-free, stage-free).

A *model* is a point of the stage whose points the report compares (the train stage); a *condition* is a model's
sweep labels without the seed (`band=lsf`). A stage adds to the report through the `StageReport` of its spec: the
metric rows it fills in for each model, the table sections (families) they belong to, its figures, and its columns
of the terminal's headline table. The models' stage also says what each condition is compared with: its baseline
(`Baseline`) and, for some conditions, their controls (`Controls`). This module names no stage and no metric.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sfhpc.report.summary import Summary
    from sfhpc.rundir import RunDir

SHARD_LABEL_SUFFIX = "_shard"  # a sharded stage's shard axis (attack_shard) tells shards apart, not variants

Problem = dict[str, str]  # stage, point, state (missing | failed | corrupt | incomplete), reason
# A model's parameters over those of the points it reads (a guided model: its predictor's), by name: what a control
# rule reads, since what makes a model a control can be a parameter of its upstream point (the predictor's kind).
Settings = dict[str, Any]


def problem(stage: str, point: str, state: str, reason: str) -> Problem:
    """A point (or a model's group of points) whose numbers are left out, and why: a line of report.md's list."""
    return {"stage": stage, "point": point, "state": state, "reason": reason}


def condition_name(labels: dict[str, Any]) -> str:
    """`band=lsf, alpha=0.9`: a model's labels without the seed, in axis order."""
    return ", ".join(f"{axis}={value}" for axis, value in labels.items() if axis != "seed") or "all models"


@dataclass(frozen=True)
class Family:
    """A table of report.md: the metrics of one kind, with a title and a caption that says how they were made."""

    key: str
    title: str
    caption: str
    # Markdown report.md shows after the family's table (e.g. a stage's table of the data it compared with), made
    # from the report; "" shows nothing.
    notes: Callable[[Report], str] | None = None


@dataclass(frozen=True)
class Metric:
    """A row name of the condition table, with how to show it."""

    key: str  # name in conditions.csv: a metric name, with its variant when it has one (variant_key)
    label: str  # name in report.md
    family: str  # the table it belongs to: a Family key
    fmt: str = ".3f"


@dataclass(frozen=True)
class ReportedMetric:
    """A scalar a stage writes into each result, reported per model (and variant) as it is: the plain way for a
    stage to reach conditions.csv and report.md. `column`: its title in the terminal's headline table (None: not
    shown there)."""

    name: str
    label: str
    family: str
    fmt: str = ".3f"
    column: str | None = None


@dataclass
class Model:
    """One model (a point of the models' stage) and every number derived from its result files."""

    point: str  # point id
    labels: dict[str, Any]
    params: dict[str, Any]
    condition: str
    seed: Any
    has_result: bool = False  # the point itself has a valid result
    values: dict[str, float] = field(default_factory=dict)  # metric key -> value (NaN allowed)
    # stage -> variant -> what a stage keeps per model for its figures (cbm: band centres and thresholds)
    curves: dict[str, dict[str, Any]] = field(default_factory=dict)
    upstream_params: dict[str, Any] = field(default_factory=dict)  # the parameters of the points it reads, merged

    def settings(self) -> Settings:
        """The model's parameters over its upstream points' (its own win a name both have)."""
        return {**self.upstream_params, **self.params}


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


@dataclass(frozen=True)
class Baseline:
    """What a condition is compared with: `is_baseline` tells a baseline model by its parameters; `paired_axes` are
    the axes a condition differs from its baseline in (the seed, which pairs them, among them); `description` says
    it in words, for the report."""

    is_baseline: Callable[[dict[str, Any]], bool]
    paired_axes: tuple[str, ...]
    description: str


@dataclass(frozen=True)
class Control:
    """One kind of control condition (a same-alpha model guided by a shuffled predictor, a model with only more
    weight decay). `is_control(settings)` tells a model of this kind; `matches(compared, control)`, when given, says
    whether a control model fits a compared model (both as Settings); `free_axes` are the axes the two may differ
    in (the seed, which pairs them, among them): every other axis is equal, or has no value in the control (an
    unguided model's ROI), as with the baseline. `name` titles it in tables ("shuffled-predictor"); `description`
    says it in words."""

    name: str
    description: str
    is_control: Callable[[Settings], bool]
    free_axes: tuple[str, ...]
    matches: Callable[[Settings, Settings], bool] | None = None


@dataclass(frozen=True)
class Controls:
    """The models' stage's control comparisons: each condition whose models `compared(settings)` accepts is tested
    against every condition of each `kinds` that fits it, as against its baseline. `description` names the
    compared models ("guided models (...)"); `title` heads report.md's section."""

    title: str
    description: str
    compared: Callable[[Settings], bool]
    kinds: tuple[Control, ...]


@dataclass(frozen=True)
class ControlRow:
    """One compared condition against one of its control conditions, for one metric: a line of controls.csv."""

    condition: str
    metric: str
    kind: str  # the Control's name
    control: str  # the control condition
    control_mean: float  # over the control's seeds with a finite value
    pairs: int  # seeds with a finite value in both
    delta: float  # mean over those seeds of (condition - control)
    p_value: float  # NaN with fewer than 2 pairs
    test: str


# compared condition -> control kind -> its control conditions (empty: the sweep has none that fits)
ControlPairs = dict[str, dict[str, list[str]]]


@dataclass
class Report:
    """Everything report.md, conditions.csv, controls.csv and the figures show."""

    run: RunDir
    manifest: dict[str, Any]
    models: list[Model]
    conditions: list[str]
    metrics: dict[str, Metric]  # in table order
    rows: list[ConditionRow]
    problems: list[Problem]
    baseline: Baseline | None = None
    # stage -> what its report hooks keep for its figures and headline columns (attack: the epsilons per panel)
    extras: dict[str, Any] = field(default_factory=dict)
    families: list[Family] = field(default_factory=list)  # report.md's tables, in order (the stages present)
    # (stage, figure) for every figure of the registry's stages, present or not: report.md says why one is absent
    figures: list[tuple[str, FigureSpec]] = field(default_factory=list)
    headline: list[Column] = field(default_factory=list)  # the terminal's columns after condition and n
    controls: Controls | None = None  # what the models' stage compares some conditions with, besides the baseline
    control_pairs: ControlPairs = field(default_factory=dict)
    control_rows: list[ControlRow] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)  # the declared claims, tested on this run's numbers

    def __post_init__(self) -> None:
        self._rows_by_key = {(r.condition, r.metric): r for r in self.rows}

    def row(self, condition: str, metric: str) -> ConditionRow | None:
        return self._rows_by_key.get((condition, metric))

    def stages(self) -> list[str]:
        return [stage["name"] for stage in self.manifest["plan"]["stages"]]


@dataclass
class Collection:
    """What a stage's `collect` hook reads and adds to while a report is built."""

    run: RunDir
    stage: str
    points: list[dict[str, Any]]  # the stage's points in the manifest
    models_stage: str  # the stage whose points are the models
    models: dict[str, Model]  # models by point id
    summary: Summary  # every valid result's scalars, and the points without one
    metrics: dict[str, Metric]  # add each new row name here
    extras: dict[str, Any]  # this stage's own entry of Report.extras
    problems: list[Problem] = field(default_factory=list)  # add what keeps a model's numbers out

    def result_scalars(self, point: dict[str, Any]) -> dict[str, Any] | None:
        """The scalars of the point's valid result; None without one (summarize has listed it as a problem)."""
        return self.summary.metrics.get((self.stage, point["id"]))

    def evaluates_a_model(self, point: dict[str, Any]) -> bool:
        return self._model_upstream(point) is not None

    def model_and_variant(self, point: dict[str, Any]) -> tuple[Model, str]:
        """The model a downstream point evaluates, and the point's own axes that the model lacks (its variant,
        `attack_seed=1`); a shard axis is not a variant."""
        upstream = self._model_upstream(point)
        if upstream is None:
            raise ValueError(f"{self.stage} point {point['id']} evaluates no {self.models_stage} point")
        model = self.models[upstream]
        return model, variant_name(variant_labels(point["labels"], model.labels))

    def _model_upstream(self, point: dict[str, Any]) -> str | None:
        """The point id of the model among the point's upstream points ("stage/point"), if there is one."""
        ids = [upstream.split("/", 1)[1] for upstream in point["upstream"]
               if upstream.split("/", 1)[0] == self.models_stage]
        return ids[0] if len(ids) == 1 and ids[0] in self.models else None

    def set_value(self, model: Model, name: str, label: str, family: str, variant: str, value: float,
                  fmt: str = ".3f") -> None:
        """A model's value of metric `name` (of this variant), declaring the metric row on first use."""
        key = variant_key(name, variant)
        self.metrics.setdefault(key, Metric(key, variant_label(label, variant), family, fmt))
        model.values[key] = value

    def add_problem(self, point: str, state: str, reason: str) -> None:
        self.problems.append(problem(self.stage, point, state, reason))


def variant_labels(labels: dict[str, Any], model_labels: dict[str, Any]) -> dict[str, Any]:
    """A downstream point's own axes that the model it evaluates lacks (`attack_seed: 1`): what tells the model's
    variants apart. A shard axis is not one: shards of one variant together make its numbers."""
    return {k: v for k, v in labels.items() if k not in model_labels and not k.endswith(SHARD_LABEL_SUFFIX)}


def variant_name(variant: dict[str, Any]) -> str:
    """`attack_seed=1, attack_version=custom`; "" for a model's only variant."""
    return ", ".join(f"{k}={v}" for k, v in variant.items())


def variant_key(name: str, variant: str) -> str:
    """`metric[axis=value]`: a metric of a downstream variant of a model."""
    return f"{name}[{variant}]" if variant else name


def variant_label(label: str, variant: str) -> str:
    return f"{label} ({variant})" if variant else label


def split_variant(key: str) -> tuple[str, str]:
    """(metric name, variant) of a metric key: the inverse of `variant_key`."""
    name, bracket, variant = key.partition("[")
    return (name, variant[:-1]) if bracket else (name, "")


@dataclass(frozen=True)
class Column:
    """A column of the terminal's headline table: its title, the metric key and the number format."""

    title: str
    key: str
    fmt: str = ".3f"


@dataclass(frozen=True)
class FigureSpec:
    """A figure a stage draws: its file name under figures/, the family it follows in report.md, its caption, and
    `draw(report, path) -> bool` (False, drawing nothing, when no model has the data)."""

    name: str
    family: str
    caption: str
    draw: Callable[[Report, Path], bool]


def metric_columns(report: Report, metrics: tuple[ReportedMetric, ...]) -> list[Column]:
    """The headline columns of the metrics that have a column title: one per variant the report has, in row order
    (a stage's default headline)."""
    titled = {metric.name: metric for metric in metrics if metric.column is not None}
    columns = []
    for metric in report.metrics.values():
        name, variant = split_variant(metric.key)
        if name in titled:
            columns.append(Column(variant_label(titled[name].column or "", variant), metric.key, metric.fmt))
    return columns


@dataclass(frozen=True)
class Contrast:
    """Models that `compared(settings)` accepts, each against the models `reference(settings)` accepts that are
    equal to it on every axis but `free_axes` (an axis the reference has no value for matches any, as with the
    baseline), seed-paired. `words` says it for a table ("TO-guided − same-alpha shuffled control")."""

    compared: Callable[[Settings], bool]
    reference: Callable[[Settings], bool]
    free_axes: tuple[str, ...]
    words: str


@dataclass(frozen=True)
class Claim:
    """A claim of a study, tested on a run's own numbers: per seed, the mean difference of `metric` (through
    `transform`, when given) over the pairs of `contrast`, less that of `minus` when given (a difference of
    differences: a shift against another shift); `direction` +1 when the claim says that effect is positive, -1
    negative. `needs` names what the sweep must have for it ("the attack stage and alpha = 0 models"); `unit` is the
    effect's. Verdicts come from the numbers only (sfhpc.report.findings)."""

    section: str  # the study's claim it belongs to: "premise", "(a)", ...
    text: str  # the claim in words
    metric: str  # a metric key of the report (with its variant)
    unit: str
    direction: int
    contrast: Contrast
    needs: str
    minus: Contrast | None = None
    transform: Callable[[float], float] | None = None


@dataclass(frozen=True)
class Finding:
    """A claim tested: the effect (mean over seeds of the per-seed differences), its 95% CI, the test, the pairs and
    degrees of freedom, and the verdict (`verdict`: consistent, contradicts, inconclusive, or not in this sweep;
    `why` says the reason in words)."""

    claim: Claim
    effect: float
    ci_low: float
    ci_high: float
    p_value: float
    pairs: int  # seeds with a value on every side of the contrast(s)
    df: int  # pairs - 1 (0 without pairs)
    test: str
    verdict: str
    why: str


@dataclass(frozen=True)
class StageReport:
    """What a stage adds to the report. `models`: its points are the report's models (one stage, the train stage);
    `baseline`: then, what each condition is compared with. `metrics`: scalars reported as they are (per model, per
    variant); `collect`: a hook for what needs more (merging shards, curves for a figure); it returns nothing and
    adds to its Collection. `headline(report)`: columns for the terminal (default: the metrics with a column).
    `controls`: the models' stage's control comparisons, besides the baseline. `findings(report)`: the models'
    stage's claims of the study, tested on the run's numbers (the report renders whatever it declares)."""

    families: tuple[Family, ...] = ()
    metrics: tuple[ReportedMetric, ...] = ()
    collect: Callable[[Collection], None] | None = None
    figures: tuple[FigureSpec, ...] = ()
    headline: Callable[[Report], list[Column]] | None = None
    models: bool = False
    baseline: Baseline | None = None
    controls: Controls | None = None
    findings: Callable[[Report], list[Claim]] | None = None
