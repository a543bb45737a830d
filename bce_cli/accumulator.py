"""The mergeable accumulator: per-class float64 sums with update, merge, compute.

One-shot calls, streaming over record batches, threads, the GPU and a
distributed engine all reduce to "update partial state, merge, compute":
the state is a ``(N_ACC_STATS, C)`` float64 array, one row per
:class:`~bce_cli.stats.Stat`, and ``merge`` is addition.  As in torcheval,
``reset`` empties the state and ``state_dict`` / ``load_state_dict`` carry it
between processes: plain NumPy arrays and JSON-safe metadata.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from ._device import is_device_array, resolve, to_host
from ._dispatch import LossOptions, as_weight, class_stats
from ._tiers import JobTier
from .choices import NanPolicy, Reduction, check
from .errors import BCEInputError, printable
from .functional import pos_weight_from_counts
from .stats import (
    CORRECT,
    COUNT,
    LOSS,
    N_ACC_STATS,
    N_STATS,
    NEG,
    OUT_NONE,
    OUT_WITH_STATS,
    POS,
    STAT_NAMES,
    WNEG,
    WPOS,
)
from .uncertainty import check_confidence, intervals, standard_errors

STATE_FORMAT = 2  # the version of state_dict()'s layout (2: the row moments)


@dataclass
class BCEResult:
    """What :meth:`BCEAccumulator.compute` returns; per-class arrays have shape (C,)."""

    reduction: str
    loss: float                 # overall: sum / n_elements (mean) or the sum
    class_loss: np.ndarray      # per class: sum / count (mean, none) or the sum
    loss_sum: np.ndarray        # per class: sum of weighted element losses
    count: np.ndarray           # per class: elements that took part
    n_pos: np.ndarray           # per class: sum of targets
    n_neg: np.ndarray           # per class: sum of (1 - target)
    accuracy: np.ndarray        # per class: share with (logit > 0) == (target >= 0.5)
    suggested_pos_weight: np.ndarray  # n_neg / n_pos (NaN without positives)
    n_elements: int = field(default=0)
    # per class: the loss of always predicting the positive rate under the same
    # weights, pos_weight and label smoothing, reduced like class_loss (see prior_loss)
    prior_loss: np.ndarray | None = None
    # standard errors with rows as the units (bce_cli.uncertainty; NaN below 2 rows)
    # and the intervals at ``confidence``: (low, high) overall, (2, C) per class
    loss_se: float = float("nan")
    class_loss_se: np.ndarray | None = None
    confidence: float = 0.95
    loss_ci: tuple[float, float] = (float("nan"), float("nan"))
    class_loss_ci: np.ndarray | None = None
    n_rows: int = 0

    @cached_property
    def positive_rate(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.n_pos / (self.n_pos + self.n_neg)


class BCEAccumulator:
    """Streaming BCE-with-logits over batches shaped ``(n, C)`` or ``(n, C, ...)``.

    Classes lie on axis 1 (a 1-D batch is one class).  ``pos_weight`` and
    ``weight`` given here are per-class vectors (or scalars); ``update`` also
    takes a per-batch ``weight`` broadcastable to the batch.  ``device``: "cpu",
    "cuda" (an NVIDIA GPU: host batches are streamed to it, device arrays read in
    place) or "auto"; a batch of device arrays is always computed on the GPU.

    >>> acc = BCEAccumulator(2)
    >>> _ = acc.update(np.array([[0.0, 2.0]]), np.array([[1, 1]]))
    >>> _ = acc.update(np.array([[0.0, 2.0]]), np.array([[1, 0]]))
    >>> r = acc.compute()
    >>> r.n_pos.tolist(), r.n_neg.tolist()
    ([2.0, 1.0], [0.0, 1.0])
    """

    def __init__(self, n_classes: int, *, pos_weight=None, weight=None, ignore_value=None,
                 label_smoothing: float = 0.0, nan_policy: str = "error",
                 device: str = "cpu"):
        if n_classes < 1:
            raise BCEInputError(f"n_classes must be at least 1, got {n_classes}")
        nan_policy = check(NanPolicy, nan_policy, "nan_policy")
        if not 0.0 <= label_smoothing <= 1.0:
            raise BCEInputError(f"label_smoothing must lie in [0, 1], got {label_smoothing}")
        self.n_classes = int(n_classes)
        self.pos_weight = self._per_class(pos_weight, "pos_weight")
        self.weight = self._per_class(weight, "weight")
        self.ignore_value = ignore_value
        self.label_smoothing = float(label_smoothing)
        self.nan_policy = nan_policy
        self.device = resolve(device)
        self.state = np.zeros((N_ACC_STATS, self.n_classes), dtype=np.float64)
        self.n_rows = 0
        # A stream of known size (the whole input's elements): the choice between
        # the NumPy and compiled tiers is made once for the job, at its first batch,
        # and kept, also by spawned accumulators and in other processes.
        self.job: JobTier | None = None
        # The calibration and ranking metrics' state (bce_cli.metrics), when asked for:
        # updated, spawned, reset and merged with this one.
        self.metrics = None

    def with_metrics(self, bins: int) -> BCEAccumulator:
        """Also keep the state of ``bce eval --metrics`` (``bins`` calibration bins);
        returns ``self``."""
        from .metrics import MetricsAccumulator

        self.metrics = MetricsAccumulator(self.n_classes, bins)
        return self

    def _per_class(self, v, name):
        if v is None:
            return None
        v = np.asarray(v, dtype=np.float64).reshape(-1)
        if v.size == 1:
            v = np.full(self.n_classes, v[0])
        if v.size != self.n_classes:
            raise BCEInputError(f"{name} has {v.size} values but there are "
                                f"{self.n_classes} classes")
        if np.isnan(v).any():
            raise BCEInputError(f"{name} contains NaN at class {int(np.argmax(np.isnan(v)))}")
        return v

    def spawn(self) -> BCEAccumulator:
        """A new, empty accumulator with the same settings (for parallel partial states)."""
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        if self.metrics is not None:
            new.metrics = self.metrics.spawn()
        return new.reset()

    def reset(self) -> BCEAccumulator:
        """Empty the state (the settings stay); returns ``self``."""
        self.state = np.zeros((N_ACC_STATS, self.n_classes), dtype=np.float64)
        self.n_rows = 0
        if self.metrics is not None:
            self.metrics.reset()
        return self

    def update(self, logits, targets, weight=None, *, return_losses: bool = False):
        """Add a batch; returns ``self``, or the per-element losses with ``return_losses``.

        Raises :class:`~bce_cli.errors.InvalidValueError` (with the element's
        index in this batch) for NaN or targets outside [0, 1]; the state is
        left unchanged then.
        """
        device = self.device
        if is_device_array(logits):  # read where it is
            from . import _cuda

            device = resolve("cuda", logits)
            x = _cuda.as_device(logits)
            y = _cuda.as_device(targets) if is_device_array(targets) else np.asarray(targets)
        else:
            x = np.asarray(logits)
            y = np.asarray(targets)
        if x.ndim == 1:
            x = x.reshape(x.shape[0], 1)
            y = y.reshape(-1, 1) if y.ndim == 1 else y
        if x.shape != y.shape:
            raise BCEInputError(f"targets of shape {y.shape} do not match logits of shape "
                                f"{x.shape}")
        if x.shape[1] != self.n_classes:
            raise BCEInputError(f"batch has {x.shape[1]} classes, expected {self.n_classes}")
        if x.shape[0] == 0:
            return None if return_losses else self
        wvec, wfull = self.weight, None
        if weight is not None:
            w = as_weight(weight)
            try:  # NumPy broadcasting against the batch, trailing axes first
                fits = w.ndim <= x.ndim and np.broadcast_shapes(w.shape, x.shape) == x.shape
            except ValueError:
                fits = False
            if not fits:
                raise BCEInputError(f"weight of shape {w.shape} does not broadcast to the batch "
                                    f"shape {x.shape}")
            if np.isnan(w).any():
                raise BCEInputError("weight contains NaN", role="weight")
            w = w.reshape((1,) * (x.ndim - w.ndim) + w.shape)
            if all(n == 1 for i, n in enumerate(w.shape) if i != 1):  # varies by class only
                wvec = np.broadcast_to(w.reshape(-1), (self.n_classes,)) * (
                    1.0 if wvec is None else wvec)
            else:
                wfull = w
        if self.metrics is not None:  # its tier first: the loss's counts on numba's start
            self.metrics.prepare(x, y)
        opts = LossOptions(weight=wvec, pos_weight=self.pos_weight, weight_full=wfull,
                           ignore=self.ignore_value, smoothing=self.label_smoothing,
                           nan_policy=self.nan_policy)
        stats, out = class_stats(x, y, 1, opts,
                                 write=OUT_WITH_STATS if return_losses else OUT_NONE,
                                 job=self.job, moments=True, device=device)
        self.state[:N_STATS] += stats[:N_STATS]
        if len(stats) > N_STATS:  # the GPU sums w*y and w*(1 - y) itself
            self.state[WPOS:] += stats[WPOS:]
        else:
            self.state[WPOS:] += self._weighted_counts(x, y, stats, wvec, wfull)
        if self.metrics is not None:  # after the loss's pass: every element is valid
            self.metrics.update(to_host(x), to_host(y), wvec,  # summed on the CPU
                                None if wfull is None else to_host(wfull),
                                ignore=self.ignore_value, nan_policy=self.nan_policy)
        self.n_rows += x.shape[0]
        if not return_losses:
            return self
        return out.reshape(tuple(logits.shape) if is_device_array(logits) else np.shape(logits))

    def _weighted_counts(self, x, y, stats, wvec, wfull):
        """Rows ``WPOS``, ``WNEG`` of a batch: the sums of w*y and w*(1 - y) over the
        elements that count.  From the kernels' counts when the weight varies by
        class only; one NumPy pass over the batch for per-element weights."""
        if wfull is None:
            w = 1.0 if wvec is None else wvec
            return np.stack([w * stats[POS], w * stats[NEG]])
        shape = (1, -1) + (1,) * (x.ndim - 2)
        w = wfull if wvec is None else wfull * wvec.reshape(shape)
        axes = (0, *range(2, x.ndim))
        if self.ignore_value is None and self.nan_policy != "omit":  # every element counts
            wb = np.broadcast_to(w, y.shape)
            ix = "abcdefghijklmnop"[:y.ndim]
            wy = np.einsum(f"{ix},{ix}->{ix[1]}", wb, y, dtype=np.float64, casting="unsafe")
            reps = np.prod([y.shape[i] for i in axes if w.shape[i] == 1], dtype=np.float64)
            total = np.broadcast_to(w.sum(axis=axes, dtype=np.float64) * reps, wy.shape)
            return np.stack([wy, total - wy])
        yf = y.astype(np.float64)
        skip = np.zeros(yf.shape, dtype=bool)
        if self.ignore_value is not None:
            skip |= yf == self.ignore_value
        if self.nan_policy == "omit":
            skip |= np.isnan(yf) | np.isnan(x)
        with np.errstate(invalid="ignore"):
            wy = np.where(skip, 0.0, w * yf).sum(axis=axes)
            wn = np.where(skip, 0.0, w * (1.0 - yf)).sum(axis=axes)
        return np.stack([wy, wn])

    def merge(self, *others: BCEAccumulator) -> BCEAccumulator:
        """Add other accumulators' state into this one (the others are unchanged).

        Their settings must be this one's: states under other options do not add up.
        """
        for other in others:
            if other.n_classes != self.n_classes:
                raise BCEInputError(f"cannot merge {other.n_classes} classes into "
                                    f"{self.n_classes}")
            self._check_options(other._settings(), "merge an accumulator")
            if (self.metrics is None) != (other.metrics is None) or (
                    self.metrics is not None and self.metrics.bins != other.metrics.bins):
                raise BCEInputError("cannot merge an accumulator with other metrics "
                                    "(--metrics, --bins) into this one")
            self.state += other.state
            if self.metrics is not None:
                self.metrics.merge(other.metrics)
            self.n_rows += other.n_rows
        return self

    def add_state(self, state, n_rows: int, metrics=None) -> BCEAccumulator:
        """Add one ``state`` array (of ``self.state``'s shape, from an accumulator with
        these settings, such as a :meth:`spawn` of this one) and its row count: a
        :meth:`merge` of the bare state, as the Dask engine's tasks return it;
        ``metrics``: that accumulator's ``metrics.state`` (with metrics kept)."""
        state = np.asarray(state, dtype=np.float64)
        if state.shape != self.state.shape:
            raise BCEInputError(f"a state of shape {state.shape} does not add to one of "
                                f"shape {self.state.shape}")
        if (metrics is None) != (self.metrics is None):
            raise BCEInputError("a state with metrics adds only to an accumulator with "
                                "metrics, and one without only to one without")
        if metrics is not None:
            self.metrics.add_state(metrics)
        self.state += state
        self.n_rows += int(n_rows)
        return self

    def _settings(self) -> dict:
        """The options that decide what the state means (vectors as arrays)."""
        return {"pos_weight": self.pos_weight, "weight": self.weight,
                "ignore_value": None if self.ignore_value is None else float(self.ignore_value),
                "label_smoothing": self.label_smoothing, "nan_policy": self.nan_policy}

    def _check_options(self, theirs: dict, action: str) -> None:
        if not isinstance(theirs, dict):
            raise BCEInputError(f"cannot {action}: its options are {_brief(theirs)}, not a "
                                "mapping of option names to values")
        for key, ours in self._settings().items():
            other = theirs.get(key)
            if isinstance(ours, np.ndarray) or isinstance(other, (list, np.ndarray)):
                try:  # vectors: equal when both are vectors of the same numbers
                    same = (ours is not None and other is not None and
                            np.array_equal(ours, np.asarray(other, dtype=np.float64)))
                except (TypeError, ValueError):
                    same = False
            else:
                same = other == ours or (other != other and ours != ours)  # NaN ignore_value
            if not same:
                raise BCEInputError(f"cannot {action} with {key} {_brief(other)} into one "
                                    f"with {key} {_brief(ours)}",
                                    hint="make both with the same options")

    def state_dict(self) -> dict:
        """The state: ``{"metadata": {...}, "state": {name: array}}``.

        ``state`` holds one float64 array of shape (C,) per statistic, named as in
        :data:`~bce_cli.stats.STAT_NAMES` (``np.savez(f, **d["state"])``); ``metadata``
        is JSON-safe (``json.dumps(d["metadata"])``): the format version, n_classes,
        n_rows and the options, which :meth:`load_state_dict` checks.

        >>> acc = BCEAccumulator(2).update(np.zeros((3, 2)), np.ones((3, 2)))
        >>> d = acc.state_dict()
        >>> d["metadata"]["n_rows"], d["state"]["count"].tolist()
        (3, [3.0, 3.0])
        >>> BCEAccumulator(2).load_state_dict(d).compute().loss == acc.compute().loss
        True
        """
        d = {
            "metadata": {"format": STATE_FORMAT, "n_classes": self.n_classes,
                         "n_rows": self.n_rows,
                         "options": {k: v.tolist() if isinstance(v, np.ndarray) else v
                                     for k, v in self._settings().items()}},
            "state": {name: self.state[i].copy() for i, name in enumerate(STAT_NAMES)},
        }
        if self.metrics is not None:  # with_metrics: the metrics' state, (C, width)
            d["metadata"]["metrics_bins"] = self.metrics.bins
            d["metrics"] = self.metrics.state.copy()
        return d

    def load_state_dict(self, state_dict: dict) -> BCEAccumulator:
        """Replace the state with one from :meth:`state_dict`; returns ``self``.

        The state must come from an accumulator with the same number of classes
        and the same options, else BCEInputError (this one is left unchanged).
        """
        try:
            meta, arrays = state_dict["metadata"], state_dict["state"]
            version, n_classes = meta["format"], meta["n_classes"]
            theirs, n_rows = meta["options"], int(meta["n_rows"])
        except (KeyError, TypeError, ValueError):
            raise BCEInputError("not an accumulator state: expected 'metadata' (format, "
                                "n_classes, n_rows, options) and 'state'") from None
        if version != STATE_FORMAT:
            raise BCEInputError(f"accumulator state of format {_brief(version)}; this version "
                                f"reads format {STATE_FORMAT}")
        if n_classes != self.n_classes:
            raise BCEInputError(f"cannot load a state of {_brief(n_classes)} classes into an "
                                f"accumulator of {self.n_classes}")
        self._check_options(theirs, "load a state")
        missing = [name for name in STAT_NAMES if name not in arrays]
        if missing:
            raise BCEInputError(f"the accumulator state lacks {', '.join(missing)}")
        state = np.empty_like(self.state)
        for i, name in enumerate(STAT_NAMES):
            row = np.asarray(arrays[name])
            if row.dtype.kind not in "fiub":  # strings, objects (None), complex numbers
                raise BCEInputError(f"the accumulator state's {name!r} holds {row.dtype} "
                                    "values, not real numbers")
            row = row.astype(np.float64)
            if row.shape != (self.n_classes,):
                raise BCEInputError(f"the accumulator state's {name!r} has shape {row.shape}, "
                                    f"expected ({self.n_classes},)")
            state[i] = row
        metrics = self._loaded_metrics(state_dict, meta)
        self.state, self.n_rows = state, n_rows
        if metrics is not None:
            self.metrics.state = metrics
        return self

    def _loaded_metrics(self, state_dict: dict, meta: dict):
        """The metrics' state of a :meth:`state_dict`, checked against this one's."""
        bins = meta.get("metrics_bins")
        mine = None if self.metrics is None else self.metrics.bins
        if bins != mine:
            raise BCEInputError(f"cannot load a state with metrics bins {_brief(bins)} into an "
                                f"accumulator with {_brief(mine)} (None: no metrics)")
        if mine is None:
            return None
        metrics = np.asarray(state_dict.get("metrics"))
        if metrics.dtype.kind not in "fiu" or metrics.shape != self.metrics.state.shape:
            raise BCEInputError(f"the accumulator state's metrics have shape {metrics.shape}, "
                                f"expected {self.metrics.state.shape}")
        return metrics.astype(np.float64)

    def compute(self, reduction: str = "mean", *, method: str = "ratio", beta: float = 0.999,
                clip_max: float | None = None, confidence: float = 0.95) -> BCEResult:
        """The losses and counts so far, with standard errors and intervals at
        ``confidence`` (rows as the units); the state is not changed."""
        reduction = check(Reduction, reduction, "reduction")
        check_confidence(confidence)
        s = self.state
        count = s[COUNT].copy()
        n_elements = int(count.sum())
        if n_elements == 0:
            raise BCEInputError("no elements to compute a loss over (empty input, or every "
                                "element ignored)")
        loss_sum = s[LOSS].copy()
        with np.errstate(invalid="ignore", divide="ignore"):
            per_class_mean = loss_sum / count
            accuracy = s[CORRECT] / count
        total = float(loss_sum.sum())
        loss = total if reduction == "sum" else total / n_elements
        class_loss = loss_sum if reduction == "sum" else per_class_mean
        class_se, se = standard_errors(s, self.n_rows, reduction)
        lo, hi = intervals(loss, se, self.n_rows, confidence)
        return BCEResult(
            reduction=reduction,
            loss=loss,
            class_loss=class_loss,
            loss_se=se,
            class_loss_se=class_se,
            confidence=confidence,
            loss_ci=(float(lo), float(hi)),
            class_loss_ci=np.stack(intervals(class_loss, class_se, self.n_rows, confidence)),
            n_rows=self.n_rows,
            loss_sum=loss_sum,
            count=count,
            n_pos=s[POS].copy(),
            n_neg=s[NEG].copy(),
            accuracy=accuracy,
            suggested_pos_weight=pos_weight_from_counts(s[POS], s[NEG],
                                                        method, beta, clip_max),
            n_elements=n_elements,
            prior_loss=prior_loss(s[WPOS], s[WNEG], self.pos_weight,
                                  self.label_smoothing, 1.0 if reduction == "sum" else count),
        )


def _brief(value) -> str:
    """A value for a message, cut short (pos_weight vectors can be long)."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    return printable(repr(value), 60)


def prior_loss(wy, wn, pos_weight, smoothing: float, norm):
    """The loss of always predicting the class's positive rate, per class, under the
    same weight, pos_weight and label smoothing, divided by ``norm``.

    The rate is that of the targets the loss sees: ``q = A / (A + B)`` with
    ``A = sum w*y'`` and ``B = sum w*(1 - y')`` (``y'`` the smoothed target; with no
    weight and no smoothing, n_pos / (n_pos + n_neg), the report's positive rate).
    Always predicting q scores ``-(p*A*log(q) + B*log(1 - q))`` with p the class's
    pos_weight; without pos_weight that is the entropy of the (smoothed) labels, and
    q the best constant.  A term whose coefficient is 0 adds 0.

    One positive and three negatives: always predicting 1/4 scores the entropy; with
    pos_weight 3, (3*log 4 + 3*log(4/3)) / 4.

    >>> float(prior_loss(np.array([1.0]), np.array([3.0]), None, 0.0, 4.0)[0])
    0.5623351446188083
    >>> float(prior_loss(np.array([1.0]), np.array([3.0]), np.array([3.0]), 0.0, 4.0)[0])
    1.2554823251787535
    """
    half = 0.5 * smoothing
    a = (1.0 - half) * wy + half * wn  # sum of w*y', from sums of w*y and w*(1 - y)
    b = half * wy + (1.0 - half) * wn
    with np.errstate(invalid="ignore", divide="ignore"):  # -log q = log1p(b / a)
        pa = a if pos_weight is None else pos_weight * a
        total = (np.where(pa == 0.0, 0.0, pa * np.log1p(b / a))
                 + np.where(b == 0.0, 0.0, b * np.log1p(a / b)))
        return total / norm
