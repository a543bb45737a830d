"""The join (``--on KEY``): both tables' selected columns and keys read into memory,
the keys checked (plain, same type, unique, every one matched), and LABELS' rows
taken in PREDS's order.

The checks that need no data (:func:`check_sides`, :func:`key_types`), the columns
each side reads (:func:`side_columns`) and every message about the keys' values are
also what ``--engine dask`` (``bce_cli._dask_join``) uses for its join through
Dask's merge, so that both engines refuse the same inputs with the same words."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from bce_cli.errors import BCEInputError

from . import _names
from ._convert import column_kind, nested, numpy_of
from ._sources import MemorySource


def join(spec, res_p, src_p, res_l, src_l, exclude, wcol):
    on = spec.on
    check_sides(spec, res_p, src_p, res_l, src_l)
    cols_p, cols_l = side_columns(spec, res_p, src_p, res_l, src_l, exclude, wcol)
    # only the key, the selected columns and the weight are loaded
    tp = _load_all(src_p, res_p.display, cols_p)
    tl = _load_all(src_l, res_l.display, cols_l)
    kp, kl = tp.column(on), tl.column(on)
    common = key_types(kp.type, kl.type, res_p, res_l, on)
    if common is not None:
        try:
            kp, kl = kp.cast(common), kl.cast(common)
        except pa.ArrowException:  # a uint64 past int64's range
            raise types_differ(kp.type, kl.type, res_p, res_l, on) from None
    for key, res in ((kp, res_p), (kl, res_l)):
        if key.null_count:
            row = int(np.flatnonzero(numpy_of(key.is_null()))[0])
            raise null_key(res, on, row)
        try:
            vc = pc.value_counts(key)
        except pa.ArrowNotImplementedError:
            raise unjoinable(key.type, res, on) from None
        counts = numpy_of(vc.field("counts"))
        dup = np.flatnonzero(counts > 1)
        if dup.size:  # value_counts lists the values in the order they first occur
            raise duplicates(res, on, dup.size, vc.field("values").take(pa.array(dup[:5]))
                             .to_pylist())
    try:
        idx = pc.index_in(kp, value_set=kl.combine_chunks() if hasattr(kl, "combine_chunks")
                          else kl)
    except pa.ArrowNotImplementedError:
        raise unjoinable(kp.type, res_p, on) from None
    missing = np.flatnonzero(numpy_of(idx.is_null()))
    if missing.size:
        raise unmatched(res_p, res_l, on, missing.size, kp.take(pa.array(missing[:5])).to_pylist(),
                        int(missing[0]))
    extra = np.flatnonzero(
        ~numpy_of(pc.is_in(kl, value_set=kp.combine_chunks()))
    )
    if extra.size:
        raise unmatched(res_l, res_p, on, extra.size, kl.take(pa.array(extra[:5])).to_pylist(),
                        int(extra[0]))
    if spec.nan_policy == "error":
        for t, res in ((tp, res_p), (tl, res_l)):
            for name in null_checked(t.schema, spec):
                col = t.column(name)
                if col.null_count:
                    row = int(np.flatnonzero(numpy_of(col.is_null()))[0])
                    raise null_value(res, name, row)
    return memory_sources(res_p, tp, res_l, tl.take(idx), on)


def check_sides(spec, res_p, src_p, res_l, src_l) -> None:
    """Both inputs tables, each with the key column."""
    on = spec.on
    for res, src in ((res_p, src_p), (res_l, src_l)):
        if res.fmt in ("npy", "npz"):
            raise BCEInputError(
                "--on needs two tables (a NumPy file has no key column)", file=res.display
            )
        if src.schema.get_field_index(on) < 0:
            raise BCEInputError(
                f"no key column for --on; available: {_names.avail(list(src.schema.names))}",
                file=res.display,
                column=on,
            )


def side_columns(spec, res_p, src_p, res_l, src_l, exclude, wcol):
    """The columns each side's join reads: the key first, then the selected columns, the
    weight column and the ``--by`` column where the side has them."""
    on, by = spec.on, spec.by
    return (_join_columns(spec.logits, src_p, res_p, on, exclude, wcol, by),
            _join_columns(spec.targets, src_l, res_l, on, exclude, wcol, by))


def key_types(tp: pa.DataType, tl: pa.DataType, res_p, res_l, on) -> pa.DataType | None:
    """Check that the keys can be compared: plain values of one type, or integers of
    two widths (compared as int64), or string and large_string (as large_string),
    the common type returned; None when the types are equal."""
    for t, res in ((tp, res_p), (tl, res_l)):
        if nested(t):
            raise BCEInputError(
                f"a join key must hold plain values (numbers, strings, dates), not {t}",
                file=res.display,
                column=on,
            )
    if tp.equals(tl):
        return None
    if pa.types.is_integer(tp) and pa.types.is_integer(tl):
        return pa.int64()
    strings = (pa.types.is_string, pa.types.is_large_string)
    if any(f(tp) for f in strings) and any(f(tl) for f in strings):
        return pa.large_string()
    raise types_differ(tp, tl, res_p, res_l, on)


def types_differ(tp, tl, res_p, res_l, on) -> BCEInputError:
    return BCEInputError(f"key types differ: {tp} in {res_p.display}, {tl} in {res_l.display}",
                         file=res_l.display, column=on)


def null_checked(schema: pa.Schema, spec) -> list[str]:
    """The columns of a side's table whose nulls are an error under ``--nan-policy
    error`` (numbers and lists of numbers, not the key nor the ``--by`` column)."""
    return [f.name for f in schema if f.name not in (spec.on, spec.by) and column_kind(f.type)]


# -- the messages about the keys' values (one wording for both engines)
def null_key(res, on, row) -> BCEInputError:
    return BCEInputError("missing join key (null)", file=res.display, column=on, row=row)


def unjoinable(t, res, on) -> BCEInputError:
    return BCEInputError(f"cannot join on a key of type {t}", file=res.display, column=on,
                         hint="use a column of integers or strings as the key")


def duplicates(res, on, n, first) -> BCEInputError:
    return BCEInputError(f"{n} duplicate key value(s), e.g. {first}; a join needs unique keys",
                         file=res.display, column=on)


def unmatched(res, other, on, n, first, row) -> BCEInputError:
    """``n`` keys of ``res`` (the first five ``first``, the first at ``row``) that
    ``other`` lacks."""
    return BCEInputError(f"{n} key(s) of {res.display} have no match in {other.display}, "
                         f"e.g. {first}", file=res.display, column=on, row=row)


def null_value(res, name, row) -> BCEInputError:
    return BCEInputError("missing value (null)", file=res.display, column=name, row=row,
                         hint="fill the missing values, or pass --nan-policy omit|propagate")


def memory_sources(res_p, tp, res_l, tl, on, first_row=0, shown=None):
    """The joined tables as the two sources the feeds read: ``tp`` in PREDS's order and
    ``tl`` its rows' matches, from global row ``first_row`` on.  ``shown``: the names
    of the two inputs as the user gave them (else ``res_p`` / ``res_l``'s)."""
    shown_p, shown_l = shown or (res_p.display, res_l.display)
    return (
        MemorySource(res_p, tp, shown_p + " (joined)", first_row),
        MemorySource(res_l, tl, shown_l + f" (joined on {on})", first_row),
    )


def _join_columns(selection, src, res, on, exclude, wcol, by=None):
    names = list(src.schema.names)
    if selection:
        cols = _names.explicit(selection, names, res.display, "columns")
    else:
        cols = _names.default_all_numeric(src.schema, exclude, skip_keys=True)
    chosen = set(cols)
    extra = [n for n in names if wcol and _names.excluded(n, (wcol,)) and n not in chosen]
    if by is not None and by in names and by not in chosen and by not in extra:
        extra.append(by)  # the --by column, whichever side holds it
    return [on] + [c for c in cols + extra if c != on]


def _load_all(src, display, columns):
    batches = [rb for rb, _, _ in src.batches(columns, 1 << 16)]
    if not batches:
        raise BCEInputError("the input has no rows", file=display)
    return pa.Table.from_batches(batches).combine_chunks()
