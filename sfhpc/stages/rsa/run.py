"""The rsa stage: how similar a trained model's representational geometry is to a subject's ROIs (SCIENCE.md
section 6).

Features at the pooled penultimate layer (and the neural head of a guided model) on the subject's shared
validation images; RDM = 1 - Pearson r; Spearman rho against each ROI's RDM (from its z-scored repeat averages);
the ROI's mean noise ceiling beside it; one-sided p-values from permuting images.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from sfhpc.data import neural_file
from sfhpc.data.neural import open_neural
from sfhpc.evaluation.rsa import RsaRow, rows_to_arrays, rsa_against_rois
from sfhpc.job import PointConfig, PointRun
from sfhpc.models.classifier import Classifier
from sfhpc.rundir import RunDir, manifest_points
from sfhpc.stages.common import EVAL_BATCH, load_upstream_model, read_point_config, to_float, upstream_run_dir
from sfhpc.stages.predictor import PredictorParams
from sfhpc.stages.rsa import POOLED_LAYER, RsaParams, noise_ceiling_metric, rho_metric

DEFAULT_SUBJECT = "subj01"


def run(point: PointRun[RsaParams]) -> Path:
    """Compare one trained model with every ROI of its subjects and write the point's result file."""
    params = point.params
    model, trained = load_upstream_model(point)
    data_cfg = trained.data
    subjects = compared_subjects(params, trained, upstream_run_dir(point))
    rows: list[tuple[str, RsaRow]] = []
    for subject in subjects:
        neural = open_neural(neural_file(data_cfg.neural, subject, point.data_cache or point.dir,
                                         data_cfg.image_size))
        val = np.asarray(neural.val_index)
        features = layer_features(model, neural.images(val, data_cfg.image_size))
        rois = {name: neural.roi(name) for name in neural.rois}
        compared = rsa_against_rois(features, {name: np.asarray(roi.mean)[val] for name, roi in rois.items()},
                                    {name: float(np.nanmean(roi.noise_ceiling)) for name, roi in rois.items()},
                                    params.rsa_permutations, params.rsa_seed)
        rows += [(subject, row) for row in compared]

    arrays = rows_to_arrays([row for _, row in rows])
    arrays["subject"] = np.array([subject.encode() for subject, _ in rows], dtype=np.bytes_)
    return point.write_result(
        metrics={**mean_rho_per_roi(rows), "n_subjects": len(subjects), "n_images": rows[0][1].n_images},
        curves=arrays,
        attrs={"upstream": point.only_upstream(), "subjects": ",".join(subjects), "rdm": "1 - Pearson r",
               "comparison": "Spearman rho of upper triangles", "test": "one-sided image permutation"},
    )


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


@torch.no_grad()
def layer_features(model: Classifier, images: np.ndarray) -> dict[str, np.ndarray]:
    """Pooled penultimate features of every image, and the neural head's outputs when the model has one."""
    pooled = []
    for start in range(0, len(images), EVAL_BATCH):
        batch = to_float(images, torch.arange(start, min(start + EVAL_BATCH, len(images))), torch.device("cpu"))
        pooled.append(model.features(batch))
    features = torch.cat(pooled)
    layers = {POOLED_LAYER: features.numpy().astype(np.float64)}
    if model.neural_head is not None:
        layers["neural_head"] = model.neural_head(features).numpy().astype(np.float64)
    return layers


def mean_rho_per_roi(rows: list[tuple[str, RsaRow]]) -> dict[str, float]:
    """Scalar metrics for tables: rho and noise ceiling per (layer, ROI), averaged over the compared subjects."""
    metrics: dict[str, list[float]] = {}
    for _, row in rows:
        metrics.setdefault(rho_metric(row.layer, row.roi), []).append(row.rho)
        metrics.setdefault(noise_ceiling_metric(row.roi), []).append(row.noise_ceiling)
    return {name: float(np.mean(values)) for name, values in metrics.items()}
