"""The `sfhpc` command line. Thin: parse, call the library, print. Never imports torch (login-node path)."""

from __future__ import annotations

import errno
import json
import os
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, NoReturn

import typer

from sfhpc.terminal import OutputFormat

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress
    from rich.text import Text

    from sfhpc.cost import StageCost
    from sfhpc.launch import LaunchReport
    from sfhpc.report.summary import StageTable, Summary
    from sfhpc.rundir import JobRecord, RunDir
    from sfhpc.stages.attack.export import RobustBenchExport
    from sfhpc.stages.rsa.export import RdmExport
    from sfhpc.stages.train.brainscore import BrainScoreExport
    from sfhpc.status import PointStatus
    from sfhpc.sweep import Plan, StagePlan
    from sfhpc.terminal import Grid

HELP_OPTIONS = {"help_option_names": ["-h", "--help"]}  # -h too, on every command
app = typer.Typer(help="Brain-alignment and robustness sweeps: expand, launch, watch, aggregate.",
                  no_args_is_help=True, add_completion=True, pretty_exceptions_enable=False,
                  context_settings=HELP_OPTIONS)
sweep_app = typer.Typer(help="Expand or launch a sweep file.", no_args_is_help=True, context_settings=HELP_OPTIONS)
app.add_typer(sweep_app, name="sweep")
cbm_app = typer.Typer(help="Critical band masking tools.", no_args_is_help=True, context_settings=HELP_OPTIONS)
app.add_typer(cbm_app, name="cbm")
data_app = typer.Typer(help="Neural data: prepare NSD subjects for neural guidance.", no_args_is_help=True,
                       context_settings=HELP_OPTIONS)
app.add_typer(data_app, name="data")
export_app = typer.Typer(help="Copy a run's results out in other tools' formats.", no_args_is_help=True,
                         context_settings=HELP_OPTIONS)
app.add_typer(export_app, name="export")

MOST_CONDITION_ROWS = 40  # a terminal shows this many conditions; all of them are in conditions.csv and report.md
MOST_FILE_ROWS = 40  # a terminal shows this many exported files; all of them are in the export's index
STATE_STYLE = {"done": "green", "failed": "red", "running": "cyan", "pending": "yellow", "not submitted": "dim",
               "blocked": "magenta"}


def _console(stderr: bool = False) -> Console:
    """A console that never reads markup: sweep values, paths and a job's error line are the user's text, and
    `[/red]` in one of them must print as itself, not end a style (or raise). Styles are given as `style=` or
    through :func:`_styled`. It never wraps a line either: a point id or a path piped to a file or a script must stay
    whole (a terminal wraps long lines by itself)."""
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, markup=False, soft_wrap=True)


def _styled(*parts: str | tuple[str, str]) -> Text:
    """A line of plain text and (text, style) parts; no part is read as markup, and control characters (an escape
    sequence in an error line) show as escapes."""
    from rich.text import Text

    from sfhpc.terminal import printable

    return Text.assemble(*(printable(part) if isinstance(part, str) else (printable(part[0]), part[1])
                           for part in parts))


def _fail(message: str, as_json: bool = False) -> NoReturn:
    """Report a user's mistake (one line, or {"error": ...} on stdout with --json) and exit 2."""
    if as_json:
        _print_json({"error": message})
    else:
        _console(stderr=True).print(_styled(("error: ", "bold red"), message))
    raise typer.Exit(2)


@contextmanager
def _user_errors(as_json: bool = False) -> Iterator[None]:
    """Turn a user's mistake (bad sweep, bad or foreign run folder, a file the user cannot write) into a message
    and exit code 2, never a traceback."""
    from sfhpc.errors import RunError, SweepError

    try:
        yield
    except (SweepError, RunError) as err:
        _fail(str(err), as_json)
    except OSError as err:  # a run folder on a full disk or without permission: the system's words, one line
        _fail(f"{err.strerror or err}: {err.filename}" if err.filename else str(err), as_json)


def _print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=1, default=str) + "\n")


def _version_callback(value: bool) -> None:
    if value:
        from sfhpc.results import package_version

        typer.echo(f"sfhpc {package_version('sfhpc')}")
        raise typer.Exit()


@app.callback()
def main(version: bool = typer.Option(False, "--version", callback=_version_callback, is_eager=True,
                                      help="Print the version and exit.")) -> None:
    """sfhpc: run spatial-frequency and neural-guidance robustness experiments from a login node."""


FORMAT_HELP = ("How to print: table (for a terminal: a table where it fits the width, one block per row where it "
               "does not; no value is ever cut), tsv (a header and one line per row, tab-separated; a tab, newline "
               "or backslash in a value as \\t, \\n, \\\\), md (GitHub markdown tables) or json (as --json).")


def _format_option(tsv: str) -> Any:
    """--format, whose help says what the TSV of this command holds."""
    return typer.Option(OutputFormat.table, "--format", "-f", case_sensitive=False,
                        help=f"{FORMAT_HELP} TSV: {tsv}")


def _output_format(chosen: OutputFormat, as_json: bool) -> str:
    """The format asked for: --json is --format json, and may not contradict another --format."""
    if as_json and chosen not in (OutputFormat.table, OutputFormat.json):
        _fail(f"--json and --format {chosen.value} ask for two formats; give one (--json is --format json)")
    return "json" if as_json else chosen.value


# ------------------------------------------------------------------------------------------ sweep
MAX_POINTS_OPTION = typer.Option(None, "--max-points", min=1, metavar="N",
                                  help="Allow a sweep of up to N points (default: the sweep's `max_points`, "
                                       "100,000 unless it says otherwise).")


CALIBRATE_OPTION = typer.Option(None, "--calibrate", metavar="RUN",
                                help="Estimate each stage from the measured median time per point of a run that "
                                     "has finished points of it (see `sfhpc cost`), not from jobs/*.yaml "
                                     "expected_minutes.")


def _calibrated(plan: Plan, run: str | None) -> Plan:
    """`plan` with the stages that `run` has measured estimated from those measurements (a RunError for a run
    folder that is not one)."""
    if run is None:
        return plan
    from sfhpc.cost import measured_minutes
    from sfhpc.errors import RunError
    from sfhpc.rundir import RunDir

    source = RunDir.find(run)
    minutes = measured_minutes(source)
    if not minutes:
        raise RunError(f"--calibrate {run}: that run has no finished point to measure (see `sfhpc cost {run}`)")
    return plan.calibrated(minutes, os.path.abspath(source.path))  # the manifest names it wherever it is read


def _calibration_line(plan: Plan) -> str | None:
    """Which stages --calibrate estimated from measurements, and which it could not."""
    measured = [s for s in plan.stages if s.calibrated_from]
    if not measured:
        return None
    rest = [s.name for s in plan.stages if not s.calibrated_from]
    return (f"calibrated from {measured[0].calibrated_from}: " + ", ".join(
        f"{s.name} ({(s.expected_minutes or 0):.2f} min per point)" for s in measured)
        + (f"; from their job files: {', '.join(rest)} (no finished point in that run)" if rest else ""))


@sweep_app.command("expand")
def sweep_expand(sweep_file: Path = typer.Argument(..., help="Sweep YAML file."),
                 as_json: bool = typer.Option(False, "--json", help="Print the expanded plan as JSON."),
                 max_points: int | None = MAX_POINTS_OPTION,
                 calibrate: str | None = CALIBRATE_OPTION) -> None:
    """Print the points of every stage (ids, axes, counts) without running anything. Data that is not here yet
    (an ImageNet copy, prepared NSD files, weights) does not stop the plan: the checks that need it are listed as
    skipped, and `sweep launch` runs them."""
    from sfhpc.sweep import expand_file
    from sfhpc.terminal import working

    skipped: list[str] = []
    with _user_errors(as_json), working(f"expanding {sweep_file}"):
        plan = _calibrated(expand_file(sweep_file, max_points=max_points, skipped=skipped), calibrate)
    if as_json:
        hours = {s.name: s.hours() for s in plan.stages}
        _print_json({"name": plan.sweep.name, "n_points": plan.n_points,
                     "counts": {s.name: len(s.points) for s in plan.stages},
                     "gpu_hours": sum(h["gpu_hours"] for h in hours.values() if h),
                     "cpu_hours": sum(h["cpu_hours"] for h in hours.values() if h),
                     "skipped_data_checks": skipped, **plan.to_json()})
        return
    _print_plan(plan)
    if skipped:
        console = _console()
        console.print(f"skipped {len(skipped)} data checks (the data is not here; `sfhpc sweep launch` runs them):")
        for note in skipped:
            console.print(f"  {note}")


def _print_plan(plan: Plan) -> None:
    from sfhpc.terminal import Grid, print_grid

    console = _console()
    rows = []
    totals = {"gpu_hours": 0.0, "cpu_hours": 0.0}
    for stage in plan.stages:
        r = stage.resources
        hours = stage.hours()
        for key in totals:
            totals[key] += hours[key] if hours else 0.0
        rows.append([stage.name, str(len(stage.points)), ", ".join(stage.axes) or "-", _reads(stage),
                     f"{r.nodes} node x {r.tasks_per_node} task, {r.cpus_per_task} cpu, {r.gpus_per_node} gpu, "
                     f"{r.mem_gb:g} GB, {r.timeout_min} min",
                     f"{hours['gpu_hours']:.1f}" if hours else "?", f"{hours['cpu_hours']:.1f}" if hours else "?"])
    print_grid(console, Grid(f"sweep {plan.sweep.name}: {plan.n_points} points",
                             ["stage", "points", "axes", "reads", "resources per point", "GPU-h", "CPU-h"], rows,
                             right=frozenset({"GPU-h", "CPU-h"}), wrap=frozenset({"axes", "reads",
                                                                                 "resources per point"})))
    unknown = [s.job for s in plan.stages if s.hours() is None]
    console.print(f"estimate: {totals['gpu_hours']:.1f} GPU-hours, {totals['cpu_hours']:.1f} CPU-hours"
                  + (f" (without {', '.join(unknown)}: no expected_minutes in their job files)" if unknown else "")
                  + "; minutes per point x points x nodes, the minutes from jobs/*.yaml expected_minutes"
                  + (" or measured (--calibrate)" if any(s.calibrated_from for s in plan.stages) else ""))
    calibration = _calibration_line(plan)
    if calibration:
        console.print(calibration)
    readers = Counter(key for stage in plan.stages for point in stage.points for key in point.upstream)
    for stage in plan.stages:
        print_grid(console, _points_grid(stage, readers))


def _points_grid(stage: StagePlan, readers: Counter) -> Grid:
    """A stage's points: index, id, the value of each axis (and a sharded stage's shard, which tells its points
    apart as much as an axis does), and how many downstream points read it (when any does)."""
    from sfhpc.terminal import Grid

    read = any(readers[f"{stage.name}/{p.id}"] for p in stage.points)
    columns = list(stage.points[0].labels) if stage.points else list(stage.axes)  # the axes, then the shard
    header = ["#", "point id", *columns, *(["read by"] if read else [])]
    rows = [[str(index), point.id, *(str(point.labels[a]) for a in columns),
             *([str(readers[f"{stage.name}/{point.id}"])] if read else [])]
            for index, point in enumerate(stage.points)]
    return Grid(f"{stage.name} points", header, rows, keys=2, named_keys=False, right=frozenset({"#", "read by"}))


def _reads(stage: StagePlan) -> str:
    """Which upstream points a stage's points read: `predictor: 4 of 10 points` (an unguided train point reads
    none), or `-`."""
    counts = Counter(key.split("/", 1)[0] for point in stage.points for key in set(point.upstream))
    return ", ".join(f"{name}: {n} of {len(stage.points)} points" for name, n in counts.items()) or "-"


@sweep_app.command("launch")
def sweep_launch(
    sweep_file: Path = typer.Argument(..., help="Sweep YAML file."),
    executor: str | None = typer.Option(None, "--executor", "-e",
                                           help="auto | local | slurm | debug (default: the sweep's `executor`)."),
    output: Path | None = typer.Option(None, "--output", "-o", help="Run folder (default: runs/<name>)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Show what would be submitted; write nothing."),
    force: bool = typer.Option(False, "--force", help="Redo points that already have a valid result."),
    allow_changed: bool = typer.Option(False, "--allow-changed",
                                       help="Accept a sweep that differs from the one the run folder was made from."),
    parallel: int = typer.Option(1, "--parallel", "-j", min=1, help="Local executor: points run at once."),
    throttle: int | None = typer.Option(None, "--throttle", min=1,
                                           help="SLURM: at most N tasks of each array run at once (%N)."),
    as_json: bool = typer.Option(False, "--json", help="Print the launch report as JSON."),
    max_points: int | None = MAX_POINTS_OPTION,
    calibrate: str | None = CALIBRATE_OPTION,
) -> None:
    """Submit every point without a valid result. Local runs wait and show progress; SLURM returns at once."""
    from sfhpc.launch import launch
    from sfhpc.sweep import expand_file
    from sfhpc.terminal import working

    if executor not in (None, "auto", "local", "slurm", "debug"):
        _fail(f"--executor {executor!r}: allowed: auto, local, slurm, debug", as_json)
    with _stoppable_launch(), _user_errors(as_json):
        output = _run_folder_option(output)
        with working(f"expanding {sweep_file}"):
            plan = _calibrated(expand_file(sweep_file, max_points=max_points), calibrate)
        calibration = _calibration_line(plan)
        if calibration and not as_json:
            _console().print(calibration + ("" if dry_run else " (the run's manifest keeps these estimates)"))
        with _LaunchProgress(enabled=not as_json and not dry_run) as progress:
            report = launch(plan, executor=executor, output=output, force=force, dry_run=dry_run,
                            allow_changed=allow_changed, parallel=parallel, throttle=throttle,
                            progress=progress.update)
    _finish_launch(report, as_json)


@contextmanager
def _stoppable_launch() -> Iterator[None]:
    """SIGTERM (`sfhpc cancel` from another terminal, or the end of a login session) stops a launch as Ctrl-C does:
    it stops the points it runs and puts back what --force set aside, where Python's default would just exit. Either
    ends with one line and exit code 130."""
    import signal

    def interrupt(signum: int, frame: FrameType | None) -> NoReturn:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    except KeyboardInterrupt:
        _console(stderr=True).print("stopped: the points this launch was running were stopped (results they had "
                                    "not written are missing); launch again to run what is missing", style="yellow")
        raise typer.Exit(130) from None


def _finish_launch(report: LaunchReport, as_json: bool) -> None:
    """Print the launch report; exit 1 when a point this launch ran (local, debug) failed or could not run."""
    if as_json:
        _print_json(report.__dict__)
    else:
        _print_launch_report(report)
    failed = any(state == "failed" for points in report.finished.values() for state in points.values())
    if failed or any(report.blocked.values()):
        raise typer.Exit(1)


class _LaunchProgress:
    """What a launch is doing, drawn only on a terminal: a spinner while it prepares and submits its points, then a
    bar over the points a local launch runs (left on screen when it ends). One line per finished point, on a
    terminal or not."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.console = _console()
        self.bar: Progress | None = None
        self.queued = self.finished = 0

    def __enter__(self) -> _LaunchProgress:
        from sfhpc.terminal import is_terminal

        if self.enabled and is_terminal(sys.stdout):
            self._start()
        return self

    def _start(self) -> None:
        from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self.bar = Progress(SpinnerColumn(), TextColumn("{task.description}", markup=False), BarColumn(),
                            TextColumn("{task.fields[count]}"), TimeElapsedColumn(), console=self.console,
                            transient=True, refresh_per_second=4)
        self.bar.start()
        self.task = self.bar.add_task("preparing and submitting the points", total=None, count="")

    def update(self, stage: str, point_id: str, event: str) -> None:
        if not self.enabled:
            return
        if event == "queued":
            self.queued += 1
        elif event != "started":
            self.finished += 1
            self.console.print(_styled((f"{event:>6}", STATE_STYLE.get(event, "")), f" {stage}/{point_id}"))
        if self.bar is not None:
            self.bar.update(self.task, total=self.queued, completed=self.finished,
                            description=f"{stage}/{point_id}" if event == "started" else None,
                            count=f"{self.finished}/{self.queued}")

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.live.transient = not self.queued  # the points' bar stays as a summary; the spinner goes
            self.bar.stop()


def _print_launch_report(report: LaunchReport) -> None:
    console = _console()
    verb = "would submit" if report.dry_run else "submitted"
    for stage, ids in report.to_run.items():
        console.print(f"{stage}: {verb} {len(ids)} points ({report.skipped_done.get(stage, 0)} already done"
                      + (f", {len(report.skipped_active[stage])} still active" if report.skipped_active.get(stage)
                         else "") + ")")
        if report.dry_run:
            for point_id in ids:
                console.print(f"  {point_id}")
        if report.blocked.get(stage):
            console.print(f"  {len(report.blocked[stage])} points not run: an input has no result "
                          "(sfhpc status says which)", style="red")
        finished = report.finished.get(stage, {})
        failed = [p for p, state in finished.items() if state == "failed"]
        if finished:
            console.print(_styled("  ", (f"{len(finished) - len(failed)} done", "green"), ", ",
                                  (f"{len(failed)} failed", "red") if failed else "0 failed"))
    if report.settings_changed:
        console.print("settings changed since the last launch (the design is the same; finished results are kept, "
                      + ("the points to run would use the new ones" if report.dry_run else "the points submitted now "
                         "use the new ones; recorded in manifest.json") + "):", style="yellow")
        for line in report.settings_changed:
            console.print(f"  {line}")
    if report.retries:
        console.print("right-sized retries (recorded in jobs.jsonl; later submissions of these points keep them):",
                      style="yellow")
        for retry in report.retries:
            what = ", ".join(retry["changes"]) or "unchanged"
            note = f" ({retry['note']})" if retry["note"] else ""
            console.print(f"  {retry['stage']}/{retry['point']}: {retry['cause']}: {what}{note}", markup=False)
    for stage, points in report.restored.items():
        console.print(f"{stage}: {len(points)} points failed again; their earlier results are back in place",
                      style="yellow")
    for array in report.arrays:
        waits = f", waits on {array['dependency']}" if array["dependency"] else ""
        if report.dry_run:
            console.print(f"  {array['stage']}: {array['tasks']} tasks{waits}; sbatch script {array['sbatch']}")
        else:
            console.print(f"  {array['stage']}: SLURM job {array['job_id']} ({array['tasks']} tasks{waits})")
    console.print(f"run folder: {report.run_dir} (executor {report.executor})")
    if not report.dry_run:
        console.print(f"next: sfhpc status {_shell_word(report.run_dir)}   "
                      f"sfhpc aggregate {_shell_word(report.run_dir)}")


def _shell_word(path: Path) -> str:
    """A path as one word a user can paste into a shell (spaces and quotes quoted)."""
    import shlex

    return shlex.quote(str(path))


def _run_folder_option(output: Path | None) -> Path | None:
    """--output with `~` expanded (the shell does not expand it after `=`), refused when it names a file or a name
    too long for the file system, before anything is created."""
    from sfhpc.config import resolve_run_folder
    from sfhpc.errors import RunError

    if output is None:
        return None
    try:
        return resolve_run_folder(output)
    except ValueError as err:
        raise RunError(f"--output {output}: {err}") from None


# ----------------------------------------------------------------------------------------- status
@app.command("status")
def status(run: str = typer.Argument(..., help="Run folder, or a sweep name under runs/."),
           all_points: bool = typer.Option(False, "--all", help="List every point, not only the failed ones."),
           stage: str | None = typer.Option(None, "--stage", help="Only this stage."),
           as_json: bool = typer.Option(False, "--json", help="Print counts and points as JSON."),
           output_format: OutputFormat = _format_option("one line per point listed (the failed ones, or every one "
                                                        "with --all): stage, point, state, job, result, reason."),
           watch: float | None = typer.Option(
               None, "--watch", metavar="SECONDS", min=1,
               help="Refresh every SECONDS until no point is pending or running (one sacct call per refresh); "
                    "then exit 0 if every point is done, else 1. For scripts: sfhpc status RUN --watch 60 && "
                    "sfhpc aggregate RUN.")) -> None:
    """Counts per stage and state; failed points with the last lines of their error."""
    from sfhpc.rundir import RunDir
    from sfhpc.status import count_by_stage

    shown_as = _output_format(output_format, as_json)
    console = _console()
    with _user_errors(shown_as == "json"):
        run_dir = RunDir.find(run)
        _check_stage_option(run_dir, stage)
        if watch is None:
            statuses = _stage_status(run_dir, stage)
        else:
            statuses = _watch_until_settled(run_dir, stage, watch, console, show_live=shown_as == "table")
    counts = count_by_stage(statuses)
    listed = statuses if all_points else [s for s in statuses if s.state == "failed"]
    if shown_as == "json":
        _print_json({"run": str(run_dir.path), "counts": {k: dict(v) for k, v in counts.items()},
                     "points": [s.to_json() for s in statuses]})
    elif shown_as == "table":
        from sfhpc.terminal import print_grid

        console.print(f"run {run_dir.path}")  # not a table title: a long path stays whole
        print_grid(console, _counts_grid(counts))
        _print_points(console, listed)
    else:
        points = _points_grid_of(listed, "points" if all_points else "failed points")
        _print_grids(shown_as, [_counts_grid(counts, f"run {run_dir.path}"), points] if shown_as == "md" else [points])
    if any(s.state == "failed" for s in statuses) or (watch is not None and any(s.state != "done" for s in statuses)):
        raise typer.Exit(1)


def _points_grid_of(statuses: list[PointStatus], title: str = "points") -> Grid:
    """One row per point: stage, point, state, job, result, reason."""
    from sfhpc.terminal import Grid

    return Grid(title, ["stage", "point", "state", "job", "result", "reason"],
                [[s.stage, s.point, s.state, s.job_id or "", s.result, s.reason] for s in statuses], keys=2)


def _print_grids(shown_as: str, grids: list[Grid]) -> None:
    """Grids as TSV (one after the other) or as markdown tables under their titles."""
    from sfhpc.terminal import markdown_text, tsv_text

    text = tsv_text if shown_as == "tsv" else markdown_text
    sys.stdout.write(("\n" if shown_as == "md" else "").join(text(grid) for grid in grids))


def _check_stage_option(run_dir: RunDir, stage: str | None) -> None:
    """A --stage the run does not have is an error that lists the stages it has (not an empty table)."""
    from sfhpc.errors import RunError

    if stage is None:  # no need to read the manifest (megabytes for a large sweep) a second time
        return
    stages = [s["name"] for s in run_dir.read_manifest()["plan"]["stages"]]
    if stage not in stages:
        raise RunError(f"--stage {stage!r}: {run_dir.path} has no such stage; its stages: {', '.join(stages)}")


def _stage_status(run_dir: RunDir, stage: str | None) -> list[PointStatus]:
    from sfhpc.status import run_status

    return [s for s in run_status(run_dir) if stage is None or s.stage == stage]


def _watch_until_settled(run_dir: RunDir, stage: str | None, interval: float, console: Console,
                         show_live: bool) -> list[PointStatus]:
    """Statuses once no point is pending or running, refreshed every `interval` seconds; on a terminal the counts
    table updates in place meanwhile."""
    import contextlib
    import time

    from rich.live import Live

    from sfhpc.status import count_by_stage
    from sfhpc.terminal import grid_text

    live = Live(console=console, transient=True, auto_refresh=False) if show_live and console.is_terminal else None
    with live or contextlib.nullcontext():
        while True:
            statuses = _stage_status(run_dir, stage)
            if not any(s.state in ("pending", "running") for s in statuses):
                return statuses
            if live is not None:
                view = grid_text(_counts_grid(count_by_stage(statuses)), console.width)
                view.append(f"\nrefreshed {time.strftime('%H:%M:%S')}, every {interval:g} s; Ctrl-C stops watching, "
                            "not the run")
                live.update(view, refresh=True)
            time.sleep(interval)


def _counts_grid(counts: dict[str, Counter], title: str | None = None) -> Grid:
    """Points per stage and state, and in all."""
    from sfhpc.status import STATES
    from sfhpc.terminal import Grid

    rows = [[name, *(str(counter.get(state, 0)) for state in STATES), str(sum(counter.values()))]
            for name, counter in counts.items()]
    return Grid(title, ["stage", *STATES, "total"], rows, right=frozenset([*STATES, "total"]), styles=STATE_STYLE)


def _print_points(console: Console, shown: list[PointStatus]) -> None:
    for s in shown:
        job = f" (job {s.job_id})" if s.job_id else ""
        console.print(_styled((f"{s.state:>13}", STATE_STYLE[s.state]), f" {s.stage}/{s.point}{job}"
                              + (f": {s.reason}" if s.reason else "")))
        if s.state == "failed" and s.detail:
            console.print(_styled(("\n".join("      " + line for line in s.detail.splitlines()), "dim")))


@app.command("logs")
def logs(run: str = typer.Argument(..., help="Run folder, or a sweep name under runs/."),
         point: str = typer.Argument(..., help="A point as `sfhpc status` prints it: STAGE/POINT_ID (or the id "
                                               "alone, when one stage has it)."),
         lines: int = typer.Option(20, "--lines", "-n", min=0, help="Show the last N lines of each file (0: only "
                                                                     "where the files are)."),
         as_json: bool = typer.Option(False, "--json", help="Print the job, the files and their last lines as "
                                                            "JSON.")) -> None:
    """Where a point's stdout and stderr are (its last job's files, one pair per task) and the error file of a
    failed attempt, with their last lines."""
    from sfhpc.logs import find_point, point_logs
    from sfhpc.rundir import RunDir

    with _user_errors(as_json):
        run_dir = RunDir.find(run)
        found = point_logs(run_dir, *find_point(run_dir, point))
        tails = {file.path: _tail_or_none(file.path, lines) for file in found.files}
    if as_json:
        _print_json({"point": found.key, "job": found.job.__dict__ if found.job else None,
                     "files": [{"kind": f.kind, "task": f.task, "path": str(f.path.absolute()),
                                "exists": tails[f.path] is not None, "last_lines": tails[f.path] or []}
                               for f in found.files]})
        return
    console = _console()
    console.print(_styled(("point ", "bold"), found.key))
    console.print(_styled(("job   ", "bold"), _job_line(found.job)))
    multi_task = any(f.task for f in found.files)
    for file in found.files:
        tail = tails[file.path]
        label = f"{file.kind} (task {file.task})" if multi_task and file.task is not None else file.kind
        state = " (not written yet)" if tail is None else " (empty)" if not tail and lines else ""
        console.print(_styled((f"{label:<6} ", "bold"), str(file.path.absolute()), (state, "dim")))
        for line in tail or []:
            console.print(_styled(("  | ", "dim"), line))


def _tail_or_none(path: Path, lines: int) -> list[str] | None:
    """The file's last lines, or None when it is not there (yet) or cannot be read."""
    from sfhpc.logs import last_lines

    try:
        return last_lines(path, lines)
    except OSError:
        return None


def _job_line(job: JobRecord | None) -> str:
    if job is None:
        return "none: the point was never submitted, so it has no logs (`sfhpc sweep launch` submits it)"
    if job.blocked_by:
        return f"none: the launch did not run it, its input {job.blocked_by} has no result"
    if not job.job_id:
        return f"none yet: queued by a local launch (pid {job.launcher_pid}) that had not started it"
    return f"{job.job_id} ({job.executor}, submitted {job.submitted})"


@app.command("runs")
def runs(folder: Path = typer.Argument(Path("runs"), help="A folder of run folders (default: runs), or one run "
                                                          "folder."),
         as_json: bool = typer.Option(False, "--json", help="Print every run's counts per stage as JSON."),
         output_format: OutputFormat = _format_option("one line per run and stage: run, stage, the points in "
                                                      "each state and in all.")) -> None:
    """The run folders under FOLDER with their points per stage: done, failed, active, not submitted. From their
    files alone, fast and without writing: no scheduler is asked, so a submitted point with neither result nor
    error is "active" (`sfhpc status RUN` says whether it is pending or running). A folder that is not a readable
    run is listed as skipped, with why."""
    from sfhpc.errors import RunError
    from sfhpc.status import run_folders

    shown_as = _output_format(output_format, as_json)
    with _user_errors(shown_as == "json"):
        folder = folder.expanduser()
        if not folder.is_dir():
            raise RunError(f"no folder {folder} (run folders are made by `sfhpc sweep launch`, under runs/ unless "
                           "--output says otherwise)")
        counts, skipped = _runs_counts(run_folders(folder))
    if shown_as == "json":
        _print_json({"folder": str(folder), "runs": [{"run": str(path), "counts": {k: dict(v) for k, v in c.items()}}
                                                      for path, c in counts], "skipped": skipped})
        return
    grid = _runs_grid(folder, counts, shown_as == "table")
    if shown_as == "table":
        from sfhpc.terminal import print_grid

        console = _console()
        if counts:
            print_grid(console, grid)
        else:
            console.print(f"no run folders in {folder}")
    else:
        _print_grids(shown_as, [grid])
    for line in skipped:
        _console(stderr=True).print(_styled(("skipped ", "yellow"), line))


def _runs_counts(paths: list[Path]) -> tuple[list[tuple[Path, dict[str, Counter]]], list[str]]:
    """Each run folder's points per stage and state (`file_counts`), and `path: why` for each that is not a
    readable run. On a terminal, a bar over the result files it opens (those no status or aggregate has seen)."""
    from sfhpc.errors import RunError
    from sfhpc.rundir import RunDir
    from sfhpc.status import file_counts
    from sfhpc.terminal import WorkProgress

    counted, skipped = [], []
    with WorkProgress() as progress:
        for path in paths:
            try:
                counted.append((path, file_counts(RunDir(path), progress.counter(f"checking the results in {path}"))))
            except RunError as err:
                skipped.append(f"{path}: {err}")
            except OSError as err:
                skipped.append(f"{path}: {err.strerror or err}" + (f": {err.filename}" if err.filename else ""))
    return counted, skipped


def _runs_grid(folder: Path, counts: list[tuple[Path, dict[str, Counter]]], for_terminal: bool) -> Grid:
    """One row per run and stage: the points in each state and in all. A run is named by its path in `folder` (in
    runs/, the name `sfhpc status NAME` takes); for a terminal, on one line whatever it holds."""
    from sfhpc.status import FILE_STATES
    from sfhpc.terminal import Grid, one_line

    name = one_line if for_terminal else str
    rows = [[name(str(path.relative_to(folder)) if path != folder else str(path)), stage,
             *(str(counter.get(state, 0)) for state in FILE_STATES), str(sum(counter.values()))]
            for path, by_stage in counts for stage, counter in (by_stage or {"-": Counter()}).items()]
    return Grid(f"run folders in {folder}", ["run", "stage", *FILE_STATES, "total"], rows, keys=2,
                right=frozenset([*FILE_STATES, "total"]), styles={**STATE_STYLE, "active": "cyan"})


@app.command("cancel")
def cancel(run: str = typer.Argument(..., help="Run folder, or a sweep name under runs/."),
           stage: str | None = typer.Option(None, "--stage", help="Only this stage's jobs."),
           as_json: bool = typer.Option(False, "--json", help="Print the cancelled job ids as JSON.")) -> None:
    """Cancel this run's pending and running jobs (and no one else's)."""
    from sfhpc.control import cancel_run
    from sfhpc.rundir import RunDir

    with _user_errors(as_json):
        run_dir = RunDir.find(run)
        _check_stage_option(run_dir, stage)
        cancelled = cancel_run(run_dir, stage)
    if as_json:
        _print_json({"cancelled": cancelled})
        return
    _console().print(f"cancelled {len(cancelled)} jobs" + (f": {', '.join(cancelled)}" if cancelled else ""))


@app.command("cost")
def cost(run: str = typer.Argument(..., help="Run folder, or a sweep name under runs/."),
         as_json: bool = typer.Option(False, "--json", help="Print the figures per stage as JSON.")) -> None:
    """What the run has cost and what is left, per stage, as measured.

    SLURM runs: one sacct call (tasks of finished points are cached in the run folder); local runs: elapsed time
    from the result files. Per stage: elapsed time per point (median, p95), CPU efficiency, memory used against the
    request, GPU- and CPU-hours used and still needed at the median, an ETA, and a suggested time and memory
    request (p95 and the largest MaxRSS, with a margin)."""
    from sfhpc.cost import run_cost
    from sfhpc.rundir import RunDir

    with _user_errors(as_json):
        report = run_cost(RunDir.find(run))
    if as_json:
        _print_json(report.to_json())
        return
    console = _console()
    if report.note:
        console.print(report.note, style="yellow")
    for stage in report.stages:
        for line in _cost_lines(stage):
            console.print(line, style="yellow" if line.startswith("  warning") else "")


def _cost_lines(stage: StageCost) -> list[str]:
    """One stage of `sfhpc cost` as lines of at most about 80 characters."""
    lines = [f"{stage.stage}: {stage.finished} of {stage.points} points finished, {stage.remaining} remaining"]
    if stage.elapsed_median_s is not None:
        lines.append(f"  elapsed per point: median {_duration(stage.elapsed_median_s)}, "
                     f"p95 {_duration(stage.elapsed_p95_s)}")
    usage = []
    if stage.cpu_efficiency is not None:
        usage.append(f"CPU efficiency {stage.cpu_efficiency:.2f}")
    if stage.max_rss_mb is not None:
        usage.append(f"largest MaxRSS {stage.max_rss_mb:.0f} MB of {stage.requested_mem_mb:.0f} MB requested")
    if usage:
        lines.append("  " + "; ".join(usage))
    lines.append(f"  used: {stage.point_hours:.2f} point-hours" + (
        f", {stage.gpu_hours:.2f} GPU-hours, {stage.cpu_hours:.2f} CPU-hours" if stage.gpu_hours is not None else ""))
    if stage.remaining and stage.remaining_gpu_hours is not None:
        lines.append(f"  remaining: {stage.remaining_gpu_hours:.2f} GPU-hours, {stage.remaining_cpu_hours:.2f} "
                     f"CPU-hours; ETA {_duration(stage.eta_s)} ({max(stage.running, 1)} at a time)")
    elif stage.remaining:
        lines.append("  remaining: no finished point to measure yet")
    if stage.suggested:
        lines.append("  suggested request: " + ", ".join(f"{k} {v:g}" for k, v in stage.suggested.items()))
    lines += [f"  warning: {warning}" for warning in stage.warnings]
    return lines


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min" if seconds < 7200 else \
        f"{seconds / 3600:.1f} h"


@app.command("resubmit")
def resubmit(run: str = typer.Argument(..., help="Run folder, or a sweep name under runs/."),
             failed: bool = typer.Option(False, "--failed", help="Only failed points (default: every point "
                                                                 "without a result that is not active)."),
             executor: str | None = typer.Option(None, "--executor", "-e",
                                                    help="Default: the executor the run was launched with."),
             as_json: bool = typer.Option(False, "--json", help="Print the launch report as JSON.")) -> None:
    """Submit again exactly the failed (or missing) points of a run, with their dependencies."""
    from sfhpc.control import resubmit_run
    from sfhpc.rundir import RunDir

    if executor not in (None, "auto", "local", "slurm", "debug"):
        _fail(f"--executor {executor!r}: allowed: auto, local, slurm, debug", as_json)
    with _stoppable_launch(), _user_errors(as_json):
        with _LaunchProgress(enabled=not as_json) as progress:
            report = resubmit_run(RunDir.find(run), failed_only=failed, executor=executor, progress=progress.update)
    _finish_launch(report, as_json)


@cbm_app.command("fit")
def cbm_fit(thresholds: str = typer.Argument(..., help="Per-band thresholds, lowest band first, e.g. 0,0,0,0,2,2,0 "
                                                       "(bands centred at 1.75 * 2**k c/img): 3 to 9 bands (224 px "
                                                       "images have 7, 1024 px 9), each a whole number of noise "
                                                       "levels, 0 to LEVELS-1."),
            levels: int = typer.Option(5, "--levels", help="Noise levels of the measurement, the noise-free one "
                                                           "included (SCIENCE.md: 5, SD 0 .. 0.16); thresholds lie "
                                                           "in 0 .. LEVELS-1."),
            as_json: bool = typer.Option(False, "--json", help="Print the fit as JSON.")) -> None:
    """Fit the Gaussian spatial-frequency channel to CBM thresholds (from a model or from psychophysics).

    Refused, with exit code 2 and the reason: input that is not a threshold profile, a flat profile (all thresholds
    equal: no channel), and a fit wider than the bands tested or centred outside them."""
    from sfhpc.evaluation.cbm import check_threshold_counts, fit_channel, parse_thresholds

    try:
        fit = fit_channel(check_threshold_counts(parse_thresholds(thresholds), levels), levels)
    except ValueError as err:  # NoChannel included: the message says why there is no channel
        _fail(str(err), as_json)
    if as_json:
        _print_json(fit.to_json())
        return
    _console().print(f"bandwidth {fit.bandwidth_octaves:.2f} octaves, centre {fit.centre_cpi:.1f} c/img, "
                     f"peak noise sensitivity {fit.peak_sensitivity:.3f} (A={fit.amplitude:.2f}, "
                     f"mu={fit.mu:.2f}, sigma={fit.sigma:.2f})")


# ------------------------------------------------------------------------------------------- data
@data_app.command("nsd-prepare")
def data_nsd_prepare(
    nsd_root: Path = typer.Option(..., "--nsd-root", help="NSD root (holds nsddata/, nsddata_betas/, "
                                                          "nsddata_stimuli/)."),
    subject: str = typer.Option(..., "--subject", help="NSD subject: 1..8 or subj01..subj08."),
    atlas: str = typer.Option("Kastner2015", "--atlas", help="Kastner2015 | streams | prf-visualrois."),
    rois: str = typer.Option("V1,V2,V4,VO,PHC,LO,TO", "--rois", help="Comma-separated ROI names of the atlas."),
    out: Path = typer.Option(..., "--out", help="Canonical file to write: <data.neural.dir>/subjNN.h5."),
    sessions: int | None = typer.Option(None, "--sessions", help="Use sessions 1..K (default: all of them)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Read one NSD subject's betas (one session at a time), ROI masks and design, and write its canonical
    neural-data file: repeat averages, split, z-score, PCA scores, noise ceilings. Stimuli are referenced."""
    from sfhpc.data.neural import NeuralDataError
    from sfhpc.data.nsd import plan_nsd, prepare_nsd
    from sfhpc.terminal import WorkProgress

    try:
        plan = plan_nsd(nsd_root, subject, atlas, [r.strip() for r in rois.split(",") if r.strip()], sessions,
                        out=out)
        if not as_json:
            _console().print(plan.describe_memory())
        with WorkProgress(enabled=not as_json) as progress:  # a terminal's only, whatever FORCE_COLOR says
            progress.step("NSD sessions", total=len(plan.sessions))
            summary = prepare_nsd(plan, out, progress=progress.counter("NSD sessions"))
    except (NeuralDataError, OSError) as err:
        _fail(str(err), as_json)
    if as_json:
        _print_json({**summary, "memory": plan.memory()})
        return
    from rich.table import Table

    table = Table(title=f"{summary['subject']} ({plan.atlas}, sessions 1-{plan.sessions[-1]}): "
                        f"{summary['n_images']} images ({summary['n_val']} shared), {summary['n_trials']} trials",
                  title_justify="left")
    for column in ("ROI", "voxels", "PCs (95%)", "noise ceiling %"):
        table.add_column(column, justify="left" if column == "ROI" else "right")
    for name, roi in summary["rois"].items():
        table.add_row(name, str(roi["voxels"]), str(roi["components"]), f"{roi['noise_ceiling']:.1f}")
    console = _console()
    console.print(table)
    console.print(f"wrote {summary['path']}")


# -------------------------------------------------------------------------------------- aggregate
@app.command("aggregate")
def aggregate(run: str = typer.Argument(..., help="Run folder, or a sweep name under runs/."),
              as_json: bool = typer.Option(False, "--json",
                                           help="Print rows, conditions, controls, findings and problems as JSON."),
              output_format: OutputFormat = _format_option("the rows of summary.csv: one line per point, with its "
                                                           "state, parameters, metrics and the reason it has no "
                                                           "valid result. md: every table the terminal shows, in "
                                                           "full."),
              strict: bool = typer.Option(False, "--strict", help="Exit 1 when a point is missing, failed, "
                                                                  "corrupt or incomplete (the files are written "
                                                                  "all the same).")) -> None:
    """Collect the result files: summary.csv/.md (one row per point), conditions.csv, report.md and figures/
    (per condition: mean +- SEM over seeds, each against the band=none, alpha=0 baseline by a paired test);
    guided models also against their controls (same-alpha shuffled and random predictors, weight decay alone):
    controls.csv; the study's claims tested on the run's numbers: report.md's Findings."""
    from sfhpc.report import controls_json, findings_json, headline_rows, summarize, write_report, write_summary
    from sfhpc.report.render import findings_line
    from sfhpc.rundir import RunDir
    from sfhpc.terminal import WorkProgress

    shown_as = _output_format(output_format, as_json)
    with _user_errors(shown_as == "json"), WorkProgress() as progress:
        run_dir = RunDir.find(run)
        summary = summarize(run_dir, progress.counter("checking result files"))
        progress.step("writing summary.csv, report.md and figures")
        csv_path, md_path = write_summary(run_dir, summary)
        files = write_report(run_dir, summary)
    written = [csv_path, md_path, str(files.conditions_csv), str(files.controls_csv), str(files.report_md),
               str(files.report_html), *map(str, files.figures)]
    header, rows = headline_rows(files.report)
    if shown_as == "json":
        _print_json({"tables": [t.__dict__ for t in summary.tables], "problems": summary.problems,
                     "conditions": [dict(zip(header, row, strict=True)) for row in rows],
                     "controls": controls_json(files.report), "findings": findings_json(files.report.findings),
                     "files": written})
    elif shown_as == "table":
        _print_aggregate(summary, header, rows, written, findings_line(files.report.findings))
    elif shown_as == "tsv":
        from sfhpc.report.render import summary_rows
        from sfhpc.terminal import Grid

        _print_grids("tsv", [Grid(None, *summary_rows(summary))])
    else:
        grids = [*(_stage_grid(table) for table in summary.tables), _conditions_grid(header, rows),
                 _problems_grid(summary)]
        _print_grids("md", [grid for grid in grids if grid.rows])
    if strict and summary.problems:
        raise typer.Exit(1)


CONDITIONS_TITLE = "conditions (mean ± SEM over seeds; details and p-values in report.md)"


def _print_aggregate(summary: Summary, header: list[str], rows: list[list[str]], written: list[str],
                     findings: str | None = None) -> None:
    """The point tables, the conditions table, the findings' verdicts, the problems and the files written."""
    from sfhpc.terminal import print_grid

    _print_point_tables(summary)
    console = _console()
    if rows:
        print_grid(console, _conditions_grid(header, rows[:MOST_CONDITION_ROWS]))
        if len(rows) > MOST_CONDITION_ROWS:
            console.print(f"{len(rows) - MOST_CONDITION_ROWS} more conditions in conditions.csv and report.md")
    if findings:
        console.print(findings)
    for problem in summary.problems:
        console.print(_styled((f"{problem['state']:>8}", "red"),
                              f" {problem['stage']}/{problem['point']}: {problem['reason']}"))
    console.print("wrote " + ", ".join(written))


def _conditions_grid(header: list[str], rows: list[list[str]]) -> Grid:
    from sfhpc.terminal import Grid

    return Grid(CONDITIONS_TITLE, header, rows, named_keys=False, right=frozenset({"n"}))


def _problems_grid(summary: Summary) -> Grid:
    from sfhpc.terminal import Grid

    return Grid("points without a valid result", ["stage", "point", "state", "reason"],
                [[p["stage"], p["point"], p["state"], p["reason"]] for p in summary.problems], keys=2)


def _print_point_tables(summary: Summary, most_rows: int = 40, most_metrics: int = 6) -> None:
    """One table per stage (one row per point) with at most `most_metrics` metric columns; a long or wide one is
    left, in full or in part, to summary.csv."""
    from sfhpc.report.render import constant_metrics, display_columns, format_value
    from sfhpc.terminal import print_grid

    console = _console()
    for table in summary.tables:
        if len(table.rows) > most_rows:
            console.print(f"{table.stage}: {len(table.rows)} points with results (one row each in summary.csv)")
            continue
        columns = display_columns(table)
        metrics = [c for c in columns if c in table.metrics]
        if len(metrics) > most_metrics:
            columns = [c for c in columns if c not in metrics[most_metrics:]]
            console.print(f"{table.stage}: {len(metrics) - most_metrics} more metrics per point in summary.csv "
                          f"({', '.join(metrics[most_metrics:most_metrics + 3])}, ...)")
        print_grid(console, _stage_grid(table, columns))
        constant = constant_metrics(table)
        if constant:
            console.print("same for every point: " + ", ".join(f"{k}={format_value(v)}" for k, v in constant.items()))


def _stage_grid(table: StageTable, columns: list[str] | None = None) -> Grid:
    """A stage's points with a valid result, one row each: the columns that tell them apart, then `columns` (default:
    every metric that differs between points)."""
    from sfhpc.report.render import display_columns, format_value, row_keys
    from sfhpc.terminal import Grid

    columns = columns or display_columns(table)
    return Grid(f"{table.stage}: {len(table.rows)} points with results", columns,
                [[format_value(row.get(c, "")) for c in columns] for row in table.rows],
                keys=len(row_keys(table)), right=frozenset(table.metrics))


# ------------------------------------------------------------------------------------------ export
@export_app.command("rdms")
def export_rdms(run: str = typer.Argument(..., help="Run folder, or a sweep name under runs/."),
                folder: Path = typer.Argument(..., help="Folder to copy the RDM files into (made when missing)."),
                as_json: bool = typer.Option(False, "--json", help="Print the files copied and the problems as "
                                                                   "JSON."),
                strict: bool = typer.Option(False, "--strict", help="Exit 1 when a point or file could not be "
                                                                    "copied (the others are copied all the "
                                                                    "same).")) -> None:
    """Copy every rsa point's RDM files into FOLDER, in rsatoolbox's HDF5 layout.

    One file per point and subject, POINT.SUBJECT.rdms.h5: each model layer's and each ROI's RDM over the subject's
    images, with descriptors naming model, layer, ROI, subject and image ids; an index, rdms.json, lists them. Read
    one with rsatoolbox.rdm.load_rdm(path, file_type='hdf5'). Points without a valid result and files that are not
    the ones their result recorded are listed, not copied."""
    from sfhpc.rundir import RunDir
    from sfhpc.stages.rsa.export import export_rdms as export

    _export(lambda: export(RunDir.find(run), folder), _print_rdm_export, as_json, strict)


def _export(make: Callable[[], Any], show: Callable[[Any], None], as_json: bool, strict: bool) -> None:
    """Run an export (`make`), print its report (`show`, or as JSON) and, with `strict`, exit 1 when it lists a
    problem: what `export rdms` and `export robustbench` share."""
    with _user_errors(as_json):
        report = make()
    if as_json:
        _print_json(report.to_json())
    else:
        show(report)
    if strict and report.problems:
        raise typer.Exit(1)


def _print_rdm_export(report: RdmExport) -> None:
    """A line per file copied (at most MOST_FILE_ROWS), a line per problem, and how to read the files."""
    console = _console()
    points = len({entry.point for entry in report.files})
    console.print(f"copied {len(report.files)} RDM files of {points} points into {report.folder} (index: "
                  f"{report.index})")
    for entry in report.files[:MOST_FILE_ROWS]:
        console.print(f"  {entry.file}: {entry.images} images; model {entry.model}, layers "
                      f"{', '.join(entry.layers)}; ROIs {', '.join(entry.rois)}")
    if len(report.files) > MOST_FILE_ROWS:
        console.print(f"  {len(report.files) - MOST_FILE_ROWS} more in {report.index}")
    for problem in report.problems:
        console.print(_styled((f"{problem.state:>12}", "red"), f" {problem.point}: {problem.reason}"))
    console.print(f"read one with {report.read_with}")


@export_app.command("robustbench")
def export_robustbench(run: str = typer.Argument(..., help="Run folder, or a sweep name under runs/."),
                       folder: Path = typer.Argument(..., help="Folder to write the model-info files into (made "
                                                               "when missing)."),
                       as_json: bool = typer.Option(False, "--json", help="Print the files written and the "
                                                                          "problems as JSON."),
                       strict: bool = typer.Option(False, "--strict", help="Exit 1 when a model's attack shards "
                                                                           "could not be exported (the others are "
                                                                           "written all the same).")) -> None:
    """Write a RobustBench model-info JSON file for every attacked model and threat model into FOLDER.

    One file per model, norm and epsilon, FOLDER/DATASET/NORM/eps=EPS/MODEL.json, with RobustBench's fields
    (clean_acc, autoattack_acc, eps, dataset, architecture, number_forward_passes, ...) and sfhpc's record under
    `sfhpc`; an index, robustbench.json, lists them. Only AutoAttack standard gives `autoattack_acc`: any other attack's
    number is `robust_acc`, and the footnote names the attack. `dataset` names sfhpc's data, never a RobustBench
    dataset. Models whose attack shards are not all valid are listed, not written."""
    from sfhpc.rundir import RunDir
    from sfhpc.stages.attack.export import export_robustbench as export

    _export(lambda: export(RunDir.find(run), folder), _print_robustbench_export, as_json, strict)


def _print_robustbench_export(report: RobustBenchExport) -> None:
    """A line per file written (at most MOST_FILE_ROWS), a line per problem, and what the numbers are not."""
    console = _console()
    models, variants = len({entry.model for entry in report.files}), len({entry.variant for entry in report.files})
    console.print(f"wrote {len(report.files)} RobustBench model-info files of {models} model{'s' * (models != 1)}"
                  + (f" ({variants} variants of their attack)" if variants > 1 else "")
                  + f" into {report.folder} (index: {report.index})")
    for entry in report.files[:MOST_FILE_ROWS]:
        console.print(f"  {entry.file}: clean_acc {entry.clean_acc}, {entry.accuracy_field} {entry.robust_acc} "
                      f"({entry.attack}, {entry.images} images)")
    if len(report.files) > MOST_FILE_ROWS:
        console.print(f"  {len(report.files) - MOST_FILE_ROWS} more in {report.index}")
    for problem in report.problems:
        console.print(_styled((f"{problem.state:>10}", "red"), f" {problem.point}: {problem.reason}"))
    from sfhpc.stages.attack.export import OTHER_ATTACK_FIELD

    other = any(entry.accuracy_field == OTHER_ATTACK_FIELD for entry in report.files)
    console.print(f"dataset {report.dataset} is not a RobustBench dataset: the numbers are not comparable with its "
                  "leaderboards" + ("; robust_acc (not autoattack_acc) marks an attack other than AutoAttack "
                                    "standard" if other else ""))


@export_app.command("brainscore")
def export_brainscore(run: str = typer.Argument(..., help="Run folder, or a sweep name under runs/."),
                      point: str = typer.Argument(..., help="A finished train point: its id, or train/<id>."),
                      folder: Path = typer.Argument(..., help="The plugin folder to write (new or empty; e.g. "
                                                              "brainscore_vision/models/<identifier> in a clone of "
                                                              "brain-score/vision)."),
                      identifier: str = typer.Option(None, "--identifier", help="The model's Brain-Score identifier "
                                                     "(default: <run name>_<point id>, other characters than "
                                                     "letters and digits made _)."),
                      force: bool = typer.Option(False, "--force", help="Replace an earlier export in FOLDER."),
                      as_json: bool = typer.Option(False, "--json", help="Print what was written as JSON.")) -> None:
    """Write a train point's model into FOLDER as a Brain-Score vision model plugin.

    __init__.py registers it (model_registry); model.py builds sfhpc's model with the run's trained weights (copied
    into weights/, with the model code they were trained with, sfhpc_models/: the plugin needs torch, not sfhpc) and
    names its layers and bibtex; region_layer_map/<identifier>.json commits V1, V2, V4 and IT to the four ResNet
    stages; requirements.txt and test.py (pytest, where brainscore_vision is installed) complete it."""
    from sfhpc.rundir import RunDir
    from sfhpc.stages.train.brainscore import export_brainscore as export

    with _user_errors(as_json):
        report = export(RunDir.find(run), point, folder, identifier, force)
    if as_json:
        _print_json(report.to_json())
    else:
        _print_brainscore_export(report)


def _print_brainscore_export(report: BrainScoreExport) -> None:
    """What the plugin holds and how Brain-Score finds it."""
    console = _console()
    console.print(f"wrote Brain-Score plugin {report.identifier} ({report.point} of {report.run}) into "
                  f"{report.folder}")
    console.print(f"  layers: {', '.join(report.layers)}")
    console.print("  region_layer_map: " + ", ".join(f"{region} {layer}"
                                                     for region, layer in report.region_layer_map.items()))
    console.print(f"  input: {report.preprocessing}")
    console.print(f"  files: {', '.join(report.files)}")
    console.print(f"Brain-Score finds it in brainscore_vision/models/<folder>/: "
                  f"brainscore_vision.load_model({report.identifier!r})")


# Output that cannot be written, or a disk that fills while writing: one line, not a traceback.
_FULL_OR_BROKEN = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO})


def run() -> None:
    """The `sfhpc` console script: the Typer app, with a full disk or quota (its output redirected to a file that
    cannot grow, a result that cannot be written) reported in one line on stderr, exit status 1."""
    try:
        app()
    except OSError as err:
        if err.errno not in _FULL_OR_BROKEN:
            raise
        try:
            sys.stderr.write(f"error: could not write: {err.strerror} ({errno.errorcode.get(err.errno, err.errno)})"
                             f"{f': {err.filename}' if err.filename else ''}\n")
        except OSError:
            pass
        sys.exit(1)


if __name__ == "__main__":
    run()
