"""The train stage: a classifier with an optional fixed spectral front-end (SCIENCE.md sections 2-3), co-trained
with a frozen neural predictor when alpha > 0 (L = (1 - alpha) CE + alpha MSE, SCIENCE.md section 2).

Runs on the node: single process, torchrun, or one rank of a multi-node submitit/SLURM job (DDP). Checkpoints
atomically after every epoch and resumes from the last one, so a requeued or relaunched point never restarts.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sfhpc import distributed
from sfhpc.config import DataConfig, PredictorParams, TrainParams
from sfhpc.data import load_dataset
from sfhpc.models.bands import BandParams
from sfhpc.models.classifier import build_classifier
from sfhpc.results import RESULT_NAME, Provenance, atomic_write, now_iso, write_result
from sfhpc.rundir import CHECKPOINT_NAME

MODEL_NAME = "model.pt"
EVAL_BATCH = 256


@dataclass
class History:
    """Per-epoch record, saved in every checkpoint; `attempt` tells which run of the job trained each epoch.
    `val_score` is a classifier's validation accuracy, or a predictor's mean per-image Pearson r."""

    train_loss: list[float] = field(default_factory=list)
    val_score: list[float] = field(default_factory=list)
    attempt: list[int] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)


def run(config: dict[str, Any], point_dir: Path) -> Path:
    """Train one point and write its result file; returns the result path."""
    params = TrainParams.model_validate(config["params"])
    data_cfg = DataConfig.model_validate(config["data"])
    env = distributed.detect()
    device = distributed.setup(env)
    _set_threads(config.get("threads"))
    started = now_iso()
    try:
        result = _train_and_evaluate(params, data_cfg, env, device, point_dir, config, started)
    finally:
        distributed.teardown(env)
    return result


def _set_threads(threads: int | None) -> None:
    threads = threads or int(os.environ.get("SLURM_CPUS_PER_TASK", 0)) or None
    if threads:
        torch.set_num_threads(threads)


def build_model(params: TrainParams, n_classes: int, image_size: int, neural_dim: int | None = None) -> nn.Module:
    band_params = BandParams(params.lsf_sigma_px224, params.human_mu, params.human_s, params.human_floor)
    return build_classifier(params.arch, n_classes, params.band, image_size, band_params,
                            width=params.width, blocks=tuple(params.blocks), neural_dim=neural_dim)


@dataclass(frozen=True)
class NeuralGuide:
    """Co-training targets: a frozen predictor's outputs on the same (augmented) images, weighted by alpha."""

    predictor: nn.Module
    alpha: float

    @property
    def n_outputs(self) -> int:
        return self.predictor.head.out_features

    def loss(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(1 - alpha) * cross-entropy + alpha * mean squared error to the predictor's outputs."""
        with torch.no_grad():
            targets = self.predictor(images)
        logits, neural = model(images, with_neural=True)
        return (1 - self.alpha) * F.cross_entropy(logits, labels) + self.alpha * F.mse_loss(neural, targets)


def data_cache(config: dict[str, Any]) -> Path | None:
    """The run folder's data/ (shared by every point of the run), when the stage runs inside a run."""
    return Path(config["run_dir"]) / "data" if config.get("run_dir") else None


def load_trained(run_dir: Path | str, upstream: str, device: torch.device | str = "cpu") -> tuple[nn.Module, dict]:
    """The finished model of train point `upstream` ("train/<point id>") in eval mode, and its config."""
    import yaml

    point_dir = Path(run_dir) / upstream
    config = yaml.safe_load((point_dir / "config.yaml").read_text())
    params = TrainParams.model_validate(config["params"])
    data_cfg = DataConfig.model_validate(config["data"])
    state = torch.load(point_dir / MODEL_NAME, map_location="cpu", weights_only=True)
    neural_dim = state["neural_head.weight"].shape[0] if "neural_head.weight" in state else None
    model = build_model(params, data_cfg.n_classes, data_cfg.image_size, neural_dim)
    model.load_state_dict(state)
    return model.to(device).eval(), config


def load_upstream_model(config: dict[str, Any], device: torch.device | str = "cpu"
                        ) -> tuple[nn.Module, dict[str, Any], DataConfig]:
    """For a stage that evaluates one trained model (cbm, attack, rsa): apply the point's thread count, then the
    model of its one upstream train point, that point's config and its data config."""
    if config.get("threads"):
        torch.set_num_threads(config["threads"])
    (upstream,) = config["upstream"]
    model, train_config = load_trained(config["run_dir"], upstream, device)
    return model, train_config, DataConfig.model_validate(train_config["data"])


def neural_guide(params: TrainParams, config: dict[str, Any], device: torch.device) -> NeuralGuide | None:
    """The frozen predictor a guided point (alpha > 0) is co-trained with: its one upstream point's."""
    if params.alpha == 0:
        return None
    from sfhpc.stages.predictor import load_predictor

    (upstream,) = config["upstream"]
    return NeuralGuide(load_predictor(config["run_dir"], upstream, device), params.alpha)


def training_identity(params: TrainParams | PredictorParams, data: DataConfig) -> str:
    """What a checkpoint must match to be resumed: every setting except the number of epochs (so a finished run
    can be extended). Only settings that differ from their defaults count, so that a new setting with a default
    keeps existing checkpoints resumable (as it keeps point ids)."""
    settings = {"params": params.model_dump(mode="json", exclude={"epochs", "predictor_epochs"}, exclude_defaults=True),
                "data": data.model_dump(mode="json", exclude_defaults=True)}
    return hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def _train_and_evaluate(params: TrainParams, data_cfg: DataConfig, env: distributed.DistEnv, device: torch.device,
                        point_dir: Path, config: dict[str, Any], started: str) -> Path:
    torch.manual_seed(params.seed)  # same initial weights on every rank
    dataset = load_dataset(data_cfg, data_cache(config))
    guide = neural_guide(params, config, device)
    neural_dim = guide.n_outputs if guide else None
    model = build_model(params, len(dataset.class_names), data_cfg.image_size, neural_dim).to(device)
    ddp_model = _wrap_ddp(model, env, device)
    optimizer = torch.optim.SGD(model.parameters(), lr=params.lr, momentum=params.momentum,
                                weight_decay=params.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=params.lr_step, gamma=params.lr_gamma)
    checkpoint = point_dir / CHECKPOINT_NAME
    identity = training_identity(params, data_cfg)
    history, start_epoch = load_checkpoint(checkpoint, identity, model, optimizer, scheduler)
    attempt = max(history.attempt, default=-1) + 1
    per_rank = distributed.per_rank_batch(params.batch_size, env.world_size)

    for epoch in range(start_epoch, params.epochs):
        tic = time.perf_counter()
        loss = train_epoch(ddp_model, optimizer, dataset.train.images, dataset.train.labels, params, epoch,
                           env, per_rank, device, guide)
        scheduler.step()
        accuracy = evaluate(model, dataset.val.images, dataset.val.labels, env, device)
        history.train_loss.append(loss)
        history.val_score.append(accuracy)
        history.attempt.append(attempt)
        history.seconds.append(time.perf_counter() - tic)
        if env.is_main:
            save_checkpoint(checkpoint, identity, model, optimizer, scheduler, history)
        _barrier(env)

    test_accuracy = evaluate(model, dataset.test.images, dataset.test.labels, env, device)
    neural_fit = neural_fit_r(model, guide, dataset.test.images, device) if guide and env.is_main else float("nan")
    hosts = distributed.all_hosts(env)
    result_path = point_dir / RESULT_NAME
    if env.is_main:
        atomic_write(point_dir / MODEL_NAME, lambda tmp: torch.save(model.state_dict(), tmp))
        write_result(
            result_path, stage="train", point_id=config["point_id"], config=config,
            provenance=Provenance(config.get("git_sha", "unknown"), started, now_iso()),
            metrics={
                "test_accuracy": test_accuracy,
                "val_accuracy": history.val_score[-1],
                "train_loss": history.train_loss[-1],
                "chance": 1.0 / len(dataset.class_names),
                "epochs": params.epochs,
                "train_seconds": float(sum(history.seconds)),
                "world_size": env.world_size,
                "neural_fit_r": neural_fit,
            },
            curves={"train_loss": history.train_loss, "val_accuracy": history.val_score,
                    "attempt": history.attempt, "epoch_seconds": history.seconds},
            extra_attrs={"hosts": json.dumps(hosts), "world_size": env.world_size, "dist_source": env.source,
                         "device": str(device), "resumed_from_epoch": start_epoch, "attempts": attempt + 1},
        )
    _barrier(env)
    return result_path


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
def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The sample order of an epoch: the same on every rank, different per epoch, reproducible on resume."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))


def rank_batches(order: torch.Tensor, batch_size: int, env: distributed.DistEnv, per_rank: int) -> list[torch.Tensor]:
    """Global batches of `batch_size` (incomplete last batch dropped); this rank's contiguous share of each."""
    n_batches = len(order) // batch_size
    start = env.rank * per_rank
    return [order[b * batch_size + start: b * batch_size + start + per_rank] for b in range(n_batches)]


def to_float(images: np.ndarray, index: torch.Tensor, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(images[index.numpy()]).to(device).float().div_(255.0)


def augment(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random crop (reflect padding of 1/16 of the size) and horizontal flip, per image."""
    size = batch.shape[-1]
    pad = max(1, size // 16)
    padded = F.pad(batch, (pad, pad, pad, pad), mode="reflect")
    offsets = torch.randint(0, 2 * pad + 1, (len(batch), 2), generator=generator)
    flips = torch.rand(len(batch), generator=generator) < 0.5
    out = torch.stack([padded[i, :, y:y + size, x:x + size] for i, (y, x) in enumerate(offsets.tolist())])
    out[flips] = out[flips].flip(-1)
    return out


def scale_contrast(batch: torch.Tensor, lowest: float, generator: torch.Generator) -> torch.Tensor:
    """Each image's deviations from its own mean luminance scaled by a factor drawn from [lowest, 1]: a model that
    is to be probed with low-contrast images (critical band masking) should have seen some."""
    factors = lowest + (1 - lowest) * torch.rand(len(batch), 1, 1, 1, generator=generator)
    means = batch.mean(dim=(1, 2, 3), keepdim=True)
    return means + factors.to(batch.device) * (batch - means)


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor,
               labels: torch.Tensor, guide: NeuralGuide | None = None) -> float:
    """One SGD step on mean cross-entropy (or the co-training loss, with a guide); under DDP the gradient is
    averaged over ranks."""
    optimizer.zero_grad(set_to_none=True)
    loss = guide.loss(model, images, labels) if guide else F.cross_entropy(model(images), labels)
    loss.backward()
    optimizer.step()
    return loss.item()


def train_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, images: np.ndarray, labels: np.ndarray,
                params: TrainParams, epoch: int, env: distributed.DistEnv, per_rank: int,
                device: torch.device, guide: NeuralGuide | None = None) -> float:
    """One epoch; returns the mean training loss over all ranks' batches."""
    model.train()
    generator = torch.Generator().manual_seed(distributed.rank_seed(params.seed, env.rank) * 1_000 + epoch)
    label_tensor = torch.from_numpy(labels)
    losses = []
    for index in rank_batches(epoch_order(len(labels), params.seed, epoch), params.batch_size, env, per_rank):
        batch = to_float(images, index, device)
        if params.augment:
            batch = augment(batch, generator)
        if params.augment_contrast_min < 1:
            batch = scale_contrast(batch, params.augment_contrast_min, generator)
        losses.append(train_step(model, optimizer, batch, label_tensor[index].to(device), guide))
    return _mean_over_ranks(float(np.mean(losses)) if losses else float("nan"), env, device)


def _mean_over_ranks(value: float, env: distributed.DistEnv, device: torch.device) -> float:
    if env.world_size == 1:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(tensor)
    return tensor.item() / env.world_size


@torch.no_grad()
def evaluate(model: nn.Module, images: np.ndarray, labels: np.ndarray, env: distributed.DistEnv,
             device: torch.device) -> float:
    """Accuracy over all images; each rank scores a strided share and the counts are summed."""
    model.eval()
    mine = torch.arange(env.rank, len(labels), env.world_size)
    correct = torch.zeros(1, dtype=torch.float64, device=device)
    label_tensor = torch.from_numpy(labels)
    for start in range(0, len(mine), EVAL_BATCH):
        index = mine[start:start + EVAL_BATCH]
        predictions = model(to_float(images, index, device)).argmax(1).cpu()
        correct += (predictions == label_tensor[index]).sum().item()
    if env.world_size > 1:
        torch.distributed.all_reduce(correct)
    return correct.item() / len(labels)


@torch.no_grad()
def neural_fit_r(model: nn.Module, guide: NeuralGuide, images: np.ndarray, device: torch.device) -> float:
    """Mean per-image Pearson r between a guided model's neural head and its predictor's outputs."""
    from sfhpc.evaluation.prediction import per_image_pearson

    model.eval()
    pairs = []
    for start in range(0, len(images), EVAL_BATCH):
        batch = to_float(images, torch.arange(start, min(start + EVAL_BATCH, len(images))), device)
        _, neural = model(batch, with_neural=True)
        pairs.append((neural.cpu().numpy(), guide.predictor(batch).cpu().numpy()))
    predicted, targets = (np.concatenate(side) for side in zip(*pairs, strict=True))
    return float(np.nanmean(per_image_pearson(predicted, targets)))


# ------------------------------------------------------------------------------------ checkpoints
def save_checkpoint(path: Path, identity: str, model: nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: Any | None, history: History) -> None:
    state = {"identity": identity, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "scheduler": scheduler.state_dict() if scheduler else None, "history": history.__dict__}
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: Path, identity: str, model: nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: Any | None) -> tuple[History, int]:
    """Restore the last checkpoint, if any: (history, first epoch to run). Refuses one made for other settings."""
    if not path.exists():
        return History(), 0
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise RuntimeError(f"checkpoint {path} is unreadable ({reason}); delete it to restart this point from "
                           "scratch, or relaunch with --force") from None
    if state.get("identity") != identity:
        raise RuntimeError(f"checkpoint {path} was made for other settings; delete it or relaunch with --force")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if scheduler:
        scheduler.load_state_dict(state["scheduler"])
    history = History(**state["history"])
    return history, len(history.train_loss)
