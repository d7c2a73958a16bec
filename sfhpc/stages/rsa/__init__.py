"""The rsa stage's spec: how similar a trained model's representational geometry is to a subject's ROIs
(SCIENCE.md section 6). Torch-free; the comparison itself is sfhpc.stages.rsa.run.
"""

from __future__ import annotations

from pydantic import Field, field_validator

from sfhpc.config import SUBJECTS, Closed, Int, Seed, known_subject
from sfhpc.stages.spec import StageSpec

POOLED_LAYER = "pooled"  # the layer the report's figure and headline show
LAYERS = {POOLED_LAYER: "pooled layer", "neural_head": "neural head"}  # the model layers compared, with their names


def rho_metric(layer: str, roi: str) -> str:
    """The result scalar of one layer's Spearman rho against one ROI's RDM (mean over the compared subjects)."""
    return f"rho_{layer}_{roi}"


def noise_ceiling_metric(roi: str) -> str:
    """The result scalar of one ROI's mean noise ceiling (%, mean over the compared subjects)."""
    return f"noise_ceiling_{roi}"


class RsaParams(Closed):
    """Similarity of a trained model's representational geometry to the subject's ROIs (SCIENCE.md section 6)."""

    rsa_subjects: tuple[str, ...] | None = Field(
        None, max_length=len(SUBJECTS),
        description="subjects whose ROIs each model is compared with; default: a guided model's own subject, an "
                    "unguided one every subject of the sweep's predictor stage (subj01 without one)")
    rsa_permutations: Int = Field(1000, ge=0, description="image permutations of the significance test")
    rsa_seed: Seed = 0

    @field_validator("rsa_subjects")
    @classmethod
    def _known_subjects(cls, subjects: tuple[str, ...] | None) -> tuple[str, ...] | None:
        for subject in subjects or ():
            known_subject(subject)
        return subjects


SPEC = StageSpec(name="rsa", entry=__name__, params=RsaParams, runner="sfhpc.stages.rsa.run:run", upstream=("train",),
                 report="sfhpc.stages.rsa.report:REPORT")
