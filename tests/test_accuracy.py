"""Accuracy against the extended-precision reference over the whole float range."""

import math

import numpy as np
import pytest

from bce_cli import bce_with_logits

from . import reference as ref

pytestmark = pytest.mark.usefixtures("engine")  # numba kernels and NumPy path


def logit_grid(dtype):
    """+-1e-30 .. +-3e38 log-spaced, dense over +-15..+-104 where float32 exp
    under/overflows, plus zero, the extremes and infinities."""
    top = min(3e38, float(np.finfo(dtype).max))
    mags = np.concatenate([
        np.geomspace(1e-30, top, 4000),
        np.linspace(15, 104, 4000),
        np.linspace(0, 15, 1000),
        np.linspace(104, 800, 1000),
        [0.0, float(np.finfo(dtype).tiny), float(np.finfo(dtype).max), np.inf],
    ]).astype(dtype)
    mags = mags[np.isfinite(mags) | np.isinf(mags)]
    return np.concatenate([mags, -mags])


def losses(x, y, layout, pos_weight=1.0):
    """Per-element losses of 1-D ``x``, computed 1-D ("flat", the planes kernel) or
    as (n, 5) rows with a per-class pos_weight ("rows", the rows kernel).  Finite and
    infinite logits in separate calls: an infinite logit whose coefficient is 0 sends the
    whole call to the NumPy tier's careful path (see ``bce_cli.kernels.fast_loss``), and
    the kernels must meet the bounds on every finite one."""
    finite = np.isfinite(x)
    if 0 < finite.sum() < finite.size:
        got = np.empty_like(x)
        got[finite] = losses(x[finite], y[finite], layout, pos_weight)
        got[~finite] = losses(x[~finite], y[~finite], layout, pos_weight)
        return got
    if layout == "flat":
        p = None if pos_weight == 1.0 else np.array([pos_weight], x.dtype)
        return bce_with_logits(x, y, pos_weight=p, reduction="none")
    n = x.size
    pad = -n % 5
    x2 = np.concatenate([x, np.zeros(pad, x.dtype)]).reshape(-1, 5)
    y2 = np.concatenate([y, np.zeros(pad, y.dtype)]).reshape(-1, 5)
    p = np.full(5, pos_weight, x.dtype)
    return bce_with_logits(x2, y2, pos_weight=p, reduction="none").reshape(-1)[:n]


LAYOUTS = pytest.mark.parametrize("layout", ["flat", "rows"])


@LAYOUTS
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("target", [0.0, 1.0])
def test_hard_targets_within_4_ulp(dtype, target, layout):
    x = logit_grid(dtype)
    y = np.full_like(x, target)
    got = losses(x, y, layout)
    assert got.dtype == dtype
    err = ref.ulp_error(got, ref.elementwise(x, y), dtype)
    worst = int(np.argmax(err))
    print(f"\n{layout} {np.dtype(dtype).name} y={target}: worst {err.max():.3f} ulp "
          f"at x={x[worst]!r}")
    assert err.max() <= 4, (x[worst], got[worst])


@LAYOUTS
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_hard_targets_with_pos_weight_within_4_ulp(dtype, layout):
    x = logit_grid(dtype)
    y = np.tile(np.array([0.0, 1.0], dtype), x.size // 2 + 1)[: x.size]
    got = losses(x, y, layout, pos_weight=3.0)
    err = ref.ulp_error(got, ref.elementwise(x, y, pos_weight=np.array([3.0], dtype)), dtype)
    print(f"\n{layout} {np.dtype(dtype).name} pos_weight=3: worst {err.max():.3f} ulp")
    assert err.max() <= 4


@LAYOUTS
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_soft_targets_within_8_ulp_of_scale(dtype, rng, layout):
    x = logit_grid(dtype)
    x = x[np.abs(x) < np.finfo(dtype).max / 4]  # keep |x| + loss representable
    y = rng.random(x.size).astype(dtype)
    got = losses(x, y, layout).astype(np.longdouble)
    want = ref.elementwise(x, y)
    scale = np.abs(x.astype(np.longdouble)) + want
    with np.errstate(over="ignore"):
        spacing = np.spacing(scale.astype(dtype)).astype(np.longdouble)
    err = np.asarray(np.abs(got - want) / spacing, dtype=np.float64)
    print(f"\n{layout} {np.dtype(dtype).name} soft targets: worst {err.max():.3f} ulp of |x|+loss")
    assert err.max() <= 8


def test_mean_of_20_million_within_1e9_of_exact_sum(rng):
    n = 20_000_000
    x = (rng.standard_normal(n) * 4).astype(np.float32)
    y = (rng.random(n) < 0.3).astype(np.float32)
    got = bce_with_logits(x, y)
    exact = math.fsum(ref.elementwise(x, y).astype(np.float64).tolist()) / n
    assert abs(got - exact) <= 1e-9 * exact


def test_float64_soft_targets_are_exact_on_both_tiers(engine):
    """Large logits with targets near 1: y*x rounds in float64, and x - y*x would
    cancel (the NumPy tier once lost 320 ulp at x=30, y=0.999)."""
    from bce_cli import bce_with_logits

    rng = np.random.default_rng(7)
    x = np.concatenate([[30.0, 1e8, -40.0], rng.uniform(-40, 40, 20_000)])
    y = np.concatenate([[0.999, 1 - 1e-8, 1e-9], rng.uniform(0, 1, 20_000)])
    got = bce_with_logits(x, y, reduction="none")
    err = ref.ulp_error(got, ref.elementwise(x, y), np.float64)
    assert err.max() <= 2.0, (engine, float(err.max()))
