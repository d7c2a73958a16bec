"""What the train stage adds to the report: its points are the models, compared with their baseline condition and,
for guided models, with the study's controls (SCIENCE.md section 2), and their clean test accuracy (torch-free).

Alpha = 0 alone does not tell what the neural signal does: the study also compared each guided model with the
same-alpha models guided by the shuffled predictor and by the random predictor, and with unguided models that have
only more weight decay (guidance might act as a plain regulariser).
"""

from __future__ import annotations

import math

from sfhpc.report.model import (
    Baseline,
    Collection,
    Control,
    Controls,
    Family,
    Report,
    ReportedMetric,
    Settings,
    StageReport,
)
from sfhpc.stages.train import (
    ALPHA,
    BAND,
    NEGLIGIBLE_GUIDANCE,
    NEURAL_SHARE,
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

GUIDANCE = "guidance"
PREDICTOR_STAGE = "predictor"
# The guiding predictor's validation r (mean per-image Pearson over the shared images), and the r a perfect
# predictor could expect there (estimated from the repeats: sfhpc.evaluation.prediction.repeat_pearson_ceiling).
PREDICTOR_R, PREDICTOR_CEILING = "val_pearson_mean", "val_pearson_ceiling"
PREDICTOR_METRICS = ((PREDICTOR_R, "guiding predictor's validation r"),
                     (PREDICTOR_CEILING, "r a perfect predictor could expect (repeat-based ceiling)"))


def collect_guidance(collection: Collection) -> None:
    """Each guided model's predictor fit: its upstream predictor point's validation r and its ceiling."""
    for point in collection.points:
        model = collection.models.get(point["id"])
        predictors = [key.split("/", 1)[1] for key in point["upstream"] if key.split("/", 1)[0] == PREDICTOR_STAGE]
        scalars = collection.summary.metrics.get((PREDICTOR_STAGE, predictors[0])) if len(predictors) == 1 else None
        if model is None or scalars is None:
            continue
        for name, label in PREDICTOR_METRICS:
            if name in scalars:
                collection.set_value(model, f"predictor_{name}", label, GUIDANCE, "", float(scalars[name]))


def guidance_notes(report: Report) -> str:
    """A warning naming the guided conditions whose neural term was negligible in training."""
    weak = sorted({model.condition for model in report.models if is_guided(model.settings())
                   and math.isfinite(model.values.get(NEURAL_SHARE, math.nan))
                   and model.values[NEURAL_SHARE] < NEGLIGIBLE_GUIDANCE})
    if not weak:
        return ""
    return (f"**Warning: guidance was negligible** in {', '.join(weak)}: the weighted neural term was under "
            f"{NEGLIGIBLE_GUIDANCE:.0%} of the training loss, so these models were trained almost by cross-entropy "
            "alone, and what they show says little about neural guidance. A better predictor, scaled "
            "targets (neural_target: scaled or standardized) or a larger alpha give it weight.")


REPORT = StageReport(
    models=True,
    baseline=Baseline(is_baseline, paired_axes=("seed", BAND, ALPHA), description="band=none, alpha=0"),
    controls=CONTROLS,
    families=(Family("accuracy", "Accuracy and robust accuracy", "Clean test accuracy (train stage)."),
              Family(GUIDANCE, "Neural guidance", "Guided models: the weighted neural term's share of the training "
                     "loss (alpha x MSE / L, mean over epochs), and the fit of the predictor whose outputs were the "
                     "targets (validation r, and the r a perfect predictor could expect given the data's noise).",
                     notes=guidance_notes)),
    metrics=(ReportedMetric(TEST_ACCURACY, "clean test accuracy", "accuracy", column="clean acc"),
             ReportedMetric(NEURAL_SHARE, "neural share of the loss", GUIDANCE)),
    collect=collect_guidance,
    findings=study_claims,
)
