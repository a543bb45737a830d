"""Standard errors and intervals of losses (rows as the units), against an independent
computation: per-row sums of extended-precision element losses, the ratio estimator's
residuals summed directly, SciPy's Student t."""

import json
import math

import numpy as np
import pytest
from scipy import stats as sps

from bce_cli import BCEAccumulator, _tiers
from bce_cli.uncertainty import intervals, t_quantile, t_sf, two_sided_p

from . import reference as ref


def _expected(x, y, *, weight=None, pos_weight=None, ignore=None, smoothing=0.0,
              omit_nan=False, reduction="mean", confidence=0.95):
    """(loss, se, ci) overall and per class, by hand: rows are axis 0, classes axis 1."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    keep = np.ones(y.shape, dtype=bool)
    if ignore is not None:
        keep &= y != ignore
    if omit_nan:
        keep &= ~(np.isnan(x) | np.isnan(y))
    ys = np.where(keep, y, 0.0) * (1 - smoothing) + smoothing / 2
    pw = None if pos_weight is None else np.asarray(pos_weight, dtype=np.float64).reshape(
        (1, -1) + (1,) * (x.ndim - 2))
    w = None if weight is None else np.broadcast_to(weight, x.shape)
    el = np.asarray(ref.elementwise(np.where(keep, x, 0.0), ys, w, pw), dtype=np.float64)
    el = np.where(keep, el, 0.0)
    r, c = x.shape[0], x.shape[1]
    a = el.reshape(r, c, -1).sum(axis=2)            # (R, C): per row and class
    n = keep.reshape(r, c, -1).sum(axis=2).astype(np.float64)
    t = sps.t.ppf(0.5 + confidence / 2, r - 1)

    def one(a_r, n_r):
        if reduction == "sum":
            loss = a_r.sum()
            se = math.sqrt(r * np.var(a_r, ddof=1))
        else:
            loss = a_r.sum() / n_r.sum()
            resid = a_r - loss * n_r
            se = math.sqrt(r / (r - 1) * (resid ** 2).sum()) / n_r.sum()
        return loss, se, (loss - t * se, loss + t * se)

    overall = one(a.sum(axis=1), n.sum(axis=1))
    classes = [one(a[:, k], n[:, k]) for k in range(c)]
    return overall, classes


def _check(acc, expected, reduction="mean", confidence=0.95, rtol=1e-9):
    res = acc.compute(reduction, confidence=confidence)
    (loss, se, ci), classes = expected
    assert res.loss == pytest.approx(loss, rel=1e-9)
    assert res.loss_se == pytest.approx(se, rel=rtol)
    np.testing.assert_allclose(res.loss_ci, ci, rtol=rtol)
    np.testing.assert_allclose(res.class_loss_se, [c[1] for c in classes], rtol=rtol)
    np.testing.assert_allclose(res.class_loss_ci[0], [c[2][0] for c in classes], rtol=rtol)
    np.testing.assert_allclose(res.class_loss_ci[1], [c[2][1] for c in classes], rtol=rtol)


LAYOUTS = {
    "rows": ((500, 6), "C"),
    "columns": ((3000, 4), "F"),       # a wide table: column-major, seen as (C, n)
    "one class": ((4000, 1), "C"),
    "images": ((60, 3, 40), "C"),      # rows along A, several elements per row and class
    "long images": ((5, 2, 40_000), "C"),  # a row and class spans several tasks
    "masks": ((80, 1, 30), "C"),
}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("option", ["plain", "weighted", "ignore", "smooth+pos", "omit"])
def test_se_matches_the_row_computation(engine, rng, layout, option):
    shape, order = LAYOUTS[layout]
    x = (rng.standard_normal(shape) * 2 + rng.standard_normal(shape[:1] + (1,) * (
        len(shape) - 1))).astype(np.float32)  # a row effect: elements of a row correlate
    y = (rng.random(shape) < 0.3).astype(np.float32)
    kw, acc_kw, upd_kw = {}, {}, {}
    if option == "weighted":
        w = rng.uniform(0.2, 3.0, shape).astype(np.float32)
        kw["weight"], upd_kw["weight"] = w, w
    elif option == "ignore":
        y[rng.random(shape) < 0.2] = -1.0
        kw["ignore"], acc_kw["ignore_value"] = -1.0, -1.0
    elif option == "smooth+pos":
        pw = rng.uniform(0.5, 4.0, shape[1])
        kw.update(pos_weight=pw, smoothing=0.1)
        acc_kw.update(pos_weight=pw, label_smoothing=0.1)
    elif option == "omit":
        x[rng.random(shape) < 0.05] = np.nan
        kw["omit_nan"], acc_kw["nan_policy"] = True, "omit"
    x, y = np.asarray(x, order=order), np.asarray(y, order=order)
    acc = BCEAccumulator(shape[1], **acc_kw).update(x, y, **upd_kw)
    rtol = 1e-9 if engine == "numpy" else 1e-8  # the float32 polynomial: 4e-11 per element
    for reduction in ("mean", "sum"):
        _check(acc, _expected(x, y, reduction=reduction, **kw), reduction, rtol=rtol)


def test_streaming_and_threads_give_the_same_figures(engine, rng):
    x = rng.standard_normal((3001, 5)).astype(np.float32)
    y = (rng.random((3001, 5)) < 0.4).astype(np.float32)
    whole = BCEAccumulator(5).update(x, y).compute()
    acc = BCEAccumulator(5)
    for lo in range(0, 3001, 217):
        acc.update(x[lo:lo + 217], y[lo:lo + 217])
    parts = acc.compute()
    assert parts.loss_se == pytest.approx(whole.loss_se, rel=1e-12)
    np.testing.assert_allclose(parts.class_loss_se, whole.class_loss_se, rtol=1e-12)
    _tiers.set_threads(1)
    try:
        one = BCEAccumulator(5).update(x, y).compute()
    finally:
        _tiers.set_threads(None)
    assert one.loss_se == whole.loss_se  # the task geometry never depends on threads


_BLAS_THREADS = """
import hashlib
import numpy as np
from bce_cli import BCEAccumulator, _tiers
_tiers.set_tier({tier!r})
rng = np.random.default_rng(3)
states = []
for shape in [(300000, 5), (300000, 3, 2), (600000,)]:
    x = rng.standard_normal(shape).astype(np.float32)
    y = (rng.random(shape) < 0.3).astype(np.float32)
    for order in ("C", "F"):
        acc = BCEAccumulator(shape[1] if len(shape) > 1 else 1)
        acc.update(np.asarray(x, order=order), np.asarray(y, order=order))
        states.append(acc.state.tobytes())
print(hashlib.sha256(b"".join(states)).hexdigest())
"""


@pytest.mark.parametrize("tier", ["numpy", "compiled"])
def test_the_blas_thread_count_changes_no_bit(tier):
    """The row moments are summed without BLAS: OpenBLAS splits a product by its thread
    count (Dask's workers run it on one thread), which changed the last bits of the
    standard errors between the engines."""
    import os
    import subprocess
    import sys

    code = _BLAS_THREADS.format(tier=tier)
    got = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, env=dict(os.environ, OPENBLAS_NUM_THREADS=n,
                                               OMP_NUM_THREADS=n)).stdout
           for n in ("1", "2")]
    assert got[0] == got[1]


def test_merged_states_add_the_row_moments(rng):
    x = rng.standard_normal((400, 3))
    y = (rng.random((400, 3)) < 0.5).astype(np.float64)
    a = BCEAccumulator(3).update(x[:150], y[:150])
    b = BCEAccumulator(3).update(x[150:], y[150:])
    merged = a.merge(b).compute()
    _check_like = _expected(x, y)
    assert merged.loss_se == pytest.approx(_check_like[0][1], rel=1e-9)


def test_fewer_than_two_rows_have_no_interval():
    res = BCEAccumulator(2).update(np.array([[0.5, -1.0]]), np.array([[1.0, 0.0]])).compute()
    assert math.isnan(res.loss_se) and all(math.isnan(v) for v in res.loss_ci)
    assert np.isnan(res.class_loss_ci).all()


def test_a_constant_row_loss_has_next_to_no_error():
    """Sums of squares resolve a standard error down to about sqrt(eps) = 1e-8 of the
    loss (the cancellation in sum a^2 - L sum a*n): identical rows give at most that."""
    x = np.tile([[1.0, -2.0]], (50, 1))
    y = np.tile([[1.0, 0.0]], (50, 1))
    res = BCEAccumulator(2).update(x, y).compute()
    assert 0.0 <= res.loss_se < 1e-8 * res.loss
    assert np.all(res.class_loss_se < 1e-8 * res.class_loss)


@pytest.mark.parametrize("dof", [1, 2, 3, 5, 10, 29, 100, 1000, 1e6])
@pytest.mark.parametrize("p", [0.6, 0.9, 0.95, 0.975, 0.995, 0.9995])
def test_t_quantile_and_tail_match_scipy(dof, p):
    assert t_quantile(p, dof) == pytest.approx(sps.t.ppf(p, dof), rel=1e-9)
    assert t_quantile(1 - p, dof) == pytest.approx(sps.t.ppf(1 - p, dof), rel=1e-9)
    q = sps.t.ppf(p, dof)
    assert t_sf(q, dof) == pytest.approx(1 - p, rel=1e-9)
    assert two_sided_p(-q, dof) == pytest.approx(2 * (1 - p), rel=1e-9)


def test_intervals_use_the_t_quantile():
    lo, hi = intervals(np.array([1.0]), np.array([0.1]), 11, 0.9)
    t = sps.t.ppf(0.95, 10)
    assert lo[0] == pytest.approx(1 - 0.1 * t) and hi[0] == pytest.approx(1 + 0.1 * t)


def _coverage(rng, ignore: bool, n_sets=1000, rows=150):
    """Share of data sets whose 95% interval covers the population's loss: rows drawn
    with replacement from a fixed population of correlated rows."""
    pop = 20_000
    effect = rng.standard_normal((pop, 1))
    x = rng.standard_normal((pop, 3)) + effect
    y = (rng.random((pop, 3)) < 1 / (1 + np.exp(-(x - effect)))).astype(np.float64)
    if ignore:
        y[rng.random((pop, 3)) < 0.3] = -1.0
    keep = y != -1.0
    el = np.where(keep, np.asarray(ref.elementwise(x, np.where(keep, y, 0.0)),
                                   dtype=np.float64), 0.0)
    truth = el.sum() / keep.sum()
    hits = 0
    _tiers.set_tier("numpy")
    try:
        for _ in range(n_sets):
            idx = rng.integers(0, pop, rows)
            acc = BCEAccumulator(3, ignore_value=-1.0 if ignore else None)
            lo, hi = acc.update(x[idx], y[idx]).compute().loss_ci
            hits += lo <= truth <= hi
    finally:
        _tiers.set_tier(None)
    return hits / n_sets


@pytest.mark.parametrize("ignore", [False, True])
def test_95_percent_intervals_cover_the_truth_95_percent_of_the_time(ignore):
    share = _coverage(np.random.default_rng(7 + ignore), ignore)
    assert 0.93 <= share <= 0.97, share


def test_report_carries_the_intervals(tmp_path, cli):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((300, 2)).astype(np.float32)
    y = (rng.random((300, 2)) < 0.5).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    out = cli("eval", str(tmp_path / "x.npy"), str(tmp_path / "y.npy"), "--format", "json",
              "--confidence", "0.9")
    assert out.exit_code == 0, out.output
    rep = json.loads(out.stdout)
    (loss, se, ci), classes = _expected(x, y, confidence=0.9)
    assert rep["confidence"] == 0.9
    assert rep["loss_se"] == pytest.approx(se, rel=1e-8)
    assert rep["loss_ci"] == pytest.approx(list(ci), rel=1e-8)
    for c, (_, c_se, c_ci) in zip(rep["classes"], classes, strict=True):
        assert c["loss_se"] == pytest.approx(c_se, rel=1e-8)
        assert c["loss_ci"] == pytest.approx(list(c_ci), rel=1e-8)
    csv = cli("eval", str(tmp_path / "x.npy"), str(tmp_path / "y.npy"), "--format", "csv")
    header, first = csv.stdout.splitlines()[:2]
    row = dict(zip(header.split(","), first.split(","), strict=True))
    assert float(row["loss_ci_low"]) == pytest.approx(
        _expected(x, y)[1][0][2][0], rel=1e-8)
    table = cli("eval", str(tmp_path / "x.npy"), str(tmp_path / "y.npy"))
    assert "95% CI" in table.stdout


@pytest.mark.parametrize("bad", ["0", "1", "1.5", "nan", "-0.2"])
def test_confidence_outside_0_1_is_refused(tmp_path, cli, bad):
    np.save(tmp_path / "x.npy", np.zeros((4, 2), np.float32))
    np.save(tmp_path / "y.npy", np.ones((4, 2), np.float32))
    out = cli("eval", str(tmp_path / "x.npy"), str(tmp_path / "y.npy"), "--confidence", bad)
    assert out.exit_code == 2
    assert "--confidence" in out.stderr and "Traceback" not in out.output
