"""Numba kernels: per-element BCE-with-logits and per-class float64 partial sums.

Pure array functions (no I/O, no printing).  ``bce_cli._dispatch`` normalises the
inputs (flat, C-contiguous, native float32/float64 logits) and calls
``bce_cli._launch.run``, which runs a form's entry point on threads.  The
layouts, forms and task sizes are described in ``bce_cli._forms``.

Every form is built from one loop body with its options frozen as constants
(the factories below).  Its compiled entry point is the serial loop over a
run of tasks ``k0 <= k < k1``, each writing its own float64 partials, taking
pointers and integers (``_arrays``) so that its code needs nothing of numba's
runtime (:func:`compile_native`; ``bce_cli._native`` saves and loads its
object code).  bce runs runs of tasks on its thread pool (ctypes releases the
GIL), and a caller with threads of its own (a Dask worker) can do the same.
A ``prange`` entry point over the same loop (:func:`prange_entry`) exists for
numba's own threads.  A form is compiled (or loaded from the cache) on its
first use only, so the first call of a form costs one small compile.

Planes tasks work in blocks of ``BLOCK`` elements with two simple loops that
LLVM vectorises:

1. ``block_losses`` (element flags, no ``reassoc``): the per-element loss into
   a float64 scratch buffer.  The transcendental is inlined here, so its
   compensation terms keep their meaning.  Four vectors per iteration
   (``bce_cli._jit.scalar(interleave=True)``), except under the general options.
2. ``block_sums`` (sum flags, with ``reassoc``; ``block_sums_general`` under
   the general options): float64 sums of losses, counts, targets and correct
   predictions, plus the count of invalid elements (validation fused into the
   pass).

A rows task fuses both into one loop per line (under the default options
``line_stats``, interleaved too; with AVX2's 16 vector registers and per-class
factors the losses come first, in ``line_losses``; the general options' loop is
the task's own): each element's statistics go into a float64 sum per position
along the line, so no sum runs across the loop (no ``reassoc`` needed) and the
same loop serves any C; positions are folded into classes once per task.

Under the default options the loops compute :func:`fast_loss`, which takes
fewer operations than :func:`element_loss` and gives NaN where an infinite
logit meets a zero coefficient; a task counts a NaN loss sum as an invalid
element, and the caller (``bce_cli._dispatch``) then redoes the call on the
NumPy tier, whose careful path applies the exact rules or finds the invalid
element.  The general options' loops (an ignore value, a NaN policy other
than "error") apply :func:`element_loss` itself.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange, types
from numba.extending import intrinsic

from . import _native
from ._fastmath import log1p_exp_neg, log1p_exp_neg_f32
from ._forms import (
    BLOCK,
    MOMENTS_ALONG_A,
    MOMENTS_ALONG_B,
    PS,
    ROWS_GENERAL,
    ROWS_UNIT,
    ROWS_WRITE,
    SMOOTH,
    UNIT,
    WS,
    WSPS,
    Form,
)
from ._jit import (
    ELEMENT_FLAGS,
    SUM_FLAGS,
    compile_entry,
    form_kernel,
    inline,
    inline_copy,
    scalar,
    span,
    view,
)
from ._tiers import numba_avx512
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

# The per-position sums of a rows task: LOSS .. SQ.
N_LINE_STATS = SQ + 1


@inline()
def element_loss(x, y, w, p, t):
    """w * (p*y*softplus(-x) + (1-y)*softplus(x)) in float64, for one element,
    given ``t = log1p(exp(-|x|))``.

    softplus(+-x) = max(+-x, 0) + t: no overflow, and no cancellation for
    either sign of x.  A term whose coefficient is exactly zero contributes
    exactly zero, so infinite logits give their limits (x=+inf, y=1 -> 0)
    instead of 0*inf = NaN.  NaN propagates.

    The rule picks the softplus (0 for a zero coefficient), not the product: the
    sum of two products is then contracted into the same multiply-add in a vector
    loop and in its scalar remainder.  With the product picked, AVX-512 code fused
    the pick and the sum into a masked multiply-add in the vector body only, and an
    element's last bit depended on where it fell in the loop.
    """
    pos_coef = p * y
    neg_coef = 1.0 - y
    pos_soft = (max(-x, 0.0) + t) if pos_coef != 0.0 else 0.0
    neg_soft = (max(x, 0.0) + t) if neg_coef != 0.0 else 0.0
    loss = w * (pos_coef * pos_soft + neg_coef * neg_soft)
    return loss if w != 0.0 else 0.0


@inline()
def fast_loss(x, y, w, p, t, unit):
    """The loss of :func:`element_loss` in fewer operations, for the loops of the
    default options: ``w * (x*c + d*t)`` with ``c = 1 - y`` for ``x > 0``, else
    ``-p*y``, and ``d = (1 - y) + p*y`` (1 when ``unit``: ``w = p = 1``, the factors
    fold away).  The same quantity with fewer roundings (for ``x > 0``, ``x*(1 - y)``
    instead of ``(1 - y)*(x + t) + y*t``), and no cancellation: ``x*c`` and ``d*t``
    are never negative for targets in [0, 1].

    It gives NaN where a zero coefficient or weight meets an infinite logit (``x = +inf,
    y = 1``: ``inf * 0``) instead of the limit, as well as for a NaN input (whatever its
    weight: ``0 * NaN``): a task whose loss sum is NaN counts as holding an invalid
    element, and the caller then takes the NumPy tier, whose careful path applies the
    exact rules (or finds the invalid element).
    """
    if unit:
        return x * ((1.0 - y) if x > 0.0 else -y) + t
    py = p * y
    # No zero-weight rule here: 0 * NaN stays NaN, so a NaN input under a weight of 0 is
    # still caught (the careful path gives an infinite logit under a weight of 0 its 0)
    return w * (x * ((1.0 - y) if x > 0.0 else -py) + ((1.0 - y) + py) * t)


@inline()
def element_flags(x, y, ignore, has_ignore, nan_mode):
    """(left out of sums and counts?, invalid?) for one element under the general options.
    Bitwise operators, not ``and``/``or``: no branches, less code to compile."""
    ignored = has_ignore & (y == ignore)
    nan = (x != x) | (y != y)
    invalid = (not ignored) & ((y < 0.0) | (y > 1.0) | ((nan_mode == NAN_ERROR) & nan))
    return ignored | ((nan_mode == NAN_OMIT) & nan), invalid


_CORES = {32: inline_copy(log1p_exp_neg_f32), 64: inline_copy(log1p_exp_neg)}


def _block_losses_for(softplus_core, loop, general):
    """lbuf[i] = loss of element i (lbuf: float64 scratch, or the output array itself,
    rounded once).  ``general``: the general options, whose loop applies
    :func:`element_loss`'s exact rules itself; otherwise :func:`fast_loss`.  The
    elements are checked afterwards, where the loop can sum (``block_sums``,
    ``block_check``: a NaN loss makes the sum NaN); a count in this loop cost
    10-20% of its speed.

    The factors are the class's ``w``/``p`` times, per loop, the per-element
    ``ws``/``ps`` (SMOOTH: whichever of them is non-empty).  ``softplus_core``
    = log1p(exp(-a)) is inlined: float32 logits take the shorter polynomial
    (relative error 4e-11: float32 results round correctly and float64 sums
    stay within 1e-10), float64 logits the full-precision one.  The loop runs
    ``INTERLEAVE`` vectors at a time (``bce_cli._jit._Interleaved``), except under
    the general options.
    """
    use_ws = loop in (WS, WSPS)
    use_ps = loop in (PS, WSPS)
    unit = loop == UNIT  # constant factors fold away (1-D float32 mean: 9% faster)
    smoothing = loop == SMOOTH

    def block_losses(x, y, ws, ps, w, p, smooth, lbuf):
        n = x.size
        keep = 1.0 - smooth if smoothing else 1.0
        half = 0.5 * smooth if smoothing else 0.0
        any_ws = ws.size > 0
        any_ps = ps.size > 0
        for i in range(n):
            xv = np.float64(x[i])
            yv = np.float64(y[i])
            if unit:
                wi = 1.0
                pi = 1.0
            elif smoothing:  # per-element factors decided at run time: a rare option
                wi = w * ws[i] if any_ws else w
                pi = p * ps[i] if any_ps else p
            else:
                wi = w * ws[i] if use_ws else w
                pi = p * ps[i] if use_ps else p
            yl = yv * keep + half if smoothing else yv
            t = softplus_core(abs(xv))
            if general:
                lbuf[i] = element_loss(xv, yl, wi, pi, t)
            else:
                lbuf[i] = fast_loss(xv, yl, wi, pi, t, unit)

    # The general options' loop is not interleaved: it compiled 0.3-0.5 s longer so
    # (over 2 s), for options that are rare.
    return scalar(interleave=not general)(block_losses)


@scalar(SUM_FLAGS)
def block_sums(x, y, lbuf, out, write_out):
    """(loss, count, n_pos, n_neg, n_correct, sum of squared losses, n_bad) of one
    block under the default options (every element counts); writes ``out``.

    n_bad counts the targets outside [0, 1], plus 1 when the loss sum is NaN (a NaN
    input, or ``fast_loss``'s NaN for an infinite logit: the caller then takes the
    NumPy tier)."""
    s_loss = 0.0
    s_pos = 0.0
    s_cor = 0.0
    s_sq = 0.0
    n_bad = 0
    n = x.size
    for i in range(n):
        xv = np.float64(x[i])
        yv = np.float64(y[i])
        s_loss += lbuf[i]
        s_sq += lbuf[i] * lbuf[i]
        s_pos += yv
        s_cor += 1.0 if (xv > 0.0) == (yv >= 0.5) else 0.0
        n_bad += (yv < 0.0) | (yv > 1.0)
    n_bad += s_loss != s_loss
    if write_out:
        for i in range(n):
            out[i] = lbuf[i]
    return s_loss, np.float64(n), s_pos, n - s_pos, s_cor, s_sq, n_bad


@scalar(SUM_FLAGS)
def block_sums_general(x, y, lbuf, ignore, has_ignore, nan_mode, out, write_out):
    """:func:`block_sums` under the general options: n_bad counts the invalid
    elements, and the sums and counts leave out the skipped ones (``out``: NaN)."""
    s_loss = 0.0
    s_count = 0.0
    s_pos = 0.0
    s_neg = 0.0
    s_cor = 0.0
    s_sq = 0.0
    n_bad = 0
    for i in range(x.size):
        xv = np.float64(x[i])
        yv = np.float64(y[i])
        skip, bad = element_flags(xv, yv, ignore, has_ignore, nan_mode)
        n_bad += bad
        c = 0.0 if skip else 1.0
        s_loss += 0.0 if skip else lbuf[i]
        s_sq += 0.0 if skip else lbuf[i] * lbuf[i]
        s_count += c
        s_pos += 0.0 if skip else yv
        s_neg += 0.0 if skip else 1.0 - yv
        s_cor += c if (xv > 0.0) == (yv >= 0.5) else 0.0
    if write_out:
        for i in range(x.size):
            skip, _ = element_flags(np.float64(x[i]), np.float64(y[i]), ignore, has_ignore,
                                    nan_mode)
            out[i] = np.nan if skip else lbuf[i]
    return s_loss, s_count, s_pos, s_neg, s_cor, s_sq, n_bad


@scalar(SUM_FLAGS)
def block_check(y, losses):
    """The number of targets outside [0, 1] in a block, plus 1 when a loss is NaN (see
    :func:`fast_loss`): what ``block_sums`` counts, for the loop that writes losses
    only."""
    s_loss = 0.0
    n_bad = 0
    for i in range(y.size):
        yv = np.float64(y[i])
        s_loss += np.float64(losses[i])
        n_bad += (yv < 0.0) | (yv > 1.0)
    return n_bad + (s_loss != s_loss)


@scalar()
def add_to_rows(lbuf, rowtot):
    """Add one class's block of losses to the per-position row totals: with rows
    along B, each position is a row."""
    for i in range(lbuf.size):
        rowtot[i] += lbuf[i]


@scalar(SUM_FLAGS)
def add_to_rows_general(x, y, lbuf, rowtot, rowcnt, ignore, has_ignore, nan_mode):
    """:func:`add_to_rows` under the general options, with the counts (compiled into
    the task: sum flags, though nothing is summed across the loop)."""
    for i in range(lbuf.size):
        skip, _ = element_flags(np.float64(x[i]), np.float64(y[i]), ignore, has_ignore,
                                nan_mode)
        rowtot[i] += 0.0 if skip else lbuf[i]
        rowcnt[i] += 0.0 if skip else 1.0


@scalar(SUM_FLAGS)
def row_moments(rowtot, m, per_row):
    """(sum of A^2, of A*N, of N^2) over ``m`` rows whose loss totals A are ``rowtot``
    and whose counts N are ``per_row`` (every element counts)."""
    s_aa = 0.0
    s_an = 0.0
    for i in range(m):
        s_aa += rowtot[i] * rowtot[i]
        s_an += rowtot[i]
    return s_aa, s_an * per_row, m * per_row * per_row


@scalar(SUM_FLAGS)
def row_moments_general(rowtot, rowcnt, m):
    """:func:`row_moments` with each row's count in ``rowcnt`` (general options)."""
    s_aa = 0.0
    s_an = 0.0
    s_nn = 0.0
    for i in range(m):
        s_aa += rowtot[i] * rowtot[i]
        s_an += rowtot[i] * rowcnt[i]
        s_nn += rowcnt[i] * rowcnt[i]
    return s_aa, s_an, s_nn


@scalar(SUM_FLAGS)
def line_rows(lrow, lcnt, m, c_count, general):
    """Row moments (as :func:`row_moments`) of a line of ``m // c_count`` whole rows of
    ``c_count`` losses each (``lcnt``: their counts under the general options)."""
    s_aa = 0.0
    s_an = 0.0
    s_nn = 0.0
    for q in range(m // c_count):
        base = q * c_count
        t = 0.0
        n = 0.0
        for c in range(c_count):
            t += lrow[base + c]
        if general:
            for c in range(c_count):
                n += lcnt[base + c]
        else:
            n = np.float64(c_count)
        s_aa += t * t
        s_an += t * n
        s_nn += n * n
    return s_aa, s_an, s_nn


# A task's integer arguments (``ints``) before its geometry: elements, C, len(wf),
# len(pf), len(out), len(side), tasks, has_ignore, nan_mode, write_out, len(scratch),
# len(oscratch); ``floats`` = (smooth, ignore).
N_INTS = 12


@inline()
def _arrays(xp, yp, wvp, pvp, wfp, pfp, outp, sidep, partp, badp, scrp, oscrp, ip, fp):
    """A task's arrays (views of the caller's memory: nothing is allocated or owned)
    and options, from its pointers: (x, y, wvec, pvec, wf, pf, out, side, partials,
    n_bad, scratch, oscratch, smooth, ignore, has_ignore, nan_mode, write_out)."""
    ints = view(ip, N_INTS)
    n, c = ints[0], ints[1]
    return (view(xp, n), view(yp, n), view(wvp, c), view(pvp, c), view(wfp, ints[2]),
            view(pfp, ints[3]), view(outp, ints[4]), view(sidep, ints[5]),
            view(partp, (ints[6], N_STATS, c)), view(badp, ints[6]), view(scrp, ints[10]),
            view(oscrp, ints[11]), fp[0], fp[1], ints[7] != 0, ints[8], ints[9] != 0)


# The planes task's float64 sums, compiled into the task itself.  A ``scalar`` callee
# is not inlined by LLVM when it is large (these are: vectorised reductions), and a
# call to it then goes by symbol: numba links a copy of the callee into the form
# (a weak definition, optimised once more with the form), but in a process that
# compiled the callee (a cold start) the call resolves to the callee's own
# compile, while a form loaded from the cache runs the copy.  Under ``reassoc``
# the two compiles add in different orders, so a sum's last bits depended on the
# process's history (a Dask worker against the driver).  Inlined at numba level
# (the task has the same SUM_FLAGS), the sums are the form's own code.  So are the
# general options' row totals: an addition per element (nothing for ``reassoc`` to
# reorder), which then need no compile of their own for each argument type.  Each
# function holds one option set's code (``block_sums`` / ``block_sums_general``...):
# with both in one function, every form copied, typed and pruned the other half,
# and the row totals, which took x and y for the general options' flags, were
# compiled for each argument type (``add_to_rows`` takes float64 arrays only: one
# compile serves every form).
_block_sums = inline_copy(block_sums)
_block_sums_general = inline_copy(block_sums_general)
_block_check = inline_copy(block_check)
_row_moments = inline_copy(row_moments)
_row_moments_general = inline_copy(row_moments_general)
_add_to_rows_general = inline_copy(add_to_rows_general)


def _planes_task_for(block_losses, direct, general):
    """One planes task: rows ``ablk`` of A, block ``blk`` of B, every class.

    Adds into ``partials[k]`` (N_STATS, C) and sets ``n_bad[k]``.  Row moments
    (``geom[6]``, see ``bce_cli._forms``): with rows along B (1-D data, a
    column-major table seen as (C, n)), each position of B is a row, and the
    task adds its rows' moments itself (all classes of a position are in the
    task); with rows along A, it adds each (row, class)'s loss sum and count
    into ``side`` at ``2 * ((a * C + c) * n_bblocks + blk)``, and the caller
    folds them into rows.
    ``direct``: losses only, written straight into ``out`` (nothing summed).
    ``general``: the general options (``has_ignore``, ``nan_mode``) are in force, fixed at
    compile time (the caller picks the form).
    """

    def task(xp, yp, wvp, pvp, wfp, pfp, outp, sidep, partp, badp, scrp, oscrp, ip, fp, k0,
             k1):
        (x, y, wvec, pvec, wf, pf, out, side, partials, n_bad, scratch, oscratch, smooth, ignore,
         has_ignore, nan_mode, write_out) = _arrays(xp, yp, wvp, pvp, wfp, pfp, outp, sidep,
                                                    partp, badp, scrp, oscrp, ip, fp)
        g = span(view(ip, N_INTS + 7), N_INTS, 7)
        a_count, c_count, b_count, a_per_task, n_bblocks, b_step, moments = (
            g[0], g[1], g[2], g[3], g[4], g[5], g[6])
        rows_b = moments == MOMENTS_ALONG_B and not direct
        rows_a = moments == MOMENTS_ALONG_A and not direct
        lbuf = span(scratch, 0, BLOCK)
        rowtot = span(scratch, BLOCK, BLOCK)
        rowcnt = span(scratch, 2 * BLOCK, BLOCK)
        use_wf = wf.size > 0
        use_pf = pf.size > 0
        for k in range(k0, k1):
            blk = k % n_bblocks
            ablk = k // n_bblocks
            b_lo = blk * b_step
            b_hi = min(b_count, b_lo + b_step)
            acc = partials[k]
            bad_count = 0
            for a in range(ablk * a_per_task, min(a_count, (ablk + 1) * a_per_task)):
                for blo in range(b_lo, b_hi, BLOCK):
                    m = min(b_hi, blo + BLOCK) - blo
                    if rows_b:
                        for i in range(m):
                            rowtot[i] = 0.0
                        if general:
                            for i in range(m):
                                rowcnt[i] = 0.0
                    for c in range(c_count):
                        lo = (a * c_count + c) * b_count + blo
                        xb = span(x, lo, m)
                        yb = span(y, lo, m)
                        wb = span(wf, lo, m if use_wf else 0)
                        pb = span(pf, lo, m if use_pf else 0)
                        if direct:
                            ob = span(out, lo, m)
                            block_losses(xb, yb, wb, pb, wvec[c], pvec[c], smooth, ob)
                            bad_count += _block_check(yb, ob)
                            continue
                        buf = span(lbuf, 0, m)
                        block_losses(xb, yb, wb, pb, wvec[c], pvec[c], smooth, buf)
                        dst = span(out, lo, m if write_out else 0)
                        if general:
                            s = _block_sums_general(xb, yb, buf, ignore, has_ignore, nan_mode,
                                                    dst, write_out)
                        else:
                            s = _block_sums(xb, yb, buf, dst, write_out)
                        acc[LOSS, c] += s[0]
                        acc[COUNT, c] += s[1]
                        acc[POS, c] += s[2]
                        acc[NEG, c] += s[3]
                        acc[CORRECT, c] += s[4]
                        acc[SQ, c] += s[5]
                        bad_count += s[6]
                        if rows_b:
                            if general:
                                _add_to_rows_general(xb, yb, buf, rowtot, rowcnt, ignore,
                                                     has_ignore, nan_mode)
                            else:
                                add_to_rows(buf, rowtot)
                        elif rows_a:
                            i = 2 * ((a * c_count + c) * n_bblocks + blk)
                            side[i] += s[0]
                            side[i + 1] += s[1]
                    if rows_b:
                        if general:
                            r = _row_moments_general(rowtot, rowcnt, m)
                        else:
                            r = _row_moments(rowtot, m, np.float64(c_count))
                        acc[RSQ, 0] += r[0]
                        acc[RSQN, 0] += r[1]
                        acc[RNSQ, 0] += r[2]
            n_bad[k] = bad_count

    return task, SUM_FLAGS


def _rows_task_for(softplus_core, loop):
    """One rows task: rows ``k*rows .. (k+1)*rows`` as flat memory, in lines of
    ``width`` elements (a whole number of rows; the per-class factors repeated
    along a line).  One loop per line computes each element's loss and adds
    it, its square, its target and its correctness into a per-position float64
    sum: no sum runs across the loop, so it vectorises without ``reassoc`` and
    the transcendental keeps its compensation.  The line's losses are kept in
    float64 for its rows' moments (:func:`line_rows`).  The positions are
    folded into classes at the end, into ``partials[k]`` (N_STATS, C).  Targets
    are smoothed as ``y * keep + half``.
    """
    general_loop = loop == ROWS_GENERAL
    write_loop = loop == ROWS_WRITE
    unit = loop == ROWS_UNIT  # constant factors fold away
    # With per-class factors and 16 vector registers (AVX2), the losses first, in a loop
    # of their own (10% faster there); with AVX-512's 32, one loop (10% faster there).
    # Measured before the loops were interleaved; with them interleaved, splitting the
    # AVX-512 loop too ran no faster (one thread, (N, 20) float32 with pos_weight).
    split = not unit and not numba_avx512()

    @scalar(interleave=True)
    def line_losses(xs, ys, ws, ps, keep, half, lrow):
        """lrow[j] = loss of element j of a line (the split loop)."""
        for j in range(xs.size):
            xv = np.float64(xs[j])
            lrow[j] = fast_loss(xv, np.float64(ys[j]) * keep + half, ws[j], ps[j],
                                softplus_core(abs(xv)), False)

    @scalar(interleave=True)
    def line_stats(xs, ys, ws, ps, keep, half, dst, lrow, a_loss, a_pos, a_cor, a_sq,
                   moments):
        """Add each element of a line into its position's sums (loss, target, correct;
        with ``moments`` the squared loss too, and the loss kept in ``lrow``), writing
        the losses into ``dst`` (the write loop); ``split``: the losses are in ``lrow``
        already.  Returns the number of targets outside [0, 1] (a NaN shows in
        ``a_loss``)."""
        bad_count = 0
        for j in range(xs.size):
            xv = np.float64(xs[j])
            yv = np.float64(ys[j])
            if split:
                loss = lrow[j]
            elif unit:
                loss = fast_loss(xv, yv * keep + half, 1.0, 1.0, softplus_core(abs(xv)), True)
            else:
                loss = fast_loss(xv, yv * keep + half, ws[j], ps[j], softplus_core(abs(xv)),
                                 False)
            if write_loop:
                dst[j] = loss
            if moments:  # loop-invariant: LLVM unswitches the loop
                if not split:  # (split: the losses are in lrow already)
                    lrow[j] = loss
                a_sq[j] += loss * loss
            a_loss[j] += loss
            a_pos[j] += yv
            a_cor[j] += 1.0 if (xv > 0.0) == (yv >= 0.5) else 0.0
            bad_count += (yv < 0.0) | (yv > 1.0)  # a NaN: in a_loss
        return bad_count

    def task(xp, yp, wvp, pvp, wfp, pfp, outp, sidep, partp, badp, scrp, oscrp, ip, fp, k0,
             k1):
        (x, y, wvec, pvec, wf, pf, out, side, partials, n_bad, scratch, oscratch, smooth, ignore,
         has_ignore, nan_mode, write_out) = _arrays(xp, yp, wvp, pvp, wfp, pfp, outp, sidep,
                                                    partp, badp, scrp, oscrp, ip, fp)
        g = span(view(ip, N_INTS + 5), N_INTS, 5)
        n_rows, c_count, width, rows, moments = g[0], g[1], g[2], g[3], g[4]
        w_line = span(scratch, 0, width)
        p_line = span(scratch, width, width)
        lrow = span(scratch, 2 * width, width)
        lcnt = span(scratch, 3 * width, width)
        wbuf = span(scratch, 4 * width, width)
        pbuf = span(scratch, 5 * width, width)
        a_loss = span(scratch, (6 + LOSS) * width, width)
        a_count = span(scratch, (6 + COUNT) * width, width)
        a_pos = span(scratch, (6 + POS) * width, width)
        a_neg = span(scratch, (6 + NEG) * width, width)
        a_cor = span(scratch, (6 + CORRECT) * width, width)
        a_sq = span(scratch, (6 + SQ) * width, width)
        acc = span(scratch, 6 * width, N_LINE_STATS * width)
        for k in range(k0, k1):
            lo_all = k * rows * c_count
            hi_all = min(n_rows, (k + 1) * rows) * c_count
            use_wf = wf.size > 0
            use_pf = pf.size > 0
            general = has_ignore or nan_mode != NAN_ERROR
            keep = 1.0 - smooth
            half = 0.5 * smooth
            for j in range(width):
                w_line[j] = wvec[j % c_count]
                p_line[j] = pvec[j % c_count]
            for j in range(acc.size):
                acc[j] = 0.0
            bad_count = 0
            r_aa = 0.0
            r_an = 0.0
            r_nn = 0.0
            for lo in range(lo_all, hi_all, width):
                m = min(hi_all, lo + width) - lo
                xs = span(x, lo, m)
                ys = span(y, lo, m)
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
                if general_loop:
                    dst = span(out, lo, m) if write_out else span(oscratch, 0, m)
                    for j in range(m):
                        xv = np.float64(xs[j])
                        yv = np.float64(ys[j])
                        skip, bad = element_flags(xv, yv, ignore, has_ignore, nan_mode)
                        loss = element_loss(xv, yv * keep + half, ws[j], ps[j],
                                            softplus_core(abs(xv)))
                        one = 0.0 if skip else 1.0
                        kept = 0.0 if skip else loss
                        dst[j] = np.nan if skip else loss
                        lrow[j] = kept
                        lcnt[j] = one
                        a_loss[j] += kept
                        a_sq[j] += kept * kept
                        a_count[j] += one
                        a_pos[j] += 0.0 if skip else yv
                        a_neg[j] += 0.0 if skip else 1.0 - yv
                        a_cor[j] += one if (xv > 0.0) == (yv >= 0.5) else 0.0
                        bad_count += bad
                else:
                    dst = span(out, lo, m if write_loop else 0)
                    if split:
                        line_losses(xs, ys, ws, ps, keep, half, lrow)
                    bad_count += line_stats(xs, ys, ws, ps, keep, half, dst, lrow, a_loss,
                                            a_pos, a_cor, a_sq, moments)
                if moments:
                    r = line_rows(lrow, lcnt, m, c_count, general_loop)
                    r_aa += r[0]
                    r_an += r[1]
                    r_nn += r[2]
            if not general_loop:  # a NaN loss (see fast_loss): the caller takes the NumPy tier
                for j in range(width):
                    bad_count += a_loss[j] != a_loss[j]
            stats = partials[k]
            for s in range(N_LINE_STATS):
                for q in range(width // c_count):
                    for c in range(c_count):
                        stats[s, c] += acc[s * width + q * c_count + c]
            if not general:  # every element counted: counts follow from the row count
                for c in range(c_count):
                    stats[COUNT, c] = (hi_all - lo_all) // c_count
                    stats[NEG, c] = stats[COUNT, c] - stats[POS, c]
            stats[RSQ, 0] += r_aa
            stats[RSQN, 0] += r_an
            stats[RNSQ, 0] += r_nn
            n_bad[k] = bad_count

    task.line_losses, task.line_stats = line_losses, line_stats  # (for the tests)
    return task, ELEMENT_FLAGS


def _task_for(form: Form):
    """The form's task loop (its entry point) and its flags."""
    core = _CORES[form.bits]
    if form.kernel == "planes":
        return _planes_task_for(_block_losses_for(core, form.loop, form.general),
                                form.direct, form.general)
    return _rows_task_for(core, form.loop)


@intrinsic
def _data(typingctx, arr):
    """The data pointer of an array (the prange entry point passes its arrays as the
    tasks take them)."""
    def codegen(context, builder, signature, args):
        return context.make_array(arr)(context, builder, args[0]).data

    return types.CPointer(arr.dtype)(arr), codegen


def _prange_entry_for(form: Form):
    """The form's tasks under numba's ``prange`` (numba's threads; each task with scratch
    of its own): arrays in, as ``bce_cli._launch.run`` has them; ``ints`` as the
    tasks take them."""
    task, flags = _task_for(form)
    serial = scalar(flags)(task)

    def run_tasks(x, y, wvec, pvec, wf, pf, out, side, partials, n_bad, scratch, oscratch, ints,
                  floats, k0, k1):
        for k in prange(k0, k1):
            own = np.empty(scratch.size, dtype=np.float64)
            oown = np.empty(oscratch.size, dtype=oscratch.dtype)
            serial(_data(x), _data(y), _data(wvec), _data(pvec), _data(wf), _data(pf), _data(out),
                   _data(side), _data(partials), _data(n_bad), _data(own), _data(oown),
                   _data(ints), _data(floats), k, k + 1)

    return form_kernel(f"{form.name}_prange", parallel=True)(run_tasks)


def native_signature(sig: str):
    """numba's signature of the pointer entry point for a signature tag of
    ``bce_cli._forms.signature`` (the dtypes of x, y, wf, pf)."""
    x, y, wf, pf = (types.CPointer(numba.from_dtype(np.dtype(t))) for t in sig.split("-"))
    f64 = types.CPointer(types.float64)
    i64 = types.CPointer(types.int64)
    return types.void(x, y, f64, f64, wf, pf, x, f64, f64, i64, f64, x, i64, f64, types.int64,
                      types.int64)


def compile_native(form: Form, sig: str):
    """Compile ``form``'s entry point for signature tag ``sig``: ``(symbol, address, object
    code)``; the object is None when it cannot be saved (numba's cache then keeps the
    form: ``form_kernel``)."""
    task, flags = _task_for(form)
    disp = form_kernel(f"{form.name}.{sig}", parallel=False, flags=flags, wrapper=False,
                       cache=not _native.supported())(task)
    return compile_entry(disp, native_signature(sig))


_PRANGE: dict = {}


def prange_entry(form: Form):
    """The numba dispatcher of ``form``'s ``prange`` entry point (built on first use)."""
    fn = _PRANGE.get(form)
    if fn is None:
        fn = _PRANGE[form] = _prange_entry_for(form)
    return fn
