"""Numba kernels: per-element BCE-with-logits and per-class float64 partial sums.

Pure array functions (no I/O, no printing).  Public wrappers in
``bce_cli.functional`` and ``bce_cli.accumulator`` check and normalise inputs
and call these.  Two kernels cover every layout (classes on one axis):

* ``planes_kernel``: ``x`` of shape ``(A, C, B)``, C-contiguous; each class's
                     elements come in contiguous runs along ``B`` (1-D data is
                     ``(1, 1, N)``, masks ``[B, C, H, W]`` are ``(B, C, H*W)``).
* ``rows_kernel``:   ``x`` of shape ``(N, C)``, C-contiguous, ``C > 1``; rows
                     are taken as flat memory in lines of a whole number of
                     rows (per-class factors repeated along a line).

``planes_kernel`` works in blocks of about ``BLOCK`` elements with two simple
loops that LLVM vectorises:

1. ``block_losses`` (element flags, no ``reassoc``): the per-element loss into
   a float64 scratch buffer.  The transcendental is inlined here, so its
   compensation terms keep their meaning.
2. ``block_sums`` (sum flags, with ``reassoc``): float64 sums of losses,
   counts, targets and correct predictions, plus the count of invalid
   elements (validation fused into the pass).

``rows_kernel`` fuses both into one loop per line (``rows_chunk``): each
element's statistics go into a float64 sum per position along the line, so
no sum runs across the loop (no ``reassoc`` needed) and the same loop serves
any C; positions are folded into classes once per chunk.

Work is split in fixed-size chunks whose float64 partials are returned and
added in order by the caller, so results never depend on the thread count.
"""

from __future__ import annotations

import numpy as np
from numba import literally, prange, typeof, types
from numba.extending import overload

from ._fastmath import log1p_exp_neg, log1p_exp_neg_f32
from ._jit import ELEMENT_FLAGS, SUM_FLAGS, inline, inline_copy, kernel, scalar
from .stats import CORRECT, COUNT, LOSS, N_STATS, NAN_ERROR, NAN_OMIT, NEG, OUT_ONLY, POS

# Elements per chunk (one float64 partial per statistic and class), and per
# scratch block inside a chunk (fits in L1 with its inputs).
CHUNK = 1 << 15
BLOCK = 1 << 10
# Forms: which loss loop a kernel runs, a compile-time constant (``form`` is
# passed as a literal), so a first call compiles one loop, not all of them.
# Planes kernel: the factors the loop multiplies in, plus DIRECT (losses only,
# written straight into ``out``).
UNIT, SCALAR, WS, PS, WSPS, SMOOTH = range(6)
DIRECT = 8
# Rows kernel: unweighted sums, weighted sums, sums and losses, general options.
ROWS_UNIT, ROWS_WEIGHTED, ROWS_WRITE, ROWS_GENERAL = range(4)
# Rows kernel: lines of LINE_MIN..LINE_MAX elements (see line_length); chunks of at
# least CHUNK elements and, for wide C, CHUNK_ROWS rows (partials, 5 floats per class
# and chunk, stay small next to the data), unless that leaves fewer than CHUNKS_WANTED
# chunks: then down to MIN_CHUNK_ROWS rows, so that many threads still have work.
LINE_MIN = 128
LINE_MAX = 512
CHUNK_ROWS = 256
MIN_CHUNK_ROWS = 16
CHUNKS_WANTED = 64


@inline()
def element_loss(x, y, w, p, t):
    """w * (p*y*softplus(-x) + (1-y)*softplus(x)) in float64, for one element,
    given ``t = log1p(exp(-|x|))``.

    softplus(+-x) = max(+-x, 0) + t: no overflow, and no cancellation for
    either sign of x.  A term whose coefficient is exactly zero contributes
    exactly zero, so infinite logits give their limits (x=+inf, y=1 -> 0)
    instead of 0*inf = NaN.  NaN propagates.
    """
    pos_coef = p * y
    neg_coef = 1.0 - y
    pos_term = pos_coef * (max(-x, 0.0) + t)
    neg_term = neg_coef * (max(x, 0.0) + t)
    pos_term = pos_term if pos_coef != 0.0 else 0.0
    neg_term = neg_term if neg_coef != 0.0 else 0.0
    loss = w * (pos_term + neg_term)
    return loss if w != 0.0 else 0.0


@inline()
def invalid(x, y):
    """1 for an element that is an error under the default options: a NaN, or a
    target outside [0, 1] (in float64, as the kernels see them)."""
    return (y < 0.0) | (y > 1.0) | (x != x) | (y != y)


def _block_losses_for(softplus_core, loop):
    """The per-element loss loop of one form, with ``softplus_core`` =
    log1p(exp(-a)) inlined (``loop`` is a constant: the other loops are pruned)."""

    def block_losses(x, y, ws, ps, use_ws, use_ps, w, p, smooth, lbuf, form):
        n = x.size
        n_bad = 0
        if loop == SMOOTH:  # per-element factors decided at run time: a rare option
            keep = 1.0 - smooth
            half = 0.5 * smooth
            for i in range(n):
                xv = np.float64(x[i])
                yv = np.float64(y[i])
                wi = w * ws[i] if use_ws else w
                pi = p * ps[i] if use_ps else p
                lbuf[i] = element_loss(xv, yv * keep + half, wi, pi, softplus_core(abs(xv)))
                n_bad += invalid(xv, yv)
        elif loop == WSPS:
            for i in range(n):
                xv = np.float64(x[i])
                yv = np.float64(y[i])
                lbuf[i] = element_loss(xv, yv, w * ws[i], p * ps[i], softplus_core(abs(xv)))
                n_bad += invalid(xv, yv)
        elif loop == PS:
            for i in range(n):
                xv = np.float64(x[i])
                yv = np.float64(y[i])
                lbuf[i] = element_loss(xv, yv, w, p * ps[i], softplus_core(abs(xv)))
                n_bad += invalid(xv, yv)
        elif loop == WS:
            for i in range(n):
                xv = np.float64(x[i])
                yv = np.float64(y[i])
                lbuf[i] = element_loss(xv, yv, w * ws[i], p, softplus_core(abs(xv)))
                n_bad += invalid(xv, yv)
        elif loop == UNIT:  # constant factors fold away (1-D float32 mean: 9% faster)
            for i in range(n):
                xv = np.float64(x[i])
                yv = np.float64(y[i])
                lbuf[i] = element_loss(xv, yv, 1.0, 1.0, softplus_core(abs(xv)))
                n_bad += invalid(xv, yv)
        else:
            for i in range(n):
                xv = np.float64(x[i])
                yv = np.float64(y[i])
                lbuf[i] = element_loss(xv, yv, w, p, softplus_core(abs(xv)))
                n_bad += invalid(xv, yv)
        return n_bad

    return block_losses


_CORES = {32: inline_copy(log1p_exp_neg_f32), 64: inline_copy(log1p_exp_neg)}
_BLOCK_LOSSES = {(bits, loop): _block_losses_for(core, loop)
                 for bits, core in _CORES.items() for loop in range(SMOOTH + 1)}


def _bits(x):
    return 32 if x.dtype == types.float32 else 64


def block_losses(x, y, ws, ps, use_ws, use_ps, w, p, smooth, lbuf, form):
    """lbuf[i] = loss of element i (lbuf: float64 scratch, or the output array itself,
    rounded once); returns the number of ``invalid`` elements.

    ``form`` (a literal) picks the loop: the factors are the class's ``w``/``p``
    times, per form, the per-element ``ws``/``ps``.  Float32 logits take the
    shorter polynomial (relative error 4e-11: float32 results round correctly
    and float64 sums stay within 1e-10), float64 logits the full-precision
    one; chosen at compile time from ``x``'s type.
    """
    raise NotImplementedError("only callable from compiled code")


@overload(block_losses, prefer_literal=True,
          jit_options={"fastmath": set(ELEMENT_FLAGS), "error_model": "numpy"})
def _block_losses(x, y, ws, ps, use_ws, use_ps, w, p, smooth, lbuf, form):
    if isinstance(form, types.IntegerLiteral):
        return _BLOCK_LOSSES[_bits(x), form.literal_value & ~DIRECT]
    return None


@inline()
def element_flags(x, y, ignore, has_ignore, nan_mode):
    """(left out of sums and counts?, invalid?) for one element under the general options."""
    ignored = has_ignore and y == ignore
    nan = (x != x) | (y != y)
    invalid = (not ignored) and ((y < 0.0) | (y > 1.0) | (nan_mode == NAN_ERROR and nan))
    return ignored or (nan_mode == NAN_OMIT and nan), invalid


@scalar(SUM_FLAGS)
def block_sums(x, y, lbuf, general, ignore, has_ignore, nan_mode, out, write_out):
    """(loss, count, n_pos, n_neg, n_correct, n_bad) of one block; writes ``out``.

    n_bad is counted here only under the general options (``block_losses``
    counts it otherwise)."""
    s_loss = 0.0
    s_count = 0.0
    s_pos = 0.0
    s_neg = 0.0
    s_cor = 0.0
    n_bad = 0
    n = x.size
    if not general:  # every element counts
        for i in range(n):
            xv = np.float64(x[i])
            yv = np.float64(y[i])
            s_loss += lbuf[i]
            s_pos += yv
            s_cor += 1.0 if (xv > 0.0) == (yv >= 0.5) else 0.0
        if write_out:
            for i in range(n):
                out[i] = lbuf[i]
        return s_loss, np.float64(n), s_pos, n - s_pos, s_cor, n_bad
    for i in range(n):
        xv = np.float64(x[i])
        yv = np.float64(y[i])
        skip, bad = element_flags(xv, yv, ignore, has_ignore, nan_mode)
        n_bad += bad
        c = 0.0 if skip else 1.0
        s_loss += 0.0 if skip else lbuf[i]
        s_count += c
        s_pos += 0.0 if skip else yv
        s_neg += 0.0 if skip else 1.0 - yv
        s_cor += c if (xv > 0.0) == (yv >= 0.5) else 0.0
    if write_out:
        for i in range(n):
            skip, _ = element_flags(np.float64(x[i]), np.float64(y[i]), ignore, has_ignore,
                                    nan_mode)
            out[i] = np.nan if skip else lbuf[i]
    return s_loss, s_count, s_pos, s_neg, s_cor, n_bad


def run_stats(x, y, ws, ps, use_ws, use_ps, w, p, smooth, ignore, has_ignore, nan_mode,
              out, write_out, lbuf, acc, form):
    """Add the statistics of one contiguous run of one class into ``acc``; returns n_bad.

    ``ws``/``ps``: per-element weight factors (when ``use_ws``/``use_ps``);
    ``w``/``p``: the class's weight and pos_weight; ``lbuf``: BLOCK floats of
    scratch; ``form`` (a literal): the loss loop, with DIRECT for losses only
    (written straight into ``out`` in one pass; nothing added to ``acc``).
    """
    raise NotImplementedError("only callable from compiled code")


def _run_direct(x, y, ws, ps, use_ws, use_ps, w, p, smooth, ignore, has_ignore, nan_mode,
                out, write_out, lbuf, acc, form):
    return block_losses(x, y, ws, ps, use_ws, use_ps, w, p, smooth, out, form)


def _run_blocks(x, y, ws, ps, use_ws, use_ps, w, p, smooth, ignore, has_ignore, nan_mode,
                out, write_out, lbuf, acc, form):
    general = has_ignore or nan_mode != NAN_ERROR
    n = x.size
    n_bad = 0
    for lo in range(0, n, BLOCK):
        hi = min(n, lo + BLOCK)
        buf = lbuf[: hi - lo]
        bad = block_losses(x[lo:hi], y[lo:hi], ws[lo:hi] if use_ws else ws[0:0],
                           ps[lo:hi] if use_ps else ps[0:0], use_ws, use_ps, w, p, smooth, buf,
                           form)
        n_bad += 0 if general else bad
        s = block_sums(x[lo:hi], y[lo:hi], buf, general, ignore, has_ignore, nan_mode,
                       out[lo:hi] if write_out else out[0:0], write_out)
        acc[LOSS] += s[0]
        acc[COUNT] += s[1]
        acc[POS] += s[2]
        acc[NEG] += s[3]
        acc[CORRECT] += s[4]
        n_bad += s[5]
    return n_bad


@overload(run_stats, prefer_literal=True,
          jit_options={"fastmath": set(SUM_FLAGS), "error_model": "numpy"})
def _run_stats(x, y, ws, ps, use_ws, use_ps, w, p, smooth, ignore, has_ignore, nan_mode,
               out, write_out, lbuf, acc, form):
    if isinstance(form, types.IntegerLiteral):
        return _run_direct if form.literal_value & DIRECT else _run_blocks
    return None


@kernel(flags=SUM_FLAGS)
def planes_kernel(x, y, wvec, pvec, wfull, pfull, use_wfull, use_pfull,
                  smooth, ignore, has_ignore, nan_mode, out, write_out, form):
    """Per-class partials for ``x``/``y`` of shape (A, C, B), C-contiguous.

    A task covers one class and about ``CHUNK`` elements: a block of B when B
    is long, else a block of whole rows of A.  Returns ``(partials, n_bad)``:
    ``partials`` has shape (A-blocks, C, B-blocks, N_STATS) and the caller sums
    it over axes 0 and 2 in a fixed order; ``n_bad[task]`` counts invalid
    elements.  ``wfull``/``pfull`` (same shape as ``x`` when used) multiply the
    per-class ``wvec``/``pvec``.  ``out`` (same shape as ``x``) receives
    per-element losses when ``write_out`` (OUT_WITH_STATS, or OUT_ONLY when the
    statistics are not wanted); elements left out (ignored or omitted) get NaN.
    ``form``: the loss loop (``planes_form``), compiled for its value alone.
    """
    literally(form)
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
        lbuf = np.empty(BLOCK, dtype=np.float64)
        bad_count = 0
        for a in range(ablk * a_per_task, min(a_count, (ablk + 1) * a_per_task)):
            lo = (a * c_count + c) * b_count + b_lo
            hi = lo + (b_hi - b_lo)
            bad_count += run_stats(xf[lo:hi], yf[lo:hi], wf[lo:hi] if use_wfull else wf[0:0],
                                   pf[lo:hi] if use_pfull else pf[0:0], use_wfull, use_pfull,
                                   wvec[c], pvec[c], smooth, ignore, has_ignore, nan_mode,
                                   of[lo:hi] if write_out else of[0:0], write_out, lbuf, acc,
                                   form)
        partials[ablk, c, blk, :] = acc
        n_bad[task] = bad_count
    return partials, n_bad


@scalar()
def line_length(c_count):
    """Elements per line of the rows kernel: ``k * c_count`` for the whole number
    of rows ``k`` that gives a line of LINE_MIN..LINE_MAX elements with the
    fewest left over from multiples of 32 (the vector loop's step); one row
    when C >= LINE_MIN.  Short lines keep the per-position sums in L1 (measured:
    lines of 1024 elements ran 10-30% slower than lines of 128-512)."""
    if c_count >= LINE_MIN:
        return c_count
    best_len = 0
    best_rest = 1.0
    for k in range(1, LINE_MAX // c_count + 1):
        length = k * c_count
        if length >= LINE_MIN and (length % 32) / length < best_rest:
            best_len = length
            best_rest = (length % 32) / length
    return best_len


def _rows_chunk_for(softplus_core, loop):
    """The fused per-element loss and per-position sums of the rows kernel, with
    ``softplus_core`` = log1p(exp(-a)) inlined (``loop`` is a constant: the
    other loops are pruned)."""

    def rows_chunk(x, y, w_line, p_line, wf, pf, use_wf, use_pf, keep, half, general,
                   ignore, has_ignore, nan_mode, out, write_out, c_count, form):
        width = w_line.size
        n = x.size
        acc = np.zeros((N_STATS, width), dtype=np.float64)
        a_loss = acc[LOSS]
        a_count = acc[COUNT]
        a_pos = acc[POS]
        a_neg = acc[NEG]
        a_cor = acc[CORRECT]
        scratch = np.empty(width if loop == ROWS_GENERAL else 0, dtype=out.dtype)
        wbuf = np.empty(width if use_wf else 0, dtype=np.float64)
        pbuf = np.empty(width if use_pf else 0, dtype=np.float64)
        n_bad = 0
        for lo in range(0, n, width):
            m = min(n, lo + width) - lo
            xs = x[lo:lo + m]
            ys = y[lo:lo + m]
            ws = w_line
            ps = p_line
            if use_wf:
                for j in range(m):
                    wbuf[j] = w_line[j] * wf[lo + j]
                ws = wbuf
            if use_pf:
                for j in range(m):
                    pbuf[j] = p_line[j] * pf[lo + j]
                ps = pbuf
            if loop == ROWS_GENERAL:
                dst = out[lo:lo + m] if write_out else scratch
                for j in range(m):
                    xv = np.float64(xs[j])
                    yv = np.float64(ys[j])
                    skip, bad = element_flags(xv, yv, ignore, has_ignore, nan_mode)
                    loss = element_loss(xv, yv * keep + half, ws[j], ps[j],
                                        softplus_core(abs(xv)))
                    k = 0.0 if skip else 1.0
                    dst[j] = np.nan if skip else loss
                    a_loss[j] += 0.0 if skip else loss
                    a_count[j] += k
                    a_pos[j] += 0.0 if skip else yv
                    a_neg[j] += 0.0 if skip else 1.0 - yv
                    a_cor[j] += k if (xv > 0.0) == (yv >= 0.5) else 0.0
                    n_bad += bad
            elif loop == ROWS_WRITE:
                dst = out[lo:lo + m]
                for j in range(m):
                    xv = np.float64(xs[j])
                    yv = np.float64(ys[j])
                    loss = element_loss(xv, yv * keep + half, ws[j], ps[j],
                                        softplus_core(abs(xv)))
                    dst[j] = loss
                    a_loss[j] += loss
                    a_pos[j] += yv
                    a_cor[j] += 1.0 if (xv > 0.0) == (yv >= 0.5) else 0.0
                    n_bad += invalid(xv, yv)
            elif loop == ROWS_UNIT:  # constant factors fold away
                for j in range(m):
                    xv = np.float64(xs[j])
                    yv = np.float64(ys[j])
                    loss = element_loss(xv, yv * keep + half, 1.0, 1.0, softplus_core(abs(xv)))
                    a_loss[j] += loss
                    a_pos[j] += yv
                    a_cor[j] += 1.0 if (xv > 0.0) == (yv >= 0.5) else 0.0
                    n_bad += invalid(xv, yv)
            else:
                for j in range(m):
                    xv = np.float64(xs[j])
                    yv = np.float64(ys[j])
                    loss = element_loss(xv, yv * keep + half, ws[j], ps[j],
                                        softplus_core(abs(xv)))
                    a_loss[j] += loss
                    a_pos[j] += yv
                    a_cor[j] += 1.0 if (xv > 0.0) == (yv >= 0.5) else 0.0
                    n_bad += invalid(xv, yv)
        stats = np.zeros((N_STATS, c_count), dtype=np.float64)
        for s in range(N_STATS):
            for q in range(width // c_count):
                for c in range(c_count):
                    stats[s, c] += acc[s, q * c_count + c]
        if not general:  # every element counted: counts follow from the row count
            for c in range(c_count):
                stats[COUNT, c] = n // c_count
                stats[NEG, c] = stats[COUNT, c] - stats[POS, c]
        return stats, n_bad

    return rows_chunk


_ROWS_CHUNK = {(bits, loop): _rows_chunk_for(core, loop)
               for bits, core in _CORES.items() for loop in range(ROWS_GENERAL + 1)}


def rows_chunk(x, y, w_line, p_line, wf, pf, use_wf, use_pf, keep, half, general,
               ignore, has_ignore, nan_mode, out, write_out, c_count, form):
    """Statistics ``(N_STATS, c_count)`` and n_bad of whole rows given as flat memory.

    The rows are taken in lines of ``len(w_line)`` elements (a whole number of
    rows; ``w_line``/``p_line`` hold the per-class factors repeated along a
    line).  One loop per line computes each element's loss and adds it, its
    target and its correctness into a per-position float64 sum: no sum runs
    across the loop, so it vectorises without ``reassoc`` and the
    transcendental keeps its compensation.  The positions are folded into
    classes at the end.  ``wf``/``pf``: per-element factors (when
    ``use_wf``/``use_pf``); targets are smoothed as ``y * keep + half``.
    """
    raise NotImplementedError("only callable from compiled code")


@overload(rows_chunk, prefer_literal=True,
          jit_options={"fastmath": set(ELEMENT_FLAGS), "error_model": "numpy"})
def _rows_chunk(x, y, w_line, p_line, wf, pf, use_wf, use_pf, keep, half, general,
                ignore, has_ignore, nan_mode, out, write_out, c_count, form):
    if isinstance(form, types.IntegerLiteral):
        return _ROWS_CHUNK[_bits(x), form.literal_value]
    return None


@kernel()  # no sums of its own: rows_chunk's loops carry the element flags
def rows_kernel(x, y, wvec, pvec, wfull, pfull, use_wfull, use_pfull,
                smooth, ignore, has_ignore, nan_mode, out, write_out, form):
    """Per-class partials for ``x``/``y`` of shape (N, C), C-contiguous, C > 1.

    A chunk is a block of rows (see ``CHUNK_ROWS``; the sizes depend on N and
    C only, never on the thread count), a whole number of lines (see
    ``line_length``), computed by ``rows_chunk``.  Returns
    ``(partials, n_bad)`` with ``partials`` of shape (n_chunks, N_STATS, C).
    ``form``: the loop (``rows_form``), compiled for its value alone.
    """
    literally(form)
    n, c_count = x.shape
    general = has_ignore or nan_mode != NAN_ERROR
    width = line_length(c_count)
    line_rows = width // c_count
    rows = max(CHUNK // c_count, min(CHUNK_ROWS, max(MIN_CHUNK_ROWS, n // CHUNKS_WANTED)))
    rows = line_rows * ((rows + line_rows - 1) // line_rows)
    n_chunks = (n + rows - 1) // rows
    partials = np.zeros((n_chunks, N_STATS, c_count), dtype=np.float64)
    n_bad = np.zeros(n_chunks, dtype=np.int64)
    xf = x.reshape(-1)
    yf = y.reshape(-1)
    wf = wfull.reshape(-1)
    pf = pfull.reshape(-1)
    of = out.reshape(-1)
    w_line = np.empty(width, dtype=np.float64)
    p_line = np.empty(width, dtype=np.float64)
    for r in range(line_rows):
        w_line[r * c_count:(r + 1) * c_count] = wvec
        p_line[r * c_count:(r + 1) * c_count] = pvec
    keep = 1.0 - smooth
    half = 0.5 * smooth
    for k in prange(n_chunks):
        lo = k * rows * c_count
        hi = min(n, (k + 1) * rows) * c_count
        stats, bad = rows_chunk(xf[lo:hi], yf[lo:hi], w_line, p_line,
                                wf[lo:hi] if use_wfull else wf[0:0],
                                pf[lo:hi] if use_pfull else pf[0:0], use_wfull, use_pfull,
                                keep, half, general, ignore, has_ignore, nan_mode,
                                of[lo:hi] if write_out else of[0:0], write_out, c_count,
                                form)
        partials[k] = stats
        n_bad[k] = bad
    return partials, n_bad


def planes_form(wvec, pvec, use_wfull, use_pfull, smooth, general, write_out) -> int:
    """The ``form`` of ``planes_kernel`` for these options (plain Python)."""
    if smooth != 0.0:
        loop = SMOOTH
    elif use_wfull or use_pfull:
        loop = WSPS if use_wfull and use_pfull else WS if use_wfull else PS
    elif np.all(wvec == 1.0) and np.all(pvec == 1.0):
        loop = UNIT
    else:
        loop = SCALAR
    return loop | (DIRECT if write_out == OUT_ONLY and not general else 0)


def rows_form(wvec, pvec, use_wfull, use_pfull, general, write_out) -> int:
    """The ``form`` of ``rows_kernel`` for these options (plain Python)."""
    if general:
        return ROWS_GENERAL
    if write_out:
        return ROWS_WRITE
    if not use_wfull and not use_pfull and np.all(wvec == 1.0) and np.all(pvec == 1.0):
        return ROWS_UNIT
    return ROWS_WEIGHTED


_ENTRY_POINTS: dict = {}


def call(kernel, args, form):
    """``kernel(*args, form)`` without numba's per-call cost for a literal argument.

    A dispatcher matches a plain int against no compiled signature (they hold
    ``Literal[int]``) and goes through its typing machinery again on every call,
    ~20 ms.  The first call with given types compiles (or loads from the cache)
    as usual; later calls go straight to the compiled entry point.  The entry
    point unboxes its arguments without checking their types, so the key holds
    the full numba type of every argument (dtype, ndim, layout, read-only,
    alignment) and an entry is stored only for the exact signature compiled.
    """
    key = (kernel, tuple(typeof(a) for a in args), form)
    entry = _ENTRY_POINTS.get(key)
    if entry is not None:
        return entry(*args, form)
    result = kernel(*args, form)
    compiled = kernel.overloads.get((*key[1], types.literal(form)))
    if compiled is not None:
        _ENTRY_POINTS[key] = compiled.entry_point
    return result
