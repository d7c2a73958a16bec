"""The rsa stage's spec: how similar a trained model's representational geometry is to a subject's ROIs
(SCIENCE.md section 6). Torch-free; the comparison itself is sfhpc.stages.rsa.run.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator

from sfhpc.config import SUBJECTS, Closed, Int, Seed, known_subject
from sfhpc.stages.spec import StageSpec

POOLED_LAYER = "pooled"  # the layer the report's figure and headline show
LAYERS = {POOLED_LAYER: "pooled layer", "neural_head": "neural head"}  # the model layers compared, with their names
# What each ROI RDM is built from: the study's ROI RDM is made of the z-scored PCA scores of the shared images (its
# `val_beta`, SCIENCE.md section 6); the voxel-pattern RDM is a variant, to be named as such.
ROI_PATTERNS = {"pca_scores": "PCA scores of the z-scored repeat averages (the study's)",
                "voxels": "z-scored repeat averages of the voxels"}
ROI_PATTERNS_ATTR = "roi_patterns"  # the result attribute naming the ROI patterns (a key of ROI_PATTERNS)
IMAGES_ATTR = "images"  # the result attribute saying which shared images the RDMs and their ceiling cover
# The result attribute recording the point's RDM files (sfhpc.stages.rsa.rdm_file), one per subject, beside it:
# JSON, a list of {file, subject, images, layers, rois, sha256}.
RDM_FILES_ATTR = "rdm_files"


def rho_metric(layer: str, roi: str) -> str:
    """The result scalar of one layer's Spearman rho against one ROI's RDM (mean over the compared subjects)."""
    return f"rho_{layer}_{roi}"


def rho_repeats_metric(layer: str, roi: str) -> str:
    """The result scalar of one layer's mean Spearman rho against the ROI's single-repeat RDMs (mean over the
    compared subjects): the quantity the RDM noise ceiling bounds (rsatoolbox's evaluation of a fixed model)."""
    return f"rho_repeats_{layer}_{roi}"


def rdm_ceiling_lower_metric(roi: str) -> str:
    """The result scalar of the lower bound of one ROI's RDM noise ceiling (Spearman rho, mean over subjects)."""
    return f"rdm_ceiling_lower_{roi}"


def rdm_ceiling_upper_metric(roi: str) -> str:
    """The result scalar of the upper bound of one ROI's RDM noise ceiling (Spearman rho, mean over subjects)."""
    return f"rdm_ceiling_upper_{roi}"


def noise_ceiling_metric(roi: str) -> str:
    """The result scalar of one ROI's mean voxel noise ceiling (%, NSD method, mean over the compared subjects): a
    property of the data, not comparable with rho; the report shows it in the table of the data only."""
    return f"noise_ceiling_{roi}"


@dataclass(frozen=True)
class RoiDataRow:
    """One (subject, ROI) of the data an rsa result compared with: the rsa section's table of the data. Stored in
    the result as one curve per field, named DATA_CURVE_PREFIX + field name."""

    subject: str
    roi: str
    voxels: int
    components: int  # PCA components kept (95% of the training images' variance)
    voxel_noise_ceiling: float  # %, mean over the ROI's voxels (NSD method)
    images: int  # shared images in the RDMs: those shown exactly 3 times
    shared_images: int  # the subject's shared images
    ceiling_lower: float  # RDM noise ceiling (Spearman rho) of the ROI patterns the result used
    ceiling_upper: float


DATA_CURVE_PREFIX = "data_"
_TEXT_FIELDS = ("subject", "roi")


def data_rows_to_curves(rows: list[RoiDataRow]) -> dict[str, np.ndarray]:
    """The rows as curves of a result file: one array per field (text as UTF-8 bytes, which h5py stores)."""
    curves = {}
    for spec in fields(RoiDataRow):
        values = [getattr(row, spec.name) for row in rows]
        curves[DATA_CURVE_PREFIX + spec.name] = (np.array([v.encode("utf-8") for v in values], dtype=np.bytes_)
                                                 if spec.name in _TEXT_FIELDS else np.asarray(values))
    return curves


def data_rows_from_curves(curves: Any) -> list[RoiDataRow]:
    """The rows stored by data_rows_to_curves, from a mapping of curve names to arrays (an open HDF5 group); []
    when the curves lack them (a result written before the table existed). KeyError names a missing curve when
    only some are there."""
    names = [DATA_CURVE_PREFIX + spec.name for spec in fields(RoiDataRow)]
    if not any(name in curves for name in names):
        return []
    columns = {}
    for spec, name in zip(fields(RoiDataRow), names, strict=True):
        values = np.asarray(curves[name][()])
        columns[spec.name] = (np.char.decode(values, "utf-8").tolist() if spec.name in _TEXT_FIELDS
                              else values.tolist())
    return [RoiDataRow(**dict(zip(columns, row, strict=True))) for row in zip(*columns.values(), strict=True)]


class RsaParams(Closed):
    """Similarity of a trained model's representational geometry to the subject's ROIs (SCIENCE.md section 6)."""

    rsa_subjects: tuple[str, ...] | None = Field(
        None, max_length=len(SUBJECTS),
        description="subjects whose ROIs each model is compared with; default: a guided model's own subject, an "
                    "unguided one every subject of the sweep's predictor stage (subj01 without one)")
    rsa_roi_patterns: Literal["pca_scores", "voxels"] = Field(
        "pca_scores", description="what each ROI RDM is built from: 'pca_scores', the ROI's z-scored PCA scores of "
                                  "the shared images (the study's ROI RDM), or 'voxels', the z-scored voxel "
                                  "patterns (a variant)")
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
