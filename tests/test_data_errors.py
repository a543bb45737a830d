"""Bad input: one exception type, BCEInputError, naming file, column and row."""

from __future__ import annotations

import io
import os
import pickle

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import pytest

from bce_cli.data import InputSpec, open_inputs
from bce_cli.errors import BCEInputError


def run(spec, stdin=None):
    """Open and read everything; return nothing, or raise."""
    with open_inputs(spec, stdin=stdin) as inp:
        for _ in inp.batches():
            pass


def fails(spec, *, file=None, column=None, row=None, match=None, stdin=None):
    with pytest.raises(BCEInputError) as ei:
        run(spec, stdin=stdin)
    err = ei.value
    text = str(err)
    if file is not None:
        assert err.file is not None and str(file) in err.file, text
        assert str(file) in text
    if column is not None:
        assert err.column == column, text
        assert repr(column) in text
    if row is not None:
        assert err.row == row, text
        assert f"row {row}" in text
    if match is not None:
        assert match in text, text
    return err


def good_table(n=20, c=2):
    rng = np.random.default_rng(0)
    cols = {f"logit_{i}": rng.normal(size=n).astype(np.float32) for i in range(c)}
    cols.update({f"target_{i}": rng.random(n) < 0.5 for i in range(c)})
    return pa.table(cols)


@pytest.fixture
def good(tmp_path):
    p = tmp_path / "good.parquet"
    pq.write_table(good_table(), p)
    return p


# ----------------------------------------------------------------- files
def test_missing_file(tmp_path, good):
    fails(InputSpec(str(tmp_path / "nope.parquet")), file="nope.parquet", match="no such file")
    fails(InputSpec(str(good), str(tmp_path / "labels.npy")), file="labels.npy")


@pytest.mark.parametrize("ext", [".parquet", ".arrow", ".npy", ".npz", ".csv", ".feather"])
def test_empty_file(tmp_path, ext):
    p = tmp_path / f"empty{ext}"
    p.write_bytes(b"")
    fails(InputSpec(str(p)), file=f"empty{ext}")


def test_empty_stdin():
    fails(InputSpec("-"), file="<stdin>", stdin=io.BytesIO(b""), match="empty")


def test_truncated_parquet(tmp_path, good):
    data = good.read_bytes()
    p = tmp_path / "cut.parquet"
    p.write_bytes(data[: len(data) // 2])
    fails(InputSpec(str(p)), file="cut.parquet", match="corrupt or truncated")


def test_corrupt_parquet_page_fails_while_reading(tmp_path):
    x = np.zeros(50_000, np.float32)
    p = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"logit": x, "target": x}), p, compression="snappy")
    data = bytearray(p.read_bytes())
    data[8:24] = b"\xff" * 16  # inside the first page header
    p.write_bytes(bytes(data))
    inp = open_inputs(InputSpec(str(p)))  # opening succeeds: the footer is fine
    with pytest.raises(BCEInputError) as ei:
        list(inp.batches())
    assert "bad.parquet" in str(ei.value) and "corrupt" in str(ei.value)


def test_truncated_arrow_and_npy(tmp_path):
    t = good_table(500)
    sink = io.BytesIO()
    with ipc.new_file(sink, t.schema) as w:
        w.write_table(t)
    p = tmp_path / "cut.arrow"
    p.write_bytes(sink.getvalue()[:-40])
    fails(InputSpec(str(p)), file="cut.arrow")
    np.save(tmp_path / "x.npy", np.zeros((100, 3)))
    data = (tmp_path / "x.npy").read_bytes()
    (tmp_path / "cut.npy").write_bytes(data[:-100])
    np.save(tmp_path / "y.npy", np.zeros((100, 3)))
    fails(InputSpec(str(tmp_path / "cut.npy"), str(tmp_path / "y.npy")), file="cut.npy")


def test_truncated_npz_member(tmp_path):
    np.savez(tmp_path / "a.npz", logits=np.zeros((1000, 2)), targets=np.zeros((1000, 2)))
    data = (tmp_path / "a.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 3])
    fails(InputSpec(str(tmp_path / "cut.npz")), file="cut.npz")


def test_unknown_format(tmp_path):
    p = tmp_path / "data.xyz"
    p.write_bytes(b"hello world, not data")
    err = fails(InputSpec(str(p)), file="data.xyz", match="unknown format")
    assert ".parquet" in err.hint


def test_arrow_extension_with_garbage(tmp_path):
    p = tmp_path / "data.arrow"
    p.write_bytes(b"garbage garbage garbage")
    fails(InputSpec(str(p)), file="data.arrow", match="not an Arrow")


def test_glob_without_match_and_empty_dir(tmp_path):
    fails(InputSpec(str(tmp_path / "*.parquet")), file="*.parquet", match="no file matches")
    (tmp_path / "d").mkdir()
    fails(InputSpec(str(tmp_path / "d")), file="d", match="no data files")


# ----------------------------------------------------------------- columns
def test_missing_column_lists_available(tmp_path, good):
    err = fails(
        InputSpec(str(good), logits="logit_0,nope", targets="target_*"),
        file="good.parquet",
        column="nope",
    )
    assert "logit_1" in str(err) and "target_0" in str(err)
    fails(
        InputSpec(str(good), logits="zz*", targets="target_*"),
        file="good.parquet",
        column="zz*",
        match="no column matches",
    )


def test_no_recognisable_columns(tmp_path):
    p = tmp_path / "p.parquet"
    pq.write_table(pa.table({"a": [1.0], "b": [0.0]}), p)
    err = fails(InputSpec(str(p)), file="p.parquet", match="cannot tell which columns")
    assert "--logits" in err.hint


def test_non_numeric_column(tmp_path):
    p = tmp_path / "s.parquet"
    pq.write_table(pa.table({"logit": [0.1, 0.2], "target": ["yes", "no"]}), p)
    fails(
        InputSpec(str(p), logits="logit", targets="target"),
        file="s.parquet",
        column="target",
        match="not numeric",
    )
    # a dictionary of strings is not numeric either
    pq.write_table(
        pa.table({"logit": [0.1, 0.2], "target": pa.array(["a", "b"]).dictionary_encode()}), p
    )
    fails(InputSpec(str(p), logits="logit", targets="target"), file="s.parquet", column="target")


def test_non_numeric_npy(tmp_path):
    np.save(tmp_path / "x.npy", np.array(["a", "b"]))
    np.save(tmp_path / "y.npy", np.zeros(2))
    fails(
        InputSpec(str(tmp_path / "x.npy"), str(tmp_path / "y.npy")),
        file="x.npy",
        match="not numbers",
    )


def test_class_count_mismatch_lists_both(tmp_path):
    p, q = tmp_path / "p.parquet", tmp_path / "l.parquet"
    pq.write_table(pa.table({"a": [0.1], "b": [0.2], "c": [0.3]}), p)
    # neither name set contains the other (a strict subset would pair by common names)
    pq.write_table(pa.table({"a": [1.0], "d": [0.0]}), q)
    err = fails(InputSpec(str(p), str(q)), file="p.parquet")
    assert "['a', 'b', 'c']" in str(err) and "['a', 'd']" in str(err)


def test_array_shape_mismatch(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((10, 3)))
    np.save(tmp_path / "y.npy", np.zeros((10, 4)))
    fails(InputSpec(str(tmp_path / "x.npy"), str(tmp_path / "y.npy")), match="3 classes")


def test_single_npy_needs_labels(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((10, 3)))
    fails(InputSpec(str(tmp_path / "x.npy")), file="x.npy", match="second file")


def test_bad_class_dim(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((10, 3, 2)))
    np.save(tmp_path / "y.npy", np.zeros((10, 3, 2)))
    fails(
        InputSpec(str(tmp_path / "x.npy"), str(tmp_path / "y.npy"), class_dim=0),
        file="x.npy",
        match="class_dim",
    )


# ----------------------------------------------------------------- rows
def test_row_count_mismatch_parquet(tmp_path):
    p, q = tmp_path / "p.parquet", tmp_path / "l.parquet"
    pq.write_table(pa.table({"a": np.zeros(10)}), p)
    pq.write_table(pa.table({"a": np.zeros(12)}), q)
    err = fails(InputSpec(str(p), str(q)), match="row counts differ")
    assert "10" in str(err) and "12" in str(err) and "l.parquet" in str(err)


def test_row_count_mismatch_npy(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((10, 3)))
    np.save(tmp_path / "y.npy", np.zeros((11, 3)))
    fails(InputSpec(str(tmp_path / "x.npy"), str(tmp_path / "y.npy")), match="row counts differ")


def test_row_count_mismatch_found_while_streaming_csv(tmp_path):
    p, q = tmp_path / "p.csv", tmp_path / "l.csv"
    p.write_text("a\n" + "0.5\n" * 10)
    q.write_text("a\n" + "1\n" * 7)
    inp = open_inputs(InputSpec(str(p), str(q), batch_rows=3))
    assert inp.n_rows is None
    with pytest.raises(BCEInputError, match="row counts differ") as ei:
        list(inp.batches())
    assert "l.csv" in str(ei.value) and "p.csv" in str(ei.value)


def test_no_rows(tmp_path):
    p = tmp_path / "z.parquet"
    pq.write_table(good_table(0), p)
    fails(InputSpec(str(p)), file="z.parquet", match="no rows")
    c = tmp_path / "z.csv"
    c.write_text("logit,target\n")
    fails(InputSpec(str(c)), file="z.csv", match="no rows")
    np.save(tmp_path / "x.npy", np.zeros((0, 3)))
    np.save(tmp_path / "y.npy", np.zeros((0, 3)))
    fails(
        InputSpec(str(tmp_path / "x.npy"), str(tmp_path / "y.npy")), file="x.npy", match="no rows"
    )


# ----------------------------------------------------------------- values
def test_null_is_an_error_naming_row(tmp_path):
    vals = np.arange(300, dtype=np.float64)
    t = pa.table({"logit": pa.array(vals, mask=np.arange(300) == 257), "target": np.ones(300)})
    p = tmp_path / "n.parquet"
    pq.write_table(t, p, row_group_size=100)
    err = fails(
        InputSpec(str(p), batch_rows=64), file="n.parquet", column="logit", row=257, match="null"
    )
    assert "--nan-policy" in err.hint


def test_null_in_second_dataset_file_names_that_file(tmp_path):
    d = tmp_path / "ds"
    d.mkdir()
    pq.write_table(pa.table({"logit": np.zeros(50), "target": np.zeros(50)}), d / "a.parquet")
    pq.write_table(
        pa.table(
            {"logit": np.zeros(50), "target": pa.array(np.zeros(50), mask=np.arange(50) == 5)}
        ),
        d / "b.parquet",
    )
    fails(InputSpec(str(d), batch_rows=16), file="b.parquet", column="target", row=5)


def test_null_in_list_and_csv(tmp_path):
    p = tmp_path / "l.parquet"
    pq.write_table(
        pa.table(
            {"logits": pa.array([[1.0, 2.0], [3.0, None]]), "targets": pa.array([[1, 0], [0, 1]])}
        ),
        p,
    )
    fails(InputSpec(str(p)), file="l.parquet", column="logits", row=1)
    c = tmp_path / "n.csv"
    c.write_text("logit,target\n0.5,1\n0.2,\n")
    fails(InputSpec(str(c)), file="n.csv", column="target", row=1)


def test_ragged_list(tmp_path):
    p = tmp_path / "r.parquet"
    rows = [[0.1, 0.2, 0.3]] * 70 + [[0.1, 0.2]] + [[0.1, 0.2, 0.3]] * 5
    pq.write_table(pa.table({"logits": pa.array(rows), "targets": pa.array(rows)}), p)
    fails(
        InputSpec(str(p), batch_rows=32), file="r.parquet", column="logits", row=70, match="ragged"
    )


def test_list_mixed_with_scalars(tmp_path):
    p = tmp_path / "m.parquet"
    pq.write_table(
        pa.table({"logits": pa.array([[0.1]]), "logit_x": [0.2], "targets": pa.array([[1.0]])}), p
    )
    fails(
        InputSpec(str(p), logits="logits,logit_x", targets="targets"),
        file="m.parquet",
        column="logits",
        match="only",
    )


# ----------------------------------------------------------------- datasets
def test_dataset_schema_mismatch_type(tmp_path):
    d = tmp_path / "ds"
    d.mkdir()
    pq.write_table(
        pa.table({"logit": np.zeros(3, np.float32), "target": np.zeros(3)}), d / "a.parquet"
    )
    pq.write_table(
        pa.table({"logit": np.zeros(3, np.float64), "target": np.zeros(3)}), d / "b.parquet"
    )
    fails(InputSpec(str(d)), file="b.parquet", column="logit", match="differs")


def test_dataset_schema_mismatch_missing_column(tmp_path):
    d = tmp_path / "ds"
    d.mkdir()
    pq.write_table(pa.table({"logit": np.zeros(3), "target": np.zeros(3)}), d / "a.parquet")
    pq.write_table(pa.table({"logit": np.zeros(3)}), d / "b.parquet")
    fails(InputSpec(str(d / "*.parquet")), file="b.parquet", column="target", match="lacks")


def test_dataset_with_non_parquet_file(tmp_path):
    d = tmp_path / "ds"
    d.mkdir()
    pq.write_table(pa.table({"logit": np.zeros(3), "target": np.zeros(3)}), d / "a.parquet")
    (d / "notes.txt").write_text("hello")
    fails(InputSpec(str(d)), file="notes.txt", match="Parquet files only")


# ----------------------------------------------------------------- pickles
def test_pickled_npy_refused(tmp_path):
    marker = tmp_path / "executed"
    np.save(tmp_path / "y.npy", np.zeros(2))
    obj = np.array([{"a": 1}, None], dtype=object)
    np.save(tmp_path / "obj.npy", obj, allow_pickle=True)
    fails(
        InputSpec(str(tmp_path / "obj.npy"), str(tmp_path / "y.npy")),
        file="obj.npy",
        match="pickled",
    )

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    with open(tmp_path / "evil.npy", "wb") as f:
        pickle.dump(Evil(), f)
    fails(
        InputSpec(str(tmp_path / "evil.npy"), str(tmp_path / "y.npy")),
        file="evil.npy",
        match="pickled",
    )
    assert not marker.exists()


def test_pickled_npz_member_refused(tmp_path):
    np.savez(tmp_path / "a.npz", logits=np.array([1, None], dtype=object), targets=np.zeros(2))
    fails(InputSpec(str(tmp_path / "a.npz")), file="a.npz", match="pickled")


def test_npz_unknown_names(tmp_path):
    np.savez(tmp_path / "a.npz", p=np.zeros(2), q=np.zeros(2), r=np.zeros(2))
    err = fails(InputSpec(str(tmp_path / "a.npz")), file="a.npz", match="cannot tell")
    assert "p, q, r" in str(err)
    fails(InputSpec(str(tmp_path / "a.npz"), logits="p", targets="zz"), file="a.npz", column="zz")


# ----------------------------------------------------------------- join
def _join_files(tmp_path, pid, lid):
    p, q = tmp_path / "p.parquet", tmp_path / "l.parquet"
    pq.write_table(pa.table({"id": pid, "x": np.zeros(len(pid))}), p)
    pq.write_table(pa.table({"id": lid, "x": np.zeros(len(lid))}), q)
    return str(p), str(q)


def test_join_duplicates(tmp_path):
    p, q = _join_files(tmp_path, [1, 2, 3], [1, 2, 2, 3])
    err = fails(InputSpec(p, q, on="id"), file="l.parquet", column="id", match="duplicate")
    assert "1 duplicate" in str(err) and "[2]" in str(err)


def test_join_unmatched(tmp_path):
    p, q = _join_files(tmp_path, [1, 2, 3, 4, 5], [1, 2, 3])
    err = fails(InputSpec(p, q, on="id"), file="p.parquet", column="id", match="no match")
    assert "2 key(s)" in str(err) and "4" in str(err)
    p, q = _join_files(tmp_path, [1, 2], [1, 2, 9])
    fails(InputSpec(p, q, on="id"), file="l.parquet", column="id", match="no match")


def test_join_missing_key_column(tmp_path):
    p, q = _join_files(tmp_path, [1], [1])
    fails(InputSpec(p, q, on="key"), file="p.parquet", column="key")


# ----------------------------------------------------------------- spec
def test_bad_spec_values():
    with pytest.raises(BCEInputError):
        InputSpec("x.parquet", nan_policy="ignore")
    with pytest.raises(BCEInputError):
        InputSpec("x.parquet", batch_rows=0)


def test_both_stdin():
    with pytest.raises(BCEInputError, match="standard input"):
        open_inputs(InputSpec("-", "-"))


def test_weight_column_missing(tmp_path, good):
    fails(InputSpec(str(good), weight="w"), column="w", match="no weight column")


def _open_fds():
    return set(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
@pytest.mark.parametrize(
    "case",
    [
        # one archive: fails after it is opened, at the weight (a later step)
        ("one.npz", None, {"weight": "no_such_column"}, "no weight column"),
        # two archives: the second's arrays do not match the first's (a later step)
        ("a.npz", "b.npz", {}, "have 3 classes per row but targets have 2"),
        # an archive, then a weight file that is no .npy
        ("a.npz", "b3.npz", {"weight": "w.txt"}, "must be a .npy"),
    ],
)
def test_failed_open_closes_what_it_opened(tmp_path, case):
    preds, labels, extra, message = case
    rng = np.random.default_rng(5)
    x = rng.standard_normal((20, 3))
    np.savez(tmp_path / "one.npz", logits=x, targets=x > 0)
    np.savez(tmp_path / "a.npz", logits=x)
    np.savez(tmp_path / "b.npz", targets=(x > 0)[:, :2])
    np.savez(tmp_path / "b3.npz", targets=x > 0)
    (tmp_path / "w.txt").write_text("1\n")
    labels_path = None if labels is None else str(tmp_path / labels)
    weight = extra.get("weight")
    if weight == "w.txt":
        weight = str(tmp_path / weight)
    before = _open_fds()
    with pytest.raises(BCEInputError, match=message) as info:
        open_inputs(InputSpec(str(tmp_path / preds), labels_path, weight=weight))
    # the error (and its traceback, which holds the opening's frames) is still alive here
    assert _open_fds() <= before, info.value
