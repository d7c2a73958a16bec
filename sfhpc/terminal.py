"""How the CLI shows a table, for people and for pipes, and its progress displays.

A table is printed as a box table when it fits the console's width (a pipe's is 80 columns unless COLUMNS says
otherwise), else as one block per row; either way every value is there in full, never cut to an ellipsis. The same
table can be printed as TSV (a header and one line per row) or as a GitHub markdown table.

Progress goes to stderr and only to a terminal: a pipe, a file or a CI log gets none of it.

Login-node code: imports rich only when it prints, never torch.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, TaskID
    from rich.text import Text


class OutputFormat(str, Enum):
    """What `--format` takes."""

    table = "table"
    tsv = "tsv"
    md = "md"
    json = "json"


# What a box table adds to its columns' text: one space of padding each side and a rule between columns (rich's
# default Table, whose look these tables keep).
PADDING = 2
BORDER = 1

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")  # C0 controls and DEL, but tab and newline
_TSV_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


@dataclass(frozen=True)
class Grid:
    """A table as text: a title, the column names, one list of cells per row. The first `keys` columns name a row
    (a block's heading when the table is too wide: `name: value; ...`, or the values alone where they say what
    they are, without `named_keys`); `right`: the columns aligned right; `wrap`: the columns of prose or lists,
    whose text may wrap at its spaces to make the table fit; `styles`: a style per column name (for a terminal
    only)."""

    title: str | None
    header: list[str]
    rows: list[list[str]]
    keys: int = 1
    named_keys: bool = True
    right: frozenset[str] = frozenset()
    wrap: frozenset[str] = frozenset()
    styles: dict[str, str] = field(default_factory=dict)


def printable(text: str) -> str:
    """`text` with its control characters (an escape sequence in a log or an error line, a carriage return) shown
    as escapes, so that they cannot move the cursor or restyle a terminal; newlines and tabs stay."""
    return _CONTROL.sub(lambda match: repr(match.group())[1:-1], text)


def one_line(text: str) -> str:
    """A name (a folder's) on one line, with its line breaks shown as \\n: a cell it spanned would read as two."""
    return printable(text.replace("\r", "\\r").replace("\n", "\\n"))


def tsv_cell(text: str) -> str:
    """A value as one TSV field: backslash, tab, newline and carriage return escaped (\\\\, \\t, \\n, \\r)."""
    return printable(text.translate(_TSV_ESCAPES))


def tsv_text(grid: Grid) -> str:
    """The header and one line per row, tab-separated, no styling."""
    return "".join("\t".join(tsv_cell(cell) for cell in row) + "\n" for row in [grid.header, *grid.rows])


def markdown_text(grid: Grid) -> str:
    """A GitHub markdown table under its title (a `###` heading)."""
    from sfhpc.report.render import markdown_table

    table = markdown_table([printable(h) for h in grid.header], [[printable(c) for c in row] for row in grid.rows])
    return (f"### {printable(grid.title)}\n\n" if grid.title else "") + table + "\n"


def column_widths(grid: Grid) -> list[int]:
    """Each column's width in terminal cells: its longest line of text, header included."""
    from rich.cells import cell_len

    widths = [max((cell_len(line) for line in name.split("\n")), default=0) for name in grid.header]
    for row in grid.rows:
        for i, cell in enumerate(row):
            if len(cell) > widths[i] or "\n" in cell or not cell.isascii():  # len is a cheap bound for ASCII
                widths[i] = max(widths[i], *(cell_len(line) for line in cell.split("\n")))
    return widths


def box_width(widths: list[int]) -> int:
    return sum(widths) + len(widths) * (PADDING + BORDER) + BORDER


def grid_text(grid: Grid, width: int) -> Text:
    """The grid as a box table when it fits in `width` cells (its `wrap` columns wrapped at spaces if need be), else
    as one block per row."""
    safe = replace(grid, title=_cell(grid.title) if grid.title else None, header=[_cell(h) for h in grid.header],
                   rows=[[_cell(c) for c in row] for row in grid.rows])
    widths = fitted_widths(safe, width)
    return _box(safe, widths) if widths is not None else _blocks(safe)


def fitted_widths(grid: Grid, width: int) -> list[int] | None:
    """Column widths of a box table at most `width` cells wide: each column's longest line, the `wrap` columns
    narrowed (the one with the most to spare first) down to their longest word; None when that is still too wide."""
    widths = column_widths(grid)
    excess = box_width(widths) - width
    floors = {i: _longest_word(grid, i) for i, name in enumerate(grid.header) if name in grid.wrap}
    if excess > sum(widths[i] - floor for i, floor in floors.items()):
        return None
    while excess > 0:
        narrowed = max(floors, key=lambda i: widths[i] - floors[i])
        widths[narrowed] -= 1
        excess -= 1
    return widths


def _longest_word(grid: Grid, column: int) -> int:
    from rich.cells import cell_len

    return max(cell_len(word) for text in [grid.header[column], *(row[column] for row in grid.rows)]
               for word in [*text.split(), ""])


def _wrapped(text: str, width: int) -> list[str]:
    """`text` in lines of at most `width` cells, broken at spaces only (a word longer than that has a line of its
    own)."""
    from rich.cells import cell_len

    lines: list[str] = []
    for word in text.split(" "):
        if lines and cell_len(lines[-1]) + 1 + cell_len(word) <= width:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return lines


def _cell(text: str) -> str:
    """A value as a terminal shows it in a table: printable, a tab as a space (a tab stop would break the columns)."""
    return printable(text).replace("\t", " ")


def print_grid(console: Console, grid: Grid) -> None:
    """Print the grid to fit the console (see `grid_text`); lines are never cut: a block's long line wraps in the
    terminal, not in the middle of a value's copy in the output."""
    console.print(grid_text(grid, console.width), soft_wrap=True)


def _box(grid: Grid, widths: list[int]) -> Text:
    """rich's default table (heavy head, bold header), built as text: rich's Table takes milliseconds a row, and a
    sweep's point table has thousands of them."""
    from rich.text import Text

    text = Text()
    if grid.title:
        text.append(grid.title + "\n", style="italic")
    right = [name in grid.right for name in grid.header]
    wrap = [name in grid.wrap for name in grid.header]
    text.append(_rule("┏━┳┓", widths) + "\n")
    _append_row(text, grid.header, widths, "┃", lambda _: "bold", right, wrap)
    text.append(_rule("┡━╇┩", widths) + "\n")
    styles = [grid.styles.get(name, "") for name in grid.header]
    for row in grid.rows:
        _append_row(text, row, widths, "│", styles.__getitem__, right, wrap)
    text.append(_rule("└─┴┘", widths))
    return text


def _rule(chars: str, widths: list[int]) -> str:
    """A horizontal rule of the box: `chars` are its left end, line, crossing and right end."""
    left, line, cross, end = chars[0], chars[1], chars[2], chars[3]
    return left + cross.join(line * (w + PADDING) for w in widths) + end


def _append_row(text: Text, cells: Sequence[str], widths: list[int], wall: str, style: Callable[[int], str],
                right: list[bool], wrap: list[bool]) -> None:
    from rich.cells import cell_len

    lines = [[part for line in cell.split("\n") for part in (_wrapped(line, widths[i]) if wrap[i] else [line])]
             for i, cell in enumerate(cells)]
    for k in range(max(len(cell) for cell in lines)):
        text.append(wall)
        for i, cell in enumerate(lines):
            part = cell[k] if k < len(cell) else ""
            pad = " " * (widths[i] - cell_len(part))
            text.append(" ")
            text.append(pad + part if right[i] else part + pad, style=style(i) or None)
            text.append(" " + wall)
        text.append("\n")


def _blocks(grid: Grid) -> Text:
    """One block per row: a heading of its key columns, then `name: value` lines, values aligned."""
    from rich.text import Text

    text = Text()
    if grid.title:
        text.append(grid.title + "\n", style="italic")
    rest = grid.header[grid.keys:]
    indent = 2 + max((len(name) for name in rest), default=0) + 2
    for index, row in enumerate(grid.rows):
        if index:
            text.append("\n")
        named = zip(grid.header[:grid.keys], row[:grid.keys], strict=True)
        heading = "; ".join(f"{name}: {value}" for name, value in named) if grid.named_keys else \
            "  ".join(row[:grid.keys])
        text.append(heading.replace("\n", "\n  ") + "\n", style="bold")
        for name, value in zip(rest, row[grid.keys:], strict=True):
            text.append(f"  {name}:".ljust(indent))
            text.append(value.replace("\n", "\n" + " " * indent) + "\n",
                        style=grid.styles.get(name) or None)
    text.rstrip()
    return text


# ------------------------------------------------------------------------------------------------ progress
def is_terminal(stream: TextIO) -> bool:
    """Is `stream` a terminal, whatever the environment says? (FORCE_COLOR or TTY_COMPATIBLE, set in many CI
    systems, make rich draw for a terminal into a log file; a progress display there is noise.)"""
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no such method; closed
        return False


class WorkProgress:
    """A progress display on stderr while long work runs (checking thousands of result files, expanding a large
    sweep), drawn only when stderr is a terminal and gone when the work ends. `step` names work without a count,
    `counter` gives a hook(done, total) for work with one. Elsewhere every call does nothing."""

    def __init__(self, enabled: bool = True):
        from rich.console import Console

        self.console = Console(stderr=True, highlight=False, markup=False)
        self.enabled = enabled and is_terminal(sys.stderr)
        self.bar: Progress | None = None
        self.task: TaskID | None = None
        self.description = ""

    def __enter__(self) -> WorkProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None

    def step(self, description: str, total: int | None = None) -> None:
        """Show `description` (and, with a total, a bar counting to it) in place of the work shown before."""
        if not self.enabled:
            return
        bar = self.bar or self._start()
        if self.task is not None:
            bar.remove_task(self.task)
        self.description = description
        self.task = bar.add_task(printable(description), total=total, count=f"0/{total}" if total else "")

    def counter(self, description: str) -> Callable[[int, int], None]:
        """A hook(done, total) that shows `description` with a bar counting to `total`, from its first call."""
        def update(done: int, total: int) -> None:
            if not self.enabled:
                return
            if self.task is None or self.description != description:
                self.step(description, total)
            assert self.bar is not None and self.task is not None
            self.bar.update(self.task, completed=done, total=total, count=f"{done}/{total}")
        return update

    def _start(self) -> Progress:
        from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self.bar = Progress(SpinnerColumn(), TextColumn("{task.description}", markup=False), BarColumn(),
                            TextColumn("{task.fields[count]}", markup=False), TimeElapsedColumn(),
                            console=self.console, transient=True, refresh_per_second=4)
        self.bar.start()
        return self.bar


@contextmanager
def working(description: str, enabled: bool = True) -> Iterator[WorkProgress]:
    """A WorkProgress that shows `description` from the start."""
    with WorkProgress(enabled) as progress:
        progress.step(description)
        yield progress
