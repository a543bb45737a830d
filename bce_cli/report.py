"""Render reports: a Rich table for people, JSON / CSV / Markdown for machines and CI."""

from __future__ import annotations

import csv
import io
import json
import sys

import numpy as np

from .errors import printable

# How a report says an infinite loss: strict JSON has no infinity, and null is kept
# for a loss that is not a number (--nan-policy propagate).  float() reads it back.
INF = "inf"


def loss_value(v) -> float | str | None:
    """A loss as the report holds it: a float, ``"inf"``, or None for NaN."""
    return loss_values([v])[0]


def loss_values(a) -> list:
    """:func:`loss_value` of every element of an array, in one pass (a million classes).

    >>> loss_values(np.array([0.5, np.inf, -np.inf, np.nan]))
    [0.5, 'inf', '-inf', None]
    """
    a = np.asarray(a, dtype=np.float64)
    out = a.astype(object)
    out[np.isnan(a)] = None
    out[a == np.inf] = INF
    out[a == -np.inf] = "-" + INF
    return out.tolist()


def finite_values(a) -> list:
    """Floats of an array, None where not finite (counts and rates: NaN only under
    --nan-policy propagate)."""
    a = np.asarray(a, dtype=np.float64)
    out = a.astype(object)
    out[~np.isfinite(a)] = None
    return out.tolist()


def interval_values(ci) -> list:
    """Intervals ``(2, C)`` (lows, highs) as the report holds them: ``[low, high]`` per
    class (each a :func:`loss_value`), or None where either end is NaN (fewer than
    two rows: no spread to estimate).

    >>> interval_values(np.array([[0.1, np.nan], [0.3, 0.5]]))
    [[0.1, 0.3], None]
    """
    ci = np.asarray(ci, dtype=np.float64)
    lows, highs = loss_values(ci[0]), loss_values(ci[1])
    return [None if lo is None or hi is None else [lo, hi]
            for lo, hi in zip(lows, highs, strict=True)]


def loss_number(v) -> float | None:
    """A loss of a report (this run's or a baseline read back) as a float or None."""
    return None if v is None else float(v)


def _g(v, digits: int = 6) -> str:
    return _g_column([v], digits)[0]


def _g_column(values, digits: int = 6, none: str = "-") -> list[str]:
    """:func:`_g` of a whole column (a million classes: no call per cell)."""
    fmt = f"{{:.{digits}g}}".format
    return [none if v is None else v if isinstance(v, str)
            else str(int(v)) if isinstance(v, float) and v.is_integer() and abs(v) < 1e15
            else fmt(v) for v in values]


def _shown(name: str) -> str:
    """A class name in a table: control characters (a newline, a tab) escaped, so that
    one class stays one row."""
    return name if name.isprintable() else printable(name, None)


def _pct_column(values) -> list[str]:
    return ["-" if v is None else f"{100 * v:.1f}%" for v in values]


def _loss(v, digits: int = 6) -> str:
    return _g_column([v], digits, none="NaN")[0]


def _pct(v) -> str:
    return _pct_column([v])[0]


def to_json(report: dict) -> str:
    """The report as strict JSON: keys indented, one class per line, lists of names on
    one line.  Linear in the number of classes and written by ``json``'s C encoder
    (``indent=`` would send a million classes through its pure-Python one: 30 s).

    >>> print(to_json({"loss": 0.5, "classes": [{"name": "a"}, {"name": "b"}],
    ...                "inputs": {"columns": ["a", "b"]}}))
    {
      "loss": 0.5,
      "classes": [
        {"name": "a"},
        {"name": "b"}
      ],
      "inputs": {
        "columns": ["a", "b"]
      }
    }
    """
    return _json(report, "")


def _json(v, pad: str) -> str:
    inner = pad + "  "
    if isinstance(v, dict) and v:
        items = (f"{inner}{json.dumps(str(k))}: {_json(x, inner)}" for k, x in v.items())
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(v, list) and v and all(type(x) is dict for x in v):
        # One C-encoded pass, cut between the objects; a "}, {" inside a string (or a
        # nested object) gives more pieces than objects, and then each is encoded alone.
        pieces = json.dumps(v, allow_nan=False)[2:-2].split("}, {")
        if len(pieces) != len(v):
            pieces = [json.dumps(x, allow_nan=False)[1:-1] for x in v]
        return "[\n" + ",\n".join(f"{inner}{{{p}}}" for p in pieces) + "\n" + pad + "]"
    return json.dumps(v, allow_nan=False)


OVERALL_ROW = "(overall)"  # the CSV's last row: the overall loss and counts
EVAL_COLUMNS = ("name", "loss", "loss_se", "loss_ci_low", "loss_ci_high", "prior_loss", "n_pos",
                "n_neg", "positive_rate", "accuracy", "suggested_pos_weight", "count")


# --metrics: the CSV's extra columns per metric, and the table's / markdown's compact
# ones (header, key, digits), in the order of bce_cli.metrics.METRICS.
METRIC_CSV_COLUMNS = {
    "brier": ("brier",),
    "ece": ("ece",),
    "auroc": ("auroc", "auroc_err"),
    "average_precision": ("average_precision", "average_precision_err"),
    "best_threshold": ("best_threshold", "best_threshold_probability",
                       "best_threshold_precision", "best_threshold_recall", "best_threshold_f1"),
}
METRIC_CELLS = {
    "auroc": [("auroc", "auroc", 4)],
    "average_precision": [("AP", "average_precision", 4)],
    "ece": [("ECE", "ece", 3)],
    "brier": [("brier", "brier", 3)],
    "best_threshold": [("F1 thr.", "best_threshold", 4), ("F1", "best_threshold_f1", 3)],
}
TABLE_METRICS = ("auroc", "average_precision", "ece", "brier")  # the table has less room


def _metric_names(report: dict) -> list[str]:
    return list((report.get("metrics") or {}).get("names", ()))


def metric_columns(report: dict) -> list[str]:
    """The CSV's metric columns for the metrics this report holds."""
    return [col for m in _metric_names(report) for col in METRIC_CSV_COLUMNS[m]]


def _metric_cells(report: dict, names) -> list[tuple[str, list[str]]]:
    """(header, cells per class) of the compact metric columns."""
    out = []
    for m in names:
        for head, key, digits in METRIC_CELLS[m]:
            out.append((head, _g_column([c.get(key) for c in report["classes"]], digits)))
    return out


def _metrics_line(report: dict) -> str | None:
    """The micro-averaged metrics (every element of every class) in one line."""
    overall = report.get("metrics")
    if not overall:
        return None
    parts = [f"{head} {_g(overall.get(key), digits)}" for m in overall["names"]
             for head, key, digits in METRIC_CELLS[m]]
    return "metrics over all elements: " + ", ".join(parts)


def _with_ends(row: dict, key: str = "loss_ci") -> dict:
    """A report row with its interval ``key`` as two cells, ``{key}_low`` and
    ``{key}_high`` (the CSV's columns)."""
    ci = row.get(key) or (None, None)
    return {**row, f"{key}_low": ci[0], f"{key}_high": ci[1]}


def eval_csv(report: dict) -> str:
    """One row per class, then the overall row (the micro-averaged metrics there)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    columns = EVAL_COLUMNS + tuple(metric_columns(report))
    w.writerow(columns)
    for c in report["classes"]:
        w.writerow(_cells(_with_ends(c), columns))
    w.writerow(_cells({**(report.get("metrics") or {}), **_overall(report)}, columns))
    if "groups" not in report:
        return buf.getvalue()
    return _grouped(buf.getvalue(), columns,
                    [(g["key"], _cells(row, columns)) for g in report["groups"]
                     for row in (*g["classes"], _overall(g))])


def _cells(row: dict, columns) -> list:
    return ["" if row.get(k) is None else row[k] for k in columns]


def _overall(item: dict) -> dict:
    """The OVERALL_ROW of a report or of one of its groups: its loss, interval, element
    count and summed class counts."""
    return _with_ends({
        "name": OVERALL_ROW, "loss": item["loss"], "loss_se": item["loss_se"],
        "loss_ci": item["loss_ci"], "count": item["n_elements"],
        "n_pos": sum(c["n_pos"] or 0.0 for c in item["classes"]),
        "n_neg": sum(c["n_neg"] or 0.0 for c in item["classes"])})


def _grouped(ungrouped: str, columns, group_rows) -> str:
    """The CSV with ``--by``: a first column "group", ALL_GROUPS on the rows of
    ``ungrouped`` (the whole input's), then ``group_rows``, (key, cells) pairs in
    key order; a null key is an empty cell."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(("group", *columns))
    buf.writelines(f"{ALL_GROUPS}," + line for line in ungrouped.splitlines(keepends=True)[1:])
    for key, cells in group_rows:
        w.writerow(["" if key is None else key, *cells])
    return buf.getvalue()


def _ci_column(intervals, digits: int = 4) -> list[str]:
    """Intervals as table cells, ``low–high`` ("-" where there is none)."""
    lows = _g_column([None if ci is None else ci[0] for ci in intervals], digits, none="")
    highs = _g_column([None if ci is None else ci[1] for ci in intervals], digits, none="")
    return [f"{lo}–{hi}" if lo else "-" for lo, hi in zip(lows, highs, strict=True)]


def _ci_head(report: dict) -> str:
    return f"{100 * report['confidence']:g}% CI"


ALL_GROUPS = "(all)"  # the CSV's group of the whole input's rows, with --by


def _verdict(report: dict) -> str:
    return "passed" if report["passed"] else f"FAILED ({len(report['failures'])} gate(s))"


def worse_than_prior(c: dict) -> bool:
    """A class whose loss is above its prior: worse than always predicting its positive
    rate (a prior of 0, a class with one kind of target, marks nothing)."""
    loss, prior = loss_number(c["loss"]), loss_number(c["prior_loss"])
    return loss is not None and prior is not None and prior > 0 and loss > prior


# A class worse than its prior is marked with text as well as colour (a CI log has
# none): "!" beside its loss in the table, where columns are scarce, and "worse"
# in markdown.
WORSE_MARK = "!"
PRIOR_LEGEND = ("prior: loss of always predicting the class's positive rate, under the same "
                "options")


def eval_markdown(report: dict) -> str:
    loss_head = "loss (sum)" if report["reduction"] == "sum" else "loss"
    worse = [worse_than_prior(c) for c in report["classes"]]
    mark = any(worse)
    ci_head = _ci_head(report)
    cis = _ci_column([c["loss_ci"] for c in report["classes"]], 6)
    extra = _metric_cells(report, _metric_names(report))
    lines = [
        f"### bce eval: loss {_loss(report['loss'])} — {_verdict(report)}",
        "",
        f"| class | {loss_head} | {ci_head} | prior loss | n_pos | n_neg | pos. rate | accuracy "
        "| suggested pos_weight |" + "".join(f" {h} |" for h, _ in extra)
        + (" vs prior |" if mark else ""),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|" + "---:|" * len(extra)
        + ("---|" if mark else ""),
    ]
    for r, (c, ci, is_worse) in enumerate(zip(report["classes"], cis, worse, strict=True)):
        name = _shown(c["name"]).replace("|", "\\|")  # a | would end the cell
        lines.append(f"| {name} | {_loss(c['loss'])} | {ci} | {_g(c['prior_loss'])} | "
                     f"{_g(c['n_pos'])} | {_g(c['n_neg'])} | {_pct(c['positive_rate'])} | "
                     f"{_pct(c['accuracy'])} | {_g(c['suggested_pos_weight'], 4)} |"
                     + "".join(f" {cells[r]} |" for _, cells in extra)
                     + ((" **worse** |" if is_worse else " |") if mark else ""))
    lines += ["", f"Overall {report['reduction']} loss **{_loss(report['loss'])}** "
              f"({ci_head} {_ci_column([report['loss_ci']], 6)[0]}) over "
              f"{report['n_elements']} elements ({report['n_rows']} rows, "
              f"{report['n_classes']} classes); intervals take rows as the independent "
              "units."]
    line = _metrics_line(report)
    if line:
        lines += ["", line[0].upper() + line[1:] + "."]
    if mark:
        lines += ["", PRIOR_LEGEND + "; worse: a loss above the prior."]
    rest = 0
    if "groups" in report:
        shown, rest = worst_groups(report["groups"])
        lines += ["", f"#### Worst groups by {_shown(str(report['by']))}", "",
                  f"| group | {loss_head} | {_ci_head(report)} | rows | elements |",
                  "|---|---:|---:|---:|---:|"]
        cis = _ci_column([g["loss_ci"] for g in shown], 6)
        for g, ci in zip(shown, cis, strict=True):
            lines.append(f"| {_md_cell(group_label(g['key']))} | "
                         f"{_loss(g['loss'])} | {ci} | {g['n_rows']} | "
                         f"{g['n_elements']} |")
    return _markdown_end(lines, rest, report)


def _md_cell(text: str) -> str:
    """Text for a markdown table cell: its pipes escaped."""
    return text.replace("|", "\\|")


def _markdown_end(lines: list[str], rest: int, report: dict) -> str:
    """A markdown report's last lines: how many groups were left out of its table, the
    failed gates."""
    if rest:
        lines += ["", f"{rest} more group(s) not shown (the JSON report lists them all)."]
    if report["failures"]:
        lines += ["", "Failed gates:", ""] + [f"- {f}" for f in report["failures"]]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------ groups (--by)
WORST_GROUPS = 20  # groups a table or markdown report shows, worst first


def worst_groups(groups: list, n: int = WORST_GROUPS, key: str = "loss") -> tuple[list, int]:
    """The ``n`` groups of highest ``key`` (the loss; for compare, the change; one that
    is not a number first), and how many are left out."""
    def badness(g):
        v = loss_number(g[key])
        return (v is None, -1.0 if v is None else v)

    ranked = sorted(groups, key=badness, reverse=True)
    return ranked[:n], max(len(groups) - n, 0)


def group_label(key) -> str:
    """A group's key in a table: the value itself, ``(null)`` for a null key."""
    return "(null)" if key is None else _shown(str(key))


# Rich lays out about a thousand rows a second; past this many rows (and whenever the
# output is not a terminal) tables are laid out here, in the same form, in linear time.
RICH_MAX_ROWS = 500


def _rich_table(title, columns, rows, red):
    """``columns``: (header, justify); the first column holds names: on a terminal too
    narrow for the table they are folded onto more lines, never cut.  ``red``: the
    (row, column) cells shown in bold red."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD)
    for i, (name, justify) in enumerate(columns):
        table.add_column(name, justify=justify, overflow="fold" if i == 0 else "ellipsis")
    for r, row in enumerate(rows):
        table.add_row(*(Text(cell, style="bold red" if (r, k) in red else "")
                        for k, cell in enumerate(row)))
    return table


def plain_table(title, columns, rows) -> str:
    """The text Rich prints for the table when it need not fit a terminal (box
    SIMPLE_HEAD, one space of padding), without styles; each line as wide as the table.

    >>> print(plain_table("t", [("a", "left"), ("bb", "right")], [["x", "1"]]).replace(" ", "."))
    t.........
    ..........
    ..a...bb..
    .────────.
    ..x....1..
    ..........
    <BLANKLINE>
    """
    from rich.cells import cell_len  # terminal cells: a CJK character takes two

    padded = []  # column by column: str.ljust / rjust in C where every cell is ASCII
    for k, (head, justify) in enumerate(columns):
        cells = [head, *(row[k] for row in rows)]
        if "".join(cells).isascii():
            w = max(map(len, cells))
            pad = str.ljust if justify == "left" else str.rjust
            padded.append([pad(c, w) for c in cells])
        else:
            w = max(map(cell_len, cells))
            padded.append([c + " " * (w - cell_len(c)) if justify == "left"
                           else " " * (w - cell_len(c)) + c for c in cells])
    lines = ["  " + "   ".join(cells) + "  " for cells in zip(*padded, strict=True)]
    inner = cell_len(lines[0]) - 2
    width = inner + 2
    out = [title + " " * (width - cell_len(title)), " " * width, lines[0],
           " " + "─" * inner + " ", *lines[1:], " " * width]
    return "\n".join(out) + "\n"


def _print_table(console, title, columns, rows, red=frozenset()) -> None:
    """A small table on a terminal: Rich, fitted to the window, worse cells in red.
    In a pipe or a log (CI), or past RICH_MAX_ROWS rows: the same layout as wide as it
    needs (nothing cut or folded, so names stay whole and greppable), in linear time."""
    if console.is_terminal and len(rows) <= RICH_MAX_ROWS:
        console.print(_rich_table(title, columns, rows, red))
        return
    console.file.write(plain_table(title, columns, rows))
    console.file.flush()


def print_eval_table(report: dict, console) -> None:
    from rich.markup import escape

    many = len(report["classes"]) > 1
    loss_head = "loss (sum)" if report["reduction"] == "sum" else "loss"
    classes = report["classes"]
    worse = [worse_than_prior(c) for c in classes]
    mark = any(worse)
    cells = [[_shown(c["name"]) for c in classes],
             _g_column([c["loss"] for c in classes], 5, none="NaN")]
    if mark:
        cells.append([WORSE_MARK if w else "" for w in worse])
    cells.append(_ci_column([c["loss_ci"] for c in classes]))
    cells += [_g_column([c["prior_loss"] for c in classes], 4),
              _g_column([c["n_pos"] for c in classes]),
              _g_column([c["n_neg"] for c in classes]),
              _pct_column([c["positive_rate"] for c in classes]),
              _pct_column([c["accuracy"] for c in classes]),
              _g_column([c["suggested_pos_weight"] for c in classes], 4)]
    extra = _metric_cells(report, [m for m in _metric_names(report) if m in TABLE_METRICS])
    cells += [column for _, column in extra]
    rows = list(zip(*cells, strict=True))
    red = {(r, k) for r, w in enumerate(worse) if w for k in (1, 2)}
    columns = [("class", "left"), (loss_head, "right")] + [("", "left")] * mark + [
        (_ci_head(report), "right"), ("prior", "right"), ("n_pos", "right"),
        ("n_neg", "right"), ("pos %", "right"), ("acc.", "right"), ("pos_weight*", "right")] + [
        (head, "right") for head, _ in extra]
    _print_table(console, "bce eval" + (" — per class" if many else ""), columns, rows, red)
    # Lines of prose: a terminal wraps them; a log keeps each on one line.
    soft = not console.is_terminal
    console.print(f"overall {report['reduction']} loss: [bold]{_loss(report['loss'])}[/] "
                  f"({_ci_head(report)} {_ci_column([report['loss_ci']], 5)[0]})   "
                  f"rows: {report['n_rows']}   elements: {report['n_elements']}   "
                  f"classes: {report['n_classes']}", soft_wrap=soft)
    line = _metrics_line(report)
    if line:
        console.print(line, highlight=False, soft_wrap=soft)
    src = report.get("inputs") or {}
    used = [src[k]["path"] for k in ("preds", "labels") if src.get(k)]
    if used:
        console.print("inputs: " + escape(", ".join(used)), highlight=False, soft_wrap=soft)
    worse = f"; red loss, {WORSE_MARK}: worse than the prior" if mark else " (red loss: above it)"
    console.print(f"{PRIOR_LEGEND}{worse}; CI: rows as the independent units; acc.: "
                  "accuracy at logit 0; *suggested pos_weight = n_neg/n_pos", style="dim",
                  soft_wrap=soft)
    if "groups" in report:
        _print_groups(report, console, loss_head, soft)
    _print_gates(report, console, soft)


def _print_gates(report: dict, console, soft: bool) -> None:
    """The gates that were set and their outcome, each failure on its own line."""
    from rich.markup import escape

    gates = ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in report.get("gates", {}).items())
    if report["failures"]:
        console.print(f"[bold red]FAILED[/] ({escape(gates)})", soft_wrap=soft)
        for f in report["failures"]:
            console.print(f"  - {escape(f)}", highlight=False, soft_wrap=soft)
    elif gates:
        console.print(f"[bold green]passed[/] ({escape(gates)})", soft_wrap=soft)


def _print_groups(report: dict, console, loss_head: str, soft: bool) -> None:
    """The second table of ``--by``: the worst groups first."""
    groups = report["groups"]
    shown, rest = worst_groups(groups)
    limit = report.get("gates", {}).get("max_group_loss")
    cis = _ci_column([g["loss_ci"] for g in shown])
    rows = [[group_label(g["key"]), _loss(g["loss"], 5), ci, str(g["n_rows"]),
             str(g["n_elements"])] for g, ci in zip(shown, cis, strict=True)]
    red = set()
    if limit is not None:
        red = {(r, 1) for r, g in enumerate(shown)
               if loss_number(g["loss"]) is None or loss_number(g["loss"]) > limit}
    columns = [(str(report["by"]), "left"), (loss_head, "right"), (_ci_head(report), "right"),
               ("rows", "right"), ("elements", "right")]
    _print_table(console, f"per group of {report['by']}, worst first", columns, rows, red)
    console.print(f"{len(groups)} group(s)" + (f"; {rest} more not shown (--format json lists "
                                               "them all)" if rest else ""),
                  style="dim", soft_wrap=soft)


# ---------------------------------------------------------------- suggest-pos-weight
def pos_weight_csv(report: dict) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(("name", "n_pos", "n_neg", "pos_weight"))
    for c in report["classes"]:
        w.writerow([c["name"], c["n_pos"], c["n_neg"],
                    "" if c["pos_weight"] is None else c["pos_weight"]])
    return buf.getvalue()


def print_pos_weight_table(report: dict, console) -> None:
    classes = report["classes"]
    rows = list(zip([_shown(c["name"]) for c in classes], _g_column([c["n_pos"] for c in classes]),
                    _g_column([c["n_neg"] for c in classes]),
                    _g_column([c["pos_weight"] for c in classes]), strict=True))
    columns = [("class", "left"), ("n_pos", "right"), ("n_neg", "right"), ("pos_weight", "right")]
    _print_table(console, f"suggested pos_weight ({report['method']})", columns, rows)



# ---------------------------------------------------------------------- compare
COMPARE_COLUMNS = ("name", "loss_base", "loss_new", "delta", "delta_se", "delta_ci_low",
                   "delta_ci_high", "p_value", "count")


def _compare_rows(report: dict) -> list[dict]:
    """The classes, then the overall figures as a last row named OVERALL_ROW."""
    overall = {"name": OVERALL_ROW, "count": report["n_elements"],
               **{k: report[k] for k in ("loss_base", "loss_new", "delta", "delta_se",
                                         "delta_ci", "p_value")}}
    return [*report["classes"], overall]




def compare_csv(report: dict) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COMPARE_COLUMNS)
    for c in _compare_rows(report):
        w.writerow(_compare_cells(c))
    if "groups" not in report:
        return buf.getvalue()
    return _grouped(buf.getvalue(), COMPARE_COLUMNS,
                    [(g["key"], _compare_cells({**g, "name": OVERALL_ROW,
                                                "count": g["n_elements"]}))
                     for g in report["groups"]])


def _compare_cells(c: dict) -> list:
    return _cells(_with_ends(c, "delta_ci"), COMPARE_COLUMNS)


def _compare_legend(report: dict) -> str:
    pct = f"{100 * report['confidence']:g}%"
    return (f"delta = new - base, paired row by row ({report['n_rows']} rows as the units); "
            f"{pct} interval and two-sided p-value of no change, Student t on "
            f"{report['n_rows'] - 1} degrees of freedom")


def _p(v) -> str:
    return "-" if v is None else f"{v:.3g}" if v >= 1e-4 else "<1e-4"


def compare_markdown(report: dict) -> str:
    pct = f"{100 * report['confidence']:g}%"
    head = "loss (sum)" if report["reduction"] == "sum" else "loss"
    lines = [f"### bce compare: delta {_loss(report['delta'])} {pct} CI "
             f"{_ci_text(report['delta_ci'])} — {_verdict(report)}", "",
             f"base: `{report['base']}`, new: `{report['new']}`", "",
             f"| class | base {head} | new {head} | delta | {pct} CI | p |",
             "|---|---:|---:|---:|---|---:|"]
    for c in _compare_rows(report):
        name = _shown(c["name"]).replace("|", "\\|")
        lines.append(f"| {name} | {_loss(c['loss_base'])} | {_loss(c['loss_new'])} | "
                     f"{_loss(c['delta'])} | {_ci_text(c['delta_ci'])} | {_p(c['p_value'])} |")
    lines += ["", _compare_legend(report) + "."]
    rest = 0
    if "groups" in report:
        shown, rest = worst_groups(report["groups"], key="delta")
        lines += ["", f"#### Largest changes by {_shown(str(report['by']))}", "",
                  f"| group | base {head} | new {head} | delta | {pct} CI | p | rows |",
                  "|---|---:|---:|---:|---|---:|---:|"]
        for g in shown:
            lines.append(f"| {_md_cell(group_label(g['key']))} | "
                         f"{_loss(g['loss_base'])} | {_loss(g['loss_new'])} | "
                         f"{_loss(g['delta'])} | {_ci_text(g['delta_ci'])} | "
                         f"{_p(g['p_value'])} | {g['n_rows']} |")
    return _markdown_end(lines, rest, report)


def _ci_text(ci) -> str:
    return "-" if ci is None else f"[{_loss(ci[0], 4)}, {_loss(ci[1], 4)}]"


def print_compare_table(report: dict, console) -> None:
    from rich.markup import escape

    rows = [_with_ends(c, "delta_ci") for c in _compare_rows(report)]
    head = "loss (sum)" if report["reduction"] == "sum" else "loss"
    pct = f"{100 * report['confidence']:g}%"
    cells = [[_shown(c["name"]) for c in rows],
             _g_column([c["loss_base"] for c in rows], 5, none="NaN"),
             _g_column([c["loss_new"] for c in rows], 5, none="NaN"),
             _g_column([c["delta"] for c in rows], 4, none="NaN"),
             _g_column([c["delta_ci_low"] for c in rows], 4),
             _g_column([c["delta_ci_high"] for c in rows], 4),
             [_p(c["p_value"]) for c in rows]]
    worse = {r for r, c in enumerate(rows)
             if c["delta_ci_low"] is not None and loss_number(c["delta_ci_low"]) > 0}
    columns = [("class", "left"), (f"base {head}", "right"), (f"new {head}", "right"),
               ("delta", "right"), (f"{pct} low", "right"), (f"{pct} high", "right"),
               ("p", "right")]
    _print_table(console, "bce compare", columns, list(zip(*cells, strict=True)),
                 {(r, k) for r in worse for k in (3, 4)})
    soft = not console.is_terminal
    console.print(f"base: {escape(report['base'])}   new: {escape(report['new'])}",
                  highlight=False, soft_wrap=soft)
    console.print(_compare_legend(report) + "; red: surely worse", style="dim", soft_wrap=soft)
    if "groups" in report:
        shown, rest = worst_groups(report["groups"], key="delta")
        cells = [[group_label(g["key"]) for g in shown],
                 _g_column([g["loss_base"] for g in shown], 5, none="NaN"),
                 _g_column([g["loss_new"] for g in shown], 5, none="NaN"),
                 _g_column([g["delta"] for g in shown], 4, none="NaN"),
                 _ci_column([g["delta_ci"] for g in shown]),
                 [_p(g["p_value"]) for g in shown], [str(g["n_rows"]) for g in shown]]
        columns = [(str(report["by"]), "left"), (f"base {head}", "right"),
                   (f"new {head}", "right"), ("delta", "right"), (f"{pct} CI", "right"),
                   ("p", "right"), ("rows", "right")]
        _print_table(console, f"per group of {report['by']}, largest change first", columns,
                     list(zip(*cells, strict=True)))
        console.print(f"{len(report['groups'])} group(s)" + (
            f"; {rest} more not shown (--format json lists them all)" if rest else ""),
            style="dim", soft_wrap=soft)
    _print_gates(report, console, soft)


# ---------------------------------------------------------------------- the switch
def emit(kind: str, fmt: str, report: dict, console) -> None:
    """Write ``report`` (``kind`` "eval", "compare" or "pos_weight") on stdout in ``fmt`` (a value
    of choices.EvalFormat / PosWeightFormat); ``console`` makes the Rich console that
    a table needs, so that the other formats never import Rich."""
    if fmt == "table":
        {"eval": print_eval_table, "compare": print_compare_table,
         "pos_weight": print_pos_weight_table}[kind](report, console())
        return
    render = {"json": lambda r: to_json(r) + "\n",
              "csv": {"eval": eval_csv, "compare": compare_csv, "pos_weight": pos_weight_csv}[kind],
              "markdown": compare_markdown if kind == "compare" else eval_markdown}[fmt]
    sys.stdout.write(render(report))
    sys.stdout.flush()
