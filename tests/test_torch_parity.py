"""Parity with PyTorch itself.

Every case is collected with or without torch; without it each one skips with the
reason, so the summary counts them (``SKIPPED [N] ...: PyTorch is not installed``).
"""

import numpy as np
import pytest

from bce_cli import BCEWithLogitsLoss, bce_with_logits, bce_with_logits_grad

pytestmark = pytest.mark.usefixtures("engine")  # numba kernels and NumPy path



@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip(
        "torch", reason="PyTorch is not installed (CI installs it; pip install torch)")


@pytest.fixture(scope="module")
def F(torch):
    return torch.nn.functional

# PyTorch computes float32 elements in float32 (and can lose ~1e-7 relative to
# cancellation); we compute in float64 and round once, and reduce in float64.
TOL = {np.float32: {"rtol": 1e-5, "atol": 1e-6}, np.float64: {"rtol": 1e-12, "atol": 1e-14}}

SHAPE = (4, 3, 5, 6)  # [B, C, H, W]
BROADCASTS = {
    "none": None,
    "scalar": (),
    "last_axis[W]": (6,),
    "channel[C,1,1]": (3, 1, 1),
    "full": SHAPE,
    "batch[B,1,1,1]": (4, 1, 1, 1),
    "mixed[C,1,W]": (3, 1, 6),
}


def _data(rng, dtype, shape=SHAPE, soft=False):
    x = (rng.standard_normal(shape) * 3).astype(dtype)
    y = rng.random(shape) if soft else (rng.random(shape) < 0.3)
    return x, y.astype(dtype)


def _factor(rng, shape, dtype):
    return None if shape is None else (rng.random(shape) * 2 + 0.1).astype(dtype)


def _t(a):
    import torch

    return None if a is None else torch.from_numpy(np.ascontiguousarray(a))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("wshape", list(BROADCASTS))
@pytest.mark.parametrize("pshape", ["none", "scalar", "last_axis[W]", "channel[C,1,1]", "full"])
def test_loss_matches_torch(F, rng, dtype, reduction, wshape, pshape):
    x, y = _data(rng, dtype, soft=True)
    w = _factor(rng, BROADCASTS[wshape], dtype)
    p = _factor(rng, BROADCASTS[pshape], dtype)
    got = bce_with_logits(x, y, weight=w, pos_weight=p, reduction=reduction)
    want = F.binary_cross_entropy_with_logits(_t(x), _t(y), weight=_t(w), pos_weight=_t(p),
                                              reduction=reduction).numpy()
    if reduction == "none":
        assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_allclose(got, want, **TOL[dtype])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize(("wshape", "pshape"), [("none", "none"),
                                                ("channel[C,1,1]", "last_axis[W]"),
                                                ("full", "channel[C,1,1]")])
def test_gradient_matches_autograd(F, rng, dtype, reduction, wshape, pshape):
    x, y = _data(rng, dtype, soft=True)
    w = _factor(rng, BROADCASTS[wshape], dtype)
    p = _factor(rng, BROADCASTS[pshape], dtype)
    got = bce_with_logits_grad(x, y, weight=w, pos_weight=p, reduction=reduction)
    xt = _t(x).requires_grad_(True)
    loss = F.binary_cross_entropy_with_logits(xt, _t(y), weight=_t(w), pos_weight=_t(p),
                                              reduction=reduction)
    (loss.sum() if reduction == "none" else loss).backward()
    assert got.dtype == dtype
    np.testing.assert_allclose(got, xt.grad.numpy(), **TOL[dtype])


@pytest.mark.parametrize(("size_average", "reduce"), [(None, False), (False, None), (True, True),
                                                      (False, True), (True, False)])
def test_legacy_arguments_match_torch_module(torch, rng, size_average, reduce):
    x, y = _data(rng, np.float64, shape=(7, 3))
    with pytest.warns(UserWarning, match="deprecated"):
        mod = torch.nn.BCEWithLogitsLoss(size_average=size_average, reduce=reduce)
    want = mod(_t(x), _t(y)).numpy()
    got = BCEWithLogitsLoss(size_average=size_average, reduce=reduce)(x, y)
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_one_dimensional_and_single_element(F, rng):
    for shape in [(1,), (100_003,), (1, 1)]:
        x, y = _data(rng, np.float32, shape=shape)
        want = F.binary_cross_entropy_with_logits(_t(x), _t(y)).item()
        assert bce_with_logits(x, y) == pytest.approx(want, rel=2e-6)
