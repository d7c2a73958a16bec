"""The predictor stage: a ResNet that regresses one subject's ROI responses (their PC scores) from images
(SCIENCE.md section 2). Its frozen outputs are the neural targets of guided training.

Controls, as sweep values of `predictor`: `shuffled` trains on permuted image-response pairs; `random` is not
trained at all. Loss: squared error summed over PCs, mean over the batch; Adam. Metric: Pearson r per validation
(shared) image between predicted and measured PC scores, and R2 per PC. One process (a predictor is small);
checkpoints every epoch and resumes like the train stage.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from sfhpc import distributed
from sfhpc.data import neural_file
from sfhpc.data.neural import NeuralData, RoiData, open_neural
from sfhpc.evaluation.prediction import per_image_pearson, r2_per_component, repeat_pearson_ceiling
from sfhpc.job import PointRun
from sfhpc.rundir import CHECKPOINT_NAME
from sfhpc.stages.common import (
    EVAL_BATCH,
    autocast,
    build_predictor,
    epoch_order,
    load_checkpoint,
    save_checkpoint,
    save_model,
    training_identity,
    use_threads,
)
from sfhpc.stages.device import DevicePlan, chunks, image_batches, place_model, plan_for, use_plan
from sfhpc.stages.predictor import PredictorParams


def run(point: PointRun[PredictorParams]) -> Path:
    """Fit one subject x ROI predictor and write its result file and model."""
    params, data_cfg, point_dir = point.params, point.data, point.dir
    env = distributed.detect()
    if env.world_size > 1:
        raise RuntimeError(f"the predictor stage runs as one process, got {env.world_size} ranks ({env.source}); "
                           "give it nodes: 1 and tasks_per_node: 1")
    device = distributed.setup(env)
    plan = plan_for(device, params.predictor_memory_format, params.predictor_prefetch_batches)
    use_plan(plan)
    use_threads(point.config.threads)

    neural = open_neural(neural_file(data_cfg.neural, params.subject, point.data_cache or point_dir,
                                     data_cfg.image_size))
    roi = neural.roi(params.roi)
    images = neural.images(np.arange(neural.n_images), data_cfg.image_size)
    scores = np.asarray(roi.scores, dtype=np.float32)
    train_index, val_index = np.asarray(neural.train_index), np.asarray(neural.val_index)
    train_targets = control_targets(scores[train_index], params)
    train_images, val_images = images[train_index], images[val_index]  # indexed once, not every epoch

    torch.manual_seed(params.predictor_seed)
    model = place_model(build_predictor(params, scores.shape[1], data_cfg.image_size), plan)
    optimizer = torch.optim.Adam(model.parameters(), lr=params.predictor_lr, weight_decay=params.predictor_weight_decay)
    checkpoint = point_dir / CHECKPOINT_NAME
    identity = training_identity(params, data_cfg, extendable="predictor_epochs")
    history, start_epoch = load_checkpoint(checkpoint, identity, model, optimizer, None)
    attempt = max(history.attempt, default=-1) + 1
    epochs = 0 if params.predictor == "random" else params.predictor_epochs
    for epoch in range(start_epoch, epochs):
        tic = time.perf_counter()
        history.train_loss.append(fit_epoch(model, optimizer, train_images, train_targets, params, epoch, device))
        history.val_score.append(float(np.nanmean(per_image_pearson(predict(model, val_images, plan),
                                                                    scores[val_index]))))
        history.attempt.append(attempt)
        history.seconds.append(time.perf_counter() - tic)
        save_checkpoint(checkpoint, identity, model, optimizer, None, history)

    val_predicted = predict(model, val_images, plan)
    val_r = per_image_pearson(val_predicted, scores[val_index])
    val_r2 = r2_per_component(val_predicted, scores[val_index])
    train_r = per_image_pearson(predict(model, train_images, plan), scores[train_index])
    ceiling = val_pearson_ceiling(neural, roi)
    val_r_mean = float(np.nanmean(val_r))
    save_model(point_dir, model)
    return point.write_result(
        metrics={"val_pearson_mean": val_r_mean, "val_pearson_ceiling": ceiling,
                 "val_pearson_of_ceiling": val_r_mean / ceiling if ceiling > 0 else float("nan"),
                 "val_pearson_median": float(np.nanmedian(val_r)),
                 "train_pearson_mean": float(np.nanmean(train_r)), "val_r2_pc1": float(val_r2[0]),
                 "val_r2_mean": float(np.nanmean(val_r2)), "n_components": int(scores.shape[1]),
                 "n_train_images": len(train_index), "n_val_images": len(val_index),
                 "noise_ceiling_mean": float(np.nanmean(roi.noise_ceiling)), "epochs": epochs},
        curves={"val_pearson": val_r, "val_r2": val_r2, "train_loss": history.train_loss,
                "val_pearson_mean_per_epoch": history.val_score, "attempt": history.attempt},
        attrs={"subject": params.subject, "roi": params.roi, "control": params.predictor,
               "neural_file": str(neural.path), **plan.attrs(), "resumed_from_epoch": start_epoch},
    )


def val_pearson_ceiling(neural: NeuralData, roi: RoiData) -> float:
    """The validation r (mean per-image Pearson) a perfect predictor could expect: estimated from the single trials
    of the validation images shown 3 times (repeat_pearson_ceiling); NaN when no validation image has 3."""
    images = neural.images_with_repeats(neural.val_index)
    if not len(images):
        return float("nan")
    repeats = roi.pc_scores(roi.standardize(neural.repeat_trials(roi.name, images)))
    return repeat_pearson_ceiling(repeats)


def control_targets(targets: np.ndarray, params: PredictorParams) -> np.ndarray:
    """The training targets: as measured, or (the `shuffled` control) permuted across images with the seed."""
    if params.predictor != "shuffled":
        return targets
    return targets[np.random.default_rng(params.predictor_seed).permutation(len(targets))]


def fit_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, images: np.ndarray, targets: np.ndarray,
              params: PredictorParams, epoch: int, device: torch.device) -> float:
    """One epoch of Adam on the squared error summed over PCs (mean over the batch), in predictor_precision;
    returns the mean loss. Batches come as predictor_memory_format and predictor_prefetch_batches resolve on
    `device` (sfhpc.stages.device); the losses are read back once, at the end of the epoch."""
    model.train()
    plan = plan_for(device, params.predictor_memory_format, params.predictor_prefetch_batches)
    order = epoch_order(len(targets), params.predictor_seed, epoch)
    batches = [index for index in order.split(params.predictor_batch_size)
               if len(index) >= 2]  # BatchNorm cannot train on one image
    losses = []
    for batch, batch_targets in image_batches(images, batches, plan, torch.from_numpy(targets)):
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, params.predictor_precision):
            error = model(plan.layout(batch)).float() - batch_targets
            loss = error.pow(2).sum(dim=1).mean()
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
    return float(np.mean(torch.stack(losses).cpu().double().numpy())) if losses else float("nan")


@torch.no_grad()
def predict(model: nn.Module, images: np.ndarray, plan: DevicePlan) -> np.ndarray:
    """The model's outputs for every image, in evaluation mode."""
    model.eval()
    outputs = [model(plan.layout(batch)).cpu() for batch, in image_batches(images, chunks(len(images), EVAL_BATCH),
                                                                          plan)]
    return torch.cat(outputs).numpy()
