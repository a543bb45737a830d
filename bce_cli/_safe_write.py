"""Writing an output file (``--output``, ``--report``, ``suggest-pos-weight --output``) safely.

The one place that decides where an output's bytes go.  :func:`resolve_target`
sorts a path into one of three kinds:

``file``
    A regular file, or nothing yet.  The bytes go to a temporary file beside
    the target (same directory, so the rename is atomic), are fsynced, and
    :meth:`SafeFile.commit` renames it into place (then fsyncs the directory,
    best effort): readers see the old file or the whole new one, and a failed
    run leaves the old file (or none).  A symlink is followed
    (``os.path.realpath``) and its target is replaced, so the link stays a
    link.  A new file gets ``0o666 & ~umask`` (what ``open()`` would give; the
    kernel applies the umask, so it is never read); a replaced file keeps its
    permission bits.  Owner and group are those of the writing process.
``stream``
    An existing character device, FIFO or socket (``/dev/null``, a named
    pipe): opened and written into, never replaced.  "All or nothing" cannot
    hold there: a reader may already have consumed part of the data when a
    run fails.
``fd``
    ``/dev/stdout``, ``/dev/stderr``, ``/dev/fd/N``, ``/proc/self/fd/N``
    (also through a symlink): written into the process's own descriptor N (a
    duplicate of it), so the bytes land where the shell redirected it, after
    what was already written there.  Opening the path again would instead
    truncate a redirected file and write from its start, over the report
    printed on stdout.

Temporary files are named ``.{name}.{pid}.{random}.bce.tmp`` (hidden: a
directory input skips them).  A run that is killed (SIGKILL, power loss)
cannot remove its own, so every writer first removes those of its target
whose process no longer exists (``os.kill(pid, 0)``).  A pid from another PID
namespace sharing the directory (two containers, one volume) can look dead;
its writer then fails at the rename with "No such file" (exit 2) instead of
writing, never with a corrupt file.  (``O_TMPFILE`` would leave nothing
visible, but linking it over an existing file needs a visible name anyway and
some file systems lack it.)
"""

from __future__ import annotations

import os
import re
import secrets
import stat
import sys
from dataclasses import dataclass

from .errors import BCEInputError

TMP_SUFFIX = ".bce.tmp"
_NAME_KEEP = 48  # characters of the target's name kept in a temporary name (NAME_MAX is 255 bytes)
_FD_PATH = re.compile(r"^/dev/(?:(stdout)|(stderr)|fd/(\d+))$|^/proc/self/fd/(\d+)$")


@dataclass(frozen=True)
class Target:
    """Where an output's bytes go; ``kind`` is ``file``, ``stream`` or ``fd`` (module doc)."""

    kind: str
    path: str  # file: the resolved path to replace; stream: the path to open; fd: as given
    fd: int | None = None


def _fd_of(path: str) -> int | None:
    """The descriptor a ``/dev/stdout``-like path (or a chain of symlinks to one) names."""
    p = os.path.abspath(path)
    for _ in range(40):  # the kernel's own limit on a chain of links
        m = _FD_PATH.match(p)
        if m:
            return 1 if m[1] else 2 if m[2] else int(m[3] or m[4])
        try:
            link = os.readlink(p)
        except OSError:
            return None
        p = os.path.normpath(os.path.join(os.path.dirname(p), link))
    return None


def resolve_target(path: str) -> Target:
    """Sort ``path`` into a :class:`Target`, or raise BCEInputError (exit 2) if it cannot
    be written: a directory, a missing or read-only directory, a read-only device."""
    path = str(path)
    if "://" in path:  # as inputs are told from local paths (bce_cli.data._paths)
        raise BCEInputError("outputs are written to local paths; a URI is not supported",
                            file=path, hint="write a local file, then copy it where it goes")
    fd = _fd_of(path)
    if fd is not None:
        try:
            os.fstat(fd)
        except OSError:
            raise BCEInputError(f"descriptor {fd} is not open", file=path) from None
        return Target("fd", path, fd)
    try:
        st = os.stat(path)  # follows symlinks: a link to a device is a device
    except FileNotFoundError:
        st = None
    except OSError as err:
        raise BCEInputError(f"cannot write: {err.strerror or err}", file=path) from None
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise BCEInputError("is a directory, not a file to write", file=path)
    if st is not None and not stat.S_ISREG(st.st_mode):
        if not os.access(path, os.W_OK):
            raise BCEInputError("not writable", file=path)
        return Target("stream", path)
    real = os.path.realpath(path)
    parent = os.path.dirname(real)
    if not os.path.isdir(parent):
        raise BCEInputError("the output's directory does not exist", file=path)
    if not os.access(parent, os.W_OK):
        raise BCEInputError("the output's directory is not writable", file=path)
    return Target("file", real)


def same_file(a: str, b: str) -> bool:
    """Whether two paths would write (or read) the same regular file: the same resolved
    path, or, where both exist, the same inode (hard links)."""
    ra, rb = os.path.realpath(a), os.path.realpath(b)
    if ra == rb:
        return True
    try:
        return os.path.samefile(ra, rb)
    except OSError:
        return False


def _prefix(name: str) -> str:
    return f".{name[:_NAME_KEEP]}."


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, as another user
        return True
    return True


def remove_stale(path: str) -> list[str]:
    """Remove the temporary files of ``path`` left by processes that no longer exist
    (a SIGKILL, a crash); return their paths.  Best effort: errors are ignored."""
    folder, name = os.path.split(path)
    prefix = _prefix(name)
    removed = []
    try:
        entries = list(os.scandir(folder or "."))
    except OSError:
        return removed
    for entry in entries:
        if not (entry.name.startswith(prefix) and entry.name.endswith(TMP_SUFFIX)):
            continue
        middle = entry.name[len(prefix):-len(TMP_SUFFIX)].split(".")
        if len(middle) != 2 or not middle[0].isdigit() or _alive(int(middle[0])):
            continue
        if remove_entry(entry):  # a file, or a dataset's directory (--engine dask)
            removed.append(entry.path)
    return removed


def remove_entry(entry: os.DirEntry) -> bool:
    """Remove a file or a directory tree (not following links); whether it went."""
    import shutil

    try:
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path)
        else:
            os.unlink(entry.path)
    except OSError:
        return False
    return True


def temp_path(path: str) -> str:
    """A new hidden temporary name beside ``path`` (module doc)."""
    folder, name = os.path.split(path)
    return os.path.join(folder, f"{_prefix(name)}{os.getpid()}.{secrets.token_hex(4)}"
                                f"{TMP_SUFFIX}")


def fsync_dir(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse to sync a directory
        pass
    finally:
        os.close(fd)


class SafeFile:
    """A binary output being written to ``path`` (see the module doc for what each kind
    of target gets).  ``write`` the bytes (or hand ``fh`` to a writer that wants a file
    object), then ``commit``; ``abort`` (a no-op after ``commit``) closes and removes
    the temporary file.  As a context manager it aborts unless committed.

    >>> import tempfile, pathlib
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "a.json"
    >>> with SafeFile(out) as f:
    ...     f.write(b"{}\\n")
    ...     f.commit()
    >>> out.read_text()
    '{}\\n'
    """

    def __init__(self, path):
        self.name = str(path)
        self.target = resolve_target(self.name)
        self.tmp = None
        self.done = False
        try:
            self.fh = self._open()
        except OSError as err:
            raise BCEInputError(f"cannot write: {err.strerror or err}", file=self.name) from None

    def _open(self):
        t = self.target
        if t.kind == "fd":
            for stream in (sys.stdout, sys.stderr):  # what Python buffered goes first
                if stream is not None and not stream.closed:
                    stream.flush()
            return os.fdopen(os.dup(t.fd), "wb")
        if t.kind == "stream":
            return open(t.path, "wb")  # noqa: SIM115 - closed in commit / abort
        remove_stale(t.path)
        try:
            mode = stat.S_IMODE(os.stat(t.path).st_mode)
        except FileNotFoundError:
            mode = None
        tmp = temp_path(t.path)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0),
                     0o666)  # the kernel applies the umask
        self.tmp = tmp
        if mode is not None:
            os.fchmod(fd, mode)
        return os.fdopen(fd, "wb")

    def write(self, data) -> None:
        try:
            self.fh.write(data)
        except OSError as err:
            raise BCEInputError(f"cannot write: {err.strerror or err}", file=self.name) from None

    def finish(self) -> None:
        """Flush and close: every byte is on disk (fsynced), not yet in place."""
        if self.fh is None or self.fh.closed:
            return
        try:
            self.fh.flush()
            if self.tmp is not None:
                os.fsync(self.fh.fileno())
            self.fh.close()
        except OSError as err:
            raise BCEInputError(f"cannot write: {err.strerror or err}", file=self.name) from None

    def commit(self) -> None:
        """Put the file in place (rename the temporary file over the target)."""
        if self.done:
            return
        self.finish()
        if self.tmp is not None:
            try:
                os.replace(self.tmp, self.target.path)
            except OSError as err:
                raise BCEInputError(f"cannot write: {err.strerror or err}",
                                    file=self.name) from None
            self.tmp = None
            fsync_dir(os.path.dirname(self.target.path))
        self.done = True

    def abort(self) -> None:
        """Close, and remove the temporary file; nothing after :meth:`commit`."""
        self.done = True
        try:
            if self.fh is not None and not self.fh.closed:
                self.fh.close()
        except OSError:
            pass
        finally:
            if self.tmp is not None:
                try:
                    os.unlink(self.tmp)
                except FileNotFoundError:
                    pass
                self.tmp = None

    def __enter__(self) -> SafeFile:
        return self

    def __exit__(self, *exc) -> None:
        self.abort()


def write_bytes(path, data: bytes) -> None:
    """Write a whole small file (a JSON report) safely."""
    with SafeFile(path) as f:
        f.write(data)
        f.commit()


def check_outputs(outputs: dict[str, str | None], inputs: dict[str, str | None]) -> None:
    """Fail early (exit 2), before any work, for an output (``{option: path}``) that cannot
    or must not be written: a path that cannot be written, two options naming one file
    (one would silently replace the other), or one of the ``inputs`` (``{name: spec}``;
    overwriting an input is never meant, and ``--report`` over ``--baseline`` would
    compare the next run with a report that failed its gate).  Devices, FIFOs and
    ``/dev/stdout`` are written into, so two outputs may share ``/dev/null``."""
    from .errors import BCEInputError

    checked: dict[str, str] = {}
    for option, path in outputs.items():
        if path is None:
            continue
        if resolve_target(path).kind != "file":
            continue
        for other, other_path in checked.items():
            if same_file(path, other_path):
                raise BCEInputError(f"{other} and {option} name the same file; give each its "
                                    "own path", file=path)
        for name, spec in inputs.items():
            if _is_input(path, spec):
                raise BCEInputError(f"{option} would overwrite the input {name}; write it "
                                    "elsewhere", file=path)
        checked[option] = path


def _is_input(path: str, spec: str | None) -> bool:
    """Whether writing ``path`` would overwrite a local file that ``spec`` (a file, a
    directory or a glob of files; a column name or a number matches nothing) reads."""
    import glob

    if not spec or spec == "-" or "://" in spec:
        return False
    if os.path.isdir(spec):
        real, folder = os.path.realpath(path), os.path.realpath(spec)
        return os.path.isfile(real) and os.path.commonpath([real, folder]) == folder
    if os.path.exists(spec):
        return same_file(path, spec)
    if set("*?[") & set(spec):
        return any(same_file(path, f) for f in glob.glob(spec, recursive=True))
    return False
