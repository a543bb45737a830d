"""The metrics' compiled kernel: one pass over a batch adding each element into its
class's ranking histogram, calibration bins and Brier sum (``bce_cli.metrics``
describes the state; ``bce_cli.stats`` its constants).  Importing this module
imports numba.

A task is a run of classes; each class's elements are gathered in row order by
one task into float64 blocks of BLOCK elements (whatever the layout: a row-major
``(n, C)`` batch as well as a column-major one), and each block goes through

1. four simple loops (``_flags``, ``_probabilities``, ``_calibration_bins``,
   ``_rank_bins``, branch-free, one per function so that LLVM vectorises each;
   together in one function they ran 3x slower): each element's weight and
   flags, ``p = sigmoid(x)`` (``_fastmath.exp_neg``: libm's exp, a call per
   element, cost more than all the rest), calibration bin, ranking bin;
2. ``block_scatter`` (scalar): the additions into the histograms.  When the
   block's targets are 0/1 and its weights 1 (a "hard" block), three per element:
   a count into the ranking histogram (one loop), then p into its calibration
   bin's sum and a count into ``tally`` (negatives and positives per calibration
   bin, from which count, sum of w and sum of w*y follow when the class ends;
   another loop: one loop for the three ran 10% slower); else two and four.
   The calibration sums, tallies and the Brier sum run in LANES interleaved
   copies, element i of a block into copy i % LANES, so that a run of elements
   in one bin (a confident model's) does not wait on each addition in turn; the
   copies are added in order at the end.  Indices there (and in the gather) are
   unsigned: numba then emits no check for a negative index, which
   cost 40% of those loops.

A class's sums are the same on any number of threads and for any layout.  No
fastmath flags: each operation rounds as NumPy's (the NumPy tier differs in the
last bits, through exp and the order of the sums).  One form per float width of
the logits (``metrics_hist_f32`` / ``_f64``), each with a signature per target
type (bool or the logits' float type); everything after the gather is float64,
compiled once for all of them.

Its entry point takes pointers, as the loss's forms do (``bce_cli.kernels``), and
allocates nothing (its scratch comes from the caller): its machine code is saved as
native objects and later processes run it without numba (``bce_cli._launch``:
``run_metrics``).
"""

from __future__ import annotations

import numba
import numpy as np
from numba import types

from . import _native
from ._fastmath import exp_neg
from ._forms import METRICS_BLOCK as BLOCK
from ._forms import METRICS_LANES as LANES
from ._forms import N_METRIC_INTS, metrics_scratch_sizes
from ._jit import compile_entry, form_kernel, span, view
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

_FLAGS = frozenset()

_inline = numba.njit(inline="always", error_model="numpy")
_plain = numba.njit(error_model="numpy", nogil=True, no_cpython_wrapper=True,
                    no_cfunc_wrapper=True)
_scratch_sizes = _inline(metrics_scratch_sizes)  # the launcher's own formula


@_inline
def rank_bin(x):
    """The ranking bin of a logit (bce_cli.stats: the metrics' state), branch-free;
    NaN goes to bin 0 (the caller gives it no weight).  One run of bins is chosen
    first (coarse below the core, fine in it, coarse above), then x's bin in it:
    ``floor((x - lo) * per_unit)``, one step down where ``x - lo`` rounded up onto
    an edge."""
    xc = min(max(x, -LOGIT_MAX - 1.0), LOGIT_MAX + 1.0)
    low = xc < -LOGIT_CORE
    high = xc >= LOGIT_CORE
    lo = -LOGIT_MAX if low else (LOGIT_CORE if high else -LOGIT_CORE)
    per_unit = COARSE if low or high else FINE
    width = 1.0 / COARSE if low or high else 1.0 / FINE
    start = 1.0 if low else (HIGH_START if high else FINE_START)
    k = np.floor((xc - lo) * per_unit)
    k -= 1.0 if lo + k * width > xc else 0.0
    k += start
    k = 0.0 if xc < -LOGIT_MAX else k
    k = RANK_BINS - 1.0 if xc >= LOGIT_MAX else k
    return int(k) if x == x else 0


@_plain
def _flags(xs, ys, ws, m, use_wf, wc, ignore, has_ignore, nan_mode, wb, ob):
    """Weights (0 for a skipped element), ``ob`` 1 when an element counts; returns
    (NaN count under --nan-policy propagate, count, odd count: weight not 1 or
    target not 0/1), whole numbers."""
    nans = 0
    count = 0
    odd = 0
    for i in range(m):
        xv = xs[i]
        yv = ys[i]
        ignored = has_ignore and yv == ignore
        nan = (xv != xv) | (yv != yv)
        skip = ignored | nan
        nans += 1 if nan and not ignored and nan_mode != NAN_OMIT else 0
        ob[i] = 0 if skip else 1
        count += 0 if skip else 1
        w = wc * ws[i] if use_wf else wc
        wb[i] = 0.0 if skip else w
        odd += 0 if skip or (w == 1.0 and (yv == 0.0 or yv == 1.0)) else 1
    return nans, count, odd


@_plain
def _probabilities(xs, ys, m, wb, ob, pb, bt):
    """p = sigmoid(x) (0 for a skipped element, whose target becomes 0) and the Brier
    term w*(p - y)^2."""
    for i in range(m):
        xv = xs[i]
        e = exp_neg(abs(xv))
        p = (1.0 if xv >= 0 else e) / (1.0 + e)
        keep = ob[i] != 0
        p = p if keep else 0.0
        y = ys[i] if keep else 0.0
        ys[i] = y
        pb[i] = p
        d = p - y
        bt[i] = wb[i] * d * d


@_plain
def _calibration_bins(m, pb, n_cal, jb):
    """(low, high] bins of p, as scikit-learn's calibration_curve, whose edges are
    NumPy's ``linspace(0, 1, n_cal + 1)``: ``j * (1 / n_cal)``, the last one 1.0
    (``bce_cli.metrics.calibration_edges``, checked there).  p * n_cal rounded, then
    one step down or up where that crossed an edge; branch-free and with the edges
    computed, not looked up, so that the loop vectorises (a lookup and a branch
    made it 3 ns an element, most of the kernel)."""
    step = 1.0 / n_cal
    for i in range(m):
        p = pb[i]
        j = min(int(p * n_cal), n_cal - 1)
        j -= np.int64(p <= j * step) * np.int64(j > 0)
        high = 1.0 if j + 1 == n_cal else (j + 1) * step
        j += np.int64(p > high) * np.int64(j < n_cal - 1)
        jb[i] = j


@_plain
def _rank_bins(xs, m, ob, kb):
    for i in range(m):
        kb[i] = 0 if ob[i] == 0 else rank_bin(xs[i])


@_plain
def block_scatter(m, hard, kb, jb, pb, wb, yb, ob, bt, hist, cal, tally, brier):
    """Add a block into ``hist`` (interleaved: 2k positives, 2k+1 negatives), ``cal``
    (LANES copies of the calibration bins, 4 sums each: count, w, w*p, w*y) and
    ``brier`` (LANES sums).  With ``hard`` (0/1 targets, weights 1), an element is one
    addition into ``hist``, its p into ``cal``'s w*p, and a count into ``tally``
    (LANES copies of a negatives and a positives count per calibration bin, which
    give count, w and w*y when the class ends): three additions instead of five."""
    # Indices as unsigned integers: numba then skips the check for a negative index
    # (Python's wraparound) on each access, which cost 40% of these loops.
    n_cal4 = np.uint64(4 * ((cal.size // LANES) // 4))
    two, four = np.uint64(2), np.uint64(4)
    if hard:
        n_cal2 = n_cal4 // two
        for i in range(m):
            hist[two * np.uint64(kb[i]) + np.uint64(yb[i] == 0.0)] += wb[i]
        for i in range(m):
            lane = np.uint64(i % LANES)
            j = np.uint64(jb[i])
            cal[lane * n_cal4 + four * j + two] += pb[i]
            tally[lane * n_cal2 + two * j + np.uint64(yb[i] != 0.0)] += ob[i]
    else:
        for i in range(m):
            w = wb[i]
            k = two * np.uint64(kb[i])
            hist[k] += w * yb[i]
            hist[k + np.uint64(1)] += w * (1.0 - yb[i])
        for i in range(m):
            w = wb[i]
            c = np.uint64(i % LANES) * n_cal4 + four * np.uint64(jb[i])
            cal[c] += ob[i]
            cal[c + np.uint64(1)] += w
            cal[c + two] += w * pb[i]
            cal[c + np.uint64(3)] += w * yb[i]
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
    while i < m:  # the class's last block: its tail into the lanes in turn
        s0 += bt[i] if i % LANES == 0 else 0.0
        s1 += bt[i] if i % LANES == 1 else 0.0
        s2 += bt[i] if i % LANES == 2 else 0.0
        s3 += bt[i] if i % LANES == 3 else 0.0
        i += 1
    brier[0] = s0
    brier[1] = s1
    brier[2] = s2
    brier[3] = s3


@_plain
def block_add(m, use_wf, wc, ignore, has_ignore, nan_mode, edges, xs, ys, ws, kb, jb, pb, wb, ob,
              bt, hist, cal, tally, brier, counts):
    """One block of ``m`` float64 elements into the class's sums; ``counts``: NaN,
    counted and odd elements so far."""
    r = _flags(xs, ys, ws, m, use_wf, wc, ignore, has_ignore, nan_mode, wb, ob)
    counts[0] += r[0]
    counts[1] += r[1]
    counts[2] += r[2]
    _probabilities(xs, ys, m, wb, ob, pb, bt)
    _calibration_bins(m, pb, edges.size - 1, jb)
    _rank_bins(xs, m, ob, kb)
    block_scatter(m, r[2] == 0, kb, jb, pb, wb, ys, ob, bt, hist, cal, tally, brier)


# Inlined into the entry point (the same flags): as a function of its own, its code
# (the block functions linked in) was optimised and emitted once for itself, then
# again in the entry point's module.
@_inline
def _hist_classes(xf, yf, wflat, a_count, c_count, b_count, wvec, ignore, has_ignore,
                  nan_mode, edges, state, c0, c1, fscratch, iscratch):
    """Classes ``c0 <= c < c1`` of flat ``(A, C, B)`` arrays: each class's elements, in
    row order, gathered (and made float64) into blocks of BLOCK, whatever the layout
    (so the sums do not depend on it either), summed into a row of its own, which is
    then added into the class's row of ``state``: ``state + batch``, as a Dask
    task's batch state is added to the driver's, and in this task's thread, while
    the row is in cache (a separate pass over a (C, width) batch state cost more
    than a tenth of the metrics' time).  Every buffer is cut from the caller's
    ``fscratch`` (float64) and ``iscratch`` (int64)
    (``bce_cli._forms.metrics_scratch_sizes``): nothing is allocated."""
    n_cal = edges.size - 1
    use_wf = wflat.size > 0
    xs = span(fscratch, 0, BLOCK)
    ys = span(fscratch, BLOCK, BLOCK)
    ws = span(fscratch, 2 * BLOCK, BLOCK)
    pb = span(fscratch, 3 * BLOCK, BLOCK)
    wb = span(fscratch, 4 * BLOCK, BLOCK)
    bt = span(fscratch, 5 * BLOCK, BLOCK)
    at = 6 * BLOCK
    cal = span(fscratch, at, LANES * 4 * n_cal)
    at += LANES * 4 * n_cal
    brier = span(fscratch, at, LANES)
    at += LANES
    o = span(fscratch, at, state.shape[1])
    kb = span(iscratch, 0, BLOCK)
    jb = span(iscratch, BLOCK, BLOCK)
    ob = span(iscratch, 2 * BLOCK, BLOCK)
    at = 3 * BLOCK
    tally = span(iscratch, at, LANES * 2 * n_cal)
    at += LANES * 2 * n_cal
    counts = span(iscratch, at, 3)
    for c in range(c0, c1):
        o[:] = 0.0
        hist = span(o, 0, 2 * RANK_BINS)
        cal[:] = 0.0
        tally[:] = 0
        brier[:] = 0.0
        counts[:] = 0
        wc = wvec[c]
        pos = 0
        for a in range(a_count):
            base = (a * c_count + c) * b_count
            b = 0
            while b < b_count:
                run = min(b_count - b, BLOCK - pos)
                src = np.uint64(base + b)  # unsigned: no negative-index checks
                dst = np.uint64(pos)
                for i in range(run):
                    xs[dst + np.uint64(i)] = xf[src + np.uint64(i)]
                    ys[dst + np.uint64(i)] = yf[src + np.uint64(i)]
                if use_wf:
                    for i in range(run):
                        ws[dst + np.uint64(i)] = wflat[src + np.uint64(i)]
                pos += run
                b += run
                if pos == BLOCK:
                    # np.int64: a bare ``pos`` was once typed as the literal 0 here, and
                    # every block function compiled twice
                    block_add(np.int64(pos), use_wf, wc, ignore, has_ignore, nan_mode, edges,
                              xs, ys, ws, kb, jb, pb, wb, ob, bt, hist, cal, tally, brier, counts)
                    pos = 0
        if pos:
            block_add(np.int64(pos), use_wf, wc, ignore, has_ignore, nan_mode, edges, xs, ys,
                      ws, kb, jb, pb, wb, ob, bt, hist, cal, tally, brier, counts)
        base = 2 * RANK_BINS
        for lane in range(LANES):
            for i in range(4 * n_cal):
                o[base + i] += cal[lane * 4 * n_cal + i]
        for lane in range(LANES):  # the hard blocks' counts: count, w (1 each) and w*y
            for j in range(n_cal):
                neg = tally[(lane * n_cal + j) * 2]
                pos = tally[(lane * n_cal + j) * 2 + 1]
                o[base + 4 * j] += neg + pos
                o[base + 4 * j + 1] += neg + pos
                o[base + 4 * j + 3] += pos
        tail = base + 4 * n_cal
        for lane in range(LANES):
            o[tail] += brier[lane]
        o[tail + 1] = counts[1]
        o[tail + 2] = counts[0]
        o[tail + 3] = counts[2]
        row = state[c]
        for i in range(o.size):
            row[i] += o[i]


def _entry_for():
    """The metrics' pointer entry point (a new function each time: ``form_kernel``
    names it after its form): the batch's arrays and its scratch as pointers, its
    integers (``N_METRIC_INTS``: A, C, B, len(wf), len(edges), the state's width,
    has_ignore, nan_mode) and ``floats`` (the ignore value), classes ``c0..c1``."""

    def hist_entry(xp, yp, wfp, wvp, edgesp, statep, fsp, isp, ip, fp, c0, c1):
        ints = view(ip, N_METRIC_INTS)
        a_count, c_count, b_count = ints[0], ints[1], ints[2]
        n = a_count * c_count * b_count
        n_edges, width = ints[4], ints[5]
        n_f, n_i = _scratch_sizes(n_edges - 1, width)
        _hist_classes(view(xp, n), view(yp, n), view(wfp, ints[3]), a_count, c_count,
                      b_count, view(wvp, c_count), fp[0], ints[6] != 0, ints[7],
                      view(edgesp, n_edges), view(statep, (c_count, width)), c0, c1,
                      view(fsp, n_f), view(isp, n_i))

    return hist_entry


def native_signature(sig: str):
    """numba's signature of the entry point for a signature tag (the dtypes of x, y,
    and the float64 weights, ``bce_cli._forms.signature``)."""
    x, y = (types.CPointer(numba.from_dtype(np.dtype(t))) for t in sig.split("-")[:2])
    f64 = types.CPointer(types.float64)
    i64 = types.CPointer(types.int64)
    return types.void(x, y, f64, f64, f64, f64, f64, i64, i64, f64, types.int64, types.int64)


def compile_native(form, sig: str):
    """Compile the metrics' entry point for signature tag ``sig``: ``(symbol, address,
    object code or None)``, as ``bce_cli.kernels.compile_native``."""
    disp = form_kernel(f"{form.name}.{sig}", parallel=False, flags=_FLAGS, wrapper=False,
                       cache=not _native.supported())(_entry_for())
    return compile_entry(disp, native_signature(sig))
