"""The local executor's warm process pool: each point is its own forked process, whatever happens to it."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from sfhpc.forkpool import ForkedJob, ForkPool
from sfhpc.job import PointJob

from conftest import toy_config

# A stage module for these tests (the pool imports it from the working directory, like `python -m` does).
STAGE = '''\
import os, sys, time

from sfhpc.config import Closed
from sfhpc.stages.spec import StageSpec


class ToyParams(Closed):
    action: str


SPEC = StageSpec(name="toy", entry="toy_stage", params=ToyParams, runner="toy_stage:run")


def run(point):
    print("hello from", os.getpid())
    if point.params.action == "abort":
        os.abort()
    if point.params.action == "sleep":
        time.sleep(600)
    if point.params.action == "raise":
        raise ValueError("this point's input is bad")
    (point.dir / "result.txt").write_text(str(os.getpid()))
    return point.dir / "result.txt"
'''


@pytest.fixture
def pool(tmp_path: Path, monkeypatch):
    (tmp_path / "toy_stage.py").write_text(STAGE)
    monkeypatch.chdir(tmp_path)
    pool = ForkPool(tmp_path / "logs", ["toy_stage"])
    yield pool
    pool.close()


def start(pool: ForkPool, run_dir: Path, point: str, action: str, timeout_min: float = 10) -> ForkedJob:
    (run_dir / "toy" / point).mkdir(parents=True, exist_ok=True)
    return pool.submit(PointJob(str(run_dir), "toy", "toy_stage", point, toy_config(point, action=action)), timeout_min)


def wait(*jobs: ForkedJob) -> None:
    deadline = time.monotonic() + 120
    while not all(job.done() for job in jobs):
        assert time.monotonic() < deadline, "the pool did not report the points' ends"
        time.sleep(0.05)


def log_of(run_dir: Path, job: ForkedJob, kind: str) -> str:
    return (run_dir / "logs" / job.job_id / f"{job.job_id}_0_log.{kind}").read_text()


def test_a_crashing_point_loses_only_itself(pool: ForkPool, tmp_path: Path):
    crash, fine = start(pool, tmp_path, "crash", "abort"), start(pool, tmp_path, "fine", "write")
    wait(crash, fine)
    assert pool.ended[int(crash.job_id)] == -6  # SIGABRT
    assert pool.ended[int(fine.job_id)] == 0
    # Each point ran in its own process, whose id is the job id the run records.
    assert (tmp_path / "toy" / "fine" / "result.txt").read_text() == fine.job_id
    assert crash.job_id != fine.job_id
    assert f"hello from {crash.job_id}" in log_of(tmp_path, crash, "out")
    # The pool outlives the crash.
    after = start(pool, tmp_path, "after", "write")
    wait(after)
    assert pool.ended[int(after.job_id)] == 0


def test_a_failing_point_leaves_its_reason_and_traceback(pool: ForkPool, tmp_path: Path):
    job = start(pool, tmp_path, "bad", "raise")
    wait(job)
    assert pool.ended[int(job.job_id)] == 1
    reason = (tmp_path / "toy" / "bad" / "error.txt").read_text()
    assert reason.startswith("ValueError: this point's input is bad")
    assert "Traceback" in log_of(tmp_path, job, "err")


def test_a_point_past_its_time_limit_is_stopped_and_its_log_says_why(pool: ForkPool, tmp_path: Path):
    job = start(pool, tmp_path, "slow", "sleep", timeout_min=0.02)  # 1.2 s
    wait(job)
    assert pool.ended[int(job.job_id)] == -15  # SIGTERM
    assert "timeout_min" in log_of(tmp_path, job, "err")


def test_closing_the_pool_waits_for_running_points(pool: ForkPool, tmp_path: Path):
    job = start(pool, tmp_path, "last", "write")
    pool.close()
    assert not pool.alive()
    assert (tmp_path / "toy" / "last" / "result.txt").read_text() == job.job_id
