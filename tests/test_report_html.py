"""report.html: report.md as one self-contained page (figures embedded, sortable tables, a condition filter), checked
as text and in a real headless browser (Chromium from the Debian packages; `make test` installs it when missing)."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_report import SWEEP, TEST_ACCURACY, write_attack, write_cbm, write_train
from test_report_runs import make_run

from sfhpc.report import write_report
from sfhpc.report.html import report_html

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_browser = pytest.mark.skipif(CHROMIUM is None and not os.environ.get("CI"),
                                   reason="no chromium on PATH (make test installs it: apt-get install chromium)")


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    run, plan = make_run(tmp_path_factory.mktemp("html") / "lab's runs", SWEEP)
    write_train(run, plan, TEST_ACCURACY)
    write_attack(run, plan)
    write_cbm(run, plan)
    return run, write_report(run)


def browser(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    assert CHROMIUM is not None, "chromium is not installed (make test installs it: apt-get install chromium)"
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
                           "--v=0", *args], capture_output=True, text=True, timeout=timeout)


def console_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


def test_the_page_holds_every_table_and_figure_of_report_md_and_nothing_outside_it(written):
    run, files = written
    page = files.report_html.read_text()
    markdown = files.report_md.read_text()
    assert page.count("<table") == len(re.findall(r"^\|---", markdown, flags=re.M)) > 0
    rows = len(re.findall(r"^\|(?!---)", markdown, flags=re.M))  # header and body rows, not the |---| lines
    assert page.count("<tr>") == rows
    assert page.count('src="data:image/png;base64,') == len(files.figures) > 0
    assert not re.search(r'(src|href)="(?!data:)', page)  # nothing to fetch: the page travels alone
    conditions = sorted({row.condition for row in files.report.rows})
    assert re.findall(r"<option>([^<]*)</option>", page) == conditions


def test_user_text_is_escaped_and_continuation_rows_name_their_metric():
    markdown = ("# Report: <b>x</b>\n\nA *caption* with `a<b` and **bold**.\n\n"
                "| metric | condition | p |\n|---|---|---|\n| accuracy | band=<script>alert(1)</script> | 0.5 |\n"
                "|  | a \\| b | < 0.001 |\n")
    page = report_html(markdown, Path("."))
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<em>caption</em>" in page and "<code>a&lt;b</code>" in page and "<strong>bold</strong>" in page
    assert "<tr><td>accuracy</td>" in page and page.count("<td>accuracy</td>") == 2  # a sorted row keeps its metric
    assert '<td data-condition="1">a | b</td>' in page and "<td>&lt; 0.001</td>" in page


@needs_browser
def test_the_page_loads_in_a_browser_without_a_console_message_and_is_not_blank(written, tmp_path):
    _, files = written
    url = files.report_html.resolve().as_uri()
    loaded = browser("--dump-dom", url)
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    assert 'data-ready="yes"' in loaded.stdout, "the page's script did not finish"
    assert console_lines(loaded.stderr) == []
    assert loaded.stdout.count("<img") == len(files.figures) and loaded.stdout.count("<table") >= 2

    shot = tmp_path / "report.png"
    assert browser("--window-size=1200,1600", f"--screenshot={shot}", url).returncode == 0
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.shape == (1600, 1200) and (pixels < 200).mean() > 0.02 and pixels.std() > 20


@needs_browser
def test_the_condition_filter_and_sorting_work_in_a_browser(written, tmp_path):
    _, files = written
    condition = "band=lsf"
    filtered = browser("--dump-dom", files.report_html.resolve().as_uri() + f"#condition={condition}")
    assert console_lines(filtered.stderr) == []
    rows = re.findall(r'<tr( class="[^"]*")?><td>[^<]*</td><td data-condition="1">([^<]*)</td>', filtered.stdout)
    shown = {name for hidden, name in rows if "hidden" not in hidden}
    assert shown == {condition} and {name for _, name in rows} == {"band=none", condition}

    # Click the "mean ± SEM" header of the first table twice (ascending, then descending), then "Δ vs baseline" (signed
    # numbers: as text "+0.02" would come before "-0.07"), and read the orders back.
    clicks = """<script>
      var table = document.querySelector("table.report"), header = table.tHead.rows[0].cells;
      function index(title) {
        return Array.prototype.findIndex.call(header, function (th) { return th.textContent === title; });
      }
      function order(column) { return Array.prototype.map.call(table.tBodies[0].rows,
                                                               function (r) { return r.cells[column].textContent; }); }
      var mean = index("mean ± SEM"), delta = index("Δ vs baseline");
      header[mean].click(); var up = order(mean); header[mean].click(); var down = order(mean);
      header[delta].click(); var deltas = order(delta);
      var result = document.createElement("pre"); result.id = "sorted";
      result.textContent = JSON.stringify([up, down, deltas]); document.body.appendChild(result);
    </script></body>"""
    page = tmp_path / "clicked.html"
    page.write_text(files.report_html.read_text().replace("</body>", clicks))
    clicked = browser("--dump-dom", page.as_uri())
    assert console_lines(clicked.stderr) == []
    up, down, deltas = json.loads(html.unescape(re.search(r'<pre id="sorted">(.*?)</pre>', clicked.stdout).group(1)))
    means = [float(cell.split(" ")[0]) if cell[0].isdigit() else float("nan") for cell in up]
    numbers = [m for m in means if m == m]
    assert numbers == sorted(numbers) and len(numbers) >= 4
    assert [m for m in means[len(numbers):]] == [m for m in means if m != m]  # n/a last
    assert [float(c.split(" ")[0]) for c in down if c[0].isdigit()] == sorted(numbers, reverse=True)
    signed = [float(cell) for cell in deltas if cell[0] in "+-"]
    assert signed == sorted(signed) and signed[0] < 0 < signed[-1], deltas
    assert deltas[len(signed):] == [cell for cell in deltas if cell[0] not in "+-"]  # "baseline" cells last
