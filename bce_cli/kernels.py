"""Numba kernels: per-element BCE-with-logits and per-class float64 partial sums.

Pure array functions (no I/O, no printing).  Public wrappers in
``bce_cli.functional`` and ``bce_cli.accumulator`` check and normalise inputs
and call these.  Two loop shapes cover every layout (classes on one axis):

* ``rows_kernel``:   ``x`` of shape ``(N, C)``, C-contiguous, ``C > 1``;
                     the inner loop runs along the classes.
* ``planes_kernel``: ``x`` of shape ``(A, C, B)``, C-contiguous; the inner loop
                     runs along ``B`` (1-D data is ``(1, 1, N)``, segmentation
                     masks ``[B, C, H, W]`` are ``(B, C, H*W)``).

Work is split in fixed-size chunks whose float64 partials are returned and
added in order by the caller, so results never depend on the thread count.
"""

from __future__ import annotations

import numpy as np
from numba import prange, types
from numba.extending import overload

from ._fastmath import log1p_exp_neg, log1p_exp_neg_f32
from ._jit import ELEMENT_FLAGS, SUM_FLAGS, kernel, scalar

# Rows of the per-class statistics array (K, C).
LOSS, COUNT, POS, NEG, CORRECT = range(5)
N_STATS = 5
STAT_NAMES = ("loss_sum", "count", "n_pos", "n_neg", "n_correct")

# Elements per chunk: a chunk's partial sums are one float64 row per class.
CHUNK = 1 << 15

NAN_ERROR, NAN_OMIT, NAN_PROPAGATE = 0, 1, 2


def softplus_core(a, like):
    """log1p(exp(-a)) at the precision that ``like``'s type needs (typed at compile time)."""
    raise NotImplementedError("only callable from compiled code")


@overload(softplus_core, jit_options={"fastmath": set(ELEMENT_FLAGS)})
def _softplus_core(a, like):
    if isinstance(like, types.Float) and like.bitwidth == 32:
        return lambda a, like: log1p_exp_neg_f32(a)
    return lambda a, like: log1p_exp_neg(a)


@scalar()
def element_loss(x_raw, y, w, p):
    """w * (p*y*softplus(-x) + (1-y)*softplus(x)) in float64, for one element.

    softplus(+-x) = max(+-x, 0) + log1p(exp(-|x|)): no overflow, and no
    cancellation for either sign of x.  A term whose coefficient is exactly
    zero contributes exactly zero, so infinite logits give their limits
    (x=+inf, y=1 -> 0) instead of 0*inf = NaN.  NaN propagates.  ``x_raw``
    keeps the input's type: float32 logits take the shorter polynomial
    (relative error 4e-11, so float32 results round correctly and float64
    sums stay within 1e-10), decided at compile time.
    """
    x = np.float64(x_raw)
    t = softplus_core(abs(x), x_raw)
    pos_coef = p * y
    neg_coef = 1.0 - y
    pos_term = pos_coef * (max(-x, 0.0) + t)
    neg_term = neg_coef * (max(x, 0.0) + t)
    pos_term = pos_term if pos_coef != 0.0 else 0.0
    neg_term = neg_term if neg_coef != 0.0 else 0.0
    loss = w * (pos_term + neg_term)
    return loss if w != 0.0 else 0.0


@scalar()
def element_step(x_raw, y, w, p, smooth, ignore, has_ignore, nan_mode):
    """One element: (loss, counts?, is_bad).  ``counts`` is 1.0 when the element
    takes part in sums and counts, 0.0 when it is ignored or omitted."""
    x = np.float64(x_raw)
    ignored = has_ignore and y == ignore
    x_nan = x != x
    y_nan = y != y
    out_of_range = (y < 0.0) or (y > 1.0)
    bad = (not ignored) and (out_of_range or (nan_mode == NAN_ERROR and (x_nan or y_nan)))
    omitted = nan_mode == NAN_OMIT and (x_nan or y_nan)
    counts = 0.0 if (ignored or omitted) else 1.0
    ys = y * (1.0 - smooth) + 0.5 * smooth
    loss = element_loss(x_raw, ys, w, p)
    return loss, counts, bad


@scalar()
def element_fast(x_raw, y, w, p):
    """The common case (no ignore value, NaN is an error, no smoothing):
    ``(loss, is_bad, is_correct)`` with validation fused into the loss pass."""
    loss = element_loss(x_raw, y, w, p)
    x = np.float64(x_raw)
    bad = (y < 0.0) | (y > 1.0) | (x != x) | (y != y)
    correct = 1.0 if (x > 0.0) == (y >= 0.5) else 0.0
    return loss, bad, correct


# ----------------------------------------------------------------- contiguous spans
# Each span function runs simple loops over 1-D contiguous slices, with every
# option decided outside the loops, so that LLVM vectorises them.  They return
# (loss, count, n_pos, n_neg, n_correct, n_bad) for the span.

@scalar(SUM_FLAGS)
def span_fast(x, y, ws, use_ws, w, p, out, write_out):
    s_loss = 0.0
    s_pos = 0.0
    s_cor = 0.0
    n_bad = 0
    n = x.size
    if use_ws and write_out:
        for i in range(n):
            yv = np.float64(y[i])
            loss, bad, cor = element_fast(x[i], yv, w * ws[i], p)
            out[i] = loss
            s_loss += loss
            s_pos += yv
            s_cor += cor
            n_bad += bad
    elif use_ws:
        for i in range(n):
            yv = np.float64(y[i])
            loss, bad, cor = element_fast(x[i], yv, w * ws[i], p)
            s_loss += loss
            s_pos += yv
            s_cor += cor
            n_bad += bad
    elif write_out:
        for i in range(n):
            yv = np.float64(y[i])
            loss, bad, cor = element_fast(x[i], yv, w, p)
            out[i] = loss
            s_loss += loss
            s_pos += yv
            s_cor += cor
            n_bad += bad
    else:
        for i in range(n):
            yv = np.float64(y[i])
            loss, bad, cor = element_fast(x[i], yv, w, p)
            s_loss += loss
            s_pos += yv
            s_cor += cor
            n_bad += bad
    return s_loss, np.float64(n), s_pos, n - s_pos, s_cor, n_bad


@scalar(SUM_FLAGS)
def span_general(x, y, ws, ps, use_ws, use_ps, w, p, smooth, ignore, has_ignore,
                 nan_mode, out, write_out):
    s_loss = 0.0
    s_count = 0.0
    s_pos = 0.0
    s_neg = 0.0
    s_cor = 0.0
    n_bad = 0
    for i in range(x.size):
        xv = np.float64(x[i])
        yv = np.float64(y[i])
        wv = w * ws[i] if use_ws else w
        pv = p * ps[i] if use_ps else p
        loss, counts, bad = element_step(x[i], yv, wv, pv, smooth, ignore, has_ignore,
                                         nan_mode)
        n_bad += bad
        if write_out:
            out[i] = loss if counts != 0.0 else np.nan
        s_loss += loss if counts != 0.0 else 0.0
        s_count += counts
        s_pos += yv * counts
        s_neg += (1.0 - yv) * counts
        s_cor += counts if (xv > 0.0) == (yv >= 0.5) else 0.0
    return s_loss, s_count, s_pos, s_neg, s_cor, n_bad


@scalar(SUM_FLAGS)
def span_stats(x, y, ws, ps, use_ws, use_ps, w, p, smooth, ignore, has_ignore,
               nan_mode, out, write_out):
    if has_ignore or nan_mode != NAN_ERROR or smooth != 0.0 or use_ps:
        return span_general(x, y, ws, ps, use_ws, use_ps, w, p, smooth, ignore,
                            has_ignore, nan_mode, out, write_out)
    return span_fast(x, y, ws, use_ws, w, p, out, write_out)


# ----------------------------------------------------------------------- kernels
@kernel(flags=SUM_FLAGS)
def planes_kernel(x, y, wvec, pvec, wfull, pfull, use_wfull, use_pfull,
                  smooth, ignore, has_ignore, nan_mode, out, write_out):
    """Per-class partials for ``x``/``y`` of shape (A, C, B), C-contiguous.

    A task covers one class and about ``CHUNK`` elements: a block of B when B
    is long, else a block of whole rows of A.  Returns ``(partials, n_bad)``:
    ``partials`` has shape (A-blocks, C, B-blocks, N_STATS) and the caller sums
    it over axes 0 and 2 in a fixed order; ``n_bad[task]`` counts invalid
    elements.  ``out`` (same shape as ``x``) receives per-element losses when
    ``write_out``; elements left out (ignored or omitted) get NaN.
    """
    a_count, c_count, b_count = x.shape
    xf = x.reshape(-1)
    yf = y.reshape(-1)
    wf = wfull.reshape(-1)
    pf = pfull.reshape(-1)
    of = out.reshape(-1)
    if b_count >= CHUNK:
        a_per_task, n_bblocks, b_step = 1, (b_count + CHUNK - 1) // CHUNK, CHUNK
    else:
        a_per_task, n_bblocks, b_step = max(1, CHUNK // max(b_count, 1)), 1, b_count
    n_ablocks = (a_count + a_per_task - 1) // a_per_task
    n_tasks = n_ablocks * c_count * n_bblocks
    partials = np.zeros((n_ablocks, c_count, n_bblocks, N_STATS), dtype=np.float64)
    n_bad = np.zeros(n_tasks, dtype=np.int64)
    for task in prange(n_tasks):
        blk = task % n_bblocks
        ac = task // n_bblocks
        c = ac % c_count
        ablk = ac // c_count
        b_lo = blk * b_step
        b_hi = min(b_count, b_lo + b_step)
        acc = np.zeros(N_STATS, dtype=np.float64)
        bad_count = 0
        for a in range(ablk * a_per_task, min(a_count, (ablk + 1) * a_per_task)):
            lo = (a * c_count + c) * b_count + b_lo
            hi = lo + (b_hi - b_lo)
            s = span_stats(xf[lo:hi], yf[lo:hi], wf[lo:hi] if use_wfull else wf[0:0],
                           pf[lo:hi] if use_pfull else pf[0:0], use_wfull, use_pfull,
                           wvec[c], pvec[c], smooth, ignore, has_ignore, nan_mode,
                           of[lo:hi] if write_out else of[0:0], write_out)
            acc[LOSS] += s[0]
            acc[COUNT] += s[1]
            acc[POS] += s[2]
            acc[NEG] += s[3]
            acc[CORRECT] += s[4]
            bad_count += s[5]
        partials[ablk, c, blk, :] = acc
        n_bad[task] = bad_count
    return partials, n_bad


@scalar(SUM_FLAGS)
def row_fast(x, y, w, p, out, write_out, acc):
    """One row of (N, C) data: per-class sums into ``acc`` (N_STATS, C); returns n_bad."""
    n_bad = 0
    for c in range(x.size):
        yv = np.float64(y[c])
        loss, bad, cor = element_fast(x[c], yv, w[c], p[c])
        if write_out:
            out[c] = loss
        acc[LOSS, c] += loss
        acc[POS, c] += yv
        acc[CORRECT, c] += cor
        n_bad += bad
    return n_bad


@scalar(SUM_FLAGS)
def row_general(x, y, w, p, smooth, ignore, has_ignore, nan_mode, out, write_out, acc):
    n_bad = 0
    for c in range(x.size):
        xv = np.float64(x[c])
        yv = np.float64(y[c])
        loss, counts, bad = element_step(x[c], yv, w[c], p[c], smooth, ignore, has_ignore,
                                         nan_mode)
        n_bad += bad
        if write_out:
            out[c] = loss if counts != 0.0 else np.nan
        acc[LOSS, c] += loss if counts != 0.0 else 0.0
        acc[COUNT, c] += counts
        acc[POS, c] += yv * counts
        acc[NEG, c] += (1.0 - yv) * counts
        acc[CORRECT, c] += counts if (xv > 0.0) == (yv >= 0.5) else 0.0
    return n_bad


@kernel(flags=SUM_FLAGS)
def rows_kernel(x, y, wvec, pvec, wfull, pfull, use_wfull, use_pfull,
                smooth, ignore, has_ignore, nan_mode, out, write_out):
    """Per-class partials for ``x``/``y`` of shape (N, C), C-contiguous, C > 1.

    Chunks are blocks of rows; the inner loop runs along the classes.  Returns
    ``(partials, n_bad)`` with ``partials`` of shape (n_chunks, N_STATS, C);
    see ``planes_kernel`` for the rest.
    """
    n, c_count = x.shape
    general = has_ignore or nan_mode != NAN_ERROR or smooth != 0.0
    rows_per_chunk = max(1, CHUNK // c_count)
    n_chunks = (n + rows_per_chunk - 1) // rows_per_chunk
    partials = np.zeros((n_chunks, N_STATS, c_count), dtype=np.float64)
    n_bad = np.zeros(n_chunks, dtype=np.int64)
    for k in prange(n_chunks):
        acc = np.zeros((N_STATS, c_count), dtype=np.float64)
        w_row = wvec.copy()
        p_row = pvec.copy()
        bad_count = 0
        start = k * rows_per_chunk
        stop = min(n, start + rows_per_chunk)
        for r in range(start, stop):
            if use_wfull:
                for c in range(c_count):
                    w_row[c] = wvec[c] * wfull[r, c]
            if use_pfull:
                for c in range(c_count):
                    p_row[c] = pvec[c] * pfull[r, c]
            o = out[r] if write_out else out.reshape(-1)[0:0]
            if general:
                bad_count += row_general(x[r], y[r], w_row, p_row, smooth, ignore,
                                         has_ignore, nan_mode, o, write_out, acc)
            else:
                bad_count += row_fast(x[r], y[r], w_row, p_row, o, write_out, acc)
        if not general:
            for c in range(c_count):
                acc[COUNT, c] = stop - start
                acc[NEG, c] = (stop - start) - acc[POS, c]
        partials[k] = acc
        n_bad[k] = bad_count
    return partials, n_bad
