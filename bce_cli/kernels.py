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
from numba import prange

from ._fastmath import log1p_exp_neg, log1p_exp_neg_f32
from ._jit import SUM_FLAGS, kernel, scalar

# Rows of the per-class statistics array (K, C).
LOSS, COUNT, POS, NEG, CORRECT = range(5)
N_STATS = 5
STAT_NAMES = ("loss_sum", "count", "n_pos", "n_neg", "n_correct")

# Elements per chunk: a chunk's partial sums are one float64 row per class.
CHUNK = 1 << 15

NAN_ERROR, NAN_OMIT, NAN_PROPAGATE = 0, 1, 2


@scalar()
def element_loss(x, y, w, p, f32):
    """w * (p*y*softplus(-x) + (1-y)*softplus(x)) in float64, for one element.

    softplus(+-x) = max(+-x, 0) + log1p(exp(-|x|)): no overflow, and no
    cancellation for either sign of x.  A term whose coefficient is exactly
    zero contributes exactly zero, so infinite logits give their limits
    (x=+inf, y=1 -> 0) instead of 0*inf = NaN.  NaN propagates.  ``f32``
    selects the shorter polynomial, exact enough for float32 logits
    (relative error 4e-11, so float32 results round correctly and float64
    sums stay within 1e-10).
    """
    a = abs(x)
    t = log1p_exp_neg_f32(a) if f32 else log1p_exp_neg(a)
    pos_coef = p * y
    neg_coef = 1.0 - y
    pos_term = pos_coef * (max(-x, 0.0) + t)
    neg_term = neg_coef * (max(x, 0.0) + t)
    pos_term = pos_term if pos_coef != 0.0 else 0.0
    neg_term = neg_term if neg_coef != 0.0 else 0.0
    loss = w * (pos_term + neg_term)
    return loss if w != 0.0 else 0.0


@scalar()
def element_step(x, y, w, p, smooth, ignore, has_ignore, nan_mode, f32):
    """One element: (loss, counts?, is_bad).  ``counts`` is 1.0 when the element
    takes part in sums and counts, 0.0 when it is ignored or omitted."""
    ignored = has_ignore and y == ignore
    x_nan = x != x
    y_nan = y != y
    out_of_range = (y < 0.0) or (y > 1.0)
    bad = (not ignored) and (out_of_range or (nan_mode == NAN_ERROR and (x_nan or y_nan)))
    omitted = nan_mode == NAN_OMIT and (x_nan or y_nan)
    counts = 0.0 if (ignored or omitted) else 1.0
    ys = y * (1.0 - smooth) + 0.5 * smooth
    loss = element_loss(x, ys, w, p, f32)
    return loss, counts, bad


@kernel(flags=SUM_FLAGS)
def rows_kernel(x, y, wvec, pvec, wfull, pfull, use_wfull, use_pfull,
                smooth, ignore, has_ignore, nan_mode, out, write_out):
    """Per-class partials for ``x``/``y`` of shape (N, C).

    Returns ``(partials, n_bad)``: ``partials[k, s, c]`` is statistic ``s`` of
    class ``c`` over chunk ``k``; ``n_bad[k]`` counts invalid elements in chunk
    ``k``.  ``out`` (same shape as ``x``) receives per-element losses when
    ``write_out``; elements left out (ignored or omitted) get NaN.
    """
    n, c_count = x.shape
    f32 = x.itemsize == 4
    rows_per_chunk = max(1, CHUNK // c_count)
    n_chunks = (n + rows_per_chunk - 1) // rows_per_chunk
    partials = np.zeros((n_chunks, N_STATS, c_count), dtype=np.float64)
    n_bad = np.zeros(n_chunks, dtype=np.int64)
    for k in prange(n_chunks):
        acc = np.zeros((N_STATS, c_count), dtype=np.float64)
        bad_count = 0
        stop = min(n, (k + 1) * rows_per_chunk)
        for r in range(k * rows_per_chunk, stop):
            for c in range(c_count):
                xv = np.float64(x[r, c])
                yv = np.float64(y[r, c])
                w = wfull[r, c] * wvec[c] if use_wfull else wvec[c]
                p = pfull[r, c] * pvec[c] if use_pfull else pvec[c]
                loss, counts, bad = element_step(xv, yv, w, p, smooth, ignore,
                                                 has_ignore, nan_mode, f32)
                bad_count += bad
                if write_out:
                    out[r, c] = loss if counts != 0.0 else np.nan
                acc[LOSS, c] += loss if counts != 0.0 else 0.0
                acc[COUNT, c] += counts
                acc[POS, c] += yv * counts
                acc[NEG, c] += (1.0 - yv) * counts
                acc[CORRECT, c] += counts if (xv > 0.0) == (yv >= 0.5) else 0.0
        partials[k] = acc
        n_bad[k] = bad_count
    return partials, n_bad


@kernel(flags=SUM_FLAGS)
def planes_kernel(x, y, wvec, pvec, wfull, pfull, use_wfull, use_pfull,
                  smooth, ignore, has_ignore, nan_mode, out, write_out):
    """Per-class partials for ``x``/``y`` of shape (A, C, B); see ``rows_kernel``.

    A task covers one class and about ``CHUNK`` elements: a block of B when B
    is long, else a block of whole rows of A.  ``partials`` has shape
    (A-blocks, C, B-blocks, N_STATS); the caller sums it over axes 0 and 2.
    """
    a_count, c_count, b_count = x.shape
    f32 = x.itemsize == 4
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
        w0 = wvec[c]
        p0 = pvec[c]
        s_loss = 0.0
        s_count = 0.0
        s_pos = 0.0
        s_neg = 0.0
        s_correct = 0.0
        bad_count = 0
        for a in range(ablk * a_per_task, min(a_count, (ablk + 1) * a_per_task)):
            for b in range(blk * b_step, min(b_count, (blk + 1) * b_step)):
                xv = np.float64(x[a, c, b])
                yv = np.float64(y[a, c, b])
                w = wfull[a, c, b] * w0 if use_wfull else w0
                p = pfull[a, c, b] * p0 if use_pfull else p0
                loss, counts, bad = element_step(xv, yv, w, p, smooth, ignore,
                                                 has_ignore, nan_mode, f32)
                bad_count += bad
                if write_out:
                    out[a, c, b] = loss if counts != 0.0 else np.nan
                s_loss += loss if counts != 0.0 else 0.0
                s_count += counts
                s_pos += yv * counts
                s_neg += (1.0 - yv) * counts
                s_correct += counts if (xv > 0.0) == (yv >= 0.5) else 0.0
        partials[ablk, c, blk, LOSS] = s_loss
        partials[ablk, c, blk, COUNT] = s_count
        partials[ablk, c, blk, POS] = s_pos
        partials[ablk, c, blk, NEG] = s_neg
        partials[ablk, c, blk, CORRECT] = s_correct
        n_bad[task] = bad_count
    return partials, n_bad
