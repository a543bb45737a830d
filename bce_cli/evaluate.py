"""`bce eval` as a library call: stream inputs through the accumulator, build the report.

The command line only parses options, calls :func:`evaluate` and renders the
report it returns; everything here raises :class:`~bce_cli.errors.BCEInputError`
for bad input.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from . import __version__, _tiers
from ._checks import check_targets
from ._safe_write import SafeFile
from .accumulator import BCEAccumulator
from .choices import Reduction, values
from .errors import BCEInputError, InvalidValueError, printable
from .outputs import LossWriter
from .report import finite_values, loss_number, loss_value, loss_values


@dataclass
class EvalOptions:
    reduction: str = "mean"
    pos_weight: str | None = None
    label_smoothing: float = 0.0
    ignore_value: float | None = None
    from_probs: bool = False
    output: str | None = None
    report: str | None = None  # the JSON report is also written here
    threads: int | None = None
    max_loss: float | None = None
    max_class_loss: float | None = None
    baseline: str | None = None
    max_increase: float | None = None


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

    With ``opts.output`` / ``opts.report``, the per-element losses and the JSON
    report are also written: both whole before either is put in place, so an
    error leaves neither (see :mod:`bce_cli._safe_write`).
    """
    from .data import open_inputs, parse_pos_weight
    from .data._readahead import read_ahead

    _tiers.set_threads(opts.threads)
    for flag, limit in (("--max-loss", opts.max_loss), ("--max-class-loss", opts.max_class_loss),
                        ("--max-increase", opts.max_increase)):
        if limit is not None and math.isnan(limit):
            raise BCEInputError(f"{flag} is NaN: a gate needs a number (NaN would pass every "
                                "loss)")
    if opts.ignore_value is not None and math.isnan(opts.ignore_value):
        raise BCEInputError("--ignore-value nan matches nothing; use --nan-policy omit to leave "
                            "NaN targets out")
    baseline = load_baseline(opts.baseline) if opts.baseline else None
    if (opts.baseline is None) != (opts.max_increase is None):
        raise BCEInputError("--baseline and --max-increase go together")
    if opts.output and opts.reduction != "none":
        raise BCEInputError("--output receives per-element losses: use it with --reduction none")
    writer = report_file = None
    try:
        with open_inputs(spec) as inp:
            pos_weight = (None if opts.pos_weight is None
                          else parse_pos_weight(opts.pos_weight, inp.class_names))
            acc = BCEAccumulator(inp.n_classes, pos_weight=pos_weight,
                                 ignore_value=opts.ignore_value,
                                 label_smoothing=opts.label_smoothing, nan_policy=spec.nan_policy)
            if inp.n_rows:
                acc.job_elements = inp.n_rows * inp.elements_per_row
            unpaired = inp.sources.get("unpaired")
            if unpaired:
                warn(f"columns without a partner are left out: {_brief(unpaired)}")
            if total is not None:
                total(inp.n_rows)
            writer = LossWriter.for_path(opts.output, inp) if opts.output else None
            lo, hi = math.inf, -math.inf
            for batch in read_ahead(inp.batches()):
                x = batch.logits
                try:
                    if opts.from_probs:
                        x = probs_to_logits(x)
                    elif 0.0 <= lo and hi <= 1.0 and x.size:  # all in [0, 1] so far
                        lo, hi = min(lo, _nan_min(x)), max(hi, _nan_max(x))
                    losses = acc.update(x, batch.targets, batch.weight,
                                        return_losses=writer is not None)
                except InvalidValueError as err:
                    raise _placed(err, inp, batch.row_offset) from None
                if writer is not None:
                    writer.write(losses)
                if progress is not None:
                    progress(batch.n_rows)
            if not opts.from_probs and 0.0 <= lo and hi <= 1.0:
                warn("the predictions all lie in [0, 1]: these look like probabilities, not "
                     "logits; pass --from-probs if they are")
            result = acc.compute("mean" if opts.reduction == "none" else opts.reduction)
            if writer is not None:
                writer.finish()
            report = build_report(result, inp, opts, acc.n_rows)
        no_pos = [c["name"] for c in report["classes"] if c["n_pos"] == 0]
        if no_pos:
            warn(f"{len(no_pos)} class(es) have no positive targets ({_brief(no_pos)}): their "
                 "suggested pos_weight is null")
        if baseline is not None:
            new = check_baseline_matches(report, baseline, opts.baseline)
            if new:
                warn(f"{len(new)} class(es) are not in the baseline and are not compared: "
                     f"{_brief(new)}")
        failures = check_gates(report, opts, baseline)
        report["gates"] = {k: v for k, v in (("max_loss", opts.max_loss),
                                              ("max_class_loss", opts.max_class_loss),
                                              ("baseline", opts.baseline),
                                              ("max_increase", opts.max_increase))
                           if v is not None}
        report["passed"] = not failures
        report["failures"] = failures
        if opts.report:
            from .report import to_json

            report_file = SafeFile(opts.report)
            report_file.write((to_json(report) + "\n").encode())
            report_file.finish()
        # both files are whole and synced before either is put in place: all or nothing
        if writer is not None:
            writer.commit()
        if report_file is not None:
            report_file.commit()
    finally:
        if writer is not None:
            writer.abort()
        if report_file is not None:
            report_file.abort()
    return report


def _placed(err: InvalidValueError, inp, row_offset: int) -> BCEInputError:
    """An invalid element found in a batch, stated at its file, column and row."""
    index = err.index
    return inp.error_at(err.what, row_offset + index[0], err.class_index, which=err.role,
                        hint=err.hint, flat=index[2] if len(index) > 2 else None)


def _brief(items, limit: int = 5) -> str:
    if isinstance(items, dict):
        items = [f"{k}: {', '.join(map(str, v)) if isinstance(v, list) else v}"
                 for k, v in items.items()]
    items = [str(i) for i in items]
    return ", ".join(items[:limit]) + (", ..." if len(items) > limit else "")


def _num(v) -> float | None:
    v = float(v)
    return v if math.isfinite(v) else None


def build_report(result, inp, opts: EvalOptions, n_rows: int) -> dict:
    # Whole arrays to lists in one pass each: per-class work stays linear and cheap
    # (a million classes).  NaN counts (only with --nan-policy propagate) are null.
    columns = zip([str(n) for n in inp.class_names], loss_values(result.class_loss),
                  finite_values(result.n_pos), finite_values(result.n_neg),
                  finite_values(result.suggested_pos_weight),
                  result.count.astype(np.int64).tolist(), finite_values(result.positive_rate),
                  finite_values(result.accuracy), loss_values(result.prior_loss), strict=True)
    classes = [{"name": name, "loss": loss, "n_pos": n_pos, "n_neg": n_neg,
                "suggested_pos_weight": spw, "count": count, "positive_rate": rate,
                "accuracy": acc, "prior_loss": prior}
               for name, loss, n_pos, n_neg, spw, count, rate, acc, prior in columns]
    return {
        "loss": loss_value(result.loss),
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


def load_baseline(path: str) -> dict:
    """The baseline report, checked: ``loss`` a number (or null, or an infinity
    spelled as a string such as "Infinity"), ``reduction`` one of the reductions,
    ``classes`` a list of objects with a ``name`` and a ``loss``.  Losses come back
    as floats (or None)."""
    from .data._paths import check_regular

    check_regular(path, path)
    try:
        with open(path, encoding="utf-8") as fh:
            base = json.load(fh)
    except FileNotFoundError:
        raise BCEInputError("baseline report not found", file=path) from None
    except RecursionError:
        raise BCEInputError("not a readable JSON report: nested too deeply", file=path) from None
    except (OSError, ValueError) as err:
        raise BCEInputError(f"not a readable JSON report: {printable(err)}", file=path) from None
    if not isinstance(base, dict) or "loss" not in base:
        raise BCEInputError("not a bce JSON report (no 'loss' key)", file=path,
                            hint="write one with: bce eval ... --report PATH")
    base = dict(base)
    base["loss"] = _checked_loss(base["loss"], path, "the baseline's 'loss'")
    if base["loss"] is not None and math.isnan(base["loss"]):  # json.load reads NaN literally
        raise BCEInputError("the baseline's loss is NaN: nothing can be compared with it",
                            file=path)
    red = base.get("reduction", "mean")
    if red not in values(Reduction):
        raise BCEInputError(f"the baseline's 'reduction' is {_shown(red)}, not 'mean', 'sum' "
                            "or 'none'", file=path)
    classes = base.get("classes", [])
    if not isinstance(classes, list):
        raise BCEInputError(f"the baseline's 'classes' is {_shown(classes)}, not a list",
                            file=path)
    checked = []
    for i, c in enumerate(classes):
        if not isinstance(c, dict) or not isinstance(c.get("name"), (str, int)) \
                or isinstance(c.get("name"), bool):
            raise BCEInputError(f"the baseline's class {i} is {_shown(c)}, not an object with "
                                "a 'name'", file=path)
        name = str(c["name"])
        checked.append({**c, "name": name,
                        "loss": _checked_loss(c.get("loss"), path,
                                              f"the baseline's loss of class {name!r}")})
    base["classes"] = checked
    return base


def _shown(value) -> str:
    return printable(json.dumps(value, allow_nan=True), 60)


def _checked_loss(value, path, what) -> float | None:
    """A loss read from a baseline file: a number, null, or an infinity spelled as a
    string (how reports write one); anything else is an input error."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            number = 0.0
        if math.isinf(number):
            return number
    raise BCEInputError(f"{what} is {_shown(value)}, not a number", file=path)


def check_baseline_matches(report: dict, baseline: dict, path: str) -> list[str]:
    """A baseline must be comparable: same reduction, and classes that match by name.

    Returns the names of this run's classes that the baseline lacks."""
    red = baseline.get("reduction", "mean")
    if (red == "sum") != (report["reduction"] == "sum"):
        raise BCEInputError(f"the baseline's losses are {red!r} reductions but this run's are "
                            f"{report['reduction']!r}: they cannot be compared", file=path)
    names = [c["name"] for c in report["classes"]]
    base_names = [str(c.get("name")) for c in baseline.get("classes", [])]
    if base_names and not set(names) & set(base_names):
        raise BCEInputError(f"no class of this run ({_brief(names)}) is in the baseline "
                            f"({_brief(base_names)})", file=path,
                            hint="make the baseline from the same kind of input")
    known = set(base_names)
    return [n for n in names if n not in known]


def _exceeds(value, limit) -> bool:
    return value is None or value > limit


def _rise(new, base):
    """How much a loss rose over the baseline's (None: NaN); an infinite loss that
    stays infinite did not rise."""
    if new is None:
        return None
    return 0.0 if new == base else new - base


def _baseline_loss(v, path: str, where: str) -> float | None:
    """A baseline's loss as a float; None (not compared) for null or NaN."""
    try:
        v = loss_number(v)
    except (TypeError, ValueError):
        raise BCEInputError(f"the baseline's {where} loss {v!r} is not a number",
                            file=path) from None
    return None if v is None or math.isnan(v) else v


def check_gates(report: dict, opts: EvalOptions, baseline: dict | None) -> list[str]:
    """The failed gates, one readable line each (empty: passed)."""
    failures = []
    loss = loss_number(report["loss"])
    if opts.max_loss is not None and _exceeds(loss, opts.max_loss):
        failures.append(f"overall loss {_fmt(loss)} > --max-loss {opts.max_loss:g}")
    if opts.max_class_loss is not None:
        for c in report["classes"]:
            if _exceeds(loss_number(c["loss"]), opts.max_class_loss):
                failures.append(f"class {c['name']}: loss {_fmt(c['loss'])} > "
                                f"--max-class-loss {opts.max_class_loss:g}")
    if baseline is not None:
        limit = opts.max_increase
        base_loss = _baseline_loss(baseline.get("loss"), opts.baseline, "overall")
        if base_loss is not None and _exceeds(_rise(loss, base_loss), limit):
            failures.append(f"overall loss {_fmt(loss)} rose by more than {limit:g} over the "
                            f"baseline's {_fmt(base_loss)}")
        base_classes = {str(c.get("name")): c.get("loss") for c in baseline.get("classes", [])}
        for c in report["classes"]:
            b = _baseline_loss(base_classes.get(c["name"]), opts.baseline,
                               f"class {c['name']}'s")
            if b is None:
                continue
            if _exceeds(_rise(loss_number(c["loss"]), b), limit):
                failures.append(f"class {c['name']}: loss {_fmt(c['loss'])} rose by more than "
                                f"{limit:g} over the baseline's {_fmt(b)}")
    return failures


def _fmt(v) -> str:
    v = loss_number(v)
    return "NaN" if v is None else f"{v:.6g}"


def suggest(labels: str, *, targets: str | None = None, method: str = "ratio",
            beta: float = 0.999, clip_max: float | None = None, batch_rows: int = 65536,
            class_dim: int = 1, warn: Callable[[str], None] = lambda msg: None) -> dict:
    """`bce suggest-pos-weight`: per-class pos_weight from streamed class counts."""
    if clip_max is not None and not clip_max > 0:  # also NaN
        raise BCEInputError(f"--clip-max must be a number > 0, got {clip_max}")
    from .data import open_targets
    from .functional import pos_weight_from_counts

    n_pos = n_neg = None
    with open_targets(labels, targets=targets, batch_rows=batch_rows,
                      class_dim=class_dim) as inp:
        for batch in inp.batches():
            y = np.asarray(batch.targets)
            yf = y.astype(np.float64) if y.dtype != np.bool_ else y
            try:
                check_targets(yf, class_axis=1, hints=False)
            except InvalidValueError as err:
                raise _placed(err, inp, batch.row_offset) from None
            axes = (0,) if y.ndim == 2 else (0, 2)
            pos = yf.sum(axis=axes, dtype=np.float64)
            neg = y.shape[0] * (1 if y.ndim == 2 else y.shape[2]) - pos
            n_pos = pos if n_pos is None else n_pos + pos
            n_neg = neg if n_neg is None else n_neg + neg
        names = [str(n) for n in inp.class_names]
    pw = pos_weight_from_counts(n_pos, n_neg, method, beta, clip_max)
    missing = [n for n, v in zip(names, pw, strict=True) if not math.isfinite(v)]
    if missing:
        warn(f"{len(missing)} class(es) have no positive targets ({_brief(missing)}): their "
             "pos_weight is null")
    values = [_num(v) for v in pw]
    return {
        "method": method,
        "pos_weight": values,
        "classes": [{"name": n, "n_pos": float(p), "n_neg": float(q), "pos_weight": v}
                    for n, p, q, v in zip(names, n_pos, n_neg, values, strict=True)],
        "beta": beta if method == "effective-number" else None,
        "clip_max": clip_max,
        "version": __version__,
    }
