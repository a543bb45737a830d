"""T(a) = log1p(exp(-a)) for a >= 0, the one transcendental of the loss."""

from __future__ import annotations

import math

from ._jit import inline


@inline()
def log1p_exp_neg(a):
    """log1p(exp(-a)) for a >= 0 in float64 (libm; exp(-a) never overflows)."""
    return math.log1p(math.exp(-a))
