"""`bce compare`: the paired comparison of two models, every figure against an independent
float64 computation (tests/reference.py's element losses, per-row differences by hand,
SciPy's Student t), the gates, the input forms and the formats."""

from __future__ import annotations

import json
import math
import shlex

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import typer
from scipy import stats
from typer.testing import CliRunner

from bce_cli.cli import app
from bce_cli.compare import compare_arrays

from .reference import elementwise

runner = CliRunner()


# ----------------------------------------------------------------------- the reference
def reference(xb, xn, y, weight=None, pos_weight=None, *, ignore=None, omit=False,
              reduction="mean", confidence=0.95) -> dict:
    """The comparison computed plainly: per-element losses, the elements that count in
    both, per-row sums of the differences, and the standard error of a ratio of row
    sums (mean) or of a sum over rows (sum), Student t on R - 1 degrees of freedom."""
    xb, xn, y = (np.asarray(a, dtype=np.float64) for a in (xb, xn, y))
    if xb.ndim == 1:
        xb, xn, y = xb[:, None], xn[:, None], y[:, None]
    keep = np.ones(y.shape, dtype=bool)
    if ignore is not None:
        keep &= y != ignore
    if omit:
        keep &= ~(np.isnan(xb) | np.isnan(xn) | np.isnan(y))
    ys = np.where(keep, y, 0.0)
    w = None if weight is None else np.broadcast_to(weight, y.shape)
    lb = np.where(keep, elementwise(np.where(keep, xb, 0), ys, w, pos_weight).astype(float), 0)
    ln = np.where(keep, elementwise(np.where(keep, xn, 0), ys, w, pos_weight).astype(float), 0)
    d = ln - lb
    n = keep.astype(float)
    if d.ndim == 3:
        lb, ln, d, n = (a.sum(axis=2) for a in (lb, ln, d, n))
    R = d.shape[0]
    tq = stats.t.ppf(0.5 + confidence / 2, R - 1)

    def figures(lb_r, ln_r, d_r, n_r):  # per-row sums (R,)
        if reduction == "sum":
            delta = d_r.sum()
            se = math.sqrt(R * np.var(d_r, ddof=1))  # the sum of R rows
            base, new = lb_r.sum(), ln_r.sum()
        else:
            delta = d_r.sum() / n_r.sum()
            if np.all(n_r == n_r[0]):  # equal counts: the sample variance of row means
                se = np.std(d_r / n_r[0], ddof=1) / math.sqrt(R)
            else:  # the ratio estimator, linearised
                resid = d_r - delta * n_r
                se = math.sqrt(R / (R - 1) * np.sum(resid ** 2)) / n_r.sum()
            base, new = lb_r.sum() / n_r.sum(), ln_r.sum() / n_r.sum()
        p = 2 * stats.t.sf(abs(delta / se), R - 1) if se > 0 else float(delta == 0)
        return {"loss_base": base, "loss_new": new, "delta": delta, "delta_se": se,
                "delta_ci": [delta - tq * se, delta + tq * se], "p_value": p}

    out = figures(lb.sum(1), ln.sum(1), d.sum(1), n.sum(1))
    out["classes"] = [figures(lb[:, c], ln[:, c], d[:, c], n[:, c]) for c in range(d.shape[1])]
    out["n_rows"] = R
    return out


KEYS = ("loss_base", "loss_new", "delta", "delta_se", "p_value")


def assert_matches(got: dict, want: dict, rtol=1e-9, atol=1e-12):
    for k in KEYS:
        assert got[k] == pytest.approx(want[k], rel=rtol, abs=atol), k
    assert got["delta_ci"] == pytest.approx(want["delta_ci"], rel=rtol, abs=atol)
    assert len(got["classes"]) == len(want["classes"])
    for g, w in zip(got["classes"], want["classes"], strict=True):
        for k in KEYS:
            assert g[k] == pytest.approx(w[k], rel=rtol, abs=atol), (g.get("name"), k)
        assert g["delta_ci"] == pytest.approx(w["delta_ci"], rel=rtol, abs=atol)


def two_models(rng, n=300, c=3, shift=0.0):
    """Targets, a base model's logits and a new model's: correlated, as two models of
    the same data are (the paired interval is much tighter than the two losses')."""
    y = (rng.random((n, c)) < 0.35).astype(np.float64)
    xb = rng.normal(size=(n, c)) + 1.2 * (2 * y - 1)
    xn = xb + rng.normal(scale=0.4, size=(n, c)) + shift * (2 * y - 1)
    return xb, xn, y


def run(*args, expect=0):
    res = runner.invoke(app, ["compare", *map(str, args)])
    assert res.exit_code == expect, res.output + (res.stderr or "")
    return res


def run_json(*args, expect=0) -> dict:
    return json.loads(run(*args, "--format", "json", expect=expect).stdout)


@pytest.fixture
def npy_pair(tmp_path, rng):
    xb, xn, y = two_models(rng)
    for name, a in (("base", xb), ("new", xn), ("y", y)):
        np.save(tmp_path / f"{name}.npy", a)
    return tmp_path, xb, xn, y


# ----------------------------------------------------------------------- the numbers
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_two_files_match_the_reference(npy_pair, reduction):
    d, xb, xn, y = npy_pair
    got = run_json(d / "base.npy", d / "new.npy", d / "y.npy", "--reduction", reduction,
                   "--batch-rows", 37)  # several batches: the state adds up across them
    want = reference(xb, xn, y, reduction=reduction)
    assert_matches(got, want)
    assert got["n_rows"] == 300 and got["n_elements"] == 900 and got["reduction"] == reduction
    assert got["passed"] is True and got["failures"] == []
    assert got["base"].endswith("base.npy") and got["new"].endswith("new.npy")
    assert [c["name"] for c in got["classes"]] == ["0", "1", "2"]
    # the change is new - base, and the pairing makes it far tighter than the losses
    assert got["delta"] == pytest.approx(got["loss_new"] - got["loss_base"], abs=1e-12)
    if reduction == "mean":  # two reports' standard errors, combined as if independent
        se_b, se_n = (np.std(elementwise(x, y).astype(float).mean(1), ddof=1) / math.sqrt(300)
                      for x in (xb, xn))
        assert got["delta_se"] < math.hypot(se_b, se_n) / 2.5


def test_library_function_matches_the_reference(rng, engine):
    xb, xn, y = two_models(rng, n=50, c=4, shift=0.3)
    assert_matches(compare_arrays(xb, xn, y, confidence=0.9),
                   reference(xb, xn, y, confidence=0.9))


def test_confidence_sets_the_interval(npy_pair):
    d, xb, xn, y = npy_pair
    got = run_json(d / "base.npy", d / "new.npy", d / "y.npy", "--confidence", 0.8)
    assert got["confidence"] == 0.8
    assert_matches(got, reference(xb, xn, y, confidence=0.8))


def test_identical_models_change_nothing(npy_pair):
    d, *_ = npy_pair
    got = run_json(d / "base.npy", d / "base.npy", d / "y.npy")
    assert got["delta"] == 0 and got["delta_se"] == 0 and got["delta_ci"] == [0, 0]
    assert got["p_value"] == 1.0


def test_nd_arrays_take_rows_as_the_units(tmp_path, rng):
    y = (rng.random((40, 2, 5)) < 0.4).astype(np.float64)
    xb = rng.normal(size=y.shape) + (2 * y - 1)
    xn = xb + rng.normal(scale=0.5, size=y.shape)
    for name, a in (("b", xb), ("n", xn), ("y", y)):
        np.save(tmp_path / f"{name}.npy", a)
    got = run_json(tmp_path / "b.npy", tmp_path / "n.npy", tmp_path / "y.npy")
    assert_matches(got, reference(xb, xn, y))
    assert got["n_rows"] == 40 and got["n_elements"] == 400


# ----------------------------------------------------------------------- input forms
@pytest.fixture
def table_files(tmp_path, rng):
    """preds.parquet: base_* and new_* logits, label_* targets and a per-row weight;
    preds_only.parquet and labels.parquet: the same split in two."""
    xb, xn, y = two_models(rng, n=200, c=3)
    w = rng.uniform(0.5, 2.0, size=200)
    cols, names = {}, "abc"
    for k, c in enumerate(names):
        cols[f"base_{c}"], cols[f"new_{c}"] = xb[:, k], xn[:, k]
    pq.write_table(pa.table(cols), tmp_path / "preds_only.parquet")
    labels = {f"label_{c}": y[:, k].astype(bool) for k, c in enumerate(names)}
    pq.write_table(pa.table(labels), tmp_path / "labels.parquet")
    pq.write_table(pa.table({**cols, **labels, "w": w}), tmp_path / "preds.parquet")
    return tmp_path, xb, xn, y, w


def test_one_file_with_two_column_sets(table_files):
    d, xb, xn, y, _ = table_files
    got = run_json(d / "preds.parquet", "--logits-base", "base_*", "--logits-new", "new_*",
                   "--targets", "label_*")
    assert_matches(got, reference(xb, xn, y))
    assert [c["name"] for c in got["classes"]] == ["label_a", "label_b", "label_c"]
    assert "base_*" in got["base"] and "new_*" in got["new"]
    assert got["inputs"]["new"]["logits"]["columns"] == ["new_a", "new_b", "new_c"]
    # the same columns against LABELS in a file of their own: the file named twice
    again = run_json(d / "preds_only.parquet", d / "preds_only.parquet", d / "labels.parquet",
                     "--logits-base", "base_*", "--logits-new", "new_*")
    assert_matches(again, reference(xb, xn, y))


def test_weight_column(table_files):
    d, xb, xn, y, w = table_files
    got = run_json(d / "preds.parquet", "--logits-base", "base_*", "--logits-new", "new_*",
                   "--targets", "label_*", "--weight", "w")
    assert_matches(got, reference(xb, xn, y, weight=w[:, None]))


def test_pos_weight_json(npy_pair):
    d, xb, xn, y = npy_pair
    res = runner.invoke(app, ["suggest-pos-weight", str(d / "y.npy"), "--output",
                              str(d / "pw.json"), "--format", "json"])
    assert res.exit_code == 0, res.output
    pw = np.array(json.loads((d / "pw.json").read_text())["pos_weight"])
    got = run_json(d / "base.npy", d / "new.npy", d / "y.npy", "--pos-weight", d / "pw.json")
    assert_matches(got, reference(xb, xn, y, pos_weight=pw))


def test_ignore_value_leaves_elements_out_of_both(npy_pair, rng):
    d, xb, xn, y = npy_pair
    y = y.copy()
    y[rng.random(y.shape) < 0.25] = -1
    np.save(d / "y_ignore.npy", y)
    got = run_json(d / "base.npy", d / "new.npy", d / "y_ignore.npy", "--ignore-value", -1)
    assert_matches(got, reference(xb, xn, y, ignore=-1))  # counts vary by row: the ratio
    assert got["n_elements"] == int((y != -1).sum())


def test_nan_omit_leaves_an_element_of_either_model_out_of_both(npy_pair, rng):
    d, xb, xn, y = npy_pair
    xb, xn = xb.copy(), xn.copy()
    xb[rng.random(xb.shape) < 0.05] = np.nan
    xn[rng.random(xn.shape) < 0.05] = np.nan
    np.save(d / "base_nan.npy", xb)
    np.save(d / "new_nan.npy", xn)
    got = run_json(d / "base_nan.npy", d / "new_nan.npy", d / "y.npy", "--nan-policy", "omit")
    assert_matches(got, reference(xb, xn, y, omit=True))
    kept = int((~(np.isnan(xb) | np.isnan(xn))).sum())
    assert got["n_elements"] == kept
    assert sum(c["count"] for c in got["classes"]) == kept


def test_nan_without_omit_names_the_file_and_row(npy_pair):
    d, xb, xn, y = npy_pair
    xn = xn.copy()
    xn[123, 2] = np.nan
    np.save(d / "new_nan.npy", xn)
    res = run(d / "base.npy", d / "new_nan.npy", d / "y.npy", expect=2)
    assert "new_nan.npy" in res.stderr and "row 123" in res.stderr and "NaN" in res.stderr
    assert res.stdout == "" and "Traceback" not in res.stderr


# ----------------------------------------------------------------------- input errors
def test_mismatched_rows_name_the_file(npy_pair, table_files):
    d, xb, xn, y = npy_pair
    np.save(d / "short.npy", xn[:250])
    res = run(d / "base.npy", d / "short.npy", d / "y.npy", expect=2)
    assert "short.npy" in res.stderr and "250" in res.stderr and res.stdout == ""
    assert len(res.stderr.strip().splitlines()) <= 2
    # two files each holding their own targets: row counts compared directly
    t, *_ = table_files
    full = pq.read_table(t / "preds.parquet")
    pq.write_table(full.slice(0, 150), t / "fewer.parquet")
    res = run(t / "preds.parquet", t / "fewer.parquet", "--logits", "base_*",
              "--targets", "label_*", expect=2)
    assert "fewer.parquet" in res.stderr and "150 rows" in res.stderr


def test_own_targets_must_agree(table_files):
    t, *_ = table_files
    full = pq.read_table(t / "preds.parquet")
    flipped = np.asarray(full["label_b"]).copy()
    flipped[77] = not flipped[77]
    pq.write_table(full.set_column(full.column_names.index("label_b"), "label_b",
                                   pa.array(flipped)), t / "other.parquet")
    res = run(t / "preds.parquet", t / "other.parquet", "--logits", "base_*",
              "--targets", "label_*", expect=2)
    assert "other.parquet" in res.stderr and "row 77" in res.stderr
    assert "label_b" in res.stderr and "targets differ" in res.stderr


def test_classes_must_agree(tmp_path, rng):
    xb, xn, y = two_models(rng, n=20, c=2)
    pq.write_table(pa.table({"pred_a": xb[:, 0], "pred_b": xb[:, 1], "target_a": y[:, 0],
                             "target_b": y[:, 1]}), tmp_path / "one.parquet")
    pq.write_table(pa.table({"pred_a": xn[:, 0], "pred_c": xn[:, 1], "target_a": y[:, 0],
                             "target_c": y[:, 1]}), tmp_path / "two.parquet")
    res = run(tmp_path / "one.parquet", tmp_path / "two.parquet", expect=2)
    assert "two.parquet" in res.stderr and "classes differ" in res.stderr


@pytest.mark.parametrize("extra, needle", [
    (["--reduction", "none"], "--reduction mean or sum"),
    (["--engine", "dask"], "not yet supported with --engine dask"),  # .npy inputs
    (["--timeout", "5"], "--timeout is for --engine dask"),
    (["--confidence", "1.5"], "--confidence"),
    (["--max-increase", "nan"], "--max-increase is NaN"),
])
def test_refused_options(npy_pair, extra, needle):
    d, *_ = npy_pair
    res = run(d / "base.npy", d / "new.npy", d / "y.npy", *extra, expect=2)
    assert needle in res.stderr and res.stdout == "" and "Traceback" not in res.stderr


def test_forms_of_the_positional_arguments(npy_pair):
    d, *_ = npy_pair
    res = run(d / "base.npy", expect=2)  # one file needs --logits-base and --logits-new
    assert "--logits-base" in res.stderr
    res = run(d / "base.npy", d / "new.npy", "-", expect=2)  # LABELS read once per model
    assert "standard input" in res.stderr


def test_no_partial_report_on_error(npy_pair):
    d, xb, xn, y = npy_pair
    np.save(d / "short.npy", xn[:10])
    run(d / "base.npy", d / "short.npy", d / "y.npy", "--report", d / "r.json", expect=2)
    assert not (d / "r.json").exists()
    assert not list(d.glob(".*.tmp"))


# ----------------------------------------------------------------------- gates
def gate_case(tmp_path, rng):
    """A new model clearly worse than the base, and the reference figures."""
    xb, xn, y = two_models(rng, n=400, c=2, shift=-0.15)  # towards the wrong side: worse
    for name, a in (("b", xb), ("n", xn), ("y", y)):
        np.save(tmp_path / f"{name}.npy", a)
    ref = reference(xb, xn, y)
    lo, hi = ref["delta_ci"]
    assert lo > 0  # surely worse
    return [tmp_path / "b.npy", tmp_path / "n.npy", tmp_path / "y.npy"], ref


def test_max_increase_fails_only_when_the_whole_interval_lies_above(tmp_path, rng):
    files, ref = gate_case(tmp_path, rng)
    lo, hi = ref["delta_ci"]
    between = (lo + ref["delta"]) / 2  # the point change exceeds it, the interval straddles it
    lows = [c["delta_ci"][0] for c in ref["classes"]]
    assert ref["delta"] > between and all(low < between for low in lows)
    got = run_json(*files, "--max-increase", between)
    assert got["passed"] is True and got["gates"] == {"max_increase": between}
    below = min(lo, *lows) - 1e-3  # every interval lies above it
    res = run(*files, "--max-increase", below, "--format", "json", expect=1)
    report = json.loads(res.stdout)  # the report still prints
    assert report["passed"] is False and len(report["failures"]) == 3
    assert report["failures"][0].startswith("overall: delta")
    assert "gate failed" in res.stderr and "--max-increase" in res.stderr


def test_max_increase_fails_for_one_class(tmp_path, rng):
    files, ref = gate_case(tmp_path, rng)
    lows = [c["delta_ci"][0] for c in ref["classes"]]
    k = int(np.argmax(lows))
    ordered = sorted([ref["delta_ci"][0], *lows])
    assert ordered[-1] == lows[k]
    limit = (ordered[-1] + ordered[-2]) / 2  # only class k's interval lies wholly above
    report = json.loads(run(*files, "--max-increase", limit, "--format", "json",
                            expect=1).stdout)
    assert len(report["failures"]) == 1 and report["failures"][0].startswith(f"class {k}:")


def test_max_increase_upper(tmp_path, rng):
    files, ref = gate_case(tmp_path, rng)
    lo, hi = ref["delta_ci"]
    his = [c["delta_ci"][1] for c in ref["classes"]]
    between = (ref["delta"] + hi) / 2  # above the point change, below the upper end
    res = run(*files, "--max-increase-upper", between, "--format", "json", expect=1)
    report = json.loads(res.stdout)
    assert ref["delta"] < between and report["failures"][0].startswith("overall")
    assert "--max-increase-upper" in report["failures"][0]
    above = max(hi, *his) + 1e-3
    assert run_json(*files, "--max-increase-upper", above)["passed"] is True


def test_gates_in_markdown_and_table(tmp_path, rng):
    files, ref = gate_case(tmp_path, rng)
    md = run(*files, "--max-increase", 0, "--format", "markdown", expect=1).stdout
    assert "FAILED" in md and "lies wholly above --max-increase 0" in md
    table = run(*files, "--max-increase-upper", 1).stdout
    assert "passed (--max-increase-upper 1.0)" in table


# ----------------------------------------------------------------------- formats
def test_formats_show_the_numbers(npy_pair):
    d, xb, xn, y = npy_pair
    files = [d / "base.npy", d / "new.npy", d / "y.npy"]
    ref = reference(xb, xn, y)
    lines = run(*files, "--format", "csv").stdout.splitlines()
    assert lines[0] == ("name,loss_base,loss_new,delta,delta_se,delta_ci_low,delta_ci_high,"
                        "p_value,count")
    last = lines[-1].split(",")
    assert last[0] == "(overall)" and float(last[3]) == pytest.approx(ref["delta"], rel=1e-9)
    assert float(last[5]) == pytest.approx(ref["delta_ci"][0], rel=1e-9)
    assert float(last[7]) == pytest.approx(ref["p_value"], rel=1e-6, abs=1e-15)
    assert float(lines[1].split(",")[1]) == pytest.approx(ref["classes"][0]["loss_base"])
    md = run(*files, "--format", "markdown").stdout
    assert f"{ref['delta']:.6g}" in md and f"{ref['loss_new']:.6g}" in md
    assert "| (overall) |" in md and "passed" in md
    table = run(*files).stdout
    assert f"{ref['loss_base']:.5g}" in table and f"{ref['delta']:.4g}" in table
    assert "(overall)" in table and "300 rows" in table


def test_report_writes_the_json(npy_pair):
    d, xb, xn, y = npy_pair
    res = run(d / "base.npy", d / "new.npy", d / "y.npy", "--report", d / "cmp.json",
              "--format", "json")
    written = json.loads((d / "cmp.json").read_text())
    assert written == json.loads(res.stdout)
    for key in ("base", "new", "confidence", "loss_base", "loss_new", "delta", "delta_se",
                "delta_ci", "p_value", "passed", "failures", "classes", "n_rows",
                "n_elements", "reduction", "version", "inputs"):
        assert key in written, key
    assert set(written["classes"][0]) >= {"name", "loss_base", "loss_new", "delta",
                                          "delta_se", "delta_ci", "p_value"}
    assert_matches(written, reference(xb, xn, y))


def test_help_examples_run(tmp_path, monkeypatch, rng):
    """Each example of `bce compare --help` runs as shown, on files like the ones named."""
    import shutil
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    shutil.copytree(root / "sample_data", tmp_path / "sample_data")
    xb, xn, y = two_models(rng, n=60, c=2)
    cols = {**{f"base_{k}": xb[:, k] for k in range(2)}, **{f"new_{k}": xn[:, k] for k in range(2)}}
    labels = {f"label_{k}": y[:, k] for k in range(2)}
    pq.write_table(pa.table({**cols, **labels}), tmp_path / "preds.parquet")
    pq.write_table(pa.table(labels), tmp_path / "labels.parquet")
    monkeypatch.chdir(tmp_path)
    epilog = typer.main.get_command(app).commands["compare"].epilog
    examples = [shlex.split(ln.strip())[1:] for ln in epilog.splitlines()
                if ln.strip().startswith("bce ")]
    assert len(examples) >= 3
    for args in examples:
        res = runner.invoke(app, args)
        assert res.exit_code in (0, 1), f"{args}: {res.output}{res.stderr}"
        assert "error" not in res.stderr
    assert json.loads((tmp_path / "compare.json").read_text())["n_rows"] == 60


# ----------------------------------------------------------------------- coverage
def test_interval_covers_the_true_change():
    """1,000 data sets drawn (seeded) from a fixed population of rows whose mean change
    is known exactly; elements are ignored at random, so row counts vary and the ratio
    estimator is what is tested.  The 95% interval must cover the truth 93-97% of the
    time (overall, and for one class)."""
    rng = np.random.default_rng(20261129)
    m, c, r = 20_000, 2, 120
    y = (rng.random((m, c)) < 0.3).astype(np.float64)
    xb = rng.normal(size=(m, c)) + 1.5 * (2 * y - 1)
    xn = xb + rng.normal(scale=0.5, size=(m, c)) + 0.2 * (2 * y - 1)
    y[rng.random((m, c)) < 0.2] = -1
    keep = y != -1
    ys = np.where(keep, y, 0.0)
    d = np.where(keep, (elementwise(xn, ys) - elementwise(xb, ys)).astype(np.float64), 0.0)
    true, true0 = d.sum() / keep.sum(), d[:, 0].sum() / keep[:, 0].sum()
    hits = hits0 = 0
    n_sets = 1000
    for _ in range(n_sets):
        rows = rng.integers(0, m, size=r)
        got = compare_arrays(xb[rows], xn[rows], y[rows], ignore_value=-1)
        lo, hi = got["delta_ci"]
        hits += lo <= true <= hi
        lo0, hi0 = got["classes"][0]["delta_ci"]
        hits0 += lo0 <= true0 <= hi0
    assert 0.93 <= hits / n_sets <= 0.97, hits
    assert 0.93 <= hits0 / n_sets <= 0.97, hits0


def test_join_pairs_rows_by_key_order(tmp_path, rng):
    n = 50
    y = rng.random(n) < 0.4
    xb = rng.normal(size=n)
    xn = xb + rng.normal(scale=0.3, size=n)
    ids, perm = np.arange(n), rng.permutation(n)
    pq.write_table(pa.table({"id": ids, "target": y}), tmp_path / "labels.parquet")
    pq.write_table(pa.table({"id": ids[perm], "logit": xb[perm]}), tmp_path / "b.parquet")
    pq.write_table(pa.table({"id": ids[perm], "logit": xn[perm]}), tmp_path / "n.parquet")
    pq.write_table(pa.table({"id": ids, "logit": xn}), tmp_path / "n_sorted.parquet")
    got = run_json(tmp_path / "b.parquet", tmp_path / "n.parquet", tmp_path / "labels.parquet",
                   "--on", "id")
    assert_matches(got, reference(xb, xn, y.astype(float)))
    res = run(tmp_path / "b.parquet", tmp_path / "n_sorted.parquet",
              tmp_path / "labels.parquet", "--on", "id", expect=2)
    assert "n_sorted.parquet" in res.stderr and "order" in res.stderr


def test_one_row_has_no_interval(tmp_path):
    for name, a in (("b", [0.5]), ("n", [-0.5]), ("y", [1.0])):
        np.save(tmp_path / f"{name}.npy", np.array(a))
    files = [tmp_path / "b.npy", tmp_path / "n.npy", tmp_path / "y.npy"]
    got = run_json(*files, "--max-increase", 0)  # nothing shows the change above 0
    assert got["delta"] > 0 and got["delta_ci"] is None and got["p_value"] is None
    assert got["passed"] is True
    report = json.loads(run(*files, "--max-increase-upper", 10, "--format", "json",
                            expect=1).stdout)  # nor below 10
    assert report["passed"] is False


# ----------------------------------------------------------------------- --by
@pytest.mark.parametrize("split", [None, 7])
def test_by_gives_each_groups_change(tmp_path, rng, split):
    """Per group the change and its interval are the reference's on that group's rows
    alone; the groups' element counts add up to the whole; several batches agree."""
    xb, xn, y = two_models(rng, n=240, c=3, shift=0.3)
    y[rng.random(y.shape) < 0.1] = -1.0  # unlabelled: counts differ from row to row
    keys = np.array(["train", "valid", "test", None], dtype=object)[rng.integers(0, 4, 240)]
    cols = {"split": pa.array(keys.tolist(), pa.string())}
    for k in range(3):
        cols[f"base_{k}"], cols[f"new_{k}"], cols[f"y_{k}"] = xb[:, k], xn[:, k], y[:, k]
    pq.write_table(pa.table(cols), tmp_path / "p.parquet")
    extra = [] if split is None else ["--batch-rows", split]
    got = run_json(tmp_path / "p.parquet", "--logits-base", "base_*", "--logits-new", "new_*",
                   "--targets", "y_*", "--ignore-value", "-1", "--by", "split", *extra)
    assert got["by"] == "split"
    assert [g["key"] for g in got["groups"]] == ["test", "train", "valid", None]
    for g in got["groups"]:
        rows = np.array([k == g["key"] for k in keys])
        want = reference(xb[rows], xn[rows], y[rows], ignore=-1.0)
        assert g["n_rows"] == rows.sum()
        for k in (*KEYS, "delta_ci"):  # groups have no per-class changes
            assert g[k] == pytest.approx(want[k], rel=1e-9, abs=1e-12), k
    assert sum(g["n_elements"] for g in got["groups"]) == got["n_elements"]
    table = run(tmp_path / "p.parquet", "--logits-base", "base_*", "--logits-new", "new_*",
                "--targets", "y_*", "--ignore-value", "-1", "--by", "split").stdout
    assert "largest change first" in table and "(null)" in table
    csv_rows = run(tmp_path / "p.parquet", "--logits-base", "base_*", "--logits-new", "new_*",
                   "--targets", "y_*", "--ignore-value", "-1", "--by", "split", "--format",
                   "csv").stdout.splitlines()
    assert csv_rows[0].startswith("group,name,")
    train = next(r for r in csv_rows if r.startswith("train,(overall),"))
    g = next(g for g in got["groups"] if g["key"] == "train")
    assert float(train.split(",")[4]) == pytest.approx(g["delta"], rel=1e-12)


def test_by_names_a_missing_column(table_files):
    d, *_ = table_files
    res = run(d / "preds.parquet", "--logits-base", "base_*", "--logits-new", "new_*",
              "--targets", "label_*", "--by", "nope", expect=2)
    assert "nope" in res.stderr and "Traceback" not in res.output
