"""The join (``--on KEY``): both tables' selected columns and keys read into memory,
the keys checked (plain, same type, unique, every one matched), and LABELS' rows
taken in PREDS's order."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from bce_cli.errors import BCEInputError

from . import _names
from ._convert import column_kind, nested
from ._sources import MemorySource


def join(spec, res_p, src_p, res_l, src_l, exclude, wcol):
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
    # only the key, the selected columns and the weight are loaded
    tp = _load_all(
        src_p, res_p.display, _join_columns(spec.logits, src_p, res_p, on, exclude, wcol, spec.by)
    )
    tl = _load_all(
        src_l, res_l.display, _join_columns(spec.targets, src_l, res_l, on, exclude, wcol, spec.by)
    )
    kp, kl = tp.column(on), tl.column(on)
    for key, res in ((kp, res_p), (kl, res_l)):
        if nested(key.type):
            raise BCEInputError(
                f"a join key must hold plain values (numbers, strings, dates), not {key.type}",
                file=res.display,
                column=on,
            )
    if not kp.type.equals(kl.type):
        try:
            if pa.types.is_integer(kp.type) and pa.types.is_integer(kl.type):
                kp, kl = kp.cast(pa.int64()), kl.cast(pa.int64())
            elif (pa.types.is_string(kp.type) or pa.types.is_large_string(kp.type)) and (
                pa.types.is_string(kl.type) or pa.types.is_large_string(kl.type)
            ):
                kp, kl = kp.cast(pa.large_string()), kl.cast(pa.large_string())
            else:
                raise pa.ArrowInvalid("types")
        except pa.ArrowException:
            raise BCEInputError(
                f"key types differ: {kp.type} in {res_p.display}, {kl.type} in {res_l.display}",
                file=res_l.display,
                column=on,
            ) from None
    for key, res in ((kp, res_p), (kl, res_l)):
        if key.null_count:
            row = int(np.flatnonzero(key.is_null().to_numpy(zero_copy_only=False))[0])
            raise BCEInputError("missing join key (null)", file=res.display, column=on, row=row)
        try:
            vc = pc.value_counts(key)
        except pa.ArrowNotImplementedError:
            raise BCEInputError(
                f"cannot join on a key of type {key.type}", file=res.display, column=on,
                hint="use a column of integers or strings as the key",
            ) from None
        counts = vc.field("counts").to_numpy(zero_copy_only=False)
        dup = np.flatnonzero(counts > 1)
        if dup.size:
            vals = vc.field("values").take(pa.array(dup[:5])).to_pylist()
            raise BCEInputError(
                f"{dup.size} duplicate key value(s), e.g. {vals}; a join needs unique keys",
                file=res.display,
                column=on,
            )
    try:
        idx = pc.index_in(kp, value_set=kl.combine_chunks() if hasattr(kl, "combine_chunks")
                          else kl)
    except pa.ArrowNotImplementedError:
        raise BCEInputError(
            f"cannot join on a key of type {kp.type}", file=res_p.display, column=on,
            hint="use a column of integers or strings as the key",
        ) from None
    missing = np.flatnonzero(idx.is_null().to_numpy(zero_copy_only=False))
    if missing.size:
        vals = kp.take(pa.array(missing[:5])).to_pylist()
        raise BCEInputError(
            f"{missing.size} key(s) of {res_p.display} have no match in {res_l.display}, "
            f"e.g. {vals}",
            file=res_p.display,
            column=on,
            row=int(missing[0]),
        )
    extra = np.flatnonzero(
        ~pc.is_in(kl, value_set=kp.combine_chunks()).to_numpy(zero_copy_only=False)
    )
    if extra.size:
        vals = kl.take(pa.array(extra[:5])).to_pylist()
        raise BCEInputError(
            f"{extra.size} key(s) of {res_l.display} have no match in {res_p.display}, e.g. {vals}",
            file=res_l.display,
            column=on,
            row=int(extra[0]),
        )
    if spec.nan_policy == "error":
        for t, res in ((tp, res_p), (tl, res_l)):
            for name in t.column_names:
                col = t.column(name)
                if name not in (on, spec.by) and col.null_count and column_kind(col.type):
                    row = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
                    raise BCEInputError(
                        "missing value (null)",
                        file=res.display,
                        column=name,
                        row=row,
                        hint="fill the missing values, or pass --nan-policy omit|propagate",
                    )
    tl = tl.take(idx)
    return (
        MemorySource(res_p, tp, res_p.display + " (joined)"),
        MemorySource(res_l, tl, res_l.display + f" (joined on {on})"),
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
