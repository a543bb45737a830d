"""Which compiled loop a call runs, its name, and how its work is cut into tasks (no numba).

Two kernels cover every layout (classes on one axis):

* planes: ``x`` of shape ``(A, C, B)``, C-contiguous; each class's elements come
  in contiguous runs along ``B`` (1-D data is ``(1, 1, N)``, masks ``[B, C, H, W]``
  are ``(B, C, H*W)``).  A task is every class of about ``CHUNK`` elements.
* rows: ``x`` of shape ``(N, C)``, C-contiguous, ``C > 1``; a task is a block of
  whole rows taken as flat memory, in lines of ``line_length(C)`` elements.

A *form* is one loss loop of one kernel with its options frozen at compile time
(which factors it multiplies in, whether it writes losses, the float width of
the logits): each form is its own compiled function, so a call compiles only
the loop it runs, and the form's name is also the name of its cache file.
Task sizes depend on the shape only, never on the thread count, and the
per-task float64 partials are added in task order: results are bit-identical
on any number of threads.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np

from .stats import OUT_ONLY

# Elements per task (one float64 partial per statistic and class), and per
# scratch block inside a planes task (fits in L1 with its inputs).
CHUNK = 1 << 15
BLOCK = 1 << 10
# Planes loops: the factors the loop multiplies in; DIRECT (a flag) writes
# losses only, straight into ``out``.
UNIT, SCALAR, WS, PS, WSPS, SMOOTH = range(6)
PLANES_LOOPS = ("unit", "scalar", "ws", "ps", "wsps", "smooth")
# Rows loops: unweighted sums, weighted sums, sums and losses, general options.
ROWS_UNIT, ROWS_WEIGHTED, ROWS_WRITE, ROWS_GENERAL = range(4)
ROWS_LOOPS = ("unit", "weighted", "write", "general")
# The metrics' histogram pass (bce_cli._metric_kernels): one loop, over blocks of
# METRICS_BLOCK elements, its sums in METRICS_LANES interleaved copies; its entry
# point's integer arguments (A, C, B, len(wf), len(edges), the state's width,
# has_ignore, nan_mode).
METRICS_LOOPS = ("hist",)
METRICS_BLOCK = 512
METRICS_LANES = 4
N_METRIC_INTS = 8
LOOPS = {"planes": PLANES_LOOPS, "rows": ROWS_LOOPS, "metrics": METRICS_LOOPS}
# Rows kernel: lines of LINE_MIN..LINE_MAX elements (see line_length); tasks of at
# least CHUNK elements and, for wide C, CHUNK_ROWS rows (partials, 5 floats per class
# and task, stay small next to the data), unless that leaves fewer than CHUNKS_WANTED
# tasks: then down to MIN_CHUNK_ROWS rows, so that many threads still have work.
LINE_MIN = 128
LINE_MAX = 512
CHUNK_ROWS = 256
MIN_CHUNK_ROWS = 16
CHUNKS_WANTED = 64


class Form(NamedTuple):
    """One compiled loop: ``kernel`` is "planes", "rows" or "metrics"; ``loop`` an
    index into PLANES_LOOPS / ROWS_LOOPS / METRICS_LOOPS; ``bits`` 32 or 64 (the
    logits' float width picks the polynomial); ``direct``: planes only, losses
    written without sums; ``general``: planes only, the general options (an ignore
    value or a NaN policy other than "error": elements may be left out), compiled apart
    so that the common loop carries none of their code (it compiles in 0.8 s less)."""

    kernel: str
    loop: int
    bits: int
    direct: bool = False
    general: bool = False

    @property
    def name(self) -> str:
        return (f"{self.kernel}_{LOOPS[self.kernel][self.loop]}_f{self.bits}"
                f"{'_general' if self.general else ''}{'_direct' if self.direct else ''}")


def _constant_ones(wvec, pvec) -> bool:
    return bool(np.all(wvec == 1.0) and np.all(pvec == 1.0))


def planes_form(bits, wvec, pvec, use_wfull, use_pfull, smooth, general, write_out) -> Form:
    """The planes form for these options."""
    if smooth != 0.0:
        loop = SMOOTH
    elif use_wfull or use_pfull:
        loop = WSPS if use_wfull and use_pfull else WS if use_wfull else PS
    elif _constant_ones(wvec, pvec):
        loop = UNIT
    else:
        loop = SCALAR
    return Form("planes", loop, bits, write_out == OUT_ONLY and not general, general)


def rows_form(bits, wvec, pvec, use_wfull, use_pfull, general, write_out) -> Form:
    """The rows form for these options (label smoothing is a run-time factor here)."""
    if general:
        loop = ROWS_GENERAL
    elif write_out:
        loop = ROWS_WRITE
    elif not use_wfull and not use_pfull and _constant_ones(wvec, pvec):
        loop = ROWS_UNIT
    else:
        loop = ROWS_WEIGHTED
    return Form("rows", loop, bits)


def all_forms() -> list[Form]:
    """Every form there is (what ``bce warmup`` compiles)."""
    forms = [Form("planes", loop, bits, direct, general) for bits in (32, 64)
             for loop in range(len(PLANES_LOOPS))
             for direct, general in ((False, False), (False, True), (True, False))]
    forms += [Form("rows", loop, bits) for bits in (32, 64) for loop in range(len(ROWS_LOOPS))]
    forms += [Form("metrics", 0, bits) for bits in (32, 64)]
    return forms


@functools.lru_cache(maxsize=64)
def signature(x_dtype, y_dtype, wf_dtype, pf_dtype) -> str:
    """The tag of a compiled entry point's argument types: the dtypes of the logits,
    targets and per-element factors (the other arguments are float64 and int64)."""
    return "-".join(np.dtype(d).name for d in (x_dtype, y_dtype, wf_dtype, pf_dtype))


def common_signatures(form: Form) -> tuple[str, ...]:
    """The signatures bce passes without unusual inputs (what ``bce warmup`` compiles):
    bool targets (as uint8) or targets of the logits' type, factors of the logits'
    type."""
    x = np.float32 if form.bits == 32 else np.float64
    factor = np.float64 if form.kernel == "metrics" else x  # the metrics' weights: float64
    return tuple(signature(x, y, factor, factor) for y in (np.uint8, x))


def metrics_scratch_sizes(n_cal: int, width: int) -> tuple[int, int]:
    """Scratch of a run of classes of the metrics' pass (``n_cal`` calibration bins, a
    state ``width`` wide): (float64 elements, int64 elements).  Also compiled into the
    kernel, which cuts its buffers from them."""
    return (6 * METRICS_BLOCK + METRICS_LANES * 4 * n_cal + METRICS_LANES + width,
            3 * METRICS_BLOCK + METRICS_LANES * 2 * n_cal + 3)


def scratch_sizes(form: Form, geom) -> tuple[int, int]:
    """Scratch a run of tasks needs: (float64 elements, elements of the losses' dtype).
    Planes: a block's losses and, with rows along B, its rows' totals and counts;
    rows: the line's factors, losses, counts and per-position sums (``geom[2]``: the
    line's length), and the general loop's losses when they are not written out."""
    if form.kernel == "rows":
        from .stats import SQ

        width = int(geom[2])
        return (6 + SQ + 1) * width, width
    return 3 * BLOCK, 0


# Row moments (bce_cli.uncertainty) a kernel adds: none, with each position of B a
# row (the kernel sums them), or with each entry of A a row (per-(row, class) sums
# into the caller's ``side`` array).
MOMENTS_NONE, MOMENTS_ALONG_B, MOMENTS_ALONG_A = range(3)


def planes_geometry(a_count: int, c_count: int, b_count: int,
                    moments: int = MOMENTS_NONE):
    """``(geom, n_tasks)`` of the planes kernel: a task covers every class of about
    CHUNK elements, a block of B (a whole number of BLOCKs) when a row of A is
    long, else a block of whole rows of A.  ``geom`` = (A, C, B, rows of A per
    task, blocks of B, B per block, moments)."""
    plane = c_count * b_count
    if plane >= CHUNK:
        a_per_task = 1
        b_step = min(b_count, BLOCK * max(1, CHUNK // (c_count * BLOCK)))
    else:
        a_per_task, b_step = max(1, CHUNK // max(plane, 1)), max(b_count, 1)
    n_bblocks = max(1, -(-b_count // b_step))
    n_ablocks = -(-a_count // a_per_task)
    geom = (a_count, c_count, b_count, a_per_task, n_bblocks, b_step, moments)
    return geom, n_ablocks * n_bblocks


def line_length(c_count: int) -> int:
    """Elements per line of the rows kernel: ``k * c_count`` for the whole number
    of rows ``k`` that gives a line of LINE_MIN..LINE_MAX elements with the
    fewest left over from multiples of 32 (the vector loop's step); one row
    when C >= LINE_MIN.  Short lines keep the per-position sums in L1 (measured:
    lines of 1024 elements ran 10-30% slower than lines of 128-512)."""
    if c_count >= LINE_MIN:
        return c_count
    best_len, best_rest = 0, 1.0
    for k in range(1, LINE_MAX // c_count + 1):
        length = k * c_count
        if length >= LINE_MIN and (length % 32) / length < best_rest:
            best_len, best_rest = length, (length % 32) / length
    return best_len


def rows_geometry(n: int, c_count: int, moments: bool = False):
    """``(geom, n_tasks)`` of the rows kernel: ``geom`` = (N, C, line length, rows per
    task, row moments?); a task is a whole number of lines (see the constants
    above)."""
    width = line_length(c_count)
    line_rows = width // c_count
    rows = max(CHUNK // c_count, min(CHUNK_ROWS, max(MIN_CHUNK_ROWS, n // CHUNKS_WANTED)))
    rows = line_rows * -(-rows // line_rows)
    return (n, c_count, width, rows, int(moments)), -(-n // rows)
