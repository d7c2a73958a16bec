"""The predictor stage's spec: a ResNet that regresses one subject's ROI responses (their PC scores) from images
(SCIENCE.md section 2); a guided train point is co-trained with its outputs. Torch-free; the fitting itself is
sfhpc.stages.predictor.run.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from sfhpc.config import (
    MEMORY_FORMAT_HELP,
    PRECISION_HELP,
    PREFETCH_HELP,
    ROIS,
    SUBJECTS,
    Closed,
    DataConfig,
    Float,
    Int,
    JobSpec,
    MemoryFormat,
    Precision,
    Prefetch,
    Seed,
    known_subject,
)
from sfhpc.stages.spec import DataAbsent, ParamError, StageSpec


class PredictorParams(Closed):
    """The neural predictor of one subject's ROI (SCIENCE.md section 2): a ResNet regressing the ROI's PC scores.
    `subject`, `roi` and `predictor` are sweep axes; a guided train point (alpha > 0) uses the predictor of its
    subject, ROI and control."""

    subject: str = Field("subj01", description=f"one of {', '.join(SUBJECTS)}")
    roi: str = Field(description=f"one of {', '.join(ROIS)} (prepared NSD files may hold other atlases' ROIs; "
                                 "`sweep expand` checks the subject's file)")
    predictor: Literal["trained", "shuffled", "random"] = Field(
        "trained", description="trained; shuffled (image-response pairs permuted, a control); random (untrained)")
    predictor_arch: Literal["small_resnet", "resnet18"] = "small_resnet"
    predictor_width: Int = Field(16, ge=2, description="base width of small_resnet")
    predictor_epochs: Int = Field(40, ge=1)
    predictor_batch_size: Int = Field(200, ge=1)
    predictor_lr: Float = Field(1e-3, gt=0, description="Adam learning rate")
    predictor_weight_decay: Float = Field(5e-4, ge=0)
    predictor_seed: Seed = 0
    predictor_precision: Precision = Field("float32", description=PRECISION_HELP)
    predictor_memory_format: MemoryFormat = Field("auto", description=MEMORY_FORMAT_HELP)
    predictor_prefetch_batches: Prefetch = Field("auto", description=PREFETCH_HELP)

    @field_validator("subject")
    @classmethod
    def _known_subject(cls, subject: str) -> str:
        return known_subject(subject)


def check_neural_data(params: PredictorParams, data: DataConfig, job: JobSpec) -> None:
    """The subject's neural data has the ROI: settings of the simulated brain, or a prepared NSD file's ROIs."""
    from sfhpc.data.neural import NeuralFileNotFound, NeuralSubjectMismatch, check_neural  # h5py attributes only

    try:
        check_neural(data.neural, [params.subject], [params.roi])
    except NeuralSubjectMismatch as err:
        raise ParamError("subject", str(err)) from None
    except NeuralFileNotFound as err:  # planning before the subject's file is prepared
        raise DataAbsent("subject", str(err)) from None


SPEC = StageSpec(name="predictor", entry=__name__, params=PredictorParams, runner="sfhpc.stages.predictor.run:run",
                 check=check_neural_data, check_key="roi")
