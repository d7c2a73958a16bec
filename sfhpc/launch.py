"""Submitting a sweep through submitit: local, debug and SLURM executors, resumable launches.

Login-node code: never imports torch. The pickled job is sfhpc.job.PointJob, which imports its stage's code only
when it runs on the node.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import re
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import submitit
import yaml

from sfhpc.config import PROJECT_ROOT
from sfhpc.errors import RunError
from sfhpc.forkpool import ForkedJob, ForkPool
from sfhpc.job import JobInfo, PointConfig, PointJob, stage_of
from sfhpc.results import RESULT_NAME, ResultIndex, git_sha, now_iso
from sfhpc.retry import Override, Retry, carried_overrides
from sfhpc.rundir import CHECKPOINT_NAME, JobRecord, RunDir, SetAside, process_identity, terminate_process
from sfhpc.snapshot import CODE_DIR, CodeSnapshot, freeze_code, plan_snapshot
from sfhpc.status import active_points
from sfhpc.sweep import Plan, Point, StagePlan, design_fingerprint, setting_changes


# ------------------------------------------------------------------------------------- launching
@dataclass
class LaunchReport:
    run_dir: Path
    executor: str
    dry_run: bool
    to_run: dict[str, list[str]] = field(default_factory=dict)  # stage -> point ids submitted (or to submit)
    skipped_done: dict[str, int] = field(default_factory=dict)
    skipped_active: dict[str, list[str]] = field(default_factory=dict)
    blocked: dict[str, list[str]] = field(default_factory=dict)  # upstream failed: not run
    finished: dict[str, dict[str, str]] = field(default_factory=dict)  # local/debug: point -> done | failed
    # SLURM: stage, job id (None in a dry run), tasks, dependency, path of its sbatch script
    arrays: list[dict[str, Any]] = field(default_factory=list)
    restored: dict[str, list[str]] = field(default_factory=dict)  # local --force: rerun failed, earlier result kept
    settings_changed: list[str] = field(default_factory=list)  # resources, job files, cluster: since the last launch
    retries: list[dict[str, Any]] = field(default_factory=list)  # resubmit --failed: sfhpc.retry.Retry.to_json()


# (stage, point_id, event): event is "queued", "started", "done", "failed" or "blocked"
ProgressHook = Callable[[str, str, str], None]


def resolve_executor(name: str) -> str:
    if name == "auto":
        return "slurm" if shutil.which("sbatch") else "local"
    return name


def launch(plan: Plan, *, executor: str | None = None, output: Path | None = None, force: bool = False,
           dry_run: bool = False, allow_changed: bool = False, parallel: int = 1, throttle: int | None = None,
           only: set[tuple[str, str]] | None = None, progress: ProgressHook | None = None,
           retries: dict[tuple[str, str], Retry] | None = None) -> LaunchReport:
    """Submit every point of `plan` without a valid result (or, with `only`, those of these (stage, point) keys).
    Local and debug executors wait for the jobs; SLURM returns once every stage is queued.

    Holds the run folder's lock (`RunDir.exclusive`; a RunError if another launch, resubmit or cancel holds it) from
    before it writes anything. --force sets finished results and checkpoints aside and deletes them only once their
    replacement is on its way (submitted; locally, written); a failed submission puts them back and its RunError
    says so. A dry run writes nothing in the run folder; for SLURM it writes the exact sbatch scripts it would
    submit under a new temporary folder (`report.arrays[i]["sbatch"]`, with "job_id" None).

    SLURM: a point is submitted with the resource overrides of its last submission (sfhpc.retry), or those of its
    entry in `retries` (resubmit --failed's right-sizing), which are recorded with its job."""
    kind = resolve_executor(executor or plan.sweep.executor)
    run = RunDir(output or Path(plan.sweep.output or Path("runs") / plan.sweep.name))
    max_array = _max_array_size(dry_run) if kind == "slurm" else 0  # asked before anything is written
    report = LaunchReport(run.path, kind, dry_run)
    with _holding(run, f"{kind} launch", dry_run):
        manifest = _checked_manifest(run, plan, kind, allow_changed, report)
        index = run.result_index()
        todo = _points_to_run(run, plan, index, force, only, report)
        retries = {key: retry for key, retry in (retries or {}).items() if key[1] in report.to_run.get(key[0], ())}
        report.retries = [retry.to_json() for retry in retries.values()]
        overrides = {**carried_overrides(run.latest_jobs()), **{key: retry.override for key, retry in retries.items()}}
        if kind == "slurm":
            _check_requests(plan, todo, dry_run, overrides)
        if dry_run:
            if kind == "slurm":
                code, _ = plan_snapshot(run.path)  # where the code would go; nothing is copied
                _queue_arrays(run, plan, todo, throttle, max_array, index, report, _DryRunScripts(run), code,
                              overrides)
            return report
        code = freeze_code(run.path)
        _record_code(manifest, code)
        run.write_manifest(manifest)
        (run.path / "sweep.yaml").write_text(plan.source.read_text())
        configs = {(stage.name, point.id): point_config(run, plan, stage, point, manifest["git_sha"])
                   for stage in plan.stages for point in todo[stage.name]}
        dumped: dict[str, str] = {}
        aside = SetAside()
        try:
            for key, config in configs.items():
                _prepare_point_dir(run, config, dumped)
                # An earlier attempt's error goes once this one is submitted or starts; locally, what --force
                # replaces is set aside only when its point starts (_run_locally).
                aside.move(key, [run.error_path(*key), *(_forced_out(run, *key) if force and kind == "slurm" else [])])
            if kind == "slurm":
                submitter = _SlurmSubmitter(run, configs, aside, report, overrides, retries)
                _queue_arrays(run, plan, todo, throttle, max_array, index, report, submitter, code, overrides)
            else:
                _run_locally(run, plan, todo, configs, kind, parallel, report, progress, index, aside, force, code)
        finally:
            aside.restore()  # whatever is still set aside never got its replacement
        index.save()
    return report


@contextlib.contextmanager
def _holding(run: RunDir, action: str, dry_run: bool) -> Iterator[None]:
    """The run folder's lock for a launch; none for a dry run, which writes nothing there. A folder this launch made
    is removed again when the launch fails before any job was submitted or started: no half-made run is left."""
    if dry_run:
        yield
        return
    try:
        run.path.mkdir(parents=True)
        made = True
    except OSError:  # there already (or not makeable: `exclusive` says why)
        made = False
    try:
        with run.exclusive(action):
            yield
    except BaseException:
        if made and not any(record.job_id for record in run.all_jobs()):
            shutil.rmtree(run.path, ignore_errors=True)
        raise


def _max_array_size(dry_run: bool) -> int:
    """SLURM's MaxArraySize. A launch that cannot reach SLURM stops here, before it has changed anything; a dry run
    that cannot renders its scripts for SLURM's default."""
    from sfhpc import slurm

    try:
        return slurm.max_array_size()
    except slurm.SlurmError as err:
        if dry_run:
            return slurm.DEFAULT_MAX_ARRAY_SIZE
        raise RunError(f"cannot reach SLURM: {err}. Nothing was submitted or changed; check that `sinfo` answers "
                       "on this machine, or launch with --executor local.") from None


def _check_requests(plan: Plan, todo: dict[str, list[Point]], dry_run: bool,
                    overrides: dict[tuple[str, str], Override]) -> None:
    """A RunError naming every stage with points to submit whose request (with a point's overrides, when it has
    some) no node of the partition can satisfy (one sinfo call), before any array is submitted. A dry run that
    cannot reach sinfo skips the check."""
    from sfhpc import slurm

    try:
        nodes = slurm.partition_nodes(plan.cluster.partition)
    except slurm.SlurmError as err:
        if dry_run:
            return
        raise RunError(f"cannot check the requests against the cluster's nodes: {err}. Nothing was submitted or "
                       "changed.") from None
    requests = {(stage.name, overrides.get((stage.name, p.id), Override())): stage.resources
                for stage in plan.stages for p in todo.get(stage.name, [])}
    problems = list(dict.fromkeys(f"{stage}: {why}" for (stage, override), resources in requests.items()
                                  for why in [slurm.unsatisfiable(override.apply(resources), nodes)] if why))
    if problems:
        raise RunError("no node can run these requests, so nothing was submitted:\n  " + "\n  ".join(problems)
                       + "\nLower them in the sweep's stage `resources` (or the cluster profile's `resources`), or "
                       "pick another partition (`cluster: {partition: ...}`).")


def _points_to_run(run: RunDir, plan: Plan, index: ResultIndex, force: bool, only: set[tuple[str, str]] | None,
                   report: LaunchReport) -> dict[str, list[Point]]:
    """Per stage, the points to submit: wanted (`only`), without a valid result (unless `force`), and without a
    job that may still deliver one. The report counts those left out."""
    pending = {stage.name: [p for p in stage.points if (only is None or (stage.name, p.id) in only)
                            and (force or not _has_result(run, index, stage.name, p.id))] for stage in plan.stages}
    active = active_points(run, [(stage, p.id) for stage, points in pending.items() for p in points])
    todo: dict[str, list[Point]] = {}
    for stage in plan.stages:
        report.skipped_done[stage.name] = len(stage.points) - len(pending[stage.name])
        report.skipped_active[stage.name] = [p.id for p in pending[stage.name] if (stage.name, p.id) in active]
        todo[stage.name] = [p for p in pending[stage.name] if (stage.name, p.id) not in active]
        report.to_run[stage.name] = [p.id for p in todo[stage.name]]
    return todo


def _forced_out(run: RunDir, stage: str, point_id: str) -> list[Path]:
    """What --force must keep from a point's new attempt: its result, and the checkpoint it would resume from."""
    return [run.result_path(stage, point_id), run.point_dir(stage, point_id) / CHECKPOINT_NAME]


def _checked_manifest(run: RunDir, plan: Plan, kind: str, allow_changed: bool, report: LaunchReport
                      ) -> dict[str, Any]:
    """The manifest this launch writes: a RunError when the run folder was launched from another design (unless
    `allow_changed`); changed resources and cluster settings go into the report and the manifest's `changes`."""
    manifest: dict[str, Any] = {
        "schema_version": 1,
        "name": plan.sweep.name,
        "sweep_file": str(plan.source.resolve()),
        "fingerprint": plan.fingerprint(),
        "git_sha": git_sha(PROJECT_ROOT),
        "executor": kind,
        "created": now_iso(),
        "plan": plan.to_json(),
    }
    if run.exists():
        old = run.read_manifest()
        if _design_of(old) != manifest["fingerprint"] and not allow_changed:
            raise RunError(
                f"{run.path} was launched from a different sweep ({old.get('sweep_file')}; "
                f"{describe_change(old['plan'], manifest['plan'])}). Relaunching would mix results of two designs. "
                "Use --allow-changed to update this run (finished points whose settings did not change are kept), "
                "or --output for a new run folder."
            )
        if "code" in old:
            manifest["code"] = old["code"]  # the last launch's, until this one records its own (_record_code)
        manifest["created"] = old.get("created", manifest["created"])
        manifest["updated"] = now_iso()
        report.settings_changed = setting_changes(old["plan"], manifest["plan"]) if "plan" in old else []
        manifest["changes"] = old.get("changes", []) + ([{"at": manifest["updated"], "settings":
                                                          report.settings_changed}] if report.settings_changed else [])
    return manifest


def _design_of(manifest: dict[str, Any]) -> str | None:
    """The design fingerprint of the plan a run folder was launched with (recomputed from the plan it keeps, so
    that a folder made before resources were left out of the fingerprint compares by design too)."""
    try:
        return design_fingerprint(manifest["plan"])
    except (KeyError, TypeError):
        return manifest.get("fingerprint")


def _record_code(manifest: dict[str, Any], code: CodeSnapshot) -> None:
    """The manifest's note of the code this launch's jobs run (RUN/code/<digest>); a change since the last launch
    goes into its `changes`."""
    before = manifest.get("code", {}).get("digest")
    manifest["code"] = {"digest": code.digest, "folder": f"{CODE_DIR}/{code.digest}", "git_sha": code.git_sha,
                        "uncommitted_changes": bool(code.diff)}
    if before and before != code.digest:
        manifest["changes"] = [*manifest.get("changes", []),
                               {"at": now_iso(), "code": f"{before} -> {code.digest} (points submitted from now on "
                                                         "run the new copy; queued ones keep theirs)"}]


def describe_change(old_plan: dict[str, Any], new_plan: dict[str, Any]) -> str:
    """A short human description of how two resolved plans differ."""
    old_ids = {p["id"] for s in old_plan["stages"] for p in s["points"]}
    new_ids = {p["id"] for s in new_plan["stages"] for p in s["points"]}
    return f"{len(new_ids - old_ids)} new points, {len(old_ids - new_ids)} points no longer in the sweep"


def _prepare_point_dir(run: RunDir, config: dict[str, Any], dumped: dict[str, str]) -> None:
    folder = run.point_dir(config["stage"], config["point_id"])
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(config_yaml(config, dumped))


_YAML_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)  # libyaml's emitter where PyYAML was built with it


def config_yaml(config: dict[str, Any], dumped: dict[str, str]) -> str:
    """`yaml.safe_dump(config, sort_keys=False)`, fast enough for 10,000 points. A block mapping's YAML is its
    entries' YAML one after the other (a nested mapping's entries under its key's line), and the points of a sweep
    share most entries (data, resources, most params), so each distinct entry is dumped once and kept in `dumped`."""
    parts = []
    for key, value in config.items():
        if isinstance(value, dict) and value:  # (an empty mapping is written inline, `{}`)
            entries = [_dump_once({key: {name: item}}, dumped).split("\n", 1) for name, item in value.items()]
            parts += [entries[0][0] + "\n", *(body for _, body in entries)]
        else:
            parts.append(_dump_once({key: value}, dumped))
    return "".join(parts)


def _dump_once(entry: dict[str, Any], dumped: dict[str, str]) -> str:
    memo = repr(entry)  # unlike JSON, tells 1 from '1' and True, and int keys from str keys
    if memo not in dumped:
        dumped[memo] = yaml.dump(entry, Dumper=_YAML_DUMPER, sort_keys=False)
    return dumped[memo]


def point_config(run: RunDir, plan: Plan, stage: StagePlan, point: Point, sha: str) -> dict[str, Any]:
    """The resolved configuration a stage runs with (sfhpc.job.PointConfig, built here from parts that expansion has
    validated), as the JSON mapping that config.yaml, the pickled job and the result file carry. `threads` is None
    (the job's CPUs decide); a local launch sets it for the points that share this machine."""
    return PointConfig.model_construct(
        stage=stage.name, point_id=point.id, params=point.params, data=plan.sweep.data, upstream=point.upstream,
        resources=stage.resources, job=JobInfo.model_construct(entry=stage.entry, shards=stage.shards),
        run_dir=str(run.path.resolve()), git_sha=sha, threads=None,
    ).model_dump(mode="json")


# -------------------------------------------------------------------------- local and debug runs
def _run_locally(run: RunDir, plan: Plan, todo: dict[str, list[Point]], configs: dict[tuple[str, str], dict[str, Any]],
                 kind: str, parallel: int, report: LaunchReport, progress: ProgressHook | None,
                 index: ResultIndex, aside: SetAside, force: bool, code: CodeSnapshot) -> None:
    """Run every point as soon as its inputs exist, at most `parallel` at a time, in plan order: upstream stages
    first, and a finished model's evaluations start while other models still train (no stage waits for a whole
    stage before it). A point whose input has no result is blocked, not run. Each point is its own process (local),
    so that one crash loses nothing else; `parallel` processes share the CPUs' threads. With `force`, a point's
    earlier result and checkpoint are set aside as it starts, and put back if it fails."""
    threads = max(1, (os.cpu_count() or 1) // parallel)
    queue = [(stage, point) for stage in plan.stages for point in todo[stage.name]]
    for stage in plan.stages:
        report.blocked[stage.name], report.finished[stage.name] = [], {}
    run.record_jobs([_record(run, stage.name, point.id, kind, None) for stage, point in queue])
    for stage, point in queue:
        if progress:
            progress(stage.name, point.id, "queued")
    coming = {f"{stage.name}/{point.id}" for stage, point in queue}  # produced by this launch, once they finish
    outcome: dict[str, str] = {}  # "stage/point" -> done | failed | blocked (this launch) | absent (an input)
    starter = _LocalStarter(run, kind, [stage for stage in plan.stages if todo[stage.name]], code)
    running: list[tuple[StagePlan, Point, Any]] = []
    try:
        while queue or running:
            for stage, point in list(queue):
                inputs = {key: _input_state(run, index, key, coming, outcome) for key in point.upstream}
                missing = [key for key, state in inputs.items() if state == "missing"]
                if missing:
                    queue.remove((stage, point))
                    aside.discard([(stage.name, point.id)])
                    run.record_jobs([_record(run, stage.name, point.id, kind, None, blocked_by=missing[0])])
                    _settle(stage.name, point.id, "blocked", outcome, report, progress)
                elif "waiting" not in inputs.values() and len(running) < parallel:
                    queue.remove((stage, point))
                    config = {**configs[stage.name, point.id], "threads": threads}
                    aside.discard([(stage.name, point.id)])
                    if force:
                        aside.move((stage.name, point.id), _forced_out(run, stage.name, point.id))
                    job = starter.start(stage, PointJob(str(run.path), stage.name, stage.entry, point.id, config))
                    run.record_jobs([_record(run, stage.name, point.id, kind, str(job.job_id),
                                             job_process=starter.process_of(job))])
                    if progress:
                        progress(stage.name, point.id, "started")
                    running.append((stage, point, job))
            for stage, point, job in [entry for entry in running if kind == "debug" or entry[2].done()]:
                running.remove((stage, point, job))
                state = _finish(job, run, index, stage.name, point.id)
                _keep_or_put_back(aside, stage.name, point.id, state, report)
                _settle(stage.name, point.id, state, outcome, report, progress)
            if running:
                time.sleep(0.1)
    except BaseException:  # Ctrl-C, or SIGTERM from `sfhpc cancel`: the points this launch runs stop with it
        for _, _, job in running:
            starter.stop(job)
        raise
    finally:
        starter.close()


class _LocalStarter:
    """Starts points on this machine. Local points of one task are forked from a warm process that has imported
    torch and the stages once (:mod:`sfhpc.forkpool`: 3.3 CPU-seconds saved per point); points of several
    tasks (local DDP) and debug points go through submitit's LocalExecutor and DebugExecutor."""

    def __init__(self, run: RunDir, kind: str, stages: list[StagePlan], code: CodeSnapshot):
        self.run, self.kind, self.code = run, kind, code
        self.entries = sorted({stage_of(stage.entry).runner_module() for stage in stages})
        self.pool: ForkPool | None = None
        self.executors: dict[str, submitit.Executor] = {}

    def start(self, stage: StagePlan, job: PointJob) -> Any:
        if self.kind == "local" and stage.resources.tasks_per_node == 1:
            if self.pool is None:
                self.pool = ForkPool(self.run.logs, self.entries, self.code.environment())
            return self.pool.submit(job, stage.resources.timeout_min)
        return self.start_with_submitit(stage, job)

    def start_with_submitit(self, stage: StagePlan, job: PointJob) -> Any:
        """A fresh Python per point (submitit's local or debug executor), whatever its number of tasks."""
        if stage.name not in self.executors:
            self.executors[stage.name] = _local_executor(self.run, self.kind, stage)
        return self.executors[stage.name].submit(job)

    def process_of(self, job: Any) -> str | None:
        """The started job's `process_identity`; None for a debug job, which runs inside the launcher."""
        if isinstance(job, ForkedJob):
            return job.process
        return process_identity(int(job.job_id)) if self.kind == "local" else None

    def stop(self, job: Any) -> None:
        """SIGTERM a running point (a forked one only if it is still the process recorded)."""
        if isinstance(job, ForkedJob):
            terminate_process(int(job.job_id), job.process)
        else:
            job.cancel(check=False)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()


def _keep_or_put_back(aside: SetAside, stage: str, point_id: str, state: str, report: LaunchReport) -> None:
    """A point's files set aside by --force: gone once its new result exists; back in place if it failed."""
    if state == "done":
        aside.discard([(stage, point_id)])
    elif RESULT_NAME in [path.name for path in aside.restore([(stage, point_id)])]:
        report.restored.setdefault(stage, []).append(point_id)


def _input_state(run: RunDir, index: ResultIndex, key: str, coming: set[str], outcome: dict[str, str]) -> str:
    """An upstream point, for a point that reads it: ready | waiting (this launch will produce it) | missing.
    An input this launch does not produce is looked up once and remembered in `outcome`."""
    if key not in outcome and key not in coming:
        outcome[key] = "done" if _has_result(run, index, *key.split("/", 1)) else "absent"
    if key in outcome:
        return "ready" if outcome[key] == "done" else "missing"
    return "waiting"


def _settle(stage: str, point_id: str, state: str, outcome: dict[str, str], report: LaunchReport,
            progress: ProgressHook | None) -> None:
    outcome[f"{stage}/{point_id}"] = state
    if state == "blocked":
        report.blocked[stage].append(point_id)
    else:
        report.finished[stage][point_id] = state
    if progress:
        progress(stage, point_id, state)


def _local_executor(run: RunDir, kind: str, stage: StagePlan) -> submitit.Executor:
    folder = run.logs / "%j"
    if kind == "debug":
        return submitit.DebugExecutor(folder=folder)
    executor = submitit.LocalExecutor(folder=folder)
    executor.update_parameters(timeout_min=stage.resources.timeout_min,
                               tasks_per_node=stage.resources.tasks_per_node)
    return executor


def _finish(job: Any, run: RunDir, index: ResultIndex, stage: str, point_id: str) -> str:
    try:
        job.result()
    except Exception:  # the error is in error.txt and the job's log; status shows it
        pass
    return "done" if _has_result(run, index, stage, point_id) else "failed"


def _has_result(run: RunDir, index: ResultIndex, stage: str, point_id: str) -> bool:
    return index.check(run.result_path(stage, point_id), point_id).state == "ok"


def _record(run: RunDir, stage: str, point_id: str, kind: str, job_id: str | None,
            blocked_by: str | None = None, job_process: str | None = None) -> JobRecord:
    return JobRecord(stage=stage, point=point_id, executor=kind, job_id=job_id,
                     log_dir=str(run.logs.relative_to(run.path) / job_id) if job_id else "",
                     submitted=now_iso(), launcher_pid=os.getpid(), blocked_by=blocked_by, job_process=job_process,
                     launcher_process=_launcher_process(os.getpid()))


@functools.cache
def _launcher_process(pid: int) -> str | None:
    """This launcher's `process_identity`, read once: it is recorded with every job (10,000 for a large sweep)."""
    return process_identity(pid)


# --------------------------------------------------------------------------------------------- SLURM
# (stage, its points, submitit parameters) -> (a job id per point, the array's sbatch script)
ArraySubmitter = Callable[[StagePlan, list[Point], dict[str, Any]], tuple[list[str], Path]]


def _queue_arrays(run: RunDir, plan: Plan, todo: dict[str, list[Point]], throttle: int | None, max_array: int,
                  index: ResultIndex, report: LaunchReport, submit: ArraySubmitter, code: CodeSnapshot,
                  overrides: dict[tuple[str, str], Override]) -> None:
    """One job array per stage and chunk (chunks of at most MaxArraySize tasks, indexed from 0), each waiting on
    the arrays of its upstream points; points with resource overrides (sfhpc.retry) go in an array of their own per
    override. `submit` queues each array (or, in a dry run, writes its script). Every job imports sfhpc from the
    run's copy of the code, `code`, and never from the working tree."""
    from sfhpc import slurm

    # Earlier jobs matter only for inputs still to come: a finished one may be gone from slurmctld already, and
    # sbatch refuses a dependency on a job it no longer knows.
    previous = {key: record for key, record in run.latest_jobs().items() if not _has_result(run, index, *key)}
    producer: dict[str, str] = {}  # "stage/point" -> job id that will produce it, this launch
    arrays_of: dict[str, list[tuple[str, list[str]]]] = {}  # stage -> [(array id, [point keys])]
    for stage in plan.stages:
        for override, chunk in _by_override(stage, todo[stage.name], overrides, max_array):
            dependency = _dependency(chunk, producer, previous, arrays_of)
            params = slurm.executor_parameters(override.apply(stage.resources), plan.cluster,
                                               slurm.job_name(plan.sweep.name, stage.name), dependency, throttle)
            params["setup"] = [*params["setup"], *code.setup_lines()]
            params["additional_parameters"].update(override.sbatch_options(params["additional_parameters"]))
            job_ids, script = submit(stage, chunk, params)
            array_id = job_ids[0].split("_", 1)[0]
            keys = [f"{stage.name}/{p.id}" for p in chunk]
            producer.update(zip(keys, job_ids, strict=True))
            arrays_of.setdefault(stage.name, []).append((array_id, keys))
            report.arrays.append({"stage": stage.name, "job_id": None if report.dry_run else array_id,
                                  "tasks": len(chunk), "dependency": dependency, "sbatch": str(script)})


def _by_override(stage: StagePlan, points: list[Point], overrides: dict[tuple[str, str], Override], max_array: int
                 ) -> list[tuple[Override, list[Point]]]:
    """The stage's points in chunks of at most `max_array` that share their resource overrides; the points without
    any (nearly always all of them) first, in their order."""
    from sfhpc import slurm

    groups: dict[Override, list[Point]] = {Override(): []}
    for point in points:
        groups.setdefault(overrides.get((stage.name, point.id), Override()), []).append(point)
    return [(override, chunk) for override, members in groups.items() for chunk in slurm.chunks(members, max_array)]


class _SlurmSubmitter:
    """Queues an array through submitit and records its jobs; what was set aside for its points goes once sbatch
    has accepted it. When a submission fails, everything still set aside is put back, and the RunError says so."""

    def __init__(self, run: RunDir, configs: dict[tuple[str, str], dict[str, Any]], aside: SetAside,
                 report: LaunchReport, overrides: dict[tuple[str, str], Override],
                 retries: dict[tuple[str, str], Retry]):
        self.run, self.configs, self.aside, self.report = run, configs, aside, report
        self.overrides, self.retries = overrides, retries

    def __call__(self, stage: StagePlan, chunk: list[Point], params: dict[str, Any]) -> tuple[list[str], Path]:
        try:
            executor = submitit.SlurmExecutor(folder=self.run.logs / "%j", max_num_timeout=stage.resources.max_requeues)
            executor.update_parameters(**params)
            # submitit prints sbatch's complaint itself when it refuses; ours below says it once, with what to do.
            with contextlib.redirect_stderr(io.StringIO()), executor.batch():  # (batch submits on its exit)
                jobs = [executor.submit(PointJob(str(self.run.path), stage.name, stage.entry, p.id,
                                                 self.configs[stage.name, p.id])) for p in chunk]
        except (RuntimeError, OSError) as err:  # sbatch refused (FailedJobError), missing, or SLURM unreachable
            raise self._failed(stage.name, len(chunk), err) from None
        self.aside.discard((stage.name, p.id) for p in chunk)
        job_ids = [str(job.job_id) for job in jobs]
        self.run.record_jobs([self._with_resources(_record(self.run, stage.name, p.id, "slurm", job_id))
                              for p, job_id in zip(chunk, job_ids, strict=True)])
        return job_ids, _keep_sbatch_script(self.run, stage.name, job_ids[0].split("_", 1)[0])

    def _with_resources(self, record: JobRecord) -> JobRecord:
        key = (record.stage, record.point)
        override, retry = self.overrides.get(key), self.retries.get(key)
        return replace(record, resources=override.to_json() if override else None,
                       retry=retry.describe() if retry else None)

    def _failed(self, stage: str, n_points: int, err: Exception) -> RunError:
        restored = [path.name for path in self.aside.restore()]
        refused = isinstance(err, submitit.core.utils.FailedJobError)
        cause = " / ".join(line.strip() for line in str(err).splitlines() if line.strip())
        message = (f"sbatch refused the {stage} array ({n_points} points): {cause}." if refused else
                   f"could not submit the {stage} array ({n_points} points): {cause}.")
        if RESULT_NAME in restored or CHECKPOINT_NAME in restored:
            message += (f" Nothing was lost: the {restored.count(RESULT_NAME)} results and "
                        f"{restored.count(CHECKPOINT_NAME)} checkpoints that --force had set aside are back in place.")
        if self.report.arrays:
            message += " Arrays submitted before it stay queued."
        fix = ("fix the resources (jobs/*.yaml, the sweep's `resources` or `cluster`)" if refused else
               "check that SLURM answers on this machine (`sinfo`, `sbatch --version`)")
        return RunError(f"{message} To submit what is missing, {fix} and launch again.")


class _DryRunScripts:
    """Writes, instead of submitting, the exact sbatch script of each array under a new temporary folder: a dry run
    writes nothing in the run folder. An array waiting on another of this launch names it by a placeholder (DRYRUN1,
    ...), which a comment at the top of its script explains: sbatch gives the real id only on submission."""

    def __init__(self, run: RunDir):
        self.run, self.folder = run, Path(tempfile.mkdtemp(prefix="sfhpc-dry-run-"))
        self.stage_of: dict[str, str] = {}  # placeholder -> stage

    def __call__(self, stage: StagePlan, chunk: list[Point], params: dict[str, Any]) -> tuple[list[str], Path]:
        from sfhpc import slurm

        placeholder = f"DRYRUN{len(self.stage_of) + 1}"
        self.stage_of[placeholder] = stage.name
        # What submitit writes: its folder made absolute, the launcher's own Python (see SlurmExecutor).
        text = slurm.sbatch_text(params, str((self.run.logs / "%j").absolute()), len(chunk),
                                 python=shlex.quote(sys.executable))
        waits_on = dict.fromkeys(re.findall(r"DRYRUN\d+", params["additional_parameters"].get("dependency", "")))
        notes = [f"# sfhpc --dry-run: {name} stands for the job id sbatch will give the {self.stage_of[name]} array"
                 for name in waits_on]
        shebang, body = text.split("\n", 1)
        path = self.folder / f"{len(self.stage_of)}-{stage.name}.sh"
        path.write_text("\n".join([shebang, *notes, body]))
        return [f"{placeholder}_{i}" for i in range(len(chunk))], path


def _dependency(chunk: list[Point], producer: dict[str, str], previous: dict[tuple[str, str], JobRecord],
                arrays_of: dict[str, list[tuple[str, list[str]]]]) -> str | None:
    """What this chunk waits for: aftercorr on one upstream array whose task i produces point i's only input,
    else afterok on every job that produces an input still missing."""
    from sfhpc import slurm

    inputs = [p.upstream for p in chunk]
    if all(len(i) == 1 for i in inputs):
        wanted = [i[0] for i in inputs]
        for arrays in arrays_of.values():
            for array_id, keys in arrays:
                if keys == wanted:
                    return slurm.dependency_for([array_id], aligned=True)
    jobs: list[str] = []
    for key in dict.fromkeys(k for i in inputs for k in i):
        job = producer.get(key) or _previous_job(previous, key)
        if job:
            jobs.append(job)
    return slurm.dependency_for(_collapse_tasks(jobs, arrays_of), aligned=False)


def _previous_job(previous: dict[tuple[str, str], JobRecord], key: str) -> str | None:
    stage, _, point_id = key.partition("/")
    record = previous.get((stage, point_id))
    return record.job_id if record and record.executor == "slurm" else None


def _collapse_tasks(jobs: list[str], arrays_of: dict[str, list[tuple[str, list[str]]]]) -> list[str]:
    """Whole arrays instead of all of their tasks: shorter dependency strings."""
    sizes = {array_id: len(keys) for arrays in arrays_of.values() for array_id, keys in arrays}
    by_array: dict[str, list[str]] = {}
    for job in jobs:
        by_array.setdefault(job.split("_", 1)[0], []).append(job)
    out: list[str] = []
    for array_id, tasks in by_array.items():
        out += [array_id] if sizes.get(array_id) == len(tasks) else tasks
    return out


def _keep_sbatch_script(run: RunDir, stage: str, array_id: str) -> Path:
    """Provenance: a copy of the exact sbatch script of every array, under sbatch/ in the run folder."""
    source = run.logs / array_id / f"{array_id}_submission.sh"
    target = run.path / "sbatch" / f"{stage}-{array_id}.sh"
    target.parent.mkdir(exist_ok=True)
    if source.exists():
        shutil.copyfile(source.resolve(), target)
    return target
