"""The run report: result files -> one row per point (summary.csv, summary.md) and, per condition, statistics,
tables and figures (conditions.csv, controls.csv, report.md, figures/), plus the terminal's tables.

    model    the types the report and the stages share (Model, Metric, Family, StageReport, ...) and key helpers
    summary  result files -> one row per point (Summary), checked; summary.csv and summary.md
    stats    n, mean, SEM per condition and the paired test against its baseline and against its controls
    findings the models' stage's claims of the study tested on the run's numbers, each with a verdict by one rule
    render   everything written or printed as text: csv, markdown, JSON, the terminal's tables
    figures  what every figure shares (resolution, saving, one line per condition)
    build    the registry's stages -> a Report; report.md, conditions.csv, controls.csv and the figures

The report names no stage and no metric: each stage adds to it through the StageReport its spec names.
Login-node code: no torch.
"""

from sfhpc.report.build import ReportFiles, build_report, write_report
from sfhpc.report.render import controls_json, findings_json, headline_rows
from sfhpc.report.stats import (
    baselines,
    condition_statistics,
    control_pairs,
    control_statistics,
    describe,
    paired_t_p_value,
    paired_test,
)
from sfhpc.report.summary import StageTable, Summary, summarize, write_summary

__all__ = ["ReportFiles", "StageTable", "Summary", "baselines", "build_report", "condition_statistics", "control_pairs",
           "control_statistics", "controls_json", "describe", "findings_json", "headline_rows", "paired_t_p_value",
           "paired_test", "summarize", "write_report", "write_summary"]
