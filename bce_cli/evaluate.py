"""`bce eval` as a library call: stream inputs through the accumulator, build the report.

The command line only parses options, calls :func:`evaluate` and renders the
report it returns; everything here raises :class:`~bce_cli.errors.BCEInputError`
for bad input.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from . import __version__, _device, _tiers
from ._checks import check_targets
from ._safe_write import SafeFile
from .accumulator import BCEAccumulator
from .choices import Engine, check
from .errors import BCEInputError, InvalidValueError, brief
from .gates import apply_gates, baseline_for, check_limits
from .outputs import LossDataset, LossWriter
from .report import finite_values, interval_values, loss_value, loss_values
from .uncertainty import check_confidence


@dataclass
class EvalOptions:
    reduction: str = "mean"
    pos_weight: str | None = None
    label_smoothing: float = 0.0
    ignore_value: float | None = None
    from_probs: bool = False
    output: str | None = None
    report: str | None = None  # the JSON report is also written here
    html: str | None = None  # --html: a self-contained HTML page of the report (html_report)
    threads: int | None = None
    max_loss: float | None = None
    max_class_loss: float | None = None
    baseline: str | None = None
    max_increase: float | None = None
    engine: str = "local"  # or "dask" (bce_cli._dask)
    scheduler: str | None = None  # --engine dask: an address, "local" or "local:N"
    timeout: float | None = None  # --engine dask: seconds the whole job may take
    confidence: float = 0.95  # of every interval in the report
    max_group_loss: float | None = None  # with InputSpec.by: gate on every group's loss
    device: str = "cpu"  # or "cuda" / "auto" (bce_cli._device)
    metrics: str | None = None  # --metrics: a comma list of bce_cli.metrics.METRICS, or all
    bins: int = 15  # --bins: calibration bins of ece
    min_auroc: float | None = None
    max_ece: float | None = None


def requested_metrics(opts: EvalOptions) -> tuple[str, ...]:
    """The metrics to compute: ``--metrics``, and those that a gate needs
    (``--min-auroc`` asks for auroc, ``--max-ece`` for ece).  Checks ``--bins``."""
    from .metrics import METRICS, check_bins, parse_metrics

    names = set(parse_metrics(opts.metrics))
    if opts.min_auroc is not None:
        names.add("auroc")
    if opts.max_ece is not None:
        names.add("ece")
    check_bins(opts.bins)
    return tuple(m for m in METRICS if m in names)


def probs_to_logits(p: np.ndarray) -> np.ndarray:
    """log(p) - log1p(-p) in float64; 0 -> -inf, 1 -> +inf.  Raises where p is outside [0, 1]."""
    p = np.asarray(p, dtype=np.float64)
    bad = (p < 0) | (p > 1)
    if bad.any():
        index = tuple(int(i) for i in np.unravel_index(int(np.argmax(bad)), p.shape))
        raise InvalidValueError(f"probability {float(p[index])!r} is outside [0, 1]",
                                role="logits", index=index,
                                class_index=index[1] if len(index) > 1 else 0,
                                hint="drop --from-probs if the predictions are logits")
    with np.errstate(divide="ignore"):
        return np.log(p) - np.log1p(-p)


def _nan_min(x) -> float:
    m = float(x.min())  # a plain pass; NumPy's nanmin is several times slower
    return float(np.nanmin(x)) if m != m else m


def _nan_max(x) -> float:
    m = float(x.max())
    return float(np.nanmax(x)) if m != m else m


def evaluate(spec, opts: EvalOptions, *, warn: Callable[[str], None] = lambda msg: None,
             progress: Callable[[int], None] | None = None, total: Callable[[int | None], None]
             | None = None) -> dict:
    """Run one evaluation and return the report (a JSON-ready dict).

    With ``opts.output`` / ``opts.report`` / ``opts.html``, the per-element losses,
    the JSON report and the HTML page are also written: all whole before any is put
    in place, so an error leaves none (see :mod:`bce_cli._safe_write`).
    """
    from .data import open_inputs, parse_pos_weight
    from .data._readahead import read_ahead

    engine = check(Engine, opts.engine, "engine")
    if opts.device == "cuda" and engine == "dask":  # before Dask is looked for: no install helps
        raise BCEInputError("--device cuda runs with --engine local (one GPU in this process)")
    if engine == "dask":
        from . import _dask

        _dask.check_eval(spec, opts)
    elif opts.timeout is not None:
        raise BCEInputError("--timeout is for --engine dask")
    device = "cpu" if engine == "dask" else _device.resolve(opts.device)  # exit 2 at once
    _tiers.set_threads(opts.threads)
    check_limits(opts)
    if opts.max_group_loss is not None and not spec.by:
        raise BCEInputError("--max-group-loss needs --by COLUMN (the groups to gate on)")
    check_confidence(opts.confidence)
    metrics = requested_metrics(opts)
    if opts.ignore_value is not None and math.isnan(opts.ignore_value):
        raise BCEInputError("--ignore-value nan matches nothing; use --nan-policy omit to leave "
                            "NaN targets out")
    baseline = baseline_for(opts)
    if opts.output and opts.reduction != "none":
        raise BCEInputError("--output receives per-element losses: use it with --reduction none")
    writer = report_file = html_file = None
    histograms = None
    try:
        with (_dask.open_joined(spec, opts) if engine == "dask" and spec.on
              else open_inputs(spec)) as inp:
            pos_weight = (None if opts.pos_weight is None
                          else parse_pos_weight(opts.pos_weight, inp.class_names))
            acc = BCEAccumulator(inp.n_classes, pos_weight=pos_weight,
                                 ignore_value=opts.ignore_value,
                                 label_smoothing=opts.label_smoothing, nan_policy=spec.nan_policy,
                                 device=device)
            if metrics:
                acc.with_metrics(opts.bins)
            if inp.n_rows:
                acc.job = _tiers.JobTier(inp.n_rows * inp.elements_per_row)
                if metrics:
                    acc.metrics.job_elements = inp.n_rows * inp.elements_per_row
            unpaired = inp.sources.get("unpaired")
            if unpaired:
                warn(f"columns without a partner are left out: {brief(unpaired)}")
            if total is not None:
                total(inp.n_rows)
            if opts.output and engine == "dask":  # a Parquet dataset, a file per task
                writer = LossDataset(opts.output, inp)
            elif opts.output:
                writer = LossWriter.for_path(opts.output, inp)
            groups = None
            if spec.by:
                from .groups import Groups

                groups = Groups(inp.n_classes, spec.by, opts.ignore_value, spec.nan_policy)
            if engine == "dask":
                lo, hi = _dask.eval_batches(inp, acc, opts, progress, writer=writer,
                                            groups=groups)
            else:
                lo, hi = math.inf, -math.inf
                with _tiers.decoding_on_a_thread(inp.decodes):
                    for batch in read_ahead(inp.batches()):
                        losses, lo, hi = add_batch(acc, batch, inp, opts.from_probs, lo, hi,
                                                   return_losses=writer is not None
                                                   or groups is not None)
                        if groups is not None:
                            groups.add(batch, losses)
                        if writer is not None:
                            writer.write(losses)
                        if progress is not None:
                            progress(batch.n_rows)
            if not opts.from_probs and 0.0 <= lo and hi <= 1.0:
                warn("the predictions all lie in [0, 1]: these look like probabilities, not "
                     "logits; pass --from-probs if they are")
            result = acc.compute("mean" if opts.reduction == "none" else opts.reduction,
                                 confidence=opts.confidence)
            if writer is not None:
                writer.finish()
            report = build_report(result, inp, opts, acc.n_rows)
            if groups is not None:
                report["by"] = spec.by
                report["groups"] = groups.report(inp.class_names, result.reduction,
                                                 opts.confidence)
            if metrics:
                add_metrics(report, acc.metrics, metrics)
                if opts.html:  # compact, for the page only (the JSON report stays as it is)
                    from .html_report import charted, logit_histograms

                    histograms = logit_histograms(acc.metrics, charted(report))
        no_pos = [c["name"] for c in report["classes"] if c["n_pos"] == 0]
        if no_pos:
            warn(f"{len(no_pos)} class(es) have no positive targets ({brief(no_pos)}): their "
                 "suggested pos_weight is null")
        apply_gates(report, opts, baseline, warn)
        if opts.report:
            from .report import to_json

            report_file = SafeFile(opts.report)
            report_file.write((to_json(report) + "\n").encode())
            report_file.finish()
        if opts.html:
            from .html_report import render

            html_file = SafeFile(opts.html)
            html_file.write(render(report, histograms).encode())
            html_file.finish()
        # every file is whole and synced before any is put in place: all or nothing
        if writer is not None:
            writer.commit()
        for f in (report_file, html_file):
            if f is not None:
                f.commit()
    finally:
        if writer is not None:
            writer.abort()
        for f in (report_file, html_file):
            if f is not None:
                f.abort()
    return report


def add_batch(acc, batch, inp, from_probs: bool, lo: float, hi: float, *,
              return_losses: bool = False):
    """Add one batch to ``acc``: ``(per-element losses or None, lo, hi)``, where
    ``lo``, ``hi`` are the smallest and largest prediction so far (followed only
    while all lie in [0, 1], for the "these look like probabilities" warning).
    An invalid element raises, placed at its file, column and row."""
    x = batch.logits
    try:
        if from_probs:
            x = probs_to_logits(x)
        elif 0.0 <= lo and hi <= 1.0 and x.size:  # all in [0, 1] so far
            lo, hi = min(lo, _nan_min(x)), max(hi, _nan_max(x))
        losses = acc.update(x, batch.targets, batch.weight, return_losses=return_losses)
    except InvalidValueError as err:
        raise _placed(err, inp, batch.row_offset) from None
    return losses, lo, hi


def _placed(err: InvalidValueError, inp, row_offset: int) -> InvalidValueError:
    """An invalid element found in a batch, placed at its file, column and row (and
    element inside the row, for N-D arrays)."""
    index = err.index
    file, column, row = inp.locate(row_offset + index[0], err.class_index, err.role)
    element = None
    if len(index) > 2 and inp.array_shape is not None and len(inp.array_shape) > 2:
        element = inp.element_in_row(err.class_index, index[2])
    return err.with_context(file=file, column=column, row=row, element=element)


def class_counts(batch, inp) -> tuple[np.ndarray, np.ndarray]:
    """One batch's per-class sums of y and of 1 - y (``suggest-pos-weight``)."""
    y = np.asarray(batch.targets)
    yf = y.astype(np.float64) if y.dtype != np.bool_ else y
    try:
        check_targets(yf, class_axis=1, hints=False)
    except InvalidValueError as err:
        raise _placed(err, inp, batch.row_offset) from None
    axes = (0,) if y.ndim == 2 else (0, 2)
    pos = yf.sum(axis=axes, dtype=np.float64)
    return pos, y.shape[0] * (1 if y.ndim == 2 else y.shape[2]) - pos


def build_report(result, inp, opts: EvalOptions, n_rows: int) -> dict:
    # Whole arrays to lists in one pass each: per-class work stays linear and cheap
    # (a million classes).  NaN counts (only with --nan-policy propagate) are null.
    columns = zip([str(n) for n in inp.class_names], loss_values(result.class_loss),
                  finite_values(result.class_loss_se), interval_values(result.class_loss_ci),
                  finite_values(result.n_pos), finite_values(result.n_neg),
                  finite_values(result.suggested_pos_weight),
                  result.count.astype(np.int64).tolist(), finite_values(result.positive_rate),
                  finite_values(result.accuracy), loss_values(result.prior_loss), strict=True)
    classes = [{"name": name, "loss": loss, "loss_se": se, "loss_ci": ci, "n_pos": n_pos,
                "n_neg": n_neg, "suggested_pos_weight": spw, "count": count,
                "positive_rate": rate, "accuracy": acc, "prior_loss": prior}
               for name, loss, se, ci, n_pos, n_neg, spw, count, rate, acc, prior in columns]
    return {
        "loss": loss_value(result.loss),
        "loss_se": finite_values([result.loss_se])[0],
        "loss_ci": interval_values(np.array(result.loss_ci).reshape(2, 1))[0],
        "confidence": result.confidence,
        "reduction": opts.reduction,
        "n_rows": int(n_rows),
        "n_classes": len(classes),
        "n_elements": int(result.n_elements),
        "passed": True,
        "failures": [],
        "version": __version__,
        "classes": classes,
        "inputs": inp.sources,
        "options": {
            "pos_weight": opts.pos_weight,
            "label_smoothing": opts.label_smoothing,
            "ignore_value": opts.ignore_value,
            "from_probs": opts.from_probs,
            "nan_policy": inp.spec.nan_policy,
            "output": opts.output,
        },
    }


def add_metrics(report: dict, state, metrics: tuple[str, ...]) -> None:
    """The requested metrics into the report: per class beside the loss, and the
    micro-averaged ones (every element of every class) as ``"metrics"``."""
    computed = state.compute(metrics)
    for c, m in zip(report["classes"], computed["classes"], strict=True):
        c.update(m)
    report["metrics"] = {"names": list(metrics), "bins": state.bins, **computed["overall"]}


def suggest(labels: str, *, targets: str | None = None, method: str = "ratio",
            beta: float = 0.999, clip_max: float | None = None, batch_rows: int = 65536,
            class_dim: int = 1, warn: Callable[[str], None] = lambda msg: None,
            engine: str = "local", scheduler: str | None = None,
            timeout: float | None = None) -> dict:
    """`bce suggest-pos-weight`: per-class pos_weight from streamed class counts."""
    if clip_max is not None and not clip_max > 0:  # also NaN
        raise BCEInputError(f"--clip-max must be a number > 0, got {clip_max}")
    from .data import open_targets
    from .functional import pos_weight_from_counts

    engine = check(Engine, engine, "engine")
    if engine == "dask":
        from . import _dask

        _dask.check_paths(labels)
    elif timeout is not None:
        raise BCEInputError("--timeout is for --engine dask")
    n_pos = n_neg = None
    with open_targets(labels, targets=targets, batch_rows=batch_rows,
                      class_dim=class_dim) as inp:
        counts = (_dask.count_batches(inp, scheduler, timeout) if engine == "dask"
                  else (class_counts(batch, inp) for batch in inp.batches()))
        for pos, neg in counts:
            n_pos = pos if n_pos is None else n_pos + pos
            n_neg = neg if n_neg is None else n_neg + neg
        names = [str(n) for n in inp.class_names]
    pw = pos_weight_from_counts(n_pos, n_neg, method, beta, clip_max)
    missing = [n for n, v in zip(names, pw, strict=True) if not math.isfinite(v)]
    if missing:
        warn(f"{len(missing)} class(es) have no positive targets ({brief(missing)}): their "
             "pos_weight is null")
    values = finite_values(pw)
    return {
        "method": method,
        "pos_weight": values,
        "classes": [{"name": n, "n_pos": float(p), "n_neg": float(q), "pos_weight": v}
                    for n, p, q, v in zip(names, n_pos, n_neg, values, strict=True)],
        "beta": beta if method == "effective-number" else None,
        "clip_max": clip_max,
        "version": __version__,
    }
