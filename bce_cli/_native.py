"""Compiled forms as native objects: written once numba has compiled a form, loaded
by later processes without numba.

Starting numba costs a fresh process about 0.3 s (importing it, then its CPU
target) before a cached kernel runs.  So each form's entry point
(``bce_cli.kernels``) is one function of pointers and integers, compiled by
numba, with nothing that needs numba's runtime (no allocation, no exception
objects); its object code, the same bytes numba runs in the process that
compiled it, is saved as ``native.<form>.<signature>.<key>.o`` beside the other
compiled kernels (``bce_cli._cache_dirs``).  ``<key>`` hashes the kernel sources,
the CPU numba compiled for (``cpu_key``) and the numba and llvmlite versions, so
a file is valid exactly when its name is found.

Loading links the object into this process: ``bce_cli._elf`` places an x86-64
object in memory itself (well under a millisecond, nothing imported); any other
object goes to llvmlite's loader (MCJIT: 0.04 s and 50 MB for its library).
Every process, the compiling one included, runs the code loaded this way.

Only ELF objects (Linux) are written and loaded; elsewhere numba's own cache
serves (``bce_cli._jit``).  An object whose undefined symbols are not all known
here is never loaded (an unresolved symbol is a fatal error in LLVM's loader).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import platform
import sys
import threading

from . import _elf, _prebuilt
from ._cache_dirs import cache_dirs, cpu_key, source_stamp

MAGIC = b"bce-native-2\n"
# Symbols an entry point may leave undefined: libc's (LLVM lowers large copies and
# fills to calls), and numba's reference-count release, which an entry point's code
# names but never calls (its arrays own no memory: views of the caller's pointers).
LIBC_SYMBOLS = ("memset", "memcpy", "memmove")
NEVER_CALLED = ("NRT_MemInfo_call_dtor",)

_lock = threading.Lock()
_engines: list = []  # one execution engine per loaded object, kept for the process's life
_linked: list[str] = []  # symbols of the objects linked by ``_elf``
_loaded: dict[str, int] = {}  # path -> the entry point's address


@functools.cache
def supported() -> bool:
    """Whether this platform writes and loads native objects (ELF: Linux on x86-64 or
    AArch64, with llvmlite installed)."""
    if not sys.platform.startswith("linux") or platform.machine() not in ("x86_64", "aarch64"):
        return False
    try:
        import importlib.util

        return importlib.util.find_spec("llvmlite") is not None
    except (ImportError, ValueError):
        return False


def _version(package: str) -> str:
    """An installed package's version, from its ``.dist-info`` directory's name beside it
    (``importlib.metadata`` would cost a small job 10 ms of imports)."""
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return "none"
    site = os.path.dirname(next(iter(spec.submodule_search_locations)))
    try:
        for entry in os.listdir(site):
            if entry.startswith(package + "-") and entry.endswith(".dist-info"):
                return entry[len(package) + 1:-len(".dist-info")]
    except OSError:
        pass
    from importlib import metadata

    return metadata.version(package)


@functools.cache
def _key() -> str:
    text = "\0".join((source_stamp(), cpu_key(), _version("numba"), _version("llvmlite")))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def file_name(name: str) -> str:
    """The object file of ``name`` (a form's name and its signature, see ``kernels``)."""
    return f"native.{name}.{_key()}.o"


def find(name: str) -> list[str]:
    """The paths of ``name``'s object in the cache directories that hold one, in order,
    then the one shipped for this CPU (``bce_cli._prebuilt``) if there is one."""
    base = file_name(name)
    paths = [os.path.join(path, base) for path in cache_dirs()]
    shipped = _prebuilt.directory()
    if shipped is not None:
        paths.append(os.path.join(shipped, _prebuilt.file_name(name)))
    return [full for full in paths if os.path.isfile(full)]


def is_cached(form_name: str, signatures) -> bool:
    """Whether an object of ``form_name`` is cached for any of ``signatures``."""
    return supported() and any(find(f"{form_name}.{sig}") for sig in signatures)


def save(name: str, symbol: str, obj: bytes) -> str | None:
    """Write ``name``'s object into the first cache directory that can be written
    (atomically: a reader sees the whole file or none); None when none can, or
    when the object could not be loaded here.  The first line holds the entry
    point's symbol and the object's SHA-256, checked before it is loaded."""
    if not supported() or not loadable(obj):
        return None
    data = MAGIC + f"{symbol} {hashlib.sha256(obj).hexdigest()}".encode() + b"\n" + obj
    base = file_name(name)
    for path in cache_dirs():
        full = os.path.join(path, base)
        tmp = f"{full}.{os.getpid()}.{threading.get_ident()}.tmp"
        try:
            os.makedirs(path, exist_ok=True)
            with open(tmp, "wb") as fh:
                fh.write(data)
            os.replace(tmp, full)
            return full
        except OSError:  # read-only (a restored cache) or full: try the next one
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    return None


def loadable(obj: bytes) -> bool:
    """Whether every undefined symbol of ELF object ``obj`` is one this module binds."""
    try:
        missing = _elf.undefined_symbols(obj)
    except _elf.NOT_WHOLE:
        return False
    return missing <= set(LIBC_SYMBOLS) | set(NEVER_CALLED)


@functools.cache
def _externals() -> dict[str, int]:
    """The addresses an object's undefined symbols are bound to."""
    import ctypes

    libc = ctypes.CDLL(None)
    out = {name: ctypes.cast(getattr(libc, name), ctypes.c_void_p).value for name in LIBC_SYMBOLS}
    out.update((name, ctypes.cast(libc.abort, ctypes.c_void_p).value) for name in NEVER_CALLED)
    return out


@functools.cache
def _binding():
    """llvmlite's binding, with the native target ready and this module's symbols bound."""
    import llvmlite.binding as ll

    ll.initialize_native_target()
    ll.initialize_native_asmprinter()
    for name in LIBC_SYMBOLS:
        ll.add_symbol(name, _externals()[name])
    if ll.address_of_symbol(NEVER_CALLED[0]) is None:  # numba binds it when it runs
        for name in NEVER_CALLED:
            ll.add_symbol(name, _externals()[name])
    return ll


def load(path: str) -> int | None:
    """The address of the entry point in the object file at ``path``, loaded once per
    process; None when the file is not a whole object this module can load."""
    with _lock:
        if path in _loaded:
            return _loaded[path]
        try:
            with open(path, "rb") as fh:
                data = fh.read()
        except OSError:
            return None
        head, sep, obj = data[len(MAGIC):].partition(b"\n")
        try:
            symbol, digest = head.decode("ascii").split(" ")
        except (UnicodeDecodeError, ValueError):
            return None
        if (not data.startswith(MAGIC) or not sep
                or hashlib.sha256(obj).hexdigest() != digest):  # damaged
            return None
        address = _load_object(obj, symbol)
        if address is not None:
            _loaded[path] = address
        return address


def load_object(obj: bytes, symbol: str) -> int | None:
    """The address of ``symbol`` in object code ``obj`` loaded into this process (the
    process that compiled it runs the very code it saves); None if it cannot be."""
    with _lock:
        return _load_object(obj, symbol)


def links_itself() -> bool:
    """Whether objects are linked by ``bce_cli._elf`` here (x86-64), not by llvmlite."""
    return platform.machine() == "x86_64"


def _load_object(obj: bytes, symbol: str) -> int | None:
    if not supported() or not loadable(obj):
        return None
    if links_itself():
        try:
            address = _elf.link_x86_64(obj, symbol, _externals())
        except _elf.Unsupported:
            pass  # LLVM's loader may link it
        except _elf.NOT_WHOLE:
            return None
        else:
            _linked.append(symbol)
            return address
    return _load_with_llvm(obj, symbol)


def _load_with_llvm(obj: bytes, symbol: str) -> int | None:
    ll = _binding()
    target = ll.Target.from_default_triple().create_target_machine()
    engine = ll.create_mcjit_compiler(ll.parse_assembly(""), target)
    engine.add_object_file(ll.ObjectFileRef.from_data(obj))
    engine.finalize_object()
    address = engine.get_function_address(symbol)
    if not address:
        return None
    _engines.append(engine)
    return address


def started() -> bool:
    """Whether this process has loaded an object (the loader's start is paid)."""
    return bool(_engines or _linked)
