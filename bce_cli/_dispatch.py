"""Normalise arrays at the boundary and dispatch them to a tier.

Everything that computes losses goes through :func:`class_stats`, so dtype,
byte order and contiguity are normalised in one place (each distinct array
type is another numba compile) and invalid values are reported the same way
(:func:`bce_cli._checks.check_targets`).  ``bce_cli._tiers`` picks the tier:
vectorised NumPy (``_vectorised``), or a compiled kernel form (``kernels``)
when it pays.  ``device="cuda"`` sends the same call to the GPU (``bce_cli._cuda``),
with the same layouts, options, statistics and errors.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from . import _tiers, _vectorised
from ._checks import check_targets
from ._forms import (
    MOMENTS_ALONG_A,
    MOMENTS_ALONG_B,
    MOMENTS_NONE,
    planes_form,
    planes_geometry,
    rows_form,
    rows_geometry,
    signature,
)
from .errors import BCEInputError
from .stats import (
    COUNT,
    LOSS,
    N_ACC_STATS,
    NAN_ERROR,
    NAN_POLICIES,
    NSQ,
    OUT_NONE,
    OUT_ONLY,
    RNSQ,
    RSQ,
    SQ,
    SQN,
)
from .uncertainty import row_moments


class LossOptions(NamedTuple):
    """The options of the loss for one :func:`class_stats` call.

    ``weight``/``pos_weight`` are per-class vectors of length C (or None);
    ``weight_full``/``pos_weight_full`` arrays broadcastable to the logits'
    shape (or None), multiplied with the vectors.  ``ignore`` is the target
    value left out of every sum, ``smoothing`` the label smoothing and
    ``nan_policy`` one of "error", "omit", "propagate".  (A named tuple: one is
    made per batch, and that must cost next to nothing.)
    """

    weight: np.ndarray | None = None
    pos_weight: np.ndarray | None = None
    weight_full: np.ndarray | None = None
    pos_weight_full: np.ndarray | None = None
    ignore: float | None = None
    smoothing: float = 0.0
    nan_policy: str = "error"


def as_logits(x) -> np.ndarray:
    """float32 or float64, native byte order (float16 and integers are upcast)."""
    x = np.asarray(x)
    if x.dtype.kind == "f":
        if x.dtype.itemsize < 4:
            return x.astype(np.float32)
        if x.dtype.itemsize > 8:
            return x.astype(np.float64)
        return x if x.dtype.isnative else x.astype(x.dtype.newbyteorder("="))
    if x.dtype.kind in "biu":
        return x.astype(np.float64)
    raise BCEInputError(f"logits must be numeric, got dtype {x.dtype}")


def as_targets(y, like: np.dtype) -> np.ndarray:
    """Targets as uint8 (from bool, zero-copy) or a float type (ints take the logits' type)."""
    y = np.asarray(y)
    if y.dtype == np.bool_:
        return y.view(np.uint8)
    if y.dtype.kind in "iu":
        return y.astype(like)
    if y.dtype.kind == "f":
        return as_logits(y)
    raise BCEInputError(f"targets must be numeric or bool, got dtype {y.dtype}")


def class_stats(x, y, class_axis: int | None, opts: LossOptions, *,
                write: int = OUT_NONE, job: _tiers.JobTier | None = None,
                moments: bool = False, device: str = "cpu"):
    """Per-class statistics ``(N_STATS, C)`` (rows: axis 0 of ``x``, or each
    element when ``class_axis`` is None) and, unless ``write`` is OUT_NONE,
    per-element losses of ``x``'s shape (else None).

    ``x`` and ``y`` have the same shape; ``class_axis`` is the axis holding the
    classes (``None``: one class, everything pooled).  ``write`` is one of
    ``bce_cli.stats.OUT_*``: with OUT_ONLY the kernels skip the sums (the input
    is still validated, but the statistics returned are meaningless).
    ``job``: the streamed job this call is part of: its size decides the tier
    at its first batch, and that tier is kept (:class:`~bce_cli._tiers.JobTier`).
    ``moments``: also the row moments (rows ``SQ`` .. ``RNSQ``; else they are 0).
    ``device``: "cpu", or "cuda" (``bce_cli._cuda``; device arrays are read in place,
    and the losses of device inputs stay on the device); the GPU also returns the
    rows ``WPOS``, ``WNEG`` (``N_ACC_STATS`` rows in all).
    Raises InvalidValueError at the first invalid element.
    """
    if device == "cuda":
        return _cuda_stats(x, y, class_axis, opts, write, moments)
    x, y = np.asarray(x), np.asarray(y)
    if (x.ndim == 2 and class_axis == 1 and x.flags.f_contiguous
            and not x.flags.c_contiguous):
        # Column-major (n, C), as wide tables arrive: run on the (C, n) view
        # instead of copying, and hand back per-element losses in (n, C).
        stats, out = _run(x.T, y.T, 0, _transposed(opts), write, job, moments)
        out = None if out is None else out.T
    else:
        stats, out = _run(x, y, class_axis, opts, write, job, moments)
    if stats is None:  # an invalid element: find the first one (slow path, only on error)
        check_targets(y, logits=x, class_axis=class_axis, ignore=opts.ignore,
                      nan_policy=opts.nan_policy)
        raise AssertionError("a kernel found an invalid element that check_targets did not")
    return stats, out


def _transposed(opts: LossOptions) -> LossOptions:
    def t(a):
        return None if a is None else np.asarray(a).T

    return opts._replace(weight_full=t(opts.weight_full),
                         pos_weight_full=t(opts.pos_weight_full))


def _layout(shape, class_axis):
    """``(canon, along_b)``: the ``(A, C, B)`` shape the tiers see, and whether each
    position of B is a row for the row moments (1-D data, one class pooled, or a
    column-major table seen as ``(C, n)``: ``class_axis`` 0); else each entry of
    A is a row, which is axis 0 of ``shape`` when ``class_axis`` is 1 (the
    accumulator's layout; the functional API reports no intervals)."""
    size = math.prod(shape)
    if class_axis is None:
        return (1, 1, size), True
    a_count = math.prod(shape[:class_axis])
    c_count = shape[class_axis]
    b_count = math.prod(shape[class_axis + 1:])
    if b_count == 1 and c_count == 1:  # (n, 1): one long run
        return (1, 1, size), True
    return (a_count, c_count, b_count), class_axis == 0 or b_count == 1


def _run(x, y, class_axis, opts: LossOptions, write, job, moments):
    """Normalise, pick a form and a tier, run it; the statistics are None when an
    element is invalid."""
    shape = x.shape
    x = np.ascontiguousarray(as_logits(x))
    y = np.ascontiguousarray(as_targets(y, x.dtype))
    canon, along_b = _layout(shape, class_axis)
    a_count, c_count, b_count = canon
    wvec = _vector(opts.weight, c_count)
    pvec = _vector(opts.pos_weight, c_count)
    wf = None if opts.weight_full is None else _full(opts.weight_full, shape).reshape(canon)
    pf = None if opts.pos_weight_full is None else _full(opts.pos_weight_full,
                                                          shape).reshape(canon)
    mode = NAN_POLICIES[opts.nan_policy]
    ignore, smooth = opts.ignore, opts.smoothing
    general = ignore is not None or mode != NAN_ERROR
    bits = 32 if x.dtype == np.float32 else 64
    if b_count == 1 and c_count > 1:
        form = rows_form(bits, wvec, pvec, wf is not None, pf is not None, general, write)
    else:
        form = planes_form(bits, wvec, pvec, wf is not None, pf is not None, smooth, general,
                           write)
    out = None if write == OUT_NONE else np.empty(canon, dtype=x.dtype)
    sig = signature(x.dtype, y.dtype, *(_factor_dtype(f, x.dtype) for f in (wf, pf)))
    tier = (job.pick(x.size, form, sig) if job is not None
            else _tiers.choose(x.size, form, sig=sig))
    kind, one_element_rows = _moments_kind(moments, write, along_b, c_count)
    stats = None
    if tier != "numpy":
        stats, side = _compiled_stats(form, x, y, canon, kind, wvec, pvec, wf, pf, smooth,
                                      ignore, mode, out)
    if stats is None:
        # The NumPy tier, or the compiled loops found an element they may not have
        # computed right (a NaN, an infinite logit: kernels.fast_loss) or an invalid
        # one: the NumPy tier's careful path decides, with the exact rules.
        stats, side = _vectorised.class_stats(x.reshape(canon), y.reshape(canon), wvec, pvec,
                                              wf, pf, smooth, ignore, mode, out,
                                              write != OUT_ONLY, kind, moments)
    if stats is not None and moments and write != OUT_ONLY:
        _row_moments(stats, side, canon, one_element_rows)
    return stats, (None if out is None else out.reshape(shape))


def _moments_kind(moments, write, along_b, c_count):
    """(kind of row moments a tier adds (``bce_cli._forms.MOMENTS_*``), whether each row
    is one element)."""
    one_element_rows = along_b and c_count == 1  # each element a row: nothing to add up
    kind = (MOMENTS_NONE if not moments or write == OUT_ONLY or one_element_rows
            else MOMENTS_ALONG_B if along_b else MOMENTS_ALONG_A)
    return kind, one_element_rows


def _cuda_stats(x, y, class_axis, opts: LossOptions, write, moments):
    """:func:`class_stats` on the GPU: host arrays are normalised as for the CPU and
    streamed; device arrays are read in place (float32/float64 logits)."""
    from . import _cuda
    from ._device import is_device_array, to_host

    on_device = is_device_array(x)
    if on_device:
        x = _cuda.as_device(x)
        y = _cuda.as_device(y) if is_device_array(y) else _cuda.cuda.to_device(
            as_targets(y, np.dtype(x.dtype)))
        if np.dtype(x.dtype) not in (np.float32, np.float64):
            raise BCEInputError(f"logits on the GPU must be float32 or float64, got "
                                f"{np.dtype(x.dtype)}: convert them there first")
        if np.dtype(y.dtype).kind not in "fbiu":
            raise BCEInputError(f"targets must be numeric or bool, got dtype {y.dtype}")
        if np.dtype(y.dtype) == np.bool_:  # as on the host: bytes (the device has no float(bool))
            y = y.view(np.uint8)
    else:
        x, y = np.asarray(x), np.asarray(y)
    x_given, y_given, axis_given = x, y, class_axis  # an error names the caller's index
    transposed = (len(x.shape) == 2 and class_axis == 1 and _f_only(x, on_device))
    if transposed:  # column-major (n, C): the (C, n) view, as on the CPU
        x, y, class_axis, opts = x.T, y.T, 0, _transposed(opts)
    shape = tuple(x.shape)
    if on_device:
        if not (x.is_c_contiguous() and y.is_c_contiguous()):
            raise BCEInputError("device arrays must be contiguous (C order, or an (n, C) "
                                "array in F order)")
        size = math.prod(shape)
        xk, yk = x.reshape(size), y.reshape(size)
    else:
        xk = np.ascontiguousarray(as_logits(x))
        yk = np.ascontiguousarray(as_targets(y, xk.dtype))
    canon, along_b = _layout(shape, class_axis)
    c_count = canon[1]
    if not on_device:
        xk, yk = xk.reshape(canon), yk.reshape(canon)
    wvec = _vector(opts.weight, c_count)
    pvec = _vector(opts.pos_weight, c_count)
    wf = None if opts.weight_full is None else _full(opts.weight_full, shape).reshape(canon)
    pf = None if opts.pos_weight_full is None else _full(opts.pos_weight_full,
                                                          shape).reshape(canon)
    kind, one_element_rows = _moments_kind(moments, write, along_b, c_count)
    squares = bool(moments) and write != OUT_ONLY  # else the rows SQ.. are zeroed below
    stats, side, out = _cuda.run(xk, yk, canon, wvec, pvec, wf, pf, opts.smoothing, opts.ignore,
                                 NAN_POLICIES[opts.nan_policy], kind, write != OUT_NONE,
                                 squares=squares)
    if stats[_cuda.BAD].any():  # find the first invalid element as the CPU does
        check_targets(to_host(y_given), logits=to_host(x_given), class_axis=axis_given,
                      ignore=opts.ignore, nan_policy=opts.nan_policy)
        raise AssertionError("a kernel found an invalid element that check_targets did not")
    stats = np.ascontiguousarray(stats[:N_ACC_STATS])
    if moments and write != OUT_ONLY:
        _row_moments(stats, side, canon, one_element_rows)
    else:
        stats[SQ:RNSQ + 1] = 0.0
    if out is not None:
        out = out.reshape(shape)
        out = out.T if transposed else out
    return stats, out


def _f_only(x, on_device: bool) -> bool:
    """Whether a 2-D array is column-major and not also row-major."""
    if on_device:
        return x.is_f_contiguous() and not x.is_c_contiguous()
    return x.flags.f_contiguous and not x.flags.c_contiguous


def _row_moments(stats, side, canon, one_element_rows) -> None:
    """Fill the rows SQ .. RNSQ of ``stats``.  A row's part in one class that is one
    element has a*n = its loss and n^2 = its count; when the whole row is one
    element (one class), its moments are its class's.  With rows along B the
    tiers summed the rows' moments; with rows along A, ``side`` holds each
    (entry of A, class, block)'s loss sum and count: folded into rows here (a
    few floats per row and class).  Every tier sums the squared losses (SQ)."""
    if side is None:
        stats[SQN] = stats[LOSS]
        stats[NSQ] = stats[COUNT]
        if one_element_rows:
            stats[RSQ:RNSQ + 1] = stats[[SQ, LOSS, COUNT]]
        return
    a_count, c_count, _ = canon
    sums = side.reshape(a_count, c_count, -1, 2).sum(axis=2)
    stats[SQ:RNSQ + 1] = row_moments(sums[..., 0], sums[..., 1])


def _compiled_stats(form, x, y, canon, moments, wvec, pvec, wf, pf, smooth, ignore, mode,
                    out):
    """Run a compiled kernel form over flat views: ``(stats, side)``, stats None when
    an element is invalid or a loss NaN (:func:`bce_cli.kernels.fast_loss`; see
    :func:`_row_moments` for ``side``)."""
    from . import _launch  # numba: only when the compiled tier pays (bce_cli._tiers)

    a_count, c_count, b_count = canon
    side = None
    if form.kernel == "rows":
        geom, n_tasks = rows_geometry(a_count, c_count, moments == MOMENTS_ALONG_B)
    else:
        geom, n_tasks = planes_geometry(a_count, c_count, b_count, moments)
        if moments == MOMENTS_ALONG_A:
            side = np.zeros(2 * a_count * c_count * geom[4])
    workers = _tiers.kernel_threads()
    partials, n_bad = _launch.run(
        form, geom, n_tasks, x.reshape(-1), y.reshape(-1), wvec, pvec,
        _factor_for(wf, x.dtype), _factor_for(pf, x.dtype), smooth,
        0.0 if ignore is None else ignore, ignore is not None, mode,
        out.reshape(-1) if out is not None else np.zeros(0, dtype=x.dtype), out is not None,
        np.zeros(0) if side is None else side,
        parallel=False, pool=_tiers.pool() if workers > 1 else None, workers=workers)
    if n_bad.any():
        return None, None
    return np.ascontiguousarray(partials.sum(axis=0)), side


def _factor_dtype(f, dtype) -> np.dtype:
    """The dtype :func:`_factor_for` gives ``f`` (without converting it)."""
    return np.dtype(dtype) if f is None or f.dtype == dtype else np.dtype(np.float64)


def _factor_for(f, dtype) -> np.ndarray:
    """A per-element factor as the kernels take it: flat, in the logits' dtype when it
    has it (no copy), else float64; empty (of the logits' dtype) when unused.  So
    the common cases share the signatures that ``bce warmup`` compiles."""
    if f is None:
        return np.zeros(0, dtype=dtype)
    return f.reshape(-1) if f.dtype == dtype else f.reshape(-1).astype(np.float64)


def _vector(v, n: int) -> np.ndarray:
    if v is None:
        return np.ones(n, dtype=np.float64)
    v = np.ascontiguousarray(v, dtype=np.float64).reshape(-1)
    if v.size == 1 and n != 1:
        return np.full(n, v[0])
    return v


def as_weight(a) -> np.ndarray:
    """float32 or float64 weights as they are (no conversion pass), anything else as float64."""
    a = np.asarray(a)
    if a.dtype in (np.float32, np.float64) and a.dtype.isnative:
        return a
    return a.astype(np.float64)


def _full(a, shape) -> np.ndarray:
    return np.ascontiguousarray(np.broadcast_to(as_weight(a), shape))
