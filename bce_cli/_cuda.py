"""The CUDA device: the kernels' statistics on an NVIDIA GPU (``--device cuda``).

**One formula.**  The device functions are compiled from the same Python source
as the CPU kernels: ``element_loss`` and ``element_flags`` of ``bce_cli.kernels``
and the ``log1p(exp(-|x|))`` of ``bce_cli._fastmath``, with only the bit-cast helpers swapped
(``libdevice.longlong_as_double`` and ``double_as_longlong``; on numba's
simulator ``struct`` round trips).  No second copy of the math.  Every input width takes the
full-precision ``log1p_exp_neg`` (0.92 ulp; the GPU's float64 units are not
what limits it): the results then agree with the exact NumPy tier and the
compiled float64 path to rounding, while the CPU's shorter float32 polynomial
(relative error 4.3e-11) differs from both by up to ~4e-11.

**Forms.**  As on the CPU (``bce_cli._forms``), each combination of options is its own
kernel, its options frozen at compile time (:class:`TilesForm`: the factors multiplied
in, the general options, per-element losses, squared losses, row moments, the mapping
of tiles to memory), so the loop carries no code for options it lacks; a call compiles
only its own form (then cached on disk).  Without the general options (ignore value,
NaN policy) an element always counts: the count and ``1 - y`` come from the tile's size
and ``y``'s sum, as in the CPU planes kernel, and ``w*y`` from ``y``'s sum unless weights
vary per element.  Each thread loads ``UNROLL`` (4) elements before it computes any, so
it has that many loads in flight rather than one.

**Geometry.**  Arrays are seen as ``(A, C, B)`` (``bce_cli._dispatch._layout``).
A block of ``THREADS`` threads takes one *tile*, in one of three modes (:func:`geometry`):

* ``RUNS``: a run of ``P = THREADS * per_thread`` positions of B of one entry of A, every
  class of them one after the other, as a CPU planes task does.  Thread ``t`` takes
  positions ``t, t + THREADS, ...``, so neighbouring threads read neighbouring elements.
* ``INTERLEAVED``: rows of ``(N, C)`` (B = 1) with ``2 <= C <= THREADS``, taken as flat
  memory: thread ``t < S`` (``S = C * R``, R = THREADS // C rows per step) always has class
  ``t % C``, reads coalesce, and a block adds each class's columns by a fixed tree
  (:func:`_class_sum`).  Read class by class, each class would take every C-th element.
* ``SPREAD``: short runs of B of several entries of A (or more classes than threads); a
  position's index takes a 32-bit division, not a 64-bit one, which the GPU emulates in
  software (:func:`_position`).

``per_thread`` is ``PER_THREAD`` (64) for one or two classes and less for more, about
``ELEMENTS_PER_THREAD`` (128) elements per thread and tile; at most ``MAX_PER_THREAD``
(16) with the rows' moments along B, which keep a total per position.  INTERLEAVED tiles
take ``PER_THREAD`` steps, times ``C // 8`` from 16 classes on (fewer rows per step: longer
tiles keep the partials a few percent of the data).

**Bit-stable reductions.**  Each thread adds its elements in a fixed order in
float64; a block adds its threads' sums by a fixed tree in shared memory (no
atomics) and writes one partial per tile, statistic and class; a second kernel
adds the partials of each (statistic, class) in tile order (strided per thread,
then the same tree).  The same input and geometry give the same bits on every
run; the CPU tiers add in another order, so results agree to rounding (1e-12
relative is what the tests hold them to).  The kernel counts invalid elements;
the host then finds the first one with ``bce_cli._checks.check_targets``, so an
error names the same row and element as on the CPU.

**Row moments** (``bce_cli.uncertainty``).  Rows along B (1-D data, a column-major
table, rows of ``(N, C)``): each position is a row, and each thread keeps its
positions' row totals over the classes (a local array; INTERLEAVED tiles add each
step's rows through shared memory) and adds their squares;
the per-(row, class) moments follow from the class sums
(``bce_cli._dispatch._row_moments``).  Rows along A (``(N, C, ...)``): a tile
holds one entry of A, and its per-class sums are that (row, class)'s part,
written to ``side`` in the CPU planes kernel's layout and folded into rows on
the host (a few floats per row and class).  The kernel also sums ``w*y`` and
``w*(1-y)`` (the accumulator's ``WPOS``/``WNEG``), so per-element weights need
no host pass.

**Streaming.**  Host arrays go to the GPU in chunks through two slots of pinned
buffers: chunk ``k+1`` is copied on one stream while chunk ``k``'s kernel runs on
another (double buffering); per-element losses come back the same way.  Device
arrays (``__cuda_array_interface__``) are read in place.  Importing this module
imports ``numba.cuda`` (``bce_cli._device`` says first whether it is usable).
"""

from __future__ import annotations

import concurrent.futures
import functools
import math
import os
import struct
import sys
import threading
import warnings
from typing import NamedTuple

import numpy as np
from numba import cuda

from . import _fastmath
from ._device import simulated
from ._forms import (
    MOMENTS_ALONG_A,
    MOMENTS_ALONG_B,
    PLANES_LOOPS,
    PS,
    SMOOTH,
    UNIT,
    WS,
    WSPS,
    planes_form,
)
from ._jit import retarget
from .kernels import NAN_ERROR, element_flags, element_loss
from .stats import (
    CORRECT,
    COUNT,
    LOSS,
    N_ACC_STATS,
    NEG,
    NSQ,
    POS,
    RNSQ,
    RSQ,
    RSQN,
    SQ,
    SQN,
    WNEG,
    WPOS,
)

# Threads per block (a power of two: the tree reductions halve it).  numba's simulator
# runs one Python thread per CUDA thread and a barrier costs all of them: it gets
# blocks of 8 (the same code; only the tiles are smaller), so tests stay quick.
THREADS = 8 if simulated() else 128
PER_THREAD = 64  # positions per thread and tile, at most (one class)
MAX_PER_THREAD = 16  # the same with the rows' moments along B (kept per position)
# about this many elements per thread and tile with many classes (each class of a tile
# ends in a tree reduction over the block: 8 barriers)
ELEMENTS_PER_THREAD = 128
UNROLL = 4  # loads in flight per thread (see _tiles_kernel)
ROW_SHARED = 2 * UNROLL  # rows of shared memory for the row totals of INTERLEAVED tiles
SH_ROWS = max(9, ROW_SHARED)  # the block's shared rows: the nine sums, or those row totals
# How a tile's positions map to memory: RUNS, one run of B (an entry of A each tile);
# INTERLEAVED, whole rows of (N, C) taken as flat memory (C <= THREADS); SPREAD, short
# runs of B of several entries of A (a 32-bit division per position).
RUNS, INTERLEAVED, SPREAD = range(3)
MODES = ("runs", "interleaved", "spread")
BAD = N_ACC_STATS      # the row of the partials that counts invalid elements
N_ROWS = N_ACC_STATS + 1
CHUNK = 1 << 22        # elements per host-to-device chunk (streaming host arrays)
KEEP_BYTES = 64 << 20  # the largest partials kept on the GPU from one call to the next


def _device(fn):
    return cuda.jit(device=True)(fn)


if simulated():
    # The simulator runs device functions as the Python functions they are; its
    # wrapper only swaps the ``cuda`` module in their globals on every call (these
    # use none), a cost per element: pure math functions are called directly there.
    def _device(fn):  # noqa: F811
        return fn

    def _f64_from_bits(bits):
        return struct.unpack("<d", struct.pack("<q", int(bits)))[0]

    def _bits_of_f64(v):
        return struct.unpack("<q", struct.pack("<d", v))[0]

    _MATH = _fastmath.retargeted(_device, _f64_from_bits, _bits_of_f64)

    def _shared_under_a_lock():
        """numba's simulator finds a block's shared array in a dict by the calling line and
        makes it when it is missing, with no lock: two threads of the first block that both
        find it missing make an array each, and their writes never meet (a tree reduction
        then adds uninitialised memory).  Here the lookup and the insertion are one step
        under a lock, as a GPU's single allocation is; same key (file, line), same array."""
        from numba.cuda.simulator import kernelapi

        shared = kernelapi.FakeCUDAShared
        if getattr(shared.array, "locked", False):
            return
        unlocked = shared.array
        lock = threading.Lock()

        def array(self, shape, dtype, alignment=None):
            if alignment is not None:  # numba-cuda's simulator refuses it: let it say so
                return unlocked(self, shape, dtype, alignment=alignment)
            if shape == 0:  # dynamic shared memory: one buffer, no key
                return unlocked(self, shape, dtype)
            caller = sys._getframe(1)
            key = (caller.f_code.co_filename, caller.f_lineno)
            with lock:
                res = self._allocations.get(key)
                if res is None:
                    kind = (kernelapi.numpy_support.as_dtype(dtype)
                            if isinstance(dtype, kernelapi.types.Type) else dtype)
                    res = self._allocations[key] = np.empty(shape, kind)
            return res

        array.locked = True
        shared.array = array

    _shared_under_a_lock()
else:
    from numba.cuda import libdevice

    _MATH = _fastmath.retargeted(_device, libdevice.longlong_as_double,
                                 libdevice.double_as_longlong)

_LOSS = retarget(element_loss, dict(element_loss.py_func.__globals__), _device)
_FLAGS = retarget(element_flags, dict(element_flags.py_func.__globals__), _device)


@cuda.jit(device=True)
def _block_sum(sh, n, tid):
    """Add rows ``0..n-1`` of ``sh`` (n, THREADS) over the threads, by a fixed tree:
    the sums end in column 0."""
    s = THREADS // 2
    while s > 0:
        cuda.syncthreads()
        if tid < s:
            for k in range(n):
                sh[k, tid] += sh[k, tid + s]
        s //= 2
    cuda.syncthreads()


@cuda.jit(device=True)
def _class_sum(sh, n, tid, c_count, r_count):
    """For each class ``c < c_count``, add columns ``c, c + C, ..., c + (R-1) C`` of rows
    ``0..n-1`` of ``sh`` by a fixed tree (R = ``r_count``): the sums end in columns
    ``0..C-1``."""
    s = r_count
    while s > 1:
        h = (s + 1) // 2
        cuda.syncthreads()
        if tid < (s - h) * c_count:
            for k in range(n):
                sh[k, tid] += sh[k, tid + h * c_count]
        s = h
    cuda.syncthreads()


@cuda.jit(device=True)
def _position(q, a_span, n_b):
    """(entry of A, position in B) of a tile's position ``q`` (< THREADS * per_thread),
    for ``a_span`` entries of A of ``n_b`` positions each: no 64-bit division."""
    if a_span == 1:  # a run of B
        return 0, q
    if n_b == 1:  # B = 1, rows of (N, C): an entry of A each
        return q, 0
    qa = np.int64(np.uint32(q) // np.uint32(n_b))  # short runs of B: a 32-bit division
    return qa, q - qa * n_b


class TilesForm(NamedTuple):
    """One compiled tiles kernel (see "Forms" above).

    ``loop``: the factors it multiplies in (``PLANES_LOOPS``); ``general``: ignore value or
    a NaN policy other than "error" (elements can be left out); ``write_out``: per-element
    losses; ``squares``: the sum of squared losses (for standard errors); ``moments``;
    ``mode``: how a tile's positions map to memory (``RUNS``, ``INTERLEAVED``, ``SPREAD``)."""

    loop: int
    general: bool
    write_out: bool
    squares: bool
    moments: int
    mode: int

    @property
    def name(self) -> str:
        return (f"tiles_{PLANES_LOOPS[self.loop]}_{'general' if self.general else 'plain'}"
                f"{'_out' if self.write_out else ''}{'_sq' if self.squares else ''}"
                f"_m{self.moments}_{MODES[self.mode]}")


def _tiles_kernel(form: TilesForm, core=None, **options):
    """The tiles kernel of ``form`` (see "Forms" above), with ``core`` = log1p(exp(-a))
    (default: the full-precision one; ``options``: ``cuda.jit``'s, such as
    ``max_registers``).  The loads of a group of ``UNROLL`` come first: the loop's trip
    count is not known at compile time, so the compiler would not group them itself."""
    core = _MATH["log1p_exp_neg"] if core is None else core
    loop, general, write_out, squares, moments, mode = form
    use_wf = loop in (WS, WSPS)
    use_pf = loop in (PS, WSPS)
    unit = loop == UNIT
    smoothing = loop == SMOOTH
    per_element_w = use_wf or smoothing  # w*y and w*(1-y) summed element by element
    rows_b = moments == MOMENTS_ALONG_B
    rows_a = moments == MOMENTS_ALONG_A
    interleaved = mode == INTERLEAVED
    runs = mode == RUNS

    @_device
    def element(xv, yv, wc, pc, wf, pf, i, keep, half, ignore, has_ignore, nan_mode):
        """(left out?, invalid?, w, loss) of one element."""
        if general:
            skip, bad = _FLAGS(xv, yv, ignore, has_ignore, nan_mode)
        else:
            skip, bad = _FLAGS(xv, yv, 0.0, False, NAN_ERROR)
        if unit:
            wi = 1.0
            pi = 1.0
        elif smoothing:  # per-element factors decided at run time: a rare option
            wi = wc * wf[i] if wf.size > 0 else wc
            pi = pc * pf[i] if pf.size > 0 else pc
        else:
            wi = wc * wf[i] if use_wf else wc
            pi = pc * pf[i] if use_pf else pc
        yl = yv * keep + half if smoothing else yv
        return skip, bad, wi, _LOSS(xv, yl, wi, pi, core(abs(xv)))

    def tiles(x, y, wvec, pvec, wf, pf, smooth, ignore, has_ignore, nan_mode, out, write_,
              geom, partials, side):
        (a_count, c_count, b_count, a_per_tile, n_bblocks, b_step, per_thread, _m,
         first, blk_first, blk_total) = geom
        tile = cuda.blockIdx.x
        tid = cuda.threadIdx.x
        blk = tile % n_bblocks
        a_lo = (tile // n_bblocks) * a_per_tile
        b_lo = blk * b_step
        n_b = min(b_count, b_lo + b_step) - b_lo
        a_span = min(a_count, a_lo + a_per_tile) - a_lo
        n_here = a_span * n_b
        keep = 1.0 - smooth
        half = 0.5 * smooth
        at = first + tile
        sh = cuda.shared.array((SH_ROWS, THREADS), np.float64)
        rowsh = sh  # the row totals' steps end before the sums use it (both behind barriers)
        xs = cuda.local.array(UNROLL, np.float64)
        ys = cuda.local.array(UNROLL, np.float64)
        ix = cuda.local.array(UNROLL, np.int64)
        rowtot = cuda.local.array(MAX_PER_THREAD, np.float64)
        rowcnt = cuda.local.array(MAX_PER_THREAD, np.float64)
        if rows_b and not interleaved:
            for m in range(MAX_PER_THREAD):
                rowtot[m] = 0.0
                rowcnt[m] = 0.0
        r_aa = 0.0
        r_an = 0.0
        r_nn = 0.0
        # INTERLEAVED: rows of (N, C), C <= THREADS, taken as flat memory: thread t < S
        # (S = C * R, R whole rows per step) always has class t % C, and neighbouring
        # threads read neighbouring elements.  Else one class after the other.
        r_step = THREADS // c_count if interleaved else 1
        s_width = r_step * c_count
        passes = 1 if interleaved else c_count
        # INTERLEAVED: this thread's rows left in the tile (none past the S used lanes)
        rows_left = a_span - tid // c_count if interleaved and tid < s_width else 0
        for cp in range(passes):
            c = tid % c_count if interleaved else cp
            s_loss = 0.0
            s_sq = 0.0
            s_count = 0.0
            s_pos = 0.0
            s_neg = 0.0
            s_wy = 0.0
            s_wn = 0.0
            n_cor = 0
            n_bad = 0
            wc = wvec[c]
            pc = pvec[c]
            base = ((a_lo * c_count + c) * b_count + b_lo if not interleaved
                    else a_lo * c_count + tid)
            for m0 in range(0, per_thread, UNROLL):
                for u in range(UNROLL):  # the loads first
                    m = m0 + u
                    if interleaved:
                        ok = m < per_thread and m * r_step < rows_left
                        i = base + m * s_width
                    elif runs:
                        q = tid + m * THREADS
                        ok = m < per_thread and q < n_here
                        i = base + q
                    else:
                        q = tid + m * THREADS
                        ok = m < per_thread and q < n_here
                        qa, qb = _position(q if ok else 0, a_span, n_b)
                        i = ((a_lo + qa) * c_count + c) * b_count + b_lo + qb
                    ix[u] = i if ok else -1
                    xs[u] = float(x[i]) if ok else 0.0
                    ys[u] = float(y[i]) if ok else 0.0
                for u in range(UNROLL):
                    i = ix[u]
                    kept = 0.0
                    one = 0.0
                    if i >= 0:
                        xv = xs[u]
                        yv = ys[u]
                        skip, bad, wi, loss = element(xv, yv, wc, pc, wf, pf, i, keep, half,
                                                      ignore, has_ignore, nan_mode)
                        if write_out:
                            out[i] = math.nan if skip else loss
                        if general:
                            kept = 0.0 if skip else loss
                            one = 0.0 if skip else 1.0
                            s_count += one
                            s_pos += 0.0 if skip else yv
                            s_neg += 0.0 if skip else 1.0 - yv
                        else:
                            kept = loss
                            one = 1.0
                            s_pos += yv
                        s_loss += kept
                        if squares:
                            s_sq += kept * kept
                        if per_element_w:
                            s_wy += 0.0 if skip else wi * yv
                            s_wn += 0.0 if skip else wi * (1.0 - yv)
                        if (not skip) and ((xv > 0.0) == (yv >= 0.5)):
                            n_cor += 1
                        if bad:
                            n_bad += 1
                    if rows_b:
                        if interleaved:
                            rowsh[u, tid] = kept
                            rowsh[UNROLL + u, tid] = one
                        elif m0 + u < per_thread:
                            rowtot[m0 + u] += kept
                            rowcnt[m0 + u] += one
                if rows_b and interleaved:  # the group's rows: totals through shared memory
                    cuda.syncthreads()
                    for j in range(tid, r_step * UNROLL, THREADS):
                        u = j // r_step
                        r0 = (j - u * r_step) * c_count
                        t = 0.0
                        n = 0.0
                        for k in range(c_count):
                            t += rowsh[u, r0 + k]
                            n += rowsh[UNROLL + u, r0 + k]
                        r_aa += t * t
                        r_an += t * n
                        r_nn += n * n
                    cuda.syncthreads()
            sh[0, tid] = s_loss
            sh[1, tid] = s_count
            sh[2, tid] = s_pos
            sh[3, tid] = s_neg
            sh[4, tid] = float(n_cor)
            sh[5, tid] = s_sq
            sh[6, tid] = s_wy
            sh[7, tid] = s_wn
            sh[8, tid] = float(n_bad)
            if interleaved:  # per class: columns c, c + C, ... added by a fixed tree
                if tid >= s_width:
                    for k in range(9):
                        sh[k, tid] = 0.0
                _class_sum(sh, 9, tid, c_count, r_step)
                writer = tid < c_count
                n_count = 0.0
                if writer:  # rows of the tile in class tid
                    n_count = float(a_span)
            else:
                _block_sum(sh, 9, tid)
                writer = tid == 0
                n_count = float(n_here)
            if writer:
                col = tid if interleaved else 0
                count = sh[1, col] if general else n_count
                pos = sh[2, col]
                neg = sh[3, col] if general else count - pos
                partials[LOSS, c, at] = sh[0, col]
                partials[COUNT, c, at] = count
                partials[POS, c, at] = pos
                partials[NEG, c, at] = neg
                partials[CORRECT, c, at] = sh[4, col]
                partials[SQ, c, at] = sh[5, col]
                partials[SQN, c, at] = 0.0
                partials[NSQ, c, at] = 0.0
                partials[RSQ, c, at] = 0.0
                partials[RSQN, c, at] = 0.0
                partials[RNSQ, c, at] = 0.0
                partials[WPOS, c, at] = sh[6, col] if per_element_w else wc * pos
                partials[WNEG, c, at] = sh[7, col] if per_element_w else wc * neg
                partials[BAD, c, at] = sh[8, col]
                if rows_a:  # the tile is one entry of A: its row
                    k = 2 * ((a_lo * c_count + c) * blk_total + blk_first + blk)
                    side[k] = sh[0, col]
                    side[k + 1] = count
            cuda.syncthreads()
        if rows_b:  # the rows' moments (column 0)
            if not interleaved:
                for m in range(per_thread):
                    r_aa += rowtot[m] * rowtot[m]
                    r_an += rowtot[m] * rowcnt[m]
                    r_nn += rowcnt[m] * rowcnt[m]
            sh[0, tid] = r_aa
            sh[1, tid] = r_an
            sh[2, tid] = r_nn
            _block_sum(sh, 3, tid)
            if tid == 0:
                partials[RSQ, 0, at] = sh[0, 0]
                partials[RSQN, 0, at] = sh[1, 0]
                partials[RNSQ, 0, at] = sh[2, 0]

    return cuda.jit(tiles, **options)


@cuda.jit
def _add_partials(partials, total):
    """total[s, c] = the sum over tiles of partials[s, c, tile], in a fixed order: one
    block per (statistic, class), strided per thread (neighbouring threads read
    neighbouring tiles), then the tree."""
    _, c_count, n_tiles = partials.shape
    col = cuda.blockIdx.x
    s = col // c_count
    c = col % c_count
    tid = cuda.threadIdx.x
    acc = 0.0
    k = tid
    while k < n_tiles:
        acc += partials[s, c, k]
        k += THREADS
    sh = cuda.shared.array((1, THREADS), np.float64)
    sh[0, tid] = acc
    _block_sum(sh, 1, tid)
    if tid == 0:
        total[s, c] = sh[0, 0]


def _cached_on_disk(kernel, name: str):
    """``kernel`` with numba-cuda's cache on disk, in bce's cache directory
    (``bce_cli._cache_dirs``) under ``cuda.<name>``, stamped with every source that
    is compiled into it (``CUDA_SOURCES``).  numba-cuda's own cache is stamped with
    the kernel's file alone, and these kernels also compile the math of
    ``_fastmath`` and ``kernels``: an edit there would load a stale kernel.  On an
    H200's host the first call of a process took 5.3 s with an empty cache and 1.1-1.7
    s with this one.  On the simulator, without a writable directory, or with a numba whose
    cache is built otherwise, the kernel is compiled in each process as before."""
    if simulated():
        return kernel
    try:
        from numba.cuda.dispatcher import CUDACache

        from ._cache_dirs import CUDA_SOURCES, cuda_base, cuda_stamp_text, holds_cuda, source_stamp
        from ._jit import _Locator, _locked

        class Locator(_Locator):
            def get_source_stamp(self):
                return source_stamp(CUDA_SOURCES)

        class Impl(CUDACache._impl_class):
            def __init__(self, py_func):  # numba's looks for a locator by the source file
                self._lineno = py_func.__code__.co_firstlineno
                self._locator = locator
                self._filename_base = cuda_base(name)

        class DiskCache(CUDACache):
            _impl_class = Impl

            def save_overload(self, sig, data):
                try:
                    os.makedirs(self._cache_path, exist_ok=True)
                    with _locked(self._cache_path):  # numba's index: read-modify-write
                        super().save_overload(sig, data)
                        stamp = os.path.join(self._cache_path, cuda_base(name) + ".stamp")
                        tmp = f"{stamp}.{os.getpid()}.tmp"
                        with open(tmp, "w", encoding="ascii") as fh:
                            fh.write(cuda_stamp_text())
                        os.replace(tmp, stamp)
                except OSError:  # read-only or full: the kernel still runs
                    pass

        locator = Locator.for_form(name, kernel.py_func.__code__.co_filename, held=holds_cuda)
        if locator is not None:
            kernel._cache = DiskCache(kernel.py_func)
    except Exception:  # another numba-cuda's cache: compile in each process
        pass
    return kernel


_add_partials = _cached_on_disk(_add_partials, "add_partials")
_FORMS: dict = {}


def tiles(form: TilesForm):
    """The tiles kernel of ``form``: made on first use, compiled per argument types on
    first call or loaded from the cache on disk (a call compiles only its own form)."""
    kernel = _FORMS.get(form)
    if kernel is None:
        kernel = _FORMS[form] = _cached_on_disk(_tiles_kernel(form), form.name)
    return kernel


def geometry(a_count: int, c_count: int, b_count: int, moments: int, first: int = 0,
             blk_first: int = 0, blk_total: int | None = None):
    """``(geom, n_tiles, mode)``: geom = (A, C, B, entries of A per tile, blocks of B, B per
    block, positions per thread, moments, index of the first tile in the partials,
    index of the first block of B in ``side`` and blocks of B there (the whole batch's:
    chunks along B write their blocks side by side; default: this chunk's own));
    ``mode``: RUNS, INTERLEAVED or SPREAD."""
    if b_count == 1 and 2 <= c_count <= THREADS and a_count > 1 \
            and moments != MOMENTS_ALONG_A:  # rows of (N, C): whole rows, flat
        # fewer rows per step with more classes: longer tiles keep the partials (one per
        # statistic, class and tile) a few percent of the data
        per_thread = PER_THREAD * max(1, c_count // 8)
        a_per_tile, b_step, n_bblocks = THREADS // c_count * per_thread, 1, 1
        mode = INTERLEAVED
    else:
        most = MAX_PER_THREAD if moments == MOMENTS_ALONG_B else PER_THREAD
        per_thread = max(1, min(most, ELEMENTS_PER_THREAD // max(c_count, 1)))
        positions = THREADS * per_thread
        if b_count >= positions:
            a_per_tile, b_step = 1, positions
        else:
            b_step = max(b_count, 1)
            a_per_tile = 1 if moments == MOMENTS_ALONG_A else max(1, positions // b_step)
        n_bblocks = max(1, -(-b_count // b_step))
        mode = RUNS if a_per_tile == 1 or a_count <= 1 else SPREAD
    n_tiles = -(-a_count // a_per_tile) * n_bblocks
    return ((a_count, c_count, b_count, a_per_tile, n_bblocks, b_step, per_thread, moments,
             first, blk_first, n_bblocks if blk_total is None else blk_total), n_tiles, mode)


def _configured(kernel, n_blocks: int, stream):
    """``kernel[n_blocks, THREADS, stream]`` without numba's warning about grids of fewer
    than 128 blocks: small grids are meant here (the sum of the partials, small batches),
    and a user's script should not print it or fail on it under ``-W error``."""
    if n_blocks >= 128:  # no warning to filter (catch_warnings is process-wide state)
        return kernel[n_blocks, THREADS, stream]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*will likely result in GPU under-utiliz")
        return kernel[max(n_blocks, 1), THREADS, stream]


def as_device(a):
    """A device array as numba sees it, read in place (no copy)."""
    if getattr(type(a), "__cuda_ndarray__", False):
        return a
    return cuda.as_cuda_array(a)


def _empty_on_device(dtype):
    return cuda.device_array(0, dtype=dtype)


class _Kept:
    """Device buffers kept from one call to the next: every call ends synchronised, so
    the next may reuse them.  Allocating and copying them anew (numba allocates with
    the driver, no pool) was about a third of a call's time on resident data: on an
    H200, 0.9-1.0 ms of ``bce_with_logits``'s 2.3-3.3 ms around kernels of 1.3-2.5 ms."""

    factors: dict = {}  # the class factors' bytes: their device copy (a few, small)
    partials: dict = {}  # shape: the partials, or the totals, of that shape (the latest)

    @classmethod
    def factors_on_device(cls, vec, stream):
        vec = np.ascontiguousarray(vec, dtype=np.float64)
        key = vec.tobytes()
        dev = cls.factors.get(key)
        if dev is None:
            if len(cls.factors) >= 16:
                cls.factors.clear()
            dev = cls.factors[key] = cuda.to_device(vec, stream=stream)
        return dev

    @classmethod
    def array(cls, shape, stream):
        """A float64 device array of ``shape`` (every entry written by the kernels); kept
        for the next call up to ``KEEP_BYTES`` (a larger one is the call's own)."""
        dev = cls.partials.get(len(shape))
        if dev is None or dev.shape != shape:
            dev = cuda.device_array(shape, dtype=np.float64, stream=stream)
            if dev.nbytes <= KEEP_BYTES:
                cls.partials[len(shape)] = dev
            else:
                cls.partials.pop(len(shape), None)
        return dev


STAGING_THREADS = min(8, os.cpu_count() or 1)
STAGING_PIECE = 1 << 20  # elements: smaller copies into pinned memory are not split


@functools.lru_cache(maxsize=1)
def _stagers():
    return concurrent.futures.ThreadPoolExecutor(STAGING_THREADS, "bce-staging")


def _stage(dst, src) -> None:
    """``dst[...] = src`` for a chunk ``(A, C, B)`` going into pinned memory, in pieces on
    a few threads (NumPy's copy releases the GIL): one thread copies a few GB/s, less
    than the bus to the GPU takes, and the stream of chunks waits on it."""
    axis = 0 if dst.shape[0] > 1 else 2
    pieces = min(STAGING_THREADS, dst.size // STAGING_PIECE, dst.shape[axis])
    if pieces < 2:
        np.copyto(dst, src)
        return
    bounds = np.linspace(0, dst.shape[axis], pieces + 1).astype(int)
    cut = [slice(None)] * 3
    jobs = []
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        cut[axis] = slice(lo, hi)
        jobs.append(_stagers().submit(np.copyto, dst[tuple(cut)], src[tuple(cut)]))
    for job in jobs:
        job.result()


class _Slot:
    """One of the two sets of pinned host and device buffers of a stream of chunks."""

    def __init__(self):
        self.host = {}
        self.dev = {}
        self.done = None  # an event: the slot's last kernel and copies have finished
        self.pending = None  # (pinned losses, destination) to copy once done

    def buffers(self, name, n, dtype):
        dtype = np.dtype(dtype)
        h = self.host.get(name)
        if h is None or h.size < n or h.dtype != dtype:
            h = self.host[name] = cuda.pinned_array(max(n, 1), dtype=dtype)
            self.dev[name] = cuda.device_array(max(n, 1), dtype=dtype)
        return h[:n], self.dev[name][:n]

    def finish(self):
        if self.done is not None:
            self.done.synchronize()
            self.done = None
        if self.pending is not None:
            src, dst = self.pending
            dst[...] = src.reshape(dst.shape)
            self.pending = None


class _Streams:
    """The process's copy and compute streams and the two slots (made on first use)."""

    _made = None

    @classmethod
    def get(cls):
        if cls._made is None:
            cls._made = (cuda.stream(), cuda.stream(), [_Slot(), _Slot()])
        return cls._made


def _chunks(canon, chunk: int):
    """Index ranges ``(a0, a1, b0, b1)`` of the chunks of ``(A, C, B)``: whole entries of A
    when A > 1, else runs of B; about ``chunk`` elements each."""
    a_count, c_count, b_count = canon
    if a_count > 1:
        step = max(1, chunk // max(c_count * b_count, 1))
        return [(a, min(a_count, a + step), 0, b_count) for a in range(0, a_count, step)]
    step = max(1, chunk // max(c_count, 1))
    return [(0, 1, b, min(b_count, b + step)) for b in range(0, b_count, step)] or [(0, 1, 0, 0)]


_RUN_LOCK = threading.Lock()


def run(*args, **kwargs):
    """:func:`_run` for one caller at a time: the process's streams, pinned slots and
    kept buffers (:class:`_Kept`) serve every call, so calls from several threads take
    turns (the GPU would run their kernels one after the other anyway)."""
    with _RUN_LOCK:
        return _run(*args, **kwargs)


def _run(x, y, canon, wvec, pvec, wf, pf, smooth, ignore, nan_mode, moments, write_out: bool,
         chunk: int | None = None, squares: bool = True):
    """Statistics ``(N_ACC_STATS + 1, C)`` (the last row: invalid elements per class),
    ``side`` (host; with moments along A) and the per-element losses (host ``out``
    for host inputs, a device array for device inputs; None without ``write_out``).

    ``x``, ``y``: C-contiguous host arrays of shape ``canon`` (streamed in chunks) or
    device arrays of that many elements (read in place); ``wf``/``pf``: host arrays
    of shape ``canon`` or None; ``squares``: sum the squared losses (row ``SQ``; else 0)."""
    a_count, c_count, b_count = canon
    on_device = not isinstance(x, np.ndarray)
    general = ignore is not None or nan_mode != NAN_ERROR
    loop = planes_form(64, wvec, pvec, wf is not None, pf is not None, smooth, general,
                       write_out).loop

    def kernel(mode):
        return tiles(TilesForm(loop, general, bool(write_out), bool(squares), moments, mode))

    copy_s, compute_s, slots = _Streams.get()
    wvec_d = _Kept.factors_on_device(wvec, compute_s)
    pvec_d = _Kept.factors_on_device(pvec, compute_s)
    ranges = ([(0, a_count, 0, b_count)] if on_device
              else _chunks(canon, CHUNK if chunk is None else chunk))
    # Blocks of B in ``side`` (moments along A): chunks along A keep B whole, so they
    # share one set of blocks; chunks along B (A = 1) each add their own.
    blocks = [geometry(a1 - a0, c_count, b1 - b0, moments)[0][4] for a0, a1, b0, b1 in ranges]
    along_b = a_count <= 1
    blk_total = sum(blocks) if along_b else blocks[0]
    plans, n_tiles, blk_first = [], 0, 0
    for (a0, a1, b0, b1), n_blocks in zip(ranges, blocks, strict=True):
        plans.append(geometry(a1 - a0, c_count, b1 - b0, moments, first=n_tiles,
                              blk_first=blk_first, blk_total=blk_total))
        n_tiles += plans[-1][1]
        blk_first += n_blocks if along_b else 0
    partials = _Kept.array((N_ROWS, c_count, max(n_tiles, 1)), compute_s)
    side = side_h = None
    if moments == MOMENTS_ALONG_A:
        side = cuda.device_array(2 * a_count * c_count * blk_total, dtype=np.float64,
                                 stream=compute_s)
    out = None
    if write_out:
        out = (cuda.device_array(a_count * c_count * b_count, dtype=x.dtype, stream=compute_s)
               if on_device else np.empty(canon, dtype=x.dtype))
    empty = _empty_on_device(np.float64)
    if on_device:
        flat = (x, y, wf, pf)
        dev = [a if a is not None else empty for a in
               (flat[0], flat[1],
                None if wf is None else cuda.to_device(wf.reshape(-1), stream=compute_s),
                None if pf is None else cuda.to_device(pf.reshape(-1), stream=compute_s))]
        _configured(kernel(plans[0][2]), n_tiles, compute_s)(
            dev[0], dev[1], wvec_d, pvec_d, dev[2], dev[3], float(smooth), float(ignore or 0.0),
            ignore is not None, int(nan_mode), out if write_out else _empty_on_device(x.dtype),
            bool(write_out), plans[0][0], partials, side if side is not None else empty)
    else:
        for k, ((a0, a1, b0, b1), (geom, n, mode)) in enumerate(zip(ranges, plans,
                                                                     strict=True)):
            slot = slots[k % 2]
            slot.finish()  # its previous chunk's kernel and copies are done
            shape = (a1 - a0, c_count, b1 - b0)
            size = shape[0] * shape[1] * shape[2]
            args = []
            for name, arr in (("x", x), ("y", y), ("wf", wf), ("pf", pf)):
                if arr is None:
                    args.append(empty)
                    continue
                h, d = slot.buffers(name, size, arr.dtype)
                _stage(h.reshape(shape), arr[a0:a1, :, b0:b1])  # into pinned memory
                d.copy_to_device(h, stream=copy_s)
                args.append(d)
            copied = cuda.event()
            copied.record(copy_s)
            copied.wait(compute_s)
            o_h = o_d = None
            if write_out:
                o_h, o_d = slot.buffers("out", size, x.dtype)
            s = None
            if side is not None:
                per_a = 2 * c_count * blk_total
                s = side[a0 * per_a:a1 * per_a]
            _configured(kernel(mode), n, compute_s)(
                args[0], args[1], wvec_d, pvec_d, args[2], args[3], float(smooth),
                float(ignore or 0.0), ignore is not None, int(nan_mode),
                o_d if write_out else _empty_on_device(x.dtype), bool(write_out), geom,
                partials, s if s is not None else empty)
            done = cuda.event()
            done.record(compute_s)
            if write_out:  # losses back on the copy stream, after the kernel
                done.wait(copy_s)
                o_d.copy_to_host(o_h, stream=copy_s)
                done = cuda.event()
                done.record(copy_s)
                slot.pending = (o_h, out[a0:a1, :, b0:b1])
            slot.done = done
        for slot in slots:
            slot.finish()
    total = _Kept.array((N_ROWS, c_count), compute_s)
    _configured(_add_partials, N_ROWS * c_count, compute_s)(partials, total)
    stats = total.copy_to_host(stream=compute_s)
    if side is not None:
        side_h = side.copy_to_host(stream=compute_s)
    compute_s.synchronize()
    return stats, side_h, out
