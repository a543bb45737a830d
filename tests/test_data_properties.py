"""Hypothesis: any shape, batch size and file chunking gives back the same rows, in order."""

from __future__ import annotations

import os
import tempfile

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bce_cli.data import InputSpec, _inputs, open_inputs

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def read_all(spec):
    with open_inputs(spec) as inp:
        bs = list(inp.batches())
    sizes = [b.n_rows for b in bs]
    assert inp.batch_rows >= spec.batch_rows  # more for views (see Inputs)
    assert all(s == inp.batch_rows for s in sizes[:-1]) and 0 < sizes[-1] <= inp.batch_rows
    assert [b.row_offset for b in bs] == [sum(sizes[:i]) for i in range(len(bs))]
    return (np.concatenate([b.logits for b in bs]), np.concatenate([b.targets for b in bs]), inp)


@SETTINGS
@given(
    n=st.integers(1, 300),
    c=st.integers(1, 5),
    batch_rows=st.integers(1, 120),
    chunk=st.integers(1, 150),
    n_files=st.integers(1, 3),
    fmt=st.sampled_from(["parquet", "ipc_file", "ipc_stream"]),
    layout=st.sampled_from(["wide", "list", "fixed"]),
    ldtype=st.sampled_from(["float16", "float32", "float64"]),
    tdtype=st.sampled_from(["bool", "int16", "float32"]),
    order=st.sampled_from(["C", "F"]),
    seed=st.integers(0, 2**32 - 1),
)
def test_tables_round_trip(
    n, c, batch_rows, chunk, n_files, fmt, layout, ldtype, tdtype, order, seed
):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, c)).astype(ldtype)
    y = (rng.random((n, c)) < 0.5).astype(tdtype)
    if fmt != "parquet":
        n_files = 1

    def cols(a, b, prefix):
        part = a[b[0] : b[1]]
        if layout == "wide":
            return {f"{prefix}_{i}": part[:, i] for i in range(c)}
        flat = pa.array(part.reshape(-1))
        if layout == "fixed":
            return {prefix: pa.FixedSizeListArray.from_arrays(flat, c)}
        offs = pa.array(np.arange(0, part.size + 1, c, dtype=np.int32))
        return {prefix: pa.ListArray.from_arrays(offs, flat)}

    cuts = (
        sorted(rng.choice(np.arange(1, n), size=min(n_files - 1, n - 1), replace=False))
        if n > 1
        else []
    )
    bounds = [0, *cuts, n]
    with tempfile.TemporaryDirectory() as d:
        for i in range(len(bounds) - 1):
            b = (bounds[i], bounds[i + 1])
            t = pa.table({**cols(x, b, "logit"), **cols(y, b, "target")})
            path = os.path.join(d, f"part{i:02d}." + ("parquet" if fmt == "parquet" else "arrow"))
            if fmt == "parquet":
                pq.write_table(t, path, row_group_size=chunk)
            else:
                writer = ipc.new_file if fmt == "ipc_file" else ipc.new_stream
                with writer(path, t.schema) as w:
                    for rb in t.to_batches(max_chunksize=chunk):
                        w.write_batch(rb)
        src = d if fmt == "parquet" else os.path.join(d, "part00.arrow")
        L, T, inp = read_all(InputSpec(src, batch_rows=batch_rows, order=order))
    assert L.dtype == x.dtype and T.dtype == y.dtype
    np.testing.assert_array_equal(L, x)
    np.testing.assert_array_equal(T, y)
    assert inp.n_classes == c


@SETTINGS
@given(
    n=st.integers(1, 200),
    inner=st.lists(st.integers(1, 4), min_size=0, max_size=3),
    class_dim=st.integers(1, 3),
    batch_rows=st.integers(1, 80),
    variant=st.sampled_from(["native", "big", "fortran", "npz", "npz_compressed"]),
    seed=st.integers(0, 2**32 - 1),
    view_elements=st.sampled_from([1, 50, 1 << 22]),
)
def test_arrays_round_trip(n, inner, class_dim, batch_rows, variant, seed, view_elements):
    shape = (n, *inner)
    rng = np.random.default_rng(seed)
    x = rng.normal(size=shape).astype(np.float32)
    y = rng.random(shape)
    nd = len(shape)
    cd = min(class_dim, nd - 1) if nd > 1 else 1
    with tempfile.TemporaryDirectory() as d:
        if variant.startswith("npz"):
            save = np.savez_compressed if variant == "npz_compressed" else np.savez
            save(os.path.join(d, "a.npz"), logits=x, targets=y)
            xs = x
            spec = InputSpec(os.path.join(d, "a.npz"), class_dim=cd, batch_rows=batch_rows)
        else:
            xs = {"native": x, "big": x.astype(">f4"), "fortran": np.asfortranarray(x)}[variant]
            np.save(os.path.join(d, "x.npy"), xs)
            np.save(os.path.join(d, "y.npy"), y.astype(">f8") if variant == "big" else y)
            spec = InputSpec(
                os.path.join(d, "x.npy"),
                os.path.join(d, "y.npy"),
                class_dim=cd,
                batch_rows=batch_rows,
            )
        default, _inputs.VIEW_BATCH_ELEMENTS = _inputs.VIEW_BATCH_ELEMENTS, view_elements
        try:
            L, T, inp = read_all(spec)
        finally:
            _inputs.VIEW_BATCH_ELEMENTS = default
    views = (variant in ("native", "fortran") and xs.flags.c_contiguous
             and (nd <= 2 or cd == 1))  # every batch a view of the files: no copies
    enlarged = max(batch_rows, -(-view_elements // inp.elements_per_row))
    assert inp.batch_rows == (enlarged if views else batch_rows)
    if nd == 1:
        ex, ey = x[:, None], y[:, None]
    else:
        ex = np.moveaxis(x, cd, 1)
        ey = np.moveaxis(y, cd, 1)
        if nd > 2:
            ex, ey = ex.reshape(n, shape[cd], -1), ey.reshape(n, shape[cd], -1)
    assert L.dtype == np.float32 and T.dtype == np.float64
    np.testing.assert_array_equal(L, ex)
    np.testing.assert_array_equal(T, ey)
    assert inp.n_classes == ex.shape[1]


@pytest.mark.parametrize("type_", [pa.float32(), pa.float64(), pa.float16(), pa.int8(),
                                   pa.int64(), pa.uint16(), pa.bool_()])
def test_arrow_to_numpy_without_pyarrow_conversion_is_pyarrows(type_):
    """``numpy_of`` (Arrow's buffers read directly, so that pandas is never imported) gives
    what ``to_numpy(zero_copy_only=False)`` gives: slices at odd offsets, nulls (NaN for
    floats, the value asked for otherwise), chunked arrays, empty arrays."""
    from bce_cli.data._convert import arrow_of, numpy_of

    rng = np.random.default_rng(7)
    values = rng.integers(0, 2 if type_ == pa.bool_() else 100, 1000)
    valid = rng.random(1000) > 0.1
    whole = pa.array(values, type=type_)
    with_nulls = pa.array(values, type=type_, mask=~valid)
    for arr in (whole, whole.slice(3, 517), whole.slice(1000), with_nulls.slice(5, 300),
                whole.slice(8, 9), whole.slice(517, 483), whole.slice(999, 1),
                with_nulls.slice(64, 100), with_nulls.slice(611, 389)):
        if arr.null_count and not pa.types.is_floating(type_):
            filled = arr.fill_null(pa.scalar(0).cast(type_)).to_numpy(zero_copy_only=False)
            want = np.where(arr.is_valid().to_numpy(zero_copy_only=False), filled,
                            1).astype(filled.dtype)
            got = numpy_of(arr, nulls=1)
        else:
            want = arr.to_numpy(zero_copy_only=False)
            got = numpy_of(arr)
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)
    chunked = pa.chunked_array([whole.slice(0, 10), whole.slice(10, 7), whole.slice(17, 0)])
    np.testing.assert_array_equal(numpy_of(chunked), chunked.to_numpy())
    if pa.types.is_floating(type_):
        x = rng.standard_normal(50).astype(type_.to_pandas_dtype())
        x[3] = np.nan
        back = arrow_of(x[::2])
        assert back.equals(pa.array(x[::2], type=type_)) and back.null_count == 0
