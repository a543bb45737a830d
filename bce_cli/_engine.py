"""Normalise arrays at the boundary and run them through a tier.

Everything that computes losses goes through :func:`class_stats`, so dtype,
byte order and contiguity are normalised in one place (each distinct array
type is another numba compile) and invalid values are reported the same way.
``bce_cli._tiers`` picks the tier: vectorised NumPy (``_vectorised``), or a
compiled kernel form (``kernels``) when it pays.
"""

from __future__ import annotations

import numpy as np

from . import _tiers, _vectorised
from ._forms import planes_form, planes_geometry, rows_form, rows_geometry
from .errors import BCEInputError, InvalidValueError
from .stats import (
    N_STATS,
    NAN_ERROR,
    NAN_POLICIES,
    OUT_NONE,
    OUT_ONLY,
    OUT_WITH_STATS,
)

NAN_HINT = "skip NaN elements with nan_policy='omit' (--nan-policy omit), or clean the data"
RANGE_HINT = ("targets must lie in [0, 1]; leave unlabelled elements out with "
              "ignore_value (--ignore-value)")


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
                want_out: bool = False, want_stats: bool = True,
                job_elements: int | None = None):
    """Per-class statistics ``(N_STATS, C)`` and, with ``want_out``, per-element losses.

    ``x`` and ``y`` have the same shape; ``class_axis`` is the axis holding the
    classes (``None``: one class, everything pooled).  ``wvec``/``pvec`` are
    per-class float64 vectors of length C (or None); ``wfull``/``pfull`` are
    arrays broadcastable to ``x``'s shape (or None), multiplied with the vectors.
    ``want_stats=False`` (with ``want_out``) lets the kernels skip the sums:
    the input is still validated, but the statistics returned are meaningless.
    ``job_elements``: the size of the whole job this call is part of (streaming),
    for the choice of tier.
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
                                     want_out=want_out, want_stats=want_stats,
                                     job_elements=job_elements)
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
    canon = (a_count, c_count, b_count)
    wf = None if wfull is None else _full(wfull, shape).reshape(canon)
    pf = None if pfull is None else _full(pfull, shape).reshape(canon)
    mode = NAN_POLICIES[nan_policy]
    has_ignore = ignore is not None
    general = has_ignore or mode != NAN_ERROR
    write = OUT_NONE if not want_out else OUT_WITH_STATS if want_stats else OUT_ONLY
    rows = b_count == 1 and c_count > 1
    bits = 32 if x.dtype == np.float32 else 64
    if rows:
        form = rows_form(bits, wvec, pvec, wf is not None, pf is not None, general, write)
    else:
        form = planes_form(bits, wvec, pvec, wf is not None, pf is not None, smooth, general,
                           write)
    out = np.empty(canon, dtype=x.dtype) if want_out else None
    if _tiers.choose(x.size, form, job_elements) == "numpy":
        stats = _vectorised.class_stats(x.reshape(canon), y.reshape(canon), wvec, pvec, wf, pf,
                                        smooth, ignore, mode, out, want_stats)
    else:
        stats = _compiled_stats(form, x, y, canon, wvec, pvec, wf, pf, smooth, ignore, mode,
                                out, write)
    if stats is None:  # an invalid element: find the first one (slow path, only on error)
        raise _first_invalid(x.reshape(shape), y.reshape(shape), class_axis, ignore, mode)
    return stats, (out.reshape(shape) if want_out else None)


def _compiled_stats(form, x, y, canon, wvec, pvec, wf, pf, smooth, ignore, mode, out, write):
    """Run a compiled kernel form over flat views; None when an element is invalid."""
    from . import _launch  # numba: only when the compiled tier pays (bce_cli._tiers)

    a_count, c_count, b_count = canon
    if form.kernel == "rows":
        geom, n_tasks = rows_geometry(a_count, c_count)
        part_shape = (N_STATS, c_count)
    else:
        geom, n_tasks = planes_geometry(a_count, c_count, b_count)
        part_shape = (N_STATS,)
    partials, n_bad = _launch.run(
        form, geom, n_tasks, x.reshape(-1), y.reshape(-1), wvec, pvec,
        _factor_for(wf, x.dtype), _factor_for(pf, x.dtype), smooth,
        0.0 if ignore is None else ignore, ignore is not None, mode,
        out.reshape(-1) if out is not None else np.zeros(0, dtype=x.dtype), write != OUT_NONE,
        part_shape, parallel=False, pool=_tiers.pool() if _tiers.threads() > 1 else None,
        workers=_tiers.threads())
    if n_bad.any():
        return None
    if form.kernel == "rows":
        return np.ascontiguousarray(partials.sum(axis=0))
    n_ablocks = n_tasks // (c_count * geom[4])
    return np.ascontiguousarray(
        partials.reshape(n_ablocks, c_count, geom[4], N_STATS).sum(axis=(0, 2)).T)


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
        what, hint = "target is NaN", NAN_HINT
    elif x_nan.reshape(-1)[flat]:
        what, hint = "logit is NaN", NAN_HINT
    else:
        what, hint = f"target {float(yf.reshape(-1)[flat])!r} is outside [0, 1]", RANGE_HINT
    return InvalidValueError(f"{what} {where}", what=what, index=index, class_index=cls,
                             hint=hint)
