"""``bce eval --by COLUMN``: per-group reports, checked against a NumPy float64 reference
computed here (groups by hand with masks, standard errors from per-row sums, SciPy's
t quantile)."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy import stats
from typer.testing import CliRunner

from bce_cli.cli import app

from . import reference as ref

runner = CliRunner()
N, C = 203, 3


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def run_json(*args, code=0):
    res = invoke(*args, "--format", "json")
    assert res.exit_code == code, res.output
    return json.loads(res.stdout)


@pytest.fixture
def data(rng):
    x = (rng.standard_normal((N, C)) * 2).astype(np.float64)
    y = (rng.random((N, C)) < np.array([0.2, 0.5, 0.7])).astype(np.float64)
    w = rng.uniform(0.5, 2.0, N)
    keys = rng.choice(np.array(["train", "valid", "test", "extra"]), N)
    keys = keys.astype(object)
    keys[rng.random(N) < 0.1] = None  # nulls: a group of their own
    return x, y, w, keys


def table(x, y, keys=None, key_type=None, w=None, logits=True, targets=True):
    key_type = key_type or pa.string()
    cols = {}
    if logits:
        cols.update({f"logit_{c}": x[:, c] for c in range(C)})
    if targets:
        cols.update({f"label_{c}": y[:, c] for c in range(C)})
    t = pa.table(cols)
    if keys is not None:
        t = t.append_column("g", pa.array(list(keys), type=key_type))
    if w is not None:
        t = t.append_column("w", pa.array(w))
    return t


def write(tmp_path, name, t):
    path = tmp_path / name
    pq.write_table(t, path)
    return path


def expected(x, y, keys, *, w=None, keep=None, reduction="mean", confidence=0.95):
    """{key: (loss, se, (lo, hi), n_rows, class losses, n_pos, n_neg)} in float64."""
    loss = np.asarray(ref.elementwise(x, y, None if w is None else w[:, None]), dtype=np.float64)
    keep = np.ones_like(loss, dtype=bool) if keep is None else keep
    out = {}
    for key in {k for k in keys}:
        rows = np.array([k == key if key is not None else k is None for k in keys])
        a = np.where(keep[rows], loss[rows], 0.0)  # per-row, per-class loss sums
        n = keep[rows].astype(np.float64)
        big_a, big_n = a.sum(axis=1), n.sum(axis=1)
        r = int(rows.sum())
        if reduction == "mean":
            value = big_a.sum() / big_n.sum()
            resid = big_a - value * big_n
            se = np.sqrt(r / (r - 1) * (resid ** 2).sum()) / big_n.sum() if r > 1 else np.nan
            classes = a.sum(axis=0) / n.sum(axis=0)
        else:
            value = big_a.sum()
            se = np.sqrt(r / (r - 1) * ((big_a - value / r) ** 2).sum()) if r > 1 else np.nan
            classes = a.sum(axis=0)
        t = stats.t.ppf(0.5 + confidence / 2, r - 1) if r > 1 else np.nan
        yk = np.where(keep[rows], y[rows], 0.0)
        out[key] = (value, se, (value - t * se, value + t * se), r, classes, yk.sum(axis=0),
                    n.sum(axis=0) - yk.sum(axis=0))
    return out


def check(report, want, *, rtol=1e-9):
    got = {g["key"]: g for g in report["groups"]}
    assert set(got) == set(want)
    for key, (loss, se, ci, r, classes, n_pos, n_neg) in want.items():
        g = got[key]
        assert g["n_rows"] == r
        np.testing.assert_allclose(g["loss"], loss, rtol=rtol)
        if r > 1:
            np.testing.assert_allclose(g["loss_se"], se, rtol=1e-7)
            np.testing.assert_allclose(g["loss_ci"], ci, rtol=1e-7)
        else:
            assert g["loss_se"] is None and g["loss_ci"] is None
        np.testing.assert_allclose([c["loss"] for c in g["classes"]], classes, rtol=rtol)
        np.testing.assert_allclose([c["n_pos"] for c in g["classes"]], n_pos)
        np.testing.assert_allclose([c["n_neg"] for c in g["classes"]], n_neg)
        assert [c["name"] for c in g["classes"]] == [f"label_{c}" for c in range(C)]


def add_up(report):
    """The groups' loss sums and counts add to the overall ones."""
    groups = report["groups"]
    assert sum(g["n_rows"] for g in groups) == report["n_rows"]
    assert sum(g["n_elements"] for g in groups) == report["n_elements"]
    sums = [g["loss"] * (g["n_elements"] if report["reduction"] == "mean" else 1)
            for g in groups]
    total = report["loss"] * (report["n_elements"] if report["reduction"] == "mean" else 1)
    np.testing.assert_allclose(sum(sums), total, rtol=1e-12)


def test_string_keys_with_nulls_match_the_reference(tmp_path, data):
    x, y, _, keys = data
    path = write(tmp_path, "p.parquet", table(x, y, keys))
    report = run_json("eval", path, "--by", "g")
    check(report, expected(x, y, keys))
    add_up(report)
    assert [g["key"] for g in report["groups"]] == ["extra", "test", "train", "valid", None]
    assert report["by"] == "g"


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_batches_give_the_same_figures_as_one(tmp_path, data, reduction):
    x, y, _, keys = data
    path = write(tmp_path, "p.parquet", table(x, y, keys))
    one = run_json("eval", path, "--by", "g", "--reduction", reduction)
    many = run_json("eval", path, "--by", "g", "--reduction", reduction, "--batch-rows", "7")
    check(many, expected(x, y, keys, reduction=reduction))
    for a, b in zip(one["groups"], many["groups"], strict=True):
        assert a["key"] == b["key"] and a["n_rows"] == b["n_rows"]
        np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-12)
        np.testing.assert_allclose(a["loss_ci"], b["loss_ci"], rtol=1e-9)
    add_up(many)


def test_integer_keys_and_confidence(tmp_path, data, rng):
    x, y, _, _ = data
    keys = rng.integers(-2, 3, N).astype(object)
    path = write(tmp_path, "p.parquet", table(x, y, keys, pa.int64()))
    report = run_json("eval", path, "--by", "g", "--confidence", "0.9")
    check(report, expected(x, y, keys, confidence=0.9))
    assert [g["key"] for g in report["groups"]] == [-2, -1, 0, 1, 2]


def test_dictionary_encoded_keys_in_several_row_groups(tmp_path, data):
    x, y, _, keys = data
    t = table(x, y, keys)
    t = t.set_column(t.schema.get_field_index("g"), "g", pc_dictionary(t.column("g")))
    path = tmp_path / "d.parquet"
    pq.write_table(t, path, row_group_size=50)
    report = run_json("eval", path, "--by", "g", "--batch-rows", "7")
    check(report, expected(x, y, keys))


def pc_dictionary(col):
    import pyarrow.compute as pc

    return pc.dictionary_encode(col)


def test_key_in_labels_and_through_a_join(tmp_path, data, rng):
    x, y, _, keys = data
    preds = write(tmp_path, "p.parquet", table(x, y, targets=False))
    labels = write(tmp_path, "l.parquet", table(x, y, keys, logits=False))
    report = run_json("eval", preds, labels, "--by", "g", "--batch-rows", "50")
    check(report, expected(x, y, keys))
    assert report["inputs"]["by"] == {"column": "g", "from": "labels"}
    # --on: LABELS shuffled; the key column from either side
    ids = np.arange(N)
    perm = rng.permutation(N)
    p = table(x, y, targets=False).append_column("id", pa.array(ids))
    lt = table(x, y, keys, logits=False).append_column("id", pa.array(ids)).take(perm)
    preds = write(tmp_path, "pj.parquet", p)
    labels = write(tmp_path, "lj.parquet", lt)
    report = run_json("eval", preds, labels, "--on", "id", "--by", "g", "--batch-rows", "9")
    check(report, expected(x, y, keys))
    p = p.append_column("h", pa.array(list(keys), pa.string()))
    preds = write(tmp_path, "pj2.parquet", p)
    report = run_json("eval", preds, labels, "--on", "id", "--by", "h")
    check(report, expected(x, y, keys))
    assert report["inputs"]["by"]["from"] == "preds"


def test_weights_and_ignore_value(tmp_path, data, rng):
    x, y, w, keys = data
    y = y.copy()
    skip = rng.random((N, C)) < 0.2
    y[skip] = -1
    path = write(tmp_path, "p.parquet", table(x, y, keys, w=w))
    report = run_json("eval", path, "--by", "g", "--weight", "w", "--ignore-value", "-1",
                      "--batch-rows", "11")
    yz = np.where(skip, 0.0, y)
    check(report, expected(x, yz, keys, w=w, keep=~skip))
    add_up(report)


def test_csv_key_column(tmp_path, data):
    x, y, _, keys = data
    frame = table(x, y).append_column("g", pa.array([str(k) for k in keys]))
    path = tmp_path / "p.csv"
    import pyarrow.csv as pacsv

    pacsv.write_csv(frame, path)
    res = invoke("eval", path, "--by", "g", "--format", "csv")
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    assert rows[0]["group"] == "(all)"
    want = expected(x, y, [str(k) for k in keys])
    overall = {r["group"]: float(r["loss"]) for r in rows if r["name"] == "(overall)"}
    for key, value in want.items():
        np.testing.assert_allclose(overall[key], value[0], rtol=1e-9)


def test_gate_exit_codes_and_failure_line(tmp_path, data):
    x, y, _, keys = data
    path = write(tmp_path, "p.parquet", table(x, y, keys))
    want = expected(x, y, keys)
    worst = max(want, key=lambda k: want[k][0])
    top = want[worst][0]
    ok = invoke("eval", path, "--by", "g", "--max-group-loss", top * 1.01)
    assert ok.exit_code == 0, ok.output
    bad = invoke("eval", path, "--by", "g", "--max-group-loss", top * 0.99)
    assert bad.exit_code == 1
    assert "per group of g, worst first" in bad.stdout  # the report still prints
    assert f"group {json.dumps(worst)}: loss" in bad.output
    report = run_json("eval", path, "--by", "g", "--max-group-loss", top * 0.99, code=1)
    assert report["passed"] is False and len(report["failures"]) == 1


def test_table_shows_the_worst_groups_first(tmp_path, rng):
    n = 30 * 4
    x = rng.standard_normal((n, 1))
    y = (rng.random((n, 1)) < 0.5).astype(float)
    keys = [f"k{i % 30:02d}" for i in range(n)]
    t = pa.table({"logit": x[:, 0], "label": y[:, 0], "g": keys})
    path = write(tmp_path, "p.parquet", t)
    res = invoke("eval", path, "--by", "g")
    assert res.exit_code == 0, res.output
    report = run_json("eval", path, "--by", "g")
    ranked = sorted(report["groups"], key=lambda g: -g["loss"])
    lines = res.stdout.split("worst first")[1].splitlines()
    shown = [ln.split()[0] for ln in lines if ln.strip().startswith("k")]
    assert shown == [g["key"] for g in ranked[:20]]
    assert "10 more not shown" in res.stdout
    md = invoke("eval", path, "--by", "g", "--format", "markdown").stdout
    assert "10 more group(s) not shown" in md and f"| {ranked[0]['key']} |" in md


def test_usage_errors(tmp_path, data):
    x, y, _, keys = data
    path = write(tmp_path, "p.parquet", table(x, y, keys))
    res = invoke("eval", path, "--by", "nope")
    assert res.exit_code == 2 and "nope" in res.output and "--by" in res.output
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    res = invoke("eval", tmp_path / "x.npy", tmp_path / "y.npy", "--by", "g")
    assert res.exit_code == 2 and "named columns" in res.output
    res = invoke("eval", path, "--max-group-loss", "1")
    assert res.exit_code == 2 and "--by" in res.output
    res = invoke("eval", path, "--by", "logit_0")
    assert res.exit_code == 2 and "strings, integers" in res.output


def test_too_many_groups(tmp_path, rng):
    n = 100_001
    t = pa.table({"logit": rng.standard_normal(n), "label": (rng.random(n) < 0.5) * 1.0,
                  "g": np.arange(n)})
    path = write(tmp_path, "p.parquet", t)
    res = invoke("eval", path, "--by", "g")
    assert res.exit_code == 2 and "more than 100,000 distinct values" in res.output
    ok = invoke("eval", path, "--by", "g", "--format", "json", "--batch-rows", "1000000")
    assert ok.exit_code == 2  # also in one batch
