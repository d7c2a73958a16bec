"""The SLURM side of sfhpc: cluster profiles, sbatch parameters, array chunking, dependencies, and what the
scheduler says about a run (one sacct call per refresh, squeue when accounting is off or lags).

Login-node code: no torch. Submission itself goes through submitit (see sfhpc.launch).
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from sfhpc.config import ClusterProfile, Resources

DEFAULT_MAX_ARRAY_SIZE = 1001  # SLURM's own default
TERMINAL_STATES = {"COMPLETED", "FAILED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "CANCELLED", "PREEMPTED",
                   "BOOT_FAIL", "DEADLINE"}
RUNNING_STATES = {"RUNNING", "COMPLETING", "CONFIGURING", "SUSPENDED", "STAGE_OUT", "SIGNALING", "RESIZING"}
MAYBE_REQUEUED = {"PREEMPTED", "NODE_FAIL"}  # final unless SLURM requeues the job (JobRequeue, PreemptMode=REQUEUE)
PENDING_STATES = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD", "SPECIAL_EXIT"}


class SlurmError(RuntimeError):
    """A SLURM command failed; the message carries its output."""


def run_command(args: list[str], timeout: float = 60) -> str:
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise SlurmError(f"{' '.join(args[:2])} failed: {err}") from None
    if done.returncode != 0:
        raise SlurmError(f"{' '.join(args[:2])} exited {done.returncode}: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


# -------------------------------------------------------------------------------------- submission
def max_array_size() -> int:
    """MaxArraySize from `scontrol show config`: array indices must stay below it."""
    match = re.search(r"^MaxArraySize\s*=\s*(\d+)", run_command(["scontrol", "show", "config"]), re.M)
    return int(match.group(1)) if match else DEFAULT_MAX_ARRAY_SIZE


@dataclass(frozen=True)
class NodeCapacity:
    """What one node of a partition offers a job (sinfo): CPUs, memory, GPUs and the partition's time limit."""

    name: str
    partition: str
    cpus: int
    memory_mb: int
    gpus: int
    time_limit_min: float  # math.inf: no limit

    def describe(self) -> str:
        limit = "no time limit" if math.isinf(self.time_limit_min) else f"time limit {self.time_limit_min:g} min"
        return (f"{self.name} (partition {self.partition.rstrip('*')}): {self.memory_mb} MB, {self.cpus} CPUs, "
                f"{self.gpus} GPUs, {limit}")


SINFO_NODE_FORMAT = "%N|%P|%c|%m|%G|%l"


def partition_nodes(partition: str | None) -> list[NodeCapacity]:
    """The nodes of `partition` (a comma-separated list of partitions; None: the cluster's default one), from one
    sinfo call. A SlurmError when sinfo fails or the partition has no nodes."""
    text = run_command(["sinfo", "--noheader", "--Node", "--format", SINFO_NODE_FORMAT])
    return nodes_of(parse_sinfo_nodes(text), partition)


def parse_sinfo_nodes(text: str) -> list[NodeCapacity]:
    """`sinfo --noheader --Node --format SINFO_NODE_FORMAT` lines: one per node and partition; the default
    partition's name ends in '*'."""
    nodes = []
    for line in text.splitlines():
        fields = line.strip().split("|")
        if len(fields) != 6:
            continue
        name, partition, cpus, memory, gres, limit = fields
        nodes.append(NodeCapacity(name, partition, _leading_int(cpus), _leading_int(memory), gres_gpus(gres),
                                  time_limit_minutes(limit)))
    return nodes


def nodes_of(nodes: list[NodeCapacity], partition: str | None) -> list[NodeCapacity]:
    """The nodes of these partitions (None: the default partition, marked '*' by sinfo)."""
    if partition is None:
        chosen = [node for node in nodes if node.partition.endswith("*")]
    else:
        wanted = {name.strip() for name in partition.split(",")}
        chosen = [node for node in nodes if node.partition.rstrip("*") in wanted]
    if not chosen:
        known = ", ".join(sorted({node.partition for node in nodes})) or "none"
        raise SlurmError(f"sinfo lists no nodes in partition {partition or '(the default)'}; partitions: {known}")
    return chosen


def _leading_int(text: str) -> int:
    match = re.match(r"\d+", text.strip())
    return int(match.group()) if match else 0


def gres_gpus(gres: str) -> int:
    """GPUs per node from sinfo's GRES column: gpu:4, gpu:a100:4(S:0-1), gpu:a100:2,gpu:v100:2; (null) is 0."""
    return sum(int(count) for count in re.findall(r"(?:^|,)gpu(?::[^:,()]+)?:(\d+)", gres))


def time_limit_minutes(limit: str) -> float:
    """sinfo's time limit ([days-]hours:minutes:seconds, minutes:seconds, infinite) in minutes; inf for none."""
    limit = limit.strip()
    match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", limit)
    if not match:
        return math.inf  # infinite, UNLIMITED, n/a
    days, first, second, third = (int(part) if part else 0 for part in match.groups())
    if match.group(4) is not None:  # [days-]hours:minutes:seconds
        return days * 1440 + first * 60 + second + third / 60
    if match.group(1) is not None:  # days-hours[:minutes]
        return days * 1440 + first * 60 + second
    return first + second / 60  # minutes[:seconds]


def node_fits(resources: Resources, node: NodeCapacity) -> bool:
    """Whether one node can hold one node's share of a task of these resources."""
    return (resources.cpus_per_task * resources.tasks_per_node <= node.cpus
            and int(resources.mem_gb * 1024) <= node.memory_mb
            and resources.gpus_per_node <= node.gpus
            and resources.timeout_min <= node.time_limit_min)


def describe_request(resources: Resources) -> str:
    per_node = (f"{int(resources.mem_gb * 1024)} MB (mem_gb {resources.mem_gb:g}), "
                f"{resources.cpus_per_task * resources.tasks_per_node} CPUs, {resources.gpus_per_node} GPUs")
    nodes = f" on each of {resources.nodes} nodes" if resources.nodes > 1 else ""
    return f"{per_node}{nodes}, {resources.timeout_min} min"


def unsatisfiable(resources: Resources, nodes: list[NodeCapacity]) -> str | None:
    """Why no set of these nodes can run a task of these resources (None when enough nodes can)."""
    fitting = [node for node in nodes if node_fits(resources, node)]
    if len(fitting) >= resources.nodes:
        return None
    largest = max(nodes, key=lambda node: (node.memory_mb, node.cpus, node.gpus, node.time_limit_min))
    which = (f"only {len(fitting)} of the {len(nodes)} nodes can" if fitting or resources.nodes > 1
             else "no node can")
    return f"it asks for {describe_request(resources)}; {which}. Largest node: {largest.describe()}"


def expand_hostlist(text: str) -> list[str]:
    """SLURM's compressed host list, as sacct's NodeList prints it: 'node[1-3,7],gpu01' -> node1, node2, node3,
    node7, gpu01 (zero padding kept: 'n[08-10]' -> n08, n09, n10). 'None assigned' and '' are no host."""
    hosts: list[str] = []
    for prefix, ranges, plain in re.findall(r"([^,\[\]]+)\[([^\]]*)\][^,]*|([^,\[\]]+)", text.strip()):
        if plain:
            hosts += [plain.strip()] if plain.strip() not in ("None assigned", "") else []
            continue
        for part in ranges.split(","):
            first, _, last = part.partition("-")
            width = len(first)
            hosts += [f"{prefix}{i:0{width}d}" for i in range(int(first), int(last or first) + 1)]
    return hosts


def chunks(items: list[Any], size: int) -> list[list[Any]]:
    """Consecutive chunks of at most `size` items; each becomes one array indexed from 0."""
    return [items[start:start + size] for start in range(0, len(items), size)]


def executor_parameters(resources: Resources, profile: ClusterProfile, job_name: str,
                        dependency: str | None, throttle: int | None) -> dict[str, Any]:
    """submitit.SlurmExecutor parameters for one array of a stage."""
    params: dict[str, Any] = {
        "job_name": job_name,
        "nodes": resources.nodes,
        "ntasks_per_node": resources.tasks_per_node,
        "cpus_per_task": resources.cpus_per_task,
        "mem": f"{int(resources.mem_gb * 1024)}MB",
        "time": resources.timeout_min,
        "signal_delay_s": resources.signal_delay_s,
        "array_parallelism": throttle or resources.array_parallelism or 256,
        "setup": list(profile.setup),
        "additional_parameters": dict(profile.additional),
    }
    if resources.gpus_per_node:
        params["gpus_per_node"] = resources.gpus_per_node
    for key in ("partition", "account", "qos", "constraint", "gres"):
        value = getattr(profile, key)
        if value:
            params[key] = value
    if dependency:
        params["additional_parameters"]["dependency"] = dependency
        params["additional_parameters"]["kill-on-invalid-dep"] = "yes"  # a failed upstream ends, not blocks
    return params


def sbatch_text(params: dict[str, Any], folder: str, n_tasks: int, python: str = "python") -> str:
    """The sbatch script submitit writes for an array of `n_tasks` with these parameters (a dry run writes these;
    `python` as submitit's executor has it: shell-quoted). One task is a plain job: submitit writes no --array."""
    from submitit.slurm.slurm import _make_sbatch_string

    command = f"{python} -u -m submitit.core._submit {shlex.quote(folder)}"
    return _make_sbatch_string(command=command, folder=folder, map_count=n_tasks if n_tasks > 1 else None, **params)


def dependency_for(upstream_arrays: list[str], aligned: bool) -> str | None:
    """aftercorr (task i after upstream task i) when the arrays align one to one, else afterok on them all."""
    if not upstream_arrays:
        return None
    return ("aftercorr:" if aligned else "afterok:") + ":".join(upstream_arrays)


# ------------------------------------------------------------------------------------------ states
@dataclass(frozen=True)
class SlurmState:
    state: str  # SLURM's own word: PENDING, RUNNING, COMPLETED, FAILED, TIMEOUT, NODE_FAIL, ...
    exit_code: str = ""
    reason: str = ""
    nodes: str = ""
    earlier: tuple[str, ...] = ()  # states of earlier runs of a requeued job, oldest first
    # Read off an array's collapsed record ('12_[3-5]', or '12' before any task started), not the task's own: SLURM
    # splits a task off that record when it starts, and accounting may not have the task's own record yet.
    collapsed: bool = False

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    def describe(self) -> str:
        parts = [self.state]
        if self.exit_code and self.exit_code != "0:0":
            parts.append(f"exit code {self.exit_code}")
        if self.reason and self.reason not in ("None", ""):
            parts.append(f"reason {self.reason}")
        if self.nodes and self.nodes not in ("None assigned", ""):
            parts.append(f"on {self.nodes}")
        if self.earlier:
            parts.append(f"requeued {len(self.earlier)}x, last after {self.earlier[-1]}")
        return ", ".join(parts)


def expand_array_ids(job_id: str) -> list[str]:
    """'12_[3-5,7%2]' -> ['12_3', '12_4', '12_5', '12_7']; plain ids unchanged (sacct/squeue collapse pending
    array tasks this way)."""
    match = re.fullmatch(r"(\d+)_\[([0-9,\-]+)(%\d+)?\]", job_id)
    if not match:
        return [job_id]
    main, ranges = match.group(1), match.group(2)
    ids = []
    for part in ranges.split(","):
        first, _, last = part.partition("-")
        ids += [f"{main}_{i}" for i in range(int(first), int(last or first) + 1)]
    return ids


def parse_sacct(text: str) -> dict[str, SlurmState]:
    """Lines of `sacct -X -n -P --duplicates -o JobID,State,ExitCode,Reason,NodeList`: the last record of a job
    is its state, earlier ones (a requeued job has several) are kept as its history.

    An array task's own record ('12_3') wins over the array's collapsed record ('12_[3-5%2]'): the collapsed
    record keeps its task range after tasks are split off it, so once the tasks still in it are cancelled (their
    dependency failed) it reads CANCELLED for the tasks that were split off and are running too."""
    own: dict[str, SlurmState] = {}
    collapsed: dict[str, SlurmState] = {}
    for line in text.splitlines():
        fields = line.split("|")
        if len(fields) < 5 or not fields[0]:
            continue
        job_id, state, exit_code, reason, nodes = fields[:5]
        state = state.split()[0]  # "CANCELLED by 0" -> CANCELLED
        task_ids = expand_array_ids(job_id)
        states = collapsed if task_ids != [job_id] else own
        for one in task_ids:
            before = states.get(one)
            earlier = (*before.earlier, before.state) if before else ()
            states[one] = SlurmState(state, exit_code, reason, nodes, earlier, collapsed=states is collapsed)
    return {**collapsed, **own}


def parse_squeue(text: str) -> dict[str, SlurmState]:
    """Lines of `squeue -h -r -o %i|%T|%r|%N`."""
    states: dict[str, SlurmState] = {}
    for line in text.splitlines():
        fields = line.split("|")
        if len(fields) >= 4 and fields[0]:
            for one in expand_array_ids(fields[0]):
                states[one] = SlurmState(fields[1], "", fields[2], fields[3])
    return states


def array_of(job_id: str) -> str:
    """The array (or plain job) id behind a task id: '12_3' -> '12'."""
    return job_id.split("_", 1)[0]


def array_ids(job_ids: list[str]) -> list[str]:
    """The array (or plain job) ids behind task ids, once each, in order."""
    return sorted({array_of(job_id) for job_id in job_ids}, key=int)


class StateCache:
    """Terminal SLURM states of a run's jobs, kept in the run folder: they never change, so a refresh asks the
    scheduler only about the jobs that may still move."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self.states = {k: SlurmState(**{**v, "earlier": tuple(v.get("earlier", ()))})
                           for k, v in json.loads(path.read_text()).items()}
        except (OSError, ValueError, TypeError):
            self.states = {}

    def save(self, states: dict[str, SlurmState]) -> None:
        from sfhpc.results import atomic_write

        terminal = {k: _as_json(v) for k, v in states.items()
                    if v.terminal and v.state not in MAYBE_REQUEUED and not v.collapsed
                    and v != CANCELLED_WHILE_PENDING}  # inferred, not read: asked again until accounting has it
        if terminal and terminal.keys() - self.states.keys():
            merged = {**{k: _as_json(v) for k, v in self.states.items()}, **terminal}
            atomic_write(self.path, lambda tmp: tmp.write_text(json.dumps(merged)))


def _as_json(state: SlurmState) -> dict[str, Any]:
    return {**state.__dict__, "earlier": list(state.earlier)}


def query_states(job_ids: list[str], cache: StateCache | None = None) -> tuple[dict[str, SlurmState], int]:
    """States of these job (array task) ids: cached terminal states, then one sacct call for the others, then
    one squeue call for any that sacct does not know yet (accounting off or lagging).
    Returns (states, number of scheduler calls made)."""
    states = {j: cache.states[j] for j in job_ids if cache and j in cache.states}
    unknown = [j for j in job_ids if j not in states]
    calls = 0
    recorded_arrays: set[str] = set()  # arrays sacct has a record of
    if unknown:
        calls += 1
        try:
            out = run_command(["sacct", "-X", "-n", "-P", "--duplicates", "-o", "JobID,State,ExitCode,Reason,NodeList",
                               "-j", ",".join(array_ids(unknown))])
            found = parse_sacct(out)
            recorded_arrays = {array_of(k) for k in found}
            # An array that never started is one record under its own id: it speaks for all its tasks.
            states.update({j: found.get(j) or replace(found[j.split("_", 1)[0]], collapsed=True) for j in unknown
                           if j in found or j.split("_", 1)[0] in found})
        except SlurmError:
            pass  # accounting off: squeue below
    # Unknown to sacct (accounting off or lagging), or preempted / on a failed node and perhaps requeued already, or
    # ended by a collapsed array record while perhaps split off and started: squeue knows whether it is queued.
    missing = [j for j in job_ids if j not in states or states[j].state in MAYBE_REQUEUED
               or (states[j].collapsed and states[j].terminal)]
    if missing:
        calls += 1
        queue = queued_states(array_ids(missing))
        if queue is not None:  # squeue answered
            for job_id in missing:
                before = states.get(job_id)
                if job_id in queue:
                    earlier = (*before.earlier, before.state) if before and not before.collapsed else ()
                    queued = queue[job_id]
                    states[job_id] = SlurmState(queued.state, queued.exit_code, queued.reason, queued.nodes, earlier)
                elif before and before.collapsed:
                    states[job_id] = replace(before, collapsed=False)  # not queued: it did end with its array
                elif before is None and array_of(job_id) in recorded_arrays:
                    states[job_id] = CANCELLED_WHILE_PENDING
    if cache:
        cache.save(states)
    return states, calls


def queued_states(array_ids: list[str]) -> dict[str, SlurmState] | None:
    """What squeue says of these jobs' tasks; None when squeue cannot answer. A job slurmctld has forgotten (ended
    more than MinJobAge ago) is not queued: squeue leaves it out, or refuses it when it is the only one asked about."""
    try:
        return parse_squeue(run_command(["squeue", "-h", "-r", "-o", "%i|%T|%r|%N", "-j", ",".join(array_ids)]))
    except SlurmError as err:
        return {} if "Invalid job id" in str(err) else None


# A pending array task cancelled on its own is split off its array's record and never reaches accounting: neither
# sacct nor squeue knows it afterwards (SLURM 22.05). The array's record being there tells it from accounting lag.
CANCELLED_WHILE_PENDING = SlurmState("CANCELLED", reason="cancelled while pending: no accounting record, not queued")


def job_name(sweep: str, stage: str) -> str:
    """The name every array of a sweep's stage is submitted under."""
    return f"sfhpc.{sweep}.{stage}"


def arrays_still_ours(names: dict[str, str]) -> list[str]:
    """Those of these arrays (array id -> the job name it was submitted under) that the queue says are this user's
    and carry that name. A job id written in a run folder names the run's job only while the cluster keeps its ids:
    a controller started again with fresh state counts from 1, and the id may then be another user's job."""
    if not names:
        return []
    try:  # %U: the numeric user id, which needs no passwd entry (containers often have none)
        queued = run_command(["squeue", "-h", "-o", "%F|%U|%j", "-j", ",".join(sorted(names, key=int))])
    except SlurmError as err:
        if "Invalid job id" in str(err):
            return []  # none of them is queued any more
        raise
    owned = {fields[0] for fields in (line.split("|", 2) for line in queued.splitlines())
             if len(fields) == 3 and fields[1] == str(os.getuid()) and names.get(fields[0]) == fields[2]}
    return sorted(owned, key=int)


def cancel(job_ids: list[str]) -> None:
    """Cancel these jobs' arrays whole ('12' for '12_3'): every task of an array is the same run's and stage's, and
    a whole-array cancel keeps the pending tasks in the array's accounting record, which task-by-task cancels lose.
    Check with arrays_still_ours first."""
    if job_ids:
        run_command(["scancel", *array_ids(job_ids)])
