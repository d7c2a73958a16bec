"""What the stages share on the node: thread counts, batches of images as tensors, checkpoints, and loading the models
that upstream points left in their folders.

A module of its own, so that no stage's code imports another's (train reads a predictor, the evaluating stages read
a trained model, the predictor checkpoints like train): each imports these helpers and the other stages' torch-free
specs (their parameter models) only. Runs on the node: imports torch.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from sfhpc.config import Closed, DataConfig, Precision
from sfhpc.job import PointConfig, PointRun
from sfhpc.models.bands import BandParams
from sfhpc.models.classifier import Classifier, build_classifier
from sfhpc.results import atomic_write
from sfhpc.rundir import MODEL_NAME
from sfhpc.stages.device import DevicePlan, evaluation_plan, place_model
from sfhpc.stages.predictor import PredictorParams
from sfhpc.stages.train import TrainParams

EVAL_BATCH = 256  # images per forward pass when only evaluating (no gradients: memory allows more than training)


# ------------------------------------------------------------------------------------------ threads
def use_threads(threads: int | None) -> None:
    """Run torch on `threads` CPU threads (a point's `threads`: its share of a machine that a local launch splits
    between points); None leaves torch's own choice."""
    if threads:
        torch.set_num_threads(threads)


def slurm_cpus() -> int | None:
    """The CPUs SLURM gave each task (SLURM_CPUS_PER_TASK), if the job runs under SLURM and asked for them."""
    return int(os.environ.get("SLURM_CPUS_PER_TASK", 0)) or None


# ------------------------------------------------------------------------------------------ batches
def autocast(device: torch.device, precision: Precision) -> torch.autocast:
    """The autocast context of a training step: bfloat16 for precision bf16, off (float32) otherwise."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The sample order of an epoch: the same on every rank, different per epoch, reproducible on resume."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))


# ------------------------------------------------------------------------------------ checkpoints
@dataclass
class History:
    """Per-epoch record, saved in every checkpoint; `attempt` tells which run of the job trained each epoch.
    `val_score` is a classifier's validation accuracy, or a predictor's mean per-image Pearson r. `loss_ce` and
    `loss_neural`: a classifier's mean cross-entropy and neural MSE (NaN unguided), unweighted; a checkpoint made
    before they were recorded has NaN for its epochs."""

    train_loss: list[float] = field(default_factory=list)
    val_score: list[float] = field(default_factory=list)
    attempt: list[int] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    loss_ce: list[float] = field(default_factory=list)
    loss_neural: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        for terms in (self.loss_ce, self.loss_neural):
            terms.extend([float("nan")] * (len(self.train_loss) - len(terms)))


def training_identity(params: Closed, data: DataConfig, *, extendable: str,
                      resolved: dict[str, str | None] | None = None) -> str:
    """What a checkpoint must match to be resumed: every setting except the number of epochs (the parameter
    `extendable`, so that a finished run can be extended). Only settings that differ from their defaults count, so
    that a new setting with a default keeps existing checkpoints resumable (as it keeps point ids). `resolved`:
    what settings resolve to on the node (a default that depends on the data, a file's hash); a None value is left
    out, for what sfhpc did before the setting existed."""
    settings: dict[str, Any] = {"params": params.model_dump(mode="json", exclude={extendable}, exclude_defaults=True),
                                "data": data.model_dump(mode="json", exclude_defaults=True)}
    facts = {key: value for key, value in (resolved or {}).items() if value is not None}
    if facts:
        settings["resolved"] = facts
    return hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()


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


def save_model(point_dir: Path, model: nn.Module) -> None:
    """A finished point's weights, which its downstream points load (`load_trained`, `load_predictor`)."""
    atomic_write(point_dir / MODEL_NAME, lambda tmp: torch.save(model.state_dict(), tmp))


# ------------------------------------------------------------------------------------------ models
def build_model(params: TrainParams, n_classes: int, image_size: int, neural_dim: int | None = None) -> Classifier:
    """A train point's classifier: its ResNet behind its spectral front-end (with a neural head when guided)."""
    band_params = BandParams(params.lsf_sigma_px224, params.human_mu, params.human_s, params.human_floor)
    return build_classifier(params.arch, n_classes, params.band, image_size, band_params,
                            width=params.width, blocks=tuple(params.blocks), neural_dim=neural_dim)


def build_predictor(params: PredictorParams, n_outputs: int, image_size: int) -> Classifier:
    """A ResNet trunk without a spectral front-end whose linear head outputs the ROI's PC scores."""
    return build_classifier(params.predictor_arch, n_outputs, "none", image_size, width=params.predictor_width)


# --------------------------------------------------------------------------------- upstream points
def read_point_config(run_dir: Path | str, point: str) -> PointConfig:
    """The config point `point` ("stage/point id") of a run ran with (its config.yaml, written at launch)."""
    return PointConfig.model_validate(yaml.safe_load((Path(run_dir) / point / "config.yaml").read_text()))


def upstream_run_dir(point: PointRun[Any]) -> Path:
    """The run folder, where a point finds its upstream points (a point run on its own has none to read)."""
    if point.run_dir is None:
        raise RuntimeError(f"point {point.point_id} reads upstream points {list(point.config.upstream)}, but its "
                           "config names no run folder (run_dir)")
    return point.run_dir


def load_trained(run_dir: Path | str, upstream: str, device: torch.device | str = "cpu"
                 ) -> tuple[Classifier, PointConfig]:
    """The finished model of train point `upstream` ("train/<point id>") in eval mode, and its config."""
    config = read_point_config(run_dir, upstream)
    params = TrainParams.model_validate(config.params)
    state = torch.load(Path(run_dir) / upstream / MODEL_NAME, map_location="cpu", weights_only=True)
    neural_dim = state["neural_head.weight"].shape[0] if "neural_head.weight" in state else None
    model = build_model(params, config.data.n_classes, config.data.image_size, neural_dim)
    model.load_state_dict(state)
    return model.to(device).eval(), config


def load_upstream_model(point: PointRun[Any], device: torch.device | str = "cpu") -> tuple[Classifier, PointConfig]:
    """For a stage that evaluates one trained model (cbm, attack, rsa): apply the point's thread count, then the
    model of its one upstream train point and that point's config (whose `data` the model was trained on)."""
    use_threads(point.config.threads)
    return load_trained(upstream_run_dir(point), point.only_upstream(), device)


def evaluation_model(point: PointRun[Any]) -> tuple[Classifier, PointConfig, DevicePlan]:
    """For a stage that evaluates one trained model (cbm, attack, rsa): load_upstream_model on the node's first GPU
    (else the CPU), in the memory layout the trained point resolved to there, and the plan it runs with."""
    model, trained = load_upstream_model(point)
    plan = evaluation_plan(TrainParams.model_validate(trained.params).memory_format)
    return place_model(model, plan), trained, plan


def load_predictor(run_dir: Path | str, upstream: str, device: torch.device | str = "cpu") -> Classifier:
    """The finished, frozen predictor of point `upstream` ("predictor/<point id>"), in evaluation mode."""
    config = read_point_config(run_dir, upstream)
    params = PredictorParams.model_validate(config.params)
    state = torch.load(Path(run_dir) / upstream / MODEL_NAME, map_location="cpu", weights_only=True)
    model = build_predictor(params, state["head.weight"].shape[0], config.data.image_size)
    model.load_state_dict(state)
    model.requires_grad_(False)
    return model.to(device).eval()
