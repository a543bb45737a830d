"""Calibration and ranking metrics of ``bce eval --metrics``: Brier score, expected
calibration error with its reliability table, AUROC, average precision and the
F1-best threshold, per class and micro-averaged over every element (no numba here).

The state is mergeable by addition and its size depends on the classes and bins
only, never on the rows: per class a float64 row (``bce_cli.stats``, "metrics'
state") of

* a histogram of the logits: bins of 1/1024 over [-8, 8) (probabilities from
  0.0003 to 0.9997, where positives and negatives meet for most models), of 1/64
  from there out to +-32, and two overflow bins (19,458 in all), positives
  (``w*y``) and negatives (``w*(1 - y)``) apart: AUROC, average precision and the
  best threshold follow from it, with error bounds from the elements that share a
  bin;
* per calibration bin (``--bins`` equal-width bins of the probability
  ``p = sigmoid(x)``, (low, high] as scikit-learn's ``calibration_curve``, the
  first one [0, high]): the count and the sums of ``w``, ``w*p``, ``w*y``;
* the sums of ``w*(p - y)^2``, the count, the NaN count and the count of "odd"
  elements (weight not 1, or target not 0/1: with none, the average precision
  can be exact where positives share bins).

``w`` is the element weight (``--weight``; never ``pos_weight``, which only
shapes the loss), ``y`` the raw target: label smoothing changes what the loss
is trained towards, not which elements are positive, so ranking and calibration
are measured against the raw targets (soft targets count ``y`` positive and
``1 - y`` negative).  Elements left out of the loss (``--ignore-value``,
``--nan-policy omit``) are left out here; under ``--nan-policy propagate`` a
class with a NaN element has no metrics (null).

Two tiers fill the same state: a compiled kernel (``bce_cli._metric_kernels``),
one task per class over the batch in row order, or NumPy ``bincount`` per class
(they differ in the last bits: exp, and the order of the float sums); a class's
sums never depend on the number of threads, nor on the batch's memory layout.
"""

from __future__ import annotations

import numpy as np

from . import _tiers
from .errors import BCEInputError
from .stats import (
    COARSE,
    COARSE_BINS,
    FINE,
    FINE_BINS,
    FINE_START,
    HIGH_START,
    LOGIT_CORE,
    LOGIT_MAX,
    NAN_OMIT,
    NAN_POLICIES,
    RANK_BINS,
)

METRICS = ("brier", "ece", "auroc", "average_precision", "best_threshold")
DEFAULT_BINS = 15
MAX_BINS = 10_000
# The state is about 311 KB per class, with a batch's copy beside it: past this many
# bytes of state --metrics is refused rather than left to run out of memory.
MAX_STATE_BYTES = 4 << 30


def parse_metrics(text: str | None) -> tuple[str, ...]:
    """``--metrics``: a comma list of METRICS or ``all``, in METRICS' order.

    >>> parse_metrics("auroc, brier"), parse_metrics("all") == METRICS, parse_metrics(None)
    (('brier', 'auroc'), True, ())
    """
    if text is None:
        return ()
    names = {n.strip().lower() for n in text.split(",") if n.strip()}
    if "all" in names:
        return METRICS
    unknown = sorted(names - set(METRICS))
    if unknown or not names:
        what = f"unknown metric(s) {', '.join(map(repr, unknown))}" if unknown else "no metric"
        raise BCEInputError(f"--metrics: {what}; valid: {', '.join(METRICS)}, or all")
    return tuple(m for m in METRICS if m in names)


def check_bins(bins: int) -> int:
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) \
            or not 1 <= bins <= MAX_BINS:
        raise BCEInputError(f"--bins must be a whole number from 1 to {MAX_BINS}, got {bins}")
    return int(bins)


class Layout:
    """Where each sum lies in one class's state row, for ``bins`` calibration bins:
    the ranking histogram interleaved (``2k``: positives of bin k, ``2k + 1``:
    negatives), then 4 sums per calibration bin (``cal + 4j + CAL_N`` .. ``CAL_WY``),
    then the Brier sum, the count, the NaN count, the odd count (bce_cli.stats)."""

    CAL_N, CAL_W, CAL_WP, CAL_WY = range(4)

    def __init__(self, bins: int):
        self.bins = bins
        self.cal = 2 * RANK_BINS
        self.brier = self.cal + 4 * bins
        self.count = self.brier + 1
        self.nans = self.count + 1
        self.odd = self.nans + 1
        self.width = self.odd + 1

    def ranks(self, state):
        """(positives, negatives) per ranking bin: views ``(M, RANK_BINS)``."""
        return state[:, 0:self.cal:2], state[:, 1:self.cal:2]

    def calibration(self, state, which: int):
        """One of the four sums (CAL_N ..) per calibration bin: ``(M, bins)``."""
        return state[:, self.cal + which:self.brier:4]


def calibration_edges(bins: int) -> np.ndarray:
    """scikit-learn's ``calibration_curve`` edges, ``linspace(0, 1, bins + 1)``, which
    the kernel computes as ``k * (1 / bins)`` with the last one 1.0: checked here."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    computed = np.arange(bins + 1) * (1.0 / bins)
    computed[-1] = 1.0
    if not np.array_equal(edges, computed):  # another NumPy's linspace: not seen so far
        raise AssertionError("np.linspace's edges are not k * (1 / bins)")
    return edges


def rank_edges() -> np.ndarray:
    """The lower edge of each ranking bin (a logit): -inf, then the edges of the
    coarse, fine and coarse runs (bce_cli.stats), LOGIT_MAX last."""
    return np.concatenate([[-np.inf],
                           -LOGIT_MAX + np.arange(COARSE_BINS) / COARSE,
                           -LOGIT_CORE + np.arange(FINE_BINS) / FINE,
                           LOGIT_CORE + np.arange(COARSE_BINS) / COARSE,
                           [LOGIT_MAX]])


class MetricsAccumulator:
    """The metrics' mergeable state ``(C, width)`` (see the module's docstring).

    >>> m = MetricsAccumulator(1, bins=2)
    >>> _ = m.update(np.array([[-1.0], [2.0]]), np.array([[0.0], [1.0]]))
    >>> r = m.compute(("auroc", "brier"))["classes"][0]
    >>> r["auroc"], r["auroc_err"], round(r["brier"], 6)
    (1.0, 0.0, 0.043269)
    """

    def __init__(self, n_classes: int, bins: int = DEFAULT_BINS):
        self.n_classes = int(n_classes)
        self.bins = check_bins(bins)
        self.layout = Layout(self.bins)
        need = self.n_classes * self.layout.width * 8
        if need > MAX_STATE_BYTES:
            raise BCEInputError(f"--metrics keeps {self.layout.width * 8 / 1e3:.0f} KB per "
                                f"class: {self.n_classes} classes would need "
                                f"{need / 2**30:.1f} GiB (twice that while a batch is added)",
                                hint="evaluate the metrics on fewer classes at a time "
                                "(--logits/--targets)")
        self.edges = calibration_edges(self.bins)
        self.state = np.zeros((self.n_classes, self.layout.width))
        # The tier, chosen at the first batch for the whole job (``job_elements``, when
        # known) and kept, also by spawned accumulators in other processes (as
        # bce_cli._tiers.JobTier does for the loss): the last bits of a result must
        # not depend on where its batches ran.
        self.job_elements: int | None = None
        self.tier: str | None = None

    def spawn(self) -> MetricsAccumulator:
        new = MetricsAccumulator(self.n_classes, self.bins)
        new.job_elements, new.tier = self.job_elements, self.tier
        return new

    def reset(self) -> MetricsAccumulator:
        self.state = np.zeros_like(self.state)
        return self

    def merge(self, *others: MetricsAccumulator) -> MetricsAccumulator:
        for other in others:
            self.add_state(other.state)
        return self

    def add_state(self, state) -> MetricsAccumulator:
        state = np.asarray(state, dtype=np.float64)
        if state.shape != self.state.shape:
            raise BCEInputError(f"a metrics state of shape {state.shape} does not add to one "
                                f"of shape {self.state.shape}")
        self.state += state
        return self

    def update(self, x, y, wvec=None, wfull=None, *, ignore=None,
               nan_policy: str = "error") -> MetricsAccumulator:
        """Add a batch ``(n, C)`` or ``(n, C, ...)`` of valid elements (the loss pass has
        checked them); ``wvec`` per-class weights, ``wfull`` per-element weights
        broadcastable to the batch.  Each class's batch sums are made apart, from
        zeros, then added to its state (so that per-batch states add up the same
        in any process: a Dask task's batch state is a fresh accumulator's)."""
        x3, y3, w3 = self._arrays(x, y, wfull)
        wv = (np.ones(self.n_classes) if wvec is None
              else np.ascontiguousarray(np.broadcast_to(np.asarray(wvec, dtype=np.float64),
                                                        (self.n_classes,))))
        mode = NAN_POLICIES[nan_policy]
        if self._pick(x3, y3) == "compiled":
            from ._launch import run_metrics

            run_metrics(x3, y3, w3, wv, ignore, mode, self.edges, self.state)
        else:
            _numpy_state(x3, y3, w3, wv, ignore, mode, self.edges, self.state, self.layout)
        return self

    def prepare(self, x, y) -> None:
        """Choose the job's tier at its first batch and, if compiled, load the kernel
        before the loss's pass (where it had to be compiled, the loss's tier then sees
        numba started)."""
        if self.tier is None:
            self._pick(*self._arrays(x, y, None)[:2])

    @staticmethod
    def _arrays(x, y, wfull):
        from ._dispatch import as_logits, as_targets

        x = np.asarray(x)
        y = np.asarray(y)
        if x.ndim == 1:
            x, y = x[:, None], y.reshape(-1, 1)
        x = as_logits(x)
        return _canonical(x, as_targets(y, x.dtype), wfull)

    def _pick(self, x3, y3) -> str:
        """The job's tier, chosen at its first batch; the kernel loaded then."""
        if self.tier is None:
            from ._launch import metrics_signature

            self.tier = choose_tier(x3.size, metrics_form(x3.dtype), self.job_elements,
                                    metrics_signature(x3.dtype, y3.dtype))
            if self.tier == "compiled" and x3.size:
                from ._launch import metrics_entry

                metrics_entry(x3.dtype, y3.dtype)
        return self.tier

    def compute(self, metrics=METRICS) -> dict:
        """``{"classes": [per-class dict], "overall": dict}`` of the requested metrics.

        Runs of classes, and the overall row, on the thread pool (NumPy releases the
        GIL; each row's figures are computed on their own, so the same bits whatever
        the split): the histograms' passes take 0.1 s for 25 classes on one thread."""
        rows = [self.state.sum(axis=0, keepdims=True)]  # the overall row first
        step = max(1, -(-self.n_classes // _tiers.threads()))
        rows += [self.state[c:c + step] for c in range(0, self.n_classes, step)]
        parts = list(_tiers.pool().map(
            lambda part: _compute(part, self.layout, self.edges, metrics), rows))
        return {"classes": [r for part in parts[1:] for r in part], "overall": parts[0][0]}


# The NumPy tier's rate here (elements per second, 2 threads: several passes with
# bincount per class), far below the kernel's: the compiled tier pays from SMALL
# elements with the kernel cached as native objects (a millisecond to load), 4e7
# without (numba's start and a compile: bce_cli._tiers' fixed costs).
NUMPY_RATE = 20e6
COMPILED_RATE = 300e6


def choose_tier(n_elements: int, form, job_elements: int | None = None,
                sig: str | None = None) -> str:
    """"numpy" or "compiled" for the metrics of a job whose batches have signature
    ``sig`` (``bce_cli._launch.metrics_signature``; None: the common ones): as
    ``bce_cli._tiers.choose`` decides for the loss, with the metrics' own rates."""
    import sys

    tier = _tiers.requested()
    if tier != "auto":
        return tier
    launch = sys.modules.get("bce_cli._launch")
    if launch is not None and launch.is_ready(form):
        return "compiled"
    if n_elements <= _tiers.SMALL and not job_elements:
        return "numpy"
    work = max(n_elements, job_elements or 0)
    saved = work / NUMPY_RATE - work / COMPILED_RATE
    return "compiled" if saved > _tiers.fixed_cost(form, sig) else "numpy"


def metrics_form(dtype):
    from ._forms import Form

    return Form("metrics", 0, 32 if np.dtype(dtype) == np.float32 else 64)


def _canonical(x, y, wfull):
    """``(A, C, B)`` C-contiguous views of x, y (a column-major ``(n, C)`` table as
    ``(1, C, n)``: no copy) and the per-element weights as float64 of that shape
    (empty when there are none)."""
    if x.ndim == 2 and x.flags.f_contiguous and not x.flags.c_contiguous:
        x3 = x.T[None]
        y3 = np.ascontiguousarray(y.T)[None]
        w3 = None if wfull is None else np.broadcast_to(wfull, x.shape).T[None]
    else:
        n, c = x.shape[:2]
        x3 = np.ascontiguousarray(x).reshape(n, c, -1)
        y3 = np.ascontiguousarray(y).reshape(n, c, -1)
        w3 = None if wfull is None else np.broadcast_to(wfull, x.shape).reshape(n, c, -1)
    w3 = (np.zeros((0, 0, 0)) if w3 is None
          else np.ascontiguousarray(w3, dtype=np.float64))
    return x3, y3, w3


def sigmoid(x):
    """1 / (1 + exp(-x)) without overflow: exp(-|x|) once, as the kernel computes it."""
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0, e) / (1.0 + e)


def rank_bin(x) -> np.ndarray:
    """The ranking bin of each logit (float64 array), as the kernel computes it."""
    k = np.zeros(x.shape, dtype=np.intp)
    with np.errstate(invalid="ignore"):
        for lo, hi, per_unit, start in ((-LOGIT_MAX, -LOGIT_CORE, COARSE, 1),
                                        (-LOGIT_CORE, LOGIT_CORE, FINE, FINE_START),
                                        (LOGIT_CORE, LOGIT_MAX, COARSE, HIGH_START)):
            inside = (x >= lo) & (x < hi)
            xi = x[inside]
            j = np.floor((xi - lo) * per_unit)
            j -= (lo + j / per_unit) > xi  # x - lo rounded up onto an edge
            k[inside] = start + j.astype(np.intp)
        k[x >= LOGIT_MAX] = RANK_BINS - 1
    return k


def calibration_bin(p, edges) -> np.ndarray:
    """(low, high] bins as scikit-learn's calibration_curve (searchsorted, left)."""
    return np.searchsorted(edges[1:-1], p)


def _seq_sum(v) -> float:
    """A sequential float64 sum (a class's elements in row order)."""
    return float(np.bincount(np.zeros(v.size, dtype=np.intp), weights=v, minlength=1)[0])


def _numpy_state(x3, y3, w3, wv, ignore, mode, edges, state, lay: Layout) -> None:
    """Add a batch into ``state``, a class at a time: its row from zeros, then added."""
    bins = lay.bins
    row = np.empty(lay.width)
    for c in range(x3.shape[1]):
        xc = x3[:, c, :].reshape(-1).astype(np.float64)
        yc = y3[:, c, :].reshape(-1).astype(np.float64)
        nan = np.isnan(xc) | np.isnan(yc)
        keep = ~nan
        if ignore is not None:
            ignored = yc == ignore
            keep &= ~ignored
            nan &= ~ignored
        row[lay.nans] = 0.0 if mode == NAN_OMIT else float(np.count_nonzero(nan))
        if not keep.all():
            xc, yc = xc[keep], yc[keep]
        w = (np.full(xc.size, wv[c]) if w3.size == 0
             else wv[c] * (w3[:, c, :].reshape(-1)[keep] if not keep.all()
                           else w3[:, c, :].reshape(-1)))
        k = rank_bin(xc)
        wy = w * yc
        row[0:lay.cal:2] = np.bincount(k, weights=wy, minlength=RANK_BINS)
        row[1:lay.cal:2] = np.bincount(k, weights=w * (1.0 - yc), minlength=RANK_BINS)
        p = sigmoid(xc)
        j = calibration_bin(p, edges)
        for which, v in ((lay.CAL_N, None), (lay.CAL_W, w), (lay.CAL_WP, w * p),
                         (lay.CAL_WY, wy)):
            row[lay.cal + which:lay.brier:4] = np.bincount(j, weights=v, minlength=bins)
        d = p - yc
        row[lay.brier] = _seq_sum(w * d * d)
        row[lay.count] = float(xc.size)
        row[lay.odd] = float(np.count_nonzero((w != 1.0) | ((yc != 0.0) & (yc != 1.0))))
        state[c] += row


# ------------------------------------------------------------------------- compute
def _ratio(a, b):
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(b != 0, a / np.where(b != 0, b, 1.0), np.nan)


def _compute(state, lay: Layout, edges, metrics) -> list[dict]:
    """The requested metrics of each row of ``state`` (NaN where undefined: no
    positives or no negatives, no elements, a NaN element)."""
    pos, neg = lay.ranks(state)
    n_pos, n_neg = pos.sum(axis=1), neg.sum(axis=1)
    bad = state[:, lay.nans] > 0
    cols: dict[str, np.ndarray] = {}
    if "brier" in metrics:
        cols["brier"] = _ratio(state[:, lay.brier], state[:, lay.count])
    if "auroc" in metrics:
        below = np.cumsum(neg, axis=1) - neg  # negatives in lower bins
        tied = (pos * neg).sum(axis=1)
        total = n_pos * n_neg
        cols["auroc"] = _ratio((pos * below).sum(axis=1) + 0.5 * tied, total)
        cols["auroc_err"] = _ratio(0.5 * tied, total)
    if "average_precision" in metrics:
        ap, err = _average_precision(pos, neg, n_pos, state[:, lay.odd] == 0)
        cols["average_precision"], cols["average_precision_err"] = ap, err
    if "best_threshold" in metrics:
        cols.update(_best_threshold(pos, neg, n_pos))
    rows = [{} for _ in range(state.shape[0])]
    from .report import finite_values, loss_values

    for key, v in cols.items():
        v = np.where(bad, np.nan, v)  # a logit threshold may be infinite, as a loss
        values = loss_values(v) if key == "best_threshold" else finite_values(v)
        for r, value in zip(rows, values, strict=True):
            r[key] = value
    if "ece" in metrics:
        _add_ece(rows, state, lay, edges, bad)
    return rows


def _average_precision(pos, neg, n_pos, unit):
    """Average precision as scikit-learn defines it (each positive's precision at its
    score, weighted by its share of the positives), from the histogram, and a bound
    on its error.

    Thresholds run down the bins: T, F are the positives and negatives of the higher
    bins, Pb, Nb the bin's.  Within a bin the order of the elements is unknown, so a
    bin's share lies between two ends, the estimate is the middle and the bound half
    the width, summed over the bins.  The high end, Pb (T+Pb)/(T+F+Pb), is every
    positive before every negative, tied (scikit-learn gives tied scores the
    precision at the end of the tie).  The low end, every negative first: with unit
    weights and 0/1 targets (``unit``) the positives then follow one by one, sum_k
    (T+k)/(T+F+Nb+k), so a bin of one positive and no negative is exact; else, for
    any weights, Pb T/(T+F+Nb) (a positive of vanishing weight after all of them).
    """
    p = pos[:, ::-1]
    n = neg[:, ::-1]
    t = np.cumsum(p, axis=1) - p
    f = np.cumsum(n, axis=1) - n
    has = p > 0  # a bin without positives adds 0 to both ends: only the others computed
    ph, th, fh, nh = p[has], t[has], f[has], n[has]
    with np.errstate(invalid="ignore", divide="ignore"):
        hi = ph * (th + ph) / (th + fh + ph)
        den = th + fh + nh
        lo = np.where(den > 0, ph * th / np.where(den > 0, den, 1.0), ph)
    exact = np.broadcast_to(unit[:, None], has.shape)[has]
    if exact.any():
        lo[exact] = _run_precision(th[exact], fh[exact] + nh[exact], ph[exact])
    lo = np.minimum(lo, hi)  # rounding
    mid = np.zeros(p.shape)
    half = np.zeros(p.shape)
    mid[has] = 0.5 * (lo + hi)
    half[has] = 0.5 * (hi - lo)
    ap = _ratio(mid.sum(axis=1), n_pos)
    err = _ratio(half.sum(axis=1), n_pos)
    # no rounding noise on a bound that is 0: both ends are then the same numbers
    return ap, np.where(err < 1e-15, 0.0, err)


RUN_EXACT = 64  # runs of up to this many positives are summed term by term


def _run_precision(t, f, m):
    """sum_{k=1..m} (t+k)/(t+f+k) = m - f * (psi(t+f+m+1) - psi(t+f+1)) for whole m:
    term by term up to RUN_EXACT, else by the digamma function."""
    a = t + f
    harmonic = np.empty_like(a)
    small = m <= RUN_EXACT
    big = ~small
    if big.any():
        harmonic[big] = _digamma(a[big] + m[big] + 1.0) - _digamma(a[big] + 1.0)
    if small.any():
        # sorted by m, the terms k = 1..RUN_EXACT go to a shrinking tail (those with
        # m >= k), each element's in the order k = 1, 2, ...
        order = np.argsort(m[small], kind="stable")
        aw, mw = a[small][order], m[small][order]
        s = np.zeros_like(aw)
        for k in range(1, RUN_EXACT + 1):
            start = int(np.searchsorted(mw, k, side="left"))
            if start == mw.size:
                break
            s[start:] += 1.0 / (aw[start:] + k)
        sums = np.empty_like(s)
        sums[order] = s
        harmonic[small] = sums
    return np.where(f > 0, m - f * harmonic, m)


def _digamma(x):
    """psi(x) for x >= 1 in float64 (about 1e-15 relative): the recurrence up to
    x >= 16, then the asymptotic series.

    >>> round(float(_digamma(np.array([1.0]))[0]), 15)  # -Euler's gamma
    -0.577215664901533
    """
    x = np.asarray(x, dtype=np.float64).copy()
    acc = np.zeros_like(x)
    below = np.flatnonzero(x < 16.0)  # the recurrence on those only
    if below.size:
        xs, accs = x[below], acc[below]
        for _ in range(16):
            low = xs < 16.0
            if not low.any():
                break
            accs -= np.where(low, 1.0 / xs, 0.0)
            xs += low
        x[below], acc[below] = xs, accs
    r = 1.0 / (x * x)
    series = r * (1.0 / 12 - r * (1.0 / 120 - r * (1.0 / 252 - r * (1.0 / 240 - r / 132))))
    return acc + np.log(x) - 0.5 / x - series


def _best_threshold(pos, neg, n_pos) -> dict:
    """The lower edge of the non-empty bin that maximises F1 when every logit at or
    above it is called positive (ties: the highest threshold), and its precision,
    recall and F1."""
    p = pos[:, ::-1]
    n = neg[:, ::-1]
    tp = np.cumsum(p, axis=1)
    fp = np.cumsum(n, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where((p + n) > 0, 2 * tp / (tp + fp + n_pos[:, None]), -1.0)
    best = np.argmax(f1, axis=1)
    r = np.arange(pos.shape[0])
    tp_b, fp_b = tp[r, best], fp[r, best]
    threshold = rank_edges()[::-1][best]
    none = ~(n_pos > 0)
    nan = np.where(none, np.nan, 1.0)
    with np.errstate(over="ignore"):
        prob = sigmoid(threshold)
    return {"best_threshold": np.where(none, np.nan, threshold),
            "best_threshold_probability": prob * nan,
            "best_threshold_precision": _ratio(tp_b, tp_b + fp_b) * nan,
            "best_threshold_recall": _ratio(tp_b, n_pos) * nan,
            "best_threshold_f1": f1[r, best] * nan}


def _add_ece(rows, state, lay: Layout, edges, bad) -> None:
    """ECE = sum_b W_b |mean p_b - mean y_b| / W (W: weights), and its table."""
    n, w, wp, wy = (lay.calibration(state, i) for i in range(4))
    ece = _ratio(np.abs(wp - wy).sum(axis=1), w.sum(axis=1))
    from .report import finite_values

    ece = finite_values(np.where(bad, np.nan, ece))
    mean_p, rate = _ratio(wp, w), _ratio(wy, w)
    lows, highs = edges[:-1].tolist(), edges[1:].tolist()
    for i, row in enumerate(rows):
        row["ece"] = ece[i]
        if bad[i]:
            row["reliability"] = None
            continue
        cells = zip(lows, highs, n[i].tolist(), w[i].tolist(), finite_values(mean_p[i]),
                    finite_values(rate[i]), strict=True)
        row["reliability"] = [{"low": lo, "high": hi, "count": int(c), "weight": wt,
                               "mean_predicted": mp, "positive_rate": pr}
                              for lo, hi, c, wt, mp, pr in cells]
