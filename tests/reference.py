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
