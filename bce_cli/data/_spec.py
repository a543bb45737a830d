"""The two small value types of the data layer: what to open, and what comes out."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class InputSpec:
    """What the user pointed ``bce eval PREDS [LABELS]`` at.

    ``preds`` / ``labels``: a path, a directory or glob of Parquet files, an
    ``s3://`` / ``gs://`` URI, or ``"-"`` for standard input.
    ``logits`` / ``targets``: comma-separated column names or glob patterns
    (for ``.npz``: an array name).  ``on``: join key when two files are given.
    ``weight``: a column name, a number, C comma-separated numbers or a ``.npy``
    file.  ``order``: memory order of the 2-D batch arrays, ``"F"`` (each
    class's column contiguous, the default) or ``"C"``; 3-D batches are always
    C-contiguous.  ``rows``: only the global rows ``[start, stop)`` are read
    (``start`` a multiple of ``batch_rows``, so the batches are the whole
    input's; the Dask engine's tasks), positions in messages stay global.
    ``by``: a column of PREDS or LABELS (a table) whose values name each row's
    group (``bce eval --by``); the batches then carry it as ``Batch.key``.
    """

    preds: str
    labels: str | None = None
    logits: str | None = None
    targets: str | None = None
    on: str | None = None
    weight: str | None = None
    class_dim: int = 1
    batch_rows: int = 65536
    nan_policy: str = "error"
    order: str = "F"
    rows: tuple[int, int] | None = None
    by: str | None = None

    def __post_init__(self):
        from bce_cli.choices import NanPolicy, check
        from bce_cli.errors import BCEInputError

        if int(self.batch_rows) < 1:
            raise BCEInputError(f"batch_rows must be at least 1, got {self.batch_rows}")
        self.batch_rows = int(self.batch_rows)
        self.nan_policy = check(NanPolicy, self.nan_policy, "nan_policy")
        if self.order not in ("C", "F"):
            raise BCEInputError(f"order must be 'C' or 'F', got {self.order!r}")
        if self.rows is not None:
            start, stop = (int(r) for r in self.rows)
            if not 0 <= start <= stop or start % self.batch_rows:
                raise BCEInputError(f"rows must be [start, stop) with start a multiple of "
                                    f"batch_rows, got {self.rows}")
            self.rows = (start, stop)


@dataclass
class Batch:
    """One slice of aligned rows.

    ``logits`` and ``targets`` have the same shape, ``(n, C)`` or ``(n, C, S)``
    (``logits`` is None in batches of :func:`open_targets`);
    ``weight`` is ``None`` or broadcasts to that shape (``(n, 1)`` per row,
    ``(1, C)`` per class, ``(1, 1)`` a constant, or the full shape; with a third
    axis, one more trailing 1).  ``row_offset`` is the global index of the
    batch's first row.  ``key``: with ``InputSpec.by``, the batch's values of that
    column as an Arrow chunked array (strings, integers, dictionary-encoded; nulls
    kept), else None.
    """

    logits: np.ndarray | None
    targets: np.ndarray
    weight: np.ndarray | None = None
    row_offset: int = 0
    key: object = None

    @property
    def n_rows(self) -> int:
        return int((self.logits if self.logits is not None else self.targets).shape[0])
