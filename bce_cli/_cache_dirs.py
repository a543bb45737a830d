"""Where compiled kernels are cached, and whether a form is there (no numba).

Kept apart from ``_jit`` so that choosing a tier (``bce_cli._tiers``) can look
at the cache without importing numba, which costs 0.2 s before it compiles or
loads anything.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

PACKAGE_DIR = Path(__file__).parent
# The modules whose code ends up inside the compiled kernels: the cache is
# stamped with a hash of all of them.
KERNEL_SOURCES = ("kernels.py", "_fastmath.py", "_jit.py", "_forms.py", "stats.py")


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


def is_cached(form: str) -> bool:
    """Whether a cache directory holds this form, saved after the last edit of a
    kernel source.  (It may still have been compiled for another CPU; numba
    then compiles it again.)"""
    name = index_name(form)
    try:
        newest = max(PACKAGE_DIR.joinpath(s).stat().st_mtime for s in KERNEL_SOURCES)
    except OSError:
        newest = 0.0
    for path in cache_dirs():
        try:
            if os.stat(os.path.join(path, name)).st_mtime >= newest:
                return True
        except OSError:
            continue
    return False
