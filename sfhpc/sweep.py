"""Pure sweep expansion: a validated sweep file -> ordered stage points with stable, readable, hashed ids.

No I/O beyond reading the job files, no torch, no clock: the same sweep gives the same points everywhere.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from sfhpc.config import (
    JOBS_DIR,
    Closed,
    ClusterProfile,
    DataConfig,
    JobSpec,
    KeyPath,
    LocatedYaml,
    Resources,
    SweepConfig,
    explain_pydantic_error,
    load_cluster_profile,
    load_job_spec,
    load_sweep,
    referenced_file,
)
from sfhpc.errors import SweepError
from sfhpc.stages.registry import Registry, registry
from sfhpc.stages.spec import DataAbsent, ParamError, StageSpec


@dataclass(frozen=True)
class Point:
    """One unit of work of one stage: a job array task."""

    stage: str
    id: str
    params: dict[str, Any]
    upstream: tuple[str, ...] = ()  # "stage/point_id" of the points it needs
    labels: dict[str, Any] = field(default_factory=dict)  # the sweep axes' values, own and inherited


@dataclass(frozen=True)
class StagePlan:
    name: str
    job: str
    entry: str
    resources: Resources
    points: tuple[Point, ...]
    axes: tuple[str, ...]  # the sweep axes of this stage's parameters
    by_sweep_index: tuple[tuple[str, ...], ...] = ()  # the point ids each sweep point projects onto
    shards: int = 1  # the job file's shards per upstream point (a sweep parameter may override it)
    expected_minutes: float | None = None  # per point, from the job file (or measured: Plan.calibrated)
    calibrated_from: str | None = None  # the run whose measured median gave expected_minutes

    def hours(self) -> dict[str, float] | None:
        """Estimated GPU- and CPU-hours of all the stage's points, or None without an expected run time."""
        if self.expected_minutes is None:
            return None
        point_hours = len(self.points) * self.expected_minutes / 60 * self.resources.nodes
        per_node = self.resources.tasks_per_node
        return {"gpu_hours": point_hours * self.resources.gpus_per_node,
                "cpu_hours": point_hours * per_node * self.resources.cpus_per_task}


@dataclass(frozen=True)
class Plan:
    """A fully expanded sweep: everything a launch needs, JSON-serialisable through `to_json`."""

    sweep: SweepConfig
    source: Path
    stages: tuple[StagePlan, ...] = field(default_factory=tuple)
    cluster: ClusterProfile = ClusterProfile()

    def stage(self, name: str) -> StagePlan:
        return next(stage for stage in self.stages if stage.name == name)

    @property
    def n_points(self) -> int:
        return sum(len(stage.points) for stage in self.stages)

    def to_json(self) -> dict[str, Any]:
        return {
            "sweep": self.sweep.model_dump(mode="json"),
            "cluster": self.cluster.model_dump(mode="json"),
            "stages": [
                {
                    "name": stage.name,
                    "job": stage.job,
                    "entry": stage.entry,
                    "resources": stage.resources.model_dump(mode="json"),
                    "shards": stage.shards,
                    "estimate": stage.hours(),
                    "estimate_from": stage.calibrated_from or "job file",
                    "axes": list(stage.axes),
                    "points": [
                        {"id": p.id, "labels": p.labels, "params": p.params, "upstream": list(p.upstream)}
                        for p in stage.points
                    ],
                }
                for stage in self.stages
            ],
        }

    def calibrated(self, minutes: dict[str, float], source: str) -> Plan:
        """This plan with the stages in `minutes` (stage -> measured median minutes per point, from run `source`)
        estimated from those instead of their job files' expected_minutes."""
        stages = tuple(replace(stage, expected_minutes=minutes[stage.name], calibrated_from=source)
                       if stage.name in minutes else stage for stage in self.stages)
        return replace(self, stages=stages)

    def fingerprint(self) -> str:
        """Hash of the resolved design (design_fingerprint): equal for files that differ only in comments, layout,
        resources or cluster settings."""
        return design_fingerprint(self.to_json())


# What a stage computes, and for which points: a plan's JSON without resources, the job file's name, estimates and
# cluster settings, which change where, how and how fast a point runs but not what it computes. (The threads and
# ranks a point runs on change floating-point sums and per-rank random streams, not the design: a run's record of
# such changes is the manifest's `changes`.) A point counts by its id, labels and upstream, not by its resolved
# params: its id already hashes every setting that differs from its default (a default that changed results is
# named in the id: spec.ID_DEFAULT), so a stage that gains a parameter keeps the design of the runs made before it.
DESIGN_KEYS = ("name", "entry", "shards", "axes", "points")
POINT_DESIGN_KEYS = ("id", "labels", "upstream")


def design_fingerprint(plan_json: dict[str, Any]) -> str:
    """Hash of a plan's design, from its JSON (Plan.to_json, as a run's manifest keeps it)."""
    return _digest([{**{key: stage[key] for key in DESIGN_KEYS if key != "points"},
                     "points": [{key: point.get(key) for key in POINT_DESIGN_KEYS} for point in stage["points"]]}
                    for stage in plan_json["stages"]], 16)


def setting_changes(old_plan: dict[str, Any], new_plan: dict[str, Any]) -> list[str]:
    """What changed between two plans of one design in the settings left out of it: per stage its job file and
    resources, then the cluster settings; one line each, `stage: key old -> new`."""
    old_stages = {stage["name"]: stage for stage in old_plan["stages"]}
    changes = []
    for stage in new_plan["stages"]:
        old = old_stages.get(stage["name"])
        if old is None:
            continue
        if old.get("job") != stage["job"]:
            changes.append(f"{stage['name']}: job {old.get('job')} -> {stage['job']}")
        changes += [f"{stage['name']}: {line}" for line in _changed_entries(old.get("resources", {}),
                                                                          stage["resources"])]
    changes += [f"cluster: {line}" for line in _changed_entries(old_plan.get("cluster", {}), new_plan["cluster"])]
    return changes


def _changed_entries(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    return [f"{key} {_setting_text(old.get(key))} -> {_setting_text(new.get(key))}"
            for key in sorted(old.keys() | new.keys()) if old.get(key) != new.get(key)]


def _setting_text(value: Any) -> str:
    """A setting as JSON, a whole float as an integer (mem_gb 8, not 8.0)."""
    return json.dumps(int(value) if isinstance(value, float) and value.is_integer() else value)


def _digest(value: Any, length: int) -> str:
    return hashlib.sha1(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:length]


# ----------------------------------------------------------------------------------- sweep points
@dataclass(frozen=True)
class SweepPoint:
    """A point of the sweep's axes, and for each axis the YAML location its value came from."""

    values: dict[str, Any]
    origins: dict[str, KeyPath]


def sweep_points(sweep: SweepConfig, doc: LocatedYaml, allowed_axes: list[str],
                 max_points: int | None = None) -> list[SweepPoint]:
    """grid x zip, minus excludes, plus includes; duplicates, an exclude pattern that matches nothing and more
    points than `max_points` (default: the sweep's `max_points`) are errors."""
    _check_axis_names(sweep, doc, allowed_axes)
    for axis, values in sweep.grid.items():
        if not values:
            raise doc.error(("grid", axis), "empty list: a grid axis needs at least one value")
    if not sweep.grid and not sweep.zip and not sweep.include:
        raise doc.error(("grid",), "empty grid: give at least one axis in `grid`, `zip` or `include`")
    _check_point_count(sweep, doc, sweep.max_points if max_points is None else max_points)
    points = _without_excluded(_product(sweep), sweep.exclude, doc)
    for index, extra in enumerate(sweep.include):
        points.append(SweepPoint(dict(extra), {k: ("include", index, k) for k in extra}))
    _check_no_duplicates(points, doc)
    if not points:
        raise doc.error(("exclude",), "every point is excluded: the sweep is empty")
    return points


def _check_axis_names(sweep: SweepConfig, doc: LocatedYaml, allowed: list[str]) -> None:
    named: list[KeyPath] = [("grid", k) for k in sweep.grid] + [("zip", k) for k in sweep.zip]
    named += [("include", i, k) for i, p in enumerate(sweep.include) for k in p]
    named += [("exclude", i, k) for i, p in enumerate(sweep.exclude) for k in p]
    for path in named:
        if path[-1] not in allowed:
            raise doc.error(path, f"unknown axis; axes are parameters of the sweep's stages: {', '.join(allowed)}")
    both = set(sweep.grid) & set(sweep.zip)
    if both:
        axis = sorted(both)[0]
        raise doc.error(("zip", axis), "axis is in both `grid` and `zip`; keep it in one")


def _check_point_count(sweep: SweepConfig, doc: LocatedYaml, cap: int) -> None:
    """Refuse more than `cap` points before building any: a grid's size is a product, and one typo in one axis
    multiplies the time and memory of everything after."""
    factors = {axis: len(values) for axis, values in sweep.grid.items()}
    if sweep.zip:
        factors["zip"] = len(next(iter(sweep.zip.values())))
    product = math.prod(factors.values()) if factors else 0
    count = product + len(sweep.include)
    if count <= cap:
        return
    made_of = " x ".join(f"{axis} {n:,}" for axis, n in factors.items())
    if sweep.include:
        made_of = f"{made_of} + include {len(sweep.include):,}" if made_of else f"include {len(sweep.include):,}"
    where = ("grid",) if sweep.grid else ("zip",) if sweep.zip else ("include",)
    raise doc.error(where, f"the sweep has {count:,} points ({made_of}), above the limit of {cap:,}; set "
                           f"`max_points: {count}` at the top of the sweep file (or pass --max-points {count}) "
                           "if you mean it")


def _without_excluded(product: list[SweepPoint], patterns: list[dict[str, Any]], doc: LocatedYaml
                      ) -> list[SweepPoint]:
    """grid x zip less the points an exclude pattern matches. Every pattern must match at least one point: one that
    removes nothing is a typo (band: lfs) or names an axis the grid lacks, and would otherwise leave the points it
    meant to remove in the sweep."""
    kept, used = [], set()
    for point in product:
        matched = {i for i, pattern in enumerate(patterns) if _matches(point.values, pattern)}
        used |= matched
        if not matched:
            kept.append(point)
    unused = next((i for i in range(len(patterns)) if i not in used), None)
    if unused is not None:
        raise doc.error(("exclude", unused), f"matches no point of grid and zip; a typo? (pattern {patterns[unused]})")
    return kept


def _product(sweep: SweepConfig) -> list[SweepPoint]:
    grid_axes = [[(axis, value, ("grid", axis, i)) for i, value in enumerate(values)]
                 for axis, values in sweep.grid.items()]
    zip_rows = [[(axis, values[i], ("zip", axis, i)) for axis, values in sweep.zip.items()]
                for i in range(len(next(iter(sweep.zip.values()), [])))]
    if not grid_axes and not zip_rows:
        return []
    points = []
    for combo in itertools.product(*grid_axes, *([zip_rows] if zip_rows else [])):
        cells = [c for item in combo for c in (item if isinstance(item, list) else [item])]
        points.append(SweepPoint({a: v for a, v, _ in cells}, {a: o for a, _, o in cells}))
    return points


def _matches(values: dict[str, Any], pattern: dict[str, Any]) -> bool:
    """A point matches a pattern when it has every key of it, with the value or one of the values listed."""
    return all(
        key in values and (values[key] in want if isinstance(want, list) else values[key] == want)
        for key, want in pattern.items()
    )


def _check_no_duplicates(points: list[SweepPoint], doc: LocatedYaml) -> None:
    seen: dict[str, SweepPoint] = {}
    for point in points:
        key = json.dumps(point.values, sort_keys=True, default=str)
        if key in seen:
            where = next(iter(point.origins.values()))
            first_line = doc.line_of(next(iter(seen[key].origins.values())))
            raise doc.error(where, f"duplicate point {point.values} (first made at line {first_line})")
        seen[key] = point


# -------------------------------------------------------------------------------- stage points
def expand(sweep: SweepConfig, doc: LocatedYaml, jobs_dir: Path = JOBS_DIR, *, max_points: int | None = None,
           skipped: list[str] | None = None) -> Plan:
    """Expand a validated sweep into every stage's points, in a deterministic order. `max_points` overrides the
    sweep's own `max_points` cap (a CLI flag). With a `skipped` list, a check whose data is not here (DataAbsent)
    is appended to it instead of failing: a plan made before the data is copied."""
    stages_known = _known_stages(sweep, doc)
    cluster = load_cluster_profile(sweep, doc)  # first: cheap, and checked whatever the executor
    allowed_axes = sorted({name for stage in sweep.stages for name in stages_known[stage].params.model_fields})
    points = sweep_points(sweep, doc, allowed_axes, max_points)
    stages: list[StagePlan] = []
    for name in _stage_order(sweep, doc, stages_known):
        stages.append(_expand_stage(stages_known[name], sweep, doc, points, jobs_dir, stages, skipped,
                                    cluster.resources))
    return Plan(sweep=sweep, source=doc.path, stages=tuple(stages), cluster=cluster)


def _known_stages(sweep: SweepConfig, doc: LocatedYaml) -> Registry:
    """The registry, once every stage the sweep names is in it (a plugin that failed to load says why)."""
    known = registry()
    for name in sweep.stages:
        if name not in known:
            broken = f"; {known.broken[name]}" if name in known.broken else ""
            raise doc.error(("stages", name), f"unknown stage; known stages: {', '.join(known.stages)}{broken}")
    return known


def expand_file(path: Path | str, jobs_dir: Path = JOBS_DIR, *, max_points: int | None = None,
                base_dir: Path | None = None, skipped: list[str] | None = None) -> Plan:
    """Load, check and expand a sweep file; every mistake is a SweepError naming the file, the line and the key.
    `max_points` overrides the sweep's `max_points` cap; `base_dir` is what relative `job:` and `cluster.profile:`
    paths are relative to (default: the sweep file's folder). `skipped`: plan without the data that is not here,
    listing each check skipped (once) there; launching passes none, so that every check runs."""
    sweep, doc = load_sweep(path, base_dir, skipped)
    return expand(sweep, doc, jobs_dir, max_points=max_points, skipped=skipped)


def _stage_order(sweep: SweepConfig, doc: LocatedYaml, known: Registry) -> list[str]:
    """Stages in an order where every stage follows its upstream stages (which must be in the sweep)."""
    ordered: list[str] = []
    for name in sweep.stages:
        for upstream in known[name].upstream:
            if upstream not in sweep.stages:
                raise doc.error(("stages", name), f"stage needs stage {upstream!r}, which the sweep lacks")
    while len(ordered) < len(sweep.stages):
        for name in sweep.stages:
            if name not in ordered and all(u in ordered for u in known[name].upstream_in(sweep.stages)):
                ordered.append(name)
    return ordered


def _expand_stage(spec: StageSpec[Any], sweep: SweepConfig, doc: LocatedYaml, points: list[SweepPoint],
                  jobs_dir: Path, done: list[StagePlan], skipped: list[str] | None = None,
                  cluster_defaults: dict[str, Any] | None = None) -> StagePlan:
    name = spec.name
    stage_cfg = sweep.stages[name]
    fields = spec.params.model_fields
    shard_param = spec.shards.index if spec.shards else None
    for key in stage_cfg.params:
        if key not in fields:
            raise doc.error(("stages", name, "params", key), f"unknown parameter; allowed: {', '.join(fields)}")
    job_name = stage_cfg.job or name
    job = _load_job(job_name, doc, name, jobs_dir)
    if job.entry != spec.entry:  # it would run another stage's code on this stage's points, on the node
        raise doc.error(("stages", name, "job"), f"job {job_name!r} runs {job.entry}, not the {name} stage "
                                                 f"({spec.entry}); give a job file of the {name} stage")
    if stage_cfg.job and "/" in stage_cfg.job:  # a path: the manifest says which file, wherever the run goes
        job_name = str(referenced_file(job_name, jobs_dir, doc.base_dir))
    resources = _merge_resources(job, cluster_defaults or {}, stage_cfg.resources, doc, name)

    validated: dict[str, list[dict[str, Any]]] = {}  # cache: many sweep points project onto one stage point
    projected: list[list[dict[str, Any]]] = []  # per sweep point: its stage params (one per shard)
    for point in points:
        own = {k: v for k, v in point.values.items() if k in fields}
        for key in own:
            if key in stage_cfg.params or key == shard_param:
                raise doc.error(("stages", name, "params", key) if key in stage_cfg.params else point.origins[key],
                                f"{key!r} is both a sweep axis and a fixed parameter; keep it in one place"
                                if key in stage_cfg.params else f"{key!r} is set by sfhpc for each shard")
        cache_key = json.dumps(own, sort_keys=True, default=str)
        if cache_key not in validated:
            params = _validate_params(spec, {**stage_cfg.params, **own}, point, doc, sweep.data, job, skipped)
            validated[cache_key] = _shards(spec, params, job)
        projected.append(validated[cache_key])

    # Every sweep axis of the stage (and of its upstream stages) is in its ids, varying or not, so that adding a
    # value to an axis keeps the ids (and results) of the points that were already there.
    upstreams = _upstreams(done, spec.upstream_in(sweep.stages))
    inherited = {axis for up in upstreams for axis in up.axes}
    axes = tuple(k for k in _axis_order(points) if k in fields or k in inherited)
    shown = (*axes, shard_param) if shard_param else axes
    data = _non_defaults(sweep.data.model_dump(mode="json"), DataConfig())
    defaults = spec.params.model_construct()  # the defaults, without the fields a sweep must give
    points_of = {up.name: {p.id: p for p in up.points} for up in upstreams}
    stage_points: dict[str, Point] = {}
    by_sweep_index: list[tuple[str, ...]] = []
    for index, shards in enumerate(projected):
        needed = _needed_upstreams(spec, upstreams, shards[0], points[index], doc)
        upstream = tuple(f"{up.name}/{pid}" for up in needed for pid in up.by_sweep_index[index])
        parents = [points_of[key.split("/")[0]][key.split("/", 1)[1]] for key in upstream]
        ids = []
        for params in shards:
            # An axis of an upstream stage this point does not need (an unguided model's ROI) is None.
            labels = {a: params[a] if a in fields else next((p.labels[a] for p in parents if a in p.labels), None)
                      for a in shown}
            identity: dict[str, Any] = {"params": _non_defaults(params, defaults), "data": data}
            if upstream:  # a downstream point is a function of the points it reads
                identity["upstream"] = list(upstream)
            pid = point_id(name, labels, shown, identity)
            ids.append(pid)
            stage_points.setdefault(pid, Point(name, pid, params, upstream, labels))
        by_sweep_index.append(tuple(ids))
    return StagePlan(name, job_name, job.entry, resources, tuple(stage_points.values()), axes,
                     tuple(by_sweep_index), job.shards, job.expected_minutes)


def _needed_upstreams(spec: StageSpec[Any], upstreams: list[StagePlan], params: dict[str, Any], point: SweepPoint,
                      doc: LocatedYaml) -> list[StagePlan]:
    """The upstream stages one point reads: all of them, except an optional one its parameters do not need (an
    unguided train point needs no predictor, so it expands once, not once per subject and ROI)."""
    optional = spec.optional_upstream
    if optional is None:
        return upstreams
    needs = spec.needs_optional(params)
    if needs and not any(up.name == optional.stage for up in upstreams):
        where = point.origins.get(optional.when) or ("stages", spec.name, "params", optional.when)
        raise doc.error(where, f"{optional.when} > 0 needs the {optional.stage!r} stage ({optional.why}); add it "
                               "under `stages`")
    return [up for up in upstreams if needs or up.name != optional.stage]


def _shards(spec: StageSpec[Any], params: dict[str, Any], job: JobSpec) -> list[dict[str, Any]]:
    """A sharded stage's point becomes one point per shard; any other stage's stays one point."""
    if spec.shards is None:
        return [params]
    return [{**params, spec.shards.index: shard} for shard in range(spec.n_shards(params, job))]


def _upstreams(done: list[StagePlan], names: tuple[str, ...]) -> list[StagePlan]:
    return [stage for stage in done if stage.name in names]


def _axis_order(points: list[SweepPoint]) -> list[str]:
    return list(dict.fromkeys(axis for point in points for axis in point.values))


def _load_job(job_name: str, doc: LocatedYaml, stage: str, jobs_dir: Path) -> JobSpec:
    try:
        return load_job_spec(job_name, jobs_dir, doc.base_dir)
    except SweepError as err:
        if err.message.startswith("no such job file"):
            raise doc.error(("stages", stage, "job"), f"{err.message} (looked for {err.file})") from None
        raise


def _merge_resources(job: JobSpec, cluster_defaults: dict[str, Any], overrides: dict[str, Any], doc: LocatedYaml,
                     stage: str) -> Resources:
    """A stage's resources: its job file's, then the cluster profile's defaults, then the sweep stage's own."""
    try:
        return Resources.model_validate({**job.resources.model_dump(), **cluster_defaults, **overrides})
    except ValidationError as err:
        first = err.errors()[0]
        raise doc.error(("stages", stage, "resources", *first["loc"]), explain_pydantic_error(first)) from None


def _validate_params(spec: StageSpec[Any], values: dict[str, Any], point: SweepPoint, doc: LocatedYaml,
                     data: DataConfig, job: JobSpec, skipped: list[str] | None = None) -> dict[str, Any]:
    """One point's parameters, validated by the stage's model and passed through its expand-time check; errors
    are located at the parameter's line (its sweep axis, or its fixed value). A check whose data is not here is
    listed in `skipped` (once), when there is such a list."""
    try:
        params: Closed = spec.params.model_validate(values)
    except ValidationError as err:
        first = err.errors()[0]
        param = first["loc"][0] if first["loc"] else None
        origin = point.origins.get(param) if isinstance(param, str) else None
        where = origin or ("stages", spec.name, "params", *first["loc"])
        raise doc.error(where, explain_pydantic_error(first)) from None
    if spec.check is not None:
        try:
            spec.check(params, data, job)
        except ValueError as err:
            if isinstance(err, DataAbsent) and skipped is not None:  # planning: the data is not here yet
                if (note := f"{spec.name}: {err}") not in skipped:
                    skipped.append(note)
                return params.model_dump(mode="json")
            key = err.key if isinstance(err, ParamError) else spec.check_key
            origin = point.origins.get(key) if key else None
            raise doc.error(origin or ("stages", spec.name, "params", *((key,) if key else ())), str(err)) from None
    return params.model_dump(mode="json")


def _non_defaults(values: dict[str, Any], defaults: Any) -> dict[str, Any]:
    """The values a point id hashes: those that differ from their defaults, or from the value a parameter declares
    as its behaviour before it existed (sfhpc.stages.spec.ID_DEFAULT)."""
    from sfhpc.stages.spec import ID_DEFAULT

    reference = defaults.model_dump(mode="json")
    for name, info in type(defaults).model_fields.items():
        if isinstance(info.json_schema_extra, dict) and ID_DEFAULT in info.json_schema_extra:
            reference[name] = info.json_schema_extra[ID_DEFAULT]
    return {key: value for key, value in values.items() if reference.get(key) != value}


# Bytes of a point id's readable part: the id names a folder, and file systems allow 255 bytes per name.
MAX_READABLE_ID = 200


def point_id(stage: str, labels: dict[str, Any], axes: tuple[str, ...], identity: dict[str, Any]) -> str:
    """Readable and hashed: `band=lsf-seed=0-3f9a2c1e`. The hash covers every setting that differs from its
    default (parameters and data), so two points with equal readable parts but other fixed settings never share an
    id, and a new parameter added to sfhpc with a default keeps existing ids (and results) valid. A readable part
    longer than MAX_READABLE_ID bytes (many axes, a huge value) is cut and ends in '...': the hash still tells the
    points apart, and the id stays a valid folder name."""
    digest = _digest({"stage": stage, **identity}, 8)
    readable = _fit_bytes("-".join(f"{axis}={_format_value(labels[axis])}" for axis in axes), MAX_READABLE_ID)
    return f"{readable}-{digest}" if readable else f"{stage}-{digest}"


def _fit_bytes(text: str, limit: int) -> str:
    """`text`, or its start and '...' in at most `limit` UTF-8 bytes (never half a character)."""
    if len(text.encode()) <= limit:
        return text
    return text.encode()[:limit - 3].decode(errors="ignore") + "..."


def _format_value(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    return "".join(c if c.isalnum() or c in "+._" else "_" for c in text)
