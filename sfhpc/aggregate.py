"""Result files -> summary tables. Every number comes from a result file; every point without a valid one is
listed as missing, failed or corrupt, never skipped quietly."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from typing import Any

from sfhpc.results import atomic_write
from sfhpc.rundir import RunDir, manifest_points
from sfhpc.status import run_status


@dataclass
class StageTable:
    stage: str
    axes: list[str]
    params: list[str]
    metrics: list[str]
    rows: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Summary:
    tables: list[StageTable]
    problems: list[dict[str, str]]  # stage, point, state (missing | failed | corrupt), reason
    metrics: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)  # (stage, point) with a valid result


def summarize(run: RunDir) -> Summary:
    manifest = run.read_manifest()
    axes_of = {stage["name"]: stage["axes"] for stage in manifest["plan"]["stages"]}
    index = run.result_index()
    statuses = {(s.stage, s.point): s for s in run_status(run, index)}
    tables: dict[str, StageTable] = {}
    problems: list[dict[str, str]] = []
    metrics_of: dict[tuple[str, str], dict[str, Any]] = {}
    for stage, point in manifest_points(manifest):
        table = tables.setdefault(stage, StageTable(stage, axes_of[stage], list(point["params"]), []))
        status = statuses[(stage, point["id"])]
        if status.result != "ok":
            state = "corrupt" if status.result == "corrupt" else ("failed" if status.state == "failed" else "missing")
            problems.append({"stage": stage, "point": point["id"], "state": state,
                             "reason": status.reason or status.state})
            continue
        metrics = index.metrics(run.result_path(stage, point["id"]))
        table.metrics += [m for m in metrics if m not in table.metrics]
        metrics_of[(stage, point["id"])] = metrics
        table.rows.append({"point": point["id"], **point["params"], **point.get("labels", {}), **metrics})
    return Summary(list(tables.values()), problems, metrics_of)


def format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, (list, tuple)):
        return "x".join(str(v) for v in value)
    return str(value)


def to_csv(summary: Summary) -> str:
    """One row per point with every parameter and metric; points without a result have their state."""
    out = io.StringIO()
    columns = ["stage", "point", "state"]
    for table in summary.tables:
        columns += [c for c in [*table.axes, *table.params, *table.metrics] if c not in columns]
    columns.append("reason")
    writer = csv.DictWriter(out, columns, extrasaction="ignore")
    writer.writeheader()
    for table in summary.tables:
        for row in table.rows:
            writer.writerow({"stage": table.stage, "state": "done", **{k: format_value(v) for k, v in row.items()}})
    for problem in summary.problems:
        writer.writerow(problem)
    return out.getvalue()


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def display_columns(table: StageTable) -> list[str]:
    """For a terminal: axes that vary (or the point id when nothing varies), then the metrics that differ
    between points; the constant ones are listed once by `constant_metrics`."""
    constant = constant_metrics(table)
    return [*(table.axes or ["point"]), *(m for m in table.metrics if m not in constant)]


def constant_metrics(table: StageTable) -> dict[str, Any]:
    if len(table.rows) < 2:
        return {}
    return {m: table.rows[0].get(m) for m in table.metrics if len({repr(r.get(m)) for r in table.rows}) == 1}


def to_markdown(summary: Summary, title: str) -> str:
    parts = [f"# {title}"]
    for table in summary.tables:
        columns = [*(table.axes or ["point"]), *table.metrics]
        rows = [[format_value(row.get(c, "")) for c in columns] for row in table.rows]
        parts.append(f"## {table.stage} ({len(table.rows)} points with results)\n\n" + markdown_table(columns, rows))
    if summary.problems:
        rows = [[p["stage"], p["point"], p["state"], p["reason"]] for p in summary.problems]
        parts.append(f"## Points without a valid result ({len(rows)})\n\n"
                     + markdown_table(["stage", "point", "state", "reason"], rows))
    else:
        parts.append("Every point has a valid result.")
    return "\n\n".join(parts) + "\n"


def write_summary(run: RunDir, summary: Summary) -> tuple[str, str]:
    """Write summary.csv and summary.md into the run folder; returns their paths."""
    csv_path, md_path = run.path / "summary.csv", run.path / "summary.md"
    # atomically: a second aggregate running at the same time, or a reader, never sees half a file
    atomic_write(csv_path, lambda tmp: tmp.write_text(to_csv(summary)))
    atomic_write(md_path, lambda tmp: tmp.write_text(to_markdown(summary, f"Summary of {run.path.name}")))
    return str(csv_path), str(md_path)
