"""The opened inputs (:class:`Inputs`): aligned batches, and every row, class and element
placed in its file for messages."""

from __future__ import annotations

import numpy as np

from bce_cli.errors import BCEInputError

from ._feeds import Role
from ._spec import Batch
from ._weights import ResolvedWeight

# Fewest elements in a batch of views (see Inputs): 16 MiB of float32.
VIEW_BATCH_ELEMENTS = 1 << 22


class Inputs:
    """Opened, validated inputs; iterate :meth:`batches` (each call reads again).

    Attributes: ``class_names`` (one per class, named after the targets),
    ``n_classes``, ``n_rows`` (None when unknown up front: CSV, remote Arrow
    streams), ``layout`` ('wide' | 'list' | 'array', the logits' layout),
    ``sources`` (files, formats and columns used, for the report).

    ``array_shape`` / ``class_dim``: for the array layout (``.npy`` / ``.npz``
    logits), the logits array's shape as stored in the file, e.g. ``(N,)``,
    ``(N, C)`` or ``(N, C, H, W)``, and the axis of that shape holding the classes
    (non-negative: ``class_dim`` as given, ``ndim + class_dim`` when negative;
    ``None`` for a 1-D array).  Batches hold ``np.moveaxis(a, class_dim, 1)``
    with the axes after the class axis flattened, C order, into ``S``:
    ``(n, C, prod(other non-row axes))``; a 1-D array gives ``(n, 1)``, a 2-D one
    ``(n, C)`` unchanged.  :meth:`to_input_layout` undoes exactly that.  For
    tables both are ``None``.  (From :func:`open_targets`, these describe the
    targets array.)
    """

    def __init__(self, spec, feeds, logits, targets: Role, weight: ResolvedWeight | None,
                 sources, closers):
        self.spec = spec
        self._feeds = feeds
        self._logits = logits  # None for open_targets
        self._targets = targets
        self._weight = weight
        self.sources = sources
        self._closers = closers
        self.class_names = targets.class_names()
        self.n_classes = targets.C
        main = logits if logits is not None else targets
        self.layout = main.layout
        self._main_file = (sources.get("preds") or sources.get("labels") or {}).get(
            "path", main.file
        )
        view = main.view if main.layout == "array" else None
        self.array_shape = None if view is None else tuple(view.h.shape)
        self.class_dim = None if view is None else view.cdim
        self._S = None if view is None else view.S
        self.n_rows = None
        for f in feeds:
            if getattr(f, "n_rows", None) is not None:
                self.n_rows = f.n_rows
                break
        self.elements_per_row = targets.C * (targets.S or 1)
        self.batch_rows = spec.batch_rows  # rows per batch
        # Whether each batch is decoded and copied (tables), not a view (.npy): the
        # read-ahead thread then keeps a core busy (bce_cli._tiers.kernel_threads).
        self.decodes = not all(f.views_only() for f in feeds)
        if spec.rows is None and feeds and not self.decodes:
            # Every batch is a view of arrays already in memory (a memory-mapped .npy):
            # a batch then holds nothing, but costs a fixed time whatever its size (a
            # 1-D .npy pair of 3e7 elements in 65536-row batches: 0.44 s, in 4M-element
            # batches 0.21 s).  So such batches hold at least VIEW_BATCH_ELEMENTS.
            self.batch_rows = max(spec.batch_rows,
                                  -(-VIEW_BATCH_ELEMENTS // self.elements_per_row))
            for f in feeds:
                f.batch_rows = self.batch_rows
        # ``(name, values)`` of the join key (``on``) in batch order, else None: a
        # per-element output keeps it so that its rows can be matched again.
        self.key = None

    def to_input_layout(self, losses):
        """Per-element values (``losses``: the per-batch ``(n, C)`` / ``(n, C, S)``
        arrays concatenated in batch order, ``(N, C)`` / ``(N, C, S)``) back in the
        input file's shape ``array_shape``: a 1-D input gives ``(N,)``; an N-D one
        has ``S`` unflattened and the class axis moved back to ``class_dim``
        (C-contiguous).  For tables (``array_shape`` None) ``losses`` comes back
        unchanged.  Raises ValueError when the shape does not fit.
        """
        if self.array_shape is None:
            return losses
        a = np.asarray(losses)
        shape = self.array_shape
        N = shape[0]
        if len(shape) == 1:
            if a.shape not in ((N, 1), (N,)):
                raise ValueError(
                    f"expected shape ({N}, 1) for an input of shape {shape}, got {a.shape}"
                )
            return a.reshape(N)
        cd = self.class_dim
        C = shape[cd]
        if len(shape) == 2:
            if a.shape != (N, C):
                raise ValueError(
                    f"expected shape ({N}, {C}) for an input of shape {shape}, got {a.shape}"
                )
            return a
        rest = tuple(s for i, s in enumerate(shape[1:], 1) if i != cd)
        if a.shape != (N, C, self._S):
            raise ValueError(
                f"expected shape ({N}, {C}, {self._S}) for an input of shape "
                f"{shape} (class_dim {cd}), got {a.shape}"
            )
        return np.ascontiguousarray(np.moveaxis(a.reshape((N, C) + rest), 1, cd))

    # -- names for messages
    def _role(self, which):
        if which == "logits" and self._logits is not None:
            return self._logits
        return self._targets

    def column_of(self, class_index: int, which: str = "targets") -> str:
        return self._role(which).shown(int(class_index))

    def locate(self, row: int, class_index: int | None = None, which: str = "targets"):
        """``(file, column, row_in_file)`` for a global row (already read) and class."""
        role = self._role(which)
        file, local = role.feed.locate(int(row))
        column = None if class_index is None else role.shown(int(class_index))
        return file, column, local

    def element_in_row(self, class_index, flat) -> list:
        """The index inside a row of the input file of batch element ``[:, class_index, flat]``.

        >>> class _I: array_shape, class_dim = (5, 2, 3, 4), 2
        >>> Inputs.element_in_row(_I(), 1, 6)
        [1, 1, 2]
        """
        cd = self.class_dim
        rest = [n for i, n in enumerate(self.array_shape) if i not in (0, cd)]
        inner = [int(i) for i in np.unravel_index(int(flat), rest)] if rest else []
        inner.insert(cd - 1, int(class_index))
        return inner

    # -- data
    def batches(self):
        """Yield :class:`Batch` objects of ``spec.batch_rows`` rows (the last shorter).

        Reading errors (corrupt pages, nulls under nan_policy 'error', ragged lists,
        row counts that turn out to differ) raise BCEInputError naming file,
        column and row.
        """
        its = [iter(f) for f in self._feeds]
        offset = start = 0 if self.spec.rows is None else self.spec.rows[0]
        S = self._targets.S
        while True:
            parts = [next(it, None) for it in its]
            if all(p is None for p in parts):
                break
            if any(p is None for p in parts):
                self._mismatch(parts, offset)
            merged = {}
            for p in parts:
                merged.update(p)
            key = merged.pop("key", None)  # --by: Arrow values, one per row
            ns = {v.shape[0] for v in merged.values()}
            if len(ns) != 1:
                self._mismatch(parts, offset, sizes=merged)
            n = ns.pop()
            logits = merged.get("logits")
            targets = merged["targets"]
            weight = None
            if self._weight is not None:
                weight = self._weight.for_batch(merged.get("weight"), n, S, offset)
            yield Batch(logits=logits, targets=targets, weight=weight, row_offset=offset,
                        key=key)
            offset += n
        if offset == start == 0:
            raise BCEInputError("the input has no rows", file=self._main_file)

    def _mismatch(self, parts, offset, sizes=None):
        desc = []
        for f, p in zip(self._feeds, parts, strict=False):
            if p is None:
                desc.append(f"{f.source_name} ends after {offset} rows")
            else:
                n = next(iter(p.values())).shape[0]
                desc.append(f"{f.source_name} has at least {offset + n} rows")
        raise BCEInputError(
            "row counts differ: " + "; ".join(desc),
            file=self._main_file,
            hint="the two files must have one row per example, in the same order "
            "(or join them with --on KEY)",
        )

    def close(self):
        close_all(self._closers)
        self._closers = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def close_all(closers):
    """Call every closer; one that fails must not mask the real error nor stop the rest."""
    for c in closers:
        try:
            c()
        except Exception:  # noqa: BLE001 - closing must not mask the real error
            pass
