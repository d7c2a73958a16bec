"""What the train stage adds to the report: its points are the models, compared with their baseline condition, and
their clean test accuracy (torch-free)."""

from __future__ import annotations

from sfhpc.report.model import Baseline, Family, ReportedMetric, StageReport
from sfhpc.stages.train import TEST_ACCURACY, is_baseline

REPORT = StageReport(
    models=True,
    baseline=Baseline(is_baseline, paired_axes=("seed", "band", "alpha"), description="band=none, alpha=0"),
    families=(Family("accuracy", "Accuracy and robust accuracy", "Clean test accuracy (train stage)."),),
    metrics=(ReportedMetric(TEST_ACCURACY, "clean test accuracy", "accuracy", column="clean acc"),),
)
