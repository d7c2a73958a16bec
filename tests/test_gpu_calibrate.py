"""benchmarks/gpu_calibrate.py: without a GPU it says so and exits 0; on a CPU at a toy size it runs every paper
stage's workload and prints the figures, labelled as not GPU figures; its MFU and expected-minutes arithmetic."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_calibrate.py"


@pytest.fixture(scope="module")
def calibrate():
    spec = importlib.util.spec_from_file_location("gpu_calibrate", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_calibrate"] = module  # its dataclasses look their module up while it executes
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules["gpu_calibrate"]


def test_without_a_gpu_it_says_so_and_exits_0(tmp_path: Path):
    done = subprocess.run([sys.executable, str(SCRIPT)], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    assert "no CUDA GPU here" in done.stdout and "stay estimates" in done.stdout
    assert "images/s" not in done.stdout  # nothing measured, nothing printed as if it were


@pytest.fixture
def one_thread():
    """One torch thread, as the stages' tests run points: a second one that waits for a busy CPU spins for long."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_on_a_cpu_at_a_toy_size_it_prints_every_stages_figures_labelled_as_not_gpu_ones(calibrate, capsys,
                                                                                        one_thread):
    assert calibrate.main(["--device", "cpu", "--steps", "2", "--image-size", "32", "--batch", "8"]) == 0
    out = capsys.readouterr().out
    assert "NOT GPU FIGURES: CPU at 32 px, batch 8" in out
    rows = [line.split() for line in out.splitlines()
            if line.split()[:1] and line.split()[0] in ("predictor", "train", "cbm", "rsa", "attack")
            and re.search(r"\d+\.\d+ +\d+\.\d+ +\d+\.\d+ GiB", line)]
    assert {row[0] for row in rows} == {"predictor", "train", "cbm", "rsa", "attack"}
    for line in out.splitlines():
        if line.split()[:1] == ["train"] and "guided" in line:
            numbers = re.search(r" 8 +(\d+\.\d+) +(\d+\.\d+) +(\d+\.\d+) GiB RSS +(\d+\.\d+)", line)
            assert numbers, line
            images_per_s, step_ms, _, gflop = map(float, numbers.groups())
            assert images_per_s > 0 and step_ms > 0 and gflop > 0
            assert images_per_s == pytest.approx(8 / (step_ms / 1000), rel=0.02)
    assert "n/a (CPU: no peak table)" in out
    assert "band human, 512/GPU: skipped, the band does not fit 32 px images" in out  # 39.6 c/img is above Nyquist 16
    for job in ("paper_predictor", "paper_train", "paper_cbm", "paper_rsa"):
        assert re.search(rf"jobs/{job}\.yaml: expected_minutes \d+\.\d+ \(mean of \d+ points", out), job
    assert re.search(r"jobs/paper_attack\.yaml: between \d+\.\d+ .* and \d+\.\d+ ", out)


def test_the_peak_table_picks_the_gpu_and_the_precisions_peak_and_names_what_it_lacks(calibrate):
    def peak(name: str, precision: str):
        return calibrate.Machine(torch.device("cuda", 0), name).peak_tflops(precision)

    assert peak("NVIDIA H100 80GB HBM3", "bf16") == (989.4, "bf16")
    assert peak("NVIDIA H100 PCIe", "bf16")[0] == 756.0
    assert peak("NVIDIA H200", "float32") == (494.7, "tf32 (cudnn.allow_tf32)")
    assert peak("NVIDIA A100-SXM4-80GB", "bf16")[0] == 312.0
    assert peak("NVIDIA L40S", "bf16")[0] == 362.1
    assert peak("Tesla V100-SXM2-32GB", "float32") == (15.7, "fp32")
    assert peak("Tesla V100-SXM2-32GB", "bf16") == (None, "Tesla V100-SXM2-32GB has no bf16 tensor cores")
    value, why = peak("NVIDIA GeForce GTX 1080", "bf16")
    assert value is None and "unknown GPU 'NVIDIA GeForce GTX 1080'" in why
    assert calibrate.Machine(torch.device("cpu"), "CPU").peak_tflops("bf16") == (None, "CPU: no peak table")


def test_mfu_is_achieved_flops_over_the_peak(calibrate):
    figure = calibrate.Figure("train", "w", 100, step_s=0.1, items_per_step=100, peak_memory="1 GiB",
                              flops_per_item=10.92e9, precision="bf16")  # 1000 images/s of ResNet-18 training
    assert figure.per_s == pytest.approx(1000)
    assert figure.mfu(calibrate.Machine(torch.device("cuda", 0), "NVIDIA A100 80GB PCIe")) == \
        "3.5% (10.9 of 312 TFLOP/s bf16)"


def test_expected_train_minutes_follow_each_points_epochs_batches_and_speed(calibrate):
    plan = calibrate.planned(REPO / "sweeps" / "paper.yaml")
    train = plan.stage("train")
    kinds = {calibrate.train_kind(p.params, bool(p.upstream), 2) for p in train.points}
    assert {(k.per_gpu_batch, k.band) for k in kinds if not k.guided} == {
        (128, "none"), (512, "none"), (512, "lsf"), (512, "human"), (512, "lsf+human")}
    minutes = calibrate.train_minutes(plan, dict.fromkeys(kinds, 0.5), eval_s=0.0)
    assert len(minutes) == len(train.points)
    guided_arm = 60 * (65_000 // 256) * 0.5 / 60  # 60 epochs of 253 steps of 0.5 s
    steering_arm = 42 * (65_000 // 1024) * 0.5 / 60
    assert set(round(m, 6) for m in minutes) == {round(guided_arm, 6), round(steering_arm, 6)}
