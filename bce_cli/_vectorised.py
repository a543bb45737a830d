"""The NumPy tier: the kernels' statistics in vectorised float64 NumPy, on threads.

Same formula and semantics as ``bce_cli.kernels`` (``element_loss``), with
NumPy's exp and log1p (SIMD, < 1 ulp): nothing to compile or load, so it is
what a fresh process runs (``bce_cli._tiers`` decides).

Arrays of shape ``(A, C, B)`` are cut into blocks of about ``BLOCK`` elements
(whole classes, rows of A, runs of B); each block is computed in per-thread
float64 scratch buffers that stay in cache (fresh temporaries would cost a
page fault per 4 KiB, more than the arithmetic) and gives float64 partials
``(N_STATS, C)``, added in block order: results do not depend on the number
of threads.  A block under the default options takes the fast path (a shorter
one when its targets are all 0 or 1: bool targets, or float labels), whose
products may give 0 * inf = NaN for an infinite logit; a NaN sum sends the
block to the careful path, which applies the exact zero-coefficient rules,
the general options (ignore value, NaN policies) and validation.
"""

from __future__ import annotations

import threading

import numpy as np

from . import _tiers
from ._forms import MOMENTS_ALONG_A, MOMENTS_NONE
from .stats import (
    CORRECT,
    COUNT,
    LOSS,
    N_STATS,
    NAN_ERROR,
    NAN_OMIT,
    NEG,
    POS,
    RNSQ,
    RSQ,
    RSQN,
    SQ,
)

BLOCK = 1 << 16
# Below this many elements the blocks run on the calling thread.
THREADED_MIN = 1 << 18
# Elements per line when summing rows of few classes (see class_sums).
LINE = 256

_local = threading.local()


def _scratch(n: int):
    """Six float64 and two bool buffers of at least ``n`` elements, per thread."""
    bufs = getattr(_local, "bufs", None)
    if bufs is None or bufs[0].size < n:
        bufs = _local.bufs = ([np.empty(n) for _ in range(6)]
                              + [np.empty(n, dtype=bool) for _ in range(2)])
    return bufs


def class_sums(u, dtype=None) -> np.ndarray:
    """Sums of ``u`` of shape (A, C, B) over A and B, in an order that depends on
    the shape only, accumulated in ``dtype`` (None: ``u``'s own, the float64
    losses; :func:`class_counts` sums bytes as uint32).  Rows of few classes are
    summed as lines of ``k`` whole rows (about 256 elements: vectorised adds across
    the line, folded into classes at the end), 2-3x faster than NumPy's axis
    reduction over a short row; else ``einsum`` for float64 (2.2x NumPy's axis
    reduction; BLAS called from two threads at once ran slower than from one)."""
    a_count, c_count, b_count = u.shape
    if a_count == 1:
        return u.reshape(c_count, b_count).sum(axis=1, dtype=dtype)  # contiguous runs: pairwise
    if b_count == 1 and c_count < LINE:
        k = LINE // c_count
        full = a_count - a_count % k
        sums = u[:full].reshape(full // k, k * c_count).sum(axis=0, dtype=dtype)
        sums = sums.reshape(k, c_count).sum(axis=0, dtype=dtype)
        if full < a_count:
            sums += u[full:].reshape(a_count - full, c_count).sum(axis=0, dtype=dtype)
        return sums
    if dtype is not None:
        return u.sum(axis=(0, 2), dtype=dtype)
    return np.einsum("ijk->j", u)


def class_counts(b) -> np.ndarray:
    """Per-class counts of bool ``b`` of shape (A, C, B) (at most 2**32 elements): its
    bytes summed as uint32 by :func:`class_sums` (an axis reduction of bools casts
    each element: 2-3x slower)."""
    return class_sums(b.view(np.uint8), dtype=np.uint32)


def geometry(shape):
    """Blocks of ``(A, C, B)``: (rows of A per block, B per block)."""
    a_count, c_count, b_count = shape
    plane = c_count * b_count
    if plane >= BLOCK:
        return 1, max(1, min(b_count, BLOCK // max(c_count, 1)))
    return max(1, BLOCK // max(plane, 1)), b_count


def class_stats(x, y, wvec, pvec, wfull, pfull, smooth, ignore, mode, out, want_stats=True,
                moments=MOMENTS_NONE, squares=False):
    """``(stats, side)``: statistics ``(N_STATS, C)`` of ``x``/``y`` of shape (A, C, B)
    (``(None, None)`` when an element is invalid) and, with row moments along A
    (``moments``, see ``bce_cli._forms``), each (entry of A, class, block of B)'s
    loss sum and count, an array ``(A, C, blocks, 2)`` (as the compiled tier's;
    ``bce_cli._dispatch`` folds it into rows).  ``squares``: also the sums of
    squared losses (SQ).  ``wvec``/``pvec``: float64 per class; ``wfull``/``pfull``:
    None or arrays of x's shape; ``out``: None or an array of x's shape and dtype
    that receives per-element losses (NaN where left out)."""
    a_count, c_count, b_count = x.shape
    a_step, b_step = geometry(x.shape)
    blocks = [(a, b) for a in range(0, a_count, a_step) for b in range(0, b_count, b_step)]
    side = (np.zeros((a_count, c_count, -(-b_count // b_step), 2))
            if moments == MOMENTS_ALONG_A else None)
    general = ignore is not None or mode != NAN_ERROR
    w3 = wvec[None, :, None]
    p3 = pvec[None, :, None]
    unit = not np.any(wvec != 1.0) and not np.any(pvec != 1.0)

    def one(block):
        a, b = block
        sl = (slice(a, a + a_step), slice(None), slice(b, b + b_step))
        wf = None if wfull is None else wfull[sl]
        pf = None if pfull is None else pfull[sl]
        ob = None if out is None else out[sl]
        rows = (moments, side[a:a + a_step, :, b // b_step] if side is not None else None,
                squares)
        if not general:
            stats = _fast_block(x[sl], y[sl], w3, p3, unit, wf, pf, smooth, ob, want_stats,
                                rows)
            if stats is not None:
                return stats
        return _careful_block(x[sl], y[sl], w3, p3, wf, pf, smooth, ignore, mode, ob, rows)

    n_threads = _tiers.threads()
    if len(blocks) > 1 and x.size >= THREADED_MIN and n_threads > 1:
        step = -(-len(blocks) // n_threads)  # one run of consecutive blocks per thread
        runs = _tiers.pool().map(lambda i: [one(b) for b in blocks[i:i + step]],
                                 range(0, len(blocks), step))
        parts = [part for run in runs for part in run]
    else:
        parts = [one(block) for block in blocks]
    if any(p is None for p in parts):
        return None, None
    stats = np.zeros((N_STATS, x.shape[1]))
    for part in parts:  # in block order
        stats += part
    return stats, side


def _row_parts(stats, u, keep, rows, scratch=None) -> None:
    """A block's sums of squared losses and its part of the row moments, from its
    losses ``u`` (A, C, B) (0 where left out) and ``keep`` (None: every element
    counts).  ``rows``: (moments, the block's cells of the tier's ``side`` array
    (A, C, 2) with moments along A, which receive its (row, class) sums, whether
    to sum the squares); ``scratch``: None or a float64 buffer of ``u``'s shape for
    the squares (else a fresh array per block)."""
    kind, cells, squares = rows
    with np.errstate(over="ignore", invalid="ignore"):  # huge losses: inf, as the kernels
        if squares:
            stats[SQ] = class_sums(np.multiply(u, u, out=scratch))
        if kind == MOMENTS_ALONG_A:
            u.sum(axis=2, out=cells[..., 0])
            cells[..., 1] = u.shape[2] if keep is None else keep.sum(axis=2)
            return
        if kind == MOMENTS_NONE:
            return
        # Never BLAS (``@``, ``np.dot``, ``np.vdot``) for a sum: OpenBLAS splits a product
        # by its own thread count, so the last bits would depend on the machine's
        # cores and on OPENBLAS_NUM_THREADS (Dask's workers set it to 1).
        a_count, c_count, b_count = u.shape  # each (a, b) is a row: add up its classes
        if a_count == 1:
            row_a = u.reshape(c_count, b_count).sum(axis=0)
        else:
            row_a = np.einsum("ij->i", u.reshape(a_count, c_count * b_count))  # 4x .sum(1)
        row_n = (c_count if keep is None
                 else keep.sum(axis=1, dtype=np.float64).reshape(-1))
        stats[RSQ, 0] = (row_a * row_a).sum()
        stats[RSQN, 0] = (row_a * row_n).sum()
        stats[RNSQ, 0] = (row_n * row_n * row_a.size if keep is None
                          else (row_n * row_n).sum())


def _fast_block(xb, yb, w3, p3, unit, wf, pf, smooth, ob, want_stats, rows):
    """Statistics of one block under the default options, or None when its loss sum
    is NaN (a NaN input, or 0 * inf from an infinite logit) or a target lies
    outside [0, 1]: the careful path then decides."""
    n = xb.size
    bufs = [buf[:n].reshape(xb.shape) for buf in _scratch(n)]
    hard = None
    if pf is None and wf is None and not smooth:
        hard = _hard_targets(yb, bufs[6], bufs[7])
    if hard is None and yb.dtype != np.uint8 and yb.size and (yb.min() < 0 or yb.max() > 1):
        return None
    with np.errstate(invalid="ignore", over="ignore"):  # 0 * inf: the careful path decides
        if hard is not None:
            return _hard_losses(xb, hard, None if unit else (w3, p3), bufs, ob, want_stats,
                                rows)
        return _fast_losses(xb, yb, w3, p3, unit, wf, pf, smooth, ob, want_stats, rows, bufs)


def _fast_losses(xb, yb, w3, p3, unit, wf, pf, smooth, ob, want_stats, rows, bufs):
    """The loss as ``(1-y) * sp(x) + p*y * sp(-x)`` with ``sp(x) = t + m``,
    ``sp(-x) = t + (m - x)``, ``t = log1p(exp(-|x|))``, ``m = max(x, 0)``
    (``m - x`` is exact).  Unweighted, with float32 or bool inputs, it is
    ``t + (m - y*x)`` (3 passes fewer): ``y*x`` is exact in float64 then, so
    ``m - y*x`` is rounded once.  Float64 soft targets take the full form: there
    ``y*x`` rounds, and ``m - y*x`` would cancel (320 ulp at x=30, y=0.999)."""
    shape = xb.shape
    xf, yf, t, m, u, ys, m1, m2 = bufs
    np.copyto(xf, xb)
    np.copyto(yf, yb)
    np.abs(xf, out=t)
    np.negative(t, out=t)
    np.exp(t, out=t)
    np.log1p(t, out=t)  # t = log1p(exp(-|x|))
    np.maximum(xf, 0.0, out=m)
    if smooth:
        np.multiply(yf, 1.0 - smooth, out=ys)
        ys += 0.5 * smooth
    else:
        ys = yf
    if unit and pf is None and not smooth and xb.dtype.itemsize <= 4 and yb.dtype.itemsize <= 4:
        # float32 (or bool) inputs: y*x is exact in float64, so m - y*x is rounded once
        np.multiply(ys, xf, out=u)
        np.subtract(m, u, out=u)
        u += t
    else:  # (1-y) * (t + m) + p*y * (t + (m - x)): no cancellation for soft targets
        np.subtract(m, xf, out=u)
        u += t
        u *= ys
        if not unit:
            u *= p3
        if pf is not None:
            u *= pf
        m += t
        np.subtract(1.0, ys, out=t)
        m *= t
        u += m
    if not unit:
        u *= w3
    if wf is not None:
        u *= wf
    stats = _summed(u)
    if stats is None:
        return None
    if want_stats:
        stats[COUNT] = shape[0] * shape[2]
        stats[POS] = class_sums(yf)
        stats[NEG] = stats[COUNT] - stats[POS]
        np.greater(xf, 0.0, out=m1)
        np.greater_equal(yf, 0.5, out=m2)
        np.equal(m1, m2, out=m1)
        np.copyto(t, m1)
        stats[CORRECT] = class_sums(t)
        _row_parts(stats, u, None, rows, t)
    if ob is not None:  # a loss beyond float32's range is inf there
        np.copyto(ob, u, casting="unsafe")
    return stats


def _summed(u):
    """A block's statistics with its losses' per-class sums (LOSS), from losses ``u``;
    None when a sum is NaN (the careful path decides)."""
    stats = np.zeros((N_STATS, u.shape[1]))
    stats[LOSS] = class_sums(u)
    return None if np.isnan(stats[LOSS]).any() else stats


def _hard_targets(yb, ge, scratch):
    """Targets that are all 0 or 1, as bools (``ge``, y >= 0.5, receives those of float
    targets), or None when a target is another value (or NaN).  ``scratch``: a bool
    buffer of ``yb``'s shape."""
    if yb.dtype == np.uint8:  # bool targets (bce_cli._dispatch)
        return yb.view(bool)
    if yb.size and yb[0, 0, 0] not in (0.0, 1.0):  # soft targets: no pass for nothing
        return None
    np.greater_equal(yb, 0.5, out=ge)
    np.not_equal(yb, ge, out=scratch)
    return None if np.count_nonzero(scratch) else ge


def _hard_losses(xb, yt, factors, bufs, ob, want_stats, rows):
    """``_fast_losses`` for targets of 0 and 1 (bools ``yt``): the loss is
    ``(t + |x| * wrong) * c * w`` with ``t = log1p(exp(-|x|))``, ``wrong`` where the
    logit's side disagrees with the target (``max(x, 0) - y*x`` is ``|x|`` there, 0
    elsewhere) and ``c`` the class's pos_weight for a positive, 1 for a negative: the
    same float64 values as the general form in about half its passes.  ``wrong``
    also gives the count of correct sides.  ``factors``: None (unweighted) or the
    per-class ``(w3, p3)``; ``bufs``: ``_scratch``'s buffers in ``xb``'s shape."""
    shape = xb.shape
    a, t, u, c, wrong, other = bufs[0], bufs[1], bufs[2], bufs[3], bufs[7], bufs[6]
    if xb.dtype != np.float64:  # |x| exact in x's type
        a = a.reshape(-1).view(xb.dtype)[: xb.size].reshape(shape)
    np.abs(xb, out=a)
    np.negative(a, out=t)
    np.exp(t, out=t)
    np.log1p(t, out=t)  # t = log1p(exp(-|x|))
    np.greater(xb, 0.0, out=wrong)
    np.not_equal(wrong, yt, out=wrong)
    np.multiply(a, wrong, out=u)  # inf * 0 = NaN for an infinite logit on its side
    u += t
    if factors is not None:
        w3, p3 = factors
        if np.any(p3 != 1.0):
            if other is yt:  # float targets: yt is the bool buffer
                other = bufs[5].reshape(-1).view(bool)[: xb.size].reshape(shape)
            np.multiply(yt, p3, out=c)  # p or 0, then + 1 for a negative: exact
            np.logical_not(yt, out=other)
            c += other
            u *= c
            if np.any(p3 < 0.0):  # 0 * -p is -0.0; the general form's sum gives +0.0
                u += 0.0
        if np.any(w3 != 1.0):
            u *= w3
    stats = _summed(u)
    if stats is None:
        return None
    if want_stats:
        count = shape[0] * shape[2]
        stats[COUNT] = count
        stats[POS] = class_counts(yt)
        stats[NEG] = count - stats[POS]
        stats[CORRECT] = count - class_counts(wrong)
        _row_parts(stats, u, None, rows, t)
    if ob is not None:  # a loss beyond float32's range is inf there
        np.copyto(ob, u, casting="unsafe")
    return stats


def _careful_block(xb, yb, w3, p3, wf, pf, smooth, ignore, mode, ob, rows):
    """Statistics of one block with the exact zero-coefficient rules and every option,
    or None when an element is invalid; writes ``ob`` (NaN where left out)."""
    with np.errstate(invalid="ignore"):  # a signalling NaN is "invalid" to cast: it is a NaN
        xf = xb.astype(np.float64)
        yf = yb.astype(np.float64)
    nan = np.isnan(xf) | np.isnan(yf)
    ignored = (yf == ignore) if ignore is not None else np.zeros(xf.shape, dtype=bool)
    with np.errstate(invalid="ignore"):
        bad = ~ignored & ((yf < 0.0) | (yf > 1.0) | (nan if mode == NAN_ERROR else False))
    if bad.any():
        return None
    skip = ignored | (nan if mode == NAN_OMIT else False)
    w = w3 * (1.0 if wf is None else wf)
    p = p3 * (1.0 if pf is None else pf)
    ys = yf * (1.0 - smooth) + 0.5 * smooth
    t = np.log1p(np.exp(-np.abs(xf)))
    with np.errstate(invalid="ignore", over="ignore"):
        pos_coef = p * ys
        neg_coef = 1.0 - ys
        pos_term = np.where(pos_coef != 0.0, pos_coef * (np.maximum(-xf, 0.0) + t), 0.0)
        neg_term = np.where(neg_coef != 0.0, neg_coef * (np.maximum(xf, 0.0) + t), 0.0)
        loss = np.where(w != 0.0, w * (pos_term + neg_term), 0.0)
    loss = np.where(skip, np.nan, loss)
    keep = ~skip
    stats = np.zeros((N_STATS, xf.shape[1]))
    kept = np.where(keep, loss, 0.0)
    stats[LOSS] = kept.sum(axis=(0, 2))
    stats[COUNT] = keep.sum(axis=(0, 2))
    stats[POS] = np.where(keep, yf, 0.0).sum(axis=(0, 2))
    stats[NEG] = np.where(keep, 1.0 - yf, 0.0).sum(axis=(0, 2))
    stats[CORRECT] = (keep & ((xf > 0.0) == (yf >= 0.5))).sum(axis=(0, 2))
    _row_parts(stats, kept, keep, rows)
    if ob is not None:
        with np.errstate(over="ignore"):
            np.copyto(ob, loss, casting="unsafe")
    return stats
