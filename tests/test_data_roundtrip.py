"""Round trips through bce_cli.data: every format x layout gives back the arrays written."""

from __future__ import annotations

import io
import math
import os

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import pytest

from bce_cli.data import InputSpec, open_inputs


@pytest.fixture(autouse=True)
def pooled(monkeypatch):
    """Every batch array made from Arrow data in this module comes from Arrow's memory
    pool, as the large ones of real inputs do (the rest of the suite's small ones come
    from np.empty)."""
    from bce_cli.data import _convert

    monkeypatch.setattr(_convert, "POOLED_BYTES", 0)


def test_pooled_arrays_are_plain_writable_arrays():
    from bce_cli.data._convert import empty

    before = pa.total_allocated_bytes()
    for shape, dtype, order in [((5000, 3), np.float32, "F"), ((5000, 3), np.float64, "C"),
                                ((7,), bool, "C"), ((0, 4), np.float32, "F")]:
        a = empty(shape, dtype, order)
        assert a.shape == shape and a.dtype == dtype and a.flags.writeable
        assert a.flags.f_contiguous if order == "F" else a.flags.c_contiguous
        assert pa.total_allocated_bytes() - before >= a.nbytes  # the pool's memory
        a[...] = 1
        assert a.sum() == a.size
        del a
        assert pa.total_allocated_bytes() == before  # given back with the array


@pytest.mark.parametrize("environ, fixed", [
    ({}, False),
    ({"PATH": "/bin", "MALLOC_ARENA_MAX": "2"}, False),
    ({"MALLOC_TRIM_THRESHOLD_": "65536"}, True),  # Dask's workers
    ({"MALLOC_MMAP_THRESHOLD_": "131072"}, True),
    ({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, False),
    ({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2:glibc.malloc.trim_threshold=0"}, True),
    ({"GLIBC_TUNABLES": "glibc.malloc.mmap_max=0"}, True),
    ({"GLIBC_TUNABLES": "glibc.malloc.top_pad=0"}, True),
    ({"MALLOC_TOP_PAD_": "0"}, True),
])
def test_arrow_s_pool_where_glibc_s_thresholds_are_fixed(environ, fixed):
    from bce_cli.data._convert import thresholds_fixed

    assert thresholds_fixed(environ) is fixed


def test_batches_of_dask_workers_come_from_arrow_s_pool(tmp_path):
    """A process started with MALLOC_TRIM_THRESHOLD_ (as Dask's nannies start workers)
    takes a large batch's arrays from Arrow's pool; one without, from np.empty."""
    import subprocess
    import sys

    n = 400_000  # 1.6 MB arrays
    pq.write_table(pa.table({"x": np.zeros(n, np.float32), "y": np.ones(n, np.float32)}),
                   tmp_path / "d.parquet")
    code = ("import sys, pyarrow as pa\n"
            "from bce_cli.data import InputSpec, open_inputs\n"
            f"spec = InputSpec(preds={str(tmp_path / 'd.parquet')!r}, logits='x', targets='y',"
            f" batch_rows={n})\n"
            "with open_inputs(spec) as inp:\n"
            "    for b in inp.batches():\n"
            "        owner = b.logits\n"
            "        while getattr(owner, 'base', None) is not None:\n"
            "            owner = owner.base\n"
            "        print(b.logits.nbytes, isinstance(owner, pa.Buffer))\n")
    for environ, pooled in (({}, False), ({"MALLOC_TRIM_THRESHOLD_": "65536"}, True)):
        from bce_cli.data._convert import _FIXED_BY

        env = {k: v for k, v in os.environ.items()
               if k not in _FIXED_BY and k != "GLIBC_TUNABLES"}
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              env={**env, **environ, "PYTHONPATH": os.pathsep.join(sys.path)},
                              check=True)
        assert done.stdout.split() == [str(4 * n), str(pooled)], done.stdout


# ----------------------------------------------------------------- helpers
def ref_loss(x, y, w=None):
    """Slow float64 reference: mean of y*softplus(-x) + (1-y)*softplus(x), element by element."""
    x = np.asarray(x, dtype=np.float64)
    w = np.ones_like(x) if w is None else np.broadcast_to(w, x.shape).astype(np.float64)
    x, w = x.ravel(), w.ravel()
    y = np.asarray(y, dtype=np.float64).ravel()

    def softplus(z):
        return max(z, 0.0) + math.log1p(math.exp(-abs(z)))

    total = 0.0
    for xi, yi, wi in zip(x.tolist(), y.tolist(), w.tolist(), strict=False):
        total += wi * (yi * softplus(-xi) + (1.0 - yi) * softplus(xi))
    return total / x.size


def collect(spec, **kw):
    with open_inputs(InputSpec(**spec, **kw) if isinstance(spec, dict) else spec) as inp:
        bs = list(inp.batches())
        offsets = [b.row_offset for b in bs]
        sizes = [b.n_rows for b in bs]
        assert offsets == list(np.cumsum([0] + sizes[:-1]))
        L = np.concatenate([b.logits for b in bs])
        T = np.concatenate([b.targets for b in bs])
        W = [b.weight for b in bs]
        return inp, L, T, W, bs


def write_table(table: pa.Table, path, fmt, **kw):
    path = str(path)
    if fmt == "parquet":
        pq.write_table(table, path, row_group_size=kw.get("row_group_size"))
    elif fmt == "ipc_file":
        with ipc.new_file(path, table.schema) as w:
            for b in table.to_batches(max_chunksize=kw.get("chunk", 97)):
                w.write_batch(b)
    elif fmt == "ipc_stream":
        with ipc.new_stream(path, table.schema) as w:
            for b in table.to_batches(max_chunksize=kw.get("chunk", 97)):
                w.write_batch(b)
    elif fmt == "csv":
        pacsv.write_csv(table, path)
    else:
        raise AssertionError(fmt)


EXT = {"parquet": ".parquet", "ipc_file": ".arrow", "ipc_stream": ".arrows", "csv": ".csv"}


def make(rng, n, c, ldtype=np.float32, tdtype=bool):
    x = (rng.normal(size=(n, c)) * 4).astype(ldtype)
    if np.dtype(tdtype) == bool:
        y = rng.random((n, c)) < 0.3
    elif np.dtype(tdtype).kind in "iu":
        y = (rng.random((n, c)) < 0.3).astype(tdtype)
    else:
        y = rng.random((n, c)).astype(tdtype)
    return x, y


def check(L, T, x, y):
    assert L.shape == x.shape and T.shape == y.shape
    assert L.dtype == x.dtype, (L.dtype, x.dtype)
    assert T.dtype == y.dtype, (T.dtype, y.dtype)
    np.testing.assert_array_equal(L, x)
    np.testing.assert_array_equal(T, y)
    assert ref_loss(L, T) == ref_loss(x, y)


# ----------------------------------------------------------------- wide
@pytest.mark.parametrize("fmt", ["parquet", "ipc_file", "ipc_stream"])
@pytest.mark.parametrize("ldtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("tdtype", [bool, np.int8, np.int64, np.float32])
def test_wide_one_file(tmp_path, fmt, ldtype, tdtype):
    rng = np.random.default_rng(1)
    x, y = make(rng, 523, 4, ldtype, tdtype)
    cols = {f"logit_{k}": x[:, i] for i, k in enumerate("abcd")}
    cols.update({f"target_{k}": y[:, i] for i, k in enumerate("abcd")})
    cols["id"] = np.arange(523)
    path = tmp_path / f"d{EXT[fmt]}"
    write_table(pa.table(cols), path, fmt, row_group_size=100)
    inp, L, T, W, bs = collect({"preds": str(path), "batch_rows": 64})
    check(L, T, x, y)
    assert inp.class_names == ["target_a", "target_b", "target_c", "target_d"]
    assert inp.n_classes == 4 and inp.layout == "wide"
    assert inp.n_rows == 523
    assert inp.column_of(2, "logits") == "logit_c"
    assert inp.column_of(2) == "target_c"
    assert all(b.weight is None for b in bs)
    assert bs[0].logits.flags.f_contiguous


def test_wide_pairs_by_stem_not_position(tmp_path):
    rng = np.random.default_rng(2)
    x, y = make(rng, 50, 3)
    # logits written in another order than targets: pairing is by name stem
    t = pa.table(
        {
            "logit_b": x[:, 1],
            "logit_c": x[:, 2],
            "logit_a": x[:, 0],
            "label_a": y[:, 0],
            "label_b": y[:, 1],
            "label_c": y[:, 2],
        }
    )
    pq.write_table(t, tmp_path / "p.parquet")
    inp, L, T, _, _ = collect({"preds": str(tmp_path / "p.parquet")})
    check(L, T, x, y)
    assert inp.class_names == ["label_a", "label_b", "label_c"]


def test_explicit_globs_and_c_order(tmp_path):
    rng = np.random.default_rng(3)
    x, y = make(rng, 77, 2)
    t = pa.table({"a": x[:, 0], "b": x[:, 1], "ya": y[:, 0], "yb": y[:, 1], "s": ["q"] * 77})
    pq.write_table(t, tmp_path / "p.parquet")
    inp, L, T, _, bs = collect(
        InputSpec(str(tmp_path / "p.parquet"), logits="a,b", targets="y*", order="C", batch_rows=10)
    )
    check(L, T, x, y)
    assert bs[0].logits.flags.c_contiguous and len(bs) == 8


@pytest.mark.parametrize("fmt", ["parquet", "ipc_file", "ipc_stream", "csv"])
def test_wide_two_files_by_row(tmp_path, fmt):
    rng = np.random.default_rng(4)
    ld = np.float64 if fmt == "csv" else np.float32
    x, y = make(rng, 301, 3, ld, bool)
    names = ["cat", "dog", "eel"]
    p, q = tmp_path / f"p{EXT[fmt]}", tmp_path / f"l{EXT[fmt]}"
    # same names in both files, labels in another column order: paired by name
    write_table(pa.table({n: x[:, i] for i, n in enumerate(names)}), p, fmt)
    write_table(pa.table({n: y[:, i] for i, n in reversed(list(enumerate(names)))}), q, fmt)
    inp, L, T, _, _ = collect({"preds": str(p), "labels": str(q), "batch_rows": 50})
    assert inp.class_names == ["eel", "dog", "cat"]
    check(L, T, x[:, ::-1], y[:, ::-1])
    if fmt == "csv":
        assert inp.n_rows is None
    else:
        assert inp.n_rows == 301


def test_csv_ints_become_float_and_tsv(tmp_path):
    p = tmp_path / "d.tsv"
    p.write_text("logit\ttarget\n1\t0\n-2\t1\n0.5\t1\n")
    inp, L, T, _, _ = collect({"preds": str(p), "batch_rows": 2})
    np.testing.assert_array_equal(L[:, 0], [1.0, -2.0, 0.5])
    np.testing.assert_array_equal(T[:, 0], [0.0, 1.0, 1.0])
    assert inp.class_names == ["target"]


def test_dictionary_columns_decode(tmp_path):
    x = np.array([0.5, -1.0, 0.5, 2.0], dtype=np.float32)
    y = np.array([1, 0, 1, 1], dtype=np.int32)
    t = pa.table(
        {"logit": pa.array(x).dictionary_encode(), "target": pa.array(y).dictionary_encode()}
    )
    write_table(t, tmp_path / "d.arrow", "ipc_file")
    _, L, T, _, _ = collect({"preds": str(tmp_path / "d.arrow")})
    check(L, T, x[:, None], y[:, None])


# ----------------------------------------------------------------- datasets
@pytest.mark.parametrize("how", ["dir", "glob"])
def test_parquet_dataset(tmp_path, how):
    rng = np.random.default_rng(5)
    x, y = make(rng, 1000, 2)
    d = tmp_path / "ds"
    d.mkdir()
    bounds = [0, 130, 131, 600, 1000]
    for i in range(4):
        a, b = bounds[i], bounds[i + 1]
        pq.write_table(
            pa.table(
                {
                    "logit_0": x[a:b, 0],
                    "logit_1": x[a:b, 1],
                    "target_0": y[a:b, 0],
                    "target_1": y[a:b, 1],
                }
            ),
            d / f"part-{i}.parquet",
            row_group_size=70,
        )
    (d / "_SUCCESS").write_text("")
    src = str(d) if how == "dir" else str(d / "part-*.parquet")
    inp, L, T, _, bs = collect({"preds": src, "batch_rows": 128})
    check(L, T, x, y)
    assert inp.n_rows == 1000 and len(inp.sources["preds"]["files"]) == 4
    assert all(b.n_rows == 128 for b in bs[:-1])
    # a row in the third file is located in that file
    f, col, r = inp.locate(140, 1, "targets")
    assert f.endswith("part-2.parquet") and col == "target_1" and r == 140 - 131


# ----------------------------------------------------------------- list layouts
@pytest.mark.parametrize("fmt", ["parquet", "ipc_file", "ipc_stream"])
@pytest.mark.parametrize("ltype", ["list", "large_list", "fixed_size_list"])
def test_list_layout(tmp_path, fmt, ltype):
    rng = np.random.default_rng(6)
    n, c = 400, 5
    x, y = make(rng, n, c, np.float32, bool)

    def col(a):
        flat = pa.array(a.reshape(-1))
        if ltype == "fixed_size_list":
            return pa.FixedSizeListArray.from_arrays(flat, c)
        odt = np.int64 if ltype == "large_list" else np.int32
        offs = pa.array(np.arange(0, n * c + 1, c, dtype=odt))
        cls = pa.LargeListArray if ltype == "large_list" else pa.ListArray
        return cls.from_arrays(offs, flat)

    t = pa.table({"id": np.arange(n), "logits": col(x), "targets": col(y)})
    path = tmp_path / f"l{EXT[fmt]}"
    write_table(t, path, fmt, row_group_size=64, chunk=33)
    inp, L, T, _, _ = collect({"preds": str(path), "batch_rows": 50})
    check(L, T, x, y)
    assert inp.layout == "list" and inp.n_classes == c
    assert inp.class_names == [f"targets[{i}]" for i in range(c)]
    assert inp.column_of(3, "logits") == "logits[3]"


def test_list_sliced_chunks_honour_offsets(tmp_path):
    # an IPC file whose batches are slices of a bigger list array (non-zero offsets)
    rng = np.random.default_rng(7)
    n, c = 60, 3
    x, y = make(rng, n, c, np.float64, np.float64)
    big_x = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), c)
    big_y = pa.ListArray.from_arrays(
        pa.array(np.arange(0, n * c + 1, c, dtype=np.int32)), pa.array(y.reshape(-1))
    )
    t = pa.table({"logits": big_x, "targets": big_y})
    # in-memory IPC stream written from sliced batches, read back through stdin
    sink = io.BytesIO()
    with ipc.new_stream(sink, t.schema) as w:
        for a in range(0, n, 7):
            w.write_batch(t.slice(a, 7).to_batches()[0])
    with open_inputs(InputSpec("-", batch_rows=11), stdin=io.BytesIO(sink.getvalue())) as inp:
        bs = list(inp.batches())
    L = np.concatenate([b.logits for b in bs])
    T = np.concatenate([b.targets for b in bs])
    check(L, T, x, y)


def test_two_files_wide_logits_list_targets(tmp_path):
    rng = np.random.default_rng(8)
    x, y = make(rng, 90, 3)
    pq.write_table(pa.table({"a": x[:, 0], "b": x[:, 1], "c": x[:, 2]}), tmp_path / "p.parquet")
    pq.write_table(
        pa.table({"y": pa.FixedSizeListArray.from_arrays(pa.array(y.reshape(-1)), 3)}),
        tmp_path / "l.parquet",
    )
    _, L, T, _, _ = collect(
        {
            "preds": str(tmp_path / "p.parquet"),
            "labels": str(tmp_path / "l.parquet"),
            "batch_rows": 40,
        }
    )
    check(L, T, x, y)


# ----------------------------------------------------------------- numpy
@pytest.mark.parametrize("variant", ["native", "big_endian", "fortran"])
@pytest.mark.parametrize("ndim", [1, 2, 3, 4])
def test_npy_pair(tmp_path, variant, ndim):
    rng = np.random.default_rng(9)
    shape = {1: (101,), 2: (101, 3), 3: (101, 3, 4), 4: (101, 3, 2, 5)}[ndim]
    x = rng.normal(size=shape).astype(np.float32)
    y = rng.random(shape) < 0.5
    xs = x
    if variant == "big_endian":
        xs = x.astype(">f4")
    elif variant == "fortran":
        xs = np.asfortranarray(x)
    np.save(tmp_path / "x.npy", xs)
    np.save(tmp_path / "y.npy", np.asfortranarray(y) if variant == "fortran" else y)
    inp, L, T, _, _ = collect(
        {"preds": str(tmp_path / "x.npy"), "labels": str(tmp_path / "y.npy"), "batch_rows": 17}
    )
    n = shape[0]
    if ndim == 1:
        ex, ey = x[:, None], y[:, None]
        assert inp.class_names == ["y"]
    elif ndim == 2:
        ex, ey = x, y
        assert inp.class_names == ["0", "1", "2"]
    else:
        ex, ey = x.reshape(n, 3, -1), y.reshape(n, 3, -1)
    assert L.dtype == np.float32 and L.dtype.isnative
    check(L, T, ex, ey)
    assert inp.layout == "array"


def test_npy_class_dim_last(tmp_path):
    rng = np.random.default_rng(10)
    x = rng.normal(size=(20, 4, 5, 3))  # classes last
    y = rng.random((20, 4, 5, 3))
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    inp, L, T, _, _ = collect(
        {
            "preds": str(tmp_path / "x.npy"),
            "labels": str(tmp_path / "y.npy"),
            "class_dim": -1,
            "batch_rows": 6,
        }
    )
    ex = np.moveaxis(x, -1, 1).reshape(20, 3, 20)
    ey = np.moveaxis(y, -1, 1).reshape(20, 3, 20)
    check(L, T, ex, ey)
    assert inp.n_classes == 3


@pytest.mark.parametrize("compressed", [False, True])
@pytest.mark.parametrize("names", ["default", "positional", "explicit"])
def test_npz(tmp_path, compressed, names):
    rng = np.random.default_rng(11)
    x = rng.normal(size=(250, 2, 3)).astype(np.float16)
    y = (rng.random((250, 2, 3)) < 0.5).astype(np.uint8)
    save = np.savez_compressed if compressed else np.savez
    spec = {}
    if names == "default":
        save(tmp_path / "a.npz", targets=y, logits=x)
    elif names == "positional":
        save(tmp_path / "a.npz", x, y)
    else:
        save(tmp_path / "a.npz", out=x, gt=y, other=np.zeros(3))
        spec = {"logits": "out", "targets": "gt"}
    inp, L, T, _, _ = collect({"preds": str(tmp_path / "a.npz"), "batch_rows": 64, **spec})
    check(L, T, x.reshape(250, 2, 3), y.reshape(250, 2, 3))
    assert inp.layout == "array" and inp.n_classes == 2


def test_npz_fortran_member(tmp_path):
    rng = np.random.default_rng(12)
    x = np.asfortranarray(rng.normal(size=(40, 3)))
    y = np.asfortranarray(rng.random((40, 3)))
    np.savez(tmp_path / "a.npz", logits=x, targets=y)
    _, L, T, _, _ = collect({"preds": str(tmp_path / "a.npz"), "batch_rows": 9})
    check(L, T, x, y)


def test_npy_logits_parquet_targets(tmp_path):
    rng = np.random.default_rng(13)
    x, y = make(rng, 64, 2)
    np.save(tmp_path / "x.npy", x)
    pq.write_table(pa.table({"u": y[:, 0], "v": y[:, 1]}), tmp_path / "y.parquet")
    inp, L, T, _, _ = collect(
        {"preds": str(tmp_path / "x.npy"), "labels": str(tmp_path / "y.parquet"), "batch_rows": 10}
    )
    check(L, T, x, y)
    assert inp.class_names == ["u", "v"]


# ----------------------------------------------------------------- stdin
@pytest.mark.parametrize("fmt", ["parquet", "ipc_file", "ipc_stream", "csv", "npy"])
def test_stdin(tmp_path, fmt):
    rng = np.random.default_rng(14)
    x, y = make(rng, 120, 2, np.float64, bool)
    if fmt == "npy":
        buf = io.BytesIO()
        np.save(buf, x)
        np.save(tmp_path / "y.npy", y)
        spec = InputSpec("-", str(tmp_path / "y.npy"), batch_rows=50)
        data = buf.getvalue()
    else:
        path = tmp_path / f"d{EXT[fmt]}"
        write_table(
            pa.table(
                {"pred_a": x[:, 0], "pred_b": x[:, 1], "label_a": y[:, 0], "label_b": y[:, 1]}
            ),
            path,
            fmt,
        )
        spec = InputSpec("-", batch_rows=50)
        data = path.read_bytes()
    with open_inputs(spec, stdin=io.BytesIO(data)) as inp:
        bs = list(inp.batches())
        # stdin is held in memory: a second pass reads the same data
        assert sum(b.n_rows for b in inp.batches()) == 120
    check(np.concatenate([b.logits for b in bs]), np.concatenate([b.targets for b in bs]), x, y)


def test_stdin_labels(tmp_path):
    rng = np.random.default_rng(15)
    x, y = make(rng, 30, 1)
    pq.write_table(pa.table({"p": x[:, 0]}), tmp_path / "p.parquet")
    buf = io.BytesIO()
    pq.write_table(pa.table({"t": y[:, 0]}), buf)
    with open_inputs(
        InputSpec(str(tmp_path / "p.parquet"), "-"), stdin=io.BytesIO(buf.getvalue())
    ) as inp:
        T = np.concatenate([b.targets for b in inp.batches()])
    np.testing.assert_array_equal(T, y)
    assert inp.class_names == ["t"]


# ----------------------------------------------------------------- nulls, weights, join
def test_nulls_become_nan_with_omit(tmp_path):
    t = pa.table(
        {"logit": pa.array([0.5, None, 1.0], pa.float32()), "target": pa.array([True, False, None])}
    )
    pq.write_table(t, tmp_path / "n.parquet")
    for policy in ("omit", "propagate"):
        _, L, T, _, _ = collect({"preds": str(tmp_path / "n.parquet"), "nan_policy": policy})
        assert L.dtype == np.float32 and np.isnan(L[1, 0]) and L[0, 0] == 0.5
        assert T.dtype == np.float64 and np.isnan(T[2, 0]) and T[0, 0] == 1.0


def test_list_nulls_with_omit(tmp_path):
    t = pa.table(
        {
            "logits": pa.array([[1.0, 2.0], None, [3.0, None]]),
            "targets": pa.array([[1, 0], [0, 1], [1, 1]]),
        }
    )
    pq.write_table(t, tmp_path / "n.parquet")
    _, L, T, _, _ = collect({"preds": str(tmp_path / "n.parquet"), "nan_policy": "omit"})
    np.testing.assert_array_equal(L, [[1, 2], [np.nan, np.nan], [3, np.nan]])
    assert T.dtype == np.int64


def test_weight_column_and_numbers(tmp_path):
    rng = np.random.default_rng(16)
    x, y = make(rng, 100, 2)
    w = rng.random(100)
    pq.write_table(
        pa.table(
            {
                "logit_0": x[:, 0],
                "logit_1": x[:, 1],
                "target_0": y[:, 0],
                "target_1": y[:, 1],
                "w": w,
            }
        ),
        tmp_path / "d.parquet",
    )
    inp, L, T, W, bs = collect(
        {"preds": str(tmp_path / "d.parquet"), "weight": "w", "batch_rows": 30}
    )
    assert inp.n_classes == 2  # the weight column is no class
    Wc = np.concatenate(W)
    assert Wc.shape == (100, 1)
    np.testing.assert_array_equal(Wc[:, 0], w)
    assert math.isclose(ref_loss(L, T, Wc), ref_loss(x, y, w[:, None]), rel_tol=1e-12)
    _, _, _, W, _ = collect({"preds": str(tmp_path / "d.parquet"), "weight": "0.5"})
    assert W[0].shape == (1, 1) and W[0][0, 0] == 0.5
    _, _, _, W, _ = collect({"preds": str(tmp_path / "d.parquet"), "weight": "1,3"})
    np.testing.assert_array_equal(W[0], [[1.0, 3.0]])


@pytest.mark.parametrize("shape", ["class", "row", "element"])
def test_weight_npy_file(tmp_path, shape):
    rng = np.random.default_rng(17)
    x = rng.normal(size=(50, 3, 4))
    y = rng.random((50, 3, 4))
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    w = {"class": rng.random(3), "row": rng.random(50), "element": rng.random((50, 3, 4))}[shape]
    np.save(tmp_path / "w.npy", w)
    _, L, T, W, _ = collect(
        {
            "preds": str(tmp_path / "x.npy"),
            "labels": str(tmp_path / "y.npy"),
            "weight": str(tmp_path / "w.npy"),
            "batch_rows": 16,
        }
    )
    if shape == "class":
        expect = w.reshape(1, 3, 1)
        assert all(np.array_equal(b, expect) for b in W)
    else:
        Wc = np.concatenate(W)
        expect = w.reshape(50, 1, 1) if shape == "row" else w
        np.testing.assert_array_equal(Wc, expect)
    full = np.broadcast_to(expect, x.shape)
    Wfull = (
        np.concatenate([np.broadcast_to(b, (len(b) if b.shape[0] > 1 else 16, 3, 4)) for b in W])[
            :50
        ]
        if shape != "class"
        else full
    )
    assert math.isclose(ref_loss(L, T, Wfull), ref_loss(x, y, full), rel_tol=1e-12)


def test_join_on_key(tmp_path):
    rng = np.random.default_rng(18)
    n = 500
    x, y = make(rng, n, 2)
    ids = rng.permutation(n) * 3
    perm = rng.permutation(n)
    pq.write_table(pa.table({"id": ids, "a": x[:, 0], "b": x[:, 1]}), tmp_path / "p.parquet")
    write_table(
        pa.table({"b": y[perm, 1], "id": ids[perm].astype(np.int32), "a": y[perm, 0]}),
        tmp_path / "l.arrow",
        "ipc_file",
    )
    inp, L, T, _, _ = collect(
        {
            "preds": str(tmp_path / "p.parquet"),
            "labels": str(tmp_path / "l.arrow"),
            "on": "id",
            "batch_rows": 64,
        }
    )
    # classes follow the targets' column order (b, a), paired by name
    check(L, T, x[:, ::-1], y[:, ::-1])
    assert inp.class_names == ["b", "a"] and inp.sources["join"] == "id"


def test_multiple_passes_and_sources(tmp_path):
    rng = np.random.default_rng(19)
    x, y = make(rng, 10, 1)
    pq.write_table(pa.table({"logit": x[:, 0], "target": y[:, 0]}), tmp_path / "d.parquet")
    with open_inputs(InputSpec(str(tmp_path / "d.parquet"), batch_rows=3)) as inp:
        a = [b.logits.copy() for b in inp.batches()]
        b = [b.logits.copy() for b in inp.batches()]
        assert all(np.array_equal(p, q) for p, q in zip(a, b, strict=False))
        assert inp.sources["logits"]["columns"] == ["logit"]
        assert inp.sources["targets"]["columns"] == ["target"]


def test_stdin_npz():
    rng = np.random.default_rng(20)
    x, y = make(rng, 33, 2, np.float64, np.float64)
    buf = io.BytesIO()
    np.savez_compressed(buf, logits=x, targets=y)
    with open_inputs(InputSpec("-", batch_rows=8), stdin=io.BytesIO(buf.getvalue())) as inp:
        bs = list(inp.batches())
    check(np.concatenate([b.logits for b in bs]), np.concatenate([b.targets for b in bs]), x, y)


def test_weight_column_in_labels_file_and_per_element_columns(tmp_path):
    rng = np.random.default_rng(21)
    x, y = make(rng, 40, 2)
    w = rng.random((40, 2))
    pq.write_table(pa.table({"a": x[:, 0], "b": x[:, 1]}), tmp_path / "p.parquet")
    pq.write_table(
        pa.table({"a": y[:, 0], "b": y[:, 1], "wt": w[:, 0], "w_a": w[:, 0], "w_b": w[:, 1]}),
        tmp_path / "l.parquet",
    )
    base = {"preds": str(tmp_path / "p.parquet"), "labels": str(tmp_path / "l.parquet")}
    inp, L, T, W, _ = collect({**base, "targets": "a,b", "weight": "wt", "batch_rows": 16})
    np.testing.assert_array_equal(np.concatenate(W), w[:, :1])
    check(L, T, x, y)
    inp, L, T, W, _ = collect({**base, "targets": "a,b", "weight": "w_*", "batch_rows": 16})
    np.testing.assert_array_equal(np.concatenate(W), w)


def test_join_with_weight_and_list_targets(tmp_path):
    rng = np.random.default_rng(22)
    n, c = 60, 3
    x, y = make(rng, n, c)
    w = rng.random(n)
    keys = np.array([f"k{i}" for i in range(n)])
    perm = rng.permutation(n)
    pq.write_table(
        pa.table(
            {
                "key": keys,
                "logits": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), c),
                "w": w,
                "unused": np.zeros(n),
            }
        ),
        tmp_path / "p.parquet",
    )
    yl = pa.FixedSizeListArray.from_arrays(pa.array(y[perm].ravel()), c)
    pq.write_table(pa.table({"key": keys[perm], "targets": yl}), tmp_path / "l.parquet")
    inp, L, T, W, _ = collect(
        {
            "preds": str(tmp_path / "p.parquet"),
            "labels": str(tmp_path / "l.parquet"),
            "on": "key",
            "logits": "logits",
            "weight": "w",
            "batch_rows": 25,
        }
    )
    check(L, T, x, y)
    np.testing.assert_array_equal(np.concatenate(W)[:, 0], w)
    assert inp.layout == "list" and inp.class_names == ["targets[0]", "targets[1]", "targets[2]"]


def test_locate_names_file_column_row(tmp_path):
    d = tmp_path / "ds"
    d.mkdir()
    for i in range(2):
        pq.write_table(
            pa.table({"logit_x": np.zeros(10), "target_x": np.zeros(10)}), d / f"f{i}.parquet"
        )
    with open_inputs(InputSpec(str(d), batch_rows=4)) as inp:
        for _ in inp.batches():
            pass
        file, column, row = inp.locate(13, class_index=0)
    assert file.endswith("f1.parquet") and column == "target_x" and row == 3


def test_parquet_large_row_groups_read_in_record_batches(tmp_path, monkeypatch):
    # row groups above the budget are read with iter_batches instead of whole
    from bce_cli.data import _sources

    monkeypatch.setattr(_sources, "GROUP_BUDGET", 0)
    rng = np.random.default_rng(23)
    x, y = make(rng, 1000, 3)
    t = pa.table(
        {**{f"logit_{i}": x[:, i] for i in range(3)}, **{f"target_{i}": y[:, i] for i in range(3)}}
    )
    pq.write_table(t, tmp_path / "d.parquet", row_group_size=450)
    _, L, T, _, bs = collect({"preds": str(tmp_path / "d.parquet"), "batch_rows": 77})
    check(L, T, x, y)
