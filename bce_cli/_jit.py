"""The one place that holds the JIT options of every kernel.

Never blanket ``fastmath=True``: it implies ``nnan``/``ninf`` and folds
``np.isnan`` to False.  ``ELEMENT_FLAGS`` lets LLVM contract multiply-adds and
vectorise branch-free code while keeping NaN and inf semantics; ``SUM_FLAGS``
adds ``reassoc`` for loops whose only job is a float64 sum (reassociation
would silently delete compensation terms in element math, so it never goes
there).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numba

ELEMENT_FLAGS = frozenset({"nsz", "arcp", "contract"})
SUM_FLAGS = ELEMENT_FLAGS | {"reassoc"}


_cache_warned = False


def _njit(**options):
    """``numba.njit(cache=True, ...)``, falling back to no cache (said once) when
    numba finds no writable cache directory, instead of failing at import."""

    def decorate(fn):
        global _cache_warned
        try:
            return numba.njit(cache=True, **options)(fn)
        except RuntimeError as err:
            if "cannot cache" not in str(err):
                raise
            if not _cache_warned:
                _cache_warned = True
                warnings.warn("bce: no writable numba cache directory, so kernels are compiled "
                              "anew in each process (set NUMBA_CACHE_DIR to a writable "
                              "directory to keep them)", RuntimeWarning, stacklevel=2)
            return numba.njit(cache=False, **options)(fn)

    return decorate


def kernel(*, parallel: bool = True, flags=ELEMENT_FLAGS):
    """Decorator for a compiled, cached kernel (a pure function over arrays)."""
    return _njit(parallel=parallel, nogil=True, error_model="numpy",
                      fastmath=set(flags))


def inline():
    """Decorator for thin element wrappers, inlined into their caller by numba.

    The body takes the caller's flags, so it must hold no compensated
    arithmetic (that lives in ``scalar`` functions, which it may call).
    Inlining at numba level keeps LLVM's call depth short enough for its own
    inliner to pull the ``scalar`` leaves into the loop and vectorise it.
    """
    return _njit(inline="always", error_model="numpy")


def inline_copy(dispatcher):
    """An ``inline="always"`` copy of a ``scalar`` function, for loops compiled with
    ELEMENT_FLAGS: numba inlines the body there (taking those flags), so the
    loop vectorises without relying on LLVM's inliner.  Never call the copy
    from a loop with ``reassoc``."""
    return _njit(inline="always", error_model="numpy")(dispatcher.py_func)


def scalar(flags=ELEMENT_FLAGS):
    """Decorator for scalar element math called from the kernels.

    A plain call, not numba's ``inline="always"``: numba-level inlining would
    compile the body with the caller's flags, and a summing kernel's
    ``reassoc`` deletes compensation terms.  LLVM still inlines the call (each
    instruction keeps its own flags) and the caller's loop still vectorises.
    """
    return _njit(error_model="numpy", fastmath=set(flags))


# The modules whose code ends up inside the compiled kernels.
KERNEL_SOURCES = ("kernels.py", "_fastmath.py", "_jit.py", "stats.py")


def drop_stale_cache(package_dir: Path = Path(__file__).parent) -> int:
    """Delete this package's numba cache files that are older than a kernel source.

    numba checks only the file that defines a cached function, but the
    kernels inline code from ``_fastmath`` (and constants from ``stats``):
    after an edit there, a cached kernel would silently keep the old code.
    An installed release rewrites every file at once, so this matters to a
    working copy; the tests and benchmarks call it first.  Returns the number
    of files removed.
    """
    newest = max(package_dir.joinpath(name).stat().st_mtime for name in KERNEL_SOURCES)
    removed = 0
    for path in package_dir.joinpath("__pycache__").glob("*.nb[ic]"):
        try:
            if path.stat().st_mtime < newest:
                path.unlink()
                removed += 1
        except OSError:  # gone already (another process), or not ours to delete
            pass
    return removed
