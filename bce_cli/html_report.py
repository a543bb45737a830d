"""`bce eval --html PATH`: the report as one self-contained HTML page (a CI artifact).

Inline CSS and inline SVG only: no script, no font, no stylesheet or image fetched.
Every number is the JSON report's, formatted as the table formats it; every class
name and string goes through :func:`html.escape`.  The charts show the
:data:`CHARTED` classes worst against their prior (loss - prior), the table lists
every class, so the page stays small (about 0.2 KB per class).

With ``--metrics``, the logit histograms come from the metrics' state
(:func:`logit_histograms`, compact: :data:`HIST_BINS` bins, in the page only, never
in the JSON report); the reliability diagrams from the report's ``reliability``
tables (``ece``).
"""

from __future__ import annotations

import math
from html import escape

import numpy as np

from .report import (
    METRIC_CELLS,
    PRIOR_LEGEND,
    _ci_column,
    _ci_head,
    _g_column,
    _loss,
    _shown,
    _verdict,
    loss_number,
    worse_than_prior,
)

CHARTED = 20  # classes in the charts: the worst by loss - prior
HIST_RANGE = 8.0  # logit histograms over [-8, 8], the outer bins holding what lies beyond
HIST_BINS = 32
NAME_CHARS = 28  # a class name in a chart (the whole name in its tooltip and the table)

STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em}
.passed{color:#1a7f37;font-weight:bold}.failed{color:#cf222e;font-weight:bold}
table{border-collapse:collapse;font-size:.85em}
th,td{border:1px solid #ccc;padding:2px 6px;text-align:right}
th{background:#f3f3f3}td.name,th.name{text-align:left}
tr.worse td{background:#fff0f0}
.charts{display:flex;flex-wrap:wrap;gap:12px}
figure{margin:0}figcaption{font-size:.8em;max-width:240px;overflow-wrap:anywhere}
svg text{font-size:11px;font-family:inherit}
.note{color:#555;font-size:.85em}
"""


def _gap(c: dict) -> float:
    """loss - prior, -inf where either is missing (such classes are charted last)."""
    loss, prior = loss_number(c["loss"]), loss_number(c["prior_loss"])
    if loss is None or prior is None:
        return -math.inf
    gap = loss - prior
    return -math.inf if math.isnan(gap) else gap


def charted(report: dict, n: int = CHARTED) -> list[int]:
    """The indices of the ``n`` classes worst against their prior, worst first."""
    gaps = [_gap(c) for c in report["classes"]]
    return sorted(range(len(gaps)), key=lambda i: (-gaps[i], i))[:n]


def _hist_index() -> np.ndarray:
    """The compact bin of each ranking bin of the metrics' histogram (by its lower edge)."""
    from .metrics import rank_edges

    lows = np.clip(rank_edges(), -HIST_RANGE, HIST_RANGE)
    width = 2 * HIST_RANGE / HIST_BINS
    return np.minimum(((lows + HIST_RANGE) / width).astype(np.intp), HIST_BINS - 1)


def logit_histograms(metrics, rows) -> dict:
    """Compact logit histograms (positives, negatives) of the classes ``rows`` and of all
    classes together, from a :class:`~bce_cli.metrics.MetricsAccumulator`'s state:
    ``{"edges": [...], "classes": {row: (pos, neg)}, "overall": (pos, neg)}``.  A class
    with a NaN element (``--nan-policy propagate``) has none."""
    index = _hist_index()
    lay, state = metrics.layout, metrics.state
    pos, neg = lay.ranks(state)

    def compact(p, q):
        return (np.bincount(index, weights=p, minlength=HIST_BINS).tolist(),
                np.bincount(index, weights=q, minlength=HIST_BINS).tolist())

    classes = {int(r): compact(pos[r], neg[r]) for r in rows if not state[r, lay.nans] > 0}
    overall = compact(pos.sum(axis=0), neg.sum(axis=0)) if not (state[:, lay.nans] > 0).any() \
        else None
    edges = np.linspace(-HIST_RANGE, HIST_RANGE, HIST_BINS + 1).tolist()
    return {"edges": edges, "classes": classes, "overall": overall}


def _f(v: float) -> str:
    """A coordinate: two decimals."""
    return f"{v:.2f}"


def _short(name: str) -> str:
    name = _shown(name)
    return name if len(name) <= NAME_CHARS else name[:NAME_CHARS - 1] + "…"


def _bar_chart(report: dict, rows: list[int]) -> str:
    classes = report["classes"]
    shown = [classes[i] for i in rows]
    losses = _g_column([c["loss"] for c in shown], 6, none="NaN")
    priors = _g_column([c["prior_loss"] for c in shown], 6)
    ends = []
    for c in shown:
        ends += [loss_number(c["loss"]), loss_number(c["prior_loss"])]
        if c["loss_ci"] is not None:
            ends.append(loss_number(c["loss_ci"][1]))
    finite = [v for v in ends if v is not None and math.isfinite(v) and v > 0]
    top = max(finite) if finite else 1.0
    label_w, bar_w, value_w, row_h, head = 190, 420, 170, 22, 26
    width, height = label_w + bar_w + value_w, head + row_h * len(shown) + 6

    def x(v) -> float:
        v = 0.0 if v is None or math.isnan(v) else min(max(v, 0.0), top)
        return label_w + bar_w * v / top

    out = [f'<svg class="bars" xmlns="http://www.w3.org/2000/svg" width="{width}" '
           f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
           'aria-label="loss per class against its prior">',
           f'<text x="{label_w}" y="14">0</text>'
           f'<text x="{label_w + bar_w}" y="14" text-anchor="end">{escape(_g_column([top], 4)[0])}'
           '</text>',
           f'<text x="{label_w + bar_w + 6}" y="14">loss (prior)</text>']
    for k, (c, loss_text, prior_text) in enumerate(zip(shown, losses, priors, strict=True)):
        y = head + k * row_h
        worse = worse_than_prior(c)
        loss, prior = loss_number(c["loss"]), loss_number(c["prior_loss"])
        colour = "#cf222e" if worse else "#4a7dbf"
        name = escape(_shown(c["name"]))
        parts = [f'<g class="bar-row"><title>{name}: loss {escape(loss_text)}, prior '
                 f'{escape(prior_text)}</title>',
                 f'<text x="{label_w - 6}" y="{y + 15}" text-anchor="end">'
                 f'{escape(_short(c["name"]))}</text>',
                 f'<rect x="{label_w}" y="{y + 4}" width="{_f(x(loss) - label_w)}" height="14" '
                 f'fill="{colour}" fill-opacity="0.75"/>']
        if c["loss_ci"] is not None:
            lo, hi = (x(loss_number(v)) for v in c["loss_ci"])
            parts.append(f'<path class="ci" d="M{_f(lo)} {y + 11}H{_f(hi)}M{_f(lo)} {y + 7}'
                         f'V{y + 15}M{_f(hi)} {y + 7}V{y + 15}" stroke="#222" fill="none"/>')
        if prior is not None:
            px = _f(x(prior))
            parts.append(f'<path class="prior" d="M{px} {y + 1}V{y + 21}" stroke="#e09b00" '
                         'stroke-width="3"/>')
        mark = " !" if worse else ""
        parts.append(f'<text x="{label_w + bar_w + 6}" y="{y + 15}">{escape(loss_text)} '
                     f'({escape(prior_text)}){mark}</text></g>')
        out.append("".join(parts))
    out.append("</svg>")
    return "\n".join(out)


def _axes(size: int, pad: int) -> str:
    end = size - pad
    return (f'<path d="M{pad} {pad}V{end}H{end}" stroke="#888" fill="none"/>')


def _reliability_chart(title: str, table: list) -> str:
    size, pad = 220, 28
    span = size - 2 * pad

    def px(p):
        return pad + span * p

    def py(r):
        return size - pad - span * r

    points = [(b["mean_predicted"], b["positive_rate"], b["count"]) for b in table
              if b["mean_predicted"] is not None and b["positive_rate"] is not None]
    out = [f'<figure><svg class="reliability" xmlns="http://www.w3.org/2000/svg" '
           f'width="{size}" height="{size}" viewBox="0 0 {size} {size}" role="img" '
           f'aria-label="reliability diagram">', _axes(size, pad),
           f'<path class="diagonal" d="M{pad} {size - pad}L{size - pad} {pad}" stroke="#aaa" '
           'stroke-dasharray="4 3" fill="none"/>',
           f'<text x="{pad}" y="{size - 8}">0</text>'
           f'<text x="{size - pad}" y="{size - 8}" text-anchor="end">predicted 1</text>',
           f'<text x="4" y="{pad + 4}">1</text>']
    if points:
        line = " ".join(f"{_f(px(p))},{_f(py(r))}" for p, r, _ in points)
        out.append(f'<polyline points="{line}" stroke="#4a7dbf" fill="none" stroke-width="1.5"/>')
        for (p, r, n), (p_text, r_text) in zip(points, zip(
                _g_column([p for p, _, _ in points], 4), _g_column([r for _, r, _ in points], 4),
                strict=True), strict=True):
            out.append(f'<circle cx="{_f(px(p))}" cy="{_f(py(r))}" r="3" fill="#4a7dbf">'
                       f'<title>predicted {p_text}, observed {r_text}, {n} elements</title>'
                       '</circle>')
    out.append(f'</svg><figcaption>{escape(title)}: observed positive rate against mean '
               'predicted probability per bin</figcaption></figure>')
    return "".join(out)


def _histogram_chart(title: str, edges: list, pos: list, neg: list) -> str:
    width, height, pad = 240, 150, 24
    span_x, span_y = width - 2 * pad, height - 2 * pad
    tp, tn = sum(pos), sum(neg)
    fp = [v / tp if tp > 0 else 0.0 for v in pos]
    fn = [v / tn if tn > 0 else 0.0 for v in neg]
    top = max(fp + fn) or 1.0
    n = len(pos)
    bar = span_x / n
    out = [f'<figure><svg class="histogram" xmlns="http://www.w3.org/2000/svg" width="{width}" '
           f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
           'aria-label="logit histogram">', _axes_box(width, height, pad)]
    for values, colour, kind in ((fn, "#4a7dbf", "negatives"), (fp, "#e0701b", "positives")):
        for k, v in enumerate(values):
            if v <= 0:
                continue
            h = span_y * v / top
            out.append(f'<rect class="{kind}" x="{_f(pad + k * bar)}" '
                       f'y="{_f(height - pad - h)}" width="{_f(bar)}" height="{_f(h)}" '
                       f'fill="{colour}" fill-opacity="0.5"/>')
    out.append(f'<text x="{pad}" y="{height - 8}">≤{_g_column([edges[0]])[0]}</text>'
               f'<text x="{width / 2}" y="{height - 8}" text-anchor="middle">0</text>'
               f'<text x="{width - pad}" y="{height - 8}" text-anchor="end">'
               f'≥{_g_column([edges[-1]])[0]}</text>')
    counts = _g_column([tp, tn], 6)
    out.append(f'</svg><figcaption>{escape(title)}: logits of positives (orange, weight '
               f'{counts[0]}) and negatives (blue, {counts[1]}), each as a fraction of its '
               'total</figcaption></figure>')
    return "".join(out)


def _axes_box(width: int, height: int, pad: int) -> str:
    return (f'<path d="M{pad} {pad}V{height - pad}H{width - pad}" stroke="#888" fill="none"/>'
            f'<path d="M{width / 2} {pad}V{height - pad}" stroke="#ddd" fill="none"/>')


def _table(report: dict) -> str:
    classes = report["classes"]
    names = [m for m in (report.get("metrics") or {}).get("names", ())
             if m in ("auroc", "ece")]
    cols = [("loss", _g_column([c["loss"] for c in classes], 6, none="NaN")),
            (_ci_head(report), _ci_column([c["loss_ci"] for c in classes], 6)),
            ("prior", _g_column([c["prior_loss"] for c in classes], 6)),
            ("n_pos", _g_column([c["n_pos"] for c in classes])),
            ("n_neg", _g_column([c["n_neg"] for c in classes]))]
    for m in names:
        for head, key, digits in METRIC_CELLS[m]:
            cols.append((head, _g_column([c.get(key) for c in classes], digits)))
    head = "".join(f"<th>{escape(h)}</th>" for h, _ in cols)
    out = [f'<table class="classes"><thead><tr><th class="name">class</th>{head}</tr></thead>'
           "<tbody>"]
    for i, c in enumerate(classes):
        cells = "".join(f"<td>{escape(col[i])}</td>" for _, col in cols)
        cls = ' class="worse"' if worse_than_prior(c) else ""
        out.append(f'<tr{cls}><td class="name">{escape(_shown(c["name"]))}</td>{cells}</tr>')
    out.append("</tbody></table>")
    return "\n".join(out)


def render(report: dict, histograms: dict | None = None) -> str:
    """The page of an eval ``report`` (after its gates), with the compact logit
    ``histograms`` of :func:`logit_histograms` when ``--metrics`` kept them."""
    rows = charted(report)
    classes = report["classes"]
    passed = report["passed"]
    verdict = escape(_verdict(report))
    loss = escape(_loss(report["loss"]))
    ci = _ci_column([report["loss_ci"]], 6)[0]
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             "<title>bce eval report</title>", f"<style>{STYLE}</style></head><body>",
             "<h1>bce eval report</h1>",
             f'<p class="verdict {"passed" if passed else "failed"}">{verdict}</p>']
    if report["failures"]:
        parts.append('<ul class="failures">' + "".join(
            f"<li>gate failed: {escape(f)}</li>" for f in report["failures"]) + "</ul>")
    parts.append(f'<p class="overall">Loss ({escape(report["reduction"])}): '
                 f'<b class="loss">{loss}</b> ({escape(_ci_head(report))} {escape(ci)}) over '
                 f'{report["n_rows"]} rows, {report["n_classes"]} classes, '
                 f'{report["n_elements"]} elements. bce {escape(str(report["version"]))}.</p>')
    overall = report.get("metrics")
    if overall:
        cells = [f"{head} {_g_column([overall.get(key)], digits)[0]}" for m in overall["names"]
                 for head, key, digits in METRIC_CELLS[m]]
        parts.append(f'<p class="metrics">Metrics over all elements: '
                     f'{escape(", ".join(cells))}.</p>')
    if rows:
        more = (f" (the {len(rows)} worst against their prior of {len(classes)}; all are in "
                "the table)" if len(rows) < len(classes) else "")
        parts += [f"<h2>Loss per class against its prior{escape(more)}</h2>",
                  f'<p class="note">Bar: the loss (red where worse than the prior), black: its '
                  f'{escape(_ci_head(report))}, orange tick: the prior. '
                  f'{escape(PRIOR_LEGEND)}.</p>', _bar_chart(report, rows)]
    reliability = [(classes[i]["name"], classes[i].get("reliability")) for i in rows]
    reliability = [(n, t) for n, t in reliability if t]
    if overall and overall.get("reliability"):
        reliability.insert(0, ("all classes", overall["reliability"]))
    if reliability:
        parts += ["<h2>Reliability</h2>", '<div class="charts">']
        parts += [_reliability_chart(_shown(n), t) for n, t in reliability]
        parts.append("</div>")
    if histograms:
        edges = histograms["edges"]
        charts = []
        if histograms.get("overall"):
            charts.append(_histogram_chart("all classes", edges, *histograms["overall"]))
        charts += [_histogram_chart(_shown(classes[i]["name"]), edges,
                                    *histograms["classes"][i])
                   for i in rows if i in histograms["classes"]]
        if charts:
            parts += ["<h2>Logit histograms</h2>",
                      f'<p class="note">Bins of {2 * HIST_RANGE / HIST_BINS:g} over '
                      f'[−{HIST_RANGE:g}, {HIST_RANGE:g}]; the outer bins hold what lies '
                      'beyond.</p>', '<div class="charts">', *charts, "</div>"]
    parts += ["<h2>All classes</h2>", _table(report), "</body></html>", ""]
    return "\n".join(parts)
