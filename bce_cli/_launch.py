"""Running a compiled form: inputs as read-only views, runs of consecutive tasks on
the thread pool (or numba's ``prange``), float64 partials per task; and
``warmup``, which compiles (or loads) every form once.

The forms and their entry points are in ``bce_cli.kernels``; the task geometry in
``bce_cli._forms``.  Importing this module imports numba.
"""

from __future__ import annotations

import numpy as np

from ._forms import PS, SMOOTH, WS, WSPS, Form
from .kernels import entry
from .stats import N_STATS


def _read_only(a: np.ndarray) -> np.ndarray:
    """A read-only view: inputs always reach numba as read-only arrays, so that
    writable and read-only data (memory-mapped ``.npy``, Arrow buffers) share
    one compiled signature."""
    if not a.flags.writeable:
        return a
    v = a.view()
    v.flags.writeable = False
    return v


def run(form: Form, geom, n_tasks: int, x, y, wvec, pvec, wf, pf, smooth, ignore, has_ignore,
        nan_mode, out, write_out, side, parallel: bool = False, pool=None,
        workers: int = 1):
    """Run ``form`` over flat arrays; returns ``(partials, n_bad)`` with ``partials`` of
    shape ``(n_tasks, N_STATS, C)`` (summed in order by the caller).  ``side``: the
    planes kernel's per-(row, class) sums with rows along A (zeros, filled), else
    empty.

    The serial entry point runs runs of consecutive tasks on ``pool``'s ``workers`` threads
    (it releases the GIL; the partials do not depend on which thread ran a
    task); ``parallel`` runs the ``prange`` entry point instead.  ``wf``/``pf``:
    per-element factors (empty when unused)."""
    partials = np.zeros((n_tasks, N_STATS, len(wvec)), dtype=np.float64)
    n_bad = np.zeros(n_tasks, dtype=np.int64)
    fn = entry(form, parallel)
    args = tuple(_read_only(np.asarray(a)) for a in (x, y, wvec, pvec, wf, pf))
    args += (float(smooth), float(ignore), bool(has_ignore), int(nan_mode), out,
             bool(write_out), tuple(int(g) for g in geom), partials, side, n_bad)
    if pool is None or parallel:
        fn(*args, 0, n_tasks)
    else:
        step = max(1, -(-n_tasks // (4 * workers)))
        list(pool.map(lambda k0: fn(*args, k0, min(n_tasks, k0 + step)),
                      range(0, n_tasks, step)))
    return partials, n_bad


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
            from ._metric_kernels import warmup_form

            warmup_form(form)
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
