"""Generator of awkward arrays: special values, dtypes, byte order, strides, sizes."""

from __future__ import annotations

import numpy as np

SPECIAL = [0.0, -0.0, 1e-45, 1e-30, 1e-7, 0.5, 1.0, 15.0, 17.0, 88.7, 89.0, 103.9, 104.0,
           700.0, 746.0, 1e30, 3e38]


def special_logits(dtype):
    vals = np.array(SPECIAL, dtype=np.float64)
    vals = np.concatenate([vals, -vals, [np.inf, -np.inf]])
    with np.errstate(over="ignore"):
        return vals.astype(dtype)


def variants(x, y):
    """(name, x, y) for layouts and dtypes that must all give the same losses."""
    yield "contiguous", x, y
    for dt in (np.float16, np.float32, np.float64):
        if np.can_cast(x.dtype, dt, "safe") or dt == x.dtype:
            yield f"{np.dtype(dt).name}", x.astype(dt), y
    be = x.astype(x.dtype.newbyteorder(">"))
    yield "big-endian", be, y.astype(y.dtype.newbyteorder(">")) if y.dtype.itemsize > 1 else y
    stride_x = np.repeat(x, 2)[::2]
    stride_y = np.repeat(y, 2)[::2]
    yield "strided", stride_x, stride_y
    yield "reversed", x[::-1], y[::-1]
    yield "fortran-2d", np.asfortranarray(np.stack([x, x])), np.asfortranarray(np.stack([y, y]))
    ro_x = x.copy()
    ro_x.setflags(write=False)
    yield "read-only", ro_x, y
    yield "bool-targets", x, y.astype(bool) if np.isin(y, (0, 1)).all() else y
    yield "int-targets", x, y.astype(np.int8) if np.isin(y, (0, 1)).all() else y
