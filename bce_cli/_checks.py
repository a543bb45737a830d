"""The one description of invalid targets (and NaN logits), and of the elements left
out of every sum (:func:`left_out`).

The kernels validate as they go (the fast path) and only say *that* an element
is invalid; :func:`check_targets` finds the first one and says which, where and
what to do, for every caller: the loss functions, the accumulator, the gradient
and ``bce suggest-pos-weight``.
"""

from __future__ import annotations

import numpy as np

from .errors import InvalidValueError

NAN_HINT = "skip NaN elements with nan_policy='omit' (--nan-policy omit), or clean the data"
RANGE_HINT = ("targets must lie in [0, 1]; leave unlabelled elements out with "
              "ignore_value (--ignore-value)")


def check_targets(y, *, logits=None, class_axis: int | None = None, ignore=None,
                  nan_policy: str = "error", hints: bool = True) -> None:
    """Raise :class:`InvalidValueError` for the first invalid element, in C order.

    Invalid: a target outside [0, 1] and, under ``nan_policy="error"``, a NaN
    target or (``logits`` given, same shape) a NaN logit; elements whose target
    equals ``ignore`` are never invalid.  ``class_axis`` (negative counts from the
    end, None: one class) gives the error's ``class_index``.  ``hints=False``
    leaves the hint out, for a caller whose options differ from the loss's.

    >>> try:
    ...     check_targets(np.array([[0.0, 1.0], [0.5, 2.0]]), class_axis=1)
    ... except InvalidValueError as err:
    ...     print(f"{err.what}; {err.role} {err.index}, class {err.class_index}")
    target 2.0 is outside [0, 1]; targets (1, 1), class 1
    """
    y = np.asarray(y)
    if y.dtype == np.bool_ and logits is None:
        return
    yf = y if y.dtype.kind == "f" else y.astype(np.float64)
    with np.errstate(invalid="ignore"):
        bad = (yf < 0) | (yf > 1)
    if nan_policy == "error":
        bad |= np.isnan(yf)
        if logits is not None:
            bad |= np.isnan(logits)
    if ignore is not None:
        bad &= yf != ignore
    if not bad.any():
        return
    flat = int(np.argmax(bad.reshape(-1)))
    index = tuple(int(i) for i in np.unravel_index(flat, y.shape))
    value = float(yf.reshape(-1)[flat])
    if value != value:
        what, role, hint = "target is NaN", "targets", NAN_HINT
    elif logits is not None and np.isnan(np.asarray(logits).reshape(-1)[flat]):
        what, role, hint = "logit is NaN", "logits", NAN_HINT
    else:
        what, role, hint = f"target {value!r} is outside [0, 1]", "targets", RANGE_HINT
    raise InvalidValueError(what, role=role, index=index,
                            class_index=0 if class_axis is None else index[class_axis],
                            hint=hint if hints else None)


def left_out(x, y, ignore_value: float | None, nan_policy: str) -> np.ndarray | None:
    """Where an element is left out of every sum and count, as the accumulator decides:
    a target equal to ``ignore_value``; with ``nan_policy`` "omit", a NaN logit or
    target.  None when every element counts."""
    skip = None
    if ignore_value is not None:
        skip = np.asarray(y) == ignore_value
    if nan_policy == "omit":
        nan = isnan(x) | isnan(y)
        skip = nan if skip is None else skip | nan
    return skip


def isnan(a) -> np.ndarray:
    """np.isnan of any numeric array (False for bool and integer ones)."""
    a = np.asarray(a)
    return np.isnan(a) if a.dtype.kind == "f" else np.zeros(a.shape, dtype=bool)
