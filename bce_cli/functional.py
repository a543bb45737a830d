"""The Python API: PyTorch's ``binary_cross_entropy_with_logits`` on NumPy arrays."""

from __future__ import annotations

import math

import numpy as np

from ._checks import check_targets
from ._device import is_device_array, resolve
from ._dispatch import LossOptions, as_logits, as_weight, class_stats
from .choices import Method, Reduction, check
from .errors import BCEInputError
from .stats import LOSS, OUT_NONE, OUT_ONLY

# Above this many classes, a per-class weight vector is expanded to a full
# array instead: the per-class partials would cost more than they save.
_MAX_VECTOR_CLASSES = 1 << 16


def legacy_reduction(size_average=None, reduce=None, reduction: str = "mean") -> str:
    """PyTorch's rule: the deprecated ``size_average``/``reduce`` override ``reduction``."""
    if size_average is None and reduce is None:
        return check(Reduction, reduction, "reduction")
    size_average = True if size_average is None else size_average
    reduce = True if reduce is None else reduce
    if size_average and reduce:
        return "mean"
    return "sum" if reduce else "none"


def _check_pair(input, target):
    x = input if is_device_array(input) else np.asarray(input)
    y = target if is_device_array(target) else np.asarray(target)
    if tuple(x.shape) != tuple(y.shape):
        raise BCEInputError(f"target shape {y.shape} must be the same as input shape {x.shape}")
    if math.prod(x.shape) == 0:
        raise BCEInputError(f"input has no elements (shape {tuple(x.shape)})")
    return x, y


def _factor(value, shape, name):
    """A weight aligned to ``shape``: (array with ndim == len(shape), varying axes)."""
    a = as_weight(value)
    try:
        result = np.broadcast_shapes(a.shape, shape)
    except ValueError:
        result = None
    if result != tuple(shape):
        raise BCEInputError(f"{name} of shape {a.shape} does not broadcast to the input "
                            f"shape {tuple(shape)}")
    if np.isnan(a).any():
        raise BCEInputError(f"{name} contains NaN", role="weight")
    a = a.reshape((1,) * (len(shape) - a.ndim) + a.shape)
    return a, {i for i, n in enumerate(a.shape) if n != 1}


def _plan(shape, weight, pos_weight):
    """Choose the class axis and split weights into per-class vectors or full arrays."""
    factors = {}
    for name, value in (("weight", weight), ("pos_weight", pos_weight)):
        if value is not None:
            factors[name] = _factor(value, shape, name)
    axes = set().union(*(ax for _, ax in factors.values())) if factors else set()
    if not axes:
        return None, {n: (a.reshape(-1), None) for n, (a, _) in factors.items()}
    if len(axes) == 1:
        (k,) = axes
        if shape[k] <= _MAX_VECTOR_CLASSES:
            return k, {n: (a.reshape(-1), None) for n, (a, _) in factors.items()}
    # One pooled class: constant factors stay scalars, the others are expanded.
    return None, {n: ((a.reshape(-1), None) if not ax else (None, a))
                  for n, (a, ax) in factors.items()}


def _stats(x, y, weight, pos_weight, write, device="cpu"):
    axis, parts = _plan(tuple(x.shape), weight, pos_weight)
    wvec, wfull = parts.get("weight", (None, None))
    pvec, pfull = parts.get("pos_weight", (None, None))
    opts = LossOptions(weight=wvec, pos_weight=pvec, weight_full=wfull, pos_weight_full=pfull)
    return class_stats(x, y, axis, opts, write=write, device=resolve(device, x, y))


def bce_with_logits(input, target, weight=None, size_average=None, reduce=None,
                    reduction: str = "mean", pos_weight=None, device: str = "cpu"):
    """Binary cross-entropy with logits, exactly PyTorch's quantity.

    ``l = w * (p*y*softplus(-x) + (1-y)*softplus(x))``, reduced by ``mean``
    (sum / number of elements), ``sum`` or ``none``.  ``weight`` broadcasts to
    the input's shape, ``pos_weight`` to the target's (``[C]`` acts on the last
    axis, ``[C, 1, 1]`` per channel of ``[B, C, H, W]``).  Reductions add in
    float64; ``none`` returns an array of the input's float dtype.  ``device``:
    "cpu", "cuda" (an NVIDIA GPU; the ``[cuda]`` extra) or "auto"; device arrays
    (``__cuda_array_interface__``: CuPy, PyTorch CUDA tensors, numba) are read in
    place on the GPU, and ``none`` then returns a numba device array.

    >>> round(bce_with_logits(np.array([1.5]), np.array([1.0])), 12)
    0.201413277983
    >>> x, y = np.array([-30.0], np.float32), np.array([0.0], np.float32)
    >>> bce_with_logits(x, y, reduction="none")  # PyTorch float32 gives 0 here
    array([9.357623e-14], dtype=float32)
    """
    red = legacy_reduction(size_average, reduce, reduction)
    x, y = _check_pair(input, target)
    stats, out = _stats(x, y, weight, pos_weight, OUT_ONLY if red == "none" else OUT_NONE,
                        device)
    if red == "none":
        return out.astype(x.dtype) if x.dtype == np.float16 else out
    total = float(stats[LOSS].sum())
    return total / math.prod(x.shape) if red == "mean" else total


def bce_with_logits_grad(input, target, weight=None, size_average=None, reduce=None,
                         reduction: str = "mean", pos_weight=None):
    """Gradient of the reduced loss with respect to ``input``.

    What ``loss.backward()`` leaves in ``input.grad`` (for ``none``, the
    gradient of ``loss.sum()``): ``w * ((1-y)*sigmoid(x) - p*y*sigmoid(-x))``,
    divided by the number of elements for ``mean``.

    >>> bce_with_logits_grad(np.array([0.0]), np.array([1.0]))
    array([-0.5])
    >>> bce_with_logits_grad(np.array(0.0), np.array(1.0))  # as PyTorch: a 0-d result
    array(-0.5)
    """
    red = legacy_reduction(size_average, reduce, reduction)
    x, y = _check_pair(input, target)
    xf = as_logits(x).astype(np.float64)
    yf = y.astype(np.float64)
    check_targets(yf, logits=xf, hints=False)
    w = 1.0 if weight is None else _factor(weight, x.shape, "weight")[0]
    p = 1.0 if pos_weight is None else _factor(pos_weight, x.shape, "pos_weight")[0]
    e = np.exp(-np.abs(xf))  # never overflows
    sig_pos = np.where(xf >= 0, 1.0 / (1.0 + e), e / (1.0 + e))  # sigmoid(x)
    sig_neg = np.where(xf >= 0, e / (1.0 + e), 1.0 / (1.0 + e))  # sigmoid(-x)
    grad = w * ((1.0 - yf) * sig_pos - p * yf * sig_neg)
    if red == "mean":
        grad = grad / x.size
    out_dtype = x.dtype if x.dtype.kind == "f" else np.float64
    return np.asarray(grad, dtype=out_dtype).reshape(x.shape)  # 0-d input: a 0-d array


class BCEWithLogitsLoss:
    """Mirror of ``torch.nn.BCEWithLogitsLoss``: ``BCEWithLogitsLoss(...)(input, target)``.

    >>> loss = BCEWithLogitsLoss(pos_weight=np.array([3.0]))
    >>> round(loss(np.array([[0.0]]), np.array([[1.0]])), 6)
    2.079442
    """

    def __init__(self, weight=None, size_average=None, reduce=None, reduction: str = "mean",
                 pos_weight=None, device: str = "cpu"):
        self.weight = weight
        self.pos_weight = pos_weight
        self.reduction = legacy_reduction(size_average, reduce, reduction)
        self.device = resolve(device)

    def __call__(self, input, target):
        return bce_with_logits(input, target, weight=self.weight, reduction=self.reduction,
                               pos_weight=self.pos_weight, device=self.device)

    forward = __call__

    def grad(self, input, target):
        """Gradient of this loss with respect to ``input``."""
        return bce_with_logits_grad(input, target, weight=self.weight,
                                    reduction=self.reduction, pos_weight=self.pos_weight)

    def __repr__(self) -> str:
        return f"BCEWithLogitsLoss(reduction={self.reduction!r})"


def pos_weight_from_counts(n_pos, n_neg, method: str = "ratio", beta: float = 0.999,
                           clip_max: float | None = None) -> np.ndarray:
    """Per-class pos_weight from (fractional) class counts; NaN where n_pos == 0.

    ``ratio`` = n_neg / n_pos (PyTorch docs' rule); ``sqrt`` its square root;
    ``effective-number`` = E(n_neg) / E(n_pos) with E(n) = (1 - beta**n) / (1 - beta)
    (Cui et al., 2019), which tends to ``ratio`` as beta -> 1.
    """
    n_pos = np.asarray(n_pos, dtype=np.float64)
    n_neg = np.asarray(n_neg, dtype=np.float64)
    method = check(Method, method, "method")
    has_pos = n_pos > 0
    safe_pos = np.where(has_pos, n_pos, 1.0)
    if method == "ratio":
        pw = n_neg / safe_pos
    elif method == "sqrt":
        pw = np.sqrt(n_neg / safe_pos)
    else:
        if not 0.0 < beta < 1.0:
            raise BCEInputError(f"beta must lie in (0, 1), got {beta}")
        # (1 - beta**n) computed as -expm1(n*log(beta)): no cancellation for beta near 1.
        lb = np.log(beta)
        pw = np.expm1(n_neg * lb) / np.expm1(safe_pos * lb)
    if clip_max is not None:
        pw = np.minimum(pw, clip_max)
    return np.where(has_pos, pw, np.nan)


def suggest_pos_weight(target, method: str = "ratio", beta: float = 0.999,
                       clip_max: float | None = None) -> np.ndarray:
    """Per-class pos_weight (classes along the last axis) from the targets' counts.

    A 1-D target is one class (one value per example), as ``bce`` reads a
    1-D array.

    >>> suggest_pos_weight(np.array([[1, 0], [0, 0], [0, 1], [0, 1]]))
    array([3., 1.])
    """
    y = np.asarray(target)
    if y.size == 0:
        raise BCEInputError(f"target has no elements (shape {y.shape})")
    check_targets(y, class_axis=-1 if y.ndim > 1 else None, hints=False)
    yf = y.astype(np.float64).reshape(-1, y.shape[-1] if y.ndim > 1 else 1)
    n_pos = yf.sum(axis=0)
    n_neg = (1.0 - yf).sum(axis=0)
    return pos_weight_from_counts(n_pos, n_neg, method, beta, clip_max)
