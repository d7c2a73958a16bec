"""Right-sized retries: what `resubmit --failed` changes for a SLURM point that failed for want of memory, time or a
healthy node, instead of submitting it again as it was.

- OUT_OF_MEMORY: twice the memory, up to the largest node of the partition that fits the rest of the request;
- TIMEOUT with no checkpoint written since the job was submitted: twice the time, up to the partition's time limit
  (a point that did checkpoint goes on from there with the time it had);
- NODE_FAIL: the node(s) it ran on are excluded, unless too few nodes would be left for it.

A point's overrides are kept in its job records (`jobs.jsonl`, `resources`), with the reason (`retry`), and carried
to its later submissions: a point that needed 4 GB once is not sent back with 2. Login-node code: no torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sfhpc.config import Resources
from sfhpc.rundir import CHECKPOINT_NAME, JobRecord, RunDir

if TYPE_CHECKING:
    from sfhpc.slurm import NodeCapacity, SlurmState
    from sfhpc.sweep import Plan

@dataclass(frozen=True)
class Override:
    """Per-point changes to a stage's resources: more memory or time, nodes to avoid."""

    mem_gb: float | None = None
    timeout_min: int | None = None
    exclude: tuple[str, ...] = ()

    def apply(self, resources: Resources) -> Resources:
        update: dict[str, Any] = {}
        if self.mem_gb is not None:
            update["mem_gb"] = self.mem_gb
        if self.timeout_min is not None:
            update["timeout_min"] = self.timeout_min
        return resources.model_copy(update=update)

    def sbatch_options(self, profile: dict[str, Any] | None = None) -> dict[str, str]:
        """The sbatch options the override adds to the cluster profile's `additional` ones: its nodes to exclude,
        with those the profile already excludes."""
        from sfhpc.slurm import expand_hostlist

        if not self.exclude:
            return {}
        already = expand_hostlist(str((profile or {}).get("exclude") or ""))
        return {"exclude": ",".join([*already, *(name for name in self.exclude if name not in already)])}

    def to_json(self) -> dict[str, Any] | None:
        data = {key: value for key, value in (("mem_gb", self.mem_gb), ("timeout_min", self.timeout_min),
                                              ("exclude", list(self.exclude))) if value}
        return data or None

    @classmethod
    def from_json(cls, data: Any) -> Override:
        """The override a job record keeps; a field that is not what sfhpc writes (a hand-edited `jobs.jsonl`) is
        left out rather than sent to sbatch."""
        data = data if isinstance(data, dict) else {}

        def positive(value: Any, kind: type) -> Any:
            ok = isinstance(value, int | float) and not isinstance(value, bool) and value > 0
            return kind(value) if ok and math.isfinite(value) else None

        exclude = data.get("exclude")
        names = tuple(exclude) if isinstance(exclude, list) and all(isinstance(n, str) for n in exclude) else ()
        return cls(positive(data.get("mem_gb"), float), positive(data.get("timeout_min"), int), names)


@dataclass(frozen=True)
class Retry:
    """What a failed point's resubmission changes, and why."""

    stage: str
    point: str
    cause: str  # SLURM's state, e.g. OUT_OF_MEMORY
    override: Override
    changes: list[str] = field(default_factory=list)  # "mem_gb 1 -> 2"; empty: resubmitted as it was, `note` says why
    note: str = ""

    def describe(self) -> str:
        what = ", ".join(self.changes) if self.changes else "unchanged"
        return f"{self.stage}/{self.point}: {self.cause}: {what}" + (f" ({self.note})" if self.note else "")

    def to_json(self) -> dict[str, Any]:
        return {"stage": self.stage, "point": self.point, "cause": self.cause, "changes": self.changes,
                "note": self.note, "resources": self.override.to_json()}


def carried_overrides(jobs: dict[tuple[str, str], JobRecord]) -> dict[tuple[str, str], Override]:
    """The overrides each point's last submission (`RunDir.latest_jobs`) had: its next one keeps them."""
    return {key: Override.from_json(record.resources) for key, record in jobs.items() if record.resources}


def plan_retries(run: RunDir, plan: Plan, failed: list[tuple[str, str]], states: dict[str, SlurmState],
                 nodes: list[NodeCapacity]) -> dict[tuple[str, str], Retry]:
    """The retry of each failed SLURM point whose failure a change of resources can help (`states`: SLURM's view
    of their last jobs; `nodes`: the partition's)."""
    jobs = run.latest_jobs()
    carried = carried_overrides(jobs)
    retries = {}
    for key in failed:
        record = jobs.get(key)
        state = states.get(record.job_id) if record and record.job_id and record.executor == "slurm" else None
        if record is None or state is None:
            continue
        stage = plan.stage(key[0])
        retry = right_size(run, record, state, stage.resources, carried.get(key, Override()), nodes)
        if retry is not None:
            retries[key] = retry
    return retries


def right_size(run: RunDir, record: JobRecord, state: SlurmState, resources: Resources, before: Override,
               nodes: list[NodeCapacity]) -> Retry | None:
    """The retry for one failed job, None when its failure is not one that resources explain."""
    from sfhpc.status import failure_cause

    cause = failure_cause(run, record, state)
    had = before.apply(resources)
    if cause == "OUT_OF_MEMORY":
        return _more_memory(record, cause, had, before, nodes)
    if cause == "TIMEOUT":
        return _more_time(run, record, cause, had, before, nodes)
    if cause == "NODE_FAIL":
        return _without_failed_nodes(record, cause, state, had, before, nodes)
    return None


def _more_memory(record: JobRecord, cause: str, had: Resources, before: Override, nodes: list[NodeCapacity]
                 ) -> Retry:
    from sfhpc.slurm import node_fits

    fitting = [n.memory_mb for n in nodes if node_fits(had.model_copy(update={"mem_gb": 1 / 1024}), n)]
    limit_gb = max(fitting, default=0) / 1024
    wanted = min(had.mem_gb * 2, limit_gb)
    if int(wanted * 1024) <= int(had.mem_gb * 1024):  # in whole MB, as sbatch gets it
        return Retry(record.stage, record.point, cause, before,
                     note=f"already at the largest node's memory, {limit_gb * 1024:.0f} MB")
    override = Override(wanted, before.timeout_min, before.exclude)
    return Retry(record.stage, record.point, cause, override, [f"mem_gb {had.mem_gb:g} -> {wanted:g}"])


def _more_time(run: RunDir, record: JobRecord, cause: str, had: Resources, before: Override,
               nodes: list[NodeCapacity]) -> Retry:
    if checkpointed_since(run.point_dir(record.stage, record.point) / CHECKPOINT_NAME, record.submitted):
        return Retry(record.stage, record.point, cause, before,
                     note="it checkpointed, so it goes on from there with the time it had")
    limit = max((n.time_limit_min for n in nodes), default=math.inf)
    wanted = int(min(had.timeout_min * 2, limit))
    if wanted <= had.timeout_min:
        return Retry(record.stage, record.point, cause, before,
                     note=f"already at the partition's time limit, {limit:g} min")
    override = Override(before.mem_gb, wanted, before.exclude)
    return Retry(record.stage, record.point, cause, override,
                 [f"timeout_min {had.timeout_min} -> {wanted} (no checkpoint progress)"])


def checkpointed_since(checkpoint: Path, submitted: str) -> bool:
    """Whether this checkpoint was written after the job submitted at `submitted` (ISO time) was."""
    try:
        written = checkpoint.stat().st_mtime
    except OSError:
        return False
    return written >= datetime.fromisoformat(submitted).timestamp()


def _without_failed_nodes(record: JobRecord, cause: str, state: SlurmState, had: Resources, before: Override,
                          nodes: list[NodeCapacity]) -> Retry:
    from sfhpc.slurm import expand_hostlist, node_fits

    failed = [name for name in expand_hostlist(state.nodes) if name not in before.exclude]
    exclude = tuple(sorted({*before.exclude, *failed}))
    left = {n.name for n in nodes if n.name not in exclude and node_fits(had, n)}
    if not failed:
        return Retry(record.stage, record.point, cause, before, note="SLURM named no node it failed on")
    if len(left) < had.nodes:
        return Retry(record.stage, record.point, cause, before,
                     note=f"excluding {','.join(failed)} would leave {len(left)} node(s) for a {had.nodes}-node job")
    override = Override(before.mem_gb, before.timeout_min, exclude)
    return Retry(record.stage, record.point, cause, override, [f"exclude {','.join(exclude)}"])
