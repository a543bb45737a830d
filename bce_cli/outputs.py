"""Per-element losses (``--reduction none --output PATH``), written atomically.

Batches stream into a temporary file beside the target; ``commit`` renames it
into place, ``abort`` (also called after ``commit``, as a no-op) removes it, so
a failed run never leaves a partial file.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from .errors import BCEInputError

SUFFIXES = (".npy", ".parquet", ".pq")


class LossWriter:
    """Base: the temporary file and its atomic rename."""

    def __init__(self, path: str, inp):
        self.path = Path(path)
        self.inp = inp
        parent = self.path.parent
        if not parent.is_dir():
            raise BCEInputError("the output's directory does not exist", file=path)
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=parent)
        except OSError as err:
            raise BCEInputError(f"cannot write: {err.strerror or err}", file=path) from None
        os.close(fd)
        self.tmp = Path(tmp)
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
        """Flush and close the temporary file."""

    def commit(self) -> None:
        self._finish()
        os.replace(self.tmp, self.path)
        self.done = True

    def abort(self) -> None:
        if not self.done:
            self.done = True
            try:
                self._finish()
            finally:
                self.tmp.unlink(missing_ok=True)


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
        self.fh = None
        self.rows = 0

    def write(self, losses):
        if not self.streaming:
            self.chunks.append(np.array(losses, copy=True))
            return
        if self.fh is None:
            shape = self.inp.array_shape or (self.inp.n_rows, *losses.shape[1:])
            self.fh = open(self.tmp, "wb")  # noqa: SIM115 - closed in _finish
            np.lib.format.write_array_header_2_0(self.fh, {
                "descr": np.lib.format.dtype_to_descr(losses.dtype),
                "fortran_order": False, "shape": tuple(int(n) for n in shape)})
        self.fh.write(np.ascontiguousarray(losses).tobytes())
        self.rows += losses.shape[0]

    def _finish(self):
        if self.streaming:
            if self.fh is not None:
                self.fh.close()
                self.fh = None
                if not self.done and self.rows != self.inp.n_rows:
                    raise BCEInputError(f"the input had {self.rows} rows, not the "
                                        f"{self.inp.n_rows} it announced", file=str(self.path))
            return
        if self.chunks is None:
            return
        chunks, self.chunks = self.chunks, None
        if self.done:
            return
        out = self.inp.to_input_layout(np.concatenate(chunks, axis=0))
        with open(self.tmp, "wb") as fh:
            np.save(fh, np.ascontiguousarray(out), allow_pickle=False)


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
            self.writer = pq.ParquetWriter(self.tmp, table.schema)
        self.writer.write_table(table)

    def _finish(self):
        if self.writer is not None:
            self.writer.close()
            self.writer = None
