"""Neural co-training (SCIENCE.md section 2): the predictor stage and the guided train stage on the node. The loss is
(1 - alpha) CE + alpha MSE to a frozen predictor's outputs; guided training resumes and runs under DDP exactly like
plain training."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
import yaml

import sfhpc.stages.predictor.run as predictor
import sfhpc.stages.train.run as train
from sfhpc.job import run_point
from sfhpc.stages.common import build_model, load_predictor, load_trained
from sfhpc.stages.device import DevicePlan
from sfhpc.stages.predictor import PredictorParams
from sfhpc.stages.train import TrainParams

from conftest import point_config
from ddp_step import free_port, one_step

DATA = {"kind": "synthetic", "image_size": 32, "n_classes": 4, "n_train": 64, "n_val": 32, "n_test": 32, "seed": 0,
        "neural": {"n_images": 60, "n_shared": 20}}
PREDICTOR = {"subject": "subj01", "roi": "TO", "predictor_width": 4, "predictor_epochs": 20,
             "predictor_batch_size": 16}
TRAIN = {"band": "none", "width": 4, "batch_size": 16, "lr": 0.05, "lr_step": 1, "seed": 3, "alpha": 0.9}


def run_predictor(run_dir: Path, **overrides) -> Path:
    """A finished predictor point `predictor/p` in run_dir, as the local executor leaves it."""
    point_dir = run_dir / "predictor" / "p"
    point_dir.mkdir(parents=True, exist_ok=True)
    config = point_config("predictor", {**PREDICTOR, **overrides}, DATA, run_dir=str(run_dir), upstream=[])
    (point_dir / "config.yaml").write_text(yaml.safe_dump(config))
    return run_point(config, point_dir)


def guided_config(run_dir: Path, **overrides) -> dict:
    return point_config("train", {**TRAIN, **overrides}, DATA, point_id="g", run_dir=str(run_dir),
                        upstream=["predictor/p"])


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("guided run")
    run_predictor(folder)
    return folder


def metrics(result: Path) -> dict:
    with h5py.File(result) as f:
        return {name: f["metrics"][name][()] for name in f["metrics"]} | dict(f.attrs)


def test_predictor_learns_the_roi_and_records_its_fit(run_dir: Path):
    found = metrics(run_dir / "predictor" / "p" / "result.h5")
    assert found["n_components"] >= 1 and found["n_val_images"] == 20 and found["n_train_images"] == 40
    assert -1 <= found["val_pearson_mean"] <= 1 and np.isfinite(found["val_r2_mean"])
    assert 0 < found["noise_ceiling_mean"] < 100
    assert found["train_pearson_mean"] > 0.3  # 20 epochs fit the training images' PC patterns
    # what a perfect predictor could expect, from the shared images' repeats: a correlation, and the ratio beside it
    assert 0 < found["val_pearson_ceiling"] <= 1
    assert found["val_pearson_of_ceiling"] == pytest.approx(found["val_pearson_mean"] / found["val_pearson_ceiling"])
    with h5py.File(run_dir / "predictor" / "p" / "result.h5") as f:
        assert f["curves/val_pearson"].shape == (20,) and f["curves/val_r2"].shape == (found["n_components"],)


def test_controls_shuffle_targets_or_skip_training(tmp_path: Path):
    targets = np.arange(20, dtype=np.float32).reshape(10, 2)
    shuffled = predictor.control_targets(targets, PredictorParams(**{**PREDICTOR, "predictor": "shuffled"}))
    assert not np.array_equal(shuffled, targets) and sorted(shuffled[:, 0]) == sorted(targets[:, 0])
    assert np.array_equal(predictor.control_targets(targets, PredictorParams(**PREDICTOR)), targets)
    untrained = metrics(run_predictor(tmp_path, predictor="random"))
    assert untrained["epochs"] == 0


def test_cotraining_loss_is_the_weighted_sum(run_dir: Path):
    guide = train.NeuralGuide(load_predictor(run_dir, "predictor/p"), alpha=0.9)
    model = build_model(TrainParams(**TRAIN), 4, 32, guide.n_outputs).eval()
    images = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    logits, neural = model(images, with_neural=True)
    expected = 0.1 * F.cross_entropy(logits, labels) + 0.9 * ((neural - guide.predictor(images)) ** 2).mean()
    assert guide.loss_terms(model, images, labels)[0].item() == pytest.approx(expected.item(), rel=1e-6)
    assert all(not p.requires_grad for p in guide.predictor.parameters())


def test_guided_training_resumes_exactly(run_dir: Path):
    straight = run_point(guided_config(run_dir, epochs=2), run_dir / "train" / "straight")
    run_point(guided_config(run_dir, epochs=1), run_dir / "train" / "resumed")
    resumed = run_point(guided_config(run_dir, epochs=2), run_dir / "train" / "resumed")
    with h5py.File(straight) as a, h5py.File(resumed) as b:
        assert b["curves/attempt"][()].tolist() == [0, 1]
        assert np.allclose(a["curves/train_loss"][()], b["curves/train_loss"][()], rtol=1e-5)
        assert np.isfinite(a["metrics/neural_fit_r"][()])
    (run_dir / "train" / "straight" / "config.yaml").write_text(yaml.safe_dump(guided_config(run_dir, epochs=2)))
    model, _ = load_trained(run_dir, "train/straight")
    assert model.neural_head is not None  # the saved guided model loads with its neural head


def test_unguided_training_needs_no_predictor(tmp_path: Path):
    config = {**guided_config(tmp_path, epochs=1, alpha=0.0), "upstream": []}
    found = metrics(run_point(config, tmp_path / "train" / "u"))
    assert np.isnan(found["neural_fit_r"]) and np.isnan(found["neural_loss_share"])


def test_guided_results_keep_both_loss_terms_per_epoch(run_dir: Path):
    result = run_point(guided_config(run_dir, epochs=2, alpha=0.5), run_dir / "train" / "terms")
    with h5py.File(result) as f:
        total, ce, neural = (f["curves"][name][()] for name in ("train_loss", "loss_ce", "loss_neural"))
        share = f["metrics/neural_loss_share"][()]
    assert total.shape == ce.shape == neural.shape == (2,) and (ce > 0).all() and (neural > 0).all()
    # the recorded loss is the weighted sum of its terms (epoch means of per-step values, so exactly)
    np.testing.assert_allclose(total, 0.5 * ce + 0.5 * neural, rtol=1e-6)
    assert share == pytest.approx(float(np.mean(0.5 * neural / total)))


def test_a_normalized_loss_is_the_studys_divided_by_the_cross_entropys_weight(run_dir: Path):
    predictor_model = load_predictor(run_dir, "predictor/p")
    model = build_model(TrainParams(**TRAIN), 4, 32, predictor_model.head.out_features).eval()
    images = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    study = train.NeuralGuide(predictor_model, 0.9).loss_terms(model, images, labels)
    normalized = train.NeuralGuide(predictor_model, 0.9, normalized=True).loss_terms(model, images, labels)
    assert normalized[0].item() == pytest.approx(study[0].item() / 0.1, rel=1e-6)
    assert all(torch.equal(a, b) for a, b in zip(normalized[1:], study[1:], strict=True))  # the same two terms
    result = run_point(guided_config(run_dir, epochs=1, loss_normalized=True), run_dir / "train" / "normalized")
    with h5py.File(result) as f:
        ce, neural, total = (f["curves"][name][()] for name in ("loss_ce", "loss_neural", "train_loss"))
        # the share of the loss is that of the study's loss (normalization scales both terms alike)
        share = f["metrics/neural_loss_share"][()]
    assert share == pytest.approx(float(0.9 * neural[0] / (0.1 * ce[0] + 0.9 * neural[0])))
    np.testing.assert_allclose(total, (0.1 * ce + 0.9 * neural) / 0.1, rtol=1e-5)


def test_a_normalized_loss_needs_alpha_below_one():
    with pytest.raises(ValueError, match="alpha below 1"):
        TrainParams(**{**TRAIN, "alpha": 1.0, "loss_normalized": True})


def test_standardized_targets_have_unit_scale_on_the_training_images(run_dir: Path):
    guide_model = load_predictor(run_dir, "predictor/p")
    images = (np.random.default_rng(0).random((40, 3, 32, 32)) * 255).astype(np.uint8)
    mean, sd = train.target_scale(guide_model, images, DevicePlan(torch.device("cpu")))
    guide = train.NeuralGuide(guide_model, 0.9, (mean, sd))
    pixels = torch.from_numpy(images).float() / 255
    targets = guide.targets(pixels)
    np.testing.assert_allclose(targets.mean(dim=0).numpy(), 0, atol=1e-4)
    np.testing.assert_allclose(targets.std(dim=0, correction=0).numpy(), 1, atol=1e-3)
    raw = train.NeuralGuide(guide_model, 0.9)  # neural_target raw: the predictor's outputs as they are
    assert torch.equal(raw.targets(pixels), guide_model(pixels))


def test_scaled_targets_keep_the_outputs_relative_variances(run_dir: Path):
    guide_model = load_predictor(run_dir, "predictor/p")
    images = (np.random.default_rng(0).random((40, 3, 32, 32)) * 255).astype(np.uint8)
    pixels = torch.from_numpy(images).float() / 255
    guide = train.NeuralGuide(guide_model, 0.9, train.target_scale(guide_model, images, DevicePlan(torch.device("cpu")),
                                                                   per_output=False))
    targets, raw = guide.targets(pixels).double(), guide_model(pixels).double()
    np.testing.assert_allclose(targets.mean(dim=0).numpy(), 0, atol=1e-4)
    assert targets.var(dim=0, correction=0).mean().item() == pytest.approx(1, rel=1e-3)  # unit variance on average
    ratio = targets.std(dim=0, correction=0) / raw.std(dim=0, correction=0)  # one factor for every output
    np.testing.assert_allclose(ratio.numpy(), ratio[0].item(), rtol=1e-3)


def test_a_standardized_guided_point_records_its_setting_and_trains(run_dir: Path):
    result = run_point(guided_config(run_dir, epochs=1, neural_target="standardized"), run_dir / "train" / "std")
    with h5py.File(result) as f:
        assert "neural_target: standardized" in f.attrs["config"]
        assert f["metrics/neural_loss_share"][()] > 0.25  # unit-variance targets: a large share at alpha 0.9


# ---------------------------------------------------------------------------------------------- DDP
def test_two_process_guided_step_equals_single_step_on_the_whole_batch(run_dir: Path, tmp_path: Path):
    mp.spawn(one_step, args=(2, free_port(), tmp_path / "ddp.pt", run_dir), nprocs=2, join=True)
    mp.spawn(one_step, args=(1, free_port(), tmp_path / "single.pt", run_dir), nprocs=1, join=True)
    ddp, single = torch.load(tmp_path / "ddp.pt"), torch.load(tmp_path / "single.pt")
    assert "neural_head.weight" in single
    for key in single:
        assert torch.allclose(ddp[key], single[key], atol=1e-6), key


def test_bf16_training_autocasts_the_step_and_keeps_float32_weights(run_dir: Path):
    result = run_point(guided_config(run_dir, epochs=1, precision="bf16"), run_dir / "train" / "bf16")
    with h5py.File(result) as f:
        assert "precision: bf16" in f.attrs["config"] and np.isfinite(f["curves/loss_neural"][()]).all()
    predictor_model = load_predictor(run_dir, "predictor/p")
    model = build_model(TrainParams(**TRAIN), 4, 32, predictor_model.head.out_features)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    images = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(8) % 4
    seen = []
    hook = model.head.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    train.train_step(model, optimizer, images, labels, train.NeuralGuide(predictor_model, 0.9), "bf16")
    hook.remove()
    assert seen == [torch.bfloat16]  # the forward pass ran in bfloat16
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_a_bf16_predictor_trains_and_records_its_precision(tmp_path: Path):
    result = run_predictor(tmp_path, predictor_precision="bf16", predictor_epochs=2)
    found = metrics(result)
    assert np.isfinite(found["val_pearson_mean"]) and "predictor_precision: bf16" in found["config"]
