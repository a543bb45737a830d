"""Running a compiled form: the form's pointer entry point (``bce_cli.kernels``) on
runs of consecutive tasks on the thread pool, float64 partials per task; the
metrics' entry point (``bce_cli._metric_kernels``) on runs of classes; and
``warmup``, which compiles (or loads) every form once.

An entry point is loaded from its native object (``bce_cli._native``, no numba)
when the cache holds one; else numba compiles it (importing numba here, on
that first use only) and its object is saved for the next process.  Either way
the process runs the same machine code: the object is the code numba compiled.
The task geometry is in ``bce_cli._forms``.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import threading

import numpy as np

from . import _native
from ._forms import (
    PS,
    ROWS_WRITE,
    SMOOTH,
    WS,
    WSPS,
    Form,
    common_signatures,
    scratch_sizes,
    signature,
)
from .stats import N_STATS

_P = ctypes.c_void_p
_I = ctypes.c_int64
# numba's calling convention for a function of pointers and integers that returns
# nothing: a status (0: done), a return slot, an exception slot, then the arguments.
_PROTOTYPE = ctypes.CFUNCTYPE(ctypes.c_int32, _P, _P, *([_P] * 14), _I, _I)

# The metrics' entry point (``bce_cli._metric_kernels``): ten pointers, then classes c0, c1.
_METRICS_PROTOTYPE = ctypes.CFUNCTYPE(ctypes.c_int32, _P, _P, *([_P] * 10), _I, _I)

# Fewest tasks per run handed to a thread (see run).
MIN_RUN = 4

_entries: dict = {}  # (form, signature) -> (ctypes function, "loaded" / "compiled")
_lock = threading.Lock()


def pointer_entry(form: Form, sig: str):
    """The ctypes function of ``form``'s entry point for signature tag ``sig``: loaded
    from the cache's native object, else compiled by numba and saved.  A process
    that compiles a form runs the object it saves (loaded like any other), so it
    runs the same machine code as every process that loads it."""
    key = (form, sig)
    got = _entries.get(key)
    if got is not None:
        return got[0]
    with _lock:
        if key not in _entries:
            name = f"{form.name}.{sig}"
            native = _native.supported()
            address = next((a for a in map(_native.load, _native.find(name) if native else [])
                            if a is not None), None)
            how = "loaded"
            if address is None:
                if form.kernel == "metrics":
                    from . import _metric_kernels as kernels  # numba
                else:
                    from . import kernels  # numba

                symbol, address, obj = kernels.compile_native(form, sig)
                how = "compiled"
                if native and obj is not None and _native.loadable(obj):
                    if _native.save(name, symbol, obj) is None:
                        from ._jit import warn_no_cache

                        warn_no_cache()
                    address = _native.load_object(obj, symbol) or address
            prototype = _METRICS_PROTOTYPE if form.kernel == "metrics" else _PROTOTYPE
            _entries[key] = (prototype(address), how)
    return _entries[key][0]


def is_ready(form: Form) -> bool:
    """Whether this process has compiled or loaded ``form`` (for some signature)."""
    return any(key[0] == form for key in _entries)


def any_compiled() -> bool:
    """Whether numba compiled an entry point in this process (it has started)."""
    return any(how == "compiled" for _, how in _entries.values())


def cache_dir(form: Form) -> str | None:
    """The directory ``form``'s compiled code is cached in (None: not cached)."""
    import os

    sigs = common_signatures(form)
    if not _native.supported():
        from ._cache_dirs import cache_dirs, holds

        return next((path for path in cache_dirs() for sig in sigs
                     if holds(path, f"{form.name}.{sig}")), None)
    paths = [path for sig in sigs for path in _native.find(f"{form.name}.{sig}")]
    return os.path.dirname(paths[0]) if paths else None


def how(form: Form, sig: str) -> str | None:
    """"loaded" (from a native object), "compiled" (by numba, in this process) or None."""
    got = _entries.get((form, sig))
    return got[1] if got else None


def _ptr(a: np.ndarray) -> int:
    """The address of a contiguous array's first element.  ``ctypes.c_char.from_buffer``
    takes a third of ``a.ctypes.data``'s time (0.26 against 0.98 us on the development
    machine; a call of the kernels takes 14 of these); it needs a writable, non-empty
    buffer, and the others (a read-only input, an empty placeholder) take
    ``a.ctypes.data``."""
    if a.size and a.flags.writeable:
        try:
            return ctypes.addressof(ctypes.c_char.from_buffer(a))
        except (TypeError, ValueError, BufferError):  # not a plain contiguous buffer
            pass
    return a.ctypes.data


def run(form: Form, geom, n_tasks: int, x, y, wvec, pvec, wf, pf, smooth, ignore, has_ignore,
        nan_mode, out, write_out, side, parallel: bool = False, pool=None,
        workers: int = 1):
    """Run ``form`` over flat C-contiguous arrays; returns ``(partials, n_bad)`` with
    ``partials`` of shape ``(n_tasks, N_STATS, C)`` (summed in order by the caller).
    ``side``: the planes kernel's per-(row, class) sums with rows along A (zeros,
    filled), else empty.

    The entry point runs runs of consecutive tasks on ``pool``'s ``workers`` threads
    (ctypes releases the GIL; the partials do not depend on which thread ran a
    task), each run with scratch of its own; ``parallel`` runs numba's ``prange``
    entry point instead.  ``wf``/``pf``: per-element factors (empty when unused)."""
    partials = np.zeros((n_tasks, N_STATS, len(wvec)), dtype=np.float64)
    n_bad = np.zeros(n_tasks, dtype=np.int64)
    if not out.flags.c_contiguous or out.dtype != x.dtype:  # as the entry point takes it
        raise ValueError(f"out must be C-contiguous {x.dtype}, got {out.dtype}")
    x, y, wf, pf = (np.ascontiguousarray(a) for a in (x, y, wf, pf))
    wvec, pvec, side = (np.ascontiguousarray(a, dtype=np.float64) for a in (wvec, pvec, side))
    # The tasks view their blocks unchecked (``bce_cli._jit.span``): every array they read
    # or write must be whole.
    writes = write_out or form.direct or (form.kernel == "rows" and form.loop == ROWS_WRITE)
    if (y.size != x.size or wf.size not in (0, x.size) or pf.size not in (0, x.size)
            or (writes and out.size != x.size)):
        raise ValueError(f"run: x {x.size}, y {y.size}, wf {wf.size}, pf {pf.size} and out "
                         f"{out.size} elements (written: {writes}) do not match")
    n_scratch, n_oscratch = scratch_sizes(form, geom)
    ints = np.array([x.size, len(wvec), wf.size, pf.size, out.size, side.size, n_tasks,
                     bool(has_ignore), int(nan_mode), bool(write_out), n_scratch, n_oscratch,
                     *geom], dtype=np.int64)
    floats = np.array([smooth, ignore], dtype=np.float64)
    if parallel:
        from .kernels import prange_entry

        prange_entry(form)(x, y, wvec, pvec, wf, pf, out, side, partials, n_bad,
                           np.empty(n_scratch), np.empty(n_oscratch, out.dtype), ints, floats,
                           0, n_tasks)
        return partials, n_bad
    fn = pointer_entry(form, signature(x.dtype, y.dtype, wf.dtype, pf.dtype))
    # addresses of this function's arrays, alive until it returns (see _share)
    fixed = [_ptr(a) for a in (x, y, wvec, pvec, wf, pf, out, side, partials, n_bad)]
    shared = (_ptr(ints), _ptr(floats))  # read by every run; scratch is each run's own

    def run_tasks(k0: int, k1: int) -> None:
        scratch = np.empty(n_scratch)
        oscratch = np.empty(n_oscratch, dtype=out.dtype)
        _call(fn, form, *fixed, _ptr(scratch), _ptr(oscratch), *shared, k0, k1)

    # Runs of at least MIN_RUN tasks: a task takes tens of microseconds, about what
    # handing a run to a thread costs.  This thread and workers - 1 of the pool's take
    # the runs in turn, so a batch costs one hand-off per helper thread (waking a
    # thread per run made a 65536-row batch 20% slower), and a thread that is slowed
    # (another process on its core) takes fewer runs.
    n_runs = min(2 * workers, -(-n_tasks // MIN_RUN))
    if pool is None or workers <= 1 or n_runs <= 1:
        run_tasks(0, n_tasks)
        return partials, n_bad
    step = -(-n_tasks // n_runs)
    _share(range(0, n_tasks, step), lambda k0: run_tasks(k0, min(n_tasks, k0 + step)), pool,
           min(workers, n_runs))
    return partials, n_bad


def _share(starts, work, pool, workers: int) -> None:
    """``work(start)`` for each of ``starts``, taken in turn by this thread and
    ``workers - 1`` of ``pool``'s.  Returns, or raises, only once no thread runs one any
    more (an error, Ctrl-C): the arrays the compiled code reads and writes by address
    stay alive until then."""
    starts = iter(starts)
    taking = threading.Lock()

    def take() -> None:
        while True:
            with taking:
                k0 = next(starts, None)
            if k0 is None:
                return
            work(k0)

    helpers: list = []
    try:
        for _ in range(workers - 1):
            helpers.append(pool.submit(take))
        take()
        for future in helpers:
            if not future.cancel():  # (one that never started has nothing left to take)
                future.result()
    finally:
        with taking:
            for _ in starts:  # no thread starts another
                pass
        for future in helpers:
            future.cancel()
        concurrent.futures.wait(helpers)


def _call(fn, form: Form, *args) -> None:
    """An entry point's call in numba's convention (a return and an exception slot first)."""
    ret, exc = ctypes.c_int64(), ctypes.c_void_p()
    status = fn(ctypes.byref(ret), ctypes.byref(exc), *args)
    if status != 0:
        raise RuntimeError(f"compiled form {form.name} failed (status {status})")


def metrics_signature(x_dtype, y_dtype) -> str:
    """The metrics' signature tag for logits and targets of these dtypes (its weights
    are float64)."""
    return signature(x_dtype, y_dtype, np.float64, np.float64)


def metrics_entry(x_dtype, y_dtype):
    """The metrics' form and entry point for logits and targets of these dtypes, loaded
    or compiled (``pointer_entry``)."""
    from .metrics import metrics_form

    form = metrics_form(x_dtype)
    return form, pointer_entry(form, metrics_signature(x_dtype, y_dtype))


def run_metrics(x3, y3, w3, wvec, ignore, nan_mode, edges, out, *, workers=None) -> None:
    """Add a batch's ``(A, C, B)`` arrays into ``out`` (a metrics state ``(C, width)``,
    float64, C-contiguous) with the metrics' entry point: runs of classes on the
    thread pool (``bce_cli._tiers``), each with scratch of its own.  ``w3``: per-element
    weights of x3's shape, or empty.  Shapes are checked here: the compiled code
    trusts them."""
    from . import _tiers
    from ._forms import metrics_scratch_sizes
    from .metrics import Layout

    x3, y3 = np.ascontiguousarray(x3), np.ascontiguousarray(y3)
    w3, wvec, edges = (np.ascontiguousarray(a, dtype=np.float64) for a in (w3, wvec, edges))
    a_count, c_count, b_count = x3.shape
    width = Layout(edges.size - 1).width
    if (y3.shape != x3.shape or w3.size not in (0, x3.size) or wvec.shape != (c_count,)
            or edges.ndim != 1 or edges.size < 2 or out.shape != (c_count, width)
            or not out.flags.c_contiguous or out.dtype != np.float64):
        raise ValueError(f"run_metrics: x {x3.shape}, y {y3.shape}, w {w3.shape}, wvec "
                         f"{wvec.shape}, edges {edges.shape}, out {out.shape} {out.dtype}")
    n_f, n_i = metrics_scratch_sizes(edges.size - 1, width)
    ints = np.array([a_count, c_count, b_count, w3.size, edges.size, width,
                     ignore is not None, int(nan_mode)], dtype=np.int64)
    floats = np.array([0.0 if ignore is None else float(ignore)])
    form, fn = metrics_entry(x3.dtype, y3.dtype)
    fixed = [_ptr(a) for a in (x3, y3, w3, wvec, edges, out)]  # this function's arrays
    shared = (_ptr(ints), _ptr(floats))  # read by every run; scratch is each run's own

    def classes(c0: int) -> None:
        fscratch, iscratch = np.empty(n_f), np.empty(n_i, dtype=np.int64)
        _call(fn, form, *fixed, _ptr(fscratch), _ptr(iscratch), *shared, c0,
              min(c_count, c0 + step))

    workers = workers or _tiers.kernel_threads()
    step = c_count if workers <= 1 else max(1, -(-c_count // (4 * workers)))
    if step >= c_count:
        if c_count:
            classes(0)
        return
    _share(range(0, c_count, step), classes, _tiers.pool(), workers)


def warmup(report=lambda form, seconds: None) -> list[Form]:
    """Compile (or load) every form for the argument types ``bce_cli._dispatch`` passes:
    float32 and float64 logits with bool targets or targets of the logits' type,
    weights of the logits' type.
    Returns the forms; ``report(form, seconds)`` after each."""
    import time

    from ._forms import all_forms, planes_geometry, rows_geometry

    forms = all_forms()
    for form in forms:
        start = time.perf_counter()
        if form.kernel == "metrics":
            for sig in common_signatures(form):
                pointer_entry(form, sig)
            report(form, time.perf_counter() - start)
            continue
        dtype = np.float32 if form.bits == 32 else np.float64
        x = np.zeros(64, dtype=dtype)
        for y in (np.zeros(64, dtype=np.uint8), np.zeros(64, dtype=dtype)):
            if form.kernel == "rows":
                (geom, n_tasks), c = rows_geometry(16, 4, True), 4
            else:
                (geom, n_tasks), c = planes_geometry(1, 1, 64), 1
            full = form.loop in (WS, PS, WSPS, SMOOTH) or form.kernel == "rows"
            weights = np.ones(64 if full else 0, dtype=dtype)
            run(form, geom, n_tasks, x, y, np.ones(c), np.ones(c), weights, weights, 0.0, 0.0,
                False, 0, np.zeros(64, dtype=dtype), True, np.zeros(0))
        report(form, time.perf_counter() - start)
    return forms
