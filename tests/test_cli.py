"""The command line as users and CI pipelines run it."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from bce_cli.cli import app

from . import reference as ref

ROOT = Path(__file__).resolve().parent.parent

runner = CliRunner()
BCE = [sys.executable, "-m", "bce_cli"]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def arrays(rng):
    x = (rng.standard_normal((400, 3)) * 2).astype(np.float32)
    y = rng.random((400, 3)) < np.array([0.1, 0.5, 0.3])
    return x, y


@pytest.fixture
def npy_pair(tmp_path, arrays):
    x, y = arrays
    np.save(tmp_path / "logits.npy", x)
    np.save(tmp_path / "targets.npy", y.astype(np.float32))
    return tmp_path / "logits.npy", tmp_path / "targets.npy"


@pytest.fixture
def parquet_pair(tmp_path, arrays):
    x, y = arrays
    names = ["cat", "dog", "bird"]
    pq.write_table(pa.table({n: x[:, i] for i, n in enumerate(names)}), tmp_path / "p.parquet")
    pq.write_table(pa.table({n: y[:, i] for i, n in enumerate(names)}), tmp_path / "l.parquet")
    return tmp_path / "p.parquet", tmp_path / "l.parquet"


def run_json(*args):
    res = invoke("eval", *args, "--format", "json")
    assert res.exit_code in (0, 1), res.output
    return json.loads(res.stdout), res


def test_json_report_matches_reference(npy_pair, arrays):
    x, y = arrays
    report, _ = run_json(*npy_pair)
    per = ref.elementwise(x, y).astype(np.float64)
    assert report["loss"] == pytest.approx(per.mean(), rel=1e-12)
    assert report["reduction"] == "mean"
    assert (report["n_rows"], report["n_classes"], report["n_elements"]) == (400, 3, 1200)
    assert report["passed"] is True and report["failures"] == []
    assert isinstance(report["version"], str)
    for c, cls in enumerate(report["classes"]):
        assert cls["name"] == str(c)
        assert cls["loss"] == pytest.approx(per[:, c].mean(), rel=1e-12)
        assert cls["n_pos"] == y[:, c].sum() and cls["n_neg"] == (~y[:, c]).sum()
        assert cls["suggested_pos_weight"] == pytest.approx((~y[:, c]).sum() / y[:, c].sum())


def test_parquet_wide_class_names_and_sum(parquet_pair, arrays):
    x, y = arrays
    report, _ = run_json(*parquet_pair, "--reduction", "sum")
    per = ref.elementwise(x, y).astype(np.float64)
    assert [c["name"] for c in report["classes"]] == ["cat", "dog", "bird"]
    assert report["loss"] == pytest.approx(per.sum(), rel=1e-12)
    assert report["classes"][1]["loss"] == pytest.approx(per[:, 1].sum(), rel=1e-12)


@pytest.mark.parametrize("spec", ["2.5", "1,2,3", "file.npy", "suggest.json"])
def test_pos_weight_specs(spec, parquet_pair, arrays, tmp_path):
    x, y = arrays
    if spec == "file.npy":
        pw = np.array([0.5, 1.5, 4.0])
        np.save(tmp_path / spec, pw)
        spec = tmp_path / spec
    elif spec == "suggest.json":
        res = invoke("suggest-pos-weight", parquet_pair[1], "--output", tmp_path / spec)
        assert res.exit_code == 0, res.output
        pw = (~y).sum(0) / y.sum(0)
        spec = tmp_path / spec
    else:
        pw = np.array([float(v) for v in spec.split(",")]) * np.ones(3)
    report, _ = run_json(*parquet_pair, "--pos-weight", spec)
    want = ref.elementwise(x, y, pos_weight=pw).astype(np.float64).mean()
    assert report["loss"] == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("suffix", [".npy", ".parquet"])
def test_reduction_none_writes_per_element_losses(suffix, parquet_pair, arrays, tmp_path):
    x, y = arrays
    out = tmp_path / f"losses{suffix}"
    report, _ = run_json(*parquet_pair, "--reduction", "none", "--output", out)
    want = ref.elementwise(x, y).astype(np.float32)
    got = np.load(out) if suffix == ".npy" else np.column_stack(
        [c.to_numpy() for c in pq.read_table(out).columns])
    if suffix == ".parquet":
        assert pq.read_table(out).column_names == ["cat", "dog", "bird"]
        _assert_plain_losses(out, ["cat", "dog", "bird"])
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert report["reduction"] == "none"
    assert report["loss"] == pytest.approx(want.astype(float).mean(), rel=1e-6)


def _assert_plain_losses(path, names, key=None):
    """Loss columns are written plain and uncompressed (distinct floats: a dictionary
    made the files half as large again and the writes 4x slower); a key column keeps
    pyarrow's dictionary and Snappy."""
    md = pq.ParquetFile(path).metadata
    for g in range(md.num_row_groups):
        for j in range(md.num_columns):
            chunk = md.row_group(g).column(j)
            name = chunk.path_in_schema.split(".")[0]
            if name == key:
                assert chunk.has_dictionary_page and chunk.compression == "SNAPPY"
            else:
                assert name in names
                assert not chunk.has_dictionary_page, name
                assert "PLAIN_DICTIONARY" not in chunk.encodings, chunk.encodings
                assert "RLE_DICTIONARY" not in chunk.encodings, chunk.encodings
                assert chunk.compression == "UNCOMPRESSED", chunk.compression


def test_label_smoothing_ignore_value_and_from_probs(tmp_path, arrays):
    x, y = arrays
    yl = y.astype(np.float32)
    yl[::5, 0] = -1
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", yl)
    report, _ = run_json(tmp_path / "x.npy", tmp_path / "y.npy", "--ignore-value", "-1",
                         "--label-smoothing", "0.1")
    keep = yl != -1
    ys = np.where(keep, yl, 0).astype(np.float64) * 0.9 + 0.05
    per = ref.elementwise(x, ys).astype(np.float64)
    assert report["loss"] == pytest.approx(per[keep].mean(), rel=1e-12)
    assert report["n_elements"] == keep.sum()
    probs = 1 / (1 + np.exp(-x.astype(np.float64)))
    np.save(tmp_path / "p.npy", probs)
    np.save(tmp_path / "y2.npy", y)
    from_probs, _ = run_json(tmp_path / "p.npy", tmp_path / "y2.npy", "--from-probs")
    assert from_probs["loss"] == pytest.approx(float(ref.bce(x, y)), rel=1e-9)


def test_probabilities_draw_a_warning(tmp_path, arrays):
    _, y = arrays
    np.save(tmp_path / "p.npy", np.full(y.shape, 0.3))
    np.save(tmp_path / "y.npy", y)
    res = invoke("eval", tmp_path / "p.npy", tmp_path / "y.npy")
    assert res.exit_code == 0
    assert "look like probabilities" in res.stderr and "--from-probs" in res.stderr
    assert "look like" not in res.stdout


def test_nan_policies(tmp_path, arrays):
    x, y = arrays
    x = x.copy()
    x[7, 2] = np.nan
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    err = invoke("eval", tmp_path / "x.npy", tmp_path / "y.npy")
    assert err.exit_code == 2
    assert "x.npy" in err.stderr and "row 7" in err.stderr and "NaN" in err.stderr
    omit, _ = run_json(tmp_path / "x.npy", tmp_path / "y.npy", "--nan-policy", "omit")
    assert omit["n_elements"] == x.size - 1
    res = invoke("eval", tmp_path / "x.npy", tmp_path / "y.npy", "--nan-policy", "propagate",
                 "--format", "json", "--max-loss", "10")
    assert res.exit_code == 1  # a NaN loss never passes a gate
    assert json.loads(res.stdout)["loss"] is None


def test_gates_and_exit_codes(npy_pair, tmp_path, arrays):
    x, y = arrays
    loss = float(ref.bce(x, y))
    per_class = ref.elementwise(x, y).astype(np.float64).mean(0)
    ok = invoke("eval", *npy_pair, "--max-loss", loss * 1.01)
    assert ok.exit_code == 0, ok.output
    bad = invoke("eval", *npy_pair, "--max-loss", loss * 0.99, "--format", "json")
    assert bad.exit_code == 1
    report = json.loads(bad.stdout)
    assert report["passed"] is False and "--max-loss" in report["failures"][0]
    assert "gate failed" in bad.stderr
    worst = int(np.argmax(per_class))
    res = invoke("eval", *npy_pair, "--max-class-loss", per_class[worst] * 0.999,
                 "--format", "json")
    assert res.exit_code == 1
    assert any(f"class {worst}" in f for f in json.loads(res.stdout)["failures"])
    base = tmp_path / "base.json"
    assert invoke("eval", *npy_pair, "--report", base).exit_code == 0
    same = invoke("eval", *npy_pair, "--baseline", base, "--max-increase", 0)
    assert same.exit_code == 0
    worse = json.loads(base.read_text())
    worse["loss"] -= 0.01
    worse["classes"][0]["loss"] -= 0.01
    base.write_text(json.dumps(worse))
    res = invoke("eval", *npy_pair, "--baseline", base, "--max-increase", 0.005,
                 "--format", "json")
    assert res.exit_code == 1
    assert len(json.loads(res.stdout)["failures"]) == 2


def test_report_file_equals_json_stdout(npy_pair, tmp_path):
    report, res = run_json(*npy_pair, "--report", tmp_path / "r.json")
    assert json.loads((tmp_path / "r.json").read_text()) == report


def test_csv_and_markdown_and_table(parquet_pair, arrays):
    x, y = arrays
    per = ref.elementwise(x, y).astype(np.float64).mean(0)
    res = invoke("eval", *parquet_pair, "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    assert [r["name"] for r in rows] == ["cat", "dog", "bird", "(overall)"]
    np.testing.assert_allclose([float(r["loss"]) for r in rows[:3]], per, rtol=1e-12)
    md = invoke("eval", *parquet_pair, "--format", "markdown").stdout
    assert md.startswith("### bce eval") and "| cat |" in md and "|---|" in md
    table = invoke("eval", *parquet_pair).stdout
    assert "bird" in table and f"{per[2]:.5g}" in table


def test_suggest_pos_weight(parquet_pair, arrays, tmp_path):
    _, y = arrays
    y = y.copy()
    res = invoke("suggest-pos-weight", parquet_pair[1], "--format", "json")
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    want = (~y).sum(0) / y.sum(0)
    np.testing.assert_allclose(report["pos_weight"], want, rtol=1e-12)
    assert [c["name"] for c in report["classes"]] == ["cat", "dog", "bird"]
    assert report["method"] == "ratio"
    sq = json.loads(invoke("suggest-pos-weight", parquet_pair[1], "--method", "sqrt",
                           "--clip-max", "2", "--format", "json").stdout)
    np.testing.assert_allclose(sq["pos_weight"], np.minimum(np.sqrt(want), 2.0), rtol=1e-12)
    y[:, 1] = False
    pq.write_table(pa.table({"a": y[:, 0], "b": y[:, 1]}), tmp_path / "nopos.parquet")
    res = invoke("suggest-pos-weight", tmp_path / "nopos.parquet", "--format", "csv")
    assert res.exit_code == 0
    assert "no positive" in res.stderr
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    assert rows[1]["pos_weight"] == "" and float(rows[0]["pos_weight"]) == pytest.approx(want[0])


def test_threads_and_batch_rows_do_not_change_the_result(npy_pair):
    a, _ = run_json(*npy_pair)
    b, _ = run_json(*npy_pair, "--threads", "1", "--batch-rows", "7")
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-14)
    for ca, cb in zip(a["classes"], b["classes"], strict=True):
        assert ca["loss"] == pytest.approx(cb["loss"], rel=1e-14)
        assert (ca["n_pos"], ca["n_neg"], ca["count"]) == (cb["n_pos"], cb["n_neg"], cb["count"])


# ---------------------------------------------------------------- errors, as users see them
def _subprocess(*args, **kw):
    return subprocess.run([*BCE, *map(str, args)], capture_output=True, text=True, **kw)


def test_missing_file_exit_2_no_traceback(tmp_path):
    res = _subprocess("eval", tmp_path / "nope.parquet", "--format", "json")
    assert res.returncode == 2
    assert "nope.parquet" in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) <= 2
    assert res.stdout == ""


def test_bad_target_names_file_column_row_and_leaves_no_output(parquet_pair, tmp_path, arrays):
    _, y = arrays
    yb = y.astype(np.float64)
    yb[123, 1] = 1.5
    pq.write_table(pa.table({"cat": yb[:, 0], "dog": yb[:, 1], "bird": yb[:, 2]}),
                   tmp_path / "bad.parquet")
    out = tmp_path / "losses.parquet"
    res = invoke("eval", parquet_pair[0], tmp_path / "bad.parquet", "--reduction", "none",
                 "--output", out, "--batch-rows", "50")
    assert res.exit_code == 2
    assert "bad.parquet" in res.stderr and "'dog'" in res.stderr and "row 123" in res.stderr
    assert "1.5" in res.stderr
    assert not out.exists()
    assert list(tmp_path.glob(".losses*")) == []


@pytest.mark.parametrize("class_dim", [1, 2])
@pytest.mark.parametrize("command", ["eval", "suggest-pos-weight"])
def test_bad_element_is_placed_by_file_row_only(tmp_path, class_dim, command):
    """One position in a message: the row in the file (and the element inside an N-D
    row, in the file's own axes), never an index relative to a batch."""
    shape = (300, 3, 4)
    y = np.zeros(shape, np.float32)
    y[257, 2, 3] = np.nan
    np.save(tmp_path / "y.npy", y)
    np.save(tmp_path / "x.npy", np.zeros(shape, np.float32))
    args = ["eval", tmp_path / "x.npy", tmp_path / "y.npy"] if command == "eval" else \
        ["suggest-pos-weight", tmp_path / "y.npy"]
    res = invoke(*args, "--batch-rows", "100", "--class-dim", class_dim)
    assert res.exit_code == 2, res.output
    first = res.stderr.splitlines()[0]
    cls = 2 if class_dim == 1 else 3
    assert f"class {cls} on axis {class_dim}" in first and "row 257:" in first, first
    assert "element [2, 3] of the row" in first and "index" not in first, first
    assert "(57" not in first


def test_bad_element_of_2d_input_names_row_and_column_only(tmp_path):
    y = np.zeros((300, 8), np.float32)
    y[257, 7] = 2.0
    np.save(tmp_path / "y.npy", y)
    np.save(tmp_path / "x.npy", np.zeros((300, 8), np.float32))
    res = invoke("eval", tmp_path / "x.npy", tmp_path / "y.npy", "--batch-rows", "100")
    assert res.exit_code == 2
    first = res.stderr.splitlines()[0]
    assert first.endswith("row 257: target 2.0 is outside [0, 1]"), first
    assert "[:, 7]" in first


@pytest.mark.parametrize("value, options, what", [
    (np.nan, [], "logit is NaN"),
    (1.5, ["--from-probs"], "probability 1.5 is outside [0, 1]"),
])
def test_bad_logit_names_the_logits_file(tmp_path, value, options, what):
    """The error's role (logits, not targets) picks the file and column it names."""
    x = np.full((300, 4), 0.25, np.float32)
    x[157, 2] = value
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", np.zeros((300, 4), np.float32))
    res = invoke("eval", tmp_path / "x.npy", tmp_path / "y.npy", "--batch-rows", "100",
                 *options)
    assert res.exit_code == 2, res.output
    first = res.stderr.splitlines()[0]
    assert "x.npy" in first and "y.npy" not in first, first
    assert first.endswith(f"row 157: {what}") and "[:, 2]" in first, first


def test_usage_errors_exit_2(npy_pair, tmp_path):
    assert invoke("eval", *npy_pair, "--reduction", "avg").exit_code == 2
    res = invoke("eval", *npy_pair, "--output", tmp_path / "o.npy")
    assert res.exit_code == 2 and "--reduction none" in res.stderr
    res = invoke("eval", *npy_pair, "--baseline", tmp_path / "missing.json",
                 "--max-increase", "0.1")
    assert res.exit_code == 2 and "missing.json" in res.stderr


def test_internal_error_exit_3(npy_pair, monkeypatch):
    import bce_cli.evaluate

    def boom(*a, **k):
        raise RuntimeError("kaboom")

    monkeypatch.setattr(bce_cli.evaluate, "evaluate", boom)
    res = invoke("eval", *npy_pair)
    assert res.exit_code == 3
    assert "internal error" in res.stderr and "kaboom" in res.stderr
    assert "Traceback" not in res.stderr
    res = invoke("eval", *npy_pair, "--debug")
    assert res.exit_code == 3 and "Traceback" in res.stderr


def test_python_m_and_installed_entry_point(npy_pair):
    res = _subprocess("eval", *npy_pair, "--format", "json")
    assert res.returncode == 0, res.stderr
    script = Path(sys.executable).parent / "bce"
    res2 = subprocess.run([str(script), "eval", *map(str, npy_pair), "--format", "json"],
                          capture_output=True, text=True)
    assert res2.returncode == 0 and json.loads(res2.stdout) == json.loads(res.stdout)


def test_report_to_stdout_progress_never(npy_pair, tmp_path):
    out = tmp_path / "stdout.txt"
    with open(out, "w") as fh:
        res = subprocess.run([*BCE, "eval", *map(str, npy_pair), "--format", "json",
                              "--progress"], stdout=fh, stderr=subprocess.PIPE, text=True)
    assert res.returncode == 0
    json.loads(out.read_text())  # only the report went to stdout


@pytest.mark.parametrize("command", ["eval", "suggest-pos-weight"])
def test_every_command_has_help_with_an_example(command):
    res = invoke(command, "--help")
    assert res.exit_code == 0
    assert "Examples" in res.stdout and f"bce {command} " in res.stdout


def test_help_imports_neither_numba_nor_pyarrow():
    code = ("import sys\nfrom bce_cli.cli import app\n"
            "try:\n    app(['--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('numba', 'pyarrow') if m in sys.modules))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.stdout.strip().splitlines()[-1] == "[]"


_IMPORTED = """
import sys
from bce_cli.cli import main
sys.argv = ["bce"] + {args!r}
try:
    main()
except SystemExit as e:
    code = e.code
print(repr((code, {module!r} in sys.modules)))
"""


def _pandas_free_cases(tmp_path):
    preds, labels = (str(ROOT / "sample_data" / f"digits_{n}.parquet")
                     for n in ("preds", "labels"))
    t = pq.read_table(preds)
    grouped = tmp_path / "grouped.parquet"
    pq.write_table(t.append_column("g", pa.array(["a", "b", None] * (t.num_rows // 3)
                                                 + ["a"] * (t.num_rows % 3))), grouped)
    out = tmp_path / "losses.parquet"
    return {
        "eval": ["eval", preds, labels, "--format", "json"],
        "--metrics --html": ["eval", preds, labels, "--metrics", "all", "--html",
                             str(tmp_path / "r.html"), "--format", "json"],
        "--by": ["eval", str(grouped), labels, "--by", "g", "--format", "json"],
        "--output": ["eval", preds, labels, "--reduction", "none", "--output", str(out),
                     "--format", "json"],
        "compare": ["compare", preds, preds, labels, "--format", "json"],
        "suggest-pos-weight": ["suggest-pos-weight", labels],
    }


@pytest.mark.parametrize("case", ["eval", "--metrics --html", "--by", "--output", "compare",
                                  "suggest-pos-weight"])
def test_parquet_runs_never_import_pandas(tmp_path, case):
    """pyarrow's array conversions (``to_numpy``, ``pa.array``) import pandas whenever it is
    installed, 0.2-0.25 s of a run for nothing: bce converts through Arrow's buffers."""
    pytest.importorskip("pandas")  # installed with the dev extra (Dask's dataframe)
    args = _pandas_free_cases(tmp_path)[case]
    res = subprocess.run([sys.executable, "-c", _IMPORTED.format(args=args, module="pandas")],
                         capture_output=True, text=True, cwd=ROOT)
    assert res.stdout.strip().splitlines()[-1] == repr((0, False)), res.stdout + res.stderr


@pytest.mark.parametrize("lists", [False, True])
def test_only_list_columns_import_pyarrow_compute(tmp_path, lists):
    """pyarrow.compute takes ~28 ms to import (it builds a function for every kernel),
    a tenth of a small Parquet job: only list columns' lengths and nulls need it."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((50, 3))
    y = (rng.random((50, 3)) < 0.5).astype(np.float64)
    if lists:
        table = pa.table({"logits": pa.array(x.tolist()), "targets": pa.array(y.tolist())})
    else:
        table = pa.table({**{f"logit_{c}": x[:, c] for c in range(3)},
                          **{f"target_{c}": y[:, c] for c in range(3)}})
    pq.write_table(table, tmp_path / "t.parquet")
    args = ["eval", str(tmp_path / "t.parquet"), "--format", "json"]
    code = _IMPORTED.format(args=args, module="pyarrow.compute")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert res.stdout.strip().splitlines()[-1] == repr((0, lists)), res.stdout + res.stderr


def test_version():
    res = invoke("--version")
    assert res.exit_code == 0 and res.stdout.startswith("bce ")


# ---------------------------------------------------------------- review findings
def test_nan_targets_kept_by_propagate_give_null_counts(tmp_path, arrays):
    x, y = arrays
    yn = y.astype(np.float64)
    yn[3, 0] = np.nan
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", yn)
    res = invoke("eval", tmp_path / "x.npy", tmp_path / "y.npy", "--nan-policy", "propagate",
                 "--format", "json", "--report", tmp_path / "r.json")
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["classes"][0]["n_pos"] is None and report["classes"][1]["n_pos"] == y[:, 1].sum()
    assert json.loads((tmp_path / "r.json").read_text()) == report


def test_baseline_must_be_comparable(npy_pair, parquet_pair, tmp_path):
    base = tmp_path / "base.json"
    assert invoke("eval", *npy_pair, "--report", base).exit_code == 0
    res = invoke("eval", *parquet_pair, "--baseline", base, "--max-increase", "0.01")
    assert res.exit_code == 2 and "no class of this run" in res.stderr
    res = invoke("eval", *npy_pair, "--reduction", "sum", "--baseline", base,
                 "--max-increase", "0.01")
    assert res.exit_code == 2 and "cannot be compared" in res.stderr
    partial = json.loads(base.read_text())
    partial["classes"] = partial["classes"][:2]
    base.write_text(json.dumps(partial))
    res = invoke("eval", *npy_pair, "--baseline", base, "--max-increase", "0.01")
    assert res.exit_code == 0 and "not in the baseline" in res.stderr


@pytest.mark.parametrize("where", ["missing-dir", "is-a-dir", "proc"])
def test_unwritable_outputs_exit_2_before_any_work(npy_pair, tmp_path, where):
    target = {"missing-dir": tmp_path / "nope" / "r.json", "is-a-dir": tmp_path,
              "proc": Path("/proc/bce-report.json")}[where]
    for option in ("--report", "--output"):
        extra = ["--reduction", "none"] if option == "--output" else []
        res = _subprocess("eval", *npy_pair, *extra, option, target)
        assert res.returncode == 2, res.stderr
        assert "Traceback" not in res.stderr and str(target) in res.stderr
    res = _subprocess("suggest-pos-weight", npy_pair[1], "--output", target)
    assert res.returncode == 2


def test_no_loss_file_without_its_report(npy_pair, tmp_path, monkeypatch):
    import bce_cli.evaluate
    from bce_cli._safe_write import SafeFile

    class DiskFull(SafeFile):  # the report (the last file written) hits a full disk
        def write(self, data):
            raise OSError(28, "No space left on device", self.name)

    monkeypatch.setattr(bce_cli.evaluate, "SafeFile", DiskFull)
    out = tmp_path / "losses.npy"
    out.write_bytes(b"the previous run's losses")
    res = invoke("eval", *npy_pair, "--reduction", "none", "--output", out,
                 "--report", tmp_path / "r.json")
    assert res.exit_code == 2 and "No space left" in res.stderr
    assert out.read_bytes() == b"the previous run's losses"  # all or nothing
    assert sorted(p.name for p in tmp_path.iterdir()) == ["logits.npy", "losses.npy",
                                                         "targets.npy"]


def test_suggest_pos_weight_class_dim(tmp_path, rng):
    y = rng.random((50, 4, 3)) < np.array([0.2, 0.5, 0.7])  # classes on axis 2
    np.save(tmp_path / "y.npy", y)
    res = invoke("suggest-pos-weight", tmp_path / "y.npy", "--class-dim", "2", "--format", "json")
    assert res.exit_code == 0, res.output
    n_pos = y.sum(axis=(0, 1))
    np.testing.assert_allclose(json.loads(res.stdout)["pos_weight"], (y[..., 0].size - n_pos)
                               / n_pos)


def test_csv_ends_with_the_overall_row(npy_pair, arrays):
    x, y = arrays
    rows = list(csv.DictReader(io.StringIO(invoke("eval", *npy_pair, "--format", "csv").stdout)))
    assert rows[-1]["name"] == "(overall)"
    assert float(rows[-1]["loss"]) == pytest.approx(float(ref.bce(x, y)), rel=1e-12)
    assert int(rows[-1]["count"]) == x.size


def test_ignore_value_nan_is_refused(npy_pair):
    res = invoke("eval", *npy_pair, "--ignore-value", "nan")
    assert res.exit_code == 2 and "--nan-policy omit" in res.stderr


@pytest.mark.parametrize("gate", [["--max-loss", "nan"], ["--max-class-loss", "nan"],
                                  ["--baseline", "BASE", "--max-increase", "nan"]])
def test_nan_gate_thresholds_are_refused(npy_pair, tmp_path, gate):
    """NaN compares false with every loss, so a NaN gate would pass anything."""
    base = tmp_path / "base.json"
    run_json(*npy_pair, "--report", base)
    args = [str(base) if a == "BASE" else a for a in gate]
    res = invoke("eval", *npy_pair, *args)
    assert res.exit_code == 2, res.output
    assert "is NaN" in res.stderr and "Traceback" not in res.output
    assert len(res.stderr.strip().splitlines()) <= 2


def test_baseline_with_nan_loss_is_an_input_error(npy_pair, tmp_path):
    base = tmp_path / "base.json"
    base.write_text('{"loss": NaN, "reduction": "mean", "classes": []}')
    res = invoke("eval", *npy_pair, "--baseline", base, "--max-increase", "0.01")
    assert res.exit_code == 2, res.output
    assert "baseline's loss is NaN" in res.stderr


@pytest.mark.parametrize("option", [["--pos-weight", "-1"], ["--pos-weight", "1,inf,1"],
                                    ["--pos-weight", "nan"], ["--weight", "-1"],
                                    ["--weight", "1,-2,1"]])
def test_negative_or_infinite_weights_are_refused(npy_pair, option):
    """--weight -1 --max-loss 0 used to pass: every loss was negative."""
    res = invoke("eval", *npy_pair, *option, "--max-loss", "0")
    assert res.exit_code == 2, res.output
    assert "must be finite and >= 0" in res.stderr
    assert len(res.stderr.strip().splitlines()) <= 2


@pytest.mark.parametrize("clip", ["-1", "0", "nan"])
def test_clip_max_must_be_positive(npy_pair, clip):
    res = invoke("suggest-pos-weight", npy_pair[1], "--clip-max", clip)
    assert res.exit_code == 2, res.output
    assert "--clip-max must be a number > 0" in res.stderr


@pytest.mark.parametrize("layout", ["wide", "list"])
def test_per_element_output_of_a_join_keeps_the_key(tmp_path, rng, layout):
    """--on KEY --reduction none: the Parquet output's rows carry their key, so the
    losses join back to the labels however the two files were ordered."""
    n, names = 300, ["cat", "dog"]
    x = rng.standard_normal((n, 2))
    y = (rng.random((n, 2)) < 0.4).astype(np.float64)
    ids = np.array([f"ex{i:04d}" for i in range(n)])
    perm = rng.permutation(n)
    if layout == "wide":
        preds = pa.table({"id": ids, **{c: x[:, i] for i, c in enumerate(names)}})
        labels = pa.table({"id": ids[perm], **{c: y[perm, i] for i, c in enumerate(names)}})
    else:
        preds = pa.table({"id": ids, "logits": list(x)})
        labels = pa.table({"id": ids[perm], "targets": list(y[perm])})
    pq.write_table(preds, tmp_path / "p.parquet")
    pq.write_table(labels, tmp_path / "l.parquet")
    out = tmp_path / "losses.parquet"
    res = invoke("eval", tmp_path / "p.parquet", tmp_path / "l.parquet", "--on", "id",
                 "--reduction", "none", "--output", out, "--batch-rows", "64")
    assert res.exit_code == 0, res.output
    got = pq.read_table(out)
    assert got.column_names[0] == "id"
    assert got.column("id").to_pylist() == ids.tolist()
    losses = (np.column_stack([got.column(c).to_numpy() for c in names]) if layout == "wide"
              else np.array(got.column("loss").to_pylist()))
    np.testing.assert_allclose(losses, ref.bce(x, y, reduction="none"), rtol=1e-12)
    _assert_plain_losses(out, names if layout == "wide" else ["loss"], key="id")


@pytest.mark.parametrize("fmt", ["table", "json", "csv", "markdown"])
@pytest.mark.parametrize("gate, status", [([], 0), (["--max-loss", "0.01"], 1)])
def test_a_reader_that_goes_away_keeps_the_gates_status(tmp_path, fmt, gate, status):
    """`bce eval ... | head`: the rest of the report is dropped quietly; the status is the
    gates' (Rich alone would exit 1, "a gate failed", whatever the gates said)."""
    rng = np.random.default_rng(3)
    np.save(tmp_path / "x.npy", rng.standard_normal((20, 3000)).astype(np.float32))
    np.save(tmp_path / "y.npy", (rng.random((20, 3000)) < 0.5).astype(np.float32))
    with subprocess.Popen([*BCE, "eval", tmp_path / "x.npy", tmp_path / "y.npy", "--format",
                           fmt, *gate], stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        proc.stdout.read(100)  # the report is far larger than a pipe's buffer
        proc.stdout.close()
        err = proc.stderr.read().decode()
        assert proc.wait(timeout=60) == status, err
    assert "Traceback" not in err and "Exception ignored" not in err and "error" not in err


@pytest.mark.parametrize("gate, status", [([], 0), (["--max-loss", "0.01"], 1)])
def test_the_command_ends_with_its_whole_report_flushed(tmp_path, gate, status):
    """The ``bce`` process ends without Python's teardown (``cli.command``): a report far
    larger than a pipe's buffer still reaches its reader whole, with the gates' status."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((20, 3000)).astype(np.float32)
    y = (rng.random((20, 3000)) < 0.5).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    res = subprocess.run([*BCE, "eval", tmp_path / "x.npy", tmp_path / "y.npy", "--format",
                          "json", *gate], capture_output=True, text=True, timeout=60)
    assert res.returncode == status, res.stderr
    assert len(res.stdout) > 1 << 19  # pipes hold 64 KiB
    report = json.loads(res.stdout)
    assert [c["count"] for c in report["classes"]] == [20] * 3000
    per = ref.elementwise(x, y).astype(np.float64)
    assert report["loss"] == pytest.approx(per.mean(), rel=1e-12)


def test_a_profiled_run_still_writes_its_profile(npy_pair, tmp_path):
    """``python -m cProfile -m bce_cli``: a watched process keeps Python's exit, so the
    profiler writes what it saw."""
    out = tmp_path / "bce.prof"
    res = subprocess.run([sys.executable, "-m", "cProfile", "-o", out, "-m", "bce_cli", "eval",
                          *npy_pair, "--format", "json"], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stderr
    import pstats

    assert pstats.Stats(str(out)).total_calls > 0


@pytest.mark.parametrize("command", [["eval", "x.npy", "y.npy"],
                                     ["suggest-pos-weight", "y.npy"]])
def test_a_closed_stdout_is_an_input_error(npy_pair, command):
    args = [str(npy_pair[0]) if a == "x.npy" else str(npy_pair[1]) if a == "y.npy" else a
            for a in command]
    res = subprocess.run([*BCE, *args, "--format", "json"], stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True, timeout=60,
                         preexec_fn=lambda: os.close(1))
    assert res.returncode == 2, res.stderr
    assert "standard output is closed" in res.stderr and "Traceback" not in res.stderr
