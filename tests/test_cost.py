"""`sfhpc cost` without a cluster: sacct's fields read right, per-stage figures from known attempts, a local run's
elapsed times from its result files. (tests/test_slurm.py checks MaxRSS and CPU time on the real test cluster.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sfhpc.cli import app
from sfhpc.config import Resources
from sfhpc.cost import (
    AccountingCache,
    Attempt,
    parse_accounting,
    parse_cpu_time,
    parse_memory_mb,
    percentile,
    stage_cost,
    tres_gpus,
)
from sfhpc.launch import launch
from sfhpc.sweep import expand_file

SACCT = """\
12_0|COMPLETED|60|01:50.500|2||2G|billing=2,cpu=2,mem=2G,node=1|node1
12_0.batch|COMPLETED|60|01:50.400|2|210432K||cpu=2,mem=2G,node=1|node1
12_0.extern|COMPLETED|60|00:00.001|2|1024K||billing=2,cpu=2,mem=2G,node=1|node1
12_1|TIMEOUT|600|1:05:00|2||2000M|billing=2,cpu=2,mem=2000M,node=1,gres/gpu=1|node2
12_1.batch|CANCELLED|600|1:05:00|2|1.5G||cpu=2,mem=2000M,node=1,gres/gpu=1|node2
12_1|COMPLETED|300|09:00.000|2||2000M|billing=2,cpu=2,mem=2000M,node=1,gres/gpu=1|node1
12_1.batch|COMPLETED|300|09:00.000|2|900M||cpu=2,mem=2000M,node=1,gres/gpu=1|node1
12_[2-5]|PENDING|0|00:00:00|2||2G||None assigned
"""


def test_sacct_fields_are_read():
    assert parse_cpu_time("01:50.500") == pytest.approx(110.5)
    assert parse_cpu_time("1:05:00") == 3900 and parse_cpu_time("2-00:00:01") == 2 * 86400 + 1
    assert parse_cpu_time("") == 0
    assert parse_memory_mb("210432K") == pytest.approx(205.5) and parse_memory_mb("1.5G") == 1536
    assert parse_memory_mb("4000Mn") == 4000 and parse_memory_mb("1048576") == 1 and parse_memory_mb("") is None
    assert tres_gpus("billing=2,cpu=2,gres/gpu=4,node=1") == 4 and tres_gpus("cpu=2,mem=2G") == 0
    assert tres_gpus("gres/gpu:a100=2,gres/gpu:v100=1") == 3


def test_a_requeued_task_keeps_every_attempt_with_its_steps_memory():
    attempts = parse_accounting(SACCT)
    assert set(attempts) == {"12_0", "12_1"}  # the never-started tasks' collapsed record is no attempt
    (first,) = attempts["12_0"]
    assert (first.state, first.elapsed_s, first.total_cpu_s, first.max_rss_mb) == ("COMPLETED", 60, 110.5, 205.5)
    timeout, completed = attempts["12_1"]
    assert (timeout.state, timeout.gpus, timeout.max_rss_mb, timeout.req_mem_mb) == ("TIMEOUT", 1, 1536, 2000)
    assert (completed.state, completed.elapsed_s, completed.max_rss_mb) == ("COMPLETED", 300, 900)


def test_a_cache_that_is_not_ours_is_asked_again(tmp_path: Path):
    good = parse_accounting(SACCT)["12_0"][0]
    path = tmp_path / ".slurm-accounting.json"
    for text in ("garbage", "[1, 2]", '"x"', '{"12_0": 5}', '{"12_0": [[1]]}', '{"12_0": [{"job_id": "12_0"}]}',
                 json.dumps({"12_0": [{**good.__dict__, "elapsed_s": "x"}]})):
        path.write_text(text)
        assert AccountingCache(path).tasks == {}, text
    path.write_text(json.dumps({"12_0": [good.__dict__]}))
    assert AccountingCache(path).tasks == {"12_0": [good]}


def test_percentile_is_numpys_linear_one():
    assert percentile([4, 1, 3, 2], 50) == 2.5 and percentile([1, 2, 3, 4, 5], 95) == pytest.approx(4.8)
    assert percentile([7], 95) == 7


def attempt(job: str, state: str, elapsed: float, cpu: float = 0, rss: float | None = None, gpus: int = 1,
            mem: float = 32768) -> Attempt:
    return Attempt(job, state, elapsed, cpu, 4, gpus, rss, mem, "node1")


def test_stage_figures_from_known_attempts():
    resources = Resources(nodes=1, tasks_per_node=1, cpus_per_task=4, gpus_per_node=1, mem_gb=32, timeout_min=600)
    per_point = {"a": [attempt("1_0", "COMPLETED", 600, cpu=1200, rss=4000)],
                 "b": [attempt("1_1", "TIMEOUT", 300, cpu=600, rss=5000), attempt("1_1", "COMPLETED", 600, cpu=600)],
                 "c": [attempt("1_2", "COMPLETED", 1200, cpu=2400, rss=3000)],
                 "d": [attempt("1_3", "RUNNING", 100)], "e": []}
    cost = stage_cost("train", resources, list(per_point), {"a", "b", "c"}, per_point)
    assert (cost.finished, cost.remaining, cost.running) == (3, 2, 1)
    assert (cost.elapsed_median_s, cost.elapsed_p95_s) == (900, pytest.approx(1170))  # b: both attempts, 900 s
    assert cost.gpu_hours == pytest.approx((600 + 300 + 600 + 1200 + 100) / 3600)
    assert cost.cpu_hours == pytest.approx(4 * cost.gpu_hours)
    assert cost.cpu_efficiency == pytest.approx((1200 + 600 + 600 + 2400) / (4 * (600 + 300 + 600 + 1200)))
    assert cost.max_rss_mb == 5000 and cost.requested_mem_mb == 32768
    assert cost.remaining_gpu_hours == pytest.approx(2 * 900 / 3600)
    assert cost.eta_s == 2 * 900  # two points, one running at a time
    assert cost.suggested == {"timeout_min": 30, "mem_gb": 7.5}  # 1170 s x 1.5; 5000 MB x 1.5, in 0.25 GB steps
    assert any("memory request 32 GB is more than 3x the largest MaxRSS (5000 MB)" in w for w in cost.warnings)
    assert any("timeout_min 600 is more than 3x" in w for w in cost.warnings)


def test_a_local_run_reports_elapsed_time_from_its_results(tmp_path: Path, write_sweep, monkeypatch):
    from conftest import TINY_SWEEP

    runner = CliRunner()
    sweep = write_sweep(TINY_SWEEP, "tiny.yaml")
    assert runner.invoke(app, ["sweep", "launch", str(sweep), "--output", str(tmp_path / "run")]).exit_code == 0
    out = runner.invoke(app, ["cost", str(tmp_path / "run")])
    assert out.exit_code == 0, out.output
    assert "local run: elapsed time from the result files" in out.output
    assert "train: 2 of 2 points finished, 0 remaining" in out.output and "point-hours" in out.output
    report = json.loads(runner.invoke(app, ["cost", str(tmp_path / "run"), "--json"]).stdout)
    (train,) = report["stages"]
    assert train["finished"] == 2 and 0 < train["elapsed_median_s"] < 600 and train["gpu_hours"] is None
    assert train["suggested"] == {}  # a laptop's times say little about a cluster's

    # the measured median replaces the job file's expected_minutes in the estimate (expand, and launch's manifest)
    plan = json.loads(runner.invoke(app, ["sweep", "expand", str(sweep), "--json", "--calibrate",
                                          str(tmp_path / "run")]).stdout)
    (stage,) = plan["stages"]
    assert stage["estimate_from"] == str(tmp_path / "run")
    assert stage["estimate"]["cpu_hours"] == pytest.approx(2 * train["elapsed_median_s"] / 3600 * 2)  # 2 CPUs
    text = runner.invoke(app, ["sweep", "expand", str(sweep), "--calibrate", str(tmp_path / "run")]).output
    assert f"calibrated from {tmp_path / 'run'}: train (" in text
    monkeypatch.chdir(tmp_path)  # a run named relative to where the command ran is recorded by its full path
    plan = json.loads(runner.invoke(app, ["sweep", "expand", str(sweep), "--json", "--calibrate", "run"]).stdout)
    assert plan["stages"][0]["estimate_from"] == str(tmp_path / "run")
    dry = runner.invoke(app, ["sweep", "launch", str(sweep), "--output", str(tmp_path / "dry"), "--dry-run",
                              "--calibrate", "run"]).output
    assert "calibrated from" in dry and "manifest keeps" not in dry  # a dry run writes no manifest
    with_cbm = write_sweep(TINY_SWEEP + "  cbm:\n    params: {cbm_images: 16}\n", "cbm.yaml")
    text = runner.invoke(app, ["sweep", "expand", str(with_cbm), "--calibrate", str(tmp_path / "run")]).output
    assert "from their job files: cbm (no finished point in that run)" in text
    missing = runner.invoke(app, ["sweep", "expand", str(sweep), "--calibrate", str(tmp_path / "nowhere")])
    assert missing.exit_code == 2 and "no run folder" in missing.output and "Traceback" not in missing.output
    launch(expand_file(sweep), executor="local", output=tmp_path / "unrun", only=set())  # a manifest, no results
    nothing = runner.invoke(app, ["sweep", "expand", str(sweep), "--calibrate", str(tmp_path / "unrun")])
    assert nothing.exit_code == 2 and "has no finished point to measure" in nothing.output
