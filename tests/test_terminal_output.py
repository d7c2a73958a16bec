"""What `sfhpc status` and `sfhpc aggregate` print into a pipe (80 columns, no terminal): every value of every table
in full, the columns that tell rows apart, and the same tables as TSV, markdown or JSON. The run folder is made by
hand (test_report.py's: band [none, lsf] x seed [0, 1, 2], attack in 2 shards, one shard missing, one CBM result
corrupt), so that no training runs."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from rich.console import Console
from rich.table import Table
from test_report import SWEEP, TEST_ACCURACY, write_attack, write_cbm, write_train
from test_report_runs import make_run, write_point
from typer.testing import CliRunner

from sfhpc.cli import app
from sfhpc.report import summarize
from sfhpc.report.render import display_columns, markdown_table
from sfhpc.rundir import RunDir
from sfhpc.terminal import Grid, print_grid, tsv_text

runner = CliRunner()
ELLIPSES = ("…", "...")


def sfhpc(*args: object, code: int = 0, columns: int | None = None):
    """Run the CLI as a pipe would: not a terminal, 80 columns unless `columns`."""
    result = runner.invoke(app, [str(a) for a in args], env={"COLUMNS": str(columns)} if columns else None)
    assert result.exit_code == code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


@pytest.fixture(scope="module")
def reported_run(tmp_path_factory) -> RunDir:
    run, plan = make_run(tmp_path_factory.mktemp("terminal") / "lab's runs", SWEEP)
    write_train(run, plan, TEST_ACCURACY)
    write_attack(run, plan)
    write_cbm(run, plan)
    return run


def conditions_json(run: RunDir) -> list[dict[str, str]]:
    return json.loads(sfhpc("aggregate", run.path, "--json").stdout)["conditions"]


def test_the_attack_table_shows_the_shard_that_tells_its_rows_apart(reported_run: RunDir):
    attack = next(t for t in summarize(reported_run).tables if t.stage == "attack")
    assert display_columns(attack)[:3] == ["band", "seed", "attack_shard"]
    keys = [tuple(row[c] for c in display_columns(attack)[:3]) for row in attack.rows]
    assert len(set(keys)) == len(keys) == 11  # 12 shards, one missing
    sfhpc("aggregate", reported_run.path)
    summary_md = (reported_run.path / "summary.md").read_text()
    assert "| band | seed | attack_shard |" in summary_md


def test_a_markdown_cell_keeps_its_row_whole():
    table = markdown_table(["a|b", "reason"], [["x|y", "first line\nsecond line"]])
    assert table.splitlines() == ["| a\\|b | reason |", "|---|---|", "| x\\|y | first line<br>second line |"]


def test_piped_aggregate_cuts_no_value(reported_run: RunDir):
    out = sfhpc("aggregate", reported_run.path).stdout
    assert not any(mark in out for mark in ELLIPSES), out
    lines = out.splitlines()
    for condition in conditions_json(reported_run):
        for header, value in condition.items():
            assert any(header in line for line in lines), header
            assert any(value in line for line in lines), (header, value)
    assert "attack_shard" in out


def test_a_wide_terminal_gets_the_conditions_as_one_table(reported_run: RunDir):
    out = sfhpc("aggregate", reported_run.path, columns=200).stdout
    header = next(line for line in out.splitlines() if "condition" in line and "┃" in line)
    assert all(h in header for h in conditions_json(reported_run)[0])
    assert not any(mark in out for mark in ELLIPSES)


def test_aggregate_as_tsv_is_one_line_per_point(reported_run: RunDir):
    out = sfhpc("aggregate", reported_run.path, "--format", "tsv").stdout
    rows = list(csv.reader(io.StringIO(out), delimiter="\t"))
    with open(reported_run.path / "summary.csv") as f:
        assert rows == list(csv.reader(f))  # the rows of summary.csv, tab-separated
    assert rows[0][:3] == ["stage", "point", "state"] and "attack_shard" in rows[0]
    assert len(set(rows[0])) == len(rows[0])  # each column once (band is an axis and a parameter)
    assert len(rows) == 1 + 6 + 6 + 12  # train, cbm and attack points, the corrupt and missing ones included
    assert "\x1b" not in out and "┃" not in out


def test_aggregate_as_markdown_has_every_table(reported_run: RunDir):
    out = sfhpc("aggregate", reported_run.path, "--format", "md").stdout
    assert "### attack: 11 points with results" in out
    assert "| band | seed | attack_shard |" in out
    assert "| condition | n |" in out
    assert "\x1b" not in out and "┃" not in out


def test_json_and_format_json_are_the_same(reported_run: RunDir):
    plain = json.loads(sfhpc("aggregate", reported_run.path, "--json").stdout)
    assert json.loads(sfhpc("aggregate", reported_run.path, "--format", "json").stdout) == plain


def test_an_unknown_format_or_two_formats_is_an_error(reported_run: RunDir):
    assert "tsv" in sfhpc("aggregate", reported_run.path, "--format", "xml", code=2).output
    out = sfhpc("status", reported_run.path, "--json", "--format", "tsv", code=2).output
    assert "--json" in out and "Traceback" not in out


TWO_POINTS = """\
name: two
executor: local
data: {image_size: 32, n_classes: 4, n_train: 64, n_val: 16, n_test: 8}
grid: {band: [none, lsf], seed: [0]}
stages:
  train:
    params: {width: 4, epochs: 1}
"""


@pytest.fixture
def failed_run(tmp_path: Path) -> RunDir:
    """Two train points: one done, one failed with an error whose first line holds a tab, an escape sequence and a
    carriage return (which ends the line for Python), then a traceback."""
    run, plan = make_run(tmp_path / "lab's runs", TWO_POINTS)
    done, failed = plan.stage("train").points
    write_point(run, "train", done.id, {"test_accuracy": 0.5})
    run.point_dir("train", failed.id).mkdir(parents=True)
    run.error_path("train", failed.id).write_text("ValueError: bad\tvalue \x1b[31mred\r!\n\nTraceback ...\n")
    return run


def test_status_as_tsv_lists_the_points_one_line_each(failed_run: RunDir):
    out = sfhpc("status", failed_run.path, "--format", "tsv", code=1).stdout  # a failed point: exit 1
    lines = out.splitlines()
    assert lines[0].split("\t") == ["stage", "point", "state", "job", "result", "reason"]
    assert len(lines) == 2 and lines[1].split("\t")[2] == "failed"  # without --all, the failed points
    assert lines[1].split("\t")[5] == "ValueError: bad\\tvalue \\x1b[31mred"  # (the \r ends its first line)
    every = sfhpc("status", failed_run.path, "--format", "tsv", "--all", code=1).stdout.splitlines()
    assert [line.split("\t")[2] for line in every[1:]] == ["done", "failed"]


def test_status_as_markdown_has_the_counts_and_the_points(failed_run: RunDir):
    out = sfhpc("status", failed_run.path, "--format", "md", code=1).stdout
    assert "| stage | done | failed | running | pending | not submitted | total |" in out
    assert "| train | 1 | 1 | 0 | 0 | 0 | 2 |" in out
    assert "### failed points" in out and "ValueError: bad" in out and "\x1b" not in out


def test_a_control_character_never_reaches_the_terminal(failed_run: RunDir):
    out = sfhpc("status", failed_run.path, code=1).stdout
    assert "\x1b" not in out and "\r" not in out
    assert "ValueError: bad" in out


def test_piped_sweep_expand_cuts_no_point_id(write_sweep):
    sweep = write_sweep(TWO_POINTS.replace("seed: [0]", "seed: [0, 1], lr: [0.1, 0.05]"))
    out = sfhpc("sweep", "expand", sweep).stdout
    ids = [p["id"] for p in json.loads(sfhpc("sweep", "expand", sweep, "--json").stdout)["stages"][0]["points"]]
    assert all(point_id in out for point_id in ids) and not any(mark in out for mark in ELLIPSES)
    body = out[out.index("┡"):out.index("└")].splitlines()[1:]  # the plan's table, wrapped at spaces to fit
    resources = " ".join(line.split("│")[5].strip() for line in body).strip()
    assert resources == "1 node x 1 task, 2 cpu, 0 gpu, 8 GB, 60 min"


SHARDED = TWO_POINTS.replace("grid: {band: [none, lsf], seed: [0]}", "grid: {band: [none, lsf]}\nzip: "
                             "{attack_version: [custom], attack_names: [[apgd-ce]], attack_apgd_iterations: [2]}") \
    + "  attack:\n    params: {attack_shards: 2}\n"  # two models, each attacked in 2 shards; ids over 80 characters


def test_sweep_expand_shows_the_shard_that_tells_a_models_attack_points_apart(write_sweep):
    sweep = write_sweep(SHARDED)
    for columns in (300, 80):  # one table; one block per point
        out = sfhpc("sweep", "expand", sweep, columns=columns).stdout
        attack = out[out.index("attack points"):]
        if columns == 300:
            assert "┃ attack_shard ┃" in attack.splitlines()[2], attack
        else:
            assert [line.split()[-1] for line in attack.splitlines() if "attack_shard:" in line] == ["0", "1"] * 2


def test_piped_launch_prints_each_long_point_id_on_one_line(write_sweep, tmp_path: Path):
    """A point id longer than a pipe's 80 columns (an attack shard's) is one line in a dry run's list and in a
    finished point's line, not broken where the 80th column falls."""
    sweep = write_sweep(SHARDED)
    out = sfhpc("sweep", "launch", sweep, "--output", tmp_path / "runs" / "two", "--dry-run").stdout
    plan = json.loads(sfhpc("sweep", "expand", sweep, "--json").stdout)
    attack = next(stage for stage in plan["stages"] if stage["name"] == "attack")["points"]
    assert len(attack) == 4 and all(len(point["id"]) > 80 for point in attack)
    lines = out.splitlines()
    assert all(f"  {point['id']}" in lines for point in attack), out

    from sfhpc.cli import _console, _LaunchProgress

    progress = _LaunchProgress(enabled=True)
    progress.console = _console()  # the CLI's console, writing to an 80-column file as a pipe would
    progress.console.file, progress.console.width = io.StringIO(), 80
    progress.update("attack", attack[0]["id"], "done")
    assert progress.console.file.getvalue() == f"  done attack/{attack[0]['id']}\n"


def rendered(grid: Grid, width: int) -> str:
    out = io.StringIO()
    print_grid(Console(file=out, width=width, color_system=None), grid)
    return out.getvalue()


def test_a_table_that_fits_looks_as_rich_draws_it():
    grid = Grid("points", ["stage", "n", "reason"], [["train", "12", "ok"], ["attack", "3", "ε=8/255 ± 0.1"]],
                right=frozenset({"n"}))
    table = Table(title="points", title_justify="left", title_style="")
    for name in grid.header:
        table.add_column(name, justify="right" if name in grid.right else "left")
    for row in grid.rows:
        table.add_row(*row)
    out = io.StringIO()
    Console(file=out, width=80, color_system=None).print(table)
    expected = [line.rstrip() for line in out.getvalue().splitlines()]
    assert rendered(grid, 80).splitlines() == expected


def test_a_table_too_wide_becomes_one_block_per_row_with_every_value_whole():
    long = "band=lsf+human-alpha=0.9-roi=V1-subject=subj01-predictor=shuffled-seed=3"
    grid = Grid("conditions", ["condition", "n", "clean accuracy"], [[long, "3", "0.807 ± 0.018"]] * 2,
                named_keys=False)
    text = rendered(grid, 40)
    assert text.splitlines()[:4] == ["conditions", long, "  n:              3", "  clean accuracy: 0.807 ± 0.018"]
    assert "┃" not in text and "…" not in text
    assert rendered(grid, 200).count(long) == 2 and "┃" in rendered(grid, 200)


def test_a_column_of_prose_wraps_at_its_spaces_to_fit_and_never_breaks_a_word():
    grid = Grid(None, ["stage", "axes"], [["train", "subject, roi, predictor, alpha"], ["attack", "shard"]],
                wrap=frozenset({"axes"}))
    lines = rendered(grid, 30).splitlines()
    assert lines[3:6] == ["│ train  │ subject, roi,     │",
                          "│        │ predictor, alpha  │",
                          "│ attack │ shard             │"]
    assert "┃" not in rendered(grid, 20)  # narrower than its longest word ("predictor,"): one block per row


def test_a_value_with_a_newline_spans_two_lines_of_its_cell():
    lines = rendered(Grid(None, ["a", "b"], [["one\ntwo", "x"]]), 80).splitlines()
    assert lines[3:5] == ["│ one │ x │", "│ two │   │"]


def test_tsv_escapes_what_would_break_a_line_or_a_field():
    assert tsv_text(Grid(None, ["a"], [["x\ty\nz\\w\x1b"]])) == "a\nx\\ty\\nz\\\\w\\x1b\n"


def test_shell_completion_can_be_shown_and_completes_commands_and_choices(monkeypatch):
    import typer.completion

    # --show-completion is a flag: typer asks shellingham which shell runs the command, which depends on how the test
    # suite was started (it failed under one `make test`). Here the user's shell is bash.
    monkeypatch.setattr(typer.completion, "_get_shell_name", lambda: "bash")
    script = runner.invoke(app, ["--show-completion"], prog_name="sfhpc")
    assert script.exit_code == 0, script.output
    assert "complete -o default -F _sfhpc_completion sfhpc" in script.stdout
    for words, expected in (("sfhpc ru", "runs\n"), ("sfhpc status --format ", "table\ntsv\nmd\njson\n")):
        env = {"_SFHPC_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": str(len(words.split(" ")) - 1)}
        assert runner.invoke(app, [], env=env, prog_name="sfhpc").stdout == expected


def test_version_prints_the_package_version():
    from importlib.metadata import version

    assert sfhpc("--version").stdout == f"sfhpc {version('sfhpc')}\n"


@pytest.mark.parametrize("command", ["logs", "runs"])
def test_dash_h_is_help_on_the_new_commands(command: str):
    short, long = runner.invoke(app, [command, "-h"]), runner.invoke(app, [command, "--help"])
    assert short.exit_code == 0 and short.stdout == long.stdout and "Usage: " in short.stdout
