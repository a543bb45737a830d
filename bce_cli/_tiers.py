"""Which tier computes a call, and the threads both tiers run on (no numba).

Two tiers compute the same statistics with the same semantics:

* ``numpy``: vectorised float64 NumPy over cache-sized blocks on a thread pool
  (``bce_cli._vectorised``).  Nothing to compile, nothing to load.
* ``compiled``: the numba kernels (``bce_cli.kernels``), 3-4x faster per
  element.  A form in the cache loads as a native object without numba
  (``bce_cli._native``: under a millisecond each on x86-64); a form that is not
  costs numba's start (about 0.35 s: importing it, then its CPU target) and
  1.0-1.4 s to compile it (the constants below).

``auto`` (the default) takes the compiled tier when it pays for the whole job:
a form compiled or loaded in this process already; else when the time it saves
over the job's elements exceeds what loading or compiling it would cost.  With
the constants below (measured on the 2-core development machine) that is above
~3.5e5 elements with the form cached and ~4.8e8 without where NumPy and numba have
AVX-512, ~2e5 and ~2.6e8 with AVX2 only (NumPy's float64 exp and log1p then call
libm per element), so a first run on a fresh machine never waits for a
compiler.  The forms shipped in the release wheel (``bce_cli._prebuilt``) count as
cached, so there the compiled tier serves most jobs from the first run; elsewhere
``bce warmup`` (which fills the cache) is what makes it available to them.
``BCE_TIER=numpy`` or ``BCE_TIER=compiled`` forces a tier.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import threading

from . import _native
from ._cache_dirs import is_cached as is_cached_by_numba
from ._cache_dirs import numba_features
from ._forms import common_signatures

TIERS = ("auto", "numpy", "compiled")
TIER_ENV = "BCE_TIER"
# Calls of at most this many elements, in a job of at most as many, take the NumPy tier.
SMALL = 1 << 16
# The cost model, measured on the 2-core development machine (see README,
# "Performance"; ``benchmarks/as_avx2.py`` runs the same code with AVX2 only), in
# seconds: numba's start in the ``bce`` command plus loading one cached form (fitted
# to the difference between the two tiers on the whole 4M x 25 Parquet job, on both
# vector widths: 0.4 s), compiling one form for one argument type (plain, and the
# planes forms with the general options: ``benchmarks/bench_compile.py``); elements per
# second per thread of each tier (``BCEAccumulator.update`` on 256k x 25 float32 and
# bool, 2 threads), with AVX-512 loops and without.  NumPy's float64 exp and log1p
# have AVX-512 loops only (elsewhere a libm call per element): without AVX-512 the
# NumPy tier runs at half its speed, and the compiled tier pays sooner.
NUMBA_START_S = 0.35
LOAD_S = 0.05
# Where forms are cached as native objects (``bce_cli._native``): what the compiled
# tier costs a fresh process more than the NumPy tier before its first element, and
# each further object.  Linked by ``bce_cli._elf`` (x86-64): 0.7 ms for the first
# object, 0.5 ms for each other (measured; the tiers then cross between 3e5 and 1e6
# elements in warm ``bce eval`` runs of (n, 10) float32 ``.npy`` pairs); loaded by
# llvmlite elsewhere: 0.04 s for its start and the first object.
NATIVE_START_S = 0.0005
LLVM_START_S = 0.04
NATIVE_LOAD_S = 0.0006
COMPILE_S = 1.15
COMPILE_GENERAL_S = 1.5
NUMPY_RATE = 118e6  # NumPy dispatching its AVX-512 loops
NUMPY_RATE_NARROW = 63e6  # AVX2 (measured) or other CPUs
COMPILED_RATE = 440e6  # numba compiling for AVX-512
COMPILED_RATE_NARROW = 228e6

# True in the ``bce`` command's own process (set by ``bce_cli.cli.main``), where no
# numba code runs but bce's: numba's start may then skip what only other code needs
# (``bce_cli._jit``).
own_process = False

_threads: int | None = None
_decoding = threading.local()  # .active: this thread's job decodes batches ahead
_pool = None  # a concurrent.futures.ThreadPoolExecutor
_pool_size = 0
_forced: str | None = None  # tests: set_tier()


def set_threads(n: int | None) -> None:
    """Threads for both tiers (``--threads``); None: NUMBA_NUM_THREADS, else every core."""
    global _threads
    if n is not None and n < 1:
        from .errors import BCEInputError

        raise BCEInputError(f"--threads must be at least 1, got {n}")
    _threads = n


def _asked() -> int | None:
    """The thread count asked for (``--threads``, else ``NUMBA_NUM_THREADS``), or None."""
    if _threads is not None:
        return _threads
    env = os.environ.get("NUMBA_NUM_THREADS", "")
    return int(env) if env.isdigit() and int(env) > 0 else None


def threads() -> int:
    n = _asked()
    return cores() if n is None else n


def kernel_threads() -> int:
    """Threads the compiled kernels run a batch on: :func:`threads`, less the core that
    decodes the next batch while a job reads ahead (:func:`decoding_on_a_thread`)
    unless the count was asked for (``--threads``, ``NUMBA_NUM_THREADS``).  The
    kernels are several times faster than decoding, so decoding sets the pace, and a
    kernel thread on its core slowed it: the 4M x 25 Parquet job in 8192-row batches
    took 1.07-1.14 s on 2 cores against 0.98-1.00 s with one kernel thread, in the
    default batches 0.81-0.84 s against 0.79 s.  The NumPy tier, whose arithmetic
    sets the pace, keeps every thread (1.19-1.23 s against 1.23-1.25 s)."""
    n = _asked()
    if n is not None:
        return n
    n = cores()
    return n - 1 if n > 1 and decoding() else n


@contextlib.contextmanager
def decoding_on_a_thread(active: bool = True):
    """While the batches of a job are decoded on a thread of their own (see
    :func:`kernel_threads`), for the kernels this thread launches."""
    before = decoding()
    _decoding.active = bool(active)
    try:
        yield
    finally:
        _decoding.active = before


def decoding() -> bool:
    """Whether this thread's job decodes its batches on a thread of their own."""
    return getattr(_decoding, "active", False)


@functools.cache
def cores() -> int:
    """The machine's cores (asked once: each batch asks)."""
    return os.cpu_count() or 1


def pool():
    """The shared worker threads of both tiers (NumPy and the kernels release the GIL)."""
    from concurrent.futures import ThreadPoolExecutor

    global _pool, _pool_size
    n = threads()
    if _pool is None or _pool_size != n:
        if _pool is not None:
            _pool.shutdown(wait=False)
        _pool, _pool_size = ThreadPoolExecutor(n, thread_name_prefix="bce"), n
    return _pool


def set_tier(tier: str | None) -> None:
    """Force a tier in this process (None: back to ``BCE_TIER`` / auto)."""
    global _forced
    if tier is not None and tier not in TIERS:
        raise ValueError(f"tier must be one of {', '.join(TIERS)}, got {tier!r}")
    _forced = tier


def requested() -> str:
    tier = _forced or os.environ.get(TIER_ENV, "auto") or "auto"
    if tier not in TIERS:
        from .errors import BCEInputError

        raise BCEInputError(f"{TIER_ENV} must be one of {', '.join(TIERS)}, got {tier!r}")
    return tier


class JobTier:
    """The tier of one streamed job: chosen by :func:`choose` at the job's first batch
    (with the job's size, ``elements``), then kept for every other batch, whichever
    process computes it (the Dask engine's workers get it with the accumulator), so
    that the last bits of a result do not depend on where or in what order its
    batches ran."""

    def __init__(self, elements: int | None = None, tier: str | None = None):
        self.elements = elements
        self.tier = tier

    def pick(self, n_elements: int, form, sig: str | None = None) -> str:
        if self.tier is None:
            self.tier = choose(n_elements, form, self.elements, sig)
        return self.tier


def numba_started() -> bool:
    """Whether numba has compiled a kernel in this process (the loss's or the metrics'):
    its start is then paid."""
    launch = sys.modules.get("bce_cli._launch")
    return bool(launch is not None and launch.any_compiled())


def native(form) -> bool:
    """Whether ``form`` is loaded from native objects here (``bce_cli._native``)."""
    return _native.supported()


def is_cached(form, sig: str | None = None) -> bool:
    """Whether the cache holds ``form`` for this CPU and the current sources: for the
    signature ``sig`` (``bce_cli._forms.signature``), or for one the common ones."""
    sigs = (sig,) if sig else common_signatures(form)
    if native(form):
        return _native.is_cached(form.name, sigs)
    return any(is_cached_by_numba(f"{form.name}.{s}") for s in sigs)


def choose(n_elements: int, form, job_elements: int | None = None,
           sig: str | None = None) -> str:
    """"numpy" or "compiled" for a call over ``n_elements`` that is part of a job of
    ``job_elements`` (streaming: the whole input) and would run ``form`` with argument
    types ``sig`` (None: the common ones)."""
    tier = requested()
    if tier != "auto":
        return tier
    launch = sys.modules.get("bce_cli._launch")
    if launch is not None and launch.is_ready(form):
        return "compiled"
    work = max(n_elements, job_elements or 0)
    if work <= SMALL:  # (a job of small batches is a large job: 1-D Parquet's 65536 rows)
        return "numpy"
    # The machine's cores, not --threads: the tier (and so the last bits of a result)
    # must not depend on the number of threads asked for.
    numpy_rate, compiled_rate = rates()
    saved = work / (numpy_rate * cores()) - work / (compiled_rate * cores())
    if saved <= min(NATIVE_LOAD_S, LOAD_S):  # pays for nothing: no need to look at the cache
        return "numpy"
    return "compiled" if saved > fixed_cost(form, sig) else "numpy"


def fixed_cost(form, sig: str | None = None) -> float:
    """Seconds the compiled tier costs this process before ``form``'s first element:
    loading it from the cache, or compiling it."""
    if is_cached(form, sig):
        if native(form):
            start = NATIVE_START_S if _native.links_itself() else LLVM_START_S
            return (0.0 if _native.started() else start) + NATIVE_LOAD_S
        return (0.0 if numba_started() else NUMBA_START_S) + LOAD_S
    compile_s = COMPILE_GENERAL_S if form.general else COMPILE_S
    return (0.0 if numba_started() else NUMBA_START_S) + compile_s


def _numpy_cpu():
    """NumPy's module that knows its CPU features and dispatch targets."""
    try:
        from numpy._core import _multiarray_umath
    except ImportError:  # NumPy 1.x
        from numpy.core import _multiarray_umath
    return _multiarray_umath


def numpy_avx512_targets() -> list[str]:
    """The AVX-512 targets NumPy can dispatch its loops to (``X86_V4``, ``AVX512_ICL``...
    in NumPy 2.4; ``AVX512F``, ``AVX512_SKX``... before), whether this CPU has them or not."""
    return [name for name in _numpy_cpu().__cpu_dispatch__
            if name.startswith("AVX512") or name == "X86_V4"]


def rates() -> tuple[float, float]:
    """Elements per second per thread of (the NumPy tier, the compiled tier) on this
    machine: with AVX-512 loops or without (NumPy's own dispatch, and numba's code
    for the host unless ``NUMBA_CPU_FEATURES`` turns AVX-512 off)."""
    features = _numpy_cpu().__cpu_features__
    numpy_wide = any(features.get(name) for name in numpy_avx512_targets())
    return (NUMPY_RATE if numpy_wide else NUMPY_RATE_NARROW,
            COMPILED_RATE if numba_avx512() else COMPILED_RATE_NARROW)


def numba_avx512() -> bool:
    """Whether numba compiles for AVX-512 here: as ``NUMBA_CPU_FEATURES`` says where it
    turns ``avx512f`` on or off, else as the host has it (the kernels' loops and the
    cost model both ask)."""
    asked = numba_features().get("avx512f")
    return bool(_numpy_cpu().__cpu_features__.get("AVX512F")) if asked is None else asked
