"""`bce compare` as a library call: two sets of logits against the same targets, compared
row by row.

Each batch gives the targets (and weights) once with both models' logits, row
aligned; two :class:`~bce_cli.accumulator.BCEAccumulator` (same options) give
each model's loss and per-element losses, and :class:`PairedDelta` keeps the
per-element differences ``d = l_new - l_base`` as a state of the same layout
(rows ``LOSS``, ``COUNT`` and the row moments of :mod:`bce_cli.uncertainty`), so
the standard error of the change is that of the *paired* per-row differences:
what the two models share (hard rows, label noise) cancels, and the interval is
far tighter than the two losses' intervals side by side.

An element counts in both losses or in neither: with ``--nan-policy omit`` an
element whose logit is NaN in one model is left out of the other's as well, so
``delta`` is ``loss_new - loss_base`` over the same elements (to rounding: it is
summed from the differences themselves).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from . import __version__, _tiers
from ._checks import isnan, left_out
from ._safe_write import SafeFile
from .accumulator import BCEAccumulator
from .choices import Engine, Reduction, check
from .errors import BCEInputError, brief
from .gates import check_limits, fmt_loss
from .report import finite_values, interval_values, loss_value, loss_values
from .stats import COUNT, LOSS, N_ACC_STATS
from .uncertainty import (
    ROW_STATS,
    check_confidence,
    intervals,
    row_moments,
    standard_errors,
    two_sided_p,
)


@dataclass
class CompareOptions:
    reduction: str = "mean"  # or "sum"; "none" is refused (one number per class is compared)
    pos_weight: str | None = None
    label_smoothing: float = 0.0
    ignore_value: float | None = None
    from_probs: bool = False
    report: str | None = None  # the JSON report is also written here
    threads: int | None = None
    engine: str = "local"  # or "dask" (bce_cli._dask)
    scheduler: str | None = None  # --engine dask: an address, "local" or "local:N"
    timeout: float | None = None  # --engine dask: seconds the whole job may take
    confidence: float = 0.95
    max_increase: float | None = None        # fails when the whole interval lies above it
    max_increase_upper: float | None = None  # fails when the interval's upper end exceeds it


# The gates, with the flags that set them.
LIMITS = (("max_increase", "--max-increase"), ("max_increase_upper", "--max-increase-upper"))


# ------------------------------------------------------------------ the paired state
@dataclass
class DeltaResult:
    """What :meth:`PairedDelta.compute` returns: per class arrays of shape (C,)."""

    reduction: str
    confidence: float
    n_rows: int
    delta: float
    delta_se: float
    delta_ci: tuple[float, float]
    p_value: float
    class_delta: np.ndarray
    class_delta_se: np.ndarray
    class_delta_ci: np.ndarray  # (2, C): lows, highs
    class_p_value: np.ndarray
    count: np.ndarray


class PairedDelta:
    """The mergeable state of the per-element differences new - base, rows as the
    units: a ``(N_ACC_STATS, C)`` float64 array whose ``LOSS`` row holds the sums of
    the differences, ``COUNT`` the elements that count, and the row-moment rows
    those of the differences (the other rows stay 0); ``merge`` is addition."""

    def __init__(self, n_classes: int):
        self.n_classes = int(n_classes)
        self.state = np.zeros((N_ACC_STATS, self.n_classes))
        self.n_rows = 0

    def add(self, base_losses, new_losses, skip=None) -> PairedDelta:
        """Add one batch of per-element losses (``(n, C)`` or ``(n, C, S)``, as
        ``BCEAccumulator.update(..., return_losses=True)`` returns them); ``skip``
        marks the elements left out (see :func:`left_out`)."""
        lb = np.asarray(base_losses, dtype=np.float64)
        ln = np.asarray(new_losses, dtype=np.float64)
        if lb.ndim == 1:
            lb, ln = lb[:, None], ln[:, None]
            skip = None if skip is None else np.asarray(skip).reshape(-1, 1)
        with np.errstate(invalid="ignore"):  # inf - inf: NaN, as the losses' difference
            d = ln - lb
        if skip is None:
            counted = np.ones(d.shape)
        else:
            d = np.where(skip, 0.0, d)
            counted = (~skip).astype(np.float64)
        if d.ndim == 3:  # the values of a row and class add up: the row is the unit
            with np.errstate(invalid="ignore", over="ignore"):
                d, counted = d.sum(axis=2), counted.sum(axis=2)
        with np.errstate(invalid="ignore", over="ignore"):
            self.state[LOSS] += d.sum(axis=0)
            self.state[COUNT] += counted.sum(axis=0)
            self.state[list(ROW_STATS)] += row_moments(d, counted)
        self.n_rows += d.shape[0]
        return self

    def add_state(self, state, n_rows: int) -> PairedDelta:
        """Add another state (a Dask task's batch, as :attr:`state`) and its rows."""
        self.state += state
        self.n_rows += n_rows
        return self

    def compute(self, reduction: str = "mean", confidence: float = 0.95) -> DeltaResult:
        """The change per class and overall with standard errors, intervals at
        ``confidence`` and two-sided p-values of "no change" (Student t on R - 1
        degrees of freedom, R the rows)."""
        reduction = check(Reduction, reduction, "reduction")
        if reduction == "none":
            raise BCEInputError("compare needs one number per class: --reduction mean or sum")
        check_confidence(confidence)
        s_d, count = self.state[LOSS], self.state[COUNT]
        total, n = float(s_d.sum()), float(count.sum())
        with np.errstate(invalid="ignore", divide="ignore"):
            cls = s_d.copy() if reduction == "sum" else s_d / count
        delta = total if reduction == "sum" else (total / n if n else math.nan)
        cls_se, se = standard_errors(self.state, self.n_rows, reduction)
        lo, hi = intervals(delta, se, self.n_rows, confidence)
        cls_ci = np.stack(intervals(cls, cls_se, self.n_rows, confidence))
        dof = self.n_rows - 1
        return DeltaResult(
            reduction=reduction, confidence=confidence, n_rows=self.n_rows,
            delta=delta, delta_se=se, delta_ci=(float(lo), float(hi)),
            p_value=p_value(delta, se, dof),
            class_delta=cls, class_delta_se=cls_se, class_delta_ci=cls_ci,
            class_p_value=np.array([p_value(d, e, dof) for d, e in zip(cls, cls_se,
                                                                         strict=True)]),
            count=count.copy(),
        )


def p_value(delta: float, se: float, dof: int) -> float:
    """Two-sided p-value of ``delta`` = 0 from ``t = delta / se`` on ``dof`` degrees of
    freedom; with no spread at all (``se`` 0) 1 for no change and 0 for any;
    NaN without a standard error (fewer than two rows, a loss that is not finite)."""
    delta, se = float(delta), float(se)
    if dof < 1 or not (math.isfinite(delta) and se == se):
        return math.nan
    if se == 0.0:
        return 1.0 if delta == 0.0 else 0.0
    return two_sided_p(delta / se, dof)


# ------------------------------------------------------------------ arrays (the API)
def compare_arrays(base_logits, new_logits, targets, weight=None, *, pos_weight=None,
                   reduction: str = "mean", ignore_value: float | None = None,
                   label_smoothing: float = 0.0, nan_policy: str = "error",
                   confidence: float = 0.95) -> dict:
    """The paired comparison of two models' logits (``(N, C)`` or ``(N,)``) against
    the same targets, rows as the units: ``loss_base``, ``loss_new``, ``delta``
    (new - base), ``delta_se``, ``delta_ci``, ``p_value`` and ``n_rows``, as floats
    (and per class in ``"classes"``, by index).

    >>> y = np.array([[1.0], [0.0], [1.0], [0.0]])
    >>> r = compare_arrays(np.zeros((4, 1)), 2 * y - 1, y)
    >>> round(r["delta"], 6), round(r["loss_new"] - r["loss_base"], 6), r["p_value"]
    (-0.379885, -0.379885, 0.0)
    """
    xb, xn = np.asarray(base_logits), np.asarray(new_logits)
    if xb.shape != xn.shape:
        raise BCEInputError(f"the new logits have shape {xn.shape} but the base logits "
                            f"{xb.shape}")
    xb, xn, y = (a[:, None] if a.ndim == 1 else a for a in (xb, xn, np.asarray(targets)))
    accs = [BCEAccumulator(xb.shape[1], pos_weight=pos_weight, ignore_value=ignore_value,
                           label_smoothing=label_smoothing, nan_policy=nan_policy)
            for _ in range(2)]
    if nan_policy == "omit":
        xb, xn = same_nans(xb, xn)
    paired = PairedDelta(xb.shape[1])
    lb = accs[0].update(xb, y, weight, return_losses=True)
    ln = accs[1].update(xn, y, weight, return_losses=True)
    paired.add(lb, ln, left_out(xb, y, ignore_value, nan_policy))
    rb, rn = (a.compute(reduction, confidence=confidence) for a in accs)
    d = paired.compute(reduction, confidence)
    return {"loss_base": rb.loss, "loss_new": rn.loss, "delta": d.delta,
            "delta_se": d.delta_se, "delta_ci": list(d.delta_ci), "p_value": d.p_value,
            "n_rows": d.n_rows,
            "classes": [{"loss_base": float(b), "loss_new": float(n), "delta": float(c),
                         "delta_se": float(e), "delta_ci": [float(lo), float(hi)],
                         "p_value": float(p)}
                        for b, n, c, e, lo, hi, p in zip(
                            rb.class_loss, rn.class_loss, d.class_delta, d.class_delta_se,
                            *d.class_delta_ci, d.class_p_value, strict=True)]}


def same_nans(xb, xn):
    """Both logits with a NaN wherever either has one (``--nan-policy omit``: an element
    left out of one model is left out of both, so both losses cover the same elements)."""
    nb, nn = isnan(xb), isnan(xn)
    if nn.any():
        xb = np.where(nn, np.nan, xb).astype(xb.dtype if xb.dtype.kind == "f" else np.float64)
    if nb.any():
        xn = np.where(nb, np.nan, xn).astype(xn.dtype if xn.dtype.kind == "f" else np.float64)
    return xb, xn


# ------------------------------------------------------------------ files (the command)
def compare_specs(base: str, new: str | None, labels: str | None, *,
                  logits_base: str | None = None, logits_new: str | None = None,
                  logits: str | None = None, **common):
    """The two :class:`~bce_cli.data.InputSpec` of ``bce compare BASE_PREDS [NEW_PREDS]
    [LABELS]``: BASE_PREDS with LABELS, and NEW_PREDS with LABELS.  Without NEW_PREDS
    the new logits are other columns of BASE_PREDS (``logits_new``), which then also
    holds the targets; ``logits`` picks the logits of both where the model's own
    option is not given."""
    from .data import InputSpec

    if new is None:
        if logits_base is None or logits_new is None:
            raise BCEInputError(
                "give NEW_PREDS, or two sets of columns of BASE_PREDS with --logits-base "
                "and --logits-new",
                hint="bce compare base.parquet new.parquet labels.parquet, or "
                     "bce compare preds.parquet --logits-base 'base_*' --logits-new 'new_*'")
        if labels is not None:
            raise BCEInputError("LABELS without NEW_PREDS")
        new = base
    if "-" in (labels, new if new == base else None):
        raise BCEInputError("compare reads LABELS (and a file named twice) once per model: "
                            "standard input ('-') cannot be read twice",
                            hint="save it to a file first")
    lb = logits_base if logits_base is not None else logits
    ln = logits_new if logits_new is not None else logits
    by = common.pop("by", None)  # the groups are read with the base model's batches
    return (InputSpec(preds=base, labels=labels, logits=lb, by=by, **common),
            InputSpec(preds=new, labels=labels, logits=ln, **common))


def _describe(spec) -> str:
    return spec.preds if spec.logits is None else f"{spec.preds} ({spec.logits})"


def compare(spec_base, spec_new, opts: CompareOptions, *,
            warn: Callable[[str], None] = lambda msg: None,
            progress: Callable[[int], None] | None = None,
            total: Callable[[int | None], None] | None = None) -> dict:
    """Run one comparison and return the report (a JSON-ready dict); with
    ``opts.report`` the JSON is also written (atomically)."""
    from .data import open_inputs, parse_pos_weight
    from .data._readahead import read_ahead

    engine = check(Engine, opts.engine, "engine")
    if engine == "dask":
        from . import _dask

        _dask.check_compare(spec_base, spec_new)
    elif opts.timeout is not None:
        raise BCEInputError("--timeout is for --engine dask")
    if check(Reduction, opts.reduction, "reduction") == "none":
        raise BCEInputError("compare needs one number per class: --reduction mean or sum",
                            hint="per-element losses come from bce eval --reduction none")
    _tiers.set_threads(opts.threads)
    check_confidence(opts.confidence)
    check_limits(opts, LIMITS)
    if opts.ignore_value is not None and math.isnan(opts.ignore_value):
        raise BCEInputError("--ignore-value nan matches nothing; use --nan-policy omit to leave "
                            "NaN targets out")
    nan_policy = spec_base.nan_policy
    report_file = None
    try:
        with open_inputs(spec_base) as inp_b, open_inputs(spec_new) as inp_n:
            new_file = spec_new.preds
            _check_pair(inp_b, inp_n, new_file)
            pos_weight = (None if opts.pos_weight is None
                          else parse_pos_weight(opts.pos_weight, inp_b.class_names))
            accs = [BCEAccumulator(inp_b.n_classes, pos_weight=pos_weight,
                                   ignore_value=opts.ignore_value,
                                   label_smoothing=opts.label_smoothing,
                                   nan_policy=nan_policy) for _ in range(2)]
            if inp_b.n_rows:
                for acc in accs:
                    acc.job = _tiers.JobTier(inp_b.n_rows * inp_b.elements_per_row)
            for inp in (inp_b, inp_n):
                unpaired = inp.sources.get("unpaired")
                if unpaired:
                    warn(f"columns without a partner are left out: {brief(unpaired)}")
            if total is not None:
                total(inp_b.n_rows)
            # targets read from two files (no LABELS) must be the same targets
            own_targets = spec_base.labels is None and spec_new.preds != spec_base.preds
            pairing = _Pairing(accs, spec_base.by, opts, nan_policy, own_targets, new_file)
            if engine == "dask":
                _dask.compare_batches(inp_b, inp_n, spec_base, spec_new, pairing, opts,
                                      progress)
            else:
                for bb, bn in _aligned(read_ahead(inp_b.batches()),
                                       read_ahead(inp_n.batches()), spec_base.preds, new_file):
                    pairing.add(bb, bn, inp_b, inp_n)
                    if progress is not None:
                        progress(bb.n_rows)
            accs, paired, groups, seen = (pairing.accs, pairing.paired, pairing.groups,
                                          pairing.seen)
            for (lo, hi), spec in zip(seen, (spec_base, spec_new), strict=True):
                if not opts.from_probs and 0.0 <= lo and hi <= 1.0:
                    warn(f"the predictions of {_describe(spec)} all lie in [0, 1]: these look "
                         "like probabilities, not logits; pass --from-probs if they are")
            rb, rn = (a.compute(opts.reduction, confidence=opts.confidence) for a in accs)
            delta = paired.compute(opts.reduction, opts.confidence)
            report = build_report(rb, rn, delta, inp_b, inp_n, spec_base, spec_new, opts)
            if groups is not None:
                report["by"] = spec_base.by
                report["groups"] = groups.report(opts.reduction, opts.confidence)
        if report["n_rows"] < 2:
            warn("one row: the change has no interval (no spread to estimate); "
                 "--max-increase cannot fail on it and --max-increase-upper fails")
        apply_gates(report, opts)
        if opts.report:
            from .report import to_json

            report_file = SafeFile(opts.report)
            report_file.write((to_json(report) + "\n").encode())
            report_file.finish()
            report_file.commit()
    finally:
        if report_file is not None:
            report_file.abort()
    return report


class _Pairing:
    """One comparison's state, fed pairs of batches (the same rows of both models):
    each model's accumulator, the paired differences, the groups (``--by``), and the
    smallest and largest prediction of each model (``seen``, for the "these look like
    probabilities" warning).  :meth:`empty` makes one with the same settings for a
    Dask task, whose per-batch :meth:`states` the driver adds with :meth:`add_states`
    in the dataset's order (the sums a local run makes, bit for bit)."""

    def __init__(self, accs, by, opts, nan_policy, own_targets, new_file):
        self.accs, self.by, self.opts = accs, by, opts
        self.nan_policy, self.own_targets, self.new_file = nan_policy, own_targets, new_file
        n_classes = accs[0].n_classes
        self.paired = PairedDelta(n_classes)
        self.groups = _Groups(n_classes, by) if by else None
        self.seen = [(math.inf, -math.inf), (math.inf, -math.inf)]

    def empty(self) -> _Pairing:
        return _Pairing([a.spawn() for a in self.accs], self.by, self.opts, self.nan_policy,
                        self.own_targets, self.new_file)

    def add(self, bb, bn, inp_b, inp_n) -> None:
        """Add one pair of batches: both models' losses on the same targets."""
        from .evaluate import add_batch

        opts = self.opts
        if self.own_targets:
            _check_same_targets(bb, bn, inp_n, self.new_file)
        xb, xn = bb.logits, bn.logits
        if self.nan_policy == "omit":
            xb, xn = same_nans(xb, xn)
        losses = []
        for k, (acc, batch, inp, x) in enumerate(((self.accs[0], bb, inp_b, xb),
                                                  (self.accs[1], bn, inp_n, xn))):
            out, lo, hi = add_batch(acc, replace(batch, logits=x), inp, opts.from_probs,
                                    *self.seen[k], return_losses=True)
            losses.append(out)
            self.seen[k] = (lo, hi)
        skip = left_out(xb, bb.targets, opts.ignore_value, self.nan_policy)
        self.paired.add(*losses, skip)
        if self.groups is not None:
            self.groups.add(bb, losses, skip)

    def states(self):
        """This (one batch's) state: both accumulators', the paired one, its rows and
        its groups' keys and sums."""
        g = self.groups
        return (self.accs[0].state, self.accs[1].state, self.paired.state, self.paired.n_rows,
                None if g is None else (g.keys.keys, [s.sums for s in (g.base, g.new, g.delta)]))

    def add_states(self, states, seen) -> None:
        """Add one batch's :meth:`states` from a task, and what it has seen."""
        state_b, state_n, state_d, n_rows, group_part = states
        self.accs[0].add_state(state_b, n_rows)
        self.accs[1].add_state(state_n, n_rows)
        self.paired.add_state(state_d, n_rows)
        if group_part is not None:
            self.groups.add_part(*group_part)
        self.seen = [(min(a[0], b[0]), max(a[1], b[1])) for a, b in zip(self.seen, seen,
                                                                         strict=True)]


def pair_range(rows, *, spec_base, spec_new, pairing, threads):
    """Run on a Dask worker: the per-batch states of rows ``[start, stop)`` of both
    inputs, and what each model's predictions have seen."""
    from .data import open_inputs

    _tiers.set_threads(threads)
    out, seen = [], [(math.inf, -math.inf), (math.inf, -math.inf)]
    with (open_inputs(replace(spec_base, rows=rows)) as inp_b,
          open_inputs(replace(spec_new, rows=rows)) as inp_n):
        for bb, bn in _aligned(inp_b.batches(), inp_n.batches(), spec_base.preds,
                               spec_new.preds):
            one = pairing.empty()
            one.seen = seen
            one.add(bb, bn, inp_b, inp_n)
            seen = one.seen
            out.append(one.states())
    return out, seen


class _Groups:
    """``bce compare --by``: per group, each model's loss and the change with its
    interval and p-value, from three :class:`~bce_cli.groups.GroupStats` (the base
    losses, the new ones, their per-element differences)."""

    def __init__(self, n_classes: int, column: str):
        from .groups import GroupKeys, GroupStats

        self.keys = GroupKeys(column)
        self.base, self.new, self.delta = (GroupStats(n_classes) for _ in range(3))

    def add(self, batch, losses, skip) -> None:
        ids = self.keys.ids(batch.key)
        counted = None if skip is None else ~skip
        lb, ln = losses
        with np.errstate(invalid="ignore"):  # inf - inf: a change that is not a number
            diff = ln.astype(np.float64) - lb
        for stats, values in ((self.base, lb), (self.new, ln), (self.delta, diff)):
            stats.add(ids, values, batch.targets, counted)

    def add_part(self, keys: list, sums: list) -> None:
        """Add one batch's sums (base, new, delta) of the groups ``keys`` (a Dask task's)."""
        ids = self.keys.ids_of(keys)
        for stats, part in zip((self.base, self.new, self.delta), sums, strict=True):
            stats.add_rows(ids, part)

    def report(self, reduction: str, confidence: float) -> list[dict]:
        b, n, d = (s.compute(reduction, confidence) for s in (self.base, self.new, self.delta))
        rows = d["n_rows"]
        p = [p_value(dl, se, int(r) - 1)
             for dl, se, r in zip(d["loss"], d["loss_se"], rows, strict=True)]
        lb, ln, dl = loss_values(b["loss"]), loss_values(n["loss"]), loss_values(d["loss"])
        se, ci, pv = finite_values(d["loss_se"]), interval_values(d["loss_ci"]), finite_values(p)
        keys = self.keys.keys
        return [{"key": keys[g], "n_rows": int(rows[g]), "n_elements": int(d["n_elements"][g]),
                 "loss_base": lb[g], "loss_new": ln[g], "delta": dl[g], "delta_se": se[g],
                 "delta_ci": ci[g], "p_value": pv[g]}
                for g in self.keys.order()]


def _check_pair(inp_b, inp_n, new_file: str) -> None:
    """The two models must predict the same classes of the same rows."""
    names_b = [str(n) for n in inp_b.class_names]
    names_n = [str(n) for n in inp_n.class_names]
    if names_b != names_n:
        raise BCEInputError(f"the classes differ: {brief(names_n)} here but {brief(names_b)} "
                            "for the base model", file=new_file,
                            hint="both models must predict the same classes, in one order")
    if inp_b.elements_per_row != inp_n.elements_per_row:
        raise BCEInputError(f"{inp_n.elements_per_row} values per row here but "
                            f"{inp_b.elements_per_row} for the base model", file=new_file)
    if None not in (inp_b.n_rows, inp_n.n_rows) and inp_b.n_rows != inp_n.n_rows:
        raise BCEInputError(f"{inp_n.n_rows} rows here but {inp_b.n_rows} for the base model",
                            file=new_file, hint="both models must predict the same rows, in "
                            "the same order")
    if inp_b.key is not None and inp_n.key is not None and not inp_b.key[1].equals(
            inp_n.key[1]):
        raise BCEInputError(f"the rows are not in the base model's order of --on "
                            f"{inp_b.key[0]!r}", file=new_file,
                            hint="rows are paired by position: sort both files by the key")


def _aligned(its_b, its_n, base_file: str, new_file: str):
    """Pairs of batches of the two inputs, the same rows (the same ``batch_rows``)."""
    for bb in its_b:
        bn = next(its_n, None)
        if bn is None or bn.n_rows != bb.n_rows:
            raise _rows_differ(bb.row_offset + (0 if bn is None else bn.n_rows), new_file,
                               base_file)
        yield bb, bn
    bn = next(its_n, None)
    if bn is not None:
        raise _rows_differ(bn.row_offset, base_file, new_file)


def _rows_differ(offset: int, short: str, other: str) -> BCEInputError:
    return BCEInputError(f"ends after {offset} rows, before {other} does", file=short,
                         hint="both models must predict the same rows, in the same order")


def _check_same_targets(bb, bn, inp_n, new_file: str) -> None:
    """Targets (and weights) read from each model's own file must agree."""
    for what in ("targets", "weight"):
        a, b = getattr(bb, what), getattr(bn, what)
        if a is None and b is None:
            continue
        if a is None or b is None or a.shape != b.shape:
            raise BCEInputError(f"the {what} differ from the base model's", file=new_file)
        with np.errstate(invalid="ignore"):
            a64, b64 = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
            differ = ~((a64 == b64) | (np.isnan(a64) & np.isnan(b64)))
        if differ.any():
            index = np.unravel_index(int(np.argmax(differ)), differ.shape)
            file, column, row = inp_n.locate(bn.row_offset + int(index[0]),
                                             int(index[1]) if len(index) > 1 else 0)
            raise BCEInputError(f"the {what} differ from the base model's "
                                f"({float(b64[index])!r} here, {float(a64[index])!r} there)",
                                file=file, column=column if what == "targets" else None,
                                row=row, hint="compare models on the same targets: give "
                                "them as LABELS")


def build_report(rb, rn, d: DeltaResult, inp_b, inp_n, spec_base, spec_new,
                 opts: CompareOptions) -> dict:
    names = [str(n) for n in inp_b.class_names]
    columns = zip(names, loss_values(rb.class_loss), loss_values(rn.class_loss),
                  loss_values(d.class_delta), finite_values(d.class_delta_se),
                  interval_values(d.class_delta_ci), finite_values(d.class_p_value),
                  rb.count.astype(np.int64).tolist(), strict=True)
    classes = [{"name": name, "loss_base": b, "loss_new": n, "delta": dl, "delta_se": se,
                "delta_ci": ci, "p_value": p, "count": count}
               for name, b, n, dl, se, ci, p, count in columns]
    return {
        "base": _describe(spec_base),
        "new": _describe(spec_new),
        "confidence": d.confidence,
        "reduction": d.reduction,
        "loss_base": loss_value(rb.loss),
        "loss_new": loss_value(rn.loss),
        "delta": loss_value(d.delta),
        "delta_se": finite_values([d.delta_se])[0],
        "delta_ci": interval_values(np.array(d.delta_ci).reshape(2, 1))[0],
        "p_value": finite_values([d.p_value])[0],
        "n_rows": int(d.n_rows),
        "n_classes": len(classes),
        "n_elements": int(rb.n_elements),
        "passed": True,
        "failures": [],
        "version": __version__,
        "classes": classes,
        "inputs": {"base": inp_b.sources, "new": inp_n.sources},
        "options": {
            "pos_weight": opts.pos_weight,
            "label_smoothing": opts.label_smoothing,
            "ignore_value": opts.ignore_value,
            "from_probs": opts.from_probs,
            "nan_policy": spec_base.nan_policy,
        },
    }


# ------------------------------------------------------------------ gates
def _bounds(delta, ci) -> tuple[float, float] | None:
    """The interval a gate reads: the report's, or for a change with no interval, an
    infinite change itself, else (fewer than two rows) the whole line; None for a
    change that is not a number."""
    if delta is None:
        return None
    if ci is not None:
        return float(ci[0]), float(ci[1])
    delta = float(delta)
    return (delta, delta) if math.isinf(delta) else (-math.inf, math.inf)


def check_gates(report: dict, opts: CompareOptions) -> list[str]:
    """The failed gates, one readable line each (empty: passed).  A class with no
    elements that count has nothing to compare and is skipped."""
    items = [("overall", report)] + [(f"class {c['name']}", c) for c in report["classes"]
                                      if c["count"]]
    if opts.max_increase is None and opts.max_increase_upper is None:
        return []
    pct = f"{100 * report['confidence']:g}%"
    failures = []
    for label, item in items:
        bounds = _bounds(item["delta"], item["delta_ci"])
        if bounds is None:
            failures.append(f"{label}: delta is not a number (NaN losses): no gate can pass")
            continue
        shown = f"{label}: delta {fmt_loss(item['delta'])} ({pct} interval {_fmt_ci(bounds)})"
        if opts.max_increase is not None and bounds[0] > opts.max_increase:
            failures.append(f"{shown} lies wholly above --max-increase {opts.max_increase:g}")
        if opts.max_increase_upper is not None and bounds[1] > opts.max_increase_upper:
            failures.append(f"{shown} reaches above --max-increase-upper "
                            f"{opts.max_increase_upper:g}")
    return failures


def apply_gates(report: dict, opts: CompareOptions) -> None:
    failures = check_gates(report, opts)
    report["gates"] = {k: getattr(opts, k) for k, _ in LIMITS if getattr(opts, k) is not None}
    report["passed"] = not failures
    report["failures"] = failures


def _fmt_ci(bounds) -> str:
    return f"[{bounds[0]:.6g}, {bounds[1]:.6g}]"
