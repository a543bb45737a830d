"""Feeds: the batches of one opened input, ``{role: ndarray}`` of ``batch_rows`` rows each
(the last shorter), from NumPy arrays (:class:`ArrayFeed`) or from a table source
(:class:`TableFeed`), behind one :class:`Feed` protocol; and :class:`Role`, where one
role's values come from (feed, file, column names), for names and messages."""

from __future__ import annotations

from collections.abc import Iterator
from itertools import islice
from typing import Protocol

from bce_cli._lazy import lazy
from bce_cli.errors import BCEInputError

from ._numpy import ArrayView

_convert = lazy("bce_cli.data._convert")  # tables only: an array input never imports pyarrow


class Feed(Protocol):
    """What :class:`~bce_cli.data.Inputs` needs of an opened input."""

    n_rows: int | None  # None when unknown up front (CSV, remote Arrow streams)
    source_name: str

    def locate(self, row: int) -> tuple:
        """``(file, row_in_file)`` of a global row already read."""

    def __iter__(self) -> Iterator[dict]:
        """Batches as ``{role: ndarray}``, each call reading again."""

    def views_only(self) -> bool:
        """Whether every batch is a view of memory already there (no copy per batch)."""


class Role:
    """Where one role's values come from, for names and messages."""

    def __init__(self, feed, key, file, shown_columns, layout, C, S=None, names=None, view=None):
        self.feed = feed
        self.view = view  # the ArrayView of an array role, else None
        self.key = key
        self.file = file
        self.shown = shown_columns  # callable i -> column name
        self.layout = layout
        self.C = C
        self.S = S
        self._names = names

    def class_names(self):
        if self._names is not None:
            return list(self._names)
        return [str(i) for i in range(self.C)]


def array_role(feed, key, view: ArrayView) -> Role:
    names = [view.h.name] if view.cdim is None else None
    return Role(
        feed, key, view.h.file, view.column_name, "array", view.C, view.S, names=names, view=view
    )


def table_role(feed, key, sel, file) -> Role:
    """The :class:`Role` of a table :class:`~bce_cli.data._columns.Selection`."""
    if sel.kind == "list":
        col = sel.shown[0]
        names = [f"{col}[{i}]" for i in range(sel.k)]
        return Role(feed, key, file, lambda i: f"{col}[{i}]", "list", sel.k, names=names)
    cols = list(sel.shown)
    return Role(feed, key, file, lambda i: cols[i], "wide", len(cols), names=cols)


class ArrayFeed:
    """Row blocks of one or more arrays of a file, all with the same row count;
    ``rows``: only the blocks of global rows ``[start, stop)``."""

    def __init__(self, views: dict, batch_rows, order, rows=None):
        self.views = views
        self.rows = rows
        self.batch_rows = batch_rows
        self.order = order
        ns = {v.h.shape[0] for v in views.values()}
        if len(ns) > 1:
            desc = ", ".join(f"{v.h.name!r}: {v.h.shape[0]}" for v in views.values())
            first = next(iter(views.values()))
            raise BCEInputError(f"arrays have different row counts ({desc})", file=first.h.file)
        first = next(iter(views.values()))
        self.n_rows = first.h.shape[0]
        self.source_name = first.h.file

    def locate(self, row):
        return self.source_name, row

    def views_only(self) -> bool:
        """Whether every block is a view (nothing is read or copied per batch)."""
        return all(v.views_only() for v in self.views.values())

    def __iter__(self):
        its = {k: v.blocks(self.batch_rows, self.order) for k, v in self.views.items()}
        if self.rows is not None:  # whole blocks: start is a multiple of batch_rows
            first, stop = self.rows[0] // self.batch_rows, -(-self.rows[1] // self.batch_rows)
            its = {k: islice(it, first, stop) for k, it in its.items()}
        while True:
            out = {}
            for k, it in its.items():
                blk = next(it, None)
                if blk is None:
                    return
                out[k] = blk
            yield out


class TableFeed:
    """Batches of exactly ``batch_rows`` rows (the last shorter), one array per role;
    ``rows``: only global rows ``[start, stop)``."""

    def __init__(self, source, roles: dict, batch_rows, policy, order, rows=None):
        self.source = source
        self.rows = rows
        self.roles = roles
        self.batch_rows = batch_rows
        self.policy = policy
        self.order = order
        self.segments = []  # (global_row, file, row_in_file) where a file starts
        self.columns = list(dict.fromkeys(c for sel in roles.values() for c in sel.columns))

    def views_only(self) -> bool:
        """Never: a table's batches are decoded and converted (see ArrayFeed)."""
        return False

    def _note(self, global_row, file, row0):
        if not self.segments or self.segments[-1][1] != file:
            self.segments.append((global_row, file, row0))

    @property
    def n_rows(self):
        return self.source.n_rows

    @property
    def source_name(self):
        return self.source.display

    def locate(self, row):
        """(file, row_in_file) of a global row already read."""
        best = (0, self.source.file_names[0], 0)
        for seg in self.segments:
            if seg[0] <= row:
                best = seg
            else:
                break
        return best[1], best[2] + (row - best[0])

    def __iter__(self):
        size = self.batch_rows
        buf, have, done = [], 0, 0 if self.rows is None else self.rows[0]
        for rb, file, row0 in self.source.batches(self.columns, size, self.rows):
            self._note(done + have, file, row0)
            buf.append((rb, file, row0))
            have += rb.num_rows
            while have >= size:
                take, rest, got = [], [], 0
                for i, (b, f, r) in enumerate(buf):
                    if got == size:
                        rest = buf[i:]
                        break
                    need = size - got
                    if b.num_rows <= need:
                        take.append((b, f, r))
                        got += b.num_rows
                    else:
                        take.append((b.slice(0, need), f, r))
                        rest = [(b.slice(need), f, r + need)] + buf[i + 1 :]
                        got = size
                        break
                buf = rest
                have -= size
                yield self._convert(take, size)
                done += size
        if have:
            yield self._convert(buf, have)

    def _convert(self, pieces, n):
        return {
            role: _convert.fill_role(pieces, n, sel, self.policy, self.order)
            for role, sel in self.roles.items()
        }
