"""Standard errors and confidence intervals of losses, with rows as the units.

Rows (axis 0) are the independent units: the elements of one row (its
classes, the pixels of one image) are not assumed independent.  For row
``r`` and class ``c`` let ``a[r, c]`` be the sum of the row's weighted element
losses in that class and ``n[r, c]`` the number of its elements that count;
``A[r]``, ``N[r]`` their sums over classes.  A mean loss ``sum(a) / sum(n)`` is
a ratio estimator: its standard error (linearised, as for cluster samples) is

    se^2 = R / (R - 1) * sum_r (a_r - L * n_r)^2 / (sum_r n_r)^2

with ``L`` the loss and ``R`` the number of rows; a summed loss ``T = sum(a)``
has ``se^2 = R / (R - 1) * sum_r (a_r - T / R)^2``.  Both need only the sums of
``a^2``, ``a*n`` and ``n^2`` over rows next to the plain sums, so the state
stays a set of sums that streaming, threads and Dask add up
(:func:`row_moments`; the rows of :class:`bce_cli.stats.Stat`).  Intervals
are ``loss +- t * se`` with Student's t quantile on ``R - 1`` degrees of
freedom (computed here: no SciPy at run time).
"""

from __future__ import annotations

import math

import numpy as np

from .errors import BCEInputError
from .stats import COUNT, LOSS, NSQ, RNSQ, RSQ, RSQN, SQ, SQN

ROW_STATS = (SQ, SQN, NSQ, RSQ, RSQN, RNSQ)


def row_moments(a, n) -> np.ndarray:
    """The rows ``SQ, SQN, NSQ, RSQ, RSQN, RNSQ`` (shape ``(6, C)``) from per-row,
    per-class loss sums ``a`` of shape ``(R, C)`` and counts ``n`` of the same shape.

    The per-class rows are sums over rows of ``a^2``, ``a*n``, ``n^2``; the overall
    ones (``RSQ``: sum over rows of ``A^2``; ``RSQN``: of ``A*N``; ``RNSQ``: of
    ``N^2``) are kept in the first class's column, the others 0.

    >>> row_moments(np.array([[1.0, 2.0], [3.0, 0.0]]), np.ones((2, 2))).tolist()
    [[10.0, 4.0], [4.0, 2.0], [2.0, 2.0], [18.0, 0.0], [12.0, 0.0], [8.0, 0.0]]
    """
    a = np.asarray(a, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    out = np.zeros((len(ROW_STATS), a.shape[1]))
    with np.errstate(over="ignore", invalid="ignore"):  # huge losses give inf, as in sums
        row_a, row_n = a.sum(axis=1), n.sum(axis=1)
        out[0] = np.einsum("rc,rc->c", a, a)
        out[1] = np.einsum("rc,rc->c", a, n)
        out[2] = np.einsum("rc,rc->c", n, n)
        # products summed by NumPy, not BLAS (``@``): OpenBLAS's sums depend on its
        # thread count, these do not
        out[3, 0] = (row_a * row_a).sum()
        out[4, 0] = (row_a * row_n).sum()
        out[5, 0] = (row_n * row_n).sum()
    return out


def _residual(s_a, s_n, s_aa, s_an, s_nn):
    """sum over rows of (a - L n)^2, L = s_a / s_n, from the sums (never below 0)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        loss = s_a / s_n
        return np.maximum(s_aa - 2.0 * loss * s_an + loss * loss * s_nn, 0.0)


def standard_errors(state: np.ndarray, n_rows: int, reduction: str):
    """``(per-class se (C,), overall se)`` from an accumulator state; NaN with fewer
    than two rows (nothing to estimate a spread from) or a loss that is not finite."""
    cls = overall_standard_errors(state[LOSS], state[COUNT], state[SQ], state[SQN],
                                  state[NSQ], n_rows, reduction)
    total = overall_standard_errors(state[LOSS].sum(), state[COUNT].sum(), state[RSQ].sum(),
                                    state[RSQN].sum(), state[RNSQ].sum(), n_rows, reduction)
    return cls, float(total)


def overall_standard_errors(t_a, t_n, rsq, rsqn, rnsq, n_rows, reduction: str):
    """The standard error of a loss from its sums (loss sum ``t_a``, count ``t_n``, and
    over rows the sums of squared loss sums, of loss sum times count and of squared
    counts) and row count, elementwise over arrays of them (the classes, the groups of
    ``bce eval --by``); NaN with fewer than two rows or a loss that is not finite."""
    t_a, t_n, rsq, rsqn, rnsq, r = (np.asarray(v, dtype=np.float64)
                                    for v in (t_a, t_n, rsq, rsqn, rnsq, n_rows))
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        factor = r / (r - 1.0)
        if reduction == "sum":
            total = np.maximum(rsq - t_a * t_a / r, 0.0) * factor
        else:
            total = _residual(t_a, t_n, rsq, rsqn, rnsq) * factor / (t_n * t_n)
        return np.where(np.isfinite(t_a) & (r >= 2), np.sqrt(total), np.nan)


def check_confidence(confidence: float) -> float:
    """``confidence`` if it lies strictly between 0 and 1, else BCEInputError."""
    if not 0.0 < confidence < 1.0:  # also NaN
        raise BCEInputError(f"--confidence must lie strictly between 0 and 1, got {confidence}",
                            hint="0.95 gives 95% intervals")
    return confidence


def intervals(loss, se, n_rows: int, confidence: float):
    """``(low, high)`` arrays: ``loss -+ t * se``, t the two-sided Student quantile at
    ``confidence`` on ``n_rows - 1`` degrees of freedom (``n_rows``: one count, or
    an array of them, one per loss)."""
    if np.ndim(n_rows):  # one row count per loss (groups): one quantile per distinct count
        counts, inverse = np.unique(np.asarray(n_rows, dtype=np.int64), return_inverse=True)
        t = np.array([math.nan if n < 2 else t_quantile(0.5 + 0.5 * confidence, int(n) - 1)
                      for n in counts])[inverse.reshape(-1)].reshape(np.shape(n_rows))
    elif n_rows < 2:
        t = math.nan
    else:
        t = t_quantile(0.5 + 0.5 * confidence, n_rows - 1)
    loss = np.asarray(loss, dtype=np.float64)
    se = np.asarray(se, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        return loss - t * se, loss + t * se


# Student's t distribution, from the regularised incomplete beta function.

def _betacf(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return h


def _log_beta(a: float, b: float) -> float:
    """log B(a, b); for b = 1/2 and large a (Student's t on many degrees of freedom)
    lgamma(a + 1/2) - lgamma(a) from its asymptotic series, which keeps the digits
    that the difference of two large lgammas loses."""
    if b == 0.5 and a > 50.0:
        ratio = (0.5 * math.log(a) - 1.0 / (8.0 * a) + 1.0 / (192.0 * a ** 3)
                 - 1.0 / (640.0 * a ** 5) + 17.0 / (14336.0 * a ** 7))
        return math.lgamma(0.5) - ratio
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


def _betainc(a: float, b: float, x: float, y: float) -> float:
    """The regularised incomplete beta function I_x(a, b), given ``y = 1 - x`` computed
    without cancellation."""
    if x <= 0.0:
        return 0.0
    if y <= 0.0:
        return 1.0
    log_x = math.log1p(-y) if y < 0.5 else math.log(x)
    log_y = math.log1p(-x) if x < 0.5 else math.log(y)
    front = math.exp(a * log_x + b * log_y - _log_beta(a, b))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, y) / b


def t_sf(t: float, dof: float) -> float:
    """P(T > t) for Student's t with ``dof`` degrees of freedom.

    >>> round(t_sf(2.0, 10), 6)
    0.036694
    """
    if t != t:
        return math.nan
    if math.isinf(dof):
        return 0.5 * math.erfc(t / math.sqrt(2.0))
    tail = 0.5 * _betainc(0.5 * dof, 0.5, dof / (dof + t * t), t * t / (dof + t * t))
    return tail if t >= 0 else 1.0 - tail


def two_sided_p(t: float, dof: float) -> float:
    """The two-sided p-value of a t statistic."""
    return min(1.0, 2.0 * t_sf(abs(t), dof)) if t == t else math.nan


def _t_pdf(t: float, dof: float) -> float:
    return math.exp(math.lgamma(0.5 * (dof + 1.0)) - math.lgamma(0.5 * dof)
                    - 0.5 * math.log(dof * math.pi) - 0.5 * (dof + 1.0) * math.log1p(t * t / dof))


def _t_newton(p: float, dof: float) -> float | None:
    """Newton's method on :func:`t_sf` from the Cornish-Fisher expansion (Abramowitz and
    Stegun 26.7.5), ``p`` >= 0.5: a few t_sf calls instead of bisection's forty (a
    quantile per group of ``bce eval --by``).  None when it does not converge."""
    from statistics import NormalDist

    z = NormalDist().inv_cdf(p)
    z2 = z * z
    g1 = (z2 + 1.0) * z / 4.0
    g2 = ((5.0 * z2 + 16.0) * z2 + 3.0) * z / 96.0
    g3 = (((3.0 * z2 + 19.0) * z2 + 17.0) * z2 - 15.0) * z / 384.0
    g4 = ((((79.0 * z2 + 776.0) * z2 + 1482.0) * z2 - 1920.0) * z2 - 945.0) * z / 92160.0
    t = z + (g1 + (g2 + (g3 + g4 / dof) / dof) / dof) / dof
    q = 1.0 - p
    for _ in range(30):
        pdf = _t_pdf(t, dof)
        if not (t >= 0.0 and pdf > 0.0 and math.isfinite(t)):
            return None
        step = (t_sf(t, dof) - q) / pdf
        t += step
        if abs(step) <= 1e-13 * max(1.0, abs(t)):
            return t if t >= 0.0 else None
    return None


def t_quantile(p: float, dof: float) -> float:
    """The ``p`` quantile of Student's t with ``dof`` degrees of freedom (Newton's
    method from the Cornish-Fisher expansion, else bisection on :func:`t_sf` to 1e-12;
    exact forms for 1 and 2 degrees of freedom).

    >>> round(t_quantile(0.975, 10), 6), round(t_quantile(0.975, 1e9), 6)
    (2.228139, 1.959964)
    """
    if not 0.0 < p < 1.0:
        raise ValueError(f"a quantile needs 0 < p < 1, got {p}")
    if p < 0.5:
        return -t_quantile(1.0 - p, dof)
    if dof == 1:
        return math.tan(math.pi * (p - 0.5))
    if dof == 2:
        return (2.0 * p - 1.0) / math.sqrt(2.0 * p * (1.0 - p))
    t = _t_newton(p, dof)
    if t is not None:
        return t
    q = 1.0 - p
    lo, hi = 0.0, 1.0
    while t_sf(hi, dof) > q:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_sf(mid, dof) > q:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)
