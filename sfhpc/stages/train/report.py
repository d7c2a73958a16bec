"""What the train stage adds to the report: its points are the models, compared with their baseline condition and,
for guided models, with the study's controls (SCIENCE.md section 2), and their clean test accuracy (torch-free).

Alpha = 0 alone does not tell what the neural signal does: the study also compared each guided model with the
same-alpha models guided by the shuffled predictor and by the random predictor, and with unguided models that have
only more weight decay (guidance might act as a plain regulariser).
"""

from __future__ import annotations

from sfhpc.report.model import Baseline, Control, Controls, Family, ReportedMetric, Settings, StageReport
from sfhpc.stages.train import TEST_ACCURACY, TrainParams, is_baseline

PREDICTOR = "predictor"  # the predictor stage's parameter (and sweep axis): trained, or a control of it
TRAINED, SHUFFLED, RANDOM = "trained", "shuffled", "random"
ALPHA, BAND = "alpha", "band"
WEIGHT_DECAY = "weight_decay"
DEFAULT_WEIGHT_DECAY = TrainParams.model_fields[WEIGHT_DECAY].default


def is_guided_by(kind: str, settings: Settings) -> bool:
    """Co-trained (alpha > 0) with the outputs of a predictor of this kind (a guided model's settings hold its
    predictor's parameters)."""
    return float(settings.get(ALPHA, 0.0)) > 0 and settings.get(PREDICTOR) == kind


def is_guided(settings: Settings) -> bool:
    """Guided by a trained predictor: the models compared with the controls."""
    return is_guided_by(TRAINED, settings)


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
)
