"""``--engine dask``: the batches of ``bce eval`` and ``bce suggest-pos-weight`` computed
by the workers of a Dask cluster, with the report bit-identical to ``--engine local``.

Each task is a range of whole batches (global rows ``[start, stop)``, ``start`` a
multiple of ``--batch-rows``) that the worker opens from the inputs' paths (no data
through the scheduler).  It returns one state per batch, each an empty accumulator
updated with that batch alone (``0 + stats``, exact); the driver adds them into its
accumulator in the dataset's order, which is the sums a local run makes, bit for bit,
whatever the number of workers.  The tier (NumPy or compiled kernels, which differ
in the last bits) is chosen once, by the driver computing the first batch itself, and
travels to the workers with the accumulator (:class:`bce_cli._tiers.JobTier`).

Dask is an extra (``pip install 'bce-cli[dask]'``), imported only here and only
when ``--engine dask`` runs.
"""

from __future__ import annotations

import math
import os
from contextlib import contextmanager
from dataclasses import replace

import numpy as np

from . import _tiers
from .errors import BCEInputError

TASKS_PER_WORKER = 4  # a few tasks per worker: the slower ones do not hold up the rest
STATE_BUDGET = 64 << 20  # at most this many bytes of per-batch states from one task


def _require() -> None:
    try:
        import dask  # noqa: F401
        import distributed  # noqa: F401
    except ImportError:
        raise BCEInputError("--engine dask needs Dask, an optional extra: "
                            "pip install 'bce-cli[dask]'") from None


def _unsupported(what: str, instead: str = "--engine local") -> BCEInputError:
    return BCEInputError(f"{what} is not yet supported with --engine dask; use {instead}")


def check_eval(spec, opts) -> None:
    """Refuse, before any work, what this engine does not do yet."""
    _require()
    if spec.on:
        raise _unsupported("--on (a join)")
    if opts.output:
        raise _unsupported("--reduction none --output (per-element losses)")
    check_paths(spec.preds, spec.labels)


def check_paths(*paths) -> None:
    _require()
    if "-" in paths:
        raise _unsupported("standard input ('-')")


def _check_formats(inp) -> None:
    for side in ("preds", "labels"):
        source = inp.sources.get(side)
        if source is not None and source["format"] != "parquet":
            raise _unsupported(f"{source['format']} input ({source['path']})",
                               "Parquet or --engine local")


@contextmanager
def _client(scheduler: str | None):
    """A Client of the scheduler at an address, or of a LocalCluster of worker
    processes (``local``: one per core; ``local:N``: N), one thread each."""
    import dask
    from distributed import Client, LocalCluster

    address = scheduler or "local"
    if address != "local" and not address.startswith("local:"):
        try:
            client = Client(address)
        except (OSError, TimeoutError, ValueError) as exc:
            raise BCEInputError(f"cannot reach the Dask scheduler at {address}: {exc}",
                                hint="--scheduler takes a scheduler's address "
                                "(tcp://host:8786), local or local:N") from None
        with client:
            yield client
        return
    n = os.cpu_count() or 1
    if address != "local":
        count = address.partition(":")[2]
        if not count.isdigit() or int(count) < 1:
            raise BCEInputError(f"--scheduler {address}: local:N needs a number of workers "
                                "N >= 1")
        n = int(count)
    import logging

    # Workers are spawned: numba reads NUMBA_NUM_THREADS from their environment.
    with dask.config.set({"distributed.nanny.pre-spawn-environ.NUMBA_NUM_THREADS": 1}):
        # no dashboard; its HTTP server (health checks) on any free port, not 8787
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                               dashboard_address=None, silence_logs=logging.ERROR,
                               scheduler_kwargs={"dashboard_address": ":0"})
    with cluster, Client(cluster) as client:
        yield client


def plan(n_rows: int, batch_rows: int, first_batch: int, n_workers: int,
         state_bytes: int) -> list[tuple[int, int]]:
    """Row ranges of whole batches, from batch ``first_batch`` to the end: about
    TASKS_PER_WORKER per worker, none returning over STATE_BUDGET bytes of states.

    >>> plan(1000, 100, 1, 2, 64)
    [(100, 300), (300, 500), (500, 700), (700, 900), (900, 1000)]
    """
    n_batches = -(-n_rows // batch_rows)
    todo = n_batches - first_batch
    if todo <= 0:
        return []
    per = -(-todo // (TASKS_PER_WORKER * max(1, n_workers)))
    per = max(1, min(per, STATE_BUDGET // max(1, state_bytes)))
    return [(b * batch_rows, min(n_rows, (b + per) * batch_rows))
            for b in range(first_batch, n_batches, per)]


def _in_order(client, fn, ranges, **kwargs):
    """``fn(rows, **kwargs)`` for every range on the cluster; results in the ranges'
    order (the first failing range's error is raised, as a local run meets it)."""
    futures = client.map(fn, ranges, pure=False, **kwargs)
    try:
        for future in futures:
            yield future.result()
    finally:
        client.cancel(futures)


def eval_batches(inp, acc, opts, progress=None) -> tuple[float, float]:
    """Add every batch of ``inp`` into ``acc`` (empty, with its job set) as a local run
    does; return the predictions' ``lo, hi`` (see :func:`bce_cli.evaluate.add_batch`)."""
    from .evaluate import add_batch

    _check_formats(inp)
    batches = inp.batches()
    first = next(batches)  # computed here: the job's tier is chosen by its first batch
    batches.close()
    _, lo, hi = add_batch(acc, first, inp, opts.from_probs, math.inf, -math.inf)
    if progress is not None:
        progress(first.n_rows)
    spec = inp.spec
    if inp.n_rows <= spec.batch_rows:
        return lo, hi
    with _client(opts.scheduler) as client:
        ranges = plan(inp.n_rows, spec.batch_rows, 1, _n_workers(client), acc.state.nbytes)
        results = _in_order(client, _eval_task, ranges, spec=spec, acc=acc,
                            from_probs=opts.from_probs, threads=opts.threads or 1)
        for (states, n_rows, task_lo, task_hi), (start, stop) in zip(results, ranges,
                                                                      strict=True):
            for state, n in zip(states, n_rows, strict=True):
                acc.add_state(state, n)
            lo, hi = min(lo, task_lo), max(hi, task_hi)
            if progress is not None:
                progress(stop - start)
    return lo, hi


def count_batches(inp, scheduler):
    """``suggest-pos-weight``'s per-batch class counts of ``inp``, in order."""
    _check_formats(inp)
    spec = inp.spec
    with _client(scheduler) as client:
        ranges = plan(inp.n_rows, spec.batch_rows, 0, _n_workers(client),
                      16 * inp.n_classes)
        for counts in _in_order(client, _count_task, ranges, path=spec.preds,
                                targets=spec.targets, batch_rows=spec.batch_rows,
                                class_dim=spec.class_dim):
            yield from counts


def _n_workers(client) -> int:
    return len(client.scheduler_info().get("workers", {})) or 1


# ------------------------------------------------------------------ run by the workers
def _eval_task(rows, *, spec, acc, from_probs, threads):
    """One state per batch of rows ``[start, stop)``: (states, row counts, lo, hi)."""
    from .data import open_inputs
    from .evaluate import add_batch

    _tiers.set_threads(threads)
    states, n_rows, lo, hi = [], [], math.inf, -math.inf
    with open_inputs(replace(spec, rows=rows)) as inp:
        for batch in inp.batches():
            part = acc.spawn()  # the job's tier comes with it
            _, lo, hi = add_batch(part, batch, inp, from_probs, lo, hi)
            states.append(part.state)
            n_rows.append(part.n_rows)
    return np.stack(states), n_rows, lo, hi


def _count_task(rows, *, path, targets, batch_rows, class_dim):
    from .data import open_targets
    from .evaluate import class_counts

    with open_targets(path, targets=targets, batch_rows=batch_rows, class_dim=class_dim,
                      rows=rows) as inp:
        return [class_counts(batch, inp) for batch in inp.batches()]
