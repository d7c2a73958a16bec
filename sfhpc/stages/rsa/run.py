"""The rsa stage: how similar a trained model's representational geometry is to a subject's ROIs (SCIENCE.md
section 6).

Features at the pooled penultimate layer (and the neural head of a guided model) on the subject's shared
validation images; RDM = 1 - Pearson r; Spearman rho against each ROI's RDM, built by default from the ROI's
z-scored PCA scores (the study's ROI RDM; `rsa_roi_patterns: voxels` builds it from the z-scored voxel patterns);
one-sided p-values from permuting images. Beside each rho the ROI RDM's noise ceiling in rho's units, over the
single-repeat RDMs (sfhpc.evaluation.rsa.rdm_noise_ceiling): a single-repeat RDM takes each shared image's k-th
trial through the same pipeline as the averages (z-scored with the training statistics, projected on the PCA
components for PCA scores).

Images: the shared images shown exactly 3 times, for the RDMs and their ceiling alike, so that the ceiling bounds
the very comparison beside it (every shared image of the simulated subjects and of NSD subjects who finished all
sessions; fewer for the others, and the result says how many).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from sfhpc.data import neural_file
from sfhpc.data.neural import CEILING_REPEATS, NeuralData, NeuralDataError, RoiData, open_neural
from sfhpc.evaluation.rsa import MIN_IMAGES, RoiPatterns, RsaRow, rdm, rows_to_arrays, rsa_against_rois
from sfhpc.job import PointConfig, PointRun
from sfhpc.models.classifier import Classifier
from sfhpc.rundir import RunDir, manifest_points
from sfhpc.stages.common import EVAL_BATCH, evaluation_model, read_point_config, upstream_run_dir
from sfhpc.stages.device import DevicePlan, chunks, image_batches
from sfhpc.stages.predictor import PredictorParams
from sfhpc.stages.rsa import (
    IMAGES_ATTR,
    POOLED_LAYER,
    RDM_FILES_ATTR,
    ROI_PATTERNS,
    ROI_PATTERNS_ATTR,
    RoiDataRow,
    RsaParams,
    data_rows_to_curves,
    noise_ceiling_metric,
    rdm_ceiling_lower_metric,
    rdm_ceiling_upper_metric,
    rho_metric,
    rho_repeats_metric,
)
from sfhpc.stages.rsa.rdm_file import SubjectRdms, file_sha256, rdm_file_name, write_rdm_file

DEFAULT_SUBJECT = "subj01"


def run(point: PointRun[RsaParams]) -> Path:
    """Compare one trained model with every ROI of its subjects; write each subject's RDM files, then the point's
    result file, which records them."""
    params = point.params
    model, trained, plan = evaluation_model(point)
    data_cfg = trained.data
    subjects = compared_subjects(params, trained, upstream_run_dir(point))
    rows: list[tuple[str, RsaRow]] = []
    data_rows: list[RoiDataRow] = []
    subject_rdms: list[SubjectRdms] = []
    for subject in subjects:
        neural = open_neural(neural_file(data_cfg.neural, subject, point.data_cache or point.dir,
                                         data_cfg.image_size))
        compared = compare_subject(model, point.only_upstream(), neural, params, data_cfg.image_size, plan)
        rows += [(subject, row) for row in compared.rows]
        data_rows += compared.data
        subject_rdms.append(compared.rdms)

    arrays = rows_to_arrays([row for _, row in rows])
    arrays["subject"] = np.array([subject.encode() for subject, _ in rows], dtype=np.bytes_)
    images = ", ".join(f"{row.subject} {row.images} of {row.shared_images}"
                       for row in data_rows if row.roi == data_rows[0].roi)
    rdm_files = write_rdm_files(point, subject_rdms)  # before the result: a point with a result has its files
    return point.write_result(
        metrics={**means_over_subjects(rows, data_rows), "n_subjects": len(subjects),
                 "n_images": rows[0][1].n_images},
        curves={**arrays, **data_rows_to_curves(data_rows)},
        attrs={"upstream": point.only_upstream(), "subjects": ",".join(subjects), "rdm": "1 - Pearson r",
               ROI_PATTERNS_ATTR: params.rsa_roi_patterns,
               "roi_rdm": f"from {ROI_PATTERNS[params.rsa_roi_patterns]}",
               IMAGES_ATTR: f"shared images shown exactly {CEILING_REPEATS} times, for the RDMs and their noise "
                            f"ceiling alike: {images}",
               "comparison": "Spearman rho of upper triangles", "test": "one-sided image permutation",
               "rdm_noise_ceiling": f"lower and upper bound over the {CEILING_REPEATS} single-repeat RDMs, as "
                                    "rsatoolbox.inference.boot_noise_ceiling(method='spearman') computes them",
               RDM_FILES_ATTR: rdm_files, **plan.attrs()},
    )


def write_rdm_files(point: PointRun[RsaParams], subject_rdms: list[SubjectRdms]) -> str:
    """Write each subject's RDMs in rsatoolbox's HDF5 layout beside the point's result, and return the result's
    record of them (RDM_FILES_ATTR): JSON, one entry per file with its name, subject, images, layers, ROIs and
    SHA-256 (a rerun that fails after writing new files leaves them beside the old result: the digest tells)."""
    records = []
    for rdms in subject_rdms:
        path = point.dir / rdm_file_name(rdms.subject)
        write_rdm_file(path, rdms, {
            "point": f"{point.config.stage}/{point.point_id}", "model": rdms.model, "subject": rdms.subject,
            "dissimilarity": "1 - Pearson r", "roi_patterns": ROI_PATTERNS[point.params.rsa_roi_patterns],
            "images": f"the subject's shared images shown exactly {CEILING_REPEATS} times (image_id: NSD 73k id, "
                      "0-based; simulated subjects: the scene's index)"})
        records.append({"file": path.name, "subject": rdms.subject, "images": len(rdms.image_ids),
                        "layers": list(rdms.layers), "rois": list(rdms.rois), "sha256": file_sha256(path)})
    return json.dumps(records)


def compared_subjects(params: RsaParams, trained: PointConfig, run_dir: Path) -> tuple[str, ...]:
    """Whose ROIs a model is compared with: the configured subjects; else a guided model's own subject; else every
    subject of the run's predictor stage; else subj01."""
    if params.rsa_subjects:
        return tuple(params.rsa_subjects)
    if trained.upstream:
        (predictor,) = trained.upstream
        return (PredictorParams.model_validate(read_point_config(run_dir, predictor).params).subject,)
    manifest = RunDir(run_dir).read_manifest()
    subjects = [p["params"]["subject"] for stage, p in manifest_points(manifest) if stage == "predictor"]
    return tuple(dict.fromkeys(subjects)) or (DEFAULT_SUBJECT,)


class SubjectComparison(NamedTuple):
    """A model against one subject: a row per (layer, ROI), the table of the data (a row per ROI) and the RDMs."""

    rows: list[RsaRow]
    data: list[RoiDataRow]
    rdms: SubjectRdms


def compare_subject(model: Classifier, model_name: str, neural: NeuralData, params: RsaParams, image_size: int,
                    plan: DevicePlan | None = None) -> SubjectComparison:
    """The model (`model_name`: its train point) against every ROI of one subject over the shared images shown
    CEILING_REPEATS times, the table of the data compared with (one row per ROI) and every RDM compared. `plan`:
    where the model runs (default: the CPU)."""
    shared = np.asarray(neural.val_index)
    images = neural.images_with_repeats(shared, CEILING_REPEATS)
    if len(images) < MIN_IMAGES:
        raise NeuralDataError(f"{neural.path}: {len(images)} of the {len(shared)} shared images were shown "
                              f"{CEILING_REPEATS} times; RSA and its noise ceiling need at least {MIN_IMAGES}")
    features = layer_features(model, neural.images(images, image_size), plan)
    rois = {name: neural.roi(name) for name in neural.rois}
    patterns = {name: roi_patterns(neural, roi, images, params.rsa_roi_patterns) for name, roi in rois.items()}
    compared = rsa_against_rois(features, patterns, params.rsa_permutations, params.rsa_seed)
    ceilings = {row.roi: (row.ceiling_lower, row.ceiling_upper) for row in compared}
    data = [RoiDataRow(subject=neural.subject, roi=name, voxels=roi.n_voxels, components=roi.n_components,
                       voxel_noise_ceiling=float(np.nanmean(roi.noise_ceiling)), images=len(images),
                       shared_images=len(shared), ceiling_lower=ceilings[name][0], ceiling_upper=ceilings[name][1])
            for name, roi in rois.items()]
    rdms = SubjectRdms(subject=neural.subject, model=model_name, image_ids=neural.image_ids[images],
                       layers={layer: rdm(values) for layer, values in features.items()},
                       rois={name: rdm(roi.mean) for name, roi in patterns.items()})
    return SubjectComparison(compared, data, rdms)


def roi_patterns(neural: NeuralData, roi: RoiData, images: np.ndarray, kind: str) -> RoiPatterns:
    """The ROI's patterns over `images`: the averages the ROI RDM is built from and each repeat's single trials
    through the same pipeline (z-scored with the training statistics; for PCA scores, projected on the
    components)."""
    repeats = roi.standardize(neural.repeat_trials(roi.name, images, CEILING_REPEATS))
    if kind == "pca_scores":
        return RoiPatterns(mean=roi.scores[images], repeats=roi.pc_scores(repeats))
    return RoiPatterns(mean=roi.mean[images], repeats=repeats)


@torch.no_grad()
def layer_features(model: Classifier, images: np.ndarray, plan: DevicePlan | None = None) -> dict[str, np.ndarray]:
    """Pooled penultimate features of every image, and the neural head's outputs when the model has one, computed
    in batches of EVAL_BATCH on the plan's device (default: the CPU, where the model must then be)."""
    plan = plan or DevicePlan(torch.device("cpu"))
    features = torch.cat([model.features(plan.layout(batch))
                          for batch, in image_batches(images, chunks(len(images), EVAL_BATCH), plan)])
    layers = {POOLED_LAYER: features.cpu().numpy().astype(np.float64)}
    if model.neural_head is not None:
        layers["neural_head"] = model.neural_head(features).cpu().numpy().astype(np.float64)
    return layers


def means_over_subjects(rows: list[tuple[str, RsaRow]], data_rows: list[RoiDataRow]) -> dict[str, float]:
    """Scalar metrics for tables, averaged over the compared subjects: rho and rho against the single-repeat RDMs
    per (layer, ROI); the RDM noise ceiling's bounds and the voxel noise ceiling (%) per ROI."""
    metrics: dict[str, list[float]] = {}
    for _, row in rows:
        metrics.setdefault(rho_metric(row.layer, row.roi), []).append(row.rho)
    for _, row in rows:
        metrics.setdefault(rho_repeats_metric(row.layer, row.roi), []).append(row.rho_repeats)
    for data in data_rows:
        metrics.setdefault(rdm_ceiling_lower_metric(data.roi), []).append(data.ceiling_lower)
        metrics.setdefault(rdm_ceiling_upper_metric(data.roi), []).append(data.ceiling_upper)
        metrics.setdefault(noise_ceiling_metric(data.roi), []).append(data.voxel_noise_ceiling)
    return {name: float(np.mean(values)) for name, values in metrics.items()}
