"""What the reports say, checked against independent references: the prior column,
infinite losses, and tables that reach a CI log intact."""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from bce_cli.cli import app

from . import reference as ref

runner = CliRunner()
NAMES = ["cat", "dog", "bird"]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def run_json(*args):
    res = invoke("eval", *args, "--format", "json")
    assert res.exit_code in (0, 1), res.output
    return json.loads(res.stdout, parse_constant=_refuse), res


def _refuse(name):
    raise AssertionError(f"not strict JSON: {name}")


# ------------------------------------------------------------------------ the prior
@pytest.fixture
def weighted_table(tmp_path, rng):
    n = 300
    x = rng.standard_normal((n, 3)) * 2 + np.array([1.0, -0.5, 0.0])
    y = (rng.random((n, 3)) < np.array([0.15, 0.6, 0.35])).astype(np.float64)
    y[rng.random((n, 3)) < 0.1] = -1.0  # not annotated: left out by --ignore-value -1
    w = rng.uniform(0.1, 3.0, n)
    table = {f"logit_{k}": x[:, i] for i, k in enumerate(NAMES)}
    table |= {k: y[:, i] for i, k in enumerate(NAMES)}
    table["w"] = w
    pq.write_table(pa.table(table), tmp_path / "data.parquet")
    return tmp_path / "data.parquet", x, y, w


PRIOR_CASES = [
    # pos_weight, weight, label smoothing, reduction (the data's -1 targets are ignored)
    (None, None, 0.0, "mean"),
    ("4,0.5,2", None, 0.0, "mean"),
    (None, "w", 0.0, "mean"),
    (None, None, 0.2, "mean"),
    ("4,0.5,2", "w", 0.1, "mean"),
    ("4,0.5,2", "w", 0.1, "sum"),
    ("3", "0.5,2,1.5", 0.05, "sum"),
    ("3", "w", 0.0, "none"),
    ("0", "w", 0.0, "mean"),  # pos_weight 0: only the negatives' term is left
]


@pytest.mark.parametrize(("pos_weight", "weight", "smoothing", "reduction"),
                         PRIOR_CASES)
def test_prior_predicts_the_positive_rate_under_the_same_options(
        weighted_table, pos_weight, weight, smoothing, reduction):
    path, _, y, w = weighted_table
    args = [path, "--logits", "logit_*", "--targets", ",".join(NAMES), "--reduction", reduction,
            "--label-smoothing", smoothing, "--ignore-value", -1]
    if pos_weight is not None:
        args += ["--pos-weight", pos_weight]
    if weight is not None:
        args += ["--weight", weight]
    report, _ = run_json(*args)
    pw = np.ones(3) if pos_weight is None else np.array(
        [float(v) for v in pos_weight.split(",")]) * np.ones(3)
    for i, cls in enumerate(report["classes"]):
        if weight is None:
            wi = np.ones(len(y))
        elif weight == "w":
            wi = w
        else:
            wi = np.full(len(y), float(weight.split(",")[i]))
        keep = y[:, i] != -1
        want = ref.rate_prediction_loss(y[:, i], wi, pw[i], smoothing, keep, reduction)
        assert cls["prior_loss"] == pytest.approx(want, rel=1e-9, abs=1e-12), cls["name"]
        if pos_weight is None:  # then the (smoothed) rate is the best constant
            best = ref.best_constant_loss(y[:, i], wi, 1.0, smoothing, keep, reduction)
            assert cls["prior_loss"] == pytest.approx(best, rel=1e-9, abs=1e-12)


def test_prior_without_options_is_the_entropy_of_the_labels(weighted_table):
    path, _, y, _ = weighted_table
    report, _ = run_json(path, "--logits", "logit_*", "--targets", ",".join(NAMES),
                         "--ignore-value", -1)
    for i, cls in enumerate(report["classes"]):
        r = (y[:, i] == 1).sum() / (y[:, i] != -1).sum()
        assert cls["prior_loss"] == pytest.approx(-(r * math.log(r) + (1 - r) * math.log1p(-r)),
                                                  rel=1e-12)


def test_prior_leaves_out_nan_omitted_elements(tmp_path, rng):
    x = rng.standard_normal((200, 2))
    y = (rng.random((200, 2)) < 0.3).astype(np.float64)
    w = rng.uniform(0.5, 2.0, (200, 2))
    x[::7, 0] = np.nan
    y[::11, 1] = np.nan
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    np.save(tmp_path / "w.npy", w)
    report, _ = run_json(tmp_path / "x.npy", tmp_path / "y.npy", "--weight", tmp_path / "w.npy",
                         "--pos-weight", "2.5", "--nan-policy", "omit")
    for i, cls in enumerate(report["classes"]):
        keep = ~(np.isnan(x[:, i]) | np.isnan(y[:, i]))
        want = ref.rate_prediction_loss(np.nan_to_num(y[:, i]), w[:, i], 2.5, 0.0, keep, "mean")
        assert cls["prior_loss"] == pytest.approx(want, rel=1e-9)


def test_digits_with_the_suggested_pos_weight_are_better_than_their_prior(tmp_path):
    labels = "sample_data/digits_labels.parquet"
    assert invoke("suggest-pos-weight", labels, "--output", tmp_path / "pw.json").exit_code == 0
    report, _ = run_json("sample_data/digits_preds.parquet", labels,
                         "--pos-weight", tmp_path / "pw.json")
    table = invoke("eval", "sample_data/digits_preds.parquet", labels,
                   "--pos-weight", tmp_path / "pw.json")
    for cls in report["classes"]:
        assert cls["loss"] < cls["prior_loss"], cls
    assert "!" not in table.stdout and "red loss: above it" in table.stdout


# ------------------------------------------------------------------ infinite losses
@pytest.fixture(params=["probs", "logits"])
def infinite_input(request, tmp_path):
    """Class 0 has an infinite loss (a positive predicted with probability 0, or a
    logit of -inf); class 1 a finite one."""
    y = np.array([[1, 0], [1, 0], [0, 1]], dtype=np.float32)
    if request.param == "probs":
        p = np.array([[0.0, 0.4], [0.9, 0.2], [0.3, 0.6]])
        np.save(tmp_path / "p.npy", p)
        x, extra = np.log(np.where(p > 0, p, 1)) - np.log1p(-p), ["--from-probs"]
        x[0, 0] = -np.inf
    else:
        x = np.array([[-np.inf, 1.0], [2.0, -1.0], [0.5, 0.3]])
        np.save(tmp_path / "p.npy", x)
        extra = []
    np.save(tmp_path / "y.npy", y)
    finite = float(ref.elementwise(x[:, 1], y[:, 1]).astype(np.float64).mean())
    return [tmp_path / "p.npy", tmp_path / "y.npy", *extra], finite


def test_infinite_loss_is_the_string_inf_in_strict_json(infinite_input, tmp_path):
    args, finite = infinite_input
    report, res = run_json(*args, "--report", tmp_path / "r.json")
    assert res.exit_code == 0, res.output
    assert report["loss"] == "inf" and float(report["loss"]) == math.inf
    assert report["classes"][0]["loss"] == "inf"
    assert report["classes"][1]["loss"] == pytest.approx(finite, rel=1e-12)
    assert json.loads((tmp_path / "r.json").read_text(), parse_constant=_refuse) == report
    total, _ = run_json(*args, "--reduction", "sum")
    assert total["loss"] == "inf" and total["classes"][0]["loss"] == "inf"


def test_infinite_loss_reads_inf_in_every_format(infinite_input):
    args, _ = infinite_input
    table = invoke("eval", *args)
    assert table.exit_code == 0, table.output
    row0 = next(line for line in table.stdout.splitlines() if line.strip().startswith("0 "))
    assert row0.split()[1] == "inf"
    assert "overall mean loss: inf" in table.stdout
    md = invoke("eval", *args, "--format", "markdown").stdout
    assert "| 0 | inf |" in md and "loss inf" in md
    rows = invoke("eval", *args, "--format", "csv").stdout.splitlines()
    assert rows[1].split(",")[1] == "inf" and rows[-1].split(",")[1] == "inf"


def test_gates_say_inf_for_an_infinite_loss(infinite_input):
    args, _ = infinite_input
    res = invoke("eval", *args, "--max-loss", 1, "--max-class-loss", 1, "--format", "json")
    assert res.exit_code == 1
    failures = json.loads(res.stdout)["failures"]
    assert failures == ["overall loss inf > --max-loss 1", "class 0: loss inf > --max-class-loss 1"]
    assert "NaN" not in res.stderr and "loss inf" in res.stderr


def test_a_baseline_with_an_infinite_loss_is_compared(infinite_input, npy_like_baseline):
    args, _ = infinite_input
    base = npy_like_baseline(args)
    same = invoke("eval", *args, "--baseline", base, "--max-increase", 0)
    assert same.exit_code == 0, same.output  # inf is no rise over inf
    report = json.loads(base.read_text())
    report["loss"], report["classes"][0]["loss"] = 0.5, 0.5
    base.write_text(json.dumps(report))
    res = invoke("eval", *args, "--baseline", base, "--max-increase", 0.1, "--format", "json")
    assert res.exit_code == 1
    assert json.loads(res.stdout)["failures"] == [
        "overall loss inf rose by more than 0.1 over the baseline's 0.5",
        "class 0: loss inf rose by more than 0.1 over the baseline's 0.5"]


@pytest.fixture
def npy_like_baseline(tmp_path):
    def make(args):
        res = invoke("eval", *args, "--report", tmp_path / "base.json")
        assert res.exit_code == 0, res.output
        return tmp_path / "base.json"
    return make


# ------------------------------------------------------------- tables in CI logs
LONG_NAMES = ["label_diabetes_type_1_at_first_visit", "label_diabetes_type_2_at_first_visit",
              "label_hypertension"]


@pytest.fixture
def long_names(tmp_path, rng):
    """Three classes with long names; the second is predicted backwards, so its
    loss is worse than the prior."""
    y = rng.random((500, 3)) < np.array([0.2, 0.3, 0.4])
    x = np.where(y, 1.5, -1.5) + rng.standard_normal((500, 3))
    x[:, 1] *= -1
    pq.write_table(pa.table({f"logit_{n}": x[:, i] for i, n in enumerate(LONG_NAMES)}),
                   tmp_path / "preds.parquet")
    pq.write_table(pa.table({n: y[:, i] for i, n in enumerate(LONG_NAMES)}),
                   tmp_path / "labels.parquet")
    per = ref.elementwise(x, y).astype(np.float64)
    return (tmp_path / "preds.parquet", tmp_path / "labels.parquet"), per


def _row(text, name):
    return next(line for line in text.splitlines() if line.strip().startswith(name + " "))


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_piped_table_keeps_whole_names_and_says_worse_than_prior(long_names, monkeypatch,
                                                                 reduction):
    monkeypatch.setenv("COLUMNS", "80")
    paths, per = long_names
    res = invoke("eval", *paths, "--reduction", reduction)
    assert res.exit_code == 0, res.output
    assert "…" not in res.stdout and "..." not in res.stdout
    for name in LONG_NAMES:
        assert _row(res.stdout, name)  # whole, on one line
    bad, good = _row(res.stdout, LONG_NAMES[1]), _row(res.stdout, LONG_NAMES[0])
    want = per[:, 1].sum() if reduction == "sum" else per[:, 1].mean()
    assert float(bad.split()[1]) == pytest.approx(want, rel=1e-4)
    assert bad.split()[2] == "!" and "!" not in good  # marked with text, not only in red
    assert "!: worse than the prior" in res.stdout  # the legend says what it means
    md = invoke("eval", *paths, "--reduction", reduction, "--format", "markdown").stdout
    assert "worse" in _row(md, "| " + LONG_NAMES[1]) and "worse" not in _row(md, "| "
                                                                              + LONG_NAMES[0])


def test_table_piped_from_a_real_process(long_names):
    import os
    import subprocess
    import sys

    paths, _ = long_names
    res = subprocess.run([sys.executable, "-m", "bce_cli", "eval", *map(str, paths)],
                         capture_output=True, text=True, stdin=subprocess.DEVNULL,
                         env={**os.environ, "COLUMNS": "80"}, check=False)
    assert res.returncode == 0, res.stderr
    assert all(name in res.stdout for name in LONG_NAMES) and "…" not in res.stdout
    assert max(map(len, res.stdout.splitlines())) > 80


def test_warnings_are_not_hard_wrapped(tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "60")
    np.save(tmp_path / "p.npy", np.full((10, 2), 0.3))
    np.save(tmp_path / "y.npy", np.eye(2)[np.arange(10) % 2])
    res = invoke("eval", tmp_path / "p.npy", tmp_path / "y.npy")
    assert res.exit_code == 0, res.output
    assert ("warning: the predictions all lie in [0, 1]: these look like probabilities, not "
            "logits; pass --from-probs if they are") in res.stderr.splitlines()


def test_gate_failures_are_not_hard_wrapped(tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "40")
    names = ["a_class_name_long_enough_to_wrap_" + s for s in ("first", "second")]
    pq.write_table(pa.table({n: np.linspace(-2, 2, 20) for n in names}), tmp_path / "p.parquet")
    pq.write_table(pa.table({n: (np.arange(20) % 2).astype(float) for n in names}),
                   tmp_path / "l.parquet")
    res = invoke("eval", tmp_path / "p.parquet", tmp_path / "l.parquet",
                 "--max-class-loss", "0.01")
    assert res.exit_code == 1, res.output
    failed = [ln for ln in res.stderr.splitlines() if ln.startswith("gate failed:")]
    assert len(failed) == 2, res.stderr
    assert all(ln.endswith("> --max-class-loss 0.01") and n in ln
               for ln, n in zip(failed, names, strict=True)), failed


def test_names_fold_on_a_narrow_terminal_and_are_never_cut(long_names):
    import io

    from rich.console import Console

    from bce_cli.report import print_eval_table

    paths, _ = long_names
    report, _ = run_json(*paths)
    buf = io.StringIO()
    print_eval_table(report, Console(file=buf, force_terminal=True, width=72, color_system=None))
    lines = buf.getvalue().splitlines()
    body = lines[lines.index(next(line for line in lines if "───" in line)) + 1:]
    body = body[:body.index(next(line for line in body if not line.strip()))]
    assert "".join(line.split()[0] for line in body) == "".join(LONG_NAMES)


def test_prior_is_what_pytorch_scores_for_the_positive_rate(weighted_table):
    """PyTorch as a second reference: its loss of always predicting the class's
    (weighted) positive rate, with the same weight, pos_weight and smoothing."""
    torch = pytest.importorskip("torch")
    path, _, y, w = weighted_table
    report, _ = run_json(path, "--logits", "logit_*", "--targets", ",".join(NAMES),
                         "--ignore-value", -1, "--weight", "w", "--pos-weight", "4,0.5,2",
                         "--label-smoothing", 0.1)
    for i, (cls, pw) in enumerate(zip(report["classes"], [4.0, 0.5, 2.0], strict=True)):
        keep = y[:, i] != -1
        yk = torch.tensor(y[keep, i], dtype=torch.float64)
        wk = torch.tensor(w[keep], dtype=torch.float64)
        ys = yk * 0.9 + 0.05
        rate = float((wk * ys).sum() / wk.sum())
        fn = torch.nn.BCEWithLogitsLoss(weight=wk, pos_weight=torch.tensor(pw).double())
        want = float(fn(torch.full_like(yk, math.log(rate / (1 - rate))), ys))
        assert cls["prior_loss"] == pytest.approx(want, rel=1e-12)


def test_piped_pos_weight_table_keeps_whole_names(long_names, monkeypatch):
    monkeypatch.setenv("COLUMNS", "40")
    res = invoke("suggest-pos-weight", long_names[0][1])
    assert res.exit_code == 0, res.output
    assert all(name in res.stdout for name in LONG_NAMES) and "…" not in res.stdout


@pytest.mark.parametrize("names", [["cat", "dog"], ["a" * 90, "b"], ["猫", "犬の名前"], ["x"]])
@pytest.mark.parametrize("mark", [False, True])
def test_plain_table_is_the_text_rich_prints(names, mark):
    """Pipes and large tables are laid out without Rich (linear time); the text must be
    exactly what Rich prints for the same table when it need not fit a terminal."""
    import io

    from rich.console import Console
    from rich.measure import Measurement

    from bce_cli.report import _rich_table, plain_table

    columns = [("class", "left"), ("loss", "right")] + [("", "left")] * mark + [
        ("n_pos", "right")]
    rows = [[n, f"{0.1 * i:.4g}"] + (["!" if i % 2 else ""] if mark else []) + [str(10 ** i)]
            for i, n in enumerate(names)]
    table = _rich_table("bce eval — per class", columns, rows, red=set())
    console = Console(file=io.StringIO(), width=1000, color_system=None)
    console.width = Measurement.get(console, console.options, table).maximum
    console.print(table)
    assert plain_table("bce eval — per class", columns, rows) == console.file.getvalue()


@pytest.mark.parametrize("fmt", ["table", "markdown"])
def test_a_class_name_with_a_newline_tab_or_bar_stays_one_row(tmp_path, fmt):
    names = ["line\nbreak", "tab\there", "a|b"]
    pq.write_table(pa.table({n: np.linspace(-1, 1, 10) for n in names}), tmp_path / "p.parquet")
    pq.write_table(pa.table({n: (np.arange(10) % 2).astype(float) for n in names}),
                   tmp_path / "l.parquet")
    res = invoke("eval", tmp_path / "p.parquet", tmp_path / "l.parquet", "--format", fmt)
    assert res.exit_code == 0, res.output
    rows = [ln for ln in res.stdout.splitlines() if "0.68706" in ln and "overall" not in ln.lower()
            and not ln.startswith("#")]
    assert len(rows) == 3, res.stdout
    assert any("line\\nbreak" in r for r in rows) and any("tab\\there" in r for r in rows)
    if fmt == "markdown":
        assert all(r.count(" | ") == 8 for r in rows)  # 9 cells in every row
        assert any("a\\|b" in r for r in rows)
