"""report.html: report.md as one self-contained page, for a cluster's file browser or a laptop after scp.

The page is report.md's own content (headings, captions, tables, figures, findings, problems), so the two never
disagree: this module turns the Markdown that sfhpc.report.render writes into HTML. Figures are embedded (base64
data URIs), tables sort by any column (click its header; numbers sort as numbers, "0.944 ± 0.024" by its mean, n/a
last), and a filter above them keeps the rows of one condition or of any text (`report.html#filter=L2&condition=...`
opens with them set). No network, no external file:
the style and the script are in the page. Login-node code: standard library only.

The Markdown it reads is the subset render.py writes: `#` headings, paragraphs, pipe tables (cells with `\\|` for
a literal bar; a table whose first cell is blank continues the row above's), `![alt](path)` images, `- ` lists,
and inline `code`, **bold**, *italic*.
"""

from __future__ import annotations

import base64
import html
import itertools
import re
from pathlib import Path

IMAGE = re.compile(r"!\[([^\]]*)\]\(([^)]+)\)")
MIME = {".png": "image/png", ".svg": "image/svg+xml", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}

STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 0 auto; max-width: 1200px; padding: 0 1.5em 3em; color: #222; }
h1 { border-bottom: 2px solid #ccc; padding-bottom: .2em; }
h2 { margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: .8em 0; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: left; vertical-align: top; }
th { background: #f0f2f5; cursor: pointer; user-select: none; white-space: nowrap; }
th[data-sorted="asc"]::after { content: " \\25B2"; } th[data-sorted="desc"]::after { content: " \\25BC"; }
tr:nth-child(even) td { background: #fafafa; }
img { max-width: 100%; border: 1px solid #eee; }
code { background: #f3f3f3; padding: 0 .25em; border-radius: 3px; }
#filters { position: sticky; top: 0; background: #fff; padding: .6em 0; border-bottom: 1px solid #ddd; z-index: 1; }
#filters input { width: 22em; } #filters select { max-width: 40em; }
.hidden { display: none; }
"""

SCRIPT = """
(function () {
  function sortKey(text) {
    // a cell that starts with a number ("0.944 ± 0.024", "-0.070", "< 0.001 (df 1)") sorts by it; text by text
    var match = text.replace(/\\u2212/g, "-").match(/^\\s*[<>]?\\s*([-+]?\\d*\\.?\\d+(?:e[-+]?\\d+)?)/i);
    return match ? parseFloat(match[1]) : NaN;
  }
  function sortBy(table, column, th) {
    var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
    var descending = th.getAttribute("data-sorted") === "asc";
    rows.sort(function (a, b) {
      var x = a.cells[column].textContent, y = b.cells[column].textContent;
      var p = sortKey(x), q = sortKey(y);
      var order;
      if (isNaN(p) && isNaN(q)) { order = x.localeCompare(y); }
      else if (isNaN(p)) { return 1; } else if (isNaN(q)) { return -1; }
      else { order = p - q; }
      return descending ? -order : order;
    });
    rows.forEach(function (row) { body.appendChild(row); });
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (cell) { cell.removeAttribute("data-sorted"); });
    th.setAttribute("data-sorted", descending ? "desc" : "asc");
  }
  function applyFilters() {
    var text = document.getElementById("filter-text").value.toLowerCase();
    var condition = document.getElementById("filter-condition").value;
    var shown = 0;
    document.querySelectorAll("table.report tbody tr").forEach(function (row) {
      var column = row.parentNode.parentNode.getAttribute("data-condition-column");
      var ok = (!text || row.textContent.toLowerCase().indexOf(text) >= 0) &&
               (!condition || column === null || row.cells[+column].textContent === condition);
      row.classList.toggle("hidden", !ok);
      if (ok) { shown += 1; }
    });
    document.getElementById("filter-count").textContent = shown + " rows shown";
  }
  document.querySelectorAll("table.report").forEach(function (table) {
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, column) {
      th.addEventListener("click", function () { sortBy(table, column, th); });
    });
  });
  // report.html#filter=TEXT&condition=CONDITION opens with those filters set (a link to a view)
  var wanted = new URLSearchParams(window.location.hash.slice(1));
  if (wanted.get("filter")) { document.getElementById("filter-text").value = wanted.get("filter"); }
  if (wanted.get("condition")) { document.getElementById("filter-condition").value = wanted.get("condition"); }
  document.getElementById("filter-text").addEventListener("input", applyFilters);
  document.getElementById("filter-condition").addEventListener("change", applyFilters);
  applyFilters();
  document.body.setAttribute("data-ready", "yes");
})();
"""


def report_html(markdown: str, folder: Path) -> str:
    """The page for report.md's text `markdown`; image paths are relative to `folder` (the run folder)."""
    blocks = [block.strip("\n") for block in re.split(r"\n\s*\n", markdown) if block.strip()]
    body = [_block_html(block, folder) for block in blocks]
    title = next((block.lstrip("# ") for block in blocks if block.startswith("# ")), "sfhpc report")
    conditions = sorted(set(re.findall(r'<td data-condition="1">([^<]*)</td>', "".join(body))))
    options = "".join(f"<option>{condition}</option>" for condition in conditions)
    filters = ('<div id="filters"><label>filter rows <input id="filter-text" type="search" placeholder="any text, '
               'e.g. L2 or band=lsf"></label> <label>condition <select id="filter-condition"><option value="">'
               f'all conditions</option>{options}</select></label> <span id="filter-count"></span></div>')
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>\n<body>\n{body[0] if body else ''}\n"
            f"{filters}\n" + "\n".join(body[1:]) + f"\n<script>{SCRIPT}</script>\n</body></html>\n")


def _block_html(block: str, folder: Path) -> str:
    lines = block.splitlines()
    if block.startswith("#"):
        level = len(block) - len(block.lstrip("#"))
        return f"<h{level}>{_inline(block[level:].strip())}</h{level}>"
    if all(line.startswith("|") for line in lines) and len(lines) >= 2:
        return _table_html(lines)
    if all(line.startswith("- ") for line in lines):
        return "<ul>" + "".join(f"<li>{_inline(line[2:])}</li>" for line in lines) + "</ul>"
    image = IMAGE.fullmatch(block.strip())
    if image:
        return _figure_html(image.group(1), folder / image.group(2))
    return f"<p>{_inline(' '.join(lines))}</p>"


def _table_html(lines: list[str]) -> str:
    header, rows = _cells(lines[0]), [_cells(line) for line in lines[2:]]
    condition_column = header.index("condition") if "condition" in header else None
    for before, row in itertools.pairwise(rows):  # a blank first cell continues the row above's (render.family_table)
        if not row[0] and before[0]:
            row[0] = before[0]
    head = "".join(f"<th>{_inline(cell)}</th>" for cell in header)
    body = "".join("<tr>" + "".join(_td(cell, i == condition_column) for i, cell in enumerate(row)) + "</tr>"
                   for row in rows)
    marker = f' data-condition-column="{condition_column}"' if condition_column is not None else ""
    return f'<table class="report"{marker}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _td(cell: str, is_condition: bool) -> str:
    return f'<td data-condition="1">{html.escape(cell)}</td>' if is_condition else f"<td>{_inline(cell)}</td>"


def _cells(line: str) -> list[str]:
    """A pipe-table row's cells: split on bars that are not escaped, outer bars dropped, `\\|` back to `|`."""
    inner = line.strip()[1:-1] if line.strip().endswith("|") else line.strip()[1:]
    return [cell.strip().replace("\\|", "|") for cell in re.split(r"(?<!\\)\|", inner)]


def _figure_html(alt: str, path: Path) -> str:
    """An image embedded as a data URI; a missing file becomes a line that says so, not a broken link."""
    try:
        data = base64.b64encode(path.read_bytes()).decode("ascii")
    except OSError:
        return f"<p><em>figure {html.escape(path.name)} is missing</em></p>"
    mime = MIME.get(path.suffix.lower(), "application/octet-stream")
    return f'<figure><img alt="{html.escape(alt)}" src="data:{mime};base64,{data}"></figure>'


def _inline(text: str) -> str:
    """Escape, then `code`, **bold**, *italic* (not inside code)."""
    parts = re.split(r"(`[^`]*`)", text)
    out = []
    for part in parts:
        if part.startswith("`") and part.endswith("`") and len(part) >= 2:
            out.append(f"<code>{html.escape(part[1:-1])}</code>")
            continue
        escaped = html.escape(part)
        escaped = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", escaped)
        escaped = re.sub(r"(?<![\w*])\*([^*]+)\*(?![\w*])", r"<em>\1</em>", escaped)
        out.append(escaped)
    return "".join(out)
