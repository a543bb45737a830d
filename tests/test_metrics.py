"""``bce eval --metrics``: Brier, ECE and its reliability table, AUROC and average
precision with their error bounds, the F1-best threshold, per class and over every
element; against scikit-learn on real data (the bundled digits, scikit-learn's
breast cancer set), a by-hand ECE and a brute-force threshold scan, on both tiers;
the state's merge laws, batches, threads, options and gates."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.calibration import calibration_curve
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

from bce_cli import _tiers
from bce_cli.accumulator import BCEAccumulator
from bce_cli.errors import BCEInputError
from bce_cli.metrics import METRICS, MetricsAccumulator, parse_metrics, rank_edges
from bce_cli.stats import RANK_BINS

SAMPLE = "sample_data"


def sigmoid(x):
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0, e) / (1.0 + e)


@pytest.fixture(scope="module")
def digits():
    x = np.load(f"{SAMPLE}/digits_logits.npy")
    y = np.load(f"{SAMPLE}/digits_targets.npy")
    return x, y


@pytest.fixture(scope="module")
def cancer():
    """Out-of-fold logits of a logistic regression on scikit-learn's breast cancer set."""
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    features, target = load_breast_cancer(return_X_y=True)
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=1000))
    x = cross_val_predict(model, features, target, cv=5, method="decision_function")
    return x.reshape(-1, 1), target.reshape(-1, 1).astype(np.float64)


def computed(x, y, weight=None, *, bins=15, **kwargs):
    acc = BCEAccumulator(np.shape(x)[1], **kwargs).with_metrics(bins)
    acc.update(x, y, weight)
    return acc.metrics.compute(METRICS)


def assert_close(a, b, rel=1e-12):
    """Two metrics dicts equal, floats to ``rel`` (sums in another order)."""
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_close(a[k], b[k], rel)
    elif isinstance(a, list):
        assert len(a) == len(b)
        for u, v in zip(a, b, strict=True):
            assert_close(u, v, rel)
    elif isinstance(a, float):
        assert a == pytest.approx(b, rel=rel, abs=1e-15)
    else:
        assert a == b


# ------------------------------------------------------------------ references
def ece_by_hand(p, y, w, bins):
    """sum_b W_b |mean p - mean y| / W, bins (low, high] as calibration_curve."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.searchsorted(edges[1:-1], p)
    total = 0.0
    for b in range(bins):
        m = which == b
        if m.any():
            total += abs(np.sum(w[m] * p[m]) - np.sum(w[m] * y[m]))
    return total / w.sum()


def f1_at(x, y, threshold):
    called = x >= threshold
    tp = np.sum(y[called])
    fp = np.sum(1 - y[called])
    return 2 * tp / (tp + fp + np.sum(y)), tp, fp


def check_against_sklearn(x, y, result, w=None):
    """Every metric of every class against scikit-learn / the references: exact where
    the bound is 0, within it otherwise."""
    for c, got in enumerate(result["classes"]):
        xc, yc = x[:, c].astype(np.float64), y[:, c]
        wc = np.ones_like(xc) if w is None else w[:, c]
        p = sigmoid(xc)
        auroc = roc_auc_score(yc, xc, sample_weight=wc)
        ap = average_precision_score(yc, xc, sample_weight=wc)
        assert abs(got["auroc"] - auroc) <= got["auroc_err"] + 1e-12
        assert abs(got["average_precision"] - ap) <= got["average_precision_err"] + 1e-12
        # Brier: the loss's normalisation (sum / count); scikit-learn divides by sum(w)
        brier = brier_score_loss(yc, p, sample_weight=wc) * wc.sum() / xc.size
        assert got["brier"] == pytest.approx(brier, rel=1e-12)
        assert got["ece"] == pytest.approx(ece_by_hand(p, yc, wc, 15), rel=1e-10, abs=1e-15)
        if w is None:
            true, pred = calibration_curve(yc, p, n_bins=15)
            table = [b for b in got["reliability"] if b["count"]]
            np.testing.assert_allclose([b["positive_rate"] for b in table], true, rtol=1e-12)
            np.testing.assert_allclose([b["mean_predicted"] for b in table], pred, rtol=1e-12)
            assert sum(b["count"] for b in got["reliability"]) == xc.size
        # the best threshold: F1 there as a scan of the raw data finds it, and no bin
        # edge does better; a threshold between bin edges does at most a little better
        t = got["best_threshold"]
        if w is None:
            f1, tp, fp = f1_at(xc, yc, t)
            assert got["best_threshold_f1"] == pytest.approx(f1, rel=1e-12)
            assert got["best_threshold_precision"] == pytest.approx(tp / (tp + fp), rel=1e-12)
            assert got["best_threshold_recall"] == pytest.approx(tp / yc.sum(), rel=1e-12)
            edges = rank_edges()
            near = edges[np.abs(edges - t) < 2.0]
            assert max(f1_at(xc, yc, e)[0] for e in near) <= f1 + 1e-12
            anywhere = max(f1_at(xc, yc, v)[0] for v in np.unique(xc))
            assert f1 <= anywhere + 1e-12
            assert anywhere - f1 < 0.02
        assert got["best_threshold_probability"] == pytest.approx(sigmoid(t), rel=1e-12)


# ------------------------------------------------------------------ real data
def test_digits_against_scikit_learn(engine, digits):
    x, y = digits
    result = computed(x, y)
    check_against_sklearn(x, y, result)
    errors = [c[k] for c in result["classes"] for k in ("auroc_err", "average_precision_err")]
    assert max(errors) < 1e-4
    assert min(errors) == 0.0  # some classes are exact: no positive shares a bin with a negative


def test_breast_cancer_against_scikit_learn(engine, cancer):
    x, y = cancer
    result = computed(x, y)
    check_against_sklearn(x, y, result)
    got = result["classes"][0]
    assert got["auroc_err"] < 1e-4 and got["average_precision_err"] < 1e-4
    assert got["auroc"] > 0.98


def test_sample_weights_against_scikit_learn(engine, cancer):
    x, y = cancer
    w = np.random.default_rng(5).uniform(0.2, 3.0, size=x.shape)
    result = computed(x, y, w)
    check_against_sklearn(x, y, result, w)
    got = result["classes"][0]
    assert got["average_precision_err"] < 1e-3  # weights: the bound covers any order in a bin


def test_soft_labels_count_y_positive_and_one_minus_y_negative(engine, rng):
    x = rng.normal(size=(400, 1)) * 2
    y = rng.random((400, 1))
    got = computed(x, y)["classes"][0]
    # the same as each element twice: a positive of weight y and a negative of weight 1 - y
    xx = np.concatenate([x[:, 0], x[:, 0]])
    yy = np.concatenate([np.ones(400), np.zeros(400)])
    ww = np.concatenate([y[:, 0], 1 - y[:, 0]])
    assert abs(got["auroc"] - roc_auc_score(yy, xx, sample_weight=ww)) <= got["auroc_err"] + 1e-12
    assert abs(got["average_precision"] - average_precision_score(yy, xx, sample_weight=ww)) \
        <= got["average_precision_err"] + 1e-12
    assert got["brier"] == pytest.approx(np.mean((sigmoid(x[:, 0]) - y[:, 0]) ** 2), rel=1e-12)


def test_the_overall_block_is_every_element_of_every_class(engine, digits):
    x, y = digits
    overall = computed(x, y)["overall"]
    flat = computed(x.reshape(-1, 1), y.reshape(-1, 1))["classes"][0]
    for key in ("auroc", "average_precision", "best_threshold", "ece", "auroc_err"):
        assert overall[key] == pytest.approx(flat[key], rel=1e-12)
    assert overall["brier"] == pytest.approx(flat["brier"], rel=1e-12)


# ------------------------------------------------------------------ the histogram
def test_bins_are_exact_at_their_edges(engine):
    """A logit on a bin's lower edge is in that bin; one just below it in the bin below
    (x - lo rounds onto the edge there), in both tiers alike."""
    edges = rank_edges()[1:]
    below = np.nextafter(edges, -np.inf)
    x = np.concatenate([edges, below, [-np.inf, np.inf, -1e300, 1e300]])
    acc = MetricsAccumulator(1)
    acc.update(x.reshape(-1, 1), np.ones((x.size, 1)))
    pos = acc.state[0, 0:2 * RANK_BINS:2]
    expected = np.zeros(RANK_BINS)
    np.add.at(expected, np.arange(1, RANK_BINS), 1.0)  # each edge in its own bin
    np.add.at(expected, np.arange(0, RANK_BINS - 1), 1.0)  # just below: the bin before
    expected[0] += 2  # -inf, -1e300
    expected[-1] += 2  # +inf, 1e300
    np.testing.assert_array_equal(pos, expected)


def test_calibration_bins_are_low_high_inclusive(engine):
    """(low, high] as calibration_curve: p = 0.5 (x = 0) is in (0.25, 0.5] of 4 bins,
    p = 0 in the first bin, p = 1 in the last."""
    x = np.array([[0.0], [-np.inf], [np.inf], [0.0]])
    got = computed(x, np.array([[1.0], [0.0], [1.0], [0.0]]), bins=4)["classes"][0]
    assert [b["count"] for b in got["reliability"]] == [1, 2, 0, 1]
    true, pred = calibration_curve([1, 0, 1, 0], sigmoid(x[:, 0]), n_bins=4)
    table = [b for b in got["reliability"] if b["count"]]
    assert [b["positive_rate"] for b in table] == true.tolist()
    assert [b["mean_predicted"] for b in table] == pred.tolist()


def test_tiers_agree(digits, rng):
    x, y = digits
    w = rng.random(x.shape)
    states = {}
    for tier in ("numpy", "compiled"):
        _tiers.set_tier(tier)
        try:
            acc = BCEAccumulator(10).with_metrics(7)
            acc.update(x, y, w)
            states[tier] = acc.metrics.state
        finally:
            _tiers.set_tier(None)
    np.testing.assert_allclose(states["numpy"], states["compiled"], rtol=1e-13, atol=1e-13)
    # which bin each element is in is the same: the histograms have the same support
    assert np.array_equal(states["numpy"][:, :2 * RANK_BINS] > 0,
                          states["compiled"][:, :2 * RANK_BINS] > 0)


@pytest.mark.parametrize("layout", ["c-order", "f-order", "n-d"])
def test_layouts_give_the_same_state(engine, layout, rng):
    x = rng.normal(size=(300, 3, 4)) * 3
    y = (rng.random(x.shape) < 0.3).astype(np.float64)
    flat = MetricsAccumulator(3)
    flat.update(np.moveaxis(x, 1, 2).reshape(-1, 3), np.moveaxis(y, 1, 2).reshape(-1, 3))
    acc = MetricsAccumulator(3)
    if layout == "n-d":
        acc.update(x, y)
        # rows in another order: the counts are the same, the float sums nearly
        np.testing.assert_allclose(acc.state, flat.state, rtol=1e-12)
        return
    x2, y2 = np.moveaxis(x, 1, 2).reshape(-1, 3), np.moveaxis(y, 1, 2).reshape(-1, 3)
    if layout == "f-order":
        x2, y2 = np.asfortranarray(x2), np.asfortranarray(y2)
    acc.update(x2, y2)
    np.testing.assert_array_equal(acc.state, flat.state)


def test_threads_do_not_change_a_bit(digits):
    x, y = digits
    states = []
    _tiers.set_tier("compiled")
    try:
        for n in (1, 2, 3):
            _tiers.set_threads(n)
            acc = MetricsAccumulator(10)
            acc.update(np.asfortranarray(x), np.asfortranarray(y), np.ones(10) * 0.7)
            states.append(acc.state)
    finally:
        _tiers.set_threads(None)
        _tiers.set_tier(None)
    assert all(np.array_equal(states[0], s) for s in states[1:])


# ------------------------------------------------------------------ merge laws
def test_merge_laws(engine, digits):
    x, y = digits
    whole = MetricsAccumulator(10)
    whole.update(x, y)
    parts = [MetricsAccumulator(10) for _ in range(3)]
    for part, rows in zip(parts, np.array_split(np.arange(len(x)), 3), strict=True):
        part.update(x[rows], y[rows])
    before = [p.state.copy() for p in parts]
    merged = MetricsAccumulator(10).merge(*parts)
    assert all(np.array_equal(b, p.state) for b, p in zip(before, parts, strict=True))
    np.testing.assert_allclose(merged.state, whole.state, rtol=1e-13)
    # counts and histograms of 0/1 targets are whole numbers: exactly equal
    assert np.array_equal(merged.state[:, :2 * RANK_BINS], whole.state[:, :2 * RANK_BINS])
    empty = MetricsAccumulator(10)
    assert np.array_equal(merged.merge(empty).state, MetricsAccumulator(10).merge(*parts).state)
    before = merged.state.copy()
    merged.compute(METRICS)
    assert np.array_equal(merged.state, before)  # compute changes nothing


def test_accumulators_with_other_metrics_do_not_merge():
    a = BCEAccumulator(2).with_metrics(15)
    with pytest.raises(BCEInputError, match="other metrics"):
        a.merge(BCEAccumulator(2).with_metrics(10))
    with pytest.raises(BCEInputError, match="other metrics"):
        a.merge(BCEAccumulator(2))
    with pytest.raises(BCEInputError, match="does not add"):
        a.metrics.add_state(np.zeros((2, 5)))


def test_an_invalid_batch_leaves_the_metrics_unchanged():
    acc = BCEAccumulator(1).with_metrics(15)
    acc.update(np.array([[0.5]]), np.array([[1.0]]))
    before = acc.metrics.state.copy()
    with pytest.raises(BCEInputError):
        acc.update(np.array([[0.5], [1.0]]), np.array([[1.0], [2.0]]))
    assert np.array_equal(acc.metrics.state, before)


def test_spawned_accumulators_add_up_to_one_pass(digits):
    x, y = digits
    acc = BCEAccumulator(10).with_metrics(15)
    one = BCEAccumulator(10).with_metrics(15).update(x, y)
    for rows in np.array_split(np.arange(len(x)), 4):
        part = acc.spawn()
        part.update(x[rows], y[rows])
        acc.add_state(part.state, part.n_rows, part.metrics.state)
    np.testing.assert_allclose(acc.metrics.state, one.metrics.state, rtol=1e-13)
    with pytest.raises(BCEInputError, match="with metrics"):
        acc.add_state(part.state, part.n_rows)


def test_state_dict_carries_the_metrics(digits):
    x, y = digits
    acc = BCEAccumulator(10).with_metrics(9).update(x, y)
    d = acc.state_dict()
    back = BCEAccumulator(10).with_metrics(9).load_state_dict(d)
    assert np.array_equal(back.metrics.state, acc.metrics.state)
    with pytest.raises(BCEInputError, match="metrics bins"):
        BCEAccumulator(10).load_state_dict(d)
    with pytest.raises(BCEInputError, match="metrics bins"):
        BCEAccumulator(10).with_metrics(15).load_state_dict(d)
    with pytest.raises(BCEInputError, match="shape"):
        BCEAccumulator(10).with_metrics(9).load_state_dict({**d, "metrics": np.zeros(3)})


def test_too_many_classes_for_the_state_is_an_input_error():
    with pytest.raises(BCEInputError, match="per class"):
        MetricsAccumulator(100_000)


# ------------------------------------------------------------------ options
def test_ignored_and_omitted_elements_are_left_out(engine, rng):
    x = rng.normal(size=(500, 2)) * 2
    y = (rng.random((500, 2)) < 0.4).astype(np.float64)
    messy_x, messy_y = x.copy(), y.copy()
    ignored = rng.random((500, 2)) < 0.1
    nan = rng.random((500, 2)) < 0.05
    messy_y[ignored] = -1.0
    messy_x[nan & ~ignored] = np.nan
    got = computed(messy_x, messy_y, ignore_value=-1.0, nan_policy="omit")
    for c in range(2):
        keep = ~ignored[:, c] & ~nan[:, c]
        ref = computed(x[keep, c:c + 1], y[keep, c:c + 1])["classes"][0]
        assert_close(got["classes"][c], ref)


def test_nan_propagate_leaves_the_class_without_metrics(engine):
    x = np.array([[0.1, 0.2], [np.nan, -1.0], [2.0, 1.0]])
    y = np.array([[1.0, 1.0], [0.0, 0.0], [0.0, 0.0]])
    got = computed(x, y, nan_policy="propagate")
    assert got["classes"][0]["auroc"] is None and got["classes"][0]["reliability"] is None
    assert got["classes"][1]["auroc"] == 0.5
    assert got["overall"]["ece"] is None


def test_label_smoothing_and_pos_weight_change_no_metric(engine, digits):
    x, y = digits
    plain = computed(x, y)
    assert computed(x, y, label_smoothing=0.2, pos_weight=3.0) == plain  # the same sums


def test_a_class_with_one_kind_of_target(engine):
    got = computed(np.array([[0.1], [2.0]]), np.array([[1.0], [1.0]]))["classes"][0]
    assert got["auroc"] is None and got["best_threshold_f1"] == 1.0
    assert got["average_precision"] == 1.0
    none = computed(np.array([[0.1], [2.0]]), np.array([[0.0], [0.0]]))["classes"][0]
    assert none["average_precision"] is None and none["best_threshold"] is None
    assert none["brier"] == pytest.approx(np.mean(sigmoid([0.1, 2.0]) ** 2), rel=1e-12)


def test_parse_metrics():
    assert parse_metrics("ece,auroc") == ("ece", "auroc")
    assert parse_metrics(" ALL ") == METRICS
    with pytest.raises(BCEInputError, match="valid: brier, ece, auroc"):
        parse_metrics("auc")


def test_exp_neg_is_within_one_ulp():
    from bce_cli._fastmath import exp_neg

    a = np.concatenate([np.linspace(0, 40, 4001), np.linspace(700, 746, 47)])
    got = np.array([exp_neg(v) for v in a])
    ref = np.exp(-a)
    assert np.all(np.abs(got - ref) <= np.spacing(ref))
    assert exp_neg(np.inf) == 0.0 and np.isnan(exp_neg(np.nan))


# ------------------------------------------------------------------ the command line
@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("metrics")
    rng = np.random.default_rng(11)
    x = rng.normal(size=(200, 2)) * 2
    y = (rng.random((200, 2)) < sigmoid(x)).astype(np.float64)
    np.save(d / "x.npy", x)
    np.save(d / "y.npy", y)
    np.save(d / "p.npy", sigmoid(x))
    return d


def report_of(cli, *args):
    res = cli("eval", *args, "--format", "json")
    return res, json.loads(res.stdout) if res.stdout.strip() else None


def test_cli_json_keys(cli, files):
    res, rep = report_of(cli, files / "x.npy", files / "y.npy", "--metrics", "all",
                         "--bins", "10")
    assert res.exit_code == 0, res.output
    c = rep["classes"][0]
    for key in ("brier", "ece", "reliability", "auroc", "auroc_err", "average_precision",
                "average_precision_err", "best_threshold", "best_threshold_precision",
                "best_threshold_recall", "best_threshold_f1"):
        assert key in c and key in rep["metrics"]
    assert len(c["reliability"]) == 10
    assert set(c["reliability"][0]) >= {"low", "high", "count", "mean_predicted",
                                        "positive_rate"}
    assert rep["metrics"]["names"] == list(METRICS) and rep["metrics"]["bins"] == 10


def test_cli_only_the_requested_metrics(cli, files):
    res, rep = report_of(cli, files / "x.npy", files / "y.npy", "--metrics", "brier")
    assert "brier" in rep["classes"][0] and "auroc" not in rep["classes"][0]
    _, plain = report_of(cli, files / "x.npy", files / "y.npy")
    assert "metrics" not in plain and "brier" not in plain["classes"][0]


def test_several_batches_equal_one(cli, files):
    _, one = report_of(cli, files / "x.npy", files / "y.npy", "--metrics", "all")
    _, many = report_of(cli, files / "x.npy", files / "y.npy", "--metrics", "all",
                        "--batch-rows", "7")
    for a, b in zip(one["classes"] + [one["metrics"]], many["classes"] + [many["metrics"]],
                    strict=True):
        for key in ("auroc", "auroc_err", "average_precision", "best_threshold",
                    "best_threshold_f1"):
            assert a[key] == b[key]  # histograms of counts: exact
        for key in ("brier", "ece"):
            assert a[key] == pytest.approx(b[key], rel=1e-12)


def test_from_probs_gives_the_same_metrics(cli, files):
    _, logits = report_of(cli, files / "x.npy", files / "y.npy", "--metrics", "all")
    _, probs = report_of(cli, files / "p.npy", files / "y.npy", "--metrics", "all",
                         "--from-probs")
    for a, b in zip(logits["classes"], probs["classes"], strict=True):
        for key in ("auroc", "average_precision", "brier", "ece"):
            assert a[key] == pytest.approx(b[key], rel=1e-9)


def test_weight_option(cli, files, tmp_path):
    w = np.random.default_rng(3).uniform(0.5, 2.0, size=(200, 1))
    np.save(tmp_path / "w.npy", w)
    x, y = np.load(files / "x.npy"), np.load(files / "y.npy")
    _, rep = report_of(cli, files / "x.npy", files / "y.npy", "--metrics", "auroc,brier",
                       "--weight", tmp_path / "w.npy")
    assert rep["classes"][0]["auroc"] == pytest.approx(
        roc_auc_score(y[:, 0], x[:, 0], sample_weight=w[:, 0]),
        abs=rep["classes"][0]["auroc_err"] + 1e-12)
    assert rep["classes"][1]["brier"] == pytest.approx(
        np.mean(w[:, 0] * (sigmoid(x[:, 1]) - y[:, 1]) ** 2), rel=1e-12)


@pytest.mark.parametrize("args, code, needle", [
    (["--min-auroc", "0.5"], 0, None),
    (["--min-auroc", "0.999"], 1, "auroc"),
    (["--max-ece", "0.9"], 0, None),
    (["--max-ece", "0.0001"], 1, "ece"),
])
def test_gates(cli, files, args, code, needle):
    res = cli("eval", files / "x.npy", files / "y.npy", *args, "--format", "json")
    assert res.exit_code == code, res.output
    rep = json.loads(res.stdout)  # the report still prints
    key = "auroc" if "--min-auroc" in args else "ece"
    assert key in rep["classes"][0]  # the gate asked for its metric
    if needle:
        assert rep["failures"] and all(needle in f and "class " in f for f in rep["failures"])
        assert "gate failed" in res.stderr


def test_a_gate_on_an_undefined_metric_fails(cli, tmp_path):
    np.save(tmp_path / "x.npy", np.array([0.1, 0.2]))
    np.save(tmp_path / "y.npy", np.array([1.0, 1.0]))
    res = cli("eval", tmp_path / "x.npy", tmp_path / "y.npy", "--min-auroc", "0.5")
    assert res.exit_code == 1 and "auroc undefined" in res.stderr


@pytest.mark.parametrize("args, needle", [
    (["--bins", "0"], "--bins"),
    (["--bins", "-3"], "--bins"),
    (["--metrics", "auroc,roc"], "valid: brier, ece, auroc, average_precision, best_threshold"),
    (["--min-auroc", "nan"], "--min-auroc"),
])
def test_usage_errors(cli, files, args, needle):
    res = cli("eval", files / "x.npy", files / "y.npy", *args)
    assert res.exit_code == 2
    assert needle in res.stderr


def test_table_csv_markdown_columns(cli, files):
    args = [files / "x.npy", files / "y.npy", "--metrics", "all"]
    table = cli("eval", *args).stdout
    assert "auroc" in table and "ECE" in table and "brier" in table
    assert "metrics over all elements" in table
    csv_text = cli("eval", *args, "--format", "csv").stdout.splitlines()
    head = csv_text[0].split(",")
    assert {"auroc", "auroc_err", "ece", "brier", "best_threshold_f1"} <= set(head)
    overall = dict(zip(head, csv_text[-1].split(","), strict=True))
    assert overall["name"] == "(overall)" and overall["auroc"]
    md = cli("eval", *args, "--format", "markdown").stdout
    assert "| auroc |" in md and "Metrics over all elements" in md
    plain = cli("eval", files / "x.npy", files / "y.npy", "--format", "csv").stdout
    assert "auroc" not in plain


def test_a_parquet_job_with_labels_of_another_layout(cli, tmp_path, digits):
    """Wide Parquet columns (column-major batches) and a list column (row-major) give
    the same metrics."""
    x, y = digits
    names = [f"c{i}" for i in range(10)]
    pq.write_table(pa.table({n: x[:, i] for i, n in enumerate(names)}), tmp_path / "x.parquet")
    pq.write_table(pa.table({n: y[:, i] for i, n in enumerate(names)}), tmp_path / "y.parquet")
    _, wide = report_of(cli, tmp_path / "x.parquet", tmp_path / "y.parquet", "--metrics", "all")
    _, arrays = report_of(cli, f"{SAMPLE}/digits_logits.npy", f"{SAMPLE}/digits_targets.npy",
                          "--metrics", "all")
    for a, b in zip(wide["classes"], arrays["classes"], strict=True):
        assert a["auroc"] == b["auroc"] and a["brier"] == pytest.approx(b["brier"], rel=1e-12)


def test_the_compiled_pass_checks_the_shapes_it_is_given():
    """The kernel trusts the shapes it reads by address: the launcher refuses any other."""
    from bce_cli._launch import run_metrics
    from bce_cli.metrics import Layout, calibration_edges

    x = np.zeros((10, 3, 1), np.float32)
    y = np.zeros((10, 3, 1), np.uint8)
    edges = calibration_edges(15)
    out = np.zeros((3, Layout(15).width))
    run_metrics(x, y, np.zeros((0, 0, 0)), np.ones(3), None, 0, edges, out)  # fine
    assert out.sum() > 0
    bad = [(x, y[:5], np.zeros((0, 0, 0)), np.ones(3), edges, out),
           (x, y, np.ones((10, 3, 2)), np.ones(3), edges, out),
           (x, y, np.zeros((0, 0, 0)), np.ones(2), edges, out),
           (x, y, np.zeros((0, 0, 0)), np.ones(3), edges, np.zeros((3, Layout(10).width))),
           (x, y, np.zeros((0, 0, 0)), np.ones(3), edges, np.zeros((2, Layout(15).width))),
           (x, y, np.zeros((0, 0, 0)), np.ones(3), edges, out.astype(np.float32))]
    for xb, yb, wb, wv, eb, ob in bad:
        with pytest.raises(ValueError, match="run_metrics"):
            run_metrics(xb, yb, wb, wv, None, 0, eb, ob)
