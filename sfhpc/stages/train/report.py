"""What the train stage adds to the report: its points are the models, compared with their baseline condition and,
for guided models, with the study's controls (SCIENCE.md section 2), and their clean test accuracy (torch-free).

Alpha = 0 alone does not tell what the neural signal does: the study also compared each guided model with the
same-alpha models guided by the shuffled predictor and by the random predictor, and with unguided models that have
only more weight decay (guidance might act as a plain regulariser).
"""

from __future__ import annotations

from sfhpc.report.model import Baseline, Control, Controls, Family, ReportedMetric, Settings, StageReport
from sfhpc.stages.train import (
    ALPHA,
    BAND,
    PREDICTOR,
    RANDOM,
    SHUFFLED,
    TEST_ACCURACY,
    TRAINED,
    TrainParams,
    is_baseline,
    is_guided,
    is_guided_by,
)
from sfhpc.stages.train.findings import study_claims

__all__ = ["CONTROLS", "RANDOM", "REPORT", "SHUFFLED", "TRAINED", "has_more_weight_decay", "is_guided",
           "predictor_control"]

WEIGHT_DECAY = "weight_decay"
DEFAULT_WEIGHT_DECAY = TrainParams.model_fields[WEIGHT_DECAY].default


def has_more_weight_decay(guided: Settings, control: Settings) -> bool:
    """A weight-decay control regularises more than the guided model it is set against."""
    return (float(control.get(WEIGHT_DECAY, DEFAULT_WEIGHT_DECAY))
            > float(guided.get(WEIGHT_DECAY, DEFAULT_WEIGHT_DECAY)))


def predictor_control(kind: str, words: str) -> Control:
    """The same-alpha model guided by a control predictor: the same subject, ROI, alpha, band and every other axis
    but the predictor's kind, seed-paired."""
    return Control(f"{kind}-predictor", f"the same-alpha model guided by the {words}, with the same subject, ROI, "
                                        "band and other axes",
                   is_control=lambda settings: is_guided_by(kind, settings), free_axes=("seed", PREDICTOR))


CONTROLS = Controls(
    title="Guided models against their controls",
    description="guided models (alpha > 0, trained predictor)",
    compared=is_guided,
    kinds=(
        predictor_control(SHUFFLED, "predictor trained on shuffled image-response pairs"),
        predictor_control(RANDOM, "untrained random predictor"),
        Control("weight-decay-only", "an unguided, unsteered model (alpha 0, band none) with more weight decay than "
                                     "the guided model and the same other axes",
                is_control=is_baseline, free_axes=("seed", ALPHA, BAND, WEIGHT_DECAY),
                matches=has_more_weight_decay),
    ),
)

REPORT = StageReport(
    models=True,
    baseline=Baseline(is_baseline, paired_axes=("seed", BAND, ALPHA), description="band=none, alpha=0"),
    controls=CONTROLS,
    families=(Family("accuracy", "Accuracy and robust accuracy", "Clean test accuracy (train stage)."),),
    metrics=(ReportedMetric(TEST_ACCURACY, "clean test accuracy", "accuracy", column="clean acc"),),
    findings=study_claims,
)
