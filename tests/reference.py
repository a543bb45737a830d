"""A slow, obviously correct reference, independent of the kernels.

Everything is computed in extended precision (``np.longdouble``: 64-bit
mantissa on x86) with ``np.logaddexp`` for softplus, then compared with what
the library returns.
"""

from __future__ import annotations

import math

import numpy as np

LD = np.longdouble


def softplus(z):
    """log(1 + exp(z)) in extended precision."""
    return np.logaddexp(LD(0), np.asarray(z, dtype=LD))


def elementwise(x, y, weight=None, pos_weight=None):
    """w * (p*y*softplus(-x) + (1-y)*softplus(x)) per element, 0 * inf taken as 0."""
    x = np.asarray(x).astype(LD)
    y = np.asarray(y).astype(LD)
    w = LD(1) if weight is None else np.asarray(weight).astype(LD)
    p = LD(1) if pos_weight is None else np.asarray(pos_weight).astype(LD)
    with np.errstate(invalid="ignore", over="ignore"):
        pos = np.where(p * y == 0, LD(0), p * y * softplus(-x))
        neg = np.where(1 - y == 0, LD(0), (1 - y) * softplus(x))
        loss = np.where(w == 0, LD(0), w * (pos + neg))
    return loss


def reduce(loss, reduction):
    if reduction == "none":
        return loss
    total = math.fsum(np.asarray(loss, dtype=np.float64).reshape(-1).tolist())
    return total / loss.size if reduction == "mean" else total


def bce(x, y, weight=None, pos_weight=None, reduction="mean"):
    return reduce(elementwise(x, y, weight, pos_weight), reduction)


def golden_min(f, lo=-60.0, hi=60.0, iters=200) -> float:
    """The minimum of a convex function of one variable, by golden-section search."""
    g = (math.sqrt(5) - 1) / 2
    a, b = lo, hi
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = f(c), f(d)
    for _ in range(iters):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = f(d)
    return min(fc, fd)


def rate_prediction_loss(y, weight, pos_weight, smoothing=0.0, keep=None, reduction="mean"):
    """The loss of always predicting the positive rate ``sum w*y' / sum w`` of the
    elements ``keep`` of ``y`` (``y'`` the smoothed targets), scored element by element
    against them with the same weights: the prior the report promises."""
    y = np.asarray(y, dtype=np.float64)
    keep = np.ones(y.shape, dtype=bool) if keep is None else keep
    w = np.broadcast_to(np.asarray(weight, dtype=np.float64), y.shape)[keep]
    ys = y[keep] * (1 - smoothing) + smoothing / 2
    rate = float((w * ys).sum() / w.sum())
    norm = 1 if reduction == "sum" else keep.sum()
    z = np.full(ys.shape, np.log(rate) - np.log1p(-rate))
    return float(elementwise(z, ys, w, pos_weight).sum()) / norm


def best_constant_loss(y, weight, pos_weight, smoothing=0.0, keep=None, reduction="mean"):
    """The lowest loss any constant logit reaches (found by search): without pos_weight
    and smoothing, the prior is exactly this."""
    y = np.asarray(y, dtype=np.float64)
    keep = np.ones(y.shape, dtype=bool) if keep is None else keep
    ys = y[keep] * (1 - smoothing) + smoothing / 2
    w = np.broadcast_to(np.asarray(weight, dtype=np.float64), y.shape)[keep]
    norm = 1 if reduction == "sum" else keep.sum()

    def loss(z):
        return float(elementwise(np.full(ys.shape, z), ys, w, pos_weight).sum()) / norm

    return golden_min(loss)


def grad(x, y, weight=None, pos_weight=None, reduction="mean"):
    """d loss / d x = w * ((1-y) * sigmoid(x) - p*y*sigmoid(-x))."""
    x = np.asarray(x).astype(LD)
    y = np.asarray(y).astype(LD)
    w = LD(1) if weight is None else np.asarray(weight).astype(LD)
    p = LD(1) if pos_weight is None else np.asarray(pos_weight).astype(LD)
    with np.errstate(over="ignore"):
        sig = 1 / (1 + np.exp(-x))
    g = w * ((1 - y) * sig - p * y * (1 - sig))
    g = np.broadcast_to(g, x.shape)
    return g / x.size if reduction == "mean" else g


def ulp_error(got, ref, dtype):
    """|got - ref| in units of the last place of ``ref`` rounded to ``dtype``."""
    got = np.asarray(got).astype(LD)
    ref = np.asarray(ref).astype(LD)
    with np.errstate(over="ignore", invalid="ignore"):
        spacing = np.spacing(np.abs(ref).astype(dtype)).astype(LD)
    # Below the smallest normal the spacing is constant: use the subnormal step.
    spacing = np.maximum(spacing, LD(np.finfo(dtype).smallest_subnormal))
    with np.errstate(over="ignore"):
        rounded = ref.astype(dtype).astype(LD)  # may overflow to inf: then inf is right
    same = (got == ref) | (got == rounded)
    with np.errstate(invalid="ignore", over="ignore"):
        err = np.where(same, LD(0), np.abs(got - ref) / spacing)
    return np.asarray(err, dtype=np.float64)
