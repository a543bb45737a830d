"""Compiled forms as native objects: written once numba has compiled a form, loaded
by later processes with llvmlite alone (no numba).

Starting numba costs a fresh process about 0.3 s (importing it, then its CPU
target) before a cached kernel runs; a form's machine code loaded by llvmlite
costs about 0.03 s.  So each form's entry point (``bce_cli.kernels``) is one
function of pointers and integers, compiled by numba, with nothing that needs
numba's runtime (no allocation, no exception objects); its object code, the
same bytes numba runs in the process that compiled it, is saved as
``native.<form>.<signature>.<key>.o`` beside the other compiled kernels
(``bce_cli._cache_dirs``).  ``<key>`` hashes the kernel sources, the CPU numba
compiled for (``cpu_key``) and the numba and llvmlite versions, so a file is
valid exactly when its name is found.

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
import struct
import sys
import threading

from ._cache_dirs import cache_dirs, cpu_key, source_stamp

MAGIC = b"bce-native-2\n"
# Symbols an entry point may leave undefined: libc's (LLVM lowers large copies and
# fills to calls), and numba's reference-count release, which an entry point's code
# names but never calls (its arrays own no memory: views of the caller's pointers).
LIBC_SYMBOLS = ("memset", "memcpy", "memmove")
NEVER_CALLED = ("NRT_MemInfo_call_dtor",)

_lock = threading.Lock()
_engines: list = []  # one execution engine per loaded object, kept for the process's life
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
    """The paths of ``name``'s object in the cache directories that hold one, in order."""
    base = file_name(name)
    return [full for full in (os.path.join(path, base) for path in cache_dirs())
            if os.path.isfile(full)]


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
        missing = undefined_symbols(obj)
    except (ValueError, IndexError, ZeroDivisionError, struct.error, UnicodeDecodeError):
        return False
    return missing <= set(LIBC_SYMBOLS) | set(NEVER_CALLED)


def undefined_symbols(obj: bytes) -> set[str]:
    """The undefined symbols of a 64-bit little-endian ELF relocatable object."""
    if obj[:6] != b"\x7fELF\x02\x01":
        raise ValueError("not a 64-bit little-endian ELF object")
    shoff, = struct.unpack_from("<Q", obj, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", obj, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", obj, shoff + i * shentsize)
                for i in range(shnum)]
    if any(s[1] != 8 and s[4] + s[5] > len(obj) for s in sections):  # not SHT_NOBITS
        raise ValueError("a section runs past the end of the object")
    names = set()
    for sh_type, sh_offset, sh_size, sh_link, sh_entsize in (
            (s[1], s[4], s[5], s[6], s[9]) for s in sections):
        if sh_type != 2:  # SHT_SYMTAB
            continue
        str_off = sections[sh_link][4]
        for i in range(1, sh_size // sh_entsize):  # an entry size of 0: ZeroDivisionError
            st_name, _, _, st_shndx = struct.unpack_from("<IBBH", obj, sh_offset + i * sh_entsize)
            if st_shndx == 0 and st_name:  # SHN_UNDEF, named
                end = obj.index(b"\0", str_off + st_name)
                names.add(obj[str_off + st_name:end].decode())
    return names


@functools.cache
def _binding():
    """llvmlite's binding, with the native target ready and this module's symbols bound."""
    import ctypes

    import llvmlite.binding as ll

    ll.initialize_native_target()
    ll.initialize_native_asmprinter()
    libc = ctypes.CDLL(None)
    for name in LIBC_SYMBOLS:
        ll.add_symbol(name, ctypes.cast(getattr(libc, name), ctypes.c_void_p).value)
    if ll.address_of_symbol(NEVER_CALLED[0]) is None:  # numba binds it when it runs
        for name in NEVER_CALLED:
            ll.add_symbol(name, ctypes.cast(libc.abort, ctypes.c_void_p).value)
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


def _load_object(obj: bytes, symbol: str) -> int | None:
    if not supported() or not loadable(obj):
        return None
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
    """Whether this process has loaded an object (llvmlite's start is paid)."""
    return bool(_engines)
