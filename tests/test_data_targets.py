"""Targets-only files (open_targets), key-like columns and subset pairing, to_input_layout."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import pytest

from bce_cli.data import Batch, InputSpec, open_inputs, open_targets
from bce_cli.errors import BCEInputError

SAMPLE = Path(__file__).resolve().parent.parent / "sample_data"
PREDS, LABELS = SAMPLE / "digits_preds.parquet", SAMPLE / "digits_labels.parquet"
DIGITS = [f"digit_{k}" for k in range(10)]


def read_targets(path, **kw):
    stdin = kw.pop("stdin", None)
    with open_targets(str(path), stdin=stdin, **kw) as inp:
        bs = list(inp.batches())
    assert [b.row_offset for b in bs] == list(np.cumsum([0] + [b.n_rows for b in bs[:-1]]))
    assert all(isinstance(b, Batch) and b.logits is None for b in bs)
    return inp, np.concatenate([b.targets for b in bs])


def read_all(spec, stdin=None):
    with open_inputs(spec, stdin=stdin) as inp:
        bs = list(inp.batches())
    return inp, np.concatenate([b.logits for b in bs]), np.concatenate([b.targets for b in bs])


# ------------------------------------------------------------ open_targets
def test_sample_labels_counts_match_pyarrow():
    table = pq.read_table(LABELS)
    want = np.array([table.column(n).to_numpy().sum() for n in DIGITS])
    inp, T = read_targets(LABELS, batch_rows=100)
    assert inp.class_names == DIGITS and inp.n_classes == 10
    assert inp.n_rows == table.num_rows == T.shape[0]
    assert inp.layout == "wide" and inp.array_shape is None and inp.class_dim is None
    assert T.dtype == np.bool_ and T.shape == (table.num_rows, 10)
    np.testing.assert_array_equal(T.sum(axis=0), want)
    assert inp.sources["targets"]["columns"] == DIGITS
    assert inp.sources["labels"]["format"] == "parquet"


def test_sample_npy_targets_match_parquet_labels():
    arr = np.load(SAMPLE / "digits_targets.npy")
    inp, T = read_targets(SAMPLE / "digits_targets.npy", batch_rows=500)
    assert T.dtype == arr.dtype and T.shape == arr.shape
    np.testing.assert_array_equal(T, arr)
    assert inp.layout == "array" and inp.array_shape == arr.shape and inp.class_dim == 1
    assert inp.class_names == [str(i) for i in range(10)]
    labels = pq.read_table(LABELS)
    np.testing.assert_array_equal(arr.sum(0), [labels.column(n).to_numpy().sum() for n in DIGITS])


def test_pattern_columns_win_over_other_numeric(tmp_path, rng):
    y = rng.random((50, 2)) < 0.3
    t = pa.table(
        {"row_id": np.arange(50), "score": rng.random(50), "label_a": y[:, 0], "label_b": y[:, 1]}
    )
    pq.write_table(t, tmp_path / "l.parquet")
    inp, T = read_targets(tmp_path / "l.parquet", batch_rows=7)
    assert inp.class_names == ["label_a", "label_b"]
    np.testing.assert_array_equal(T, y)


def test_all_numeric_except_keys_and_strings(tmp_path, rng):
    y = (rng.random((30, 3)) < 0.5).astype(np.int8)
    t = pa.table(
        {
            "ID": np.arange(30),
            "name": [f"s{i}" for i in range(30)],
            "cat": y[:, 0],
            "sample_id": np.arange(30),
            "dog": y[:, 1],
            "__index_level_0__": np.arange(30),
            "bird": y[:, 2],
        }
    )
    pq.write_table(t, tmp_path / "l.parquet")
    inp, T = read_targets(tmp_path / "l.parquet")
    assert inp.class_names == ["cat", "dog", "bird"]
    assert T.dtype == np.int8  # the stored dtype is kept
    np.testing.assert_array_equal(T, y)


def test_explicit_selection_is_used_as_given(tmp_path):
    t = pa.table({"id": [0, 1, 1], "a": [1.0, 0.0, 1.0], "b": [0.0, 0.0, 1.0]})
    pq.write_table(t, tmp_path / "l.parquet")
    inp, T = read_targets(tmp_path / "l.parquet", targets="b,id")
    assert inp.class_names == ["b", "id"]
    np.testing.assert_array_equal(T, [[0, 0], [0, 1], [1, 1]])
    with pytest.raises(BCEInputError, match="no such column"):
        open_targets(str(tmp_path / "l.parquet"), targets="nope")


def test_only_keys_is_an_error(tmp_path):
    pq.write_table(pa.table({"id": [1, 2], "name": ["a", "b"]}), tmp_path / "l.parquet")
    with pytest.raises(BCEInputError) as ei:
        open_targets(str(tmp_path / "l.parquet"))
    assert "l.parquet" in str(ei.value) and "--targets" in str(ei.value)


@pytest.mark.parametrize("fmt", ["ipc_file", "ipc_stream", "csv", "dataset", "glob"])
def test_table_formats(tmp_path, rng, fmt):
    y = (rng.random((120, 3)) < 0.4).astype(np.float64)
    t = pa.table({"id": np.arange(120), **{f"target_{i}": y[:, i] for i in range(3)}})
    if fmt in ("dataset", "glob"):
        (tmp_path / "ds").mkdir()
        pq.write_table(t.slice(0, 50), tmp_path / "ds" / "a.parquet")
        pq.write_table(t.slice(50), tmp_path / "ds" / "b.parquet")
        path = tmp_path / "ds" if fmt == "dataset" else str(tmp_path / "ds" / "*.parquet")
    elif fmt == "csv":
        path = tmp_path / "l.csv"
        pacsv.write_csv(t, path)
    else:
        path = tmp_path / "l.arrow"
        new = ipc.new_file if fmt == "ipc_file" else ipc.new_stream
        with new(str(path), t.schema) as w:
            for b in t.to_batches(max_chunksize=33):
                w.write_batch(b)
    inp, T = read_targets(path, batch_rows=16)
    assert inp.class_names == ["target_0", "target_1", "target_2"]
    np.testing.assert_array_equal(T, y)


def test_list_column(tmp_path, rng):
    y = rng.random((40, 4)) < 0.5
    t = pa.table({"id": np.arange(40), "labels": pa.array(list(y), type=pa.list_(pa.bool_()))})
    pq.write_table(t, tmp_path / "l.parquet")
    inp, T = read_targets(tmp_path / "l.parquet", batch_rows=9)
    assert inp.layout == "list" and inp.n_classes == 4 and T.dtype == np.bool_
    np.testing.assert_array_equal(T, y)


def test_npz_choice(tmp_path, rng):
    y = rng.random((20, 3)) < 0.5
    other = rng.random((20, 3))
    np.savez(tmp_path / "named.npz", logits=other, labels=y)
    np.savez(tmp_path / "only.npz", stuff=y)
    np.savez(tmp_path / "two.npz", a=other, b=y)
    for path, kw in (("named.npz", {}), ("only.npz", {}), ("two.npz", {"targets": "b"})):
        inp, T = read_targets(tmp_path / path, batch_rows=6, **kw)
        np.testing.assert_array_equal(T, y)
        assert T.dtype == np.bool_ and inp.array_shape == (20, 3)
    with pytest.raises(BCEInputError, match="cannot tell which array"):
        open_targets(str(tmp_path / "two.npz"))


def test_npy_nd_and_1d(tmp_path, rng):
    y = (rng.random((6, 2, 3, 4)) < 0.5).astype(np.float32)
    np.save(tmp_path / "y.npy", y)
    inp, T = read_targets(tmp_path / "y.npy", batch_rows=4)
    assert T.shape == (6, 2, 12) and inp.array_shape == (6, 2, 3, 4)
    np.testing.assert_array_equal(T, y.reshape(6, 2, 12))
    np.testing.assert_array_equal(inp.to_input_layout(T), y)
    y1 = rng.random(9) < 0.5
    np.save(tmp_path / "y1.npy", y1)
    inp, T = read_targets(tmp_path / "y1.npy")
    assert T.shape == (9, 1) and inp.class_names == ["y1"] and inp.class_dim is None
    np.testing.assert_array_equal(inp.to_input_layout(T), y1)


def test_stdin(tmp_path, rng):
    y = rng.random((25, 2)) < 0.5
    buf = io.BytesIO()
    pq.write_table(pa.table({"id": np.arange(25), "a": y[:, 0], "b": y[:, 1]}), buf)
    inp, T = read_targets("-", stdin=io.BytesIO(buf.getvalue()), batch_rows=10)
    assert inp.class_names == ["a", "b"] and inp.sources["labels"]["path"] == "<stdin>"
    np.testing.assert_array_equal(T, y)


def test_locate_names_file_column_row(tmp_path):
    pq.write_table(pa.table({"a": [0.0, 1.0]}), tmp_path / "x.parquet", row_group_size=1)
    pq.write_table(pa.table({"a": [1.0, 0.0, 2.0]}), tmp_path / "y.parquet")
    with open_targets(str(tmp_path), batch_rows=2) as inp:
        bs = list(inp.batches())
        assert [b.n_rows for b in bs] == [2, 2, 1] and bs[-1].row_offset == 4
        # global row 4 = x.parquet's 2 rows + row 2 of y.parquet
        file, column, row = inp.locate(4, 0)
    assert file.endswith("y.parquet") and column == "a" and row == 2


def test_nulls_follow_nan_policy(tmp_path):
    pq.write_table(pa.table({"a": pa.array([True, None, False])}), tmp_path / "l.parquet")
    with pytest.raises(BCEInputError) as ei:
        read_targets(tmp_path / "l.parquet")
    assert ei.value.row == 1 and ei.value.column == "a"
    _, T = read_targets(tmp_path / "l.parquet", nan_policy="propagate")
    assert T.dtype == np.float64 and np.isnan(T[1, 0]) and T[0, 0] == 1.0


def test_bad_arguments(tmp_path):
    with pytest.raises(BCEInputError):
        open_targets(str(LABELS), batch_rows=0)
    with pytest.raises(BCEInputError):
        open_targets(str(LABELS), nan_policy="nope")
    with pytest.raises(BCEInputError, match="nothing.parquet"):
        open_targets(str(tmp_path / "nothing.parquet"))


# ------------------------------------------- key-like columns and subset pairing
def test_sample_preds_and_labels_pair():
    preds, labels = pq.read_table(PREDS), pq.read_table(LABELS)
    inp, L, T = read_all(InputSpec(str(PREDS), str(LABELS), batch_rows=256))
    assert inp.class_names == DIGITS
    np.testing.assert_array_equal(L, np.column_stack([preds.column(n).to_numpy() for n in DIGITS]))
    np.testing.assert_array_equal(T, np.column_stack([labels.column(n).to_numpy() for n in DIGITS]))
    assert inp.sources["targets"]["columns"] == DIGITS and inp.sources["unpaired"] == []


def test_sample_join_on_id(tmp_path):
    preds = pq.read_table(PREDS)
    n = preds.num_rows
    perm = np.random.default_rng(1).permutation(n)
    pq.write_table(
        preds.append_column("id", pa.array(np.arange(n, dtype=np.int64))).take(perm),
        tmp_path / "p.parquet",
    )
    inp, L, T = read_all(InputSpec(str(tmp_path / "p.parquet"), str(LABELS), on="id"))
    labels = pq.read_table(LABELS)
    assert inp.class_names == DIGITS
    want_t = np.column_stack([labels.column(c).to_numpy() for c in DIGITS])[perm]
    np.testing.assert_array_equal(T, want_t)
    want_l = np.column_stack([preds.column(c).to_numpy() for c in DIGITS])[perm]
    np.testing.assert_array_equal(L, want_l)


@pytest.mark.parametrize("extra_side", ["preds", "labels"])
def test_strict_subset_uses_common_names_in_target_order(tmp_path, rng, extra_side):
    x = rng.standard_normal((15, 4))
    y = rng.random((15, 4)) < 0.5
    pcols = {"c": x[:, 2], "a": x[:, 0], "b": x[:, 1]}
    lcols = {"b": y[:, 1], "a": y[:, 0], "c": y[:, 2]}
    if extra_side == "preds":
        pcols["extra"] = x[:, 3]
    else:
        lcols["extra"] = y[:, 3]
    pq.write_table(pa.table(pcols), tmp_path / "p.parquet")
    pq.write_table(pa.table(lcols), tmp_path / "l.parquet")
    inp, L, T = read_all(InputSpec(str(tmp_path / "p.parquet"), str(tmp_path / "l.parquet")))
    assert inp.class_names == ["b", "a", "c"]
    np.testing.assert_array_equal(L, x[:, [1, 0, 2]])
    np.testing.assert_array_equal(T, y[:, [1, 0, 2]])
    assert inp.sources["unpaired"] == ["extra"]


def test_explicit_superset_is_not_second_guessed(tmp_path):
    pq.write_table(pa.table({"a": [0.1], "b": [0.2], "c": [0.3]}), tmp_path / "p.parquet")
    pq.write_table(pa.table({"a": [1.0], "b": [0.0]}), tmp_path / "l.parquet")
    spec = InputSpec(str(tmp_path / "p.parquet"), str(tmp_path / "l.parquet"), logits="a,b,c")
    with pytest.raises(BCEInputError) as ei:
        read_all(spec)
    assert "['a', 'b', 'c']" in str(ei.value) and "['a', 'b']" in str(ei.value)
    # the default side may still be narrowed to an explicit subset
    spec = InputSpec(str(tmp_path / "p.parquet"), str(tmp_path / "l.parquet"), targets="b")
    inp, L, T = read_all(spec)
    assert inp.class_names == ["b"] and L.tolist() == [[0.2]] and T.tolist() == [[0.0]]


def test_key_like_columns_skipped_by_default(tmp_path, rng):
    x = rng.standard_normal((10, 2))
    y = rng.random((10, 2)) < 0.5
    pq.write_table(
        pa.table({"index": np.arange(10), "a": x[:, 0], "b": x[:, 1]}), tmp_path / "p.parquet"
    )
    pq.write_table(
        pa.table({"a": y[:, 0], "Key": np.arange(10), "b": y[:, 1], "user_id": np.arange(10)}),
        tmp_path / "l.parquet",
    )
    inp, L, T = read_all(InputSpec(str(tmp_path / "p.parquet"), str(tmp_path / "l.parquet")))
    assert inp.class_names == ["a", "b"]
    np.testing.assert_array_equal(L, x)
    np.testing.assert_array_equal(T, y)


def test_npy_logits_with_labels_that_have_an_id(tmp_path, rng):
    x = rng.standard_normal((12, 2)).astype(np.float32)
    y = rng.random((12, 2)) < 0.5
    np.save(tmp_path / "x.npy", x)
    pq.write_table(pa.table({"id": np.arange(12), "a": y[:, 0], "b": y[:, 1]}), tmp_path / "l.pq")
    inp, L, T = read_all(InputSpec(str(tmp_path / "x.npy"), str(tmp_path / "l.pq")))
    assert inp.class_names == ["a", "b"]
    np.testing.assert_array_equal(L, x)
    np.testing.assert_array_equal(T, y)


# ------------------------------------------------------ array_shape, to_input_layout
def _layout_roundtrip(tmp_path, x, class_dim, batch_rows):
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", (x > 0).astype(np.float32))
    spec = InputSpec(
        str(tmp_path / "x.npy"), str(tmp_path / "y.npy"), class_dim=class_dim, batch_rows=batch_rows
    )
    with open_inputs(spec) as inp:
        # a stand-in per-element "loss" that depends on the value only
        losses = np.concatenate([2.0 * b.logits + 1.0 for b in inp.batches()])
        back = inp.to_input_layout(losses)
    assert inp.array_shape == x.shape
    assert back.shape == x.shape
    np.testing.assert_array_equal(back, 2.0 * x + 1.0)
    return inp


def test_to_input_layout_nchw(tmp_path, rng):
    x = rng.standard_normal((7, 3, 4, 5))
    inp = _layout_roundtrip(tmp_path, x, 1, 3)
    assert inp.class_dim == 1 and inp.n_classes == 3


def test_to_input_layout_nhc_class_dim_2(tmp_path, rng):
    x = rng.standard_normal((9, 6, 4)).astype(np.float32)
    inp = _layout_roundtrip(tmp_path, x, 2, 4)
    assert inp.class_dim == 2 and inp.n_classes == 4
    inp = _layout_roundtrip(tmp_path, x, -1, 5)
    assert inp.class_dim == 2


def test_to_input_layout_middle_class_axis(tmp_path, rng):
    x = rng.standard_normal((5, 2, 3, 4, 6))
    inp = _layout_roundtrip(tmp_path, x, 3, 2)
    assert inp.class_dim == 3 and inp.n_classes == 4


def test_to_input_layout_1d_and_2d(tmp_path, rng):
    inp = _layout_roundtrip(tmp_path, rng.standard_normal(11), 1, 4)
    assert inp.class_dim is None and inp.array_shape == (11,)
    inp = _layout_roundtrip(tmp_path, rng.standard_normal((11, 3)), 1, 4)
    assert inp.class_dim == 1


def test_to_input_layout_npz(tmp_path, rng):
    x = rng.standard_normal((8, 5, 3))
    np.savez(tmp_path / "d.npz", logits=x, targets=x > 0)
    with open_inputs(InputSpec(str(tmp_path / "d.npz"), class_dim=2, batch_rows=3)) as inp:
        losses = np.concatenate([b.logits for b in inp.batches()])
        np.testing.assert_array_equal(inp.to_input_layout(losses), x)
    assert inp.array_shape == (8, 5, 3) and inp.class_dim == 2


def test_to_input_layout_wrong_shape_and_tables(tmp_path, rng):
    x = rng.standard_normal((4, 3, 2))
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", x > 0)
    with open_inputs(InputSpec(str(tmp_path / "x.npy"), str(tmp_path / "y.npy"))) as inp:
        with pytest.raises(ValueError, match="expected shape"):
            inp.to_input_layout(np.zeros((3, 3, 2)))
    with open_inputs(InputSpec(str(PREDS), str(LABELS))) as inp:
        assert inp.array_shape is None and inp.class_dim is None
        a = np.zeros((5, 10))
        assert inp.to_input_layout(a) is a
