"""`bce eval --html PATH`: one self-contained page, its numbers the JSON report's, written
all or nothing with the other outputs."""

from __future__ import annotations

import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from bce_cli.cli import app

ROOT = Path(__file__).resolve().parents[1]
DIGITS = (str(ROOT / "sample_data" / "digits_preds.parquet"),
          str(ROOT / "sample_data" / "digits_labels.parquet"))
runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, ["eval", *(str(a) for a in args)])


class Page(HTMLParser):
    """Counts of elements and classes, checking that every svg/table opened is closed."""

    def __init__(self, text: str):
        super().__init__()
        self.open: list[str] = []
        self.starts: dict[str, int] = {}
        self.classes: dict[str, int] = {}
        self.text: list[str] = []
        self.rows: list[list[str]] = []  # the table's cells, row by row
        self.bars: list[str] = []  # the text of each bar-row of the chart
        self.diagonals: list[str] = []  # the d of each reliability diagonal
        self._cell: list[str] | None = None
        self._bar: list[str] | None = None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.starts[tag] = self.starts.get(tag, 0) + 1
        for cls in (dict(attrs).get("class") or "").split():
            self.classes[cls] = self.classes.get(cls, 0) + 1
        if tag in ("svg", "table", "g", "figure"):
            self.open.append(tag)
        attrs = dict(attrs)
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "g" and attrs.get("class") == "bar-row":
            self._bar = []
        elif tag == "path" and attrs.get("class") == "diagonal":
            self.diagonals.append(attrs["d"])

    def handle_endtag(self, tag):
        if tag in ("svg", "table", "g", "figure"):
            assert self.open and self.open[-1] == tag, (tag, self.open)
            self.open.pop()
        if tag in ("td", "th"):
            self.rows[-1].append("".join(self._cell))
            self._cell = None
        elif tag == "g" and self._bar is not None:
            self.bars.append("".join(self._bar))
            self._bar = None

    def handle_data(self, data):
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)
        if self._bar is not None:
            self._bar.append(data)


def parse(path) -> tuple[str, Page]:
    text = Path(path).read_text(encoding="utf-8")
    page = Page(text)
    assert not page.open, page.open
    return text, page


def self_contained(text: str) -> None:
    low = text.lower()
    for bad in ("http://", "https://", "src=", "<script", "<link", "@import", "url("):
        if bad == "http://" and low.count(bad) == low.count('xmlns="http://www.w3.org/2000/svg"'):
            continue  # the SVG namespace is a name, never fetched
        assert bad not in low, bad


def _run(tmp_path, *extra, inputs=DIGITS):
    html, report = tmp_path / "r.html", tmp_path / "r.json"
    res = invoke(*inputs, "--html", html, "--report", report, *extra)
    assert res.exit_code in (0, 1), res.output
    return res, json.loads(report.read_text()), *parse(html)


def test_page_holds_the_json_reports_numbers_and_gate_failures(tmp_path):
    res, report, text, page = _run(tmp_path, "--max-class-loss", "0.1")
    assert res.exit_code == 1 and report["failures"]
    self_contained(text)
    assert f"{report['loss']:.6g}" in text
    for c in report["classes"]:
        assert f"{c['loss']:.6g}" in text, c["name"]
        assert f"{c['prior_loss']:.6g}" in text, c["name"]
    for failure in report["failures"]:
        assert failure in "".join(page.text)
    assert "FAILED" in text
    assert page.classes["bar-row"] == len(report["classes"])
    assert page.starts["svg"] == 1  # the bar chart only: no --metrics
    assert "reliability" not in page.classes and "histogram" not in page.classes
    assert page.classes["ci"] == len(report["classes"])  # every interval is known here
    assert page.starts["tr"] == len(report["classes"]) + 1
    # the table: one row per class, its cells the JSON report's numbers
    head, *rows = page.rows
    assert head[:6] == ["class", "loss", "95% CI", "prior", "n_pos", "n_neg"]
    for c, row in zip(report["classes"], rows, strict=True):
        lo, hi = c["loss_ci"]
        assert row == [c["name"], f"{c['loss']:.6g}", f"{lo:.6g}–{hi:.6g}",
                       f"{c['prior_loss']:.6g}", f"{c['n_pos']:.0f}", f"{c['n_neg']:.0f}"]
    # the chart: worst against the prior first, each with its loss and prior
    shown = sorted(report["classes"], key=lambda c: c["prior_loss"] - c["loss"])
    for c, bar in zip(shown, page.bars, strict=True):
        assert bar.startswith(f"{c['name']}: loss {c['loss']:.6g}, prior "
                              f"{c['prior_loss']:.6g}"), bar


def test_passed_run_says_so(tmp_path):
    res, report, text, page = _run(tmp_path)
    assert res.exit_code == 0 and report["passed"]
    assert page.classes.get("passed") == 1 and "failed" not in page.classes
    assert "failures" not in page.classes


def test_metrics_add_reliability_diagrams_and_histograms(tmp_path):
    res, report, text, page = _run(tmp_path, "--metrics", "all")
    self_contained(text)
    n = len(report["classes"])
    assert page.classes["reliability"] == n + 1  # each class and all classes together
    assert page.classes["histogram"] == n + 1
    assert len(page.diagonals) == n + 1
    for d in page.diagonals:  # from the lower left corner (0, 0) to the upper right (1, 1)
        x0, y0, x1, y1 = map(float, d.lstrip("M").replace("L", " ").split())
        assert x1 - x0 == y0 - y1 > 100
    assert page.starts["svg"] == 1 + 2 * (n + 1)
    assert page.classes["positives"] > 0 and page.classes["negatives"] > 0
    for c in report["classes"]:
        assert f"{c['auroc']:.4g}" in text and f"{c['ece']:.3g}" in text
    assert "auroc" in "".join(page.text)
    # the histograms are in the page only: the JSON report has no trace of them
    assert "histogram" not in json.dumps(report)


def test_auroc_alone_gives_histograms_but_no_reliability(tmp_path):
    _, _, _, page = _run(tmp_path, "--metrics", "auroc")
    assert page.classes["histogram"] > 0 and "reliability" not in page.classes


def _many(tmp_path, rng, names, rows=200):
    k = len(names)
    y = rng.random((rows, k)) < 0.3
    x = np.where(y, 1.0, -1.0) + rng.standard_normal((rows, k)) * 2
    pq.write_table(pa.table({n: x[:, i] for i, n in enumerate(names)}),
                   tmp_path / "preds.parquet")
    pq.write_table(pa.table({n: y[:, i] for i, n in enumerate(names)}),
                   tmp_path / "labels.parquet")
    return str(tmp_path / "preds.parquet"), str(tmp_path / "labels.parquet")


def test_a_thousand_classes_chart_twenty_and_list_all_under_a_megabyte(tmp_path, rng):
    names = [f"class_{i:04d}" for i in range(1000)]
    res, report, text, page = _run(tmp_path, "--metrics", "all",
                                   inputs=_many(tmp_path, rng, names))
    assert len(report["classes"]) == 1000
    assert (tmp_path / "r.html").stat().st_size < 1_000_000
    assert page.classes["bar-row"] == 20
    assert page.classes["reliability"] == 21 and page.classes["histogram"] == 21
    assert page.starts["tr"] == 1001
    # the charted ones are the worst by loss - prior
    gaps = sorted(((c["loss"] - c["prior_loss"], c["name"]) for c in report["classes"]),
                  reverse=True)
    bars = text.split('<svg class="bars"')[1].split("</svg>")[0]
    for _, name in gaps[:20]:
        assert f">{name}<" in bars
    for _, name in gaps[20:]:
        assert f">{name}<" not in bars
        assert f">{name}<" in text  # in the table


def test_class_names_are_escaped(tmp_path, rng):
    evil = "<script>alert('x')</script>"
    names = [evil, 'a "quoted" & <b>bold</b>', "plain"]
    _, report, text, page = _run(tmp_path, inputs=_many(tmp_path, rng, names))
    assert [c["name"] for c in report["classes"]] == names
    assert "<script" not in text.lower() and "<b>" not in text
    assert "&lt;script&gt;" in text and "&amp; &lt;b&gt;" in text
    assert evil in "".join(page.text)  # read back as text, not markup
    assert "script" not in page.starts and "b" in page.starts  # only the page's own <b>
    assert page.starts["b"] == 1


def test_a_failed_run_leaves_no_page(tmp_path):
    bad = tmp_path / "bad.npy"
    np.save(bad, np.array([[0.1, np.nan], [0.2, 0.3]]))
    targets = tmp_path / "t.npy"
    np.save(targets, np.array([[1.0, 0.0], [0.0, 1.0]]))
    html, report = tmp_path / "r.html", tmp_path / "r.json"
    res = invoke(bad, targets, "--html", html, "--report", report)
    assert res.exit_code == 2, res.output
    assert not html.exists() and not report.exists()
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_page_that_cannot_be_made_leaves_no_report_either(tmp_path, monkeypatch):
    from bce_cli import html_report
    from bce_cli.errors import BCEInputError

    def broken(*args):
        raise BCEInputError("no page")

    monkeypatch.setattr(html_report, "render", broken)
    html, report = tmp_path / "r.html", tmp_path / "r.json"
    res = invoke(*DIGITS, "--html", html, "--report", report)
    assert res.exit_code == 2, res.output
    assert not html.exists() and not report.exists()
    assert not list(tmp_path.glob(".*"))


def test_a_page_that_cannot_be_put_in_place_leaves_no_temporary_file(tmp_path, monkeypatch):
    from bce_cli import _safe_write

    commit = _safe_write.SafeFile.commit

    def failing(self):
        if self.name.endswith(".html"):
            raise OSError("disk gone")
        return commit(self)

    monkeypatch.setattr(_safe_write.SafeFile, "commit", failing)
    html = tmp_path / "r.html"
    res = invoke(*DIGITS, "--html", html)
    assert res.exit_code != 0
    assert not html.exists()
    assert not list(tmp_path.glob(".*"))


def test_a_failed_run_keeps_the_previous_page(tmp_path):
    html = tmp_path / "r.html"
    html.write_text("previous")
    res = invoke(*DIGITS, "--html", html, "--report", tmp_path / "r.json", "--bins", "0")
    assert res.exit_code == 2
    assert html.read_text() == "previous"


@pytest.mark.parametrize("other", ["--report", "--output"])
def test_html_naming_another_output_is_refused(tmp_path, other):
    path = tmp_path / "same"
    extra = ["--reduction", "none"] if other == "--output" else []
    res = invoke(*DIGITS, "--html", path, other, path, *extra)
    assert res.exit_code == 2
    assert "same file" in res.output
    assert not path.exists()


def test_html_over_an_input_is_refused(tmp_path):
    preds = tmp_path / "preds.parquet"
    shutil.copy(DIGITS[0], preds)
    before = preds.read_bytes()
    res = invoke(preds, DIGITS[1], "--html", preds)
    assert res.exit_code == 2 and "overwrite the input" in res.output
    assert preds.read_bytes() == before


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def test_a_headless_browser_renders_the_charts(tmp_path):
    browser = _chromium()
    if browser is None:
        pytest.skip("no Chromium on this machine")
    _, report, _, page = _run(tmp_path, "--metrics", "all")
    res = subprocess.run([browser, "--headless", "--disable-gpu", "--no-sandbox",
                          f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom",
                          (tmp_path / "r.html").as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    dom = res.stdout
    assert dom.count("<svg") == page.starts["svg"] > 1
    assert dom.count('class="bar-row"') == len(report["classes"])
    assert "<rect" in dom and "<polyline" in dom
