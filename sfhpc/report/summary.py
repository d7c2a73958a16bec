"""Result files -> one row per point (summary.csv and summary.md). Every number comes from a result file; every
point without a valid one is listed as missing, failed or corrupt, never skipped quietly. The summary names no stage
and no metric: its columns are the points' parameters and whatever scalars their results hold."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sfhpc.report.model import Problem, problem
from sfhpc.report.render import summary_csv, summary_markdown
from sfhpc.results import atomic_write
from sfhpc.rundir import RunDir, manifest_points
from sfhpc.status import run_status


@dataclass
class StageTable:
    """One stage's points with a valid result: their axes, parameters and scalars (the columns), one row each.
    `labels`: what names a point in its id, the axes and the shard of a sharded stage (empty for a manifest written
    before points had labels)."""

    stage: str
    axes: list[str]
    params: list[str]
    metrics: list[str]
    rows: list[dict[str, Any]] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)


@dataclass
class Summary:
    tables: list[StageTable]
    problems: list[Problem]  # stage, point, state (missing | failed | corrupt), reason
    metrics: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)  # (stage, point) with a valid result


def summarize(run: RunDir, progress: Callable[[int, int], None] | None = None) -> Summary:
    """Check every planned point's result file and read the scalars of the valid ones. `progress(opened, to_open)`:
    called as result files not seen before are opened."""
    manifest = run.read_manifest()
    axes_of = {stage["name"]: stage["axes"] for stage in manifest["plan"]["stages"]}
    index = run.result_index()
    statuses = {(s.stage, s.point): s for s in run_status(run, index, progress)}
    tables: dict[str, StageTable] = {}
    problems: list[Problem] = []
    metrics_of: dict[tuple[str, str], dict[str, Any]] = {}
    for stage, point in manifest_points(manifest):
        if stage not in tables:  # (a StageTable made for every point and dropped cost 10% of a warm aggregate)
            tables[stage] = StageTable(stage, axes_of[stage], list(point["params"]), [],
                                       labels=list(point.get("labels", {})))
        table = tables[stage]
        status = statuses[(stage, point["id"])]
        if status.result != "ok":
            state = "corrupt" if status.result == "corrupt" else ("failed" if status.state == "failed" else "missing")
            problems.append(problem(stage, point["id"], state, status.reason or status.state))
            continue
        metrics = index.metrics(run.result_path(stage, point["id"]))
        table.metrics += [m for m in metrics if m not in table.metrics]
        metrics_of[(stage, point["id"])] = metrics
        table.rows.append({"point": point["id"], **point["params"], **point.get("labels", {}), **metrics})
    return Summary(list(tables.values()), problems, metrics_of)


def write_summary(run: RunDir, summary: Summary) -> tuple[str, str]:
    """Write summary.csv and summary.md into the run folder; returns their paths."""
    csv_path, md_path = run.path / "summary.csv", run.path / "summary.md"
    # atomically: a second aggregate running at the same time, or a reader, never sees half a file
    atomic_write(csv_path, lambda tmp: tmp.write_text(summary_csv(summary)))
    atomic_write(md_path, lambda tmp: tmp.write_text(summary_markdown(summary, f"Summary of {run.path.name}")))
    return str(csv_path), str(md_path)
