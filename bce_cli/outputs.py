"""Per-element losses (``--reduction none --output PATH``), written atomically.

Batches stream into a :class:`~bce_cli._safe_write.SafeFile` (a temporary file
beside the target; a device or FIFO is written into); ``finish`` writes what
is left and syncs it, ``commit`` puts it in place, ``abort`` (a no-op after
``commit``) removes it, so a failed run never leaves a partial file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ._safe_write import SafeFile
from .errors import BCEInputError

SUFFIXES = (".npy", ".parquet", ".pq")


class LossWriter:
    """Base: the output file, written safely."""

    def __init__(self, path: str, inp):
        self.path = Path(path)
        self.inp = inp
        self.file = SafeFile(path)
        self.done = False

    @staticmethod
    def for_path(path: str, inp) -> LossWriter:
        suffix = Path(path).suffix.lower()
        if suffix == ".npy":
            return NpyLossWriter(path, inp)
        if suffix in (".parquet", ".pq"):
            return ParquetLossWriter(path, inp)
        raise BCEInputError(f"unknown output format {suffix or '(no suffix)'!r}; use .npy or "
                            ".parquet", file=path)

    def write(self, losses: np.ndarray) -> None:
        raise NotImplementedError

    def _finish(self) -> None:
        """Write what is still held back and close the format's writer."""

    def finish(self) -> None:
        """Everything written and synced, not yet in place (:meth:`commit` does that)."""
        self._finish()
        self.file.finish()

    def commit(self) -> None:
        self.finish()
        self.file.commit()
        self.done = True

    def abort(self) -> None:
        if not self.done:
            self.done = True
            try:
                self._finish()
            finally:
                self.file.abort()


class NpyLossWriter(LossWriter):
    """One array in the input's layout: (N,) for one class, (N, C), or (N, C, ...).

    Streamed to disk batch by batch when the row count is known up front and
    the batches are already in the file's element order (tables, and arrays
    with classes on axis 1); otherwise (standard input, CSV, classes on
    another axis) the losses are gathered in memory and reordered at the end.
    """

    def __init__(self, path, inp):
        super().__init__(path, inp)
        shape = getattr(inp, "array_shape", None)
        in_order = shape is None or len(shape) <= 2 or inp.class_dim == 1
        self.streaming = inp.n_rows is not None and in_order
        self.chunks = None if self.streaming else []
        self.header = False
        self.rows = 0

    def _write(self, arr: np.ndarray, shape) -> None:
        """Header (once), then raw bytes: unlike ``np.save``, this also works on a pipe."""
        if not self.header:
            self.header = True
            np.lib.format.write_array_header_2_0(self.file, {
                "descr": np.lib.format.dtype_to_descr(arr.dtype),
                "fortran_order": False, "shape": tuple(int(n) for n in shape)})
        self.file.write(np.ascontiguousarray(arr).data)

    def write(self, losses):
        if not self.streaming:
            self.chunks.append(np.array(losses, copy=True))
            return
        self._write(losses, self.inp.array_shape or (self.inp.n_rows, *losses.shape[1:]))
        self.rows += losses.shape[0]

    def _finish(self):
        if self.streaming:
            if self.header and not self.done and self.rows != self.inp.n_rows:
                raise BCEInputError(f"the input had {self.rows} rows, not the "
                                    f"{self.inp.n_rows} it announced", file=str(self.path))
            return
        if self.chunks is None:
            return
        chunks, self.chunks = self.chunks, None
        if self.done:
            return
        out = self.inp.to_input_layout(np.concatenate(chunks, axis=0))
        self._write(out, out.shape)


class ParquetLossWriter(LossWriter):
    """Wide layout: one loss column per class; list layout: one ``loss`` list column.

    Inputs joined with ``--on KEY`` come in PREDS's row order; the key column
    comes first, so that the losses can be joined back to anything else.
    """

    def __init__(self, path, inp):
        super().__init__(path, inp)
        self.writer = None
        self.rows = 0

    def write(self, losses):
        import pyarrow as pa
        import pyarrow.parquet as pq

        if losses.ndim != 2:
            raise BCEInputError("per-element losses of N-D arrays go to .npy, not Parquet",
                                file=str(self.path))
        columns = {}
        if self.inp.key is not None:  # joined with --on: each row keeps its key
            name, values = self.inp.key
            columns[name] = values.slice(self.rows, losses.shape[0])
        if self.inp.layout == "list":
            flat = pa.array(np.ascontiguousarray(losses).reshape(-1))
            columns["loss"] = pa.FixedSizeListArray.from_arrays(flat, losses.shape[1])
        else:
            for i, n in enumerate(self.inp.class_names):
                columns[str(n)] = losses[:, i]
        table = pa.table(columns)
        self.rows += losses.shape[0]
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.file.fh, table.schema)
        self.writer.write_table(table)

    def _finish(self):
        if self.writer is not None:
            self.writer.close()
            self.writer = None
