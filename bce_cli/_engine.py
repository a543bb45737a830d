"""Normalise arrays at the boundary and run the kernels.

Everything that computes losses goes through :func:`class_stats`, so dtype,
byte order and contiguity are normalised in one place (each distinct array
type is another numba compile) and invalid values are reported the same way.

Small inputs (at most ``NUMPY_MAX_ELEMENTS``) take a float64 NumPy path with
the same semantics instead: numba's first call in a process costs ~0.4 s of
imports even with its cache warm, far more than such an input takes.
"""

from __future__ import annotations

import numpy as np

from .errors import BCEInputError, InvalidValueError
from .stats import (
    CORRECT,
    COUNT,
    LOSS,
    N_STATS,
    NAN_ERROR,
    NAN_OMIT,
    NAN_POLICIES,
    NEG,
    OUT_NONE,
    OUT_ONLY,
    OUT_WITH_STATS,
    POS,
)

NUMPY_MAX_ELEMENTS = 1 << 16

NAN_HINT = "skip NaN elements with nan_policy='omit' (--nan-policy omit), or clean the data"
RANGE_HINT = ("targets must lie in [0, 1]; leave unlabelled elements out with "
              "ignore_value (--ignore-value)")

_EMPTY3 = np.zeros((0, 0, 0), dtype=np.float64)
_EMPTY2 = np.zeros((0, 0), dtype=np.float64)


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


def class_stats(x, y, *, class_axis: int | None, wvec=None, pvec=None, wfull=None,
                pfull=None, ignore=None, smooth: float = 0.0, nan_policy: str = "error",
                want_out: bool = False, want_stats: bool = True):
    """Per-class statistics ``(N_STATS, C)`` and, with ``want_out``, per-element losses.

    ``x`` and ``y`` have the same shape; ``class_axis`` is the axis holding the
    classes (``None``: one class, everything pooled).  ``wvec``/``pvec`` are
    per-class float64 vectors of length C (or None); ``wfull``/``pfull`` are
    arrays broadcastable to ``x``'s shape (or None), multiplied with the vectors.
    ``want_stats=False`` (with ``want_out``) lets the kernels skip the sums:
    the input is still validated, but the statistics returned are meaningless.
    """
    x, y = np.asarray(x), np.asarray(y)
    if (x.ndim == 2 and class_axis == 1 and x.flags.f_contiguous
            and not x.flags.c_contiguous):
        # Column-major (n, C), as wide tables arrive: run on the (C, n) view
        # instead of copying, and hand back per-element losses in (n, C).
        t = np.transpose
        try:
            stats, out = class_stats(t(x), t(y), class_axis=0, wvec=wvec, pvec=pvec,
                                     wfull=None if wfull is None else t(np.asarray(wfull)),
                                     pfull=None if pfull is None else t(np.asarray(pfull)),
                                     ignore=ignore, smooth=smooth, nan_policy=nan_policy,
                                     want_out=want_out, want_stats=want_stats)
        except InvalidValueError:  # report the first bad element in row order
            raise _first_invalid(as_logits(x), as_targets(y, np.float64), 1, ignore,
                                 NAN_POLICIES[nan_policy]) from None
        return stats, (None if out is None else out.T)
    shape = x.shape
    x = np.ascontiguousarray(as_logits(x))
    y = np.ascontiguousarray(as_targets(y, x.dtype))
    if class_axis is None or shape[class_axis] == 1:
        a_count, c_count, b_count = 1, 1, x.size
    else:
        a_count = int(np.prod(shape[:class_axis], dtype=np.int64))
        c_count = shape[class_axis]
        b_count = int(np.prod(shape[class_axis + 1:], dtype=np.int64))
    wvec = _vector(wvec, c_count)
    pvec = _vector(pvec, c_count)
    rows = b_count == 1 and c_count > 1
    canon = (a_count, c_count) if rows else (a_count, c_count, b_count)
    empty = _EMPTY2 if rows else _EMPTY3
    wf = empty if wfull is None else _full(wfull, shape).reshape(canon)
    pf = empty if pfull is None else _full(pfull, shape).reshape(canon)
    out = np.empty(canon if want_out else (0,) * len(canon), dtype=x.dtype)
    mode = NAN_POLICIES[nan_policy]
    if x.size <= NUMPY_MAX_ELEMENTS:
        x3, y3 = x.reshape(a_count, c_count, b_count), y.reshape(a_count, c_count, b_count)
        stats, losses = _numpy_stats(x3, y3, wvec, pvec,
                                     None if wfull is None else wf.reshape(x3.shape),
                                     None if pfull is None else pf.reshape(x3.shape),
                                     smooth, ignore, mode)
        if stats is None:
            raise _first_invalid(x.reshape(shape), y.reshape(shape), class_axis, ignore, mode)
        if not want_out:
            return stats, None
        with np.errstate(over="ignore"):  # a loss beyond float32's range is inf there
            return stats, losses.astype(x.dtype).reshape(shape)
    from . import kernels  # numba: only for inputs worth compiling for

    has_ignore = ignore is not None
    ignore_value = float(ignore) if has_ignore else 0.0
    write = OUT_NONE if not want_out else OUT_WITH_STATS if want_stats else OUT_ONLY
    general = has_ignore or mode != NAN_ERROR
    use_wf, use_pf = wfull is not None, pfull is not None
    if rows:
        run = kernels.rows_kernel
        form = kernels.rows_form(wvec, pvec, use_wf, use_pf, general, write)
    else:
        run = kernels.planes_kernel
        form = kernels.planes_form(wvec, pvec, use_wf, use_pf, smooth, general, write)
    partials, n_bad = kernels.call(run, (x.reshape(canon), y.reshape(canon), wvec, pvec, wf, pf,
                                         use_wf, use_pf, float(smooth), ignore_value, has_ignore,
                                         mode, out, write), form)
    if n_bad.any():
        raise _first_invalid(x.reshape(shape), y.reshape(shape), class_axis, ignore, mode)
    stats = partials.sum(axis=0) if rows else partials.sum(axis=(0, 2)).T
    return np.ascontiguousarray(stats), (out.reshape(shape) if want_out else None)


def _numpy_stats(x, y, wvec, pvec, wfull, pfull, smooth, ignore, mode):
    """The kernels' statistics for (A, C, B) arrays in plain float64 NumPy.

    Returns ``(stats, losses)``, or ``(None, None)`` when an element is invalid.
    Same formula as the kernels (``bce_cli.kernels.element_loss``) with libm's
    exp and log1p, so both paths are checked against the same reference.
    """
    xf = x.astype(np.float64)
    yf = y.astype(np.float64)
    nan = np.isnan(xf) | np.isnan(yf)
    ignored = (yf == ignore) if ignore is not None else np.zeros(x.shape, dtype=bool)
    with np.errstate(invalid="ignore"):
        bad = ~ignored & ((yf < 0.0) | (yf > 1.0) | (nan if mode == NAN_ERROR else False))
    if bad.any():
        return None, None
    skip = ignored | (nan if mode == NAN_OMIT else False)
    w = wvec[None, :, None] * (1.0 if wfull is None else wfull)
    p = pvec[None, :, None] * (1.0 if pfull is None else pfull)
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
    stats = np.zeros((N_STATS, x.shape[1]), dtype=np.float64)
    stats[LOSS] = np.where(keep, loss, 0.0).sum(axis=(0, 2))
    stats[COUNT] = keep.sum(axis=(0, 2))
    stats[POS] = np.where(keep, yf, 0.0).sum(axis=(0, 2))
    stats[NEG] = np.where(keep, 1.0 - yf, 0.0).sum(axis=(0, 2))
    stats[CORRECT] = (keep & ((xf > 0.0) == (yf >= 0.5))).sum(axis=(0, 2))
    return stats, loss


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


def _first_invalid(x, y, class_axis, ignore, mode) -> InvalidValueError:
    """Find the first invalid element (slow path, only on error) and describe it."""
    yf = y.astype(np.float64) if y.dtype == np.uint8 else y
    x_nan = np.isnan(x)
    y_nan = np.isnan(yf)
    with np.errstate(invalid="ignore"):
        out_of_range = (yf < 0) | (yf > 1)
    bad = out_of_range
    if mode == NAN_ERROR:
        bad = bad | x_nan | y_nan
    if ignore is not None:
        bad &= yf != ignore
    flat = int(np.argmax(bad.reshape(-1)))
    index = tuple(int(i) for i in np.unravel_index(flat, x.shape))
    cls = 0 if class_axis is None else index[class_axis]
    where = f"at index {index}" if len(index) != 1 else f"at index {index[0]}"
    if y_nan.reshape(-1)[flat]:
        msg = f"target is NaN {where}"
        hint = NAN_HINT
    elif x_nan.reshape(-1)[flat]:
        msg = f"logit is NaN {where}"
        hint = NAN_HINT
    else:
        msg = f"target {float(yf.reshape(-1)[flat])!r} is outside [0, 1] {where}"
        hint = RANGE_HINT
    return InvalidValueError(msg, index=index, class_index=cls, hint=hint)
