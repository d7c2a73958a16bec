"""sfhpc against the real two-node SLURM test cluster: arrays, chunking, dependencies, multi-node DDP, status from
sacct, cancel, resubmit, requeue on the warning signal and at the time limit."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import h5py
import pytest
from typer.testing import CliRunner

from sfhpc import slurm
from sfhpc.cli import app
from sfhpc.sweep import expand_file

pytestmark = pytest.mark.slurm
runner = CliRunner()
PROJECT = Path(__file__).resolve().parents[1]

SWEEP = """\
name: {name}
executor: slurm
cluster:
  profile: testcluster
{cluster}
data: {{image_size: 32, n_classes: 4, n_train: {n_train}, n_val: 32, n_test: 32}}
grid:
{grid}
stages:
  train:
    params: {{width: 4, {epochs}batch_size: 32}}
    resources: {{mem_gb: 1, cpus_per_task: 1, timeout_min: {timeout}, signal_delay_s: {delay}{resources}}}
{extra_stages}"""
CBM_STAGE = """\
  cbm:
    params: {cbm_images: 16}
    resources: {mem_gb: 1, cpus_per_task: 1}
"""


def make_sweep(write_sweep, name: str, grid: str = "  band: [none, lsf]", cluster: str = "", epochs: int | None = 1,
               n_train: int = 64, timeout: int = 10, delay: int = 90, resources: str = "",
               extra_stages: str = "") -> Path:
    text = SWEEP.format(name=name, grid=grid, cluster=cluster, epochs=f"epochs: {epochs}, " if epochs else "",
                        n_train=n_train, timeout=timeout,
                        delay=delay, resources=resources, extra_stages=extra_stages)
    return write_sweep(text, f"{name}.yaml")


def sfhpc(*args, code: int = 0):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == code, result.output
    return result


def status(run: Path) -> dict:
    result = runner.invoke(app, ["status", str(run), "--json"])
    assert result.exit_code in (0, 1), result.output  # 1: a point failed
    return json.loads(result.stdout)


def wait_until(run: Path, done, timeout: float = 240, expedite_requeues: bool = False) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        current = status(run)
        if done(current):
            return current
        assert time.monotonic() < deadline, f"timed out; last status: {json.dumps(current, indent=1)}"
        if expedite_requeues:
            start_requeued_jobs_now(current)
        time.sleep(1)


def start_requeued_jobs_now(current: dict) -> None:
    """SLURM holds a requeued job back for a couple of minutes (reason BeginTime); a test need not wait for that."""
    for point in current["points"]:
        if point["state"] == "pending":  # sacct does not always show the BeginTime reason: ask for every one
            subprocess.run(["scontrol", "update", f"JobId={point['job_id']}", "StartTime=now"], env=os.environ,
                           capture_output=True)


def watch(run: Path, code: int, timeout: float = 240) -> dict:
    """`sfhpc status RUN --watch 1 --json`, as a script would run it (its own process, killed after `timeout`): it
    returns once nothing is pending or running, with exit code 0 only if every point is done."""
    sfhpc_command = Path(sys.executable).parent / "sfhpc"
    done = subprocess.run([str(sfhpc_command), "status", str(run), "--watch", "1", "--json"], env=os.environ,
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == code, done.stdout + done.stderr
    return json.loads(done.stdout)


def settled(current: dict) -> bool:
    return all(p["state"] in ("done", "failed") for p in current["points"])


def results(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in run.glob("*/*/result.h5")}


def launch(sweep: Path, run: Path, *extra) -> dict:
    return json.loads(sfhpc("sweep", "launch", sweep, "--output", run, "--json", *extra).stdout)


def test_launch_submits_one_array_per_stage_and_status_follows(slurm_cluster, write_sweep, awkward_dir):
    run = awkward_dir / "runs" / "basic"
    tic = time.monotonic()
    report = launch(make_sweep(write_sweep, "basic"), run)
    assert time.monotonic() - tic < 60  # returns once queued, without waiting for the jobs
    assert [(a["stage"], a["tasks"], a["dependency"]) for a in report["arrays"]] == [("train", 2, None)]
    script = Path(report["arrays"][0]["sbatch"]).read_text()
    assert "#SBATCH --array=0-1%" in script and "#SBATCH --partition=debug" in script
    records = [json.loads(line) for line in (run / "jobs.jsonl").read_text().splitlines()]
    assert sorted(r["job_id"] for r in records) == [f"{report['arrays'][0]['job_id']}_{i}" for i in (0, 1)]

    final = watch(run, code=0)
    assert final["counts"] == {"train": {"done": 2}}, final
    sfhpc("aggregate", run)
    assert (run / "summary.csv").read_text().count(",done,") == 2


NEW_USER_SWEEP = """\
name: {name}
cluster: {{profile: testcluster}}
data: {{image_size: 32, n_classes: 4, n_train: 64, n_val: 32, n_test: 32}}
grid: {{seed: [0]}}
stages:
  train:
    params: {{width: 4, epochs: 1, batch_size: 32}}
{resources}"""


def test_a_request_no_node_can_satisfy_is_refused_before_anything_is_submitted(slurm_cluster, write_sweep,
                                                                                 awkward_dir):
    sweep = write_sweep(NEW_USER_SWEEP.format(name="too-big", resources="    resources: {mem_gb: 8}\n"), "big.yaml")
    run = awkward_dir / "runs" / "too-big"
    for extra in ((), ("--dry-run",)):
        err = sfhpc("sweep", "launch", sweep, "--output", run, *extra, code=2).output
        assert "train: it asks for 8192 MB (mem_gb 8), 2 CPUs, 0 GPUs, 60 min; no node can" in err, err
        assert "Largest node: node1 (partition debug): 4000 MB, 2 CPUs, 0 GPUs, no time limit" in err, err
        assert "nothing was submitted" in err and "Traceback" not in err
        assert not run.exists()
    queued = subprocess.run(["squeue", "--noheader", "--format", "%j"], capture_output=True, text=True).stdout
    assert "too-big" not in queued


def test_the_job_files_default_resources_run_on_the_test_cluster(slurm_cluster, write_sweep, awkward_dir):
    # a new user's sweep: the test cluster's profile and jobs/train.yaml as they are (8 GB, more than a node has)
    sweep = write_sweep(NEW_USER_SWEEP.format(name="defaults", resources=""), "defaults.yaml")
    run = awkward_dir / "runs" / "defaults"
    report = launch(sweep, run)
    assert "#SBATCH --mem=2048MB" in Path(report["arrays"][0]["sbatch"]).read_text()
    assert watch(run, code=0)["counts"] == {"train": {"done": 1}}

    # what it cost, from SLURM's accounting: one sacct call, then none once the job has ended (the result is
    # written before the job ends, so a call just after it may still see the job running)
    deadline = time.monotonic() + 60
    while True:
        (train,) = (cost := json.loads(sfhpc("cost", run, "--json").stdout))["stages"]
        assert cost["scheduler_calls"] == 1 and cost["executor"] == "slurm"
        if train["cpu_efficiency"] is not None or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert (train["finished"], train["remaining"], train["gpu_hours"]) == (1, 0, 0)
    assert 0 < train["elapsed_median_s"] < 600 and train["cpu_hours"] == pytest.approx(
        2 * train["point_hours"])  # 2 CPUs allocated
    assert 0 < train["cpu_efficiency"] <= 1.05 and train["requested_mem_mb"] == 2048
    assert train["max_rss_mb"] > 200  # a Python process that imported torch and trained (sampled every second)
    assert train["suggested"]["mem_gb"] >= train["max_rss_mb"] * 1.5 / 1024
    assert train["suggested"]["timeout_min"] >= 1
    assert json.loads(sfhpc("cost", run, "--json").stdout)["scheduler_calls"] == 0


def test_a_queued_job_runs_the_code_it_was_launched_with(slurm_cluster, write_sweep, tmp_path):
    # The launcher runs from a copy of the project, as a user's checkout; the job is held in the queue while that
    # copy is edited so that importing its train stage fails. Released, the job runs the run's frozen copy.
    project = tmp_path / "checkout"
    for part in ("sfhpc", "jobs", "slurm_templates"):
        shutil.copytree(PROJECT / part, project / part, ignore=shutil.ignore_patterns("__pycache__", ".testcluster"))
    sweep = write_sweep(NEW_USER_SWEEP.format(name="frozen", resources="").replace(
        "cluster: {profile: testcluster}", "cluster: {profile: testcluster, additional: {hold: true}}"), "frozen.yaml")
    run = tmp_path / "runs" / "frozen"
    env = {**os.environ, "PYTHONPATH": str(project), "PYTHONSAFEPATH": "1"}
    launched = subprocess.run([sys.executable, "-m", "sfhpc.cli", "sweep", "launch", str(sweep), "--output", str(run),
                               "--json"], env=env, capture_output=True, text=True, timeout=120)
    assert launched.returncode == 0, launched.stdout + launched.stderr
    (array,) = json.loads(launched.stdout)["arrays"]
    assert "export PYTHONSAFEPATH=1" in Path(array["sbatch"]).read_text()
    code = json.loads((run / "manifest.json").read_text())["code"]

    train_module = project / "sfhpc" / "stages" / "train" / "run.py"
    train_module.write_text(train_module.read_text() + "\nraise RuntimeError('edited after launch')\n")
    subprocess.run(["scontrol", "release", array["job_id"]], check=True, timeout=30)
    assert watch(run, code=0)["counts"] == {"train": {"done": 1}}
    (result,) = run.glob("train/*/result.h5")
    with h5py.File(result) as f:
        assert f.attrs["sfhpc_source"] == str((run / code["folder"] / "sfhpc").resolve())


def test_a_point_out_of_memory_is_resubmitted_with_twice_the_memory(slurm_cluster, write_sweep, awkward_dir):
    # 0.3 GB is less than a Python process that imports torch and trains needs (its memory cgroup kills it: the test
    # cluster enforces --mem; 0.35 GB was killed too, 0.5 GB was enough); twice that is enough.
    sweep = write_sweep(NEW_USER_SWEEP.format(name="oom", resources="    resources: {mem_gb: 0.3, cpus_per_task: 1}\n"),
                        "oom.yaml")
    run = awkward_dir / "runs" / "oom"
    launch(sweep, run)
    (point,) = watch(run, code=1)["points"]
    assert point["state"] == "failed" and point["reason"].startswith("OUT_OF_MEMORY"), point

    resubmitted = sfhpc("resubmit", run, "--failed").output
    assert "right-sized retries" in resubmitted and f"train/{point['point']}: OUT_OF_MEMORY: mem_gb 0.3 -> 0.6" in \
        resubmitted, resubmitted
    record = json.loads((run / "jobs.jsonl").read_text().splitlines()[-1])
    assert record["resources"] == {"mem_gb": 0.6} and "OUT_OF_MEMORY: mem_gb 0.3 -> 0.6" in record["retry"], record
    scripts = sorted((run / "sbatch").glob("train-*.sh"), key=lambda path: int(path.stem.split("-")[1]))
    assert "#SBATCH --mem=307MB" in scripts[0].read_text() and "#SBATCH --mem=614MB" in scripts[-1].read_text()
    assert watch(run, code=0)["counts"] == {"train": {"done": 1}}


def test_downstream_stage_waits_on_its_upstream_array(slurm_cluster, write_sweep, awkward_dir):
    run = awkward_dir / "runs" / "chain"
    sweep = make_sweep(write_sweep, "chain", extra_stages=CBM_STAGE)
    bad = expand_file(sweep).stage("train").points[1].id
    (run / "train" / bad).mkdir(parents=True)
    (run / "train" / bad / "checkpoint.pt").write_bytes(b"garbage")  # this train point will fail
    report = launch(sweep, run)
    train_array, cbm_array = report["arrays"]
    assert (train_array["stage"], cbm_array["stage"]) == ("train", "cbm")
    assert cbm_array["dependency"] == f"aftercorr:{train_array['job_id']}"  # task i waits on train task i
    assert "--dependency=aftercorr:" in Path(cbm_array["sbatch"]).read_text()

    final = watch(run, code=1)  # a point failed
    states = {(p["stage"], p["point"].split("-")[0]): p for p in final["points"]}
    assert states[("train", "band=none")]["state"] == "done" and states[("cbm", "band=none")]["state"] == "done"
    assert states[("train", "band=lsf")]["state"] == "failed"
    cbm_of_bad = states[("cbm", "band=lsf")]
    assert cbm_of_bad["state"] == "failed" and "CANCELLED" in cbm_of_bad["reason"]  # never ran: upstream failed

    (run / "train" / bad / "checkpoint.pt").unlink()
    report = json.loads(sfhpc("resubmit", run, "--failed", "--json").stdout)
    assert report["to_run"] == {"train": [bad], "cbm": [cbm_of_bad["point"]]}
    assert report["arrays"][1]["dependency"] == f"aftercorr:{report['arrays'][0]['job_id']}"
    assert wait_until(run, settled)["counts"] == {"train": {"done": 2}, "cbm": {"done": 2}}


GUIDED_STAGES = """\
  predictor:
    params: {predictor_width: 4, predictor_epochs: 2, predictor_batch_size: 16}
    resources: {mem_gb: 1, cpus_per_task: 1}
  rsa:
    params: {rsa_permutations: 20}
    resources: {mem_gb: 1, cpus_per_task: 1}
"""


def test_guided_points_wait_for_their_predictor_and_rsa_follows(slurm_cluster, write_sweep, awkward_dir):
    sweep = make_sweep(write_sweep, "guided", grid="  roi: [TO]\n  alpha: [0, 0.9]", extra_stages=GUIDED_STAGES)
    sweep.write_text(sweep.read_text().replace("n_test: 32}", "n_test: 32, neural: {n_images: 40, n_shared: 10}}"))
    run = awkward_dir / "runs" / "guided"
    report = launch(sweep, run)
    stages = [(a["stage"], a["tasks"]) for a in report["arrays"]]
    assert stages == [("predictor", 1), ("train", 2), ("rsa", 2)]
    predictor_job = report["arrays"][0]["job_id"]
    assert predictor_job in report["arrays"][1]["dependency"]  # the guided task needs the predictor
    final = wait_until(run, settled, timeout=300)
    assert final["counts"] == {"predictor": {"done": 1}, "train": {"done": 2}, "rsa": {"done": 2}}, final


def test_arrays_larger_than_max_array_size_are_chunked_and_status_makes_one_sacct_call(
        slurm_cluster, write_sweep, awkward_dir, monkeypatch):
    assert slurm.max_array_size() == 1001  # read from the real cluster's `scontrol show config`
    run = awkward_dir / "runs" / "held"
    sweep = make_sweep(write_sweep, "held", grid="  seed: [" + ", ".join(map(str, range(300))) + "]",
                       cluster="  additional: {hold: true}")  # held: the tasks stay pending, nothing runs
    monkeypatch.setattr(slurm, "max_array_size", lambda: 128)
    calls: list[str] = []
    real_run = slurm.run_command
    monkeypatch.setattr(slurm, "run_command", lambda args, **kw: calls.append(args[0]) or real_run(args, **kw))

    report = launch(sweep, run, "--throttle", "3")
    try:
        assert [a["tasks"] for a in report["arrays"]] == [128, 128, 44]
        scripts = [Path(a["sbatch"]).read_text() for a in report["arrays"]]
        assert ["#SBATCH --array=0-127%3" in scripts[0], "#SBATCH --array=0-43%3" in scripts[2]] == [True, True]
        assert calls.count("sbatch") == 0  # submitit calls sbatch itself: count through the job records instead
        assert len({json.loads(line)["job_id"].split("_")[0] for line in (run / "jobs.jsonl").open()}) == 3

        calls.clear()
        current = status(run)
        assert current["counts"] == {"train": {"pending": 300}}
        assert calls.count("sacct") == 1 and calls.count("squeue") <= 1
    finally:
        cancelled = json.loads(sfhpc("cancel", run, "--json").stdout)["cancelled"]
    assert len(cancelled) == 300
    final = wait_until(run, lambda s: s["counts"] == {"train": {"failed": 300}}, timeout=60)
    assert "CANCELLED" in final["points"][0]["reason"]
    calls.clear()
    status(run)
    assert calls == []  # every state is terminal and cached: no scheduler call at all


def test_a_pending_task_cancelled_on_its_own_reads_cancelled_not_pending_forever(slurm_cluster, write_sweep, tmp_path):
    # SLURM splits a pending task cancelled by itself off its array's record and never accounts for it: sacct and
    # squeue both lose it. A user (or a tool) cancelling one task of a run must not leave it "pending" forever.
    run = tmp_path / "runs" / "one-task"
    sweep = make_sweep(write_sweep, "one-task", grid="  seed: [0, 1, 2]", cluster="  additional: {hold: true}")
    launch(sweep, run)
    try:
        job_ids = sorted(json.loads(line)["job_id"] for line in (run / "jobs.jsonl").open())
        subprocess.run(["scancel", job_ids[0]], check=True, env=os.environ)
        current = wait_until(run, lambda s: s["counts"] == {"train": {"failed": 1, "pending": 2}}, timeout=60)
        cancelled = next(p for p in current["points"] if p["job_id"] == job_ids[0])
        assert "cancelled while pending" in cancelled["reason"], cancelled
    finally:
        sfhpc("cancel", run, "--json")
    wait_until(run, lambda s: s["counts"] == {"train": {"failed": 3}}, timeout=60)


def test_squeue_reads_jobs_the_controller_has_forgotten_as_not_queued(slurm_cluster):
    # A job id slurmctld does not know, as one it forgot MinJobAge after it ended: squeue refuses it when it is
    # the only id asked about, and leaves it out among others. Either way it is not queued (status may cache its
    # final state), which is not the same as squeue failing to answer.
    unknown = "66000000"
    held = subprocess.run(["sbatch", "--parsable", "--hold", "-o", "/dev/null", "--wrap", "true"], env=os.environ,
                          capture_output=True, text=True, check=True).stdout.strip()
    try:
        assert slurm.queued_states([unknown]) == {}
        queued = slurm.queued_states([unknown, held])
        assert set(queued) == {held} and queued[held].state == "PENDING"
    finally:
        slurm.cancel([held])


def test_cancel_touches_only_its_own_run(slurm_cluster, write_sweep, awkward_dir):
    held = "  additional: {hold: true}"
    mine, other = awkward_dir / "runs" / "mine", awkward_dir / "runs" / "other"
    launch(make_sweep(write_sweep, "mine", cluster=held), mine)
    launch(make_sweep(write_sweep, "other", cluster=held), other)
    try:
        assert len(json.loads(sfhpc("cancel", mine, "--json").stdout)["cancelled"]) == 2
        assert status(other)["counts"] == {"train": {"pending": 2}}
    finally:
        sfhpc("cancel", other)


def test_cancel_leaves_a_recorded_job_id_that_is_now_someone_elses_job(slurm_cluster, write_sweep, tmp_path):
    # A controller started again with fresh state hands out ids from 1 again: an id a run folder recorded may now
    # be another job. Here a job of another name takes the place of one of the run's records.
    run = tmp_path / "runs" / "recycled"
    launch(make_sweep(write_sweep, "recycled", cluster="  additional: {hold: true}"), run)
    foreign = subprocess.run(["sbatch", "--parsable", "-H", "-J", "someone-elses-job", "-o", "/dev/null",
                              "--wrap", "sleep 1"], check=True, env=os.environ, capture_output=True,
                             text=True).stdout.strip()
    try:
        records = [json.loads(line) for line in (run / "jobs.jsonl").open()]
        with (run / "jobs.jsonl").open("a") as f:
            f.write(json.dumps({**records[0], "job_id": foreign}) + "\n")
        cancelled = json.loads(sfhpc("cancel", run, "--json").stdout)["cancelled"]
        assert sorted(cancelled) == sorted(r["job_id"] for r in records)  # the run's own, and not that one
        queued = subprocess.run(["squeue", "-h", "-o", "%i|%T", "-j", foreign], env=os.environ, capture_output=True,
                                text=True).stdout
        assert queued.strip() == f"{foreign}|PENDING"
    finally:
        subprocess.run(["scancel", foreign], env=os.environ)
        sfhpc("cancel", run)


def test_two_node_ddp_train_point(slurm_cluster, write_sweep, awkward_dir):
    run = awkward_dir / "runs" / "ddp"
    launch(make_sweep(write_sweep, "ddp", grid="  band: [lsf]", epochs=2,
                      resources=", nodes: 2, tasks_per_node: 1"), run)
    final = wait_until(run, settled)
    assert final["counts"] == {"train": {"done": 1}}, final
    (result,) = run.glob("train/*/result.h5")
    with h5py.File(result) as f:
        assert f.attrs["world_size"] == 2 and f.attrs["dist_source"] == "submitit"
        assert sorted(json.loads(f.attrs["hosts"])) == ["node1", "node2"]


def test_python_error_shows_as_failed_and_resubmit_reruns_only_it(slurm_cluster, write_sweep, awkward_dir):
    run = awkward_dir / "runs" / "broken"
    sweep = make_sweep(write_sweep, "broken")
    bad = expand_file(sweep).stage("train").points[1].id
    (run / "train" / bad).mkdir(parents=True)
    (run / "train" / bad / "checkpoint.pt").write_bytes(b"garbage")
    launch(sweep, run)
    final = wait_until(run, settled)
    failed = [p for p in final["points"] if p["state"] == "failed"]
    assert [p["point"] for p in failed] == [bad]
    assert failed[0]["reason"].startswith("RuntimeError: checkpoint") and "unreadable" in failed[0]["reason"]
    human = sfhpc("status", run, code=1).stdout  # a point failed
    assert "RuntimeError" in human and bad in human
    kept = results(run)

    (run / "train" / bad / "checkpoint.pt").unlink()
    report = json.loads(sfhpc("resubmit", run, "--failed", "--json").stdout)
    assert report["to_run"] == {"train": [bad]}
    assert wait_until(run, settled)["counts"] == {"train": {"done": 2}}
    after = results(run)
    assert all(after[name] == data for name, data in kept.items())


def scancel_signal(job_id: str) -> None:
    subprocess.run(["scancel", "--signal=USR2", job_id], check=True, env=os.environ)


def attempts_and_resume(run: Path) -> tuple[list[int], int]:
    (point_dir,) = run.glob("train/*")
    return attempts_and_resume_of(point_dir)


def test_warning_signal_checkpoints_requeues_and_resumes(slurm_cluster, write_sweep, awkward_dir):
    run = awkward_dir / "runs" / "signal"
    launch(make_sweep(write_sweep, "signal", grid="  band: [none]", epochs=6, n_train=1536), run)
    (point_dir,) = run.glob("train/*")
    wait_for_file(point_dir / "checkpoint.pt", run)  # the first finished epoch
    job_id = json.loads((run / "jobs.jsonl").read_text().splitlines()[-1])["job_id"]
    scancel_signal(job_id)  # what SLURM sends before a time limit or a preemption
    final = wait_until(run, settled, timeout=300, expedite_requeues=True)
    assert final["counts"] == {"train": {"done": 1}}, final
    attempts, resumed_from = attempts_and_resume(run)
    assert len(attempts) == 6 and attempts[0] == 0 and attempts[-1] >= 1  # later epochs ran in a later attempt
    assert resumed_from >= 1  # resumed from a checkpoint, not restarted


def test_time_limit_shorter_than_the_run_completes_after_requeues(slurm_cluster, write_sweep, awkward_dir):
    run = awkward_dir / "runs" / "limit"
    # More training than fits in a 2-minute limit (60 epochs of 2-3.5 s): USR2 comes 30 s before
    # the limit (SLURM may send it up to a minute earlier), the job checkpoints, requeues itself and goes on from
    # its last epoch, as often as it takes.
    launch(make_sweep(write_sweep, "limit", grid="  band: [none]", epochs=60, n_train=12288, timeout=2, delay=30,
                      resources=", max_requeues: 30"), run)
    final = wait_until(run, settled, timeout=900, expedite_requeues=True)
    assert final["counts"] == {"train": {"done": 1}}, final
    attempts, resumed_from = attempts_and_resume(run)
    assert len(attempts) == 60 and max(attempts) >= 1 and resumed_from >= 1


def test_preempted_point_is_requeued_and_resumes(slurm_cluster, write_sweep, awkward_dir):
    run = awkward_dir / "runs" / "preempted"
    launch(make_sweep(write_sweep, "preempted", grid="  band: [none]", epochs=10, n_train=6144,
                      cluster="  partition: preempt"), run)
    (point_dir,) = run.glob("train/*")
    wait_for_file(point_dir / "checkpoint.pt", run)
    # A job in the higher-priority partition that needs every CPU of both nodes preempts (requeues) ours.
    subprocess.run(["sbatch", "-p", "high", "-N2", "-n4", "-o", "/dev/null", "--wrap", "sleep 5"], check=True,
                   env=os.environ, capture_output=True)
    final = wait_until(run, settled, timeout=300, expedite_requeues=True)
    assert final["counts"] == {"train": {"done": 1}}, final
    attempts, resumed_from = attempts_and_resume(run)
    assert len(attempts) == 10 and max(attempts) >= 1 and resumed_from >= 1


def wait_for_file(path: Path, run: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, status(run)
        time.sleep(0.5)


def kill_node(node: str, job_id: str) -> None:
    """A node dies: its slurmd and the job's processes on it (slurmstepd and what it started) are killed."""
    pid_file = Path(os.environ["SLURM_CONF"]).parents[1] / "run" / f"slurmd-{node}.pid"
    subprocess.run(["kill", "-9", pid_file.read_text().strip()], check=True)
    steps = subprocess.run(["pgrep", "-f", f"slurmstepd: \\[{job_id}[.]"], capture_output=True, text=True).stdout
    for pid in steps.split():
        # A dead node reports nothing: freeze slurmstepd first, or it may tell slurmctld that its job was killed
        # (a FAILED job, not a NODE_FAIL) in the moment between its child's death and its own.
        subprocess.run(["kill", "-STOP", pid])
        subprocess.run(["pkill", "-9", "-P", pid])
        subprocess.run(["kill", "-9", pid])


def test_node_failure_is_reported_and_resubmit_excludes_that_node(slurm_cluster, write_sweep, awkward_dir):
    run = awkward_dir / "runs" / "nodefail"
    # Without SLURM's automatic requeue: the short point finishes, the long one loses its node.
    sweep = make_sweep(write_sweep, "nodefail", grid="  seed: [0]\nzip:\n  band: [none, lsf]\n  epochs: [1, 30]",
                       epochs=None, n_train=6144, cluster="  additional: {no-requeue: true}")
    short = expand_file(sweep).stage("train").points[0].id
    launch(sweep, run)
    wait_until(run, lambda s: any(p["point"] == short and p["state"] == "done" for p in s["points"]))
    kept = results(run)
    long_point = next(p for p in status(run)["points"] if p["point"] != short)
    wait_for_file(run / "train" / long_point["point"] / "checkpoint.pt", run)
    node = node_of(long_point["job_id"])
    try:
        kill_node(node, long_point["job_id"].split("_")[0])
        failed = wait_until(run, lambda s: any(p["state"] == "failed" for p in s["points"]), timeout=120)
    finally:
        subprocess.run(["bash", str(Path(__file__).parents[1] / "slurm_templates" / "testcluster.sh"), "start"],
                       check=True, capture_output=True)
    lost = next(p for p in failed["points"] if p["state"] == "failed")
    assert lost["point"] == long_point["point"] and "NODE_FAIL" in lost["reason"], lost

    report = json.loads(sfhpc("resubmit", run, "--failed", "--json").stdout)
    assert report["to_run"] == {"train": [long_point["point"]]}
    assert [(r["cause"], r["changes"]) for r in report["retries"]] == [("NODE_FAIL", [f"exclude {node}"])]
    assert f"#SBATCH --exclude={node}" in Path(report["arrays"][0]["sbatch"]).read_text()
    final = wait_until(run, settled, timeout=300)
    assert final["counts"] == {"train": {"done": 2}}, final
    assert node_of(next(p for p in final["points"] if p["point"] == long_point["point"])["job_id"]) != node
    assert all(results(run)[name] == data for name, data in kept.items())
    attempts, resumed_from = attempts_and_resume_of(run / "train" / long_point["point"])
    assert resumed_from >= 1 and max(attempts) >= 1  # the resubmitted job went on from the lost job's checkpoint


def node_of(job_id: str) -> str:
    """The node a started one-node job runs (or ran) on."""
    deadline = time.monotonic() + 60
    while True:
        out = subprocess.run(["sacct", "-X", "-n", "-P", "-o", "NodeList", "-j", job_id], capture_output=True,
                             text=True, env=os.environ).stdout.splitlines()
        if out and out[-1].strip() not in ("", "None assigned"):
            return out[-1].strip()
        assert time.monotonic() < deadline, f"sacct names no node for {job_id}"
        time.sleep(1)


def attempts_and_resume_of(point_dir: Path) -> tuple[list[int], int]:
    with h5py.File(point_dir / "result.h5") as f:
        return f["curves/attempt"][()].tolist(), int(f.attrs["resumed_from_epoch"])
