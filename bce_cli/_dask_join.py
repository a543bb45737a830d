"""``bce eval --on KEY --engine dask``: the join through Dask's merge (dask.dataframe),
on the cluster, then the same per-batch states as ``--engine local``, bit for bit.

A local join (:mod:`bce_cli.data._join`) yields PREDS's rows in PREDS's order (its
files in path order, each file's rows in order), each with the LABELS row of the same
key, and the batches are ``--batch-rows`` rows of that order.  Here:

1. Each side is read as a Dask DataFrame of its needed columns (the key, the selected
   columns, the weight and ``--by`` columns: what the local join reads), one partition
   per run of row groups, each row carrying its global position in its dataset.  The
   pieces are listed here from the footers already read (``dd.read_parquet`` would
   order the files by a "natural" sort, ``part2`` before ``part10``, where bce orders
   them by path, and positions must be the local ones).
2. The keys are checked as the local join checks them, in the same order and with the
   same messages (:mod:`bce_cli.data._join`): nulls and duplicates on each side
   (read from the key column alone, before any merge: a key repeated many times would
   make a merge blow up), then an outer merge (``DataFrame.merge``, Dask's own) of the
   two sides, kept in the cluster's memory, whose unmatched rows are the keys without
   a partner, and whose nulls under ``--nan-policy error`` are the missing values.
3. The merged rows are range-partitioned on PREDS's position (``set_index`` with
   divisions at the task plan's whole batches, :func:`bce_cli._dask.plan`): each
   partition holds exactly rows ``[start, stop)`` of PREDS's order, sorted.  The driver
   takes rows ``[0, --batch-rows)`` itself (the first batch chooses the job's tier);
   each worker turns its partition back into the two Arrow tables of the local join
   (the original column names and types) and runs the local code on them
   (:func:`bce_cli.data.open_inputs` with the join supplied), so its batches are the
   local batches and its per-batch states are added in order on the driver.

The Arrow-backed pandas types (``pd.ArrowDtype``) carry every value, null and type
through pandas unchanged.  Dask's dataframe (and pandas) is imported only here.
"""

from __future__ import annotations

import os
from contextlib import ExitStack
from dataclasses import dataclass, replace

import numpy as np

from .errors import BCEInputError, printable

PIECE_ROWS = 1 << 20  # rows of one partition as read (whole row groups, one file)
KEY = "k"  # the key column in the merged frame; the others are named by position


def require() -> None:
    try:
        import dask.dataframe  # noqa: F401
        import pandas  # noqa: F401
    except ImportError:
        raise BCEInputError("--on with --engine dask joins through Dask's dataframe, an "
                            "optional extra: pip install 'bce-cli[dask]'") from None


@dataclass
class Layout:
    """The columns of the merged frame and where they came from (sent to the workers)."""

    on: str
    cols_p: list  # PREDS's columns as read, the key first
    cols_l: list
    schema_p: object  # pa.Schema of those columns, as stored
    schema_l: object
    shown: tuple  # the two inputs as the user named them

    def names(self, side: str) -> list[str]:
        cols = self.cols_p if side == "p" else self.cols_l
        return [KEY] + [f"{side}{i}" for i in range(1, len(cols))]

    def tables(self, df):
        """The two tables of the local join from merged rows ``df`` (in order)."""
        import pyarrow as pa

        out = []
        for side, schema in (("p", self.schema_p), ("l", self.schema_l)):
            arrays = [pa.array(df[name]).cast(f.type)
                      for name, f in zip(self.names(side), schema, strict=True)]
            out.append(pa.Table.from_arrays(arrays, schema=schema).combine_chunks())
        return out


@dataclass
class Joined:
    """The join of :func:`bce_cli.data.open_inputs` for rows from ``first_row`` on: the
    tables already joined by Dask's merge."""

    layout: Layout
    tp: object
    tl: object
    first_row: int = 0

    def __call__(self, spec, res_p, src_p, res_l, src_l, exclude, wcol):
        from .data._join import memory_sources

        return memory_sources(res_p, self.tp, res_l, self.tl, spec.on, self.first_row,
                              self.layout.shown)


@dataclass
class _Reader:
    """Reads one piece ``(path, shown, row groups, first row)`` of a side as pandas
    (Arrow-backed types), its columns renamed, with its rows' global positions."""

    res: object  # the side's Resolved, its local paths absolute
    columns: list
    names: list
    position: str

    def __call__(self, piece):
        import pandas as pd
        import pyarrow.parquet as pq

        from .data._sources import _READ_ERRORS

        path, shown, groups, first = piece
        try:
            with self.res.open_random(path) as f:
                table = pq.ParquetFile(f).read_row_groups(groups, columns=self.columns)
            table.validate(full=True)  # as a local read does: a corrupt file can crash
        except _READ_ERRORS as exc:
            raise BCEInputError(f"cannot read (file corrupt or truncated?): {printable(exc)}",
                                file=shown) from None
        df = table.rename_columns(self.names).to_pandas(types_mapper=pd.ArrowDtype)
        df[self.position] = np.arange(first, first + table.num_rows, dtype=np.int64)
        return df


def _pieces(res, src) -> list:
    """Runs of whole row groups of each file, up to PIECE_ROWS rows, in the order a
    local read takes them, with their first global row."""
    out, first = [], 0
    for path, md in zip(res.files, src._metadata, strict=True):
        where = os.path.abspath(path) if res.local else path
        groups, rows = [], 0
        for i in range(md.num_row_groups):
            n = md.row_group(i).num_rows
            if groups and rows + n > PIECE_ROWS:
                out.append((where, res.show(path), groups, first))
                first, groups, rows = first + rows, [], 0
            groups.append(i)
            rows += n
        if groups:
            out.append((where, res.show(path), groups, first))
            first += rows
    return out


def _frame(res, src, columns, names, position, common=None):
    import dask.dataframe as dd
    import pandas as pd
    import pyarrow as pa

    pieces = _pieces(res, src)
    shipped = replace(res, files=[p[0] for p in pieces]) if res.local else res
    reader = _Reader(shipped, list(columns), list(names), position)
    meta = pa.schema([src.schema.field(c) for c in columns]).empty_table()
    meta = meta.rename_columns(list(names)).to_pandas(types_mapper=pd.ArrowDtype)
    meta[position] = np.zeros(0, dtype=np.int64)
    df = dd.from_map(reader, pieces, meta=meta, enforce_metadata=False)
    if common is not None:
        df[KEY] = df[KEY].astype(pd.ArrowDtype(common))
    return df


@dataclass
class JoinedJob:
    """What :func:`bce_cli._dask.eval_batches` needs of a join made on the cluster."""

    client: object
    merged: object  # the merged rows (persisted), PREDS's position as "pos_p"
    layout: Layout
    n_rows: int
    deadline: object

    def partitions(self, ranges):
        """Futures of the merged rows, one per range of PREDS's rows, in order."""
        divisions = [start for start, _ in ranges] + [self.n_rows - 1]
        merged = self.merged[self.merged["pos_p"] >= ranges[0][0]]
        ordered = merged.set_index("pos_p", divisions=divisions)
        futures = self.client.compute(ordered.to_delayed())  # in the partitions' order
        self.merged = None  # the scheduler keeps it while the sorted rows need it
        return futures


def open_joined(spec, opts):
    """``open_inputs(spec)`` for ``--on`` under ``--engine dask``: the keys checked and
    the inputs merged on the cluster, the Inputs of the first batch's rows returned
    (its ``n_rows`` the whole input's) with ``joined``, a :class:`JoinedJob`.  The
    cluster's client closes with the Inputs."""
    from . import _dask
    from .data import _join, _open, open_inputs
    from .data._paths import resolve
    from .data._weights import parse_weight

    require()
    deadline = _dask._Deadline(getattr(opts, "timeout", None))
    on = spec.on
    res_p, res_l = resolve(spec.preds), resolve(spec.labels)
    wspec = parse_weight(spec.weight)
    wcol = wspec.value if wspec is not None and wspec.kind == "column" else None
    exclude = {c for c in (on, wcol, spec.by) if c}
    src_p, src_l = _open._open_table(res_p, spec), _open._open_table(res_l, spec)
    _open._by_side(spec, res_p, src_p, res_l, src_l)
    _join.check_sides(spec, res_p, src_p, res_l, src_l)
    for res in (res_p, res_l):
        if res.fmt != "parquet":
            raise _dask._unsupported(f"{res.fmt} input with --on ({res.display})",
                                     "Parquet or --engine local")
    cols_p, cols_l = _join.side_columns(spec, res_p, src_p, res_l, src_l, exclude, wcol)
    schema_p = _schema(src_p, cols_p)
    schema_l = _schema(src_l, cols_l)
    tp, tl = schema_p.field(on).type, schema_l.field(on).type
    common = _join.key_types(tp, tl, res_p, res_l, on)
    _check_joinable(common or tp, res_p, on)
    layout = Layout(on, cols_p, cols_l, schema_p, schema_l, (res_p.display, res_l.display))
    stack = ExitStack()
    try:
        client = stack.enter_context(_dask._client(opts.scheduler, deadline.at))
        run = _Runner(client, deadline, on)
        kp = _frame(res_p, src_p, [on], [KEY], "pos_p", common)
        kl = _frame(res_l, src_l, [on], [KEY], "pos_l", common)
        facts = run(*_key_facts(kp, "pos_p"), *_key_facts(kl, "pos_l"))
        for res, (null_row, n_dup, dup) in ((res_p, facts[:3]), (res_l, facts[3:])):
            if null_row == null_row:  # not NaN: a null key
                raise _join.null_key(res, on, int(null_row))
            if n_dup:
                raise _join.duplicates(res, on, int(n_dup), _values(dup.index))
        fp = _frame(res_p, src_p, cols_p, layout.names("p"), "pos_p", common)
        fl = _frame(res_l, src_l, cols_l, layout.names("l"), "pos_l", common)
        merged = client.persist(fp.merge(fl, on=KEY, how="outer", indicator=True))
        checks = _merge_facts(merged, spec, layout, res_p, res_l)
        facts = iter(run(*(fact for _, lazy in checks for fact in lazy)))
        for error, lazy in checks:
            found = error(*(next(facts) for _ in lazy))
            if found is not None:
                raise found
        merged = merged.drop(columns=["_merge", "pos_l"])
        merged["pos_p"] = merged["pos_p"].astype("int64")
        n_rows = src_p.n_rows
        (first,) = run(merged[merged["pos_p"] < spec.batch_rows])
        first = first.sort_values("pos_p")
        joined = Joined(layout, *layout.tables(first))
        inp = open_inputs(spec, joined=joined)
    except BaseException:
        stack.close()
        raise
    inp.n_rows = n_rows
    inp.joined = JoinedJob(client, merged, layout, n_rows, deadline)
    inp._closers.append(stack.close)
    return inp


def _schema(src, columns):
    import pyarrow as pa

    return pa.schema([src.schema.field(c) for c in columns])


def _check_joinable(t, res, on) -> None:
    """Refuse a key type that the local join cannot count or look up either."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from .data._join import unjoinable

    empty = pa.array([], t)
    try:
        pc.value_counts(empty)
        pc.index_in(empty, value_set=empty)
    except pa.ArrowNotImplementedError:
        raise unjoinable(t, res, on) from None


def _key_facts(keys, position):
    """(first row with a null key, number of duplicated keys, the first five of them
    in the order they first occur) of one side, lazily."""
    pos = keys[position]
    counts = keys.groupby(KEY).agg(count=(position, "count"), first=(position, "min"))
    dup = counts[counts["count"] > 1]
    return pos.where(keys[KEY].isna()).min(), dup.shape[0], dup.nsmallest(5, "first")


def _merge_facts(merged, spec, layout, res_p, res_l):
    """``(error of the facts or None, [lazy facts])`` in the local join's order: PREDS's keys
    that LABELS lacks, LABELS's that PREDS lacks, then (``--nan-policy error``) the
    first null of each value column, PREDS's columns first."""
    from .data import _join

    out = []
    for res, other, side, position in ((res_p, res_l, "left_only", "pos_p"),
                                       (res_l, res_p, "right_only", "pos_l")):
        alone = merged[merged["_merge"] == side]

        def error(n, first, res=res, other=other, position=position):
            if not n:
                return None
            first = first.sort_values(position)
            return _join.unmatched(res, other, layout.on, int(n), _values(first[KEY]),
                                   int(first[position].iloc[0]))

        out.append((error, [alone.shape[0], alone[[KEY, position]].nsmallest(5, position)]))
    if spec.nan_policy == "error":
        for res, side, schema, position in ((res_p, "p", layout.schema_p, "pos_p"),
                                            (res_l, "l", layout.schema_l, "pos_l")):
            names = dict(zip(schema.names, layout.names(side), strict=True))
            for column in _join.null_checked(schema, spec):
                def error(row, res=res, column=column):
                    return None if row != row else _join.null_value(res, column, int(row))

                out.append((error, [merged[position].where(merged[names[column]].isna()).min()]))
    return out


def _values(series) -> list:
    """Python values of a pandas column or index, as Arrow's ``to_pylist`` gives them."""
    import pyarrow as pa

    return pa.array(series).to_pylist()


class _Runner:
    """Computes lazy Dask objects on the cluster within the job's deadline; read errors
    met by a worker come back as the input errors they are."""

    def __init__(self, client, deadline, on):
        self.client, self.deadline, self.on = client, deadline, on

    def __call__(self, *lazy):
        from distributed import wait

        futures = self.client.compute(list(lazy))
        try:
            wait(futures, timeout=self.deadline.left())
        except TimeoutError:
            self.client.cancel(futures)
            raise BCEInputError(f"the Dask job ran past --timeout {self.deadline.seconds:g} s "
                                f"while joining the inputs on {self.on!r}; it was "
                                "cancelled") from None
        return self.client.gather(futures)


# ------------------------------------------------------------------ run by the workers
def eval_task(df, *, spec, layout, **kwargs):
    """``_dask._eval_task`` for merged rows ``df`` (PREDS's positions as its index,
    consecutive): the local join's tables rebuilt, then the same batches."""
    from ._dask import _eval_rows
    from .data import open_inputs

    index = df.index.to_numpy()
    start, stop = int(index[0]), int(index[-1]) + 1
    if stop - start != len(index) or not (np.diff(index) == 1).all():
        raise RuntimeError(f"the merged rows {start}..{stop} are not consecutive")
    tp, tl = layout.tables(df)
    joined = Joined(layout, tp, tl, start)
    with open_inputs(replace(spec, rows=(start, stop)), joined=joined) as inp:
        return _eval_rows(inp, (start, stop), **kwargs)
