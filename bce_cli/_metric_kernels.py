"""The metrics' compiled kernel: one pass over a batch adding each element into its
class's ranking histogram, calibration bins and Brier sum (``bce_cli.metrics``
describes the state; ``bce_cli.stats`` its constants).  Importing this module
imports numba.

A task is a run of classes; each class's elements are added in row order by one
task, in blocks of BLOCK elements with two loops:

1. ``block_bins`` (branch-free, so LLVM vectorises it): each element's ranking bin,
   calibration bin, probability ``p = sigmoid(x)`` (``_fastmath.exp_neg``: libm's
   exp, a call per element, cost more than all the rest), weight and flags.
2. ``block_scatter`` (scalar): the additions into the histograms (one per element
   into the ranking histogram when the block's targets are 0/1 and its weights 1).
   The calibration sums and the Brier sum run in LANES interleaved copies, element
   i of a block into copy i % LANES, so that a run of elements in one bin (a
   confident model's) does not wait on each addition in turn; the copies are added
   in order at the end.

A class's sums are the same on any number of threads.  No fastmath flags: the
rounding is NumPy's (the NumPy tier differs from this one only through exp, in
the last bits).  One form per float width (``metrics_hist_f32`` / ``_f64``).
"""

from __future__ import annotations

import numba
import numpy as np

from ._fastmath import exp_neg
from ._jit import form_kernel
from .stats import (
    COARSE,
    FINE,
    FINE_START,
    HIGH_START,
    LOGIT_CORE,
    LOGIT_MAX,
    NAN_OMIT,
    RANK_BINS,
)

BLOCK = 512
LANES = 4
_FLAGS = frozenset()
_inline = numba.njit(inline="always", error_model="numpy")
_plain = numba.njit(error_model="numpy", nogil=True, no_cpython_wrapper=True,
                    no_cfunc_wrapper=True)


@_inline
def _segment(x, lo, per_unit, start):
    """The bin of ``x`` in a run of bins of ``1/per_unit`` from ``lo`` numbered from
    ``start`` (``x - lo`` may round up onto an edge: then the bin below is x's)."""
    k = np.floor((x - lo) * per_unit)
    k -= 1.0 if lo + k * (1.0 / per_unit) > x else 0.0
    return start + k


@_inline
def rank_bin(x):
    """The ranking bin of a logit (bce_cli.stats: the metrics' state), branch-free;
    NaN goes to bin 0 (the caller gives it no weight)."""
    xc = min(max(x, -LOGIT_MAX - 1.0), LOGIT_MAX + 1.0)
    k = _segment(xc, -LOGIT_CORE, FINE, FINE_START)
    k = _segment(xc, -LOGIT_MAX, COARSE, 1) if xc < -LOGIT_CORE else k
    k = _segment(xc, LOGIT_CORE, COARSE, HIGH_START) if xc >= LOGIT_CORE else k
    k = 0.0 if xc < -LOGIT_MAX else k
    k = RANK_BINS - 1.0 if xc >= LOGIT_MAX else k
    return int(k) if x == x else 0


@_plain
def _flags(xs, ys, wf, off, use_wf, wc, ignore, has_ignore, nan_mode, wb, yb, ob):
    n = xs.size
    nans = 0
    count = 0
    odd = 0
    for i in range(n):
        xv = np.float64(xs[i])
        yv = np.float64(ys[i])
        ignored = has_ignore and yv == ignore
        nan = (xv != xv) | (yv != yv)
        skip = ignored | nan
        nans += 1 if nan and not ignored and nan_mode != NAN_OMIT else 0
        ob[i] = 0 if skip else 1
        count += 0 if skip else 1
        w = wc * wf[off + i] if use_wf else wc
        wb[i] = 0.0 if skip else w
        yb[i] = 0.0 if skip else yv
        odd += 0 if skip or (w == 1.0 and (yv == 0.0 or yv == 1.0)) else 1
    return nans, count, odd


@_plain
def _probabilities(xs, wb, yb, ob, pb, bt):
    for i in range(xs.size):
        xv = np.float64(xs[i])
        e = exp_neg(abs(xv))
        p = (1.0 if xv >= 0 else e) / (1.0 + e)
        p = 0.0 if ob[i] == 0 else p
        pb[i] = p
        d = p - yb[i]
        bt[i] = wb[i] * d * d


@_plain
def _calibration_bins(n, pb, edges, jb):
    """(low, high] bins of p, as scikit-learn's calibration_curve: p * n_cal rounded,
    then one step down or up where that crossed an edge; branch-free (random p
    would mispredict every other branch: 8 ns an element)."""
    n_cal = edges.size - 1
    for i in range(n):
        p = pb[i]
        j = min(int(p * n_cal), n_cal - 1)
        j -= np.int64(p <= edges[j]) * np.int64(j > 0)
        j += np.int64(p > edges[j + 1]) * np.int64(j < n_cal - 1)
        jb[i] = j


@_plain
def _rank_bins(xs, ob, kb):
    for i in range(xs.size):
        kb[i] = 0 if ob[i] == 0 else rank_bin(np.float64(xs[i]))


@_plain
def block_bins(xf, yf, wf, off, n, use_wf, wc, ignore, has_ignore, nan_mode, edges, kb, jb,
               pb, wb, yb, ob, bt):
    """Per element ``off + i`` (i < n) of the flat arrays: ranking bin ``kb``,
    calibration bin ``jb``, probability ``pb``, weight ``wb``, target ``yb`` (0 for a
    skipped element), ``ob`` 1 when it counts, ``bt`` its Brier term w*(p - y)^2.
    Returns (NaN count (--nan-policy propagate), count, odd count (weight not 1 or
    target not 0/1)), whole numbers.  One simple loop per function, over contiguous
    memory (flat arrays and an offset): each vectorises, where the same loops in
    one function did not (3x slower: LLVM then stopped inlining exp_neg)."""
    xs = xf[off:off + n]
    r = _flags(xs, yf[off:off + n], wf, off, use_wf, wc, ignore, has_ignore, nan_mode, wb, yb,
               ob)
    _probabilities(xs, wb, yb, ob, pb, bt)
    _calibration_bins(n, pb, edges, jb)
    _rank_bins(xs, ob, kb)
    return r


@_plain
def block_scatter(m, hard, kb, jb, pb, wb, yb, ob, bt, hist, cal, brier):
    """Add a block into ``hist`` (interleaved: 2k positives, 2k+1 negatives; with
    ``hard`` 0/1 targets, one addition per element), ``cal`` (LANES copies of the
    calibration bins, 4 sums each) and ``brier`` (LANES sums)."""
    n_cal4 = 4 * ((cal.size // LANES) // 4)
    if hard:
        for i in range(m):
            hist[2 * kb[i] + (1 if yb[i] == 0.0 else 0)] += wb[i]
    else:
        for i in range(m):
            w = wb[i]
            hist[2 * kb[i]] += w * yb[i]
            hist[2 * kb[i] + 1] += w * (1.0 - yb[i])
    for i in range(m):
        w = wb[i]
        c = (i % LANES) * n_cal4 + 4 * jb[i]
        cal[c] += ob[i]
        cal[c + 1] += w
        cal[c + 2] += w * pb[i]
        cal[c + 3] += w * yb[i]
    s0 = brier[0]
    s1 = brier[1]
    s2 = brier[2]
    s3 = brier[3]
    i = 0
    while i + 4 <= m:
        s0 += bt[i]
        s1 += bt[i + 1]
        s2 += bt[i + 2]
        s3 += bt[i + 3]
        i += 4
    while i < m:  # the last block's tail, into the lanes in turn
        s0 += bt[i] if i % LANES == 0 else 0.0
        s1 += bt[i] if i % LANES == 1 else 0.0
        s2 += bt[i] if i % LANES == 2 else 0.0
        s3 += bt[i] if i % LANES == 3 else 0.0
        i += 1
    brier[0] = s0
    brier[1] = s1
    brier[2] = s2
    brier[3] = s3


def _hist_task(x, y, wf, wvec, ignore, has_ignore, nan_mode, edges, out, c0, c1):
    b_count = x.shape[2]
    c_count = x.shape[1]
    n_cal = edges.size - 1
    use_wf = wf.size > 0
    xf = x.reshape(x.size)
    yf = y.reshape(y.size)
    wflat = wf.reshape(wf.size)
    kb = np.empty(BLOCK, dtype=np.int64)
    jb = np.empty(BLOCK, dtype=np.int64)
    ob = np.empty(BLOCK, dtype=np.int64)
    pb = np.empty(BLOCK, dtype=np.float64)
    wb = np.empty(BLOCK, dtype=np.float64)
    yb = np.empty(BLOCK, dtype=np.float64)
    bt = np.empty(BLOCK, dtype=np.float64)
    cal = np.empty(LANES * 4 * n_cal, dtype=np.float64)
    brier = np.empty(LANES, dtype=np.float64)
    for c in range(c0, c1):
        o = out[c]
        o[:] = 0.0  # ``out`` may be a reused buffer: each task clears its classes' rows
        hist = o[:2 * RANK_BINS]
        cal[:] = 0.0
        brier[:] = 0.0
        nans = 0
        count = 0
        odd = 0
        wc = wvec[c]
        for a in range(x.shape[0]):
            start = (a * c_count + c) * b_count
            for lo in range(0, b_count, BLOCK):
                m = min(b_count, lo + BLOCK) - lo
                r = block_bins(xf, yf, wflat, start + lo, m, use_wf, wc, ignore, has_ignore,
                               nan_mode, edges, kb, jb, pb, wb, yb, ob, bt)
                nans += r[0]
                count += r[1]
                odd += r[2]
                block_scatter(m, r[2] == 0, kb, jb, pb, wb, yb, ob, bt, hist, cal, brier)
        base = 2 * RANK_BINS
        for lane in range(LANES):
            for i in range(4 * n_cal):
                o[base + i] += cal[lane * 4 * n_cal + i]
        tail = base + 4 * n_cal
        for lane in range(LANES):
            o[tail] += brier[lane]
        o[tail + 1] = count
        o[tail + 2] = nans
        o[tail + 3] = odd


_ENTRIES: dict = {}


def entry(form):
    """The compiled entry point of a metrics form (built on first use)."""
    fn = _ENTRIES.get(form)
    if fn is None:
        fn = _ENTRIES[form] = form_kernel(form.name, parallel=False, flags=_FLAGS)(_hist_task)
    return fn


def is_compiled(form) -> bool:
    fn = _ENTRIES.get(form)
    return fn is not None and bool(fn.overloads)


def any_compiled() -> bool:
    return any(bool(fn.overloads) for fn in _ENTRIES.values())


def _read_only(a):
    if not a.flags.writeable:
        return a
    v = a.view()
    v.flags.writeable = False
    return v


def run(x3, y3, w3, wvec, ignore, nan_mode, edges, out, *, workers=None) -> None:
    """Fill ``out`` (C, width; its contents are overwritten) from ``(A, C, B)``
    arrays: runs of classes on the thread pool (``bce_cli._tiers``)."""
    from . import _tiers
    from .metrics import metrics_form

    fn = entry(metrics_form(x3.dtype))
    args = tuple(_read_only(np.asarray(a)) for a in (x3, y3, w3, wvec))
    args += (0.0 if ignore is None else float(ignore), ignore is not None, int(nan_mode),
             _read_only(edges), out)
    n = x3.shape[1]
    workers = workers or _tiers.threads()
    if workers <= 1 or n == 1:
        fn(*args, 0, n)
        return
    step = max(1, -(-n // (4 * workers)))
    list(_tiers.pool().map(lambda c0: fn(*args, c0, min(n, c0 + step)), range(0, n, step)))


def warmup_form(form) -> None:
    """Compile (or load) a form for the argument types ``bce_cli.metrics`` passes:
    bool targets or targets of the logits' type, with or without per-element weights."""
    from .metrics import Layout, calibration_edges

    dtype = np.float32 if form.bits == 32 else np.float64
    x = np.zeros((4, 2, 1), dtype=dtype)
    for y in (np.zeros(x.shape, dtype=np.uint8), np.zeros(x.shape, dtype=dtype)):
        for w in (np.zeros((0, 0, 0)), np.ones(x.shape)):
            out = np.zeros((2, Layout(15).width))
            run(x, y, w, np.ones(2), None, 0, calibration_edges(15), out, workers=1)
