"""Arrow to NumPy: which Arrow types hold numbers, and the filling of one NumPy array per
role from the record-batch pieces of a batch (nulls per ``nan_policy``, list columns
checked for equal lengths)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from bce_cli.errors import BCEInputError

if TYPE_CHECKING:
    from ._columns import Selection


# ----------------------------------------------------------------------------- types
def value_type(t: pa.DataType) -> pa.DataType:
    return t.value_type if pa.types.is_dictionary(t) else t


def scalar_kind(t: pa.DataType) -> str | None:
    """'float' | 'int' | 'bool' for numeric-like types (dictionary decoded), else None."""
    t = value_type(t)
    if pa.types.is_floating(t):
        return "float"
    if pa.types.is_integer(t):
        return "int"
    if pa.types.is_boolean(t):
        return "bool"
    return None


def is_list(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)


def nested(t: pa.DataType) -> bool:
    """A struct, list, map or union type (dictionary-decoded): no use as a join key."""
    t = value_type(t)
    return pa.types.is_nested(t) or pa.types.is_union(t)


def column_kind(t: pa.DataType) -> str | None:
    """'scalar' | 'list' (of numbers) | None (anything else)."""
    if scalar_kind(t):
        return "scalar"
    if is_list(t) and scalar_kind(t.value_type):
        return "list"
    return None


def np_dtype(t: pa.DataType) -> np.dtype:
    t = value_type(t)
    if is_list(t):
        t = value_type(t.value_type)
    if pa.types.is_boolean(t):
        return np.dtype(bool)
    return np.dtype(t.to_pandas_dtype())


# ------------------------------------------------------------------------ conversion
# A batch's arrays hold a few MB each and live for one batch.  glibc's malloc keeps
# such memory for the next batch as long as its thresholds adapt; where the
# environment fixes them (MALLOC_TRIM_THRESHOLD_ and co: Dask's nannies set it in
# every worker) each array is a fresh mapping, every page of which faults on its first
# write, then unmapped: 1e8 float32 elements in 65536-row batches spent 0.45 s more in
# the kernel (1.30 s against 0.85 s on one thread).  There the arrays come from Arrow's
# memory pool, which keeps freed memory whatever glibc does.  Elsewhere glibc is as fast
# and holds less (the pool kept 15 MB more at the peak of 1M-row groups).
_FIXED_BY = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_THRESHOLD_",
             "MALLOC_MMAP_MAX_")
_TUNABLES = ("glibc.malloc.trim_threshold", "glibc.malloc.top_pad",
             "glibc.malloc.mmap_threshold", "glibc.malloc.mmap_max")


def thresholds_fixed(environ) -> bool:
    """Whether ``environ`` (this process's, read by glibc as it started) fixes the
    thresholds of glibc's malloc, which then no longer adapt to large allocations."""
    tunables = environ.get("GLIBC_TUNABLES", "")
    return (any(name in environ for name in _FIXED_BY)
            or any(name + "=" in tunables for name in _TUNABLES))


# Bytes from which a batch's array comes from Arrow's pool (None: never).
POOLED_BYTES = 1 << 20 if thresholds_fixed(os.environ) else None


def empty(shape, dtype, order: str = "C") -> np.ndarray:
    """``np.empty``; from Arrow's memory pool from POOLED_BYTES up."""
    dtype = np.dtype(dtype)
    shape = (int(shape),) if np.ndim(shape) == 0 else tuple(shape)
    count = int(np.prod(shape, dtype=np.int64))
    if POOLED_BYTES is None or count * dtype.itemsize < POOLED_BYTES:
        return np.empty(shape, dtype=dtype, order=order)
    flat = np.frombuffer(pa.allocate_buffer(count * dtype.itemsize), dtype=dtype, count=count)
    return flat.reshape(shape, order=order)


def _bits(buf, offset: int, n: int) -> np.ndarray:
    """``n`` bits of an Arrow bitmap from bit ``offset``, as bool: only the bytes that
    hold them are unpacked (a slice of a large batch has a large offset: unpacking from
    the buffer's start made the 32nd 8192-row slice of a 256Ki-row group unpack 32x
    its own bits)."""
    if n == 0 or buf is None:
        return np.zeros(n, dtype=bool)
    first, skip = divmod(offset, 8)
    return np.unpackbits(np.frombuffer(buf, dtype=np.uint8, offset=first,
                                       count=-(-(skip + n) // 8)),
                         count=skip + n, bitorder="little")[skip:].view(bool)


def numpy_of(arr, *, nulls=None) -> np.ndarray:
    """``arr.to_numpy(zero_copy_only=False)`` for the arrays bce reads, without pyarrow's
    conversion, which imports pandas whenever it is installed (0.2-0.25 s of every run
    that reads Parquet, for nothing): fixed-width numbers are a view of the values
    buffer (read-only, as pyarrow's zero-copy result), booleans unpacked from their
    bits, and a float's nulls NaN, as pyarrow gives them; an integer's or a boolean's
    nulls ``nulls`` when given.  Other types, and integers or booleans with nulls and
    no ``nulls``, go to pyarrow.  A chunked array gives its chunks joined."""
    if isinstance(arr, pa.ChunkedArray):
        parts = [numpy_of(c, nulls=nulls) for c in arr.chunks]
        return (np.concatenate(parts) if len(parts) != 1 else parts[0]) if parts else (
            np.zeros(0, dtype=bool if pa.types.is_boolean(arr.type) else np_dtype(arr.type)))
    t = arr.type
    n = len(arr)
    floating = pa.types.is_floating(t)
    if arr.null_count and not floating and nulls is None:
        return arr.to_numpy(zero_copy_only=False)
    bufs = arr.buffers()
    if pa.types.is_boolean(t):
        out = _bits(bufs[1], arr.offset, n)
    elif floating or pa.types.is_integer(t):
        dtype = np.dtype(t.to_pandas_dtype())
        out = (np.zeros(0, dtype=dtype) if n == 0 else
               np.frombuffer(bufs[1], dtype=dtype, count=n, offset=arr.offset * dtype.itemsize))
    else:
        return arr.to_numpy(zero_copy_only=False)
    if arr.null_count:
        out = out.copy()
        out[~_bits(bufs[0], arr.offset, n)] = np.nan if floating else nulls
    return out


def arrow_of(values) -> pa.Array:
    """A 1-D NumPy array of fixed-width numbers as an Arrow array sharing its memory, NaN
    kept as NaN (``pa.array`` gives the same, but imports pandas whenever it is
    installed: 0.2-0.25 s)."""
    values = np.ascontiguousarray(values)
    return pa.Array.from_buffers(pa.from_numpy_dtype(values.dtype), len(values),
                                 [None, pa.py_buffer(values)])


def _first_null(arr) -> int:
    mask = numpy_of(arr.is_null())
    return int(np.flatnonzero(mask)[0])


def _null_error(file, column, row):
    return BCEInputError(
        "missing value (null)",
        file=file,
        column=column,
        row=row,
        hint="fill the missing values, or pass --nan-policy omit|propagate to treat nulls as NaN",
    )


def _scalar_values(arr, *, file, column, row0, policy):
    """A 1-D NumPy array from one Arrow array; nulls per ``policy``."""
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    if arr.null_count:
        if policy == "error":
            raise _null_error(file, column, row0 + _first_null(arr))
        if pa.types.is_floating(arr.type):
            return numpy_of(arr)
        mask = numpy_of(arr.is_null())
        vals = numpy_of(arr, nulls=0).astype(np.float64)  # not fill_null: pa.scalar imports
        vals[mask] = np.nan  # pandas
        return vals
    return numpy_of(arr)


def _fill_list(arr, out, k, *, file, column, row0, policy):
    """Fill ``out`` (n, k) from a list / large_list / fixed_size_list array."""
    import pyarrow.compute as pc  # here: its import takes ~28 ms, and only lists need it

    rows = None
    if arr.null_count:
        if policy == "error":
            raise _null_error(file, column, row0 + _first_null(arr))
        valid = numpy_of(arr.is_valid())
        rows = np.flatnonzero(valid)
        out[~valid] = np.nan
        arr = arr.filter(pa.array(valid))
    if not pa.types.is_fixed_size_list(arr.type):
        lengths = numpy_of(pc.list_value_length(arr))
        bad = np.flatnonzero(lengths != k)
        if bad.size:
            i = int(bad[0])
            r = int(rows[i]) if rows is not None else i
            raise BCEInputError(
                f"list has {int(lengths[i])} values where the first row has {k} "
                f"(ragged lists: {bad.size} such row(s) in this batch)",
                file=file,
                column=column,
                row=row0 + r,
            )
    flat = arr.flatten()  # honours slice offsets, unlike .values
    if pa.types.is_dictionary(flat.type):
        flat = flat.dictionary_decode()
    if flat.null_count:
        if policy == "error":
            i = _first_null(flat)
            r = i // k
            r = int(rows[r]) if rows is not None else r
            raise BCEInputError(
                f"missing value (null) at list position {i % k}",
                file=file,
                column=column,
                row=row0 + r,
                hint="fill the missing values, or pass --nan-policy omit|propagate "
                "to treat nulls as NaN",
            )
        vals = _scalar_values(flat, file=file, column=column, row0=row0, policy=policy)
    else:
        vals = numpy_of(flat)
    vals = vals.reshape(-1, k)
    if rows is None:
        out[...] = vals
    else:
        out[rows] = vals


def _needs_float(pieces, sel: Selection, policy) -> bool:
    """True when nulls in a non-float column force this batch to float64."""
    if policy == "error" or sel.dtype.kind == "f":
        return False
    for rb, _, _ in pieces:
        for c in sel.columns:
            col = rb.column(c)
            if col.null_count:
                return True
            if sel.kind == "list":
                import pyarrow.compute as pc

                if pc.list_flatten(col).null_count:
                    return True
    return False


def fill_role(pieces, n, sel: Selection, policy, order):
    """One role's values of a batch: a NumPy array, or for a ``key`` selection
    (``--by``) the Arrow chunks as they are (a chunked array)."""
    if sel.kind == "key":
        return pa.chunked_array([rb.column(sel.columns[0]) for rb, _, _ in pieces],
                                type=pieces[0][0].schema.field(sel.columns[0]).type)
    dtype = np.dtype(np.float64) if _needs_float(pieces, sel, policy) else sel.dtype
    if sel.kind == "row":
        out = empty(n, dtype)
        col = sel.columns[0]
        pos = 0
        for rb, file, row0 in pieces:
            m = rb.num_rows
            out[pos : pos + m] = _scalar_values(
                rb.column(col), file=file, column=sel.shown[0], row0=row0, policy=policy
            )
            pos += m
        return out
    if sel.kind == "wide":
        out = empty((n, len(sel.columns)), dtype, order)
        for j, col in enumerate(sel.columns):
            pos = 0
            for rb, file, row0 in pieces:
                m = rb.num_rows
                out[pos : pos + m, j] = _scalar_values(
                    rb.column(col), file=file, column=sel.shown[j], row0=row0, policy=policy
                )
                pos += m
        return out
    # list
    out = empty((n, sel.k), dtype, order)
    pos = 0
    for rb, file, row0 in pieces:
        m = rb.num_rows
        _fill_list(
            rb.column(sel.columns[0]),
            out[pos : pos + m],
            sel.k,
            file=file,
            column=sel.shown[0],
            row0=row0,
            policy=policy,
        )
        pos += m
    return out

