"""Right-sized retries (sfhpc.retry) without a cluster: what a failed point's resubmission changes, from SLURM's
state of its last job, its files and the partition's nodes. The same on the real cluster: tests/test_slurm.py."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

from sfhpc.config import Resources
from sfhpc.launch import _by_override
from sfhpc.results import now_iso
from sfhpc.retry import Override, carried_overrides, right_size
from sfhpc.rundir import CHECKPOINT_NAME, JobRecord, RunDir
from sfhpc.slurm import NodeCapacity, SlurmState, expand_hostlist
from sfhpc.sweep import Point, StagePlan

NODES = [NodeCapacity("node1", "debug*", 2, 4000, 0, 120), NodeCapacity("node2", "debug*", 2, 4000, 0, 120),
         NodeCapacity("big", "debug*", 8, 16000, 0, 120)]
ONE_GB = Resources(mem_gb=1, cpus_per_task=1, timeout_min=10)


def job(run: RunDir, point: str = "p1", resources: dict | None = None, submitted: str | None = None) -> JobRecord:
    record = JobRecord("train", point, "slurm", "12_0", "logs/12_0", submitted or now_iso(), os.getpid(),
                       resources=resources)
    run.record_jobs([record])
    return record


def test_out_of_memory_doubles_the_memory_up_to_the_largest_node(tmp_path: Path):
    run = RunDir(tmp_path)
    retry = right_size(run, job(run), SlurmState("OUT_OF_MEMORY", "0:125"), ONE_GB, Override(), NODES)
    assert retry is not None and retry.override == Override(mem_gb=2) and retry.changes == ["mem_gb 1 -> 2"]
    at_12 = right_size(run, job(run), SlurmState("OUT_OF_MEMORY"), ONE_GB, Override(mem_gb=12), NODES)
    assert at_12 is not None and at_12.changes == [f"mem_gb 12 -> {16000 / 1024:g}"]  # the big node's 16000 MB
    at_top = right_size(run, job(run), SlurmState("OUT_OF_MEMORY"), ONE_GB, Override(mem_gb=16000 / 1024), NODES)
    assert at_top is not None and at_top.changes == [] and "largest node's memory, 16000 MB" in at_top.note


def test_a_failed_job_killed_for_its_memory_counts_as_out_of_memory(tmp_path: Path):
    run = RunDir(tmp_path)
    record = job(run)
    log = tmp_path / record.log_dir / "12_0_0_log.err"
    log.parent.mkdir(parents=True)
    for killed in ("slurmstepd-node1: error: Exceeded job memory limit\n",  # the accounting plugin's kill
                   "slurmstepd-node1: error: Detected 1 oom-kill event(s) in StepId=12.0. ...\n"
                   "srun: error: node1: task 0: Out Of Memory\n"):  # the srun step's cgroup; the job ends FAILED
        log.write_text("epoch 1 ...\n" * 10000 + killed)
        retry = right_size(run, record, SlurmState("FAILED", "0:9"), ONE_GB, Override(), NODES)
        assert retry is not None and retry.cause == "OUT_OF_MEMORY" and retry.override.mem_gb == 2
    log.write_text("Traceback ...\nValueError: a bug\n")
    assert right_size(run, record, SlurmState("FAILED", "1:0"), ONE_GB, Override(), NODES) is None


def test_timeout_without_checkpoint_progress_doubles_the_time_up_to_the_limit(tmp_path: Path):
    run = RunDir(tmp_path)
    retry = right_size(run, job(run), SlurmState("TIMEOUT"), ONE_GB, Override(), NODES)
    assert retry is not None and retry.override == Override(timeout_min=20)
    capped = right_size(run, job(run), SlurmState("TIMEOUT"), ONE_GB, Override(timeout_min=100), NODES)
    assert capped is not None and capped.override.timeout_min == 120  # the partition's limit
    unlimited = [NodeCapacity("n", "debug*", 2, 4000, 0, math.inf)]
    assert right_size(run, job(run), SlurmState("TIMEOUT"), ONE_GB, Override(), unlimited).override.timeout_min == 20


def test_timeout_after_a_checkpoint_goes_on_with_the_time_it_had(tmp_path: Path):
    run = RunDir(tmp_path)
    checkpoint = run.point_dir("train", "p1") / CHECKPOINT_NAME
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"state")
    old = time.time() - 3600
    os.utime(checkpoint, (old, old))  # written by an earlier job: no progress in this one
    assert right_size(run, job(run), SlurmState("TIMEOUT"), ONE_GB, Override(), NODES).changes
    record = job(run, submitted=now_iso())
    written = time.time() + 1  # a second after this job was submitted (file times use a coarse clock, which can
    os.utime(checkpoint, (written, written))  # read a few ms behind time.time(): utime() with no time races it)
    retry = right_size(run, record, SlurmState("TIMEOUT"), ONE_GB, Override(), NODES)
    assert retry is not None and retry.changes == [] and "checkpointed" in retry.note


def test_node_failure_excludes_the_node_unless_too_few_would_be_left(tmp_path: Path):
    run = RunDir(tmp_path)
    retry = right_size(run, job(run), SlurmState("NODE_FAIL", nodes="node2"), ONE_GB, Override(), NODES)
    assert retry is not None and retry.override.exclude == ("node2",) and retry.changes == ["exclude node2"]
    again = right_size(run, job(run), SlurmState("NODE_FAIL", nodes="node1"), ONE_GB, retry.override, NODES)
    assert again is not None and again.override.exclude == ("node1", "node2")
    three = Resources(nodes=3, mem_gb=1, cpus_per_task=1)
    kept = right_size(run, job(run), SlurmState("NODE_FAIL", nodes="node[1-2]"), three, Override(), NODES)
    assert kept is not None and kept.override.exclude == () and "would leave 1 node(s) for a 3-node job" in kept.note


def test_other_failures_are_resubmitted_as_they_were(tmp_path: Path):
    run = RunDir(tmp_path)
    for state in ("FAILED", "CANCELLED", "PREEMPTED", "COMPLETED"):
        assert right_size(run, job(run), SlurmState(state), ONE_GB, Override(), NODES) is None


def test_a_points_overrides_are_carried_to_its_next_submission(tmp_path: Path):
    run = RunDir(tmp_path)
    job(run, "p1", {"mem_gb": 2, "exclude": ["node2"]})
    job(run, "p2")
    assert carried_overrides(run.latest_jobs()) == {("train", "p1"): Override(mem_gb=2, exclude=("node2",))}
    assert Override(mem_gb=2, exclude=("node2",)).apply(ONE_GB).mem_gb == 2
    assert Override.from_json(Override(3, 20, ("a", "b")).to_json()) == Override(3, 20, ("a", "b"))
    assert Override().to_json() is None and Override(exclude=("a", "b")).sbatch_options() == {"exclude": "a,b"}
    # a profile's own exclusions stay excluded
    assert Override(exclude=("n2",)).sbatch_options({"exclude": "n[1-2],gpu7"}) == {"exclude": "n1,n2,gpu7"}
    assert Override().sbatch_options({"exclude": "n1"}) == {}


def test_points_with_overrides_get_arrays_of_their_own(tmp_path: Path):
    points = [Point("train", f"p{i}", {}) for i in range(5)]
    stage = StagePlan("train", "jobs/train.yaml", "sfhpc.stages.train", ONE_GB, tuple(points), ())
    more = Override(mem_gb=2)
    groups = _by_override(stage, points, {("train", "p1"): more, ("train", "p3"): more}, max_array=2)
    assert [(o, [p.id for p in chunk]) for o, chunk in groups] == [
        (Override(), ["p0", "p2"]), (Override(), ["p4"]), (more, ["p1", "p3"])]


def test_sacct_host_lists_expand():
    assert expand_hostlist("node[1-2]") == ["node1", "node2"]
    assert expand_hostlist("n[08-10],gpu01") == ["n08", "n09", "n10", "gpu01"]
    assert expand_hostlist("None assigned") == [] and expand_hostlist("") == []


def test_a_hand_edited_override_is_left_out_not_sent_to_sbatch(tmp_path: Path):
    run = RunDir(tmp_path)
    for resources in ("x", [1], {"mem_gb": "lots"}, {"mem_gb": -1, "timeout_min": True}, {"exclude": 5},
                      {"exclude": [1, "node1"]}):
        job(run, resources=resources)  # type: ignore[arg-type]
        assert carried_overrides(run.latest_jobs()).get(("train", "p1"), Override()) == Override(), resources
    job(run, resources={"mem_gb": 2, "timeout_min": 20, "exclude": ["node1"]})
    assert carried_overrides(run.latest_jobs())[("train", "p1")] == Override(2.0, 20, ("node1",))
