"""NumPy inputs: ``.npy`` (memory-mapped) and ``.npz`` (streamed from the zip member).

``.npy`` files are always opened with ``np.load(mmap_mode="r", allow_pickle=False)``
(read whole into memory only from standard input or a remote store); a pickled or
object array is refused.  ``.npz`` members are read row block by row block from the
(possibly deflated) zip stream, so memory stays bounded too; a Fortran-ordered
member, or a header version this reader does not know, is loaded whole.

Which ``.npz`` arrays are used: the names given with ``logits`` / ``targets``;
otherwise ``logits`` (or ``logit``, ``preds``, ``predictions``, ``y_pred``,
``scores``, ``outputs``) and ``targets`` (or ``target``, ``labels``, ``label``,
``y_true``, ``y``); otherwise, when the archive holds exactly two arrays, the
first (in archive order, e.g. ``np.savez(f, logits, targets)``) holds the logits
and the second the targets; when an archive is given as one of two files and
holds a single array, that array is used.

Shapes: 1-D ``(N,)`` is one class, 2-D ``(N, C)``, N-D ``(N, C, ...)`` with the
classes on ``class_dim`` (moved to axis 1, trailing axes flattened to ``S``).
"""

from __future__ import annotations

import io
import os
import tokenize
import zipfile
import zlib

import numpy as np

from bce_cli.errors import BCEInputError, printable

from ._paths import Resolved

LOGIT_NAMES = ("logits", "logit", "preds", "predictions", "y_pred", "scores", "outputs")
TARGET_NAMES = ("targets", "target", "labels", "label", "y_true", "y")


# What NumPy raises for a bad file: a header it cannot parse gives ValueError,
# SyntaxError or tokenize.TokenError (an unclosed bracket), a short file EOFError;
# zipfile adds NotImplementedError (an unknown zip version or compression method),
# RuntimeError (an encrypted member) and zlib.error (corrupt deflated data).
NPY_ERRORS = (ValueError, OSError, EOFError, TypeError, SyntaxError, tokenize.TokenError,
              zipfile.BadZipFile, NotImplementedError, RuntimeError, zlib.error)


def load_error(exc, file):
    if isinstance(exc, (SyntaxError, tokenize.TokenError)):
        return BCEInputError("the .npy header is malformed (its dict cannot be parsed): the "
                             "file is corrupt or not written by NumPy", file=file)
    text = str(exc)
    if "pickle" in text.lower() or "object" in text.lower():
        return BCEInputError(
            "refusing a pickled / object array (allow_pickle=False): store plain numbers",
            file=file,
        )
    return BCEInputError(f"cannot read .npy data (corrupt or truncated?): {printable(text)}",
                         file=file)


class ArrayHandle:
    """One array on disk, read in row blocks; knows its shape and dtype."""

    def __init__(self, file: str, name: str, shape, dtype):
        self.file = file
        self.name = name
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        if self.dtype.hasobject or self.dtype.kind not in "biuf":
            raise BCEInputError(
                f"array {name!r} has dtype {self.dtype}, not numbers or bool",
                file=file,
                column=name,
            )
        if len(self.shape) == 0:
            raise BCEInputError(f"array {name!r} is a scalar, not rows", file=file, column=name)
        if self.shape[0] == 0:
            raise BCEInputError("the input has no rows", file=file, column=name)

    def blocks(self, batch_rows):
        raise NotImplementedError


class MemArray(ArrayHandle):
    def __init__(self, file, name, arr):
        super().__init__(file, name, arr.shape, arr.dtype)
        self.arr = arr

    def blocks(self, batch_rows):
        n = self.shape[0]
        for a in range(0, n, batch_rows):
            yield self.arr[a : a + batch_rows]


class ZipMemberArray(ArrayHandle):
    """A C-ordered ``.npy`` member of a zip archive, streamed block by block."""

    def __init__(self, file, name, opener, shape, dtype):
        super().__init__(file, name, shape, dtype)
        self._opener = opener

    def blocks(self, batch_rows):
        row_items = int(np.prod(self.shape[1:], dtype=np.int64))
        row_bytes = row_items * self.dtype.itemsize
        n = self.shape[0]
        try:
            with self._opener() as f:
                version = np.lib.format.read_magic(f)
                _read_header(f, version)
                for a in range(0, n, batch_rows):
                    m = min(batch_rows, n - a)
                    data = f.read(m * row_bytes)
                    if len(data) != m * row_bytes:
                        bad_row = a + len(data) // max(row_bytes, 1)
                        raise BCEInputError(
                            f"array {self.name!r} is truncated: ends inside row {bad_row}",
                            file=self.file,
                            column=self.name,
                        )
                    yield np.frombuffer(data, dtype=self.dtype).reshape((m,) + self.shape[1:])
        except NPY_ERRORS as exc:
            raise BCEInputError(
                f"cannot read array {self.name!r} (corrupt or truncated?): {printable(exc)}",
                file=self.file,
                column=self.name,
            ) from None


def _read_header(f, version):
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(f)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(f)
    raise ValueError(f"npy format version {version}")


def open_npy(res: Resolved, name: str) -> ArrayHandle:
    shown = res.show(res.files[0])
    try:
        if res.buffer is not None:
            arr = np.load(io.BytesIO(res.buffer.to_pybytes()), allow_pickle=False)
        elif res.local:
            arr = np.load(res.files[0], mmap_mode="r", allow_pickle=False)
        else:
            arr = np.load(io.BytesIO(res.read_bytes(res.files[0])), allow_pickle=False)
    except BCEInputError:
        raise
    except NPY_ERRORS as exc:
        raise load_error(exc, shown) from None
    if not isinstance(arr, np.ndarray):
        raise BCEInputError("not a single .npy array", file=shown)
    return MemArray(shown, name, arr)


class NpzArchive:
    def __init__(self, res: Resolved):
        self.res = res
        self.file = res.show(res.files[0])
        try:
            if res.buffer is not None or not res.local:
                data = (
                    res.buffer.to_pybytes()
                    if res.buffer is not None
                    else res.read_bytes(res.files[0])
                )
                self._zip = zipfile.ZipFile(io.BytesIO(data))
            else:
                self._zip = zipfile.ZipFile(res.files[0])
            members = self._zip.namelist()
        except NPY_ERRORS as exc:
            raise BCEInputError(f"not a readable .npz archive: {printable(exc)}",
                                file=self.file) from None
        self.names = [m[:-4] if m.endswith(".npy") else m for m in members]
        self._members = dict(zip(self.names, members, strict=False))
        if not self.names:
            raise BCEInputError("the .npz archive holds no arrays", file=self.file)

    def pick(self, wanted, defaults, position, role):
        """Name of the array for ``role``: given, a default name, or by position."""
        if wanted:
            if wanted not in self._members:
                raise BCEInputError(
                    f"no array {wanted!r} for the {role}; arrays: {', '.join(self.names)}",
                    file=self.file,
                    column=wanted,
                )
            return wanted
        for d in defaults:
            if d in self._members:
                return d
        if position is not None and position < len(self.names):
            return self.names[position]
        raise BCEInputError(
            f"cannot tell which array holds the {role}; arrays: {', '.join(self.names)}",
            file=self.file,
            hint=f"name it with --{role} NAME",
        )

    def array(self, name) -> ArrayHandle:
        member = self._members[name]
        try:
            with self._zip.open(member) as f:
                version = np.lib.format.read_magic(f)
                shape, fortran, dtype = _read_header(f, version)
        except NPY_ERRORS as exc:
            raise load_error(exc, self.file).with_context(column=name) from None
        if dtype.hasobject:
            raise BCEInputError(
                "refusing a pickled / object array (allow_pickle=False): store plain numbers",
                file=self.file,
                column=name,
            )
        if fortran:
            try:
                with self._zip.open(member) as f:
                    arr = np.lib.format.read_array(f, allow_pickle=False)
            except NPY_ERRORS as exc:
                raise load_error(exc, self.file).with_context(column=name) from None
            return MemArray(self.file, name, arr)
        return ZipMemberArray(self.file, name, lambda: self._zip.open(member), shape, dtype)

    def close(self):
        self._zip.close()


def default_array_name(res: Resolved) -> str:
    if res.buffer is not None:
        return "stdin"
    return os.path.splitext(os.path.basename(str(res.files[0])))[0]


class ArrayView:
    """Normalises blocks of one handle to ``(n, C)`` or ``(n, C, S)``, native byte order."""

    def __init__(self, handle: ArrayHandle, class_dim: int, role: str):
        self.h = handle
        shape = handle.shape
        nd = len(shape)
        if nd == 1:
            self.cdim = None
            self.C, self.S = 1, None
        else:
            cd = class_dim if class_dim >= 0 else nd + class_dim
            if not 1 <= cd < nd:
                raise BCEInputError(
                    f"class_dim {class_dim} is not a valid non-row axis of an array of shape "
                    f"{shape} (axis 0 holds the rows)",
                    file=handle.file,
                    column=handle.name,
                )
            self.cdim = cd
            self.C = shape[cd]
            rest = [s for i, s in enumerate(shape[1:], 1) if i != cd]
            self.S = int(np.prod(rest, dtype=np.int64)) if nd > 2 else None
        dt = handle.dtype.newbyteorder("=")
        if role != "targets" and dt.kind in "biu":
            dt = np.dtype(np.float64)
        self.dtype = dt
        self.role = role

    def column_name(self, i):
        if self.cdim is None:
            return self.h.name
        if self.S is None:
            return f"{self.h.name}[:, {i}]"
        return f"{self.h.name}[class {i} on axis {self.cdim}]"

    def views_only(self) -> bool:
        """Whether :meth:`blocks` yields views of memory that is already there (a
        memory-mapped or in-memory array whose dtype and layout need no copy)."""
        h = self.h
        if not isinstance(h, MemArray) or h.dtype != self.dtype:  # (byte order included)
            return False
        c_order = h.arr.flags.c_contiguous
        return self.cdim is None or c_order and (self.S is None or self.cdim == 1)

    def blocks(self, batch_rows, order):
        """Batches ``(n, C)`` or ``(n, C, S)``: views of the file's own memory where its
        dtype and layout allow (a C-ordered ``.npy`` is read without a copy; the
        engine takes either memory order), else copies in ``order``."""
        for blk in self.h.blocks(batch_rows):
            n = blk.shape[0]
            same = blk.dtype == self.dtype
            if self.cdim is None:
                if same:
                    yield blk.reshape(n, 1)
                    continue
                out = np.empty((n, 1), dtype=self.dtype, order=order)
                out[:, 0] = blk
            elif self.S is None:
                if same and (blk.flags.c_contiguous or blk.flags.f_contiguous):
                    yield blk
                    continue
                out = np.empty((n, self.C), dtype=self.dtype, order=order)
                out[...] = blk
            else:
                moved = np.moveaxis(blk, self.cdim, 1)
                if same and self.cdim == 1 and blk.flags.c_contiguous:
                    yield blk.reshape(n, self.C, self.S)
                    continue
                out = np.empty((n, self.C, self.S), dtype=self.dtype)
                out.reshape(moved.shape)[...] = moved
            yield out
