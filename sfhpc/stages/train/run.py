"""The train stage: a classifier with an optional fixed spectral front-end (SCIENCE.md sections 2-3), co-trained
with a frozen neural predictor when alpha > 0 (L = (1 - alpha) CE + alpha MSE, SCIENCE.md section 2).

Runs on the node: single process, torchrun, or one rank of a multi-node submitit/SLURM job (DDP). Checkpoints
atomically after every epoch and resumes from the last one, so a requeued or relaunched point never restarts.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sfhpc import distributed
from sfhpc.config import Precision
from sfhpc.data import load_dataset
from sfhpc.data.augment import cbm_grey, pad_crop_flip, random_resized_crop_flip
from sfhpc.evaluation.cbm import LUMINANCE_WEIGHTS, MEAN_LUMINANCE
from sfhpc.job import PointRun
from sfhpc.models.classifier import Classifier, load_pretrained_trunk
from sfhpc.results import RESULT_NAME
from sfhpc.rundir import CHECKPOINT_NAME
from sfhpc.stages.common import (
    EVAL_BATCH,
    History,
    autocast,
    build_model,
    epoch_order,
    load_checkpoint,
    load_predictor,
    save_checkpoint,
    save_model,
    slurm_cpus,
    training_identity,
    upstream_run_dir,
    use_threads,
)
from sfhpc.stages.device import DevicePlan, chunks, image_batches, place_model, plan_for, use_plan
from sfhpc.stages.train import NEURAL_SHARE, TEST_ACCURACY, ResolvedCrop, TrainParams, resolve_crop


def run(point: PointRun[TrainParams]) -> Path:
    """Train one point and write its result file; returns the result path."""
    env = distributed.detect()
    device = distributed.setup(env)
    use_threads(point.config.threads or slurm_cpus())
    try:
        result = _train_and_evaluate(point, env, device)
    finally:
        distributed.teardown(env)
    return result


@dataclass(frozen=True)
class Losses:
    """A step's (or an epoch's mean) loss and its two terms, unweighted: cross-entropy and, for a guided model, the
    neural MSE (NaN for an unguided one)."""

    total: float
    ce: float
    neural: float = float("nan")


@dataclass(frozen=True)
class NeuralGuide:
    """Co-training targets: a frozen predictor's outputs on the same (augmented) images, weighted by alpha. With
    `target_scale` (mean per output over the training images, and an SD per output for neural_target standardized
    or one for all for scaled), the outputs are centred and divided by it before the MSE, so that the neural term
    keeps its share of the loss whatever the predictor's output scale."""

    predictor: Classifier
    alpha: float
    target_scale: tuple[torch.Tensor, torch.Tensor] | None = None
    normalized: bool = False  # loss_normalized: the loss divided by 1 - alpha

    @property
    def n_outputs(self) -> int:
        return self.predictor.head.out_features

    @torch.no_grad()
    def targets(self, images: torch.Tensor) -> torch.Tensor:
        """The neural head's targets for `images`: the predictor's outputs, centred and scaled with target_scale."""
        outputs = self.predictor(images)
        if self.target_scale is None:
            return outputs
        mean, sd = self.target_scale
        return (outputs - mean) / sd

    def loss_terms(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(1 - alpha) * cross-entropy + alpha * mean squared error to the targets (divided by 1 - alpha when
        normalized), and its two terms."""
        logits, neural = model(images, with_neural=True)
        ce, mse = F.cross_entropy(logits, labels), F.mse_loss(neural, self.targets(images))
        loss = (1 - self.alpha) * ce + self.alpha * mse
        return (loss / (1 - self.alpha) if self.normalized else loss), ce, mse


def neural_guide(point: PointRun[TrainParams], train_images: np.ndarray, plan: DevicePlan) -> NeuralGuide | None:
    """The frozen predictor a guided point (alpha > 0) is co-trained with (its one upstream point's), on the plan's
    device and in its layout, and the scale of its targets over `train_images` unless neural_target is raw."""
    if point.params.alpha == 0:
        return None
    predictor = place_model(load_predictor(upstream_run_dir(point), point.only_upstream(), plan.device), plan)
    kind = point.params.neural_target
    scale = None if kind == "raw" else target_scale(predictor, train_images, plan, per_output=kind == "standardized")
    return NeuralGuide(predictor, point.params.alpha, scale, point.params.loss_normalized)


@torch.no_grad()
def target_scale(predictor: Classifier, images: np.ndarray, plan: DevicePlan, per_output: bool = True
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean of each of the predictor's outputs over `images` (the training images, unaugmented), and the SD to
    divide by: each output's own (ddof 0; 1 where an output is constant), or with `per_output` False one for all,
    the root mean variance (1 if every output is constant). The same on every rank."""
    outputs = torch.cat([predictor(plan.layout(batch))
                         for batch, in image_batches(images, chunks(len(images), EVAL_BATCH), plan)]).double()
    sd = outputs.std(dim=0, correction=0)
    if not per_output:
        sd = torch.full_like(sd, float(sd.square().mean().sqrt()))
    return outputs.mean(dim=0).float(), torch.where(sd > 0, sd, torch.ones_like(sd)).float()


def _train_and_evaluate(point: PointRun[TrainParams], env: distributed.DistEnv, device: torch.device) -> Path:
    params, data_cfg, point_dir = point.params, point.data, point.dir
    torch.manual_seed(params.seed)  # same initial weights on every rank
    plan = plan_for(device, params.memory_format, params.prefetch_batches)
    use_plan(plan)
    dataset = load_dataset(data_cfg, point.data_cache)
    guide = neural_guide(point, dataset.train.images, plan)
    neural_dim = guide.n_outputs if guide else None
    model = build_model(params, len(dataset.class_names), data_cfg.image_size, neural_dim)
    weights_sha256 = start_from_pretrained(model, params.pretrained)
    model = place_model(model, plan)
    ddp_model = _wrap_ddp(model, env, device)
    optimizer = torch.optim.SGD(model.parameters(), lr=params.lr, momentum=params.momentum,
                                weight_decay=params.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=params.lr_step, gamma=params.lr_gamma)
    checkpoint = point_dir / CHECKPOINT_NAME
    crop = resolve_crop(params, data_cfg.kind)
    # A checkpoint must also match what the settings resolve to on the node: the crop that `auto` means (only the
    # random_resized crop is new: a checkpoint trained with the padded crop before it existed stays resumable) and
    # the weights file's contents (the same path may hold other weights by the time a job requeues).
    identity = training_identity(params, data_cfg, extendable="epochs",
                                 resolved={"augment_crop": crop if crop == "random_resized" else None,
                                           "pretrained_sha256": weights_sha256})
    history, start_epoch = load_checkpoint(checkpoint, identity, model, optimizer, scheduler)
    attempt = max(history.attempt, default=-1) + 1
    per_rank = distributed.per_rank_batch(params.batch_size, env.world_size)

    for epoch in range(start_epoch, params.epochs):
        tic = time.perf_counter()
        losses = train_epoch(ddp_model, optimizer, dataset.train.images, dataset.train.labels, params, epoch,
                             env, per_rank, device, guide, data_kind=data_cfg.kind)
        scheduler.step()
        accuracy = evaluate(model, dataset.val.images, dataset.val.labels, env, device, plan)
        history.train_loss.append(losses.total)
        history.loss_ce.append(losses.ce)
        history.loss_neural.append(losses.neural)
        history.val_score.append(accuracy)
        history.attempt.append(attempt)
        history.seconds.append(time.perf_counter() - tic)
        if env.is_main:
            save_checkpoint(checkpoint, identity, model, optimizer, scheduler, history)
        _barrier(env)

    test_accuracy = evaluate(model, dataset.test.images, dataset.test.labels, env, device, plan)
    neural_fit = neural_fit_r(model, guide, dataset.test.images, plan) if guide and env.is_main else float("nan")
    hosts = distributed.all_hosts(env)
    result_path = point_dir / RESULT_NAME
    if env.is_main:
        save_model(point_dir, model)
        result_path = point.write_result(
            metrics={
                TEST_ACCURACY: test_accuracy,
                "val_accuracy": history.val_score[-1],
                "train_loss": history.train_loss[-1],
                "chance": 1.0 / len(dataset.class_names),
                "epochs": params.epochs,
                "train_seconds": float(sum(history.seconds)),
                "world_size": env.world_size,
                "neural_fit_r": neural_fit,
                NEURAL_SHARE: mean_neural_share(history, params.alpha),
            },
            curves={"train_loss": history.train_loss, "val_accuracy": history.val_score,
                    "attempt": history.attempt, "epoch_seconds": history.seconds,
                    "loss_ce": history.loss_ce, "loss_neural": history.loss_neural},
            attrs={"hosts": json.dumps(hosts), "world_size": env.world_size, "dist_source": env.source,
                   **plan.attrs(), "resumed_from_epoch": start_epoch, "attempts": attempt + 1,
                   **recipe_attrs(params, crop, weights_sha256)},
        )
    _barrier(env)
    return result_path


def start_from_pretrained(model: Classifier, pretrained: str | None) -> str | None:
    """Load the `pretrained` weights file (a torchvision ResNet-18 state dict) into the model's trunk; returns the
    file's sha256 (None without a file). The model's own head stays as built (its fc is replaced)."""
    if pretrained is None:
        return None
    path = Path(pretrained)
    load_pretrained_trunk(model, path)
    return file_sha256(path)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def recipe_attrs(params: TrainParams, crop: ResolvedCrop, weights_sha256: str | None) -> dict[str, str]:
    """What the result records of the recipe beyond its config: the crop `auto` resolved to, and which weights file
    (path and contents) the trunk started from."""
    attrs: dict[str, str] = {"augment_crop": crop}
    if params.pretrained is not None and weights_sha256 is not None:  # the one implies the other
        attrs |= {"pretrained": params.pretrained, "pretrained_sha256": weights_sha256}
    return attrs


def _wrap_ddp(model: nn.Module, env: distributed.DistEnv, device: torch.device) -> nn.Module:
    if env.world_size == 1:
        return model
    if device.type == "cuda":  # SyncBatchNorm needs GPUs; on CPUs each rank normalises its own share
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def _barrier(env: distributed.DistEnv) -> None:
    if env.world_size > 1:
        torch.distributed.barrier()


# ------------------------------------------------------------------------------------------ epochs
def rank_batches(order: torch.Tensor, batch_size: int, env: distributed.DistEnv, per_rank: int) -> list[torch.Tensor]:
    """Global batches of `batch_size` (incomplete last batch dropped); this rank's contiguous share of each."""
    n_batches = len(order) // batch_size
    start = env.rank * per_rank
    return [order[b * batch_size + start: b * batch_size + start + per_rank] for b in range(n_batches)]


def augment(batch: torch.Tensor, params: TrainParams, crop: ResolvedCrop, generator: torch.Generator
            ) -> torch.Tensor:
    """A training batch's random crop (of kind `crop`, resolve_crop's) and flip, then (augment_grey) some images
    made grey, then its contrast scaling."""
    if crop == "pad":
        batch = pad_crop_flip(batch, generator)
    elif crop == "random_resized":
        batch = random_resized_crop_flip(batch, generator, params.augment_scale, params.augment_ratio)
    if params.augment_grey > 0:
        batch = cbm_grey(batch, params.augment_grey, generator, MEAN_LUMINANCE, LUMINANCE_WEIGHTS)
    if params.augment_contrast_min < 1:
        batch = scale_contrast(batch, params.augment_contrast_min, generator)
    return batch


def scale_contrast(batch: torch.Tensor, lowest: float, generator: torch.Generator) -> torch.Tensor:
    """Each image's deviations from its own mean luminance scaled by a factor drawn from [lowest, 1]: a model that
    is to be probed with low-contrast images (critical band masking) should have seen some."""
    factors = lowest + (1 - lowest) * torch.rand(len(batch), 1, 1, 1, generator=generator)
    means = batch.mean(dim=(1, 2, 3), keepdim=True)
    return means + factors.to(batch.device) * (batch - means)


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor,
               labels: torch.Tensor, guide: NeuralGuide | None = None, precision: Precision = "float32") -> Losses:
    """One SGD step on mean cross-entropy (or the co-training loss, with a guide), in `precision`; under DDP the
    gradient is averaged over ranks. Returns this rank's loss and its terms."""
    return Losses(*step_losses(model, optimizer, images, labels, guide, precision).tolist())


def step_losses(model: nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor, labels: torch.Tensor,
                guide: NeuralGuide | None, precision: Precision) -> torch.Tensor:
    """train_step's step, its loss and terms (total, cross-entropy, neural MSE or NaN) left on the device as a
    float32 tensor of 3: reading them back every step would make the host wait for the GPU before it can queue the
    next step."""
    optimizer.zero_grad(set_to_none=True)
    with autocast(images.device, precision):
        if guide:
            loss, ce, mse = guide.loss_terms(model, images, labels)
        else:
            loss = ce = F.cross_entropy(model(images), labels)
            mse = torch.full_like(loss, float("nan"))
    loss.backward()
    optimizer.step()
    return torch.stack([loss.detach(), ce.detach(), mse.detach()]).float()


def train_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, images: np.ndarray, labels: np.ndarray,
                params: TrainParams, epoch: int, env: distributed.DistEnv, per_rank: int,
                device: torch.device, guide: NeuralGuide | None = None, data_kind: str = "synthetic") -> Losses:
    """One epoch; returns the mean training loss and terms over all ranks' batches. `data_kind` (the data config's
    kind) resolves augment_crop auto. Batches come from a loader thread as the point's memory_format and
    prefetch_batches resolve on `device` (sfhpc.stages.device): the same batches, augmented alike, either way."""
    model.train()
    plan = plan_for(device, params.memory_format, params.prefetch_batches)
    generator = torch.Generator().manual_seed(distributed.rank_seed(params.seed, env.rank) * 1_000 + epoch)
    crop = resolve_crop(params, data_kind)
    batches = rank_batches(epoch_order(len(labels), params.seed, epoch), params.batch_size, env, per_rank)
    steps = [step_losses(model, optimizer, plan.layout(augment(batch, params, crop, generator)), batch_labels, guide,
                         params.precision)
             for batch, batch_labels in image_batches(images, batches, plan, torch.from_numpy(labels))]
    means = np.mean(torch.stack(steps).cpu().double().numpy(), axis=0) if steps else [float("nan")] * 3
    return Losses(*_mean_over_ranks([float(m) for m in means], env, device))


def _mean_over_ranks(values: list[float], env: distributed.DistEnv, device: torch.device) -> list[float]:
    if env.world_size == 1:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    torch.distributed.all_reduce(tensor)
    return (tensor / env.world_size).tolist()


def mean_neural_share(history: History, alpha: float) -> float:
    """The weighted neural term's share of the training loss, alpha * MSE / ((1 - alpha) CE + alpha * MSE) (as
    loss_normalized leaves it), averaged over the epochs (NaN for an unguided model, or epochs trained before the
    terms were recorded)."""
    if alpha == 0:
        return float("nan")
    weighted = [(alpha * neural, (1 - alpha) * ce) for ce, neural in zip(history.loss_ce, history.loss_neural,
                                                                          strict=True) if np.isfinite(neural)]
    shares = [neural / (neural + ce) for neural, ce in weighted if neural + ce > 0]
    return float(np.mean(shares)) if shares else float("nan")


@torch.no_grad()
def evaluate(model: nn.Module, images: np.ndarray, labels: np.ndarray, env: distributed.DistEnv,
             device: torch.device, plan: DevicePlan | None = None) -> float:
    """Accuracy over all images; each rank scores a strided share and the counts are summed. `plan`: how batches
    reach `device` (default: the plain way)."""
    model.eval()
    plan = plan or DevicePlan(device)
    mine = torch.arange(env.rank, len(labels), env.world_size)
    correct = torch.zeros(1, dtype=torch.float64, device=device)
    label_tensor = torch.from_numpy(labels)
    batches = [mine[start:start + EVAL_BATCH] for start in range(0, len(mine), EVAL_BATCH)]
    for index, (batch,) in zip(batches, image_batches(images, batches, plan), strict=True):
        predictions = model(plan.layout(batch)).argmax(1).cpu()
        correct += (predictions == label_tensor[index]).sum().item()
    if env.world_size > 1:
        torch.distributed.all_reduce(correct)
    return correct.item() / len(labels)


@torch.no_grad()
def neural_fit_r(model: nn.Module, guide: NeuralGuide, images: np.ndarray, plan: DevicePlan) -> float:
    """Mean per-image Pearson r between a guided model's neural head and its targets (the predictor's outputs,
    centred and scaled unless neural_target is raw)."""
    from sfhpc.evaluation.prediction import per_image_pearson

    model.eval()
    pairs = []
    for batch, in image_batches(images, chunks(len(images), EVAL_BATCH), plan):
        batch = plan.layout(batch)
        _, neural = model(batch, with_neural=True)
        pairs.append((neural.cpu().numpy(), guide.targets(batch).cpu().numpy()))
    predicted, targets = (np.concatenate(side) for side in zip(*pairs, strict=True))
    return float(np.nanmean(per_image_pearson(predicted, targets)))
