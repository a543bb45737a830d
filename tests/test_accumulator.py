"""The accumulator against the reference, and the merge laws."""

import copy
import io
import json
import math

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from bce_cli import BCEAccumulator, BCEInputError, _tiers, bce_with_logits
from bce_cli._forms import CHUNK
from bce_cli.stats import STAT_NAMES, Stat

from . import reference as ref

pytestmark = pytest.mark.usefixtures("engine")  # numba kernels and NumPy path


def _batch(rng, n, c, dtype=np.float32, extra=()):
    x = (rng.standard_normal((n, c, *extra)) * 3).astype(dtype)
    y = rng.random((n, c, *extra)) < 0.3
    return x, y


def test_compute_matches_reference_per_class(rng):
    x, y = _batch(rng, 5000, 4)
    pw = np.array([1.0, 2.0, 0.5, 3.0])
    res = BCEAccumulator(4, pos_weight=pw).update(x, y).compute()
    per_elem = ref.elementwise(x, y, pos_weight=pw).astype(np.float64)
    np.testing.assert_allclose(res.class_loss, per_elem.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(res.n_pos, y.sum(axis=0))
    np.testing.assert_allclose(res.n_neg, (~y).sum(axis=0))
    np.testing.assert_allclose(res.accuracy, ((x > 0) == y).mean(axis=0))
    np.testing.assert_allclose(res.suggested_pos_weight, (~y).sum(0) / y.sum(0))
    assert res.loss == pytest.approx(per_elem.mean(), rel=1e-12)
    assert res.n_elements == x.size
    total = BCEAccumulator(4, pos_weight=pw).update(x, y).compute("sum")
    assert total.loss == pytest.approx(per_elem.sum(), rel=1e-12)
    np.testing.assert_allclose(total.class_loss, per_elem.sum(axis=0), rtol=1e-12)


def test_nd_batches_put_classes_on_axis_1(rng):
    x, y = _batch(rng, 3, 2, extra=(7, 5))
    res = BCEAccumulator(2, pos_weight=[2.0, 0.5]).update(x, y).compute()
    per_elem = ref.elementwise(x, y, pos_weight=np.array([2.0, 0.5])[:, None, None])
    np.testing.assert_allclose(res.class_loss, per_elem.astype(float).mean(axis=(0, 2, 3)),
                               rtol=1e-12)


def test_ignore_value_leaves_elements_out(rng):
    x, y = _batch(rng, 1000, 3)
    yl = y.astype(np.float32)
    yl[::7, 1] = -1
    res = BCEAccumulator(3, ignore_value=-1).update(x, yl).compute()
    keep = yl != -1
    per_elem = ref.elementwise(x, np.where(keep, yl, 0)).astype(np.float64)
    for c in range(3):
        assert res.count[c] == keep[:, c].sum()
        assert res.class_loss[c] == pytest.approx(per_elem[keep[:, c], c].mean(), rel=1e-12)
    assert res.loss == pytest.approx(per_elem[keep].mean(), rel=1e-12)


def test_label_smoothing(rng):
    x, y = _batch(rng, 500, 2)
    a = 0.1
    res = BCEAccumulator(2, label_smoothing=a).update(x, y).compute()
    want = ref.elementwise(x, y * (1 - a) + a / 2).astype(float).mean()
    assert res.loss == pytest.approx(want, rel=1e-12)


def test_nan_policies(rng):
    x, y = _batch(rng, 100, 2, dtype=np.float64)
    x[3, 1] = np.nan
    with pytest.raises(ValueError, match=r"NaN at index \(3, 1\)"):
        BCEAccumulator(2).update(x, y)
    omit = BCEAccumulator(2, nan_policy="omit").update(x, y).compute()
    assert omit.count.tolist() == [100, 99]
    keep = ~np.isnan(x)
    want = ref.elementwise(np.where(keep, x, 0), y).astype(float)[keep].mean()
    assert omit.loss == pytest.approx(want, rel=1e-12)
    prop = BCEAccumulator(2, nan_policy="propagate").update(x, y).compute()
    assert np.isnan(prop.loss) and np.isnan(prop.class_loss[1]) and np.isfinite(prop.class_loss[0])


def test_return_losses_has_the_batch_layout(rng):
    x, y = _batch(rng, 10, 3, dtype=np.float64)
    losses = BCEAccumulator(3).update(x, y, return_losses=True)
    np.testing.assert_allclose(losses, ref.elementwise(x, y).astype(float), rtol=1e-15)


def _split_points(n, k, rng):
    return np.sort(rng.choice(np.arange(1, n), size=min(k, n - 1), replace=False))


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 3000), c=st.integers(1, 5), parts=st.integers(1, 6),
       seed=st.integers(0, 2**32 - 1), three_d=st.booleans())
def test_split_then_merge_equals_one_pass(n, c, parts, seed, three_d):
    rng = np.random.default_rng(seed)
    x, y = _batch(rng, n, c, extra=(3,) if three_d else ())
    pw = rng.random(c) + 0.5
    one = BCEAccumulator(c, pos_weight=pw).update(x, y)
    bounds = [0, *_split_points(n, parts - 1, rng).tolist(), n]
    accs = [BCEAccumulator(c, pos_weight=pw).update(x[a:b], y[a:b])
            for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    merged = accs[0].spawn().merge(*accs)
    np.testing.assert_allclose(merged.state, one.state, rtol=1e-12, atol=1e-12)
    assert merged.n_rows == one.n_rows == n


def test_merge_laws(rng):
    x, y = _batch(rng, 400, 3)
    a = BCEAccumulator(3).update(x[:150], y[:150])
    b = BCEAccumulator(3).update(x[150:], y[150:])
    a_before, b_before = copy.deepcopy(a.state), copy.deepcopy(b.state)
    ab = a.spawn().merge(a, b)
    ba = b.spawn().merge(b, a)
    np.testing.assert_array_equal(a.state, a_before)  # inputs unchanged
    np.testing.assert_array_equal(b.state, b_before)
    np.testing.assert_allclose(ab.state, ba.state, rtol=1e-15)  # commutative
    np.testing.assert_array_equal(a.spawn().merge(a).state, a.state)  # empty is neutral
    np.testing.assert_array_equal(copy.deepcopy(a).merge(a.spawn()).state, a.state)
    first, second = ab.compute(), ab.compute()  # compute is idempotent
    assert first.loss == second.loss
    np.testing.assert_array_equal(ab.state, a.spawn().merge(a, b).state)


def test_merge_rejects_other_class_counts():
    with pytest.raises(ValueError, match="cannot merge"):
        BCEAccumulator(2).merge(BCEAccumulator(3))


OPTIONS = {"pos_weight": [0.5, 2.0, 3.0], "weight": [1.0, 0.25, 2.0], "ignore_value": -1.0,
           "label_smoothing": 0.1, "nan_policy": "omit"}


def _random_parts(seed, n, k, **options):
    """``k`` accumulators over a random split of ``n`` random rows of 3 classes, with
    per-element weights, ignored and NaN elements: every row of the state is used."""
    rng = np.random.default_rng(seed)
    x, y = _batch(rng, n, 3, dtype=np.float64)
    y = y.astype(np.float64)
    y[rng.random(y.shape) < 0.05] = -1.0
    x[rng.random(x.shape) < 0.02] = np.nan
    w = rng.random((n, 3))
    bounds = [0, *_split_points(n, k - 1, rng).tolist(), n]
    return [BCEAccumulator(3, **options).update(x[a:b], y[a:b], w[a:b])
            for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def _merged(*accs):
    return accs[0].spawn().merge(*accs)


def _results(acc):
    """compute()'s fields, or its error when no element counts (a small random part can
    hold only ignored and NaN elements)."""
    try:
        return vars(acc.compute())
    except BCEInputError as err:
        return str(err)


def _assert_same(a, b):
    """Bit for bit: the state, the row count and every result of compute()."""
    np.testing.assert_array_equal(a.state, b.state)
    assert a.n_rows == b.n_rows
    ra, rb = _results(a), _results(b)
    if isinstance(rb, str):
        assert ra == rb
        return
    for name, value in ra.items():
        np.testing.assert_array_equal(value, rb[name], err_msg=name)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(3, 2000))
@example(seed=1902, n=3)  # a part of one row, all of it ignored or NaN: no loss to compute
def test_merge_laws_on_random_splits(seed, n):
    """torcheval's laws.  Float64 addition is commutative and has 0 as identity,
    so those two hold bit for bit; it is not associative, so regrouping three
    states may move the sums by rounding, bounded here by 4 ulps; the counts
    (integers, far below 2**53) add exactly in any grouping."""
    a, b, c = _random_parts(seed, n, 3, **OPTIONS)
    before = [p.state.copy() for p in (a, b, c)]
    _assert_same(_merged(a, b), _merged(b, a))  # commutative
    _assert_same(_merged(a, b, c), _merged(b, a).merge(c))  # (a + b) + c == (b + a) + c
    _assert_same(_merged(a, b).merge(), _merged(a, b))  # merging nothing changes nothing
    _assert_same(copy.deepcopy(a).merge(a.spawn()), a)  # a fresh state is the identity
    _assert_same(a.spawn().merge(a), a)
    left, right = _merged(_merged(a, b), c), _merged(a, _merged(b, c))  # associative
    np.testing.assert_array_max_ulp(left.state, right.state, maxulp=4)
    for row in (Stat.COUNT, Stat.CORRECT):
        np.testing.assert_array_equal(left.state[row], right.state[row])
    assert left.n_rows == right.n_rows == n
    assert math.isclose(left.compute().loss, right.compute().loss, rel_tol=8 * 2.0**-52)
    for p, state in zip((a, b, c), before, strict=True):  # the inputs are unchanged
        np.testing.assert_array_equal(p.state, state)


def test_state_dict_round_trip_through_json_and_npz():
    a, b = _random_parts(7, 500, 2, **OPTIONS)
    d = a.state_dict()
    assert list(d["state"]) == list(STAT_NAMES) == [s.name.lower() for s in Stat]
    for stat in Stat:
        np.testing.assert_array_equal(d["state"][stat.name.lower()], a.state[stat])
    meta = json.loads(json.dumps(d["metadata"], allow_nan=False))  # strict JSON
    buf = io.BytesIO()
    np.savez(buf, **d["state"])
    buf.seek(0)
    with np.load(buf, allow_pickle=False) as arrays:
        loaded = BCEAccumulator(3, **OPTIONS).load_state_dict(
            {"metadata": meta, "state": dict(arrays)})
    _assert_same(loaded, a)
    _assert_same(loaded.merge(b), _merged(a, b))  # a loaded state merges like the original
    d["state"]["loss"][:] = 0.0  # the state_dict is a copy, not a view of the state
    assert a.state[Stat.LOSS].any()


@pytest.mark.parametrize("change, message", [
    ({"pos_weight": [1.0, 2.0, 3.0]}, "pos_weight"),
    ({"weight": None}, "weight"),
    ({"ignore_value": None}, "ignore_value"),
    ({"label_smoothing": 0.0}, "label_smoothing"),
    ({"nan_policy": "propagate"}, "nan_policy"),
])
def test_load_and_merge_refuse_other_options(change, message):
    (a,) = _random_parts(3, 50, 1, **OPTIONS)
    other = BCEAccumulator(3, **{**OPTIONS, **change})
    with pytest.raises(BCEInputError, match=f"cannot load a state with {message} "):
        other.load_state_dict(a.state_dict())
    assert not other.state.any() and other.n_rows == 0  # left unchanged
    with pytest.raises(BCEInputError, match=f"cannot merge an accumulator with {message} "):
        other.merge(a)


@pytest.mark.parametrize("vector_side", ["ours", "theirs"])
@pytest.mark.parametrize("option", ["pos_weight", "weight"])
def test_a_per_class_vector_against_none_is_refused_either_way(vector_side, option):
    """A per-class vector on one side and none on the other: an input error whichever
    side holds the vector (it used to be numpy's "truth value is ambiguous")."""
    x, y = np.zeros((3, 2)), np.ones((3, 2))
    vec = BCEAccumulator(2, **{option: [1.0, 2.0]}).update(x, y)
    plain = BCEAccumulator(2).update(x, y)
    ours, theirs = (vec, plain) if vector_side == "ours" else (plain, vec)
    with pytest.raises(BCEInputError, match=f"cannot merge an accumulator with {option} "):
        ours.spawn().merge(theirs)
    with pytest.raises(BCEInputError, match=f"cannot load a state with {option} "):
        ours.spawn().load_state_dict(theirs.state_dict())


@pytest.mark.parametrize("bad", [np.array(["a", "b"]), np.array([None, None]),
                                 np.array([1 + 1j, 2.0])])
def test_load_refuses_arrays_that_are_not_real_numbers(bad):
    d = BCEAccumulator(2).update(np.zeros((2, 2)), np.ones((2, 2))).state_dict()
    with pytest.raises(BCEInputError, match="'loss' holds .* not real numbers"):
        BCEAccumulator(2).load_state_dict({**d, "state": {**d["state"], "loss": bad}})
    with pytest.raises(BCEInputError, match="its options are None"):
        BCEAccumulator(2).load_state_dict(
            {**d, "metadata": {**d["metadata"], "options": None}})


def test_a_nan_ignore_value_matches_itself():
    a = BCEAccumulator(1, ignore_value=np.nan).update(np.zeros(3), np.ones(3))
    _assert_same(a.spawn().merge(a), a)
    _assert_same(a.spawn().load_state_dict(a.state_dict()), a)


def test_load_refuses_other_shapes_and_formats():
    d = BCEAccumulator(2).update(np.zeros((2, 2)), np.ones((2, 2))).state_dict()
    with pytest.raises(BCEInputError, match="state of 2 classes into an accumulator of 3"):
        BCEAccumulator(3).load_state_dict(d)
    with pytest.raises(BCEInputError, match="format 99"):
        BCEAccumulator(2).load_state_dict({**d, "metadata": {**d["metadata"], "format": 99}})
    with pytest.raises(BCEInputError, match="not an accumulator state"):
        BCEAccumulator(2).load_state_dict({"state": d["state"]})
    with pytest.raises(BCEInputError, match="lacks wpos, wneg"):
        BCEAccumulator(2).load_state_dict(
            {**d, "state": {k: v for k, v in d["state"].items() if k[0] != "w"}})
    with pytest.raises(BCEInputError, match=r"'count' has shape \(3,\)"):
        BCEAccumulator(2).load_state_dict({**d, "state": {**d["state"], "count": np.ones(3)}})


def test_reset_empties_the_state_and_keeps_the_options(rng):
    x, y = _batch(rng, 100, 3)
    acc = BCEAccumulator(3, **OPTIONS).update(x, y)
    assert acc.reset() is acc
    assert not acc.state.any() and acc.n_rows == 0
    with pytest.raises(BCEInputError, match="no elements"):
        acc.compute()
    _assert_same(acc.update(x, y), BCEAccumulator(3, **OPTIONS).update(x, y))


# large enough for the NumPy tier's threads too (more than 2**18 elements, several blocks)
@pytest.mark.parametrize("shape", [(3 * CHUNK + 17,), (CHUNK // 3, 7), (5, 3, CHUNK + 5),
                                   (9 * CHUNK + 3,), (60_001, 7)])
def test_result_does_not_depend_on_thread_count(rng, shape, engine):  # both tiers
    x = (rng.standard_normal(shape) * 3).astype(np.float32)
    y = (rng.random(shape) < 0.3).astype(np.float32)
    pw = np.full(shape[-1] if len(shape) == 2 else 1, 2.0)
    results = []
    try:
        for threads in (1, 2, 3):
            _tiers.set_threads(threads)
            results.append(bce_with_logits(x, y, pos_weight=pw, reduction="sum"))
    finally:
        _tiers.set_threads(None)
    assert len(set(results)) == 1


@settings(max_examples=30, deadline=None)
@given(arr=hnp.arrays(np.float32, hnp.array_shapes(min_dims=1, max_dims=3, max_side=40),
                      elements=st.floats(-200, 200, width=32)))
def test_any_shape_matches_reference(arr):
    y = (np.abs(arr) % 1.0).astype(np.float32)
    got = bce_with_logits(arr, y, reduction="sum")
    # float32 logits use the float32-exact polynomial: relative error below 1e-10
    assert got == pytest.approx(float(ref.bce(arr, y, reduction="sum")), rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("wshape", [None, (1, 1), (1, 4), (300, 1), (300, 4)])
def test_memory_order_and_batch_weight_shapes(rng, order, wshape):
    x, y = _batch(rng, 300, 4)
    x, y = np.asarray(x, order=order), np.asarray(y, order=order)
    w = None if wshape is None else rng.random(wshape) + 0.5
    acc = BCEAccumulator(4, pos_weight=[1.0, 2.0, 3.0, 4.0])
    losses = acc.update(x, y, w, return_losses=True)
    want = ref.elementwise(x, y, weight=w, pos_weight=np.array([1.0, 2.0, 3.0, 4.0]))
    np.testing.assert_allclose(losses, want.astype(np.float32), rtol=1e-6)
    np.testing.assert_allclose(acc.compute().class_loss, want.astype(float).mean(0), rtol=1e-12)


def test_fortran_order_error_names_first_row(rng):
    x, y = _batch(rng, 50, 3)
    y = np.asfortranarray(y.astype(np.float32))
    y[40, 0] = 2.0
    y[10, 2] = 3.0
    with pytest.raises(ValueError, match=r"target 3.0 .* at index \(10, 2\)"):
        BCEAccumulator(3).update(np.asfortranarray(x), y)


def test_rows_kernel_lines_are_whole_rows():
    from bce_cli._forms import LINE_MAX, LINE_MIN, line_length

    for c in range(1, 2 * LINE_MAX):
        length = line_length(c)
        assert length % c == 0, c
        assert length == c if c >= LINE_MIN else LINE_MIN <= length <= LINE_MAX, c


# rows kernel lines of 64 rows (C=3, last line partial), 6 rows (C=70, several chunks),
# one row (C=300)
@pytest.mark.parametrize("n_classes", [3, 70, 300])
@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("options", [{}, {"ignore_value": -1.0}, {"label_smoothing": 0.2},
                                     {"nan_policy": "omit"}])
def test_row_layouts_with_every_option(rng, n_classes, order, options):
    n = 2100  # several row blocks, the last one partial
    x = (rng.standard_normal((n, n_classes)) * 4).astype(np.float32)
    y = (rng.random((n, n_classes)) < 0.3).astype(np.float32)
    if "ignore_value" in options:
        y[rng.random(y.shape) < 0.1] = -1.0
    if "nan_policy" in options:
        x[rng.random(x.shape) < 0.05] = np.nan
    x, y = np.asarray(x, order=order), np.asarray(y, order=order)
    w = rng.random((n, n_classes)) + 0.5
    pw = rng.random(n_classes) + 0.5
    acc = BCEAccumulator(n_classes, pos_weight=pw, **options)
    losses = acc.update(x, y, w, return_losses=True)
    keep = (y != -1) & ~np.isnan(x)
    a = options.get("label_smoothing", 0.0)
    ys = np.where(keep, y, 0).astype(np.float64) * (1 - a) + a / 2
    want = ref.elementwise(np.where(keep, x, 0), ys, weight=w, pos_weight=pw).astype(float)
    np.testing.assert_allclose(losses[keep], want[keep].astype(np.float32), rtol=2e-7)
    assert np.isnan(losses[~keep]).all()
    res = acc.compute()
    np.testing.assert_array_equal(res.count, keep.sum(axis=0))
    np.testing.assert_allclose(res.loss_sum, np.where(keep, want, 0).sum(axis=0), rtol=1e-9)
    np.testing.assert_allclose(res.n_pos, np.where(keep, y, 0).sum(axis=0))


@pytest.mark.parametrize("wshape", [(4,), (3, 1), (1, 3, 1), (5, 1, 1), (1, 1, 4), (5, 3, 4), ()])
def test_batch_weight_broadcasts_like_numpy(rng, wshape):
    x, y = _batch(rng, 5, 3, extra=(4,))
    w = rng.random(wshape) + 0.5
    res = BCEAccumulator(3).update(x, y, w).compute()
    want = ref.elementwise(x, y, weight=np.broadcast_to(w, x.shape)).astype(float)
    np.testing.assert_allclose(res.class_loss, want.mean(axis=(0, 2)), rtol=1e-9)


def test_batch_weight_that_does_not_broadcast():
    with pytest.raises(ValueError, match=r"weight of shape \(2,\) does not broadcast"):
        BCEAccumulator(3).update(np.zeros((4, 3)), np.zeros((4, 3)), np.ones(2))


@pytest.mark.parametrize("shape", [(5000, 3, 1), (4099, 7, 1), (300, 200, 1), (1, 4, 9000),
                                   (17, 5, 33)])
def test_class_sums_of_the_numpy_tier(rng, shape):
    """Per-class sums over rows and runs, against math.fsum (exactly rounded)."""
    import math

    from bce_cli._vectorised import class_sums

    u = rng.standard_normal(shape) * 10
    got = class_sums(u)
    want = [math.fsum(u[:, c, :].ravel()) for c in range(shape[1])]
    np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-9)


@pytest.mark.parametrize("shape,order", [((5000, 3), "C"), ((300, 200), "C"), ((9000, 4), "F"),
                                         ((40, 3, 900), "C"), ((17, 5, 33), "C")])
@pytest.mark.parametrize("kind", ["bool", "float", "float with -0.0", "float with a soft one"])
@pytest.mark.parametrize("infinite", [None, "on its side", "on the wrong side"])
def test_targets_of_0_and_1(rng, shape, order, kind, infinite):
    """Unweighted targets that are all 0 or 1 take a shorter form on the NumPy tier
    (``|x|`` where the logit is on the wrong side): bools, float 0 and 1 (-0.0
    among them), and floats where one soft target lies past the first few give the
    reference's losses, positives and accuracy; with infinite logits on their
    targets' side (loss 0) or on the wrong side (loss inf) too."""
    x = np.asarray(rng.standard_normal(shape) * 4, dtype=np.float32, order=order)
    y = np.asarray(rng.random(shape) < 0.3, order=order)
    if infinite is not None:
        x.flat[[3, 11]] = [np.inf, -np.inf]
        y.flat[[3, 11]] = [True, False] if infinite == "on its side" else [False, True]
    if kind != "bool":
        y = y.astype(np.float32)
    if kind == "float with -0.0":
        y[y == 0] = -0.0
    if kind == "float with a soft one":
        y.flat[y.size // 2 + 7] = 0.25
    exact = ref.elementwise(x, y)
    want = exact.astype(np.float64)
    axes = (0,) if x.ndim == 2 else (0, 2)
    res = BCEAccumulator(shape[1]).update(x, y).compute()
    np.testing.assert_allclose(res.class_loss, want.mean(axis=axes), rtol=1e-12)
    np.testing.assert_array_equal(res.n_pos, y.astype(np.float64).sum(axis=axes))
    np.testing.assert_array_equal(res.accuracy, ((x > 0) == (y >= 0.5)).mean(axis=axes))
    losses = bce_with_logits(x, y, reduction="none")
    assert ref.ulp_error(losses, exact, np.float32).max() <= 1.0


@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("kind", ["bool", "float", "float with a soft one"])
@pytest.mark.parametrize("factors", ["pos_weight", "weight", "both"])
def test_targets_of_0_and_1_with_class_factors(rng, order, kind, factors):
    """The same with per-class weights and pos_weight (one of 0): ``c * w`` times the
    unweighted loss, ``c`` the pos_weight for a positive and 1 for a negative."""
    n, c = 6000, 4
    x = np.asarray(rng.standard_normal((n, c)) * 4, order=order)
    y = np.asarray(rng.random((n, c)) < 0.4, order=order)
    if kind != "bool":
        y = y.astype(np.float64)
    if kind == "float with a soft one":
        y[n // 2, 1] = 0.75
    pw = np.array([2.5, 0.0, 1.0, 0.3]) if factors != "weight" else None
    w = np.array([0.5, 2.0, 1.0, 3.0]) if factors != "pos_weight" else None
    exact = ref.elementwise(x, y, weight=w, pos_weight=pw)
    res = BCEAccumulator(c, weight=w, pos_weight=pw).update(x, y).compute("sum")
    np.testing.assert_allclose(res.class_loss, exact.astype(np.float64).sum(axis=0), rtol=1e-12)
    np.testing.assert_array_equal(res.n_pos, y.astype(np.float64).sum(axis=0))
    np.testing.assert_array_equal(res.n_neg, (1.0 - y.astype(np.float64)).sum(axis=0))
    np.testing.assert_array_equal(res.accuracy, ((x > 0) == (y >= 0.5)).mean(axis=0))
    losses = bce_with_logits(x, y, weight=w, pos_weight=pw, reduction="none")
    # 1.5 ulp for the loss (README, "Accuracy"), and a rounding for each factor
    assert ref.ulp_error(losses, exact, np.float64).max() <= 2.5

def test_a_zero_loss_under_a_negative_pos_weight_is_positive_zero():
    """``p * y * softplus(-x)`` is -0.0 for a positive far on its side under a negative
    pos_weight; the loss adds ``(1 - y) * softplus(x)``, +0.0, so it is +0.0 (as in
    PyTorch), not -0.0."""
    x = np.full((40, 2), 1000.0)
    y = np.ones((40, 2))
    losses = bce_with_logits(x, y, pos_weight=np.array([-2.0, 3.0]), reduction="none")
    assert (losses == 0.0).all() and not np.signbit(losses).any()

@pytest.mark.parametrize("shape", [(5000, 3, 1), (4099, 7, 1), (300, 200, 1), (1, 4, 9000),
                                   (17, 5, 33)])
def test_class_counts_of_the_numpy_tier(rng, shape):
    from bce_cli._vectorised import class_counts

    b = rng.random(shape) < 0.4
    want = [int(np.count_nonzero(b[:, c, :])) for c in range(shape[1])]
    assert class_counts(b).tolist() == want


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_prior_predicts_the_positive_rate_over_streamed_batches(rng, reduction):
    """Batches weighted three ways (per class, per element, not at all), with
    pos_weight, label smoothing, ignored and NaN-omitted elements."""
    n, c = 600, 3
    x = rng.standard_normal((n, c, 2)) * 2
    y = (rng.random((n, c, 2)) < np.array([0.2, 0.5, 0.7])[:, None]).astype(np.float64)
    y[rng.random(y.shape) < 0.05] = -1
    x[rng.random(x.shape) < 0.03] = np.nan
    w = np.ones(y.shape)
    w[:200] = np.array([0.5, 2.0, 1.5])[:, None]
    w[200:400] = rng.uniform(0, 3, (200, c, 2))
    pw, base_w = np.array([3.0, 0.25, 1.0]), np.array([1.0, 1.0, 2.0])
    acc = BCEAccumulator(c, pos_weight=pw, weight=base_w, ignore_value=-1,
                         label_smoothing=0.1, nan_policy="omit")
    acc.update(x[:200], y[:200], np.array([0.5, 2.0, 1.5])[:, None])
    acc.update(x[200:400], y[200:400], w[200:400])
    acc.update(x[400:], y[400:])
    res = acc.compute(reduction)
    keep = (y != -1) & ~np.isnan(x)
    for i in range(c):
        want = ref.rate_prediction_loss(y[:, i], w[:, i] * base_w[i], pw[i], 0.1, keep[:, i],
                                        reduction)
        assert res.prior_loss[i] == pytest.approx(want, rel=1e-9)


def test_prior_of_a_class_with_one_kind_of_target_under_smoothing_is_finite():
    """With smoothing the targets the loss sees are never all 1 (or all 0): the rate to
    predict is theirs, and its loss is the entropy of the smoothed labels."""
    y = np.zeros((8, 2))
    y[:, 0] = 1.0  # class 0: only positives; class 1: only negatives
    res = BCEAccumulator(2, label_smoothing=0.2).update(np.zeros((8, 2)), y).compute()
    entropy = -(0.9 * np.log(0.9) + 0.1 * np.log(0.1))
    np.testing.assert_allclose(res.prior_loss, [entropy, entropy], rtol=1e-14)
