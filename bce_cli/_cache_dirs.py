"""Where compiled kernels are cached, and whether a form is there (no numba).

Kept apart from ``_jit`` so that choosing a tier (``bce_cli._tiers``) can look
at the cache without importing numba, which costs 0.2 s before it compiles or
loads anything.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import sys
from pathlib import Path

PACKAGE_DIR = Path(__file__).parent
# The modules whose code ends up inside the compiled kernels: the cache is
# stamped with a hash of all of them.  (The layout of a native entry point's
# arguments is defined in kernels.py; the object file's format is checked by its
# first line, ``_native.MAGIC``.)
KERNEL_SOURCES = ("kernels.py", "_fastmath.py", "_jit.py", "_forms.py", "stats.py",
                  "_metric_kernels.py")
# The same for the CUDA kernels (``bce_cli._cuda``), which compile the same math.
CUDA_SOURCES = (*KERNEL_SOURCES, "_cuda.py")


def cache_dirs() -> list[str]:
    """Candidate directories, in order: ``$NUMBA_CACHE_DIR/bce_cli``, the package's
    ``__pycache__``, and the user's cache (``$XDG_CACHE_HOME/bce`` or ``~/.cache/bce``)."""
    dirs = []
    if os.environ.get("NUMBA_CACHE_DIR"):
        dirs.append(os.path.join(os.environ["NUMBA_CACHE_DIR"], "bce_cli"))
    dirs.append(str(PACKAGE_DIR / "__pycache__"))
    home = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    dirs.append(os.path.join(home, "bce"))
    return dirs


def _python_tag() -> str:
    return f"py{sys.version_info[0]}{sys.version_info[1]}{getattr(sys, 'abiflags', '')}"


def index_name(form: str) -> str:
    """File name of numba's index for a form's compiled kernel."""
    return f"kernels.{form}.{_python_tag()}.nbi"


def cuda_base(name: str) -> str:
    """Base of a CUDA kernel's files: numba-cuda's index ``.nbi`` and data ``.N.nbc``,
    and bce's ``.stamp`` (the hash of ``CUDA_SOURCES`` it was compiled from)."""
    return f"cuda.{name}.{_python_tag()}"


def cuda_stamp_text() -> str:
    return source_stamp(CUDA_SOURCES) + "\n"


def holds_cuda(path: str, name: str) -> bool:
    """Whether directory ``path`` holds CUDA kernel ``name`` compiled from the current
    sources (for some GPU: numba-cuda keys each entry by the compute capability)."""
    base = os.path.join(path, cuda_base(name))
    try:
        with open(base + ".stamp", encoding="ascii") as fh:
            text = fh.read()
    except (OSError, ValueError):
        return False
    return text == cuda_stamp_text() and os.path.exists(base + ".nbi")


def stamp_name(form: str) -> str:
    """A form's stamp file: the hash of the sources it was compiled from, written
    beside numba's index once the form is saved (readable without numba)."""
    return index_name(form)[: -len(".nbi")] + ".stamp"


@functools.cache
def source_stamp(names: tuple[str, ...] = KERNEL_SOURCES) -> str:
    """A hash of every source that is compiled into the kernels (of ``names``)."""
    h = hashlib.sha256()
    for name in names:
        h.update(PACKAGE_DIR.joinpath(name).read_bytes())
    return h.hexdigest()


@functools.cache
def cpu_key() -> str:
    """The CPU that numba compiles for here, as a short hash, without importing numba.

    numba keys its cache index by the target CPU's name and features (the host's,
    or ``NUMBA_CPU_NAME`` / ``NUMBA_CPU_FEATURES``) and compiles again for any other:
    a cache restored on a CI runner of another CPU model, or a Docker layer built
    elsewhere, holds nothing this machine can load.  The host is its first
    processor's description in ``/proc/cpuinfo`` (model, flags) where there is one."""
    name = os.environ.get("NUMBA_CPU_NAME", "")
    features = os.environ.get("NUMBA_CPU_FEATURES", "")
    host = "" if name and features else _host_cpu()
    text = "\0".join((sys.platform, platform.machine(), name, features, host))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def numba_features() -> dict[str, bool]:
    """The features ``NUMBA_CPU_FEATURES`` turns on (True) or off (False), by LLVM's names:
    ``"+avx2,-avx512f"`` gives ``{"avx2": True, "avx512f": False}``."""
    out = {}
    for item in os.environ.get("NUMBA_CPU_FEATURES", "").split(","):
        item = item.strip()
        if len(item) > 1 and item[0] in "+-":
            out[item[1:]] = item[0] == "+"
    return out


def _host_cpu() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            lines = []
            for line in fh:  # the first processor's block
                if not line.strip():
                    break
                if not line.startswith(("processor", "core id", "apicid", "initial apicid",
                                        "cpu MHz", "bogomips", "siblings", "cpu cores")):
                    lines.append(" ".join(line.split()))
            return "\n".join(lines)
    except OSError:
        return platform.processor()


def _stamped_cpus(text: str | None) -> set[str]:
    """The CPUs a stamp lists, if it is a stamp of the current sources (else none)."""
    lines = (text or "").split()
    return set(lines[1:]) if lines and lines[0] == source_stamp() else set()


def stamp_text(previous: str | None) -> str:
    """A form's stamp after saving it on this CPU: the sources' hash, then the CPUs it
    holds compiled code for (this one added to those of a stamp of the same sources)."""
    return "\n".join([source_stamp(), *sorted(_stamped_cpus(previous) | {cpu_key()})]) + "\n"


def holds(path: str, form: str) -> bool:
    """Whether directory ``path`` holds ``form`` compiled from the current sources for
    this CPU."""
    try:
        with open(os.path.join(path, stamp_name(form)), encoding="ascii") as fh:
            text = fh.read()
    except (OSError, ValueError):
        return False
    return (cpu_key() in _stamped_cpus(text)
            and os.path.exists(os.path.join(path, index_name(form))))


def is_cached(form: str) -> bool:
    """Whether a cache directory holds this form compiled from the current sources for
    this CPU.  (It may have been compiled for other argument types; numba then
    compiles it again.)"""
    return any(holds(path, form) for path in cache_dirs())
