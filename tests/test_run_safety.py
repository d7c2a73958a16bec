"""A run folder on a shared machine: no result lost before its replacement exists, no process signalled that is not
provably the run's own, one launch / resubmit / cancel at a time, dry runs that show the exact sbatch scripts, and a
clear error for a folder that is not sfhpc's. The tests marked slurm run against the real test cluster."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sfhpc.cli import app
from sfhpc.control import cancel_run, resubmit_run
from sfhpc.errors import RunError
from sfhpc.forkpool import ForkPool
from sfhpc.job import PointJob
from sfhpc.launch import launch
from sfhpc.results import Provenance, now_iso, write_result
from sfhpc.rundir import JobRecord, RunDir, SetAside, process_identity
from sfhpc.status import run_status
from sfhpc.sweep import expand_file

from conftest import toy_config

runner = CliRunner()
SFHPC = Path(sys.executable).parent / "sfhpc"

SWEEP = """\
name: {name}
executor: slurm
cluster:
  profile: testcluster
{cluster}
data: {{image_size: 32, n_classes: 4, n_train: 64, n_val: 32, n_test: 32}}
grid:
  band: [{bands}]
stages:
  train:
    params: {{width: 4, epochs: 1, batch_size: 32}}
    resources: {{mem_gb: 1, cpus_per_task: 1, timeout_min: 10}}
{extra}"""
CBM = "  cbm:\n    params: {cbm_images: 16}\n    resources: {mem_gb: 1, cpus_per_task: 1}\n"


def make_sweep(write_sweep, name: str, cluster: str = "", bands: str = "none, lsf", extra: str = "") -> Path:
    return write_sweep(SWEEP.format(name=name, cluster=cluster, bands=bands, extra=extra), f"{name}.yaml")


def sfhpc(*args, code: int = 0) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    return result.output


def kept_files(run: Path) -> dict[str, bytes]:
    """Every result and checkpoint of the run, by path, as bytes."""
    return {str(p.relative_to(run)): p.read_bytes() for name in ("result.h5", "checkpoint.pt")
            for p in run.glob(f"*/*/{name}")}


def finished_run(sweep: Path, run: Path) -> dict[str, bytes]:
    """A run folder whose every point has a valid result and a checkpoint, made without training (quick)."""
    plan = expand_file(sweep)
    launch(plan, executor="local", output=run, only=set())  # the manifest; nothing runs
    for stage in plan.stages:
        for point in stage.points:
            folder = RunDir(run).point_dir(stage.name, point.id)
            write_result(folder / "result.h5", stage=stage.name, point_id=point.id, config={},
                         provenance=Provenance("test", now_iso(), now_iso()), metrics={"test_accuracy": 0.5}, curves={})
            (folder / "checkpoint.pt").write_bytes(os.urandom(256))
    files = kept_files(run)
    assert len(files) == 2 * sum(len(stage.points) for stage in plan.stages)
    return files


def counts(run: Path) -> dict:
    return json.loads(sfhpc("status", run, "--json"))["counts"]


# ----------------------------------------------------------------------------- results set aside, not deleted
def test_set_aside_files_come_back_byte_for_byte_unless_replaced(tmp_path: Path):
    old, replaced = tmp_path / "p" / "result.h5", tmp_path / "p" / "checkpoint.pt"
    old.parent.mkdir()
    old.write_bytes(b"old result")
    replaced.write_bytes(b"old checkpoint")
    aside = SetAside()
    aside.move(("s", "p"), [old, replaced, tmp_path / "p" / "absent"])
    assert not old.exists() and not replaced.exists()
    replaced.write_bytes(b"new checkpoint")  # the rerun wrote its own: that one stays
    assert aside.restore() == [old]
    assert old.read_bytes() == b"old result" and replaced.read_bytes() == b"new checkpoint"
    assert not (tmp_path / "p" / ".replaced").exists()


def test_a_forced_local_rerun_that_fails_keeps_the_earlier_results(awkward_dir: Path, write_sweep, monkeypatch):
    sweep = make_sweep(write_sweep, "forcefail")
    run = awkward_dir / "runs" / "forcefail"
    before = finished_run(sweep, run)

    def broken(point):
        assert not (point.dir / "result.h5").exists() and not (point.dir / "checkpoint.pt").exists()
        raise RuntimeError("this rerun breaks")

    monkeypatch.setattr("sfhpc.stages.train.run.run", broken)
    report = launch(expand_file(sweep), executor="debug", output=run, force=True)
    assert set(report.finished["train"].values()) == {"failed"}
    assert sorted(report.restored["train"]) == sorted(report.to_run["train"])
    assert kept_files(run) == before
    assert not list(run.glob("*/*/.replaced"))
    assert counts(run) == {"train": {"done": 2}}


def test_a_forced_local_rerun_that_succeeds_replaces_the_results(awkward_dir: Path, write_sweep, monkeypatch):
    sweep = make_sweep(write_sweep, "forceok")
    run = awkward_dir / "runs" / "forceok"
    before = finished_run(sweep, run)

    def fine(point):
        return point.write_result(metrics={"test_accuracy": 0.9}, curves={})

    monkeypatch.setattr("sfhpc.stages.train.run.run", fine)
    report = launch(expand_file(sweep), executor="debug", output=run, force=True)
    assert set(report.finished["train"].values()) == {"done"} and not report.restored
    after = kept_files(run)
    assert len(after) == 2 and all(after[name] != before[name] for name in after)  # new results, old checkpoints gone
    assert not list(run.glob("*/*/.replaced"))


def test_a_launch_that_cannot_reach_slurm_says_so_and_creates_nothing(awkward_dir: Path, write_sweep, monkeypatch):
    sweep = make_sweep(write_sweep, "noslurm")
    monkeypatch.setenv("PATH", str(awkward_dir))  # no scontrol, no sbatch
    run = awkward_dir / "runs" / "noslurm"
    with pytest.raises(RunError, match="cannot reach SLURM.*Nothing was submitted or changed"):
        launch(expand_file(sweep), output=run)
    assert not run.exists()


def fake_bin(folder: Path, commands: list[str]) -> Path:
    """A PATH folder holding these real commands and nothing else."""
    folder.mkdir()
    for command in commands:
        real = subprocess.run(["which", command], capture_output=True, text=True).stdout.strip()
        if real:
            (folder / command).symlink_to(real)
    return folder


@pytest.mark.slurm
def test_an_unknown_partition_is_refused_before_anything_moves(slurm_cluster, awkward_dir, write_sweep):
    sweep = make_sweep(write_sweep, "nopartition", cluster="  partition: nosuch")
    run = awkward_dir / "runs" / "nopartition"
    before = finished_run(sweep, run)
    err = " ".join(sfhpc("sweep", "launch", sweep, "--output", run, "--force", "--executor", "slurm", code=2).split())
    assert "sinfo lists no nodes in partition nosuch; partitions: debug*, high, preempt" in err, err
    assert "Nothing was submitted or changed" in err
    assert kept_files(run) == before


@pytest.mark.slurm
def test_force_with_a_constraint_sbatch_refuses_puts_every_result_back(slurm_cluster, awkward_dir, write_sweep):
    # a request sinfo's node sizes cannot rule out (an unknown feature): sbatch refuses it, after --force set the
    # results aside
    sweep = make_sweep(write_sweep, "refused", cluster="  constraint: nosuch")
    run = awkward_dir / "runs" / "refused"
    before = finished_run(sweep, run)
    err = sfhpc("sweep", "launch", sweep, "--output", run, "--force", "--executor", "slurm", code=2)
    assert "sbatch refused the train array" in err and "invalid feature specification" in err.lower()
    assert "2 results and 2 checkpoints that --force had set aside are back in place" in " ".join(err.split())
    assert kept_files(run) == before
    assert counts(run) == {"train": {"done": 2}}

    new_run = awkward_dir / "runs" / "refused-new"  # a new run folder is not left half-made
    sfhpc("sweep", "launch", sweep, "--output", new_run, code=2)
    assert not new_run.exists()


@pytest.mark.slurm
@pytest.mark.parametrize("how", ["dead controller", "no sbatch on PATH"])
def test_force_with_sbatch_unreachable_puts_every_result_back(slurm_cluster, awkward_dir, write_sweep, monkeypatch,
                                                              how):
    """Unreachable two ways: a SLURM_CONF naming a controller port nobody listens on (the client's MessageTimeout
    set to 1 s, or each command would retry for 20 s), which fails at the first scontrol, before anything moves;
    and a PATH where scontrol and srun answer but there is no sbatch, which fails at submission, after the
    results were set aside."""
    sweep = make_sweep(write_sweep, "unreachable")
    run = awkward_dir / "runs" / "unreachable"
    before = finished_run(sweep, run)
    if how == "dead controller":
        conf = awkward_dir / "dead.conf"
        lines = Path(slurm_cluster["SLURM_CONF"]).read_text().splitlines()
        conf.write_text("\n".join("SlurmctldPort=17999" if line.startswith("SlurmctldPort=") else
                                  "MessageTimeout=1" if line.startswith("MessageTimeout=") else line for line in lines))
        monkeypatch.setenv("SLURM_CONF", str(conf))
        expected = "cannot reach SLURM"
    else:
        commands = ["scontrol", "sinfo", "srun", "sacct", "squeue", "scancel", "git"]
        monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}:{fake_bin(awkward_dir / 'bin', commands)}")
        expected = "could not submit the train array"
    tic = time.monotonic()
    err = " ".join(sfhpc("sweep", "launch", sweep, "--output", run, "--force", code=2).split())
    assert time.monotonic() - tic < 30
    assert expected in err, err
    if how == "no sbatch on PATH":
        assert "sbatch" in err and "2 results and 2 checkpoints" in err and "back in place" in err
    monkeypatch.undo()
    assert kept_files(run) == before
    assert counts(run) == {"train": {"done": 2}}


# ------------------------------------------------------------------------- only this run's own processes
def write_manifest(run: Path, points: list[str], stage: str = "train") -> RunDir:
    run_dir = RunDir(run)
    run.mkdir(parents=True, exist_ok=True)
    manifest_points = [{"id": p, "params": {}, "labels": {}, "upstream": []} for p in points]
    run_dir.write_manifest({"schema_version": 1, "plan": {"stages": [{"name": stage, "axes": [],
                                                                      "points": manifest_points}]}})
    return run_dir


def local_record(point: str, pid: int, process: str | None, stage: str = "train", started: bool = True) -> JobRecord:
    if started:
        return JobRecord(stage, point, "local", str(pid), f"logs/{pid}", now_iso(), os.getpid(), job_process=process)
    return JobRecord(stage, point, "local", None, "", now_iso(), pid, launcher_process=process)


@pytest.fixture
def stray():
    """An unrelated process: its PID is what a reused PID in jobs.jsonl would point at."""
    process = subprocess.Popen(["sleep", "60"])
    yield process
    process.kill()
    process.wait()


def test_a_pid_now_held_by_another_process_is_never_signalled_nor_running(tmp_path: Path, stray):
    run = write_manifest(tmp_path / "run", ["reused", "guessed", "queued"])
    real = process_identity(stray.pid)
    assert real is not None
    run.record_jobs([local_record("reused", stray.pid, None),  # a record older than identities
                     local_record("guessed", stray.pid, real.split(":")[0] + ":1"),  # same boot, other start time
                     local_record("queued", stray.pid, None, started=False)])  # its "launcher" is the stray
    states = {s.point: s for s in run_status(run)}
    assert states["reused"].state == states["guessed"].state == "failed"
    assert states["queued"].state == "not submitted"
    assert cancel_run(run) == []
    time.sleep(0.2)
    assert stray.poll() is None  # still alive, never signalled
    sfhpc("status", run.path, "--watch", "1", code=1)  # nothing running: --watch ends at once


TOY_STAGE = """\
import time

from sfhpc.config import Closed
from sfhpc.stages.spec import StageSpec


class ToyParams(Closed):
    pass


SPEC = StageSpec(name="toy", entry="toy_stage", params=ToyParams, runner="toy_stage:run")


def run(point):
    time.sleep(600)
"""


def test_cancel_stops_a_real_local_point_and_every_recorded_job(tmp_path: Path, monkeypatch, stray):
    (tmp_path / "toy_stage.py").write_text(TOY_STAGE)
    monkeypatch.chdir(tmp_path)
    run = write_manifest(tmp_path / "run", ["a", "b"], stage="toy")
    for point in ("a", "b"):
        (tmp_path / "run" / "toy" / point).mkdir(parents=True)
    pool = ForkPool(tmp_path / "run" / "logs", ["toy_stage"])
    try:
        first, second = (pool.submit(PointJob(str(run.path), "toy", "toy_stage", point, toy_config(point)), 10)
                         for point in ("a", "a"))
        other = pool.submit(PointJob(str(run.path), "toy", "toy_stage", "b", toy_config("b")), 10)
        # Point a was launched twice (the race a lock now prevents): its older job is alive too, and b's latest
        # record is a stray PID.
        run.record_jobs([local_record("a", int(job.job_id), job.process, "toy") for job in (first, second)]
                        + [local_record("b", int(other.job_id), other.process, "toy"),
                           local_record("b", stray.pid, None, "toy")])
        assert {s.point: s.state for s in run_status(run)} == {"a": "running", "b": "failed"}
        assert sorted(cancel_run(run)) == sorted(job.job_id for job in (first, second, other))
        deadline = time.monotonic() + 30
        while not all(job.done() for job in (first, second, other)):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert {pool.ended[int(job.job_id)] for job in (first, second, other)} == {-15}  # SIGTERM
        assert stray.poll() is None
    finally:
        pool.close()


SLOW_LOCAL_SWEEP = """\
name: slow
executor: local
data: {image_size: 32, n_classes: 4, n_train: 64, n_val: 32, n_test: 32}
grid: {band: [none]}
stages:
  train: {params: {width: 4, epochs: 100000, batch_size: 32}}
"""


def test_cancel_stops_a_running_local_launch_and_its_points(tmp_path: Path, write_sweep):
    """`sfhpc cancel` from another terminal: the local launch holding the run is stopped (verified to be that very
    process), it stops its points, and the run is left with nothing running and its lock free."""
    run = tmp_path / "run"
    launcher = subprocess.Popen([str(SFHPC), "sweep", "launch", str(write_sweep(SLOW_LOCAL_SWEEP)), "--output",
                                 str(run)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (RunDir(run).exists() and any(s.state == "running" for s in run_status(RunDir(run)))):
            assert launcher.poll() is None and time.monotonic() < deadline, launcher.communicate()[0]
            time.sleep(0.2)
        (point,) = [r for r in RunDir(run).all_jobs() if r.job_id]
        assert cancel_run(RunDir(run)) == [point.job_id]
        assert launcher.wait(timeout=60) == 130  # interrupted, as by Ctrl-C
        output = launcher.stdout.read()
        assert "stopped: the points this launch was running were stopped" in output and "Traceback" not in output
    finally:
        launcher.kill()
    assert process_identity(int(point.job_id)) is None  # the point's process is gone
    assert [s.state for s in run_status(RunDir(run))] == ["failed"]
    assert cancel_run(RunDir(run)) == []  # the lock is free, nothing is left to cancel


# -------------------------------------------------------------------------------- one writer at a time
HOLDER = """\
import sys, time
from sfhpc.rundir import RunDir
with RunDir(sys.argv[1]).exclusive("launch"):
    print("held", flush=True)
    time.sleep(60)
"""


def test_a_second_writer_is_refused_and_told_who_holds_the_run(tmp_path: Path, tiny_sweep: Path):
    run = tmp_path / "run"
    plan = expand_file(tiny_sweep)
    launch(plan, output=run, executor="local", only=set())
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        for attempt in (lambda: launch(plan, output=run, executor="local"), lambda: cancel_run(RunDir(run)),
                        lambda: resubmit_run(RunDir(run), failed_only=True)):
            with pytest.raises(RunError, match=rf"another sfhpc launch \(pid {holder.pid}, started .*\) holds"):
                attempt()
        assert {s.state for s in run_status(RunDir(run))} == {"not submitted"}  # readers never wait
    finally:
        holder.kill()
        holder.wait()
    assert cancel_run(RunDir(run)) == []  # the kernel dropped the lock with its holder
    resubmit_run(RunDir(run), failed_only=True, executor="local")  # takes the lock once, then launches inside it
    assert json.loads((run / ".lock").read_text())["action"] == "local resubmit"


@pytest.mark.slurm
def test_two_launches_at_once_of_a_held_point_submit_one_job(slurm_cluster, awkward_dir, write_sweep):
    name = f"race{os.getpid()}"
    sweep = make_sweep(write_sweep, name, cluster="  additional: {hold: true}", bands="none")
    run = awkward_dir / "runs" / name
    env = {**os.environ, **slurm_cluster}
    command = [str(SFHPC), "sweep", "launch", str(sweep), "--output", str(run), "--json"]
    launches = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for _ in range(2)]
    outcomes = [(*p.communicate(timeout=120), p.returncode) for p in launches]  # (stdout, stderr, exit code)
    try:
        queued = subprocess.run(["squeue", "-h", "-n", f"sfhpc.{name}.train", "-o", "%i"], env=env,
                                capture_output=True, text=True, check=True).stdout.split()
        assert len(queued) == 1, outcomes
        submitted = [json.loads(out)["to_run"]["train"] for out, _, code in outcomes if code == 0]
        assert sorted(len(ids) for ids in submitted) in ([1], [0, 1]), outcomes
        refused = [out + err for out, err, code in outcomes if code != 0]  # with --json, errors may be JSON
        assert all(code in (0, 2) for _, _, code in outcomes)
        assert all("another sfhpc slurm launch" in " ".join(err.split()) for err in refused), refused
    finally:
        cancelled = json.loads(sfhpc("cancel", run, "--json"))["cancelled"]
    assert len(cancelled) == 1


# ------------------------------------------------------------------------------------------ dry runs
def test_a_dry_run_writes_the_sbatch_scripts_elsewhere_and_nothing_in_the_run_folder(awkward_dir, write_sweep):
    sweep = make_sweep(write_sweep, "dry", extra=CBM)
    run = awkward_dir / "runs" / "dry"
    report = launch(expand_file(sweep), output=run, dry_run=True)
    assert not run.exists()
    train, cbm = report.arrays
    assert (train["stage"], train["job_id"], train["tasks"], cbm["job_id"]) == ("train", None, 2, None)
    assert Path(train["sbatch"]).parent == Path(cbm["sbatch"]).parent != run
    assert "sfhpc-dry-run-" in train["sbatch"]
    train_text, cbm_text = Path(train["sbatch"]).read_text(), Path(cbm["sbatch"]).read_text()
    assert "#SBATCH --array=0-1%2" in train_text and "#SBATCH --partition=debug" in train_text
    assert "--dependency" not in train_text and "DRYRUN" not in train_text
    assert cbm["dependency"] == "aftercorr:DRYRUN1" and "#SBATCH --dependency=aftercorr:DRYRUN1" in cbm_text
    note = "# sfhpc --dry-run: DRYRUN1 stands for the job id sbatch will give the train array"
    assert cbm_text.splitlines()[1] == note


@pytest.mark.slurm
def test_the_dry_run_script_is_the_one_submitted(slurm_cluster, awkward_dir, write_sweep):
    for bands in ("none, lsf", "none"):  # an array, and a single job (submitit writes no --array for it)
        name = f"exact{len(bands)}"
        plan = expand_file(make_sweep(write_sweep, name, cluster="  additional: {hold: true}", bands=bands))
        run = awkward_dir / "runs" / name
        dry = launch(plan, output=run, dry_run=True).arrays[0]
        report = launch(plan, output=run)
        try:
            assert Path(dry["sbatch"]).read_text() == Path(report.arrays[0]["sbatch"]).read_text()
        finally:
            cancel_run(RunDir(run))


# ------------------------------------------------------------------------------ foreign run folders
FOREIGN = {
    "a list": [],
    "another tool's": {"name": "x", "version": 3},
    "no stages": {"schema_version": 1, "plan": {}},
    "a point outside the run folder": {"schema_version": 1, "plan": {"stages": [{"name": "train", "axes": [],
        "points": [{"id": "../../etc", "params": {}, "labels": {}, "upstream": []}]}]}},
}


@pytest.mark.parametrize("kind", FOREIGN)
def test_a_foreign_manifest_is_one_line_from_every_command(tmp_path: Path, kind: str):
    run = tmp_path / "run"
    run.mkdir()
    (run / "manifest.json").write_text(json.dumps(FOREIGN[kind]))
    with pytest.raises(RunError, match="is not an sfhpc run manifest"):
        RunDir(run).read_manifest()
    for command in (["status"], ["aggregate"], ["cancel"]):
        err = " ".join(sfhpc(*command, run, code=2).split())
        assert "is not an sfhpc run manifest" in err and "cancelled" not in err
    assert not (run / ".lock").exists()  # cancel wrote nothing into a folder that is not sfhpc's


def test_an_unreadable_manifest_is_one_line(tmp_path: Path):
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(RunError, match="cannot read"):
        RunDir(tmp_path).read_manifest()
