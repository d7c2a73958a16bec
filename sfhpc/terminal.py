"""How the CLI shows a table, for people and for pipes.

A table is printed as a box table when it fits the console's width (a pipe's is 80 columns unless COLUMNS says
otherwise), else as one block per row; either way every value is there in full, never cut to an ellipsis. The same
table can be printed as TSV (a header and one line per row) or as a GitHub markdown table.

Login-node code: imports rich only when it prints, never torch.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console
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
    they are, without `named_keys`); `right`: the columns aligned right; `styles`: a style per column name (for a
    terminal only)."""

    title: str | None
    header: list[str]
    rows: list[list[str]]
    keys: int = 1
    named_keys: bool = True
    right: frozenset[str] = frozenset()
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
    """The grid as a box table when it is at most `width` cells wide, else as one block per row."""
    safe = replace(grid, title=_cell(grid.title) if grid.title else None, header=[_cell(h) for h in grid.header],
                   rows=[[_cell(c) for c in row] for row in grid.rows])
    widths = column_widths(safe)
    return _box(safe, widths) if box_width(widths) <= width else _blocks(safe)


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
    text.append(_rule("┏━┳┓", widths) + "\n")
    _append_row(text, grid.header, widths, "┃", lambda _: "bold", right)
    text.append(_rule("┡━╇┩", widths) + "\n")
    styles = [grid.styles.get(name, "") for name in grid.header]
    for row in grid.rows:
        _append_row(text, row, widths, "│", styles.__getitem__, right)
    text.append(_rule("└─┴┘", widths))
    return text


def _rule(chars: str, widths: list[int]) -> str:
    """A horizontal rule of the box: `chars` are its left end, line, crossing and right end."""
    left, line, cross, end = chars[0], chars[1], chars[2], chars[3]
    return left + cross.join(line * (w + PADDING) for w in widths) + end


def _append_row(text: Text, cells: Sequence[str], widths: list[int], wall: str, style: Callable[[int], str],
                right: list[bool]) -> None:
    from rich.cells import cell_len

    lines = [cell.split("\n") for cell in cells]
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
