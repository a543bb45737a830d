import numpy as np
import pytest

from bce_cli import bce_with_logits

from . import reference as ref
from .edge_cases import special_logits, variants

pytestmark = pytest.mark.usefixtures("engine")  # numba kernels and NumPy path


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("target", [0.0, 1.0, 0.25])
def test_special_values(dtype, target):
    x = special_logits(dtype)
    y = np.full(x.shape, target, dtype=dtype)
    got = bce_with_logits(x, y, reduction="none")
    assert got.dtype == dtype
    want = ref.elementwise(x, y)
    with np.errstate(over="ignore"):
        np.testing.assert_allclose(got.astype(np.float64), want.astype(dtype).astype(np.float64),
                                   rtol=4 * np.finfo(dtype).eps, atol=0)


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_layout_and_dtype_variants_agree(rng, reduction):
    x = (rng.standard_normal(257) * 5).astype(np.float32)
    y = (rng.random(257) < 0.4).astype(np.float32)
    for name, xv, yv in variants(x, y):
        got = bce_with_logits(xv, yv, reduction=reduction)
        want = ref.bce(xv, yv, reduction=reduction)
        if reduction == "none":
            assert got.shape == xv.shape, name
            want = np.asarray(want).astype(got.dtype)
            np.testing.assert_allclose(got, want, rtol=4 * np.finfo(got.dtype).eps, err_msg=name)
        else:
            assert got == pytest.approx(float(want), rel=1e-12), name


def test_inputs_are_not_modified(rng):
    x = rng.standard_normal((50, 3))
    y = (rng.random((50, 3)) < 0.5).astype(float)
    x0, y0 = x.copy(), y.copy()
    bce_with_logits(x, y, pos_weight=np.ones(3), reduction="none")
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(y, y0)


def test_single_element():
    assert bce_with_logits(np.float64(0.0), np.float64(1.0)) == pytest.approx(np.log(2), rel=1e-15)
    # float32 logits use the float32-exact polynomial (relative error below 1e-10)
    assert bce_with_logits(np.float32(0.0), np.float32(1.0)) == pytest.approx(np.log(2), rel=1e-10)
    out = bce_with_logits(np.array(2.0), np.array(0.0), reduction="none")
    assert out.shape == () and float(out) == pytest.approx(float(ref.bce(2.0, 0.0)), rel=1e-15)


def test_grad_of_a_0d_input_is_a_0d_array():
    """PyTorch returns a 0-d tensor for a 0-d input; bce a 0-d ndarray of its dtype."""
    from bce_cli import bce_with_logits_grad

    for dtype in (np.float32, np.float64):
        g = bce_with_logits_grad(np.array(0.3, dtype=dtype), np.array(1.0, dtype=dtype))
        assert isinstance(g, np.ndarray) and g.shape == () and g.dtype == dtype
        want = float(ref.grad(np.array([0.3]), np.array([1.0]))[0])
        assert float(g) == pytest.approx(want, rel=1e-6)


@pytest.mark.parametrize("policy", ["error", "omit", "propagate"])
@pytest.mark.parametrize("where", ["logits", "targets"])
def test_signalling_nan_is_a_nan_without_a_warning(policy, where):
    """A bit-flipped float32 can be a signalling NaN; casting one to float64 raises
    numpy's 'invalid value' warning, which must not reach the user (warnings are
    errors in this suite)."""
    from bce_cli import BCEAccumulator, InvalidValueError

    x = np.linspace(-3, 3, 30, dtype=np.float32).reshape(10, 3)
    y = np.zeros((10, 3), np.float32)
    (x if where == "logits" else y).view(np.uint32)[3, 1] = 0x7FA00000  # quiet bit clear
    acc = BCEAccumulator(3, nan_policy=policy)
    if policy == "error":
        with pytest.raises(InvalidValueError, match="NaN"):
            acc.update(x, y)
        return
    acc.update(x, y, return_losses=True)
    r = acc.compute()
    assert np.isnan(r.class_loss[1]) == (policy == "propagate")
    assert r.count[1] == (10 if policy == "propagate" else 9)
