"""Per-element losses (``--reduction none --output PATH``), written atomically.

Batches stream into a :class:`~bce_cli._safe_write.SafeFile` (a temporary file
beside the target; a device or FIFO is written into); ``finish`` writes what
is left and syncs it, ``commit`` puts it in place, ``abort`` (a no-op after
``commit``) removes it, so a failed run never leaves a partial file.
"""

from __future__ import annotations

import os
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

        from .data._convert import arrow_of

        if losses.ndim != 2:
            raise BCEInputError("per-element losses of N-D arrays go to .npy, not Parquet",
                                file=str(self.path))
        columns = {}
        if self.inp.key is not None:  # joined with --on: each row keeps its key
            name, values = self.inp.key
            columns[name] = values.slice(self.rows, losses.shape[0])
        if self.inp.layout == "list":
            flat = arrow_of(np.ascontiguousarray(losses).reshape(-1))
            columns["loss"] = pa.FixedSizeListArray.from_arrays(flat, losses.shape[1])
        else:
            for i, n in enumerate(self.inp.class_names):
                columns[str(n)] = arrow_of(losses[:, i])
        table = pa.table(columns)
        self.rows += losses.shape[0]
        if self.writer is None:
            # Losses are distinct floats: dictionary-encoding them (pyarrow's default) made
            # files 1.5x the raw size and writes 4x slower, and Snappy saves nothing on
            # them; a key column keeps both.
            key = [] if self.inp.key is None else [self.inp.key[0]]
            # (a dict names the columns to compress; Arrow leaves the others uncompressed)
            self.writer = pq.ParquetWriter(
                self.file.fh, table.schema, use_dictionary=key,
                compression={key[0]: "snappy"} if key else "none")
        self.writer.write_table(table)

    def _finish(self):
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class LossDataset:
    """``--engine dask``'s ``--output DIR``: a Parquet dataset, one file per task.

    Files are named by their first row, zero-padded to one width
    (``part-0000000.parquet``, ``part-0065536.parquet``, ...), so that sorted
    names are row order; each holds the columns a :class:`ParquetLossWriter`
    writes.  They are written (each through a :class:`SafeFile`, so a task run
    twice replaces its file whole) into a hidden temporary directory beside DIR,
    named as :mod:`bce_cli._safe_write` names temporary files; :meth:`commit`
    renames it to DIR, :meth:`abort` removes it.  DIR must be new or an empty
    directory (:func:`check_dataset_path`), and a directory the workers can write.
    """

    def __init__(self, path: str, inp):
        from ._safe_write import remove_stale, temp_path

        self.name = str(path)
        self.path = os.path.realpath(path)
        remove_stale(self.path)
        self.tmp = temp_path(self.path)
        try:
            os.mkdir(self.tmp, 0o777)  # the kernel applies the umask
        except OSError as err:
            raise BCEInputError(f"cannot write: {err.strerror or err}", file=self.name) from None
        self.parts = Parts(self.tmp, len(str(max(0, inp.n_rows - 1))))
        self.starts: list[int] = []  # the first row of every file the job writes
        self.done = False

    def finish(self) -> None:
        """Every file whole and synced, not yet in place."""
        from ._safe_write import fsync_dir, remove_entry

        wanted = {os.path.basename(self.parts.path(s)) for s in self.starts}
        try:
            entries = list(os.scandir(self.tmp))
        except OSError as err:
            raise BCEInputError(f"cannot write: {err.strerror or err}", file=self.name) from None
        for entry in entries:  # what a task killed mid-write left
            if entry.name not in wanted:
                remove_entry(entry)
        missing = [s for s in self.starts if not os.path.isfile(self.parts.path(s))]
        if missing:
            raise BCEInputError(
                f"{len(missing)} of the {len(self.starts)} files written by the workers are not "
                "in the output's directory", file=self.name,
                hint="with --engine dask, --output must be a directory that this machine and "
                "every worker see at the same path (a shared file system)")
        fsync_dir(self.tmp)

    def commit(self) -> None:
        from ._safe_write import fsync_dir

        if self.done:
            return
        self.finish()
        try:
            os.rename(self.tmp, self.path)  # over an empty directory, or nothing
        except OSError as err:
            raise BCEInputError(f"cannot write: {err.strerror or err}", file=self.name,
                                hint="--output takes a new or empty directory with "
                                "--engine dask") from None
        self.done = True
        fsync_dir(os.path.dirname(self.path))

    def abort(self) -> None:
        import shutil
        import time

        if self.done:
            return
        self.done = True
        for _ in range(5):  # a task still running elsewhere may add a file meanwhile
            shutil.rmtree(self.tmp, ignore_errors=True)
            if not os.path.lexists(self.tmp):
                return
            time.sleep(0.1)


class Parts:
    """Where the tasks of a :class:`LossDataset` write (picklable, sent to the workers)."""

    def __init__(self, folder: str, width: int):
        self.folder, self.width = folder, width

    def path(self, start: int) -> str:
        return os.path.join(self.folder, f"part-{start:0{self.width}d}.parquet")

    def write(self, start: int, inp) -> ParquetLossWriter:
        """The writer of the file of rows from ``start``: ``write`` each batch's losses,
        then ``commit`` (``abort`` on error)."""
        return ParquetLossWriter(self.path(start), inp)


def check_dataset_path(path: str, report: str | None = None) -> None:
    """Refuse, before any work, an ``--output`` that ``--engine dask`` cannot write as a
    dataset: a ``.npy`` name, a file, a directory that is not empty, a parent that is
    missing or read-only, or the ``--report`` path."""
    from ._safe_write import same_file

    if "://" in path:
        raise BCEInputError("--output to a URI is not yet supported with --engine dask",
                            file=path, hint="give a directory that this machine and the "
                            "workers share")
    if Path(path).suffix.lower() == ".npy":
        raise BCEInputError("--engine dask writes the per-element losses as a Parquet dataset "
                            "(a directory), not .npy", file=path,
                            hint="give a directory name, or use --engine local")
    if os.path.lexists(path):
        if not os.path.isdir(path):
            raise BCEInputError("exists and is not a directory; --engine dask writes the "
                                "per-element losses as a directory of Parquet files", file=path)
        try:
            empty = not os.listdir(path)
        except OSError as err:
            raise BCEInputError(f"cannot write: {err.strerror or err}", file=path) from None
        if not empty:
            raise BCEInputError("is a directory that is not empty; --engine dask writes the "
                                "losses as a new directory", file=path,
                                hint="give a new or empty directory")
    parent = os.path.dirname(os.path.realpath(path))
    if not os.path.isdir(parent):
        raise BCEInputError("the output's directory does not exist", file=path)
    if not os.access(parent, os.W_OK):
        raise BCEInputError("the output's directory is not writable", file=path)
    if report and same_file(path, report):
        raise BCEInputError("--output and --report name the same path; give each its own",
                            file=path)
