"""`pretrained`: a train point's ResNet-18 trunk starts from a local torchvision state dict (SCIENCE.md section 2, the
steering prototype's ImageNet-pretrained start); its fc is replaced by the model's own head. Missing, foreign and
mismatched files are refused with the keys at fault named."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import h5py
import pytest
import torch
import torchvision

from sfhpc.job import run_point
from sfhpc.models.classifier import PretrainedWeightsError, build_classifier, load_pretrained_trunk

from conftest import located_error, point_config


@pytest.fixture(autouse=True)
def _two_threads() -> None:
    torch.set_num_threads(2)


def torchvision_weights(folder: Path, name: str = "resnet18 weights.pth", seed: int = 1234,
                        drop: tuple[str, ...] = ()) -> Path:
    """A torchvision ResNet-18's state dict (random weights: the file's layout is what matters), saved as
    torch.save saves one, without the keys that start with any of `drop`."""
    torch.manual_seed(seed)
    state = torchvision.models.resnet18(weights=None).state_dict()
    path = folder / name
    torch.save({k: v for k, v in state.items() if not k.startswith(drop)}, path)
    return path


def resnet18(n_classes: int = 5):
    return build_classifier("resnet18", n_classes=n_classes, band="none", image_size=32)


def load_error(model, path: Path) -> str:
    with pytest.raises(PretrainedWeightsError) as info:
        load_pretrained_trunk(model, path)
    return str(info.value)


def test_the_trunk_starts_from_the_files_weights_and_keeps_its_own_head(awkward_dir: Path):
    path = torchvision_weights(awkward_dir)
    saved = torch.load(path)
    model = resnet18(n_classes=5)
    head_before = model.head.weight.clone()
    load_pretrained_trunk(model, path)
    trunk = model.trunk.state_dict()
    assert trunk.keys() == {k for k in saved if not k.startswith("fc.")}
    for key, value in trunk.items():
        assert torch.equal(value, saved[key]), key
    assert model.head.weight.shape == (5, 512) and torch.equal(model.head.weight, head_before)  # not the 1000-way fc
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 5)


def test_a_file_without_batchnorm_counters_loads_as_torchvisions_published_weights_do(awkward_dir: Path):
    # torchvision's downloadable resnet18-f37072fd.pth predates BatchNorm's num_batches_tracked buffers.
    path = torchvision_weights(awkward_dir)
    state = {k: v for k, v in torch.load(path).items() if not k.endswith("num_batches_tracked")}
    torch.save(state, path)
    model = resnet18()
    load_pretrained_trunk(model, path)
    assert torch.equal(model.trunk.conv1.weight, state["conv1.weight"])


def test_a_truncated_file_names_the_missing_keys_and_their_count(awkward_dir: Path):
    path = torchvision_weights(awkward_dir, drop=("layer4.",))
    message = load_error(resnet18(), path)
    assert str(path) in message and "missing: layer4.0.conv1.weight" in message
    missing = sum(1 for k in resnet18().trunk.state_dict() if k.startswith("layer4.") and "num_batches" not in k)
    assert f"{missing} missing" in message and f"({missing - 5} more)" in message


def test_shape_mismatches_and_unexpected_keys_are_named(awkward_dir: Path):
    path = torchvision_weights(awkward_dir)
    state = torch.load(path)
    state["conv1.weight"] = torch.zeros(64, 3, 3, 3)  # a CIFAR-style stem
    state["module.extra.weight"] = torch.zeros(1)
    torch.save(state, path)
    message = load_error(resnet18(), path)
    assert "1 shape mismatches: conv1.weight (64, 3, 3, 3) in the file, (64, 3, 7, 7) in the model" in message
    assert "1 unexpected: module.extra.weight" in message and "missing" not in message


def test_a_small_resnet_trunk_is_refused(awkward_dir: Path):
    model = build_classifier("small_resnet", n_classes=5, band="none", image_size=32, width=4)
    assert "arch must be resnet18" in load_error(model, torchvision_weights(awkward_dir))


@pytest.mark.parametrize(("content", "words"), [
    (None, ["no such file"]),
    (b"not a pickle", ["not a file torch.load reads"]),
    ([torch.zeros(1)], ["not a state dict", "it holds a list"]),
    ({"model": {"conv1.weight": torch.zeros(1)}, "epoch": 3}, ["2 entries that are not tensors (model, epoch)",
                                                               "a training checkpoint?"]),
])
def test_a_missing_or_foreign_file_is_refused_with_the_reason(awkward_dir: Path, content, words):
    path = awkward_dir / "weights.pth"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        torch.save(content, path)
    message = load_error(resnet18(), path)
    assert str(path) in message
    for word in words:
        assert word in message


# ------------------------------------------------------------------------------------- expand time
SWEEP = """\
name: pretrained
executor: local
data: {image_size: 32, n_classes: 4, n_train: 64, n_val: 32, n_test: 32}
grid:
  seed: [0]
stages:
  train:
    params: {PARAMS}
"""


def test_pretrained_needs_arch_resnet18_at_expand_time(write_sweep, awkward_dir: Path):
    path = torchvision_weights(awkward_dir)
    params = f"{{arch: small_resnet, pretrained: {json.dumps(str(path))}}}"  # a JSON string is YAML
    located_error(write_sweep, SWEEP.replace("{PARAMS}", params), 8, "stages.train.params.pretrained",
                  ["arch resnet18", "not small_resnet"])


def test_a_missing_weights_file_is_an_expand_time_error(write_sweep, awkward_dir: Path):
    params = "{arch: resnet18, pretrained: weights/absent.pth}"
    located_error(write_sweep, SWEEP.replace("{PARAMS}", params), 8, "stages.train.params.pretrained",
                  ["no such file", str(Path("weights/absent.pth").absolute())])


# ------------------------------------------------------------------------------------------- a run
DATA = {"kind": "synthetic", "image_size": 32, "n_classes": 4, "n_train": 16, "n_val": 8, "n_test": 8, "seed": 0}


def train_from(path: Path, point_dir: Path) -> Path:
    # A learning rate so small that one epoch leaves the trunk where it started.
    params = {"arch": "resnet18", "pretrained": str(path), "batch_size": 8, "epochs": 1, "lr": 1e-9, "seed": 0}
    return run_point(point_config("train", params, DATA), point_dir)


def test_a_run_starts_from_the_file_and_records_its_path_and_sha256(awkward_dir: Path):
    path = torchvision_weights(awkward_dir)
    result = train_from(path, awkward_dir / "point")
    with h5py.File(result) as f:
        assert f.attrs["pretrained"] == str(path)
        assert f.attrs["pretrained_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    trained = torch.load(awkward_dir / "point" / "model.pt")
    saved = torch.load(path)
    assert torch.allclose(trained["trunk.conv1.weight"], saved["conv1.weight"], atol=1e-6)
    assert trained["head.weight"].shape == (4, 512)


def test_a_checkpoint_is_not_resumed_from_other_weights_at_the_same_path(awkward_dir: Path):
    path = torchvision_weights(awkward_dir)
    train_from(path, awkward_dir / "point")
    (awkward_dir / "point" / "result.h5").unlink()
    torchvision_weights(awkward_dir, seed=99)  # other weights, same file name
    with pytest.raises(RuntimeError, match="made for other settings"):
        train_from(path, awkward_dir / "point")
