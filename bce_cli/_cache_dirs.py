"""Where compiled kernels are cached, and whether a form is there (no numba).

Kept apart from ``_jit`` so that choosing a tier (``bce_cli._tiers``) can look
at the cache without importing numba, which costs 0.2 s before it compiles or
loads anything.
"""

from __future__ import annotations

import functools
import hashlib
import os
import sys
from pathlib import Path

PACKAGE_DIR = Path(__file__).parent
# The modules whose code ends up inside the compiled kernels: the cache is
# stamped with a hash of all of them.
KERNEL_SOURCES = ("kernels.py", "_fastmath.py", "_jit.py", "_forms.py", "stats.py",
                  "_metric_kernels.py")


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


def index_name(form: str) -> str:
    """File name of numba's index for a form's compiled kernel."""
    tag = f"py{sys.version_info[0]}{sys.version_info[1]}{getattr(sys, 'abiflags', '')}"
    return f"kernels.{form}.{tag}.nbi"


def stamp_name(form: str) -> str:
    """A form's stamp file: the hash of the sources it was compiled from, written
    beside numba's index once the form is saved (readable without numba)."""
    return index_name(form)[: -len(".nbi")] + ".stamp"


@functools.cache
def source_stamp() -> str:
    """A hash of every source that is compiled into the kernels."""
    h = hashlib.sha256()
    for name in KERNEL_SOURCES:
        h.update(PACKAGE_DIR.joinpath(name).read_bytes())
    return h.hexdigest()


def holds(path: str, form: str) -> bool:
    """Whether directory ``path`` holds ``form`` compiled from the current sources."""
    try:
        with open(os.path.join(path, stamp_name(form)), encoding="ascii") as fh:
            stamp = fh.read().strip()
    except (OSError, ValueError):
        return False
    return stamp == source_stamp() and os.path.exists(os.path.join(path, index_name(form)))


def is_cached(form: str) -> bool:
    """Whether a cache directory holds this form compiled from the current sources.
    (It may have been compiled for another CPU or argument types; numba then
    compiles it again.)"""
    return any(holds(path, form) for path in cache_dirs())
