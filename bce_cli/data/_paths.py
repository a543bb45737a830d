"""Where the bytes are: local paths, directories, globs, remote URIs, stdin; which format.

Format rule: the extension decides (``.parquet``/``.pq``/``.parq``, ``.arrow``/
``.feather``/``.ipc``/``.arrows``, ``.npy``, ``.npz``, ``.csv``/``.tsv``/``.txt``);
Arrow files are sniffed to tell the file format from the stream format; an
unknown extension is sniffed by magic bytes (``PAR1``, ``\\x93NUMPY``, ``ARROW1``,
``\\xff\\xff\\xff\\xff``, ``FEA1``, ``PK``); standard input is always sniffed, and
is CSV only when its first bytes are text (UTF-8 without control characters other
than tab, CR, LF); anything else is an "unrecognised format", said as soon as the
first bytes are in.  A ``.csv`` file must start as text too.  A directory or glob
is a Parquet dataset: every matching file, sorted by path, names starting with
``.`` or ``_`` skipped.

Only regular files are read by path (symbolic links followed): a FIFO, device or
socket is refused.  Every reader needs a file it can read more than once (sniffing,
schema, then data; Parquet and Arrow files need random access), so such a path
would have to be buffered whole anyway, and a FIFO nobody writes to would block
forever (``/dev/zero`` would never end).  Standard input is the one stream that is
buffered, in memory, up to :data:`STDIN_LIMIT` bytes (half the machine's memory
when None): pipe a stream there (``bce eval - < fifo``).
"""

from __future__ import annotations

import codecs
import fnmatch
import glob as _glob
import os
import stat
import sys
from dataclasses import dataclass

from bce_cli._lazy import lazy
from bce_cli.errors import BCEInputError, printable

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


# The first bytes of each format (an Arrow IPC stream starts with a continuation marker).
MAGIC = ((b"PAR1", "parquet"), (b"\x93NUMPY", "npy"), (b"ARROW1", "ipc_file"),
         (b"\xff\xff\xff\xff", "ipc_stream"), (b"FEA1", "feather_v1"), (b"PK", "npz"))


def sniff(head: bytes) -> str | None:
    """The format whose magic bytes ``head`` starts with, else None.

    >>> sniff(b"PAR1...."), sniff(b"logit,target")
    ('parquet', None)
    """
    return next((fmt for magic, fmt in MAGIC if head.startswith(magic)), None)


STDIN_LIMIT: int | None = None  # bytes of standard input held in memory; None: half the RAM
TEXT_PROBE = 1 << 16  # bytes looked at to tell text from binary
_CONTROL = set(range(32)) - {9, 10, 13}


def looks_like_text(head: bytes) -> bool:
    """Whether ``head`` (the first bytes of a file) is UTF-8 text without control
    characters other than tab, CR and LF (a character cut at the end is fine).

    >>> looks_like_text(b"logit,target\\n0.5,1\\n"), looks_like_text(b"\\x00\\x00\\x00")
    (True, False)
    """
    head = head[:TEXT_PROBE]
    if _CONTROL.intersection(head):
        return False
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        return False
    return True


def _stdin_limit() -> int:
    if STDIN_LIMIT is not None:
        return STDIN_LIMIT
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
    except (ValueError, OSError, AttributeError):
        return 4 << 30


def _size(n: int) -> str:
    return f"{n / (1 << 30):.1f} GiB" if n >= 1 << 30 else f"{n} bytes"


def read_stdin(stream) -> tuple[bytes, str]:
    """Standard input, whole, and its format.  Refused as soon as its first bytes
    show no known format, and once it grows past the limit."""
    limit = _stdin_limit()
    chunks, have, fmt = [], 0, None
    while True:
        chunk = stream.read(TEXT_PROBE if fmt is None else min(1 << 20, limit + 1 - have))
        if not chunk:
            break
        chunks.append(chunk)
        have += len(chunk)
        if fmt is None and have >= TEXT_PROBE:
            fmt = _stdin_format(b"".join(chunks))
        if have > limit:
            raise BCEInputError(
                f"standard input holds more than {_size(limit)}, the most kept in memory",
                file="<stdin>",
                hint="save it to a file and pass the file's path",
            )
    data = b"".join(chunks)
    if not data:
        raise BCEInputError("standard input is empty", file="<stdin>")
    return data, fmt or _stdin_format(data)


def _stdin_format(head: bytes) -> str:
    fmt = sniff(head[:8])
    if fmt is not None:
        return fmt
    if looks_like_text(head):
        return "csv"
    raise BCEInputError(
        "unrecognised format: not Parquet, Arrow IPC / Feather, .npy, .npz, nor CSV text",
        file="<stdin>",
    )


def check_regular(path, display) -> None:
    """Refuse a path that is not a regular file or a directory (after symbolic
    links); see the module doc for why."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return  # missing or unreadable: the caller's open says so
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return
    kind = (
        "a FIFO (named pipe)" if stat.S_ISFIFO(mode)
        else "a character device" if stat.S_ISCHR(mode)
        else "a block device" if stat.S_ISBLK(mode)
        else "a socket" if stat.S_ISSOCK(mode)
        else "a special file"
    )
    raise BCEInputError(
        f"is {kind}, not a regular file: inputs are read more than once",
        file=display,
        hint=f"pass it on standard input instead: bce eval - < {display}",
    )


def read_json(path: str, *, missing: str, unreadable: str):
    """A small JSON file (``--pos-weight``, ``--baseline``), parsed; ``missing`` and
    ``unreadable`` start the messages of its two ways to fail (exit 2)."""
    import json

    if not os.path.exists(path):
        raise BCEInputError(missing, file=path)
    check_regular(path, path)
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except RecursionError:
        raise BCEInputError(f"{unreadable}: nested too deeply", file=path) from None
    except (OSError, ValueError) as err:
        raise BCEInputError(f"{unreadable}: {printable(err)}", file=path) from None


def _ext(path: str) -> str:
    return os.path.splitext(str(path).rstrip("/"))[1].lower()


def _head(fs, path, local, display, n=8) -> bytes:
    try:
        if local:
            with open(path, "rb") as f:
                return f.read(n)
        with fs.open_input_stream(path) as f:
            return f.read(n)
    except (OSError, pa.ArrowException) as exc:
        raise BCEInputError(f"cannot open: {exc}", file=display) from None


def _format_of(fs, path, local, display, delimiter_out) -> str:
    ext = _ext(path)
    fmt = EXTENSIONS.get(ext)
    if fmt in ("parquet", "npy", "npz"):
        return fmt
    if fmt == "csv":
        delimiter_out.append("\t" if ext == ".tsv" else ",")
        if not looks_like_text(_head(fs, path, local, display, TEXT_PROBE)):
            raise BCEInputError("not a CSV file: its first bytes are not UTF-8 text",
                                file=display)
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
        data, fmt = read_stdin(stdin if stdin is not None else sys.stdin.buffer)
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
        files = _listing_filter(files)
        for f in files:
            check_regular(f, f)
        return _dataset(location, files, None, True, "")
    check_regular(location, location)
    delim = []
    fmt = _format_of(None, location, True, location, delim)
    return Resolved(location, fmt, [location], None, None, True, (delim or [","])[0])
