"""What a run really costs: per stage, the finished points' measured elapsed time, CPU efficiency, memory and GPU-
and CPU-hours, what the points still missing will cost at the measured median, and requests sized from what was used.

SLURM runs: one `sacct` call for the run's jobs (every attempt of a requeued job, with its steps, which carry MaxRSS),
of which terminal records are cached in the run folder (`.slurm-accounting.json`) so that a later call asks only about
jobs that may still move. Local runs: elapsed time from the result files (`started`, `ended`); CPU time and memory
are not measured there. Login-node code: no torch.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sfhpc.config import Resources
from sfhpc.results import atomic_write
from sfhpc.rundir import RunDir
from sfhpc.slurm import TERMINAL_STATES, SlurmError, array_ids, expand_array_ids, run_command

SACCT_FIELDS = "JobID,State,ElapsedRaw,TotalCPU,AllocCPUS,MaxRSS,ReqMem,AllocTRES,NodeList"
TIME_MARGIN = 1.5  # suggested time: the p95 elapsed times this, rounded up to whole minutes
MEMORY_MARGIN = 1.5  # suggested memory: the largest MaxRSS times this, rounded up to 0.25 GB
OVER_REQUEST = 3.0  # a request more than this many times what is used gets a warning
CACHE_NAME = ".slurm-accounting.json"


# ------------------------------------------------------------------------------------ sacct records
@dataclass(frozen=True)
class Attempt:
    """One run of one array task (a requeued task has several), with its steps' usage folded in."""

    job_id: str  # the task id, 12_3
    state: str
    elapsed_s: float
    total_cpu_s: float
    alloc_cpus: int
    gpus: int
    max_rss_mb: float | None  # the largest step's; None when accounting measured none
    req_mem_mb: float | None
    nodes: str

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES


def parse_cpu_time(text: str) -> float:
    """sacct's TotalCPU, [DD-][HH:]MM:SS[.mmm], in seconds (0 for an empty field)."""
    match = re.fullmatch(r"(?:(\d+)-)?(?:(\d+):)?(\d+):(\d+(?:\.\d+)?)", text.strip())
    if not match:
        return 0.0
    days, hours, minutes, seconds = match.groups()
    return int(days or 0) * 86400 + int(hours or 0) * 3600 + int(minutes) * 60 + float(seconds)


_UNITS = {"": 1 / 1024 ** 2, "K": 1 / 1024, "M": 1.0, "G": 1024.0, "T": 1024.0 ** 2}


def parse_memory_mb(text: str) -> float | None:
    """sacct's MaxRSS (bytes, or with a K/M/G/T suffix) or ReqMem (with an n/c suffix on older SLURM: per node or per
    CPU, both read as given) in MB; None for an empty field."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGT]?)[nc]?", text.strip())
    if not match:
        return None
    return float(match.group(1)) * _UNITS[match.group(2)]


def tres_gpus(tres: str) -> int:
    """GPUs in an AllocTRES field: gres/gpu=2 (or gres/gpu:a100=2 alone)."""
    counts = dict(re.findall(r"gres/gpu(:[^=,]+)?=(\d+)", tres))
    return int(counts[""]) if "" in counts else sum(int(n) for n in counts.values())


def parse_accounting(text: str) -> dict[str, list[Attempt]]:
    """`sacct -n -P --duplicates -o SACCT_FIELDS` lines: per array task id, its attempts in order. Step lines
    (12_3.batch, 12_3.0, 12_3.extern) give the attempt before them its MaxRSS; a collapsed record of tasks that
    never started (12_[4-9]) is left out."""
    attempts: dict[str, list[Attempt]] = {}
    for line in text.splitlines():
        fields = line.split("|")
        if len(fields) < 9 or not fields[0]:
            continue
        job_id, state, elapsed, cpu, cpus, rss, req_mem, tres, nodes = fields[:9]
        task, _, step = job_id.partition(".")
        if expand_array_ids(task) != [task]:
            continue
        if step:
            if attempts.get(task):
                last = attempts[task][-1]
                used = parse_memory_mb(rss)
                if used is not None and (last.max_rss_mb is None or used > last.max_rss_mb):
                    attempts[task][-1] = replace(last, max_rss_mb=used)
            continue
        attempts.setdefault(task, []).append(Attempt(
            task, state.split()[0] if state else "", float(elapsed or 0), parse_cpu_time(cpu), int(cpus or 0),
            tres_gpus(tres), parse_memory_mb(rss), parse_memory_mb(req_mem), nodes))
    return attempts


class AccountingCache:
    """Tasks whose every attempt is terminal (and no requeue can follow: only COMPLETED, FAILED, OUT_OF_MEMORY,
    CANCELLED after the fact) never change: kept in the run folder, they are not asked about again."""

    FINAL = {"COMPLETED", "FAILED", "OUT_OF_MEMORY", "CANCELLED", "TIMEOUT", "DEADLINE", "BOOT_FAIL"}

    def __init__(self, path: Path):
        self.path = path
        try:
            self.tasks = {str(task): [_cached_attempt(a) for a in runs]
                          for task, runs in json.loads(path.read_text()).items()}
        except (OSError, ValueError, TypeError, KeyError, AttributeError):  # unreadable or not ours: ask sacct again
            self.tasks = {}

    def save(self, tasks: dict[str, list[Attempt]], finished: set[str]) -> None:
        """Keep the tasks of points that have a result (nothing of theirs can run again) whose attempts all ended."""
        final = {task: runs for task, runs in tasks.items() if task in finished and runs
                 and all(run.state in self.FINAL for run in runs)}
        if final.keys() - self.tasks.keys():
            merged = {**self.tasks, **final}
            atomic_write(self.path, lambda tmp: tmp.write_text(json.dumps(
                {task: [a.__dict__ for a in runs] for task, runs in merged.items()})))


def _cached_attempt(record: dict[str, Any]) -> Attempt:
    """An Attempt from its cached JSON, each field of its type (a KeyError, ValueError or TypeError otherwise)."""
    def optional(value: Any) -> float | None:
        return None if value is None else float(value)

    return Attempt(str(record["job_id"]), str(record["state"]), float(record["elapsed_s"]),
                   float(record["total_cpu_s"]), int(record["alloc_cpus"]), int(record["gpus"]),
                   optional(record["max_rss_mb"]), optional(record["req_mem_mb"]), str(record["nodes"]))


def query_accounting(job_ids: list[str], cache: AccountingCache | None = None
                     ) -> tuple[dict[str, list[Attempt]], int]:
    """Attempts of these array task ids: cached ones, then one sacct call for the rest. (attempts, calls made)."""
    found = {j: cache.tasks[j] for j in job_ids if cache and j in cache.tasks}
    unknown = [j for j in job_ids if j not in found]
    if not unknown:
        return found, 0
    text = run_command(["sacct", "-n", "-P", "--duplicates", "-o", SACCT_FIELDS, "-j", ",".join(array_ids(unknown))])
    asked = parse_accounting(text)
    found.update({j: asked[j] for j in unknown if j in asked})
    return found, 1


# ---------------------------------------------------------------------------------------- summary
@dataclass
class StageCost:
    stage: str
    points: int
    finished: int
    remaining: int
    elapsed_median_s: float | None = None
    elapsed_p95_s: float | None = None
    cpu_efficiency: float | None = None  # TotalCPU / (Elapsed x AllocCPUS), over the stage's attempts
    max_rss_mb: float | None = None
    requested_mem_mb: float | None = None
    point_hours: float = 0.0  # the points' elapsed time, every attempt
    gpu_hours: float | None = None  # from the allocation (SLURM); None for a local run
    cpu_hours: float | None = None
    remaining_gpu_hours: float | None = None
    remaining_cpu_hours: float | None = None
    running: int = 0
    eta_s: float | None = None  # the remaining points, `max(running, 1)` at a time, at the median
    suggested: dict[str, Any] = field(default_factory=dict)  # timeout_min, mem_gb
    warnings: list[str] = field(default_factory=list)


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100), linear between order statistics (numpy's default), without numpy."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def stage_cost(name: str, resources: Resources, point_ids: list[str], done: set[str],
               per_point: dict[str, list[Attempt]], allocated: bool = True) -> StageCost:
    """One stage's cost from its points' attempts (`per_point`: every attempt of every job of a point).
    `allocated`: SLURM's accounting (allocation, CPU time, memory); a local run has elapsed times only, and gets
    no request suggestions (its times say little about a cluster's)."""
    cost = StageCost(name, len(point_ids), len(done & set(point_ids)), len(set(point_ids) - done))
    attempts = [a for p in point_ids for a in per_point.get(p, [])]
    cost.point_hours = sum(a.elapsed_s for a in attempts) / 3600
    if allocated:
        cost.gpu_hours = sum(a.elapsed_s * a.gpus for a in attempts) / 3600
        cost.cpu_hours = sum(a.elapsed_s * a.alloc_cpus for a in attempts) / 3600
    cost.running = sum(1 for p in point_ids if p not in done and any(a.state == "RUNNING"
                                                                     for a in per_point.get(p, [])[-1:]))
    cpu_seconds = sum(a.elapsed_s * a.alloc_cpus for a in attempts if a.terminal)
    if cpu_seconds > 0:
        cost.cpu_efficiency = sum(a.total_cpu_s for a in attempts if a.terminal) / cpu_seconds
    rss = [a.max_rss_mb for a in attempts if a.max_rss_mb is not None]
    cost.max_rss_mb = max(rss) if rss else None
    requests = [a.req_mem_mb for a in attempts if a.req_mem_mb is not None]
    cost.requested_mem_mb = max(requests) if requests else resources.mem_gb * 1024 if allocated else None
    elapsed = [sum(a.elapsed_s for a in per_point[p]) for p in point_ids if p in done and per_point.get(p)]
    if elapsed:
        median, p95 = percentile(elapsed, 50), percentile(elapsed, 95)
        cost.elapsed_median_s, cost.elapsed_p95_s = median, p95
        per_point_hours = median / 3600 * resources.nodes
        cost.remaining_gpu_hours = cost.remaining * per_point_hours * resources.gpus_per_node
        cost.remaining_cpu_hours = cost.remaining * per_point_hours * resources.tasks_per_node * resources.cpus_per_task
        cost.eta_s = math.ceil(cost.remaining / max(cost.running, 1)) * median
        if allocated:
            cost.suggested["timeout_min"] = max(1, math.ceil(p95 * TIME_MARGIN / 60))
            if p95 * OVER_REQUEST < resources.timeout_min * 60:
                cost.warnings.append(f"timeout_min {resources.timeout_min} is more than {OVER_REQUEST:g}x the p95 "
                                     f"elapsed time ({p95 / 60:.1f} min)")
    if cost.max_rss_mb:
        cost.suggested["mem_gb"] = max(0.25, math.ceil(cost.max_rss_mb * MEMORY_MARGIN / 256) / 4)
        if cost.requested_mem_mb and cost.max_rss_mb * OVER_REQUEST < cost.requested_mem_mb:
            cost.warnings.append(f"memory request {cost.requested_mem_mb / 1024:g} GB is more than "
                                 f"{OVER_REQUEST:g}x the largest MaxRSS ({cost.max_rss_mb:.0f} MB)")
    return cost


@dataclass
class RunCost:
    run_dir: Path
    executor: str
    stages: list[StageCost]
    scheduler_calls: int = 0
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"run": str(self.run_dir), "executor": self.executor, "scheduler_calls": self.scheduler_calls,
                "note": self.note, "stages": [stage.__dict__ for stage in self.stages]}


def run_cost(run: RunDir) -> RunCost:
    """The cost of a run so far, and of what is left."""
    manifest = run.read_manifest()
    plan = manifest["plan"]
    done = _done_points(run, plan)
    jobs = [(record, record.job_id) for record in run.all_jobs() if record.executor == "slurm" and record.job_id]
    if manifest.get("executor") == "slurm" or jobs:
        cache = AccountingCache(run.path / CACHE_NAME)
        try:
            attempts, calls = query_accounting(sorted({job_id for _, job_id in jobs}), cache)
        except SlurmError as err:
            return RunCost(run.path, "slurm", [], 1, f"sacct did not answer ({err}): no accounting to read")
        cache.save(attempts, {job_id for record, job_id in jobs if record.point in done.get(record.stage, set())})
        per_point: dict[tuple[str, str], list[Attempt]] = {}
        for record, job_id in jobs:
            per_point.setdefault((record.stage, record.point), []).extend(attempts.get(job_id, []))
        note = "" if attempts or not jobs else "sacct knows none of the run's jobs (accounting off, or purged)"
        executor, calls_made = "slurm", calls
    else:
        per_point, note = _local_attempts(run, plan), ("local run: elapsed time from the result files; CPU time and "
                                                       "memory are measured by SLURM accounting only")
        executor, calls_made = manifest.get("executor", "local"), 0
    stages = []
    for stage in plan["stages"]:
        ids = [point["id"] for point in stage["points"]]
        stages.append(stage_cost(stage["name"], Resources.model_validate(stage["resources"]), ids,
                                 done.get(stage["name"], set()),
                                 {p: per_point.get((stage["name"], p), []) for p in ids}, executor == "slurm"))
    return RunCost(run.path, executor, stages, calls_made, note)


def _done_points(run: RunDir, plan: dict[str, Any]) -> dict[str, set[str]]:
    """Per stage, the points with a valid result (the result index's verdicts)."""
    index = run.result_index()
    keys = [(stage["name"], point["id"]) for stage in plan["stages"] for point in stage["points"]]
    checks = index.check_many([(run.result_path(*key), key[1]) for key in keys])
    index.save()
    done: dict[str, set[str]] = {}
    for (stage, point_id), check in zip(keys, checks, strict=True):
        if check.state == "ok":
            done.setdefault(stage, set()).add(point_id)
    return done


def _local_attempts(run: RunDir, plan: dict[str, Any]) -> dict[tuple[str, str], list[Attempt]]:
    """A local run's points' elapsed time, from their result files' `started` and `ended`."""
    from datetime import datetime

    import h5py

    found: dict[tuple[str, str], list[Attempt]] = {}
    for stage in plan["stages"]:
        for point in stage["points"]:
            path = run.result_path(stage["name"], point["id"])
            try:
                with h5py.File(path, "r") as result:
                    started, ended = (datetime.fromisoformat(str(result.attrs[key])) for key in ("started", "ended"))
            except (OSError, KeyError, ValueError):
                continue
            found[(stage["name"], point["id"])] = [Attempt(point["id"], "COMPLETED", (ended - started).total_seconds(),
                                                           0.0, 0, 0, None, None, "")]
    return found


def measured_minutes(run: RunDir) -> dict[str, float]:
    """Per stage with finished points, their median elapsed minutes per point (every attempt counted): what
    `--calibrate` puts in place of the job files' expected_minutes."""
    return {stage.stage: stage.elapsed_median_s / 60 for stage in run_cost(run).stages
            if stage.elapsed_median_s is not None}
