"""What goes to sbatch, without a cluster: the generated script (golden file), dependencies, sacct parsing."""

from __future__ import annotations

from pathlib import Path

import pytest

from sfhpc import slurm
from sfhpc.config import ClusterProfile, Resources
from sfhpc.launch import _dependency
from sfhpc.sweep import Point

GOLDEN = Path(__file__).parent / "golden" / "train_array.sbatch"


def fixed_parameters() -> dict:
    profile = ClusterProfile(partition="gpu", account="lab", qos="normal", constraint="h100",
                             setup=["module load cuda/12.4", "source /opt/envs/sfhpc/bin/activate"],
                             additional={"exclude": "node07"})
    resources = Resources(nodes=2, tasks_per_node=4, cpus_per_task=8, gpus_per_node=4, mem_gb=64, timeout_min=240,
                          signal_delay_s=120)
    return slurm.executor_parameters(resources, profile, "sfhpc.paper.train", "afterok:100:101", throttle=16)


def test_sbatch_text_for_a_fixed_profile_matches_the_golden_file():
    text = slurm.sbatch_text(fixed_parameters(), "/runs/paper/logs/%j", n_tasks=50, python="python")
    assert text == GOLDEN.read_text(), "regenerate tests/golden/train_array.sbatch only for an intended change"


def test_golden_file_says_what_a_reviewer_looks_for():
    text = GOLDEN.read_text()
    for line in ("#SBATCH --array=0-49%16", "#SBATCH --partition=gpu", "#SBATCH --account=lab", "#SBATCH --qos=normal",
                 "#SBATCH --constraint=h100", "#SBATCH --gpus-per-node=4", "#SBATCH --nodes=2",
                 "#SBATCH --ntasks-per-node=4", "#SBATCH --dependency=afterok:100:101", "#SBATCH --signal=USR2@120",
                 "#SBATCH --time=240", "#SBATCH --exclude=node07", "module load cuda/12.4"):
        assert line in text, line


def test_chunks_are_consecutive_and_bounded():
    assert slurm.chunks(list(range(5)), 2) == [[0, 1], [2, 3], [4]]
    assert slurm.chunks([], 3) == []


def point(stage: str, pid: str, upstream: tuple[str, ...] = ()) -> Point:
    return Point(stage, pid, {}, upstream)


def test_aligned_arrays_use_aftercorr_and_others_afterok():
    arrays = {"train": [("100", ["train/a", "train/b"])]}
    producer = {"train/a": "100_0", "train/b": "100_1"}
    aligned = [point("cbm", "x", ("train/a",)), point("cbm", "y", ("train/b",))]
    assert _dependency(aligned, producer, {}, arrays) == "aftercorr:100"
    shards = [point("attack", f"s{i}", ("train/b",)) for i in range(3)]  # K shards of one model
    assert _dependency(shards, producer, {}, arrays) == "afterok:100_1"
    both = [point("rsa", "z", ("train/a", "train/b"))]
    assert _dependency(both, producer, {}, arrays) == "afterok:100"  # whole array: shorter
    assert _dependency([point("cbm", "w", ("train/done",))], producer, {}, arrays) is None  # input already there


def test_sacct_lines_parse_with_arrays_requeues_and_cancel_notes():
    text = ("7_0|COMPLETED|0:0|None|node1\n7_[1-3%2]|PENDING|0:0|JobArrayTaskLimit|None assigned\n"
            "8|REQUEUED|0:0|None|node2\n8|RUNNING|0:0|None|node1\n9|CANCELLED by 0|0:15|None|node2\n")
    states = slurm.parse_sacct(text)
    assert states["7_0"].state == "COMPLETED" and states["7_3"].reason == "JobArrayTaskLimit"
    assert set(states) == {"7_0", "7_1", "7_2", "7_3", "8", "9"}
    assert states["8"].state == "RUNNING" and states["8"].earlier == ("REQUEUED",)  # the last record wins
    assert states["8"].describe() == "RUNNING, on node1, requeued 1x, last after REQUEUED"
    assert states["9"].state == "CANCELLED" and states["9"].terminal
    assert states["9"].describe() == "CANCELLED, exit code 0:15, on node2"


def test_a_task_split_off_its_array_keeps_its_own_state_when_the_rest_of_the_array_is_cancelled():
    # What sacct printed while a cbm task ran after its train task, and the other cbm task was cancelled because its
    # train task failed: the collapsed record still names both tasks.
    text = "461_0|RUNNING|0:0|None|node1\n461_[0-1%2]|CANCELLED|0:0|None|None assigned\n"
    states = slurm.parse_sacct(text)
    assert states["461_0"].state == "RUNNING" and not states["461_0"].collapsed and states["461_0"].earlier == ()
    assert states["461_1"].state == "CANCELLED" and states["461_1"].collapsed


SINFO = """\
node1|debug*|2|4000|(null)|infinite
node2|debug*|2|4000|(null)|infinite
gpu1|gpu|64|512000|gpu:a100:4(S:0-1)|2-00:00:00
gpu2|gpu|32|256000|gpu:a100:2,gpu:v100:2|1:30:00
short1|short|8|1000|(null)|30:00
"""


def test_sinfo_nodes_are_read_with_gpus_and_time_limits():
    nodes = {node.name: node for node in slurm.parse_sinfo_nodes(SINFO)}
    assert (nodes["node1"].cpus, nodes["node1"].memory_mb, nodes["node1"].gpus) == (2, 4000, 0)
    assert nodes["node1"].time_limit_min == float("inf")
    assert (nodes["gpu1"].gpus, nodes["gpu1"].time_limit_min) == (4, 2 * 1440)
    assert (nodes["gpu2"].gpus, nodes["gpu2"].time_limit_min) == (4, 90)
    assert nodes["short1"].time_limit_min == 30
    assert [n.name for n in slurm.nodes_of(list(nodes.values()), None)] == ["node1", "node2"]  # the default ('*')
    assert [n.name for n in slurm.nodes_of(list(nodes.values()), "gpu,short")] == ["gpu1", "gpu2", "short1"]
    with pytest.raises(slurm.SlurmError, match="no nodes in partition cpu; partitions: debug\\*, gpu, short"):
        slurm.nodes_of(list(nodes.values()), "cpu")


@pytest.mark.parametrize(("request_", "partition", "why"), [
    ({"mem_gb": 8}, None, "asks for 8192 MB (mem_gb 8), 2 CPUs, 0 GPUs, 60 min; no node can. Largest node: node1 "
                          "(partition debug): 4000 MB, 2 CPUs, 0 GPUs, no time limit"),
    ({"mem_gb": 2, "cpus_per_task": 4}, None, "no node can"),
    ({"mem_gb": 2, "gpus_per_node": 1}, None, "no node can"),
    ({"mem_gb": 2, "nodes": 3}, None, "on each of 3 nodes, 60 min; only 2 of the 2 nodes can"),
    ({"mem_gb": 64, "gpus_per_node": 4, "timeout_min": 24 * 60}, "gpu", None),
    ({"mem_gb": 64, "gpus_per_node": 4, "timeout_min": 24 * 60, "nodes": 2}, "gpu", "only 1 of the 2 nodes can"),
    ({"mem_gb": 0.5, "timeout_min": 45}, "short", "45 min; no node can. Largest node: short1 (partition short): "
                                                  "1000 MB, 8 CPUs, 0 GPUs, time limit 30 min"),
    ({"mem_gb": 2}, None, None),
])
def test_a_request_is_checked_against_the_partitions_nodes(request_, partition, why):
    nodes = slurm.nodes_of(slurm.parse_sinfo_nodes(SINFO), partition)
    found = slurm.unsatisfiable(Resources(**request_), nodes)
    assert (found is None) if why is None else (why in (found or "")), found
