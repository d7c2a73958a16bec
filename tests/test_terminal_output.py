"""What `sfhpc status` and `sfhpc aggregate` print into a pipe (80 columns, no terminal): every value of every table
in full, the columns that tell rows apart, and the same tables as TSV, markdown or JSON. The run folder is made by
hand (test_report.py's: band [none, lsf] x seed [0, 1, 2], attack in 2 shards, one shard missing, one CBM result
corrupt), so that no training runs."""

from __future__ import annotations

import pytest
from test_report import SWEEP, TEST_ACCURACY, write_attack, write_cbm, write_train
from test_report_runs import make_run
from typer.testing import CliRunner

from sfhpc.cli import app
from sfhpc.report import summarize
from sfhpc.report.render import display_columns, markdown_table
from sfhpc.rundir import RunDir

runner = CliRunner()


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
