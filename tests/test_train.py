"""The train stage on the node: resume from checkpoints, refusal of foreign checkpoints, DDP equivalence."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import h5py
import pytest
import torch
import torch.multiprocessing as mp

import sfhpc.stages.train.run as train
from sfhpc import distributed
from sfhpc.job import run_point

from conftest import point_config
from ddp_step import free_port, one_step

DATA = {"kind": "synthetic", "image_size": 32, "n_classes": 4, "n_train": 64, "n_val": 32, "n_test": 32, "seed": 0}
PARAMS = {"band": "lsf", "width": 4, "batch_size": 16, "lr": 0.05, "lr_step": 1, "seed": 3}


def config(**overrides) -> dict:
    return point_config("train", {**PARAMS, **overrides}, DATA)


def curves(result: Path) -> dict:
    with h5py.File(result) as f:
        return {name: f["curves"][name][()].tolist() for name in f["curves"]} | {"attrs": dict(f.attrs)}


def test_resumed_training_equals_uninterrupted_training(tmp_path: Path):
    straight = curves(run_point(config(epochs=2), tmp_path / "straight"))
    run_point(config(epochs=1), tmp_path / "resumed")  # an attempt that stops after one epoch
    resumed = curves(run_point(config(epochs=2), tmp_path / "resumed"))

    assert resumed["attempt"] == [0, 1]  # the second attempt trained only the second epoch
    assert straight["attempt"] == [0, 0]
    assert resumed["attrs"]["resumed_from_epoch"] == 1
    assert resumed["train_loss"] == pytest.approx(straight["train_loss"], rel=1e-5)
    assert resumed["val_accuracy"] == straight["val_accuracy"]
    a = torch.load(tmp_path / "straight" / "model.pt")
    b = torch.load(tmp_path / "resumed" / "model.pt")
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-5) for k in a)


def test_result_records_config_and_provenance(tmp_path: Path):
    result = run_point(config(epochs=1), tmp_path)
    with h5py.File(result) as f:
        attrs = dict(f.attrs)
        assert 0.0 <= f["metrics/test_accuracy"][()] <= 1.0
    assert attrs["schema_version"] == 1 and attrs["point_id"] == "p" and attrs["git_sha"] == "test"
    assert "band: lsf" in attrs["config"] and attrs["torch_version"].startswith("2.")
    assert attrs["started"] <= attrs["ended"] and json.loads(attrs["hosts"]) == [socket.gethostname()]


def test_checkpoint_of_other_settings_is_refused(tmp_path: Path):
    run_point(config(epochs=1), tmp_path)
    (tmp_path / "result.h5").unlink()
    with pytest.raises(RuntimeError, match="made for other settings"):
        run_point(config(epochs=1, lr=0.01), tmp_path)


def test_batch_split_must_divide():
    with pytest.raises(ValueError, match="not divisible by the world size 3"):
        distributed.per_rank_batch(64, 3)


# ---------------------------------------------------------------------------------------------- DDP
def test_two_process_ddp_step_equals_single_step_on_the_whole_batch(tmp_path: Path):
    mp.spawn(one_step, args=(2, free_port(), tmp_path / "ddp.pt"), nprocs=2, join=True)
    mp.spawn(one_step, args=(1, free_port(), tmp_path / "single.pt"), nprocs=1, join=True)
    ddp, single = torch.load(tmp_path / "ddp.pt"), torch.load(tmp_path / "single.pt")
    changed = [k for k in single if k.endswith("weight") and "bn" not in k]
    assert changed
    for key in single:
        assert torch.allclose(ddp[key], single[key], atol=1e-6), key


def test_contrast_augmentation_keeps_each_mean_and_scales_within_bounds():
    generator = torch.Generator().manual_seed(0)
    batch = torch.rand(64, 3, 8, 8, generator=generator)
    scaled = train.scale_contrast(batch, 0.2, generator)
    assert torch.allclose(scaled.mean(dim=(1, 2, 3)), batch.mean(dim=(1, 2, 3)), atol=1e-6)
    ratio = scaled.std(dim=(1, 2, 3)) / batch.std(dim=(1, 2, 3))
    assert ratio.min() >= 0.2 - 1e-5 and ratio.max() <= 1 + 1e-5 and ratio.max() - ratio.min() > 0.5


def test_rendezvous_port_is_per_job_and_below_the_ephemeral_range():
    ports = {distributed.rendezvous_port(f"{job}_{task}") for job in range(100, 110) for task in range(5)}
    assert len(ports) == 50 and all(20000 <= port < 32000 for port in ports)
    assert distributed.rendezvous_port("123_4") == distributed.rendezvous_port("123_4")
