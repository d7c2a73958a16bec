"""The stages' GPU path (sfhpc.stages.device) as far as a machine without a GPU can test it: its settings are typed
sweep parameters, `auto` resolves to the GPU choices on CUDA and to the plain ones on CPUs, the prefetching loader
gives the very batches of the plain loop, and training with it on a CPU gives the very numbers of the plain loop."""

from __future__ import annotations

import threading
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from pydantic import ValidationError

import sfhpc.stages.predictor.run as predictor
import sfhpc.stages.train.run as train
from sfhpc import distributed
from sfhpc.config import SweepError
from sfhpc.data.augment import pad_crop_flip
from sfhpc.job import run_point
from sfhpc.models.classifier import build_classifier
from sfhpc.stages.common import autocast, build_model, build_predictor, epoch_order
from sfhpc.stages.device import (
    CUDA_PREFETCH,
    DevicePlan,
    chunks,
    evaluation_plan,
    image_batches,
    place_model,
    plan_for,
    prefetched,
)
from sfhpc.stages.predictor import PredictorParams
from sfhpc.stages.rsa.run import layer_features
from sfhpc.stages.train import TrainParams
from sfhpc.sweep import expand_file

from conftest import located_error, point_config

CPU, CUDA = torch.device("cpu"), torch.device("cuda", 0)  # a CUDA device object needs no GPU; nothing runs on it
DATA = {"kind": "synthetic", "image_size": 32, "n_classes": 4, "n_train": 64, "n_val": 32, "n_test": 32, "seed": 0}
PARAMS = {"width": 4, "batch_size": 16, "lr": 0.05, "lr_step": 1, "seed": 3, "epochs": 2}


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread, as the stages' tests run points: a second one that waits for a busy CPU spins for long."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def images_and_labels(n: int = 40, size: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 3, size, size), dtype=np.uint8), rng.integers(0, 4, n)


# ---------------------------------------------------------------------------------------- settings
def test_gpu_settings_are_typed_closed_parameters_of_train_and_predictor():
    params = TrainParams(memory_format="channels_last", prefetch_batches=3)
    assert (params.memory_format, params.prefetch_batches) == ("channels_last", 3)
    assert TrainParams().memory_format == "auto" and TrainParams().prefetch_batches == "auto"
    assert PredictorParams(roi="V1", predictor_memory_format="contiguous",
                           predictor_prefetch_batches=0).predictor_prefetch_batches == 0
    for bad in ({"memory_format": "nhwc"}, {"prefetch_batches": -1}, {"prefetch_batches": True},
                {"prefetch_batches": "2"}, {"prefetch_batches": 65}, {"prefetch": 2}):
        with pytest.raises(ValidationError):
            TrainParams.model_validate(bad)
    with pytest.raises(ValidationError):
        PredictorParams.model_validate({"roi": "V1", "predictor_memory_format": "channels-last"})


def test_a_sweep_takes_them_as_parameters_and_axes_and_locates_a_bad_one(write_sweep):
    head = "name: gpu\ndata: {image_size: 32}\n"
    plan = expand_file(write_sweep(head + "grid:\n  memory_format: [contiguous, channels_last]\n"
                                          "stages:\n  train:\n    params: {prefetch_batches: 2}\n"))
    (stage,) = plan.stages
    assert [p.params["memory_format"] for p in stage.points] == ["contiguous", "channels_last"]
    assert all(p.params["prefetch_batches"] == 2 for p in stage.points)
    located_error(write_sweep, head + "grid:\n  seed: [0]\nstages:\n  train:\n    params:\n      prefetch_batches: "
                                      "lots\n", 8, "stages.train.params.prefetch_batches", ["lots"])
    with pytest.raises(SweepError, match="unknown parameter"):
        expand_file(write_sweep(head + "grid:\n  seed: [0]\nstages:\n  train:\n    params: {pin_memory: true}\n"))


def test_the_defaults_leave_point_ids_as_they_were(write_sweep):
    text = "name: ids\ndata: {image_size: 32}\ngrid:\n  seed: [0]\nstages:\n  train:\n    params: {PARAMS}\n"
    plain = expand_file(write_sweep(text.replace("{PARAMS}", "{}"), "a.yaml")).stages[0].points[0].id
    auto = expand_file(write_sweep(text.replace("PARAMS", "memory_format: auto, prefetch_batches: auto"),
                                   "b.yaml")).stages[0].points[0].id
    forced = expand_file(write_sweep(text.replace("PARAMS", "memory_format: channels_last"),
                                     "c.yaml")).stages[0].points[0].id
    assert plain == auto != forced


# ------------------------------------------------------------------------------------------ plans
def test_auto_is_the_plain_path_on_cpus_and_the_gpu_path_on_cuda():
    assert plan_for(CPU) == DevicePlan(CPU, channels_last=False, prefetch=0, pin_memory=False,
                                       cudnn_benchmark=False)
    assert plan_for(CUDA) == DevicePlan(CUDA, channels_last=True, prefetch=CUDA_PREFETCH, pin_memory=True,
                                        cudnn_benchmark=True)
    assert plan_for(CUDA).non_blocking and not plan_for(CPU).non_blocking
    forced = plan_for(CUDA, "contiguous", 0)
    assert (forced.channels_last, forced.prefetch, forced.pin_memory) == (False, 0, True)
    assert plan_for(CPU, "channels_last", 3).attrs() == {
        "device": "cpu", "memory_format": "channels_last", "prefetch_batches": 3, "pin_memory": False,
        "cudnn_benchmark": False}


def test_an_evaluating_stage_without_a_gpu_runs_plainly_on_the_cpu():
    before = torch.backends.cudnn.benchmark
    plan = evaluation_plan("auto")
    assert plan == DevicePlan(CPU) and torch.backends.cudnn.benchmark == before


def test_bf16_autocasts_the_forward_pass_and_float32_does_not():
    model = build_classifier("small_resnet", 4, "none", 16, width=4)
    x = torch.rand(2, 3, 16, 16)
    with autocast(CPU, "bf16"):
        assert model(x).dtype == torch.bfloat16
    with autocast(CPU, "float32"):
        assert model(x).dtype == torch.float32
    assert {p.dtype for p in model.parameters()} == {torch.float32}


def test_channels_last_lays_out_weights_and_batches_and_computes_the_same_function():
    model = build_classifier("small_resnet", 4, "lsf", 32, width=4).eval()
    x = torch.rand(8, 3, 32, 32)
    with torch.no_grad():
        plain = model(x)
        plan = plan_for(CPU, "channels_last")
        place_model(model, plan)
        conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
        batch = plan.layout(x)
        assert conv.weight.is_contiguous(memory_format=torch.channels_last)
        assert batch.is_contiguous(memory_format=torch.channels_last) and torch.equal(batch, x)
        torch.testing.assert_close(model(batch), plain, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------- loader
def test_prefetched_keeps_the_order_and_runs_in_a_loader_thread_only_when_asked():
    threads: list[str] = []

    def prepare(item: int) -> int:
        threads.append(threading.current_thread().name)
        return item * item

    assert list(prefetched(range(20), prepare, 0)) == [i * i for i in range(20)]
    assert set(threads) == {threading.current_thread().name}
    threads.clear()
    assert list(prefetched(range(20), prepare, 3)) == [i * i for i in range(20)]
    assert set(threads) == {"sfhpc-loader"}


def test_prefetched_raises_the_loaders_error_and_stops_its_thread_when_left_early():
    def prepare(item: int) -> int:
        if item == 5:
            raise OSError("unreadable batch 5")
        return item

    with pytest.raises(OSError, match="unreadable batch 5"):
        list(prefetched(range(10), prepare, 2))
    items = prefetched(range(1000), lambda item: item, 2)
    assert next(items) == 0
    items.close()  # a consumer that stops early (an exception in the step, the end of a test)
    assert not any(t.name == "sfhpc-loader" and t.is_alive() for t in threading.enumerate())


@pytest.mark.parametrize("ahead", [0, 1, 3])
def test_loader_batches_are_the_plain_loops_batches(ahead: int):
    images, labels = images_and_labels()
    label_tensor = torch.from_numpy(labels)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    batches = list(order.split(16))
    loaded = list(image_batches(images, batches, plan_for(CPU, prefetch=ahead), label_tensor))
    assert len(loaded) == len(batches)
    for (pixels, rows), index in zip(loaded, batches, strict=True):
        assert pixels.dtype == torch.float32 and pixels.is_contiguous()
        assert torch.equal(pixels, torch.from_numpy(images[index.numpy()]).float().div_(255.0))
        assert torch.equal(rows, label_tensor[index])


# -------------------------------------------------------------------------- the same numbers on CPUs
def plain_train_epoch(model, optimizer, images, labels, params: TrainParams, epoch: int) -> list[float]:
    """The train stage's epoch as it was written before the loader (gather, convert, augment, step, read the loss
    back): the reference the loader path must equal on a CPU."""
    model.train()
    env = distributed.single()
    generator = torch.Generator().manual_seed(distributed.rank_seed(params.seed, env.rank) * 1_000 + epoch)
    losses = []
    for index in train.rank_batches(epoch_order(len(labels), params.seed, epoch), params.batch_size, env,
                                    params.batch_size):
        batch = pad_crop_flip(torch.from_numpy(images[index.numpy()]).float().div_(255.0), generator)
        optimizer.zero_grad(set_to_none=True)
        with autocast(CPU, params.precision):
            loss = F.cross_entropy(model(batch), torch.from_numpy(labels)[index])
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def trained(params: TrainParams, epochs: int, epoch_fn) -> tuple[list[float], dict[str, torch.Tensor]]:
    images, labels = images_and_labels(48)
    torch.manual_seed(0)
    model = build_model(params, 4, 16)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = [epoch_fn(model, optimizer, images, labels, params, epoch) for epoch in range(epochs)]
    return losses, model.state_dict()


@pytest.mark.parametrize("precision", ["float32", "bf16"])
def test_train_epochs_with_and_without_the_loader_thread_equal_the_plain_loop(precision: str):
    def stage(prefetch):
        def epoch_fn(model, optimizer, images, labels, params, epoch):
            return train.train_epoch(model, optimizer, images, labels, params.model_copy(
                update={"prefetch_batches": prefetch}), epoch, distributed.single(), params.batch_size, CPU).total
        return epoch_fn

    params = TrainParams(width=4, batch_size=16, seed=3, precision=precision)
    # Averaged as the stage averages a step's loss and terms: over an (epochs, 3) array's first axis.
    reference, reference_state = trained(params, 2, lambda *args: float(np.mean(
        [[loss, loss, np.nan] for loss in plain_train_epoch(*args)], axis=0)[0]))
    for prefetch in ("auto", 0, 2):
        losses, state = trained(params, 2, stage(prefetch))
        assert losses == reference, prefetch  # exactly: the same batches, augmented alike, the same arithmetic
        assert all(torch.equal(state[key], reference_state[key]) for key in state), prefetch


def test_a_predictor_epoch_with_the_loader_thread_equals_the_plain_loop():
    images, _ = images_and_labels(37)
    targets = np.random.default_rng(1).normal(size=(37, 5)).astype(np.float32)
    params = PredictorParams(roi="V1", predictor_width=4, predictor_batch_size=12)

    def fitted(prefetch) -> tuple[list[float], dict[str, torch.Tensor]]:
        torch.manual_seed(0)
        model = build_predictor(params, 5, 16)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        settings = params.model_copy(update={"predictor_prefetch_batches": prefetch})
        losses = [predictor.fit_epoch(model, optimizer, images, targets, settings, epoch, CPU) for epoch in range(2)]
        return losses, model.state_dict()

    def plain() -> tuple[list[float], dict[str, torch.Tensor]]:
        torch.manual_seed(0)
        model = build_predictor(params, 5, 16)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        means = []
        for epoch in range(2):
            model.train()
            losses = []
            for index in epoch_order(37, params.predictor_seed, epoch).split(12):
                if len(index) < 2:
                    continue
                optimizer.zero_grad(set_to_none=True)
                error = model(torch.from_numpy(images[index.numpy()]).float().div_(255.0)) - torch.from_numpy(
                    targets)[index]
                loss = error.pow(2).sum(dim=1).mean()
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
            means.append(float(np.mean(losses)))
        return means, model.state_dict()

    reference, reference_state = plain()
    for prefetch in ("auto", 2):
        losses, state = fitted(prefetch)
        assert losses == reference, prefetch
        assert all(torch.equal(state[key], reference_state[key]) for key in state), prefetch


def result_of(path: Path) -> dict:
    with h5py.File(path) as f:
        return {"curves": {name: f["curves"][name][()].tolist() for name in ("train_loss", "val_accuracy")},
                "metrics": {name: float(f["metrics"][name][()]) for name in ("test_accuracy", "train_loss")},
                "attrs": dict(f.attrs)}


def test_a_train_point_with_the_loader_thread_equals_the_default_cpu_point_and_records_its_plan(tmp_path: Path):
    default = result_of(run_point(point_config("train", PARAMS, DATA), tmp_path / "default"))
    threaded = result_of(run_point(point_config("train", {**PARAMS, "prefetch_batches": 2}, DATA),
                                   tmp_path / "threaded"))
    assert threaded["curves"] == default["curves"] and threaded["metrics"] == default["metrics"]
    assert {key: default["attrs"][key] for key in ("device", "memory_format", "prefetch_batches", "pin_memory",
                                                   "cudnn_benchmark")} == {
        "device": "cpu", "memory_format": "contiguous", "prefetch_batches": 0, "pin_memory": False,
        "cudnn_benchmark": False}
    assert threaded["attrs"]["prefetch_batches"] == 2 and "prefetch_batches: 2" in threaded["attrs"]["config"]


def test_rsa_features_through_the_loader_equal_the_plain_ones():
    images, _ = images_and_labels(21, 32)
    model = build_classifier("small_resnet", 4, "none", 32, width=4, neural_dim=3).eval()
    plain = layer_features(model, images)
    threaded = layer_features(model, images, plan_for(CPU, prefetch=2))
    assert plain.keys() == threaded.keys() == {"pooled", "neural_head"}
    assert all(np.array_equal(plain[key], threaded[key]) for key in plain)


def test_chunks_cover_every_index_once_in_order():
    assert [c.tolist() for c in chunks(7, 3)] == [[0, 1, 2], [3, 4, 5], [6]]
    assert chunks(0, 3) == []


# ----------------------------------------------------------------------------------- evaluating stages
EVAL_DATA = {"kind": "synthetic", "image_size": 32, "n_classes": 4, "n_train": 32, "n_val": 8, "n_test": 8, "seed": 0,
             "neural": {"n_images": 40, "n_shared": 12}}
PLAN_KEYS = ("device", "memory_format", "prefetch_batches", "pin_memory", "cudnn_benchmark")


def run_in(run_dir: Path, stage: str, point_id: str, params: dict, upstream: list[str]) -> dict:
    """Run one point inside run_dir as the local executor does; its result's attributes."""
    point_dir = run_dir / stage / point_id
    point_dir.mkdir(parents=True)
    config = point_config(stage, params, EVAL_DATA, point_id=point_id, run_dir=str(run_dir), upstream=upstream)
    (point_dir / "config.yaml").write_text(yaml.safe_dump(config))
    with h5py.File(run_point(config, point_dir)) as f:
        return dict(f.attrs)


def test_evaluating_stages_run_the_trained_model_in_its_layout_and_record_their_plan(tmp_path: Path):
    """cbm, rsa and attack run on the node's GPU, else the CPU, in the memory layout of their train point (here
    forced to channels_last, which a CPU runs too), and say so in their results."""
    train_params = {"width": 4, "epochs": 1, "batch_size": 16, "memory_format": "channels_last"}
    assert run_in(tmp_path, "train", "t", train_params, [])["memory_format"] == "channels_last"
    evaluated = [run_in(tmp_path, "cbm", "c", {"cbm_images": 8}, ["train/t"]),
                 run_in(tmp_path, "rsa", "r", {"rsa_subjects": ["subj01"], "rsa_permutations": 5}, ["train/t"]),
                 run_in(tmp_path, "attack", "a", {"attack_version": "custom", "attack_names": ["apgd-ce"],
                                                  "attack_eps": {"Linf": [8 / 255]}, "attack_apgd_iterations": 2,
                                                  "attack_shards": 1}, ["train/t"])]
    for attrs in evaluated:
        assert {key: attrs[key] for key in PLAN_KEYS} == {
            "device": "cpu", "memory_format": "channels_last", "prefetch_batches": 0, "pin_memory": False,
            "cudnn_benchmark": False}
