"""GPU calibration: one point's work of each paper stage, timed on this machine's GPU through the stages' own code.

For each stage of sweeps/paper.yaml (or --sweep) it runs the stage's own functions at 224 px (--image-size) on
synthetic ImageNet-shaped data (uint8 images, 50 classes) with the sweep's ResNet-18 settings, for --steps steps
after a warm-up (cudnn autotuning, the allocator) that is not timed, and prints images/s, the step time, peak GPU
memory and MFU (model FLOP/s over the GPU's peak; the FLOPs are counted by torch.utils.flop_counter for the model
actually run: convolutions and matrix products, not the spectral front-end's FFT or element-wise work). Then it
prints, per paper job file, the `expected_minutes` the measured speed implies: the mean over the sweep's points of
that stage of their work (epochs, images, batches, cells, permutations, from the expanded sweep and the data sizes
below) divided by the measured speed.

What runs, per stage:
- predictor: `fit_epoch` (Adam, squared error, the sweep's predictor_precision and batch) and `predict`;
- train: `train_epoch` (the loader, RandomResizedCrop + flip on the device, SGD, precision, memory_format), once per
  kind of train point in the sweep (guided or not, band, per-GPU batch), and `evaluate` for the val/test passes;
- cbm: `accuracy_grid` through `torch_predictor` (noise made on the CPU, batches of cbm_batch_size on the device);
- rsa: `layer_features` on the device and `rsa_against_rois` (numpy), timed with 1 and with min(--steps, the sweep's)
  permutations to separate the fixed cost from the per-permutation one, then scaled to the sweep's count;
- attack: the clean pass (`clean_correct`) and `attack_shard` with APGD-CE for --steps iterations on images the
  random model classifies correctly (labels = its predictions). An attack point's time depends on how many images
  survive each attack at each epsilon, which only a trained model tells: the script prints the range between every
  image broken by APGD-CE at the first epsilon and every image reaching every standard attack at every epsilon.

Assumptions, printed with the figures: DDP train points (2 GPUs) run each rank's share at this GPU's single-GPU
speed (gradient all-reduce not measured); data sizes: ImageNet-50 train 65,000 images, val and test 1,250 each (the
val folder's halves); NSD predictor 9,000 training and 1,000 shared images; RSA on 1,000 shared images, 7 ROIs of
PCS principal components; an unguided model's RSA compares every predictor subject, a guided one its own.

Without a CUDA GPU it says so and exits 0. `--device cpu --steps 2 --image-size 32 --batch 8` runs every part on
the CPU at a toy size (a smoke test of the script): those figures are labelled CPU figures, not GPU ones.

Run: .venv/bin/python benchmarks/gpu_calibrate.py [--steps 200] [--image-size 224] [--batch N] [--device cuda|cpu]
     [--sweep sweeps/paper.yaml]
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from sfhpc import distributed
from sfhpc.evaluation import cbm
from sfhpc.evaluation.attack import AttackSettings, attack_shard, clean_correct, pixel_epsilons
from sfhpc.evaluation.rsa import RoiPatterns, rsa_against_rois
from sfhpc.models.bands import BandParams, check_band_fits
from sfhpc.models.classifier import Classifier
from sfhpc.stages.cbm import CbmParams
from sfhpc.stages.common import EVAL_BATCH, autocast, build_model, build_predictor
from sfhpc.stages.device import DevicePlan, place_model, plan_for, use_plan
from sfhpc.stages.predictor import PredictorParams
from sfhpc.stages.predictor import run as predictor_run
from sfhpc.stages.rsa import RsaParams
from sfhpc.stages.rsa.run import layer_features
from sfhpc.stages.train import TrainParams
from sfhpc.stages.train import run as train_run
from sfhpc.sweep import Plan, expand_file

REPO = Path(__file__).resolve().parents[1]
CLASSES = 50
TRAIN_IMAGES, VAL_IMAGES, TEST_IMAGES = 65_000, 1_250, 1_250  # ImageNet-50: jobs/paper_train.yaml, the val halves
PREDICTOR_TRAIN_IMAGES, SHARED_IMAGES = 9_000, 1_000  # NSD, a subject who finished all 40 sessions
PCS = 200  # principal components of an ROI (the predictor's outputs): assumed; the head is a tiny share of the work
ROIS = 7
STANDARD_TARGETS, APGD_ITERATIONS, FAB_ITERATIONS, SQUARE_QUERIES = 9, 100, 100, 5_000  # AutoAttack standard
BATCHES_PER_EPOCH = 25  # steps per timed train/predictor epoch (the synthetic array holds this many batches)

# Dense peak TFLOP/s (no sparsity) from NVIDIA's data sheets: (substring of torch's device name, bf16, tf32, fp32).
# Checked in order: the more specific names first. None: the GPU has no such tensor-core mode.
PEAK_TFLOPS: tuple[tuple[str, float | None, float | None, float], ...] = (
    ("H200", 989.4, 494.7, 67.0),
    ("H100 NVL", 835.5, 417.5, 60.0),
    ("H100 PCIe", 756.0, 378.0, 51.0),
    ("H100", 989.4, 494.7, 67.0),  # SXM
    ("A100", 312.0, 156.0, 19.5),
    ("L40S", 362.1, 183.0, 91.6),
    ("V100-PCIE", None, None, 14.0),
    ("V100", None, None, 15.7),  # SXM2; fp16 tensor cores only (no bf16, no tf32)
)


# ------------------------------------------------------------------------------------------ machine
@dataclass(frozen=True)
class Machine:
    device: torch.device
    name: str

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def reset_peak(self) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_memory(self) -> str:
        if self.cuda:
            return f"{torch.cuda.max_memory_allocated(self.device) / 2**30:.1f} GiB"
        return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.1f} GiB RSS"  # Linux: KiB

    def peak_tflops(self, precision: str) -> tuple[float | None, str]:
        """This GPU's peak for `precision` (bf16; float32 convolutions run as TF32 when cudnn allows it), and what
        it is (or why there is none)."""
        if not self.cuda:
            return None, "CPU: no peak table"
        row = next((row for row in PEAK_TFLOPS if row[0] in self.name), None)
        if row is None:
            return None, f"unknown GPU {self.name!r}: add its peak to PEAK_TFLOPS"
        _, bf16, tf32, fp32 = row
        if precision == "bf16":
            return bf16, "bf16" if bf16 else f"{self.name} has no bf16 tensor cores"
        if tf32 and torch.backends.cudnn.allow_tf32:
            return tf32, "tf32 (cudnn.allow_tf32)"
        return fp32, "fp32"


def machine_for(choice: str | None) -> Machine | None:
    """The device to calibrate: CUDA unless --device cpu; None when CUDA was wanted and there is none."""
    if choice == "cpu":
        return Machine(torch.device("cpu"), "CPU")
    if not torch.cuda.is_available():
        return None
    device = distributed.setup(distributed.single())
    return Machine(device, torch.cuda.get_device_name(device))


def timed(machine: Machine, work: Callable[[], Any]) -> float:
    machine.sync()
    start = time.perf_counter()
    work()
    machine.sync()
    return time.perf_counter() - start


def all_epochs(epoch: Callable[[int], None], epochs: int) -> None:
    """Epochs 1 .. `epochs` (0 was the warm-up)."""
    for number in range(1, epochs + 1):
        epoch(number)


def flops_of(work: Callable[[], Any]) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        work()
    return float(counter.get_total_flops())


# ----------------------------------------------------------------------------------------- figures
@dataclass(frozen=True)
class Figure:
    """One timed workload: `items` images (or image-iterations) per `step_s` seconds."""

    stage: str
    workload: str
    batch: int
    step_s: float
    items_per_step: int
    peak_memory: str
    flops_per_item: float | None
    precision: str

    @property
    def per_s(self) -> float:
        return self.items_per_step / self.step_s

    def mfu(self, machine: Machine) -> str:
        peak, what = machine.peak_tflops(self.precision)
        if peak is None or not self.flops_per_item:
            return f"n/a ({what})"
        achieved = self.flops_per_item * self.per_s / 1e12
        return f"{100 * achieved / peak:.1f}% ({achieved:.1f} of {peak:g} TFLOP/s {what})"


def print_figures(figures: list[Figure], machine: Machine) -> None:
    print(f"{'stage':<10} {'workload':<34} {'batch':>6} {'images/s':>10} {'step ms':>9} {'peak memory':>14} "
          f"{'GFLOP/img':>10}  MFU")
    for f in figures:
        gflop = f"{f.flops_per_item / 1e9:.2f}" if f.flops_per_item else "-"
        print(f"{f.stage:<10} {f.workload:<34} {f.batch:>6} {f.per_s:>10.1f} {1000 * f.step_s:>9.1f} "
              f"{f.peak_memory:>14} {gflop:>10}  {f.mfu(machine)}")


# -------------------------------------------------------------------------------------------- data
def synthetic_images(n: int, size: int, seed: int = 0) -> np.ndarray:
    """ImageNet-shaped uint8 images (n, 3, size, size): smooth random fields, not noise (RandomResizedCrop and
    the CBM noise see images with structure at every scale)."""
    rng = np.random.default_rng(seed)
    images = np.empty((n, 3, size, size), dtype=np.uint8)
    for start in range(0, n, 256):  # in chunks: float copies of a whole epoch's images would take gigabytes
        coarse = rng.random((min(256, n - start), 3, max(2, size // 8), max(2, size // 8)), dtype=np.float32)
        smooth = F.interpolate(torch.from_numpy(coarse), size=(size, size), mode="bilinear", align_corners=False)
        images[start:start + len(coarse)] = (smooth.numpy() * 255).astype(np.uint8)
    return images


def band_fits(band: str, size: int, params: TrainParams) -> bool:
    try:
        check_band_fits(band, size, BandParams(params.lsf_sigma_px224, params.human_mu, params.human_s,
                                               params.human_floor))
    except ValueError:
        return False
    return True


# ------------------------------------------------------------------------------------------- stages
@dataclass(frozen=True)
class TrainKind:
    """Train points that cost the same per step: guided or not, the band, the batch per GPU."""

    guided: bool
    band: str
    per_gpu_batch: int

    def label(self) -> str:
        return f"{'guided' if self.guided else 'unguided'}, band {self.band}, {self.per_gpu_batch}/GPU"


def train_kind(point_params: dict[str, Any], guided: bool, world: int) -> TrainKind:
    return TrainKind(guided, point_params.get("band", "none"), point_params["batch_size"] // world)


def measure_train(machine: Machine, kind: TrainKind, base: TrainParams, predictor_params: PredictorParams,
                  args: argparse.Namespace) -> Figure:
    """`train_epoch` steps of one kind of train point (the loader, augmentation, step, as the stage runs them)."""
    batch = args.batch or kind.per_gpu_batch
    params = base.model_copy(update={"band": kind.band, "batch_size": batch, "alpha": 0.9 if kind.guided else 0.0,
                                     "pretrained": None})
    plan = plan_for(machine.device, params.memory_format, params.prefetch_batches)
    use_plan(plan)
    torch.manual_seed(0)
    guide = None
    if kind.guided:
        predictor = build_predictor(predictor_params, PCS, args.image_size).eval().requires_grad_(False)
        guide = train_run.NeuralGuide(place_model(predictor, plan), 0.9)
    model = place_model(build_model(params, CLASSES, args.image_size, PCS if kind.guided else None), plan)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    per_epoch = min(args.steps, BATCHES_PER_EPOCH)
    images = synthetic_images(per_epoch * batch, args.image_size)
    labels = np.random.default_rng(1).integers(0, CLASSES, len(images))
    env = distributed.single()

    def epoch(number: int) -> None:
        train_run.train_epoch(model, optimizer, images, labels, params, number, env, batch, machine.device, guide,
                              data_kind="imagefolder")

    epoch(0)  # warm-up: cudnn autotuning, the caching allocator, the loader thread's first batches
    machine.reset_peak()
    epochs = math.ceil(args.steps / per_epoch)
    seconds = timed(machine, lambda: all_epochs(epoch, epochs))
    flops = train_step_flops(model, guide, params, plan, args.image_size)
    return Figure("train", kind.label(), batch, seconds / (epochs * per_epoch), batch, machine.peak_memory(), flops,
                  params.precision)


def train_step_flops(model: torch.nn.Module, guide: train_run.NeuralGuide | None, params: TrainParams,
                     plan: DevicePlan, size: int) -> float:
    """FLOPs per image of a training step (forward, backward; the guide's predictor forward), on copies."""
    model_copy, guide_copy = copy.deepcopy(model), copy.deepcopy(guide)
    optimizer = torch.optim.SGD(model_copy.parameters(), lr=0.0)
    images = plan.layout(torch.rand(2, 3, size, size, device=plan.device))
    labels = torch.zeros(2, dtype=torch.long, device=plan.device)
    return flops_of(lambda: train_run.step_losses(model_copy, optimizer, images, labels, guide_copy,
                                                  params.precision)) / 2


def measure_inference(machine: Machine, stage: str, workload: str, model: torch.nn.Module, plan: DevicePlan,
                      run: Callable[[np.ndarray], Any], args: argparse.Namespace, batch: int) -> Figure:
    """Forward passes in float32 over `eval_images(args)` images, as `run(images)` makes them."""
    images = synthetic_images(eval_images(args), args.image_size, seed=2)
    run(images[:batch])  # warm-up
    machine.reset_peak()
    seconds = timed(machine, lambda: run(images))
    model.eval()
    with torch.no_grad():
        flops = flops_of(lambda: model(plan.layout(torch.rand(2, 3, args.image_size, args.image_size,
                                                              device=plan.device)))) / 2
    steps = math.ceil(len(images) / batch)
    return Figure(stage, workload, batch, seconds / steps, len(images) // steps, machine.peak_memory(), flops,
                  "float32")


def eval_images(args: argparse.Namespace) -> int:
    return min(4 * EVAL_BATCH, 64 * args.steps)


def measure_predictor(machine: Machine, params: PredictorParams, args: argparse.Namespace) -> list[Figure]:
    batch = args.batch or params.predictor_batch_size
    params = params.model_copy(update={"predictor_batch_size": batch})
    plan = plan_for(machine.device, params.predictor_memory_format, params.predictor_prefetch_batches)
    use_plan(plan)
    torch.manual_seed(0)
    model = place_model(build_predictor(params, PCS, args.image_size), plan)
    optimizer = torch.optim.Adam(model.parameters(), lr=params.predictor_lr)
    per_epoch = min(args.steps, BATCHES_PER_EPOCH)
    images = synthetic_images(per_epoch * batch, args.image_size)
    targets = np.random.default_rng(3).normal(size=(len(images), PCS)).astype(np.float32)

    def epoch(number: int) -> None:
        predictor_run.fit_epoch(model, optimizer, images, targets, params, number, machine.device)

    epoch(0)
    machine.reset_peak()
    epochs = math.ceil(args.steps / per_epoch)
    seconds = timed(machine, lambda: all_epochs(epoch, epochs))

    def step() -> None:
        copied = copy.deepcopy(model)
        x = plan.layout(torch.rand(2, 3, args.image_size, args.image_size, device=plan.device))
        with autocast(machine.device, params.predictor_precision):
            loss = (copied(x).float() - torch.zeros(2, PCS, device=plan.device)).pow(2).sum(dim=1).mean()
        loss.backward()

    fit = Figure("predictor", "fit_epoch", batch, seconds / (epochs * per_epoch), batch, machine.peak_memory(),
                 flops_of(step) / 2, params.predictor_precision)
    predict = measure_inference(machine, "predictor", "predict", model, plan,
                                lambda x: predictor_run.predict(model, x, plan), args, EVAL_BATCH)
    return [fit, predict]


def measure_cbm(machine: Machine, model: Classifier, plan: DevicePlan, params: CbmParams,
                args: argparse.Namespace) -> Figure:
    """accuracy_grid over one batch of images: every (noise level, band) cell, noise made on the CPU."""
    batch = args.batch or params.cbm_batch_size
    images = cbm.to_cbm_images(synthetic_images(batch, args.image_size, seed=4))
    labels = np.zeros(batch, dtype=np.int64)
    predict = cbm.torch_predictor(model, None, plan.device)

    def grid() -> None:
        cbm.accuracy_grid(predict, images, labels, args.image_size, noise_sds=params.cbm_noise_sds,
                          seed=params.cbm_seed, batch_size=batch)

    predict(np.repeat(images[:, None], 3, axis=1))  # warm-up
    machine.reset_peak()
    seconds = timed(machine, grid)
    cells = cbm_cells(params, args.image_size)
    with torch.no_grad():
        flops = flops_of(lambda: model(torch.rand(2, 3, args.image_size, args.image_size, device=plan.device))) / 2
    return Figure("cbm", f"accuracy_grid, {cells} cells", batch, seconds / cells, batch, machine.peak_memory(),
                  flops, "float32")


def cbm_cells(params: CbmParams, size: int) -> int:
    """The cells accuracy_grid evaluates: the noise-free one once, every band at every other noise level."""
    bands = len(cbm.band_centres_cpi(size))
    return 1 + bands * sum(1 for sd in params.cbm_noise_sds if sd != 0)


@dataclass(frozen=True)
class RsaCost:
    features_s: float  # per image
    fixed_s: float  # RDMs, ceilings: per subject at `images`
    per_permutation_s: float
    images: int


def measure_rsa(machine: Machine, model: Classifier, plan: DevicePlan, params: RsaParams,
                args: argparse.Namespace) -> tuple[Figure, RsaCost]:
    images = synthetic_images(min(SHARED_IMAGES, eval_images(args)), args.image_size, seed=5)
    layer_features(model, images[:EVAL_BATCH], plan)  # warm-up
    features: dict[str, np.ndarray] = {}
    seconds = timed(machine, lambda: features.update(layer_features(model, images, plan)))
    rng = np.random.default_rng(6)
    patterns = {f"roi{k}": RoiPatterns(mean=rng.normal(size=(len(images), PCS)),
                                       repeats=rng.normal(size=(3, len(images), PCS))) for k in range(ROIS)}
    permutations = max(2, min(params.rsa_permutations, args.steps))  # it needs at least 1
    one = timed(machine, lambda: rsa_against_rois(features, patterns, 1, params.rsa_seed))
    many = timed(machine, lambda: rsa_against_rois(features, patterns, permutations, params.rsa_seed))
    per_permutation = max(0.0, many - one) / (permutations - 1)
    fixed = max(0.0, one - per_permutation)
    steps = math.ceil(len(images) / EVAL_BATCH)
    figure = Figure("rsa", "layer_features", EVAL_BATCH, seconds / steps, len(images) // steps,
                    machine.peak_memory(), None, "float32")
    return figure, RsaCost(seconds / len(images), fixed, per_permutation, len(images))


@dataclass(frozen=True)
class AttackCost:
    forward_s: float  # per image
    gradient_s: float  # per image and APGD iteration


def measure_attack(machine: Machine, model: Classifier, plan: DevicePlan, batch: int, norm: str,
                   eps_px: float, args: argparse.Namespace) -> tuple[list[Figure], AttackCost]:
    """The clean pass and APGD-CE iterations through the attack stage's functions, on images the model classifies
    correctly (labels = its predictions), so that every image is attacked."""
    x = torch.from_numpy(synthetic_images(batch, args.image_size, seed=7)).float().div_(255.0)
    model.eval()
    with torch.no_grad():
        y = torch.cat([model(plan.layout(x[i:i + EVAL_BATCH].to(plan.device))).argmax(1).cpu()
                       for i in range(0, len(x), EVAL_BATCH)])
    clean_correct(model, x, y, batch, plan.device)  # warm-up
    machine.reset_peak()
    clean_s = timed(machine, lambda: clean_correct(model, x, y, batch, plan.device))
    settings = AttackSettings("custom", ("apgd-ce",), norm, eps_px, 0, batch, apgd_iterations=args.steps,
                              apgd_restarts=1)
    with tempfile.TemporaryDirectory() as state:
        attack_s = timed(machine, lambda: attack_shard(model, x, y, [settings], Path(state), plan.device))
    with torch.no_grad():
        forward = flops_of(lambda: model(torch.rand(2, 3, args.image_size, args.image_size, device=plan.device))) / 2
    figures = [Figure("attack", "clean pass (clean_correct)", batch, clean_s, batch, machine.peak_memory(), forward,
                      "float32"),
               Figure("attack", f"APGD-CE, {args.steps} iterations", batch, attack_s / args.steps, batch,
                      machine.peak_memory(), 3 * forward, "float32")]  # forward + backward: about 3x the forward
    return figures, AttackCost(clean_s / batch, attack_s / (args.steps * batch))


# --------------------------------------------------------------------------------- expected minutes
def train_minutes(plan: Plan, steps_s: dict[TrainKind, float], eval_s: float) -> list[float]:
    """Per train point: its epochs of global batches (each GPU its share, at the measured step time), a val pass per
    epoch and a test pass."""
    stage = plan.stage("train")
    world = stage.resources.nodes * stage.resources.tasks_per_node
    minutes = []
    for point in stage.points:
        params = point.params
        kind = train_kind(params, bool(point.upstream), world)
        if kind not in steps_s:
            continue
        per_epoch = (TRAIN_IMAGES // params["batch_size"]) * steps_s[kind] + VAL_IMAGES / world * eval_s
        minutes.append((params["epochs"] * per_epoch + TEST_IMAGES / world * eval_s) / 60)
    return minutes


def predictor_minutes(plan: Plan, fit_s_per_image: float, predict_s: float) -> list[float]:
    minutes = []
    for point in plan.stage("predictor").points:
        epochs = 0 if point.params.get("predictor", "trained") == "random" else point.params["predictor_epochs"]
        per_epoch = PREDICTOR_TRAIN_IMAGES * fit_s_per_image + SHARED_IMAGES * predict_s
        minutes.append((epochs * per_epoch + (PREDICTOR_TRAIN_IMAGES + 2 * SHARED_IMAGES) * predict_s) / 60)
    return minutes


def rsa_minutes(plan: Plan, cost: RsaCost, permutations: int) -> list[float]:
    """Per rsa point: per compared subject, features of the shared images and the comparison, whose numpy work
    grows with the square of the images (measured at cost.images)."""
    run_subjects = len({p.params["subject"] for p in plan.stage("predictor").points}) if any(
        s.name == "predictor" for s in plan.stages) else 1
    guided = {f"train/{p.id}" for p in plan.stage("train").points if p.upstream}
    scale = (SHARED_IMAGES / cost.images) ** 2
    per_subject = SHARED_IMAGES * cost.features_s + scale * (cost.fixed_s + permutations * cost.per_permutation_s)
    minutes = []
    for point in plan.stage("rsa").points:  # the subjects compared, as sfhpc.stages.rsa.run.compared_subjects
        subjects = len(point.params.get("rsa_subjects") or ()) or (1 if point.upstream[0] in guided else run_subjects)
        minutes.append(subjects * per_subject / 60)
    return minutes


def attack_range(plan: Plan, cost: AttackCost) -> tuple[float, float, int, int]:
    """Minutes of one attack point (shard) when every image is broken by APGD-CE at the first epsilon, and when
    every image reaches every standard attack at every epsilon; its images and (norm, eps) settings."""
    stage = plan.stage("attack")
    params = stage.points[0].params
    images = math.ceil(TEST_IMAGES / stage.shards)
    settings = sum(len(values) for values in params["attack_eps"].values())
    gradients = APGD_ITERATIONS + STANDARD_TARGETS * (APGD_ITERATIONS + FAB_ITERATIONS)
    low = images * (APGD_ITERATIONS * cost.gradient_s + settings * 2 * cost.forward_s) / 60
    high = images * settings * (gradients * cost.gradient_s + SQUARE_QUERIES * cost.forward_s) / 60
    return low, high, images, settings


def print_expected(plan: Plan, per_stage: dict[str, list[float]],
                   attack: tuple[float, float, int, int] | None, label: str) -> None:
    print(f"\nexpected_minutes per point implied by these figures ({label}):")
    for stage, minutes in per_stage.items():
        if not minutes:
            print(f"  {plan.stage(stage).job:<16} no point measured")
            continue
        now = plan.stage(stage).expected_minutes
        print(f"  jobs/{plan.stage(stage).job}.yaml: expected_minutes {statistics.mean(minutes):.1f} (mean of "
              f"{len(minutes)} points, {min(minutes):.1f} to {max(minutes):.1f}); the file says {now}")
    if attack:
        low, high, images, settings = attack
        now = plan.stage("attack").expected_minutes
        print(f"  jobs/{plan.stage('attack').job}.yaml: between {low:.1f} (every image broken by APGD-CE at the "
              f"first epsilon) and {high:.1f} (every one of {images} images through APGD-CE, APGD-T, FAB-T and "
              f"Square at all {settings} epsilons); the file says {now}: a trained model's robust fractions decide")


# ------------------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default=None,
                        help="cuda (default; without a GPU the script says so and exits 0), or cpu: a smoke test")
    parser.add_argument("--steps", type=int, default=200, help="timed steps per workload (APGD iterations too)")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=None, help="one batch size for every workload instead of the "
                                                                "sweep's (a smoke test)")
    parser.add_argument("--sweep", type=Path, default=REPO / "sweeps" / "paper.yaml")
    args = parser.parse_args(argv)
    machine = machine_for(args.device)
    if machine is None:
        print("no CUDA GPU here (torch.cuda.is_available() is False): nothing calibrated. The jobs/paper_*.yaml "
              "expected_minutes stay estimates. Run this on a GPU node; --device cpu runs a smoke test of the "
              "script at a toy size.")
        return 0
    gpu_figures = machine.cuda and args.image_size == 224 and args.batch is None
    label = (f"{machine.name}, {args.image_size} px" if gpu_figures else
             f"NOT GPU FIGURES: {machine.name} at {args.image_size} px"
             f"{f', batch {args.batch}' if args.batch else ''}, a smoke test of the script")
    print(f"gpu_calibrate: {label}; torch {torch.__version__}; {args.steps} steps per workload after a warm-up")
    plan = planned(args.sweep.resolve())
    figures, per_stage, attack = calibrate(machine, plan, args)
    print()
    print_figures(figures, machine)
    print_expected(plan, per_stage, attack, label)
    print("\nassumptions: DDP ranks at this GPU's single-GPU speed (all-reduce not measured); ImageNet-50 "
          f"{TRAIN_IMAGES} train / {VAL_IMAGES} val / {TEST_IMAGES} test images; NSD {PREDICTOR_TRAIN_IMAGES} "
          f"predictor training and {SHARED_IMAGES} shared images; {ROIS} ROIs of {PCS} PCs")
    return 0


def planned(sweep: Path) -> Plan:
    """The sweep expanded as `sfhpc sweep expand` does without its data in place, its relative data paths read
    from the project folder (the folder sfhpc runs in), wherever this script is started."""
    here = Path.cwd()
    os.chdir(REPO)
    try:
        return expand_file(sweep, skipped=[])
    finally:
        os.chdir(here)


def calibrate(machine: Machine, plan: Plan, args: argparse.Namespace
              ) -> tuple[list[Figure], dict[str, list[float]], tuple[float, float, int, int] | None]:
    names = {stage.name for stage in plan.stages}
    figures: list[Figure] = []
    per_stage: dict[str, list[float]] = {}
    predictor_params = PredictorParams.model_validate(plan.stage("predictor").points[0].params) \
        if "predictor" in names else PredictorParams(roi="V1", predictor_arch="resnet18")
    if "predictor" in names:
        fit, predict = measure_predictor(machine, predictor_params, args)
        figures += [fit, predict]
        per_stage["predictor"] = predictor_minutes(plan, fit.step_s / fit.items_per_step,
                                                   predict.step_s / predict.items_per_step)
    train_stage = plan.stage("train")
    world = train_stage.resources.nodes * train_stage.resources.tasks_per_node
    base = TrainParams.model_validate({**train_stage.points[0].params, "pretrained": None})
    kinds = dict.fromkeys(train_kind(p.params, bool(p.upstream), world) for p in train_stage.points)
    steps_s: dict[TrainKind, float] = {}
    for kind in kinds:
        if not band_fits(kind.band, args.image_size, base):
            print(f"train, {kind.label()}: skipped, the band does not fit {args.image_size} px images")
            continue
        figure = measure_train(machine, kind, base, predictor_params, args)
        figures.append(figure)
        steps_s[kind] = figure.step_s
    plan_eval = plan_for(machine.device, base.memory_format)
    model = place_model(build_model(base.model_copy(update={"band": "none"}), CLASSES, args.image_size), plan_eval)
    env = distributed.single()
    evaluate = measure_inference(machine, "train", "evaluate (val/test passes)", model, plan_eval,
                                 lambda x: train_run.evaluate(model, x, np.zeros(len(x), dtype=np.int64), env,
                                                              machine.device, plan_eval), args, EVAL_BATCH)
    figures.append(evaluate)
    per_stage["train"] = train_minutes(plan, steps_s, evaluate.step_s / evaluate.items_per_step)
    if "cbm" in names:
        cbm_params = CbmParams.model_validate(plan.stage("cbm").points[0].params)
        figure = measure_cbm(machine, model, plan_eval, cbm_params, args)
        figures.append(figure)
        per_image_minutes = figure.step_s * cbm_cells(cbm_params, args.image_size) / figure.items_per_step / 60
        per_stage["cbm"] = [per_image_minutes * min(p.params.get("cbm_images") or TEST_IMAGES, TEST_IMAGES)
                            for p in plan.stage("cbm").points]
    if "rsa" in names:
        rsa_params = RsaParams.model_validate(plan.stage("rsa").points[0].params)
        figure, rsa_cost = measure_rsa(machine, model, plan_eval, rsa_params, args)
        figures.append(figure)
        per_stage["rsa"] = rsa_minutes(plan, rsa_cost, rsa_params.rsa_permutations)
        print(f"rsa: rsa_against_rois at {rsa_cost.images} images: {rsa_cost.fixed_s:.2f} s fixed, "
              f"{1000 * rsa_cost.per_permutation_s:.1f} ms per permutation (numpy, on the CPU)")
    attack = None
    if "attack" in names:
        params = plan.stage("attack").points[0].params
        batch = args.batch or params["attack_batch_size"]
        norm = "Linf" if "Linf" in params["attack_eps"] else next(iter(params["attack_eps"]))
        smallest = {norm: [min(params["attack_eps"][norm])]}
        (eps_px,) = pixel_epsilons(smallest, params["attack_eps_unit"], model.std.flatten().tolist())[norm]
        attack_figures, cost = measure_attack(machine, model, plan_eval, batch, norm, eps_px, args)
        figures += attack_figures
        attack = attack_range(plan, cost)
    return figures, per_stage, attack


if __name__ == "__main__":
    sys.exit(main())
