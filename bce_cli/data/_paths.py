"""Where the bytes are: local paths, directories, globs, remote URIs, stdin; which format.

Format rule: the extension decides (``.parquet``/``.pq``/``.parq``, ``.arrow``/
``.feather``/``.ipc``/``.arrows``, ``.npy``, ``.npz``, ``.csv``/``.tsv``/``.txt``);
Arrow files are sniffed to tell the file format from the stream format; an
unknown extension is sniffed by magic bytes (``PAR1``, ``\\x93NUMPY``, ``ARROW1``,
``\\xff\\xff\\xff\\xff``, ``FEA1``, ``PK``); standard input is always sniffed, and
falls back to CSV.  A directory or glob is a Parquet dataset: every matching
file, sorted by path, names starting with ``.`` or ``_`` skipped.
"""

from __future__ import annotations

import fnmatch
import glob as _glob
import os
import sys
from dataclasses import dataclass

from bce_cli._lazy import lazy
from bce_cli.errors import BCEInputError

pa = lazy("pyarrow")  # local files are found and sniffed without pyarrow
pafs = lazy("pyarrow.fs")

EXTENSIONS = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".parq": "parquet",
    ".arrow": "arrow",
    ".feather": "arrow",
    ".ipc": "arrow",
    ".arrows": "arrow",
    ".npy": "npy",
    ".npz": "npz",
    ".csv": "csv",
    ".tsv": "csv",
    ".txt": "csv",
}
KNOWN = ".parquet, .pq, .arrow, .feather, .ipc, .npy, .npz, .csv, .tsv"
_GLOB_CHARS = set("*?[")


@dataclass
class Resolved:
    """One resolved input: a format and the file(s) holding it."""

    display: str  # what the user typed
    fmt: str  # parquet | ipc_file | ipc_stream | feather_v1 | npy | npz | csv
    files: list  # paths inside ``fs`` (several only for a Parquet dataset)
    fs: pafs.FileSystem | None = None
    buffer: pa.Buffer | None = None  # standard input, held in memory
    local: bool = True
    delimiter: str = ","
    uri_prefix: str = ""  # "s3://" etc., to show remote paths as the user wrote them

    def show(self, path) -> str:
        """The name of one file as shown in messages."""
        if self.buffer is not None:
            return "<stdin>"
        return f"{self.uri_prefix}{path}" if self.uri_prefix else str(path)

    def open_random(self, path):
        """A random-access Arrow file for ``path``.

        Local files are read, not memory-mapped: mapped pages would count in the
        process's resident memory as the whole file is scanned.
        """
        if self.buffer is not None:
            return pa.BufferReader(self.buffer)
        if self.local:
            return pa.OSFile(path, "r")
        return self.fs.open_input_file(path)

    def open_stream(self, path):
        if self.buffer is not None:
            return pa.BufferReader(self.buffer)
        if self.local:
            return pa.OSFile(path, "r")
        return self.fs.open_input_stream(path)

    def read_bytes(self, path) -> bytes:
        with self.open_stream(path) as f:
            return f.read()


def sniff(head: bytes) -> str | None:
    if head[:4] == b"PAR1":
        return "parquet"
    if head[:6] == b"\x93NUMPY":
        return "npy"
    if head[:6] == b"ARROW1":
        return "ipc_file"
    if head[:4] == b"\xff\xff\xff\xff":
        return "ipc_stream"
    if head[:4] == b"FEA1":
        return "feather_v1"
    if head[:2] == b"PK":
        return "npz"
    return None


def _ext(path: str) -> str:
    return os.path.splitext(str(path).rstrip("/"))[1].lower()


def _head(fs, path, local, display) -> bytes:
    try:
        if local:
            with open(path, "rb") as f:
                return f.read(8)
        with fs.open_input_stream(path) as f:
            return f.read(8)
    except (OSError, pa.ArrowException) as exc:
        raise BCEInputError(f"cannot open: {exc}", file=display) from None


def _format_of(fs, path, local, display, delimiter_out) -> str:
    ext = _ext(path)
    fmt = EXTENSIONS.get(ext)
    if fmt in ("parquet", "npy", "npz"):
        return fmt
    if fmt == "csv":
        delimiter_out.append("\t" if ext == ".tsv" else ",")
        return fmt
    head = _head(fs, path, local, display)
    found = sniff(head)
    if fmt == "arrow":
        if found in ("ipc_file", "ipc_stream", "feather_v1"):
            return found
        if len(head) == 0:
            raise BCEInputError("the file is empty", file=display)
        raise BCEInputError(
            "not an Arrow IPC / Feather file (bad magic bytes); the file may be corrupt",
            file=display,
        )
    if found is None:
        if len(head) == 0:
            raise BCEInputError("the file is empty", file=display)
        raise BCEInputError(
            f"unknown format (extension {ext or 'none'!r}, no known magic bytes)",
            file=display,
            hint=f"use one of {KNOWN}",
        )
    return found


def _listing_filter(paths):
    keep = []
    for p in paths:
        parts = str(p).replace("\\", "/").split("/")
        if any(x.startswith((".", "_")) for x in parts[-1:]):
            continue
        keep.append(p)
    return sorted(keep)


def _dataset(res_display, files, fs, local, prefix) -> Resolved:
    files = _listing_filter(files)
    if not files:
        raise BCEInputError("no data files found", file=res_display)
    if len(files) == 1:
        delim = []
        fmt = _format_of(fs, files[0], local, prefix + files[0] if prefix else files[0], delim)
        return Resolved(res_display, fmt, files, fs, None, local, (delim or [","])[0], prefix)
    for f in files:
        if _ext(f) not in (".parquet", ".pq", ".parq"):
            head = _head(fs, f, local, prefix + f)
            if sniff(head) != "parquet":
                raise BCEInputError(
                    "a directory or glob must hold Parquet files only",
                    file=prefix + f if prefix else f,
                )
    return Resolved(res_display, "parquet", files, fs, None, local, ",", prefix)


def resolve(location: str, *, stdin=None) -> Resolved:
    """Resolve what the user typed into a :class:`Resolved`; raises BCEInputError."""
    location = str(location)
    if location == "-":
        stream = stdin if stdin is not None else sys.stdin.buffer
        data = stream.read()
        if not data:
            raise BCEInputError("standard input is empty", file="<stdin>")
        fmt = sniff(data[:8]) or "csv"
        if fmt == "npz":
            fmt = "npz"
        return Resolved("<stdin>", fmt, ["<stdin>"], None, pa.py_buffer(data), True)

    if "://" in location:
        scheme = location.split("://", 1)[0]
        try:
            fs, path = pafs.FileSystem.from_uri(location)
        except (pa.ArrowException, OSError, ValueError) as exc:
            raise BCEInputError(f"cannot open: {exc}", file=location) from None
        prefix = scheme + "://"
        local = isinstance(fs, pafs.LocalFileSystem)
        if local:
            prefix = ""
        if _GLOB_CHARS & set(path):
            parts = path.split("/")
            base = []
            for p in parts:
                if _GLOB_CHARS & set(p):
                    break
                base.append(p)
            base_dir = "/".join(base) or "/"
            try:
                infos = fs.get_file_info(pafs.FileSelector(base_dir, recursive=True))
            except (pa.ArrowException, OSError) as exc:
                raise BCEInputError(f"cannot list: {exc}", file=location) from None
            files = [
                i.path
                for i in infos
                if i.type == pafs.FileType.File and fnmatch.fnmatchcase(i.path, path)
            ]
            if not files:
                raise BCEInputError("no file matches this pattern", file=location)
            return _dataset(location, files, fs, local, prefix)
        try:
            info = fs.get_file_info(path)
        except (pa.ArrowException, OSError) as exc:
            raise BCEInputError(f"cannot open: {exc}", file=location) from None
        if info.type == pafs.FileType.NotFound:
            raise BCEInputError("no such file or directory", file=location)
        if info.type == pafs.FileType.Directory:
            try:
                infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
            except (pa.ArrowException, OSError) as exc:
                raise BCEInputError(f"cannot list: {exc}", file=location) from None
            files = [i.path for i in infos if i.type == pafs.FileType.File]
            return _dataset(location, files, fs, local, prefix)
        delim = []
        fmt = _format_of(fs, path, local, location, delim)
        return Resolved(location, fmt, [path], fs, None, local, (delim or [","])[0], prefix)

    # local path
    if _GLOB_CHARS & set(location) and not os.path.exists(location):
        files = [p for p in _glob.glob(location, recursive=True) if os.path.isfile(p)]
        if not files:
            raise BCEInputError("no file matches this pattern", file=location)
        return _dataset(location, files, None, True, "")
    if not os.path.exists(location):
        raise BCEInputError("no such file or directory", file=location)
    if os.path.isdir(location):
        files = []
        for root, dirs, names in os.walk(location):
            dirs[:] = [d for d in dirs if not d.startswith((".", "_"))]
            files.extend(os.path.join(root, n) for n in names)
        return _dataset(location, files, None, True, "")
    delim = []
    fmt = _format_of(None, location, True, location, delim)
    return Resolved(location, fmt, [location], None, None, True, (delim or [","])[0])
