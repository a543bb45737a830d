"""``--engine dask``: the batches of ``bce eval`` and ``bce suggest-pos-weight`` computed
by the workers of a Dask cluster, with the report bit-identical to ``--engine local``.

Each task is a range of whole batches (global rows ``[start, stop)``, ``start`` a
multiple of ``--batch-rows``) that the worker opens from the inputs' paths (no data
through the scheduler).  It returns one state per batch, each an empty accumulator
updated with that batch alone (``0 + stats``, exact); the driver adds them into its
accumulator in the dataset's order, which is the sums a local run makes, bit for bit,
whatever the number of workers.  With ``--metrics`` each batch's metrics state
(``bce_cli.metrics``) travels beside its loss state and is added the same way.  The
tier (NumPy or compiled kernels, which differ in the last bits) is chosen once, by the
driver computing the first batch itself, and travels to the workers with the
accumulator (:class:`bce_cli._tiers.JobTier`; the metrics' tier with their state).

Dask is an extra (``pip install 'bce-cli[dask]'``), imported only here and only
when ``--engine dask`` runs.
"""

from __future__ import annotations

import copy
import math
import os
import time
import uuid
from contextlib import contextmanager, nullcontext
from dataclasses import replace

import numpy as np

from . import _tiers
from .errors import BCEInputError, printable

TASKS_PER_WORKER = 4  # a few tasks per worker: the slower ones do not hold up the rest
STATE_BUDGET = 64 << 20  # at most this many bytes of per-batch states from one task
RETRIES = 2  # a task that fails other than on bad data (a lost file system read) runs again
CONNECT_TIMEOUT = 5.0  # seconds to reach a scheduler at an address


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
        from ._dask_join import require

        require()
    if opts.output:
        from .outputs import check_dataset_path

        check_dataset_path(opts.output, opts.report)
    check_paths(spec.preds, spec.labels)


def check_compare(spec_base, spec_new) -> None:
    """``bce compare --engine dask``: refuse, before any work, what it does not do."""
    _require()
    if spec_base.on:
        raise _unsupported("--on (a join)")
    check_paths(spec_base.preds, spec_new.preds, spec_base.labels)


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
def _client(scheduler: str | None, deadline: float | None = None):
    """A Client of the scheduler at an address (given up on after CONNECT_TIMEOUT
    seconds, or at the job's deadline), or of a LocalCluster of worker processes
    (``local``: one per core; ``local:N``: N), one thread each."""
    from distributed import Client

    address = scheduler or "local"
    if address != "local" and not address.startswith("local:"):
        wait = CONNECT_TIMEOUT if deadline is None else max(
            0.1, min(CONNECT_TIMEOUT, deadline - time.monotonic()))
        try:
            client = Client(address, timeout=wait)
        except (OSError, TimeoutError, ValueError) as exc:
            detail = (f"no answer within {wait:.2g} s" if isinstance(exc, (TimeoutError, OSError))
                      and "timed out" in str(exc).lower() else printable(exc))
            raise BCEInputError(f"cannot reach the Dask scheduler at {address}: {detail}",
                                hint="start one (dask scheduler; dask worker ADDRESS on each "
                                "machine), or use --scheduler local or local:N") from None
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
    with local_cluster(n) as cluster, Client(cluster) as client:
        yield client


def local_cluster(n_workers: int):
    """A LocalCluster of ``n_workers`` worker processes, one thread each, numba on one
    thread in each (NUMBA_NUM_THREADS, read when a worker first imports numba).

    The variable goes through the Nanny's ``env``, which is set inside the worker as it
    starts, not through ``distributed.nanny.pre-spawn-environ``, which the Nanny
    writes into this process's ``os.environ``: a later compile here would then find
    numba's thread count changed under its running threads and fail.  The rest of
    what the Nanny writes there is put back too.  No dashboard; the scheduler's HTTP
    server (health checks) on any free port, not 8787."""
    import logging

    from distributed import LocalCluster

    saved = dict(os.environ)
    try:
        return LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                            dashboard_address=None, silence_logs=logging.ERROR,
                            scheduler_kwargs={"dashboard_address": ":0"},
                            env={"NUMBA_NUM_THREADS": "1"})
    finally:
        os.environ.clear()
        os.environ.update(saved)


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


class _Deadline:
    """``--timeout``: the seconds the whole job may take, from its start."""

    def __init__(self, seconds: float | None):
        if seconds is not None and not seconds > 0:  # also NaN
            raise BCEInputError(f"--timeout must be a number of seconds > 0, got {seconds}")
        self.seconds = seconds
        self.at = None if seconds is None else time.monotonic() + seconds

    def left(self) -> float | None:
        return None if self.at is None else max(0.0, self.at - time.monotonic())

    def passed(self, finished: int, total: int) -> BCEInputError:
        return BCEInputError(f"the Dask job ran past --timeout {self.seconds:g} s with "
                             f"{finished} of {total} tasks finished; it was cancelled")


def _local(path: str | None) -> str | None:
    """A local path made absolute (workers may run elsewhere than the driver's cwd);
    URIs and standard input as they are."""
    if path is None or path == "-" or "://" in path:
        return path
    return os.path.abspath(path)


def _for_workers(spec):
    """``spec`` with its local paths absolute, and the names a local run would show
    for the files the workers will name (so that messages read as locally)."""
    from .data._weights import parse_weight

    weight = spec.weight
    if weight is not None and parse_weight(weight).kind == "file":
        weight = _local(weight)
    return replace(spec, preds=_local(spec.preds), labels=_local(spec.labels), weight=weight)


def _shown_names(inp) -> dict[str, str]:
    names = {}
    for source in inp.sources.values():
        if isinstance(source, dict):
            for shown in [source.get("path"), *source.get("files", ())]:
                if isinstance(shown, str) and _local(shown) != shown:
                    names[_local(shown)] = shown
    weight = inp.spec.weight
    if weight is not None and _for_workers(inp.spec).weight != weight:
        names.setdefault(_local(weight), weight)
    return names


def _guarded(rows, *, task, **kwargs):
    """``task(rows, **kwargs)`` on a worker: (None, result), or (error, None) for bad
    data, which is returned rather than raised so that Dask does not retry it."""
    try:
        return None, task(rows, **kwargs)
    except BCEInputError as exc:
        return exc, None


def _in_order(client, fn, ranges, *, deadline=None, done=None, names=None, **kwargs):
    """``fn(rows, **kwargs)`` for every range on the cluster; results in the ranges'
    order (the first failing range's error is raised, as a local run meets it), while
    ``done(i)`` is called as each range ``i`` finishes, in any order (progress).

    A task whose worker dies runs again on another; one that raises other than
    BCEInputError runs again up to RETRIES times.  Past the deadline the futures are
    cancelled and an error says how many tasks had finished.  ``names`` maps the
    absolute paths the workers name in errors to the names the user gave."""
    from distributed import wait

    deadline = deadline or _Deadline(None)
    job = uuid.uuid4().hex  # the tasks are named after what they run, not the wrapper
    keys = [f"bce{fn.__name__}-{job}-{i}" for i in range(len(ranges))]
    futures = client.map(_guarded, ranges, key=keys, task=fn, retries=RETRIES, **kwargs)
    index = {future.key: i for i, future in enumerate(futures)}
    pending = set(index)
    try:
        for future in futures:
            while future.key in pending:
                try:
                    finished = wait([f for f in futures if f.key in pending],
                                    timeout=deadline.left(), return_when="FIRST_COMPLETED")
                except TimeoutError:
                    raise deadline.passed(len(futures) - len(pending), len(futures)) from None
                for f in finished.done:
                    if f.key in pending:
                        pending.discard(f.key)
                        if done is not None and f.status == "finished":
                            done(index[f.key])
            try:
                error, result = future.result(timeout=deadline.left())
            except TimeoutError:
                raise deadline.passed(len(futures) - len(pending), len(futures)) from None
            if error is not None:
                raise _as_shown(error, names or {})
            yield result
    finally:
        client.cancel(futures)


def _as_shown(error: BCEInputError, names: dict[str, str]) -> BCEInputError:
    """A worker's error with the file named as the user gave it.  Its message is built
    again from its fields: unpickling rebuilt it from the rendered text."""
    error = copy.copy(error)
    error.file = names.get(error.file, error.file)
    error.args = (error._render(),)
    return error


def eval_batches(inp, acc, opts, progress=None, writer=None,
                 groups=None) -> tuple[float, float]:
    """Add every batch of ``inp`` into ``acc`` (empty, with its job set) as a local run
    does; return the predictions' ``lo, hi`` (see :func:`bce_cli.evaluate.add_batch`).
    With ``writer`` (a :class:`bce_cli.outputs.LossDataset`), every task also writes
    its rows' losses into one file of the dataset; with ``groups`` (``--by``,
    :class:`bce_cli.groups.Groups`), every task returns each batch's group sums, added
    here in order."""
    from .evaluate import add_batch

    job = getattr(inp, "joined", None)  # --on: joined on the cluster (bce_cli._dask_join)
    if job is None:
        deadline = _Deadline(getattr(opts, "timeout", None))
        _check_formats(inp)
    else:
        deadline = job.deadline
    batches = inp.batches()
    first = next(batches)  # computed here: the job's tier is chosen by its first batch
    batches.close()
    losses, lo, hi = add_batch(acc, first, inp, opts.from_probs, math.inf, -math.inf,
                               return_losses=writer is not None or groups is not None)
    if groups is not None:
        groups.add(first, losses)
    parts = None if writer is None else _write_first(writer, inp, losses)
    if progress is not None:
        progress(first.n_rows)
    spec = inp.spec
    if inp.n_rows <= spec.batch_rows:
        return lo, hi
    with (nullcontext(job.client) if job else _client(opts.scheduler, deadline.at)) as client:
        state_bytes = acc.state.nbytes + (0 if acc.metrics is None else acc.metrics.state.nbytes)
        ranges = plan(inp.n_rows, spec.batch_rows, 1, _n_workers(client), state_bytes)
        done = None if progress is None else (
            lambda i: progress(ranges[i][1] - ranges[i][0]))
        if writer is not None:
            writer.starts += [start for start, _ in ranges]
        task = dict(spec=_for_workers(spec), acc=acc, from_probs=opts.from_probs,
                    threads=opts.threads or 1, parts=parts,
                    groups=None if groups is None else groups.empty())
        if job is None:
            results = _in_order(client, _eval_task, ranges, deadline=deadline, done=done,
                                names=_shown_names(inp), **task)
        else:  # each task's rows come from the merge, already on the cluster
            from ._dask_join import eval_task

            results = _in_order(client, eval_task, job.partitions(ranges), deadline=deadline,
                                done=done, names=_shown_names(inp), layout=job.layout, **task)
        for states, n_rows, metrics, task_lo, task_hi, group_parts in results:
            for i, (state, n) in enumerate(zip(states, n_rows, strict=True)):
                acc.add_state(state, n, None if metrics is None else metrics[i])
            for keys, sums in group_parts:
                groups.add_part(keys, sums)
            lo, hi = min(lo, task_lo), max(hi, task_hi)
    return lo, hi


def compare_batches(inp_b, inp_n, spec_base, spec_new, pairing, opts, progress=None) -> None:
    """``bce compare``: add every pair of batches into ``pairing``
    (:class:`bce_cli.compare._Pairing`) as a local run does: the first here (it chooses
    the job's tier), the rest as per-batch states from the workers, in order."""
    from .compare import _aligned, pair_range

    deadline = _Deadline(getattr(opts, "timeout", None))
    _check_formats(inp_b)
    _check_formats(inp_n)
    pairs = _aligned(inp_b.batches(), inp_n.batches(), spec_base.preds, spec_new.preds)
    bb, bn = next(pairs)
    pairs.close()
    pairing.add(bb, bn, inp_b, inp_n)
    if progress is not None:
        progress(bb.n_rows)
    if inp_b.n_rows <= spec_base.batch_rows:
        return
    names = {**_shown_names(inp_n), **_shown_names(inp_b)}
    with _client(opts.scheduler, deadline.at) as client:
        ranges = plan(inp_b.n_rows, spec_base.batch_rows, 1, _n_workers(client),
                      3 * pairing.paired.state.nbytes)
        done = None if progress is None else (
            lambda i: progress(ranges[i][1] - ranges[i][0]))
        results = _in_order(client, pair_range, ranges, deadline=deadline, done=done,
                            names=names, spec_base=_for_workers(spec_base),
                            spec_new=_for_workers(spec_new), pairing=pairing.empty(),
                            threads=opts.threads or 1)
        for states, seen in results:
            for one in states:
                pairing.add_states(one, seen)


def _write_first(writer, inp, losses):
    """The dataset's first file, the driver's first batch; the tasks' ``parts``."""
    part = writer.parts.write(0, inp)
    try:
        part.write(losses)
        part.commit()
    finally:
        part.abort()
    writer.starts.append(0)
    return writer.parts


def count_batches(inp, scheduler, timeout=None):
    """``suggest-pos-weight``'s per-batch class counts of ``inp``, in order."""
    deadline = _Deadline(timeout)
    _check_formats(inp)
    spec = inp.spec
    with _client(scheduler, deadline.at) as client:
        ranges = plan(inp.n_rows, spec.batch_rows, 0, _n_workers(client),
                      16 * inp.n_classes)
        for counts in _in_order(client, _count_task, ranges, deadline=deadline,
                                names=_shown_names(inp), path=_local(spec.preds),
                                targets=spec.targets, batch_rows=spec.batch_rows,
                                class_dim=spec.class_dim):
            yield from counts


def _n_workers(client) -> int:
    return len(client.scheduler_info().get("workers", {})) or 1


# ------------------------------------------------------------------ run by the workers
def _eval_task(rows, *, spec, acc, from_probs, threads, parts=None, groups=None):
    """One state per batch of rows ``[start, stop)``: (states, row counts, metrics'
    states or None, lo, hi, group sums per batch); with ``parts``
    (:class:`bce_cli.outputs.Parts`), their losses also go to one file; with ``groups``
    (an empty :class:`bce_cli.groups.Groups`), each batch's ``(keys, sums)``."""
    from .data import open_inputs

    with open_inputs(replace(spec, rows=rows)) as inp:
        return _eval_rows(inp, rows, acc=acc, from_probs=from_probs, threads=threads,
                          parts=parts, groups=groups)


def _eval_rows(inp, rows, *, acc, from_probs, threads, parts=None, groups=None):
    """:func:`_eval_task`'s work on the opened inputs ``inp`` of rows ``rows``."""
    from .evaluate import add_batch

    _tiers.set_threads(threads)
    states, n_rows, metrics, group_parts, lo, hi = [], [], [], [], math.inf, -math.inf
    out = None if parts is None else parts.write(rows[0], inp)
    try:
        for batch in inp.batches():
            part = acc.spawn()  # the job's tier comes with it
            losses, lo, hi = add_batch(part, batch, inp, from_probs, lo, hi,
                                       return_losses=out is not None or groups is not None)
            if out is not None:
                out.write(losses)
            if groups is not None:
                group_parts.append(groups.part(batch, losses))
            states.append(part.state)
            n_rows.append(part.n_rows)
            if part.metrics is not None:
                metrics.append(part.metrics.state)
        if out is not None:
            out.commit()
    finally:
        if out is not None:
            out.abort()
    return (np.stack(states), n_rows, np.stack(metrics) if metrics else None, lo, hi,
            group_parts)


def _count_task(rows, *, path, targets, batch_rows, class_dim):
    from .data import open_targets
    from .evaluate import class_counts

    with open_targets(path, targets=targets, batch_rows=batch_rows, class_dim=class_dim,
                      rows=rows) as inp:
        return [class_counts(batch, inp) for batch in inp.batches()]


def open_joined(spec, opts):
    """``--on KEY``: the inputs joined on the cluster (:mod:`bce_cli._dask_join`)."""
    from ._dask_join import open_joined

    return open_joined(spec, opts)
