"""Column selection: which columns of a table hold each role (logits, targets, weight), as
:class:`Selection` objects (columns, layout, dtype), by the rules of :mod:`._names`."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from bce_cli.errors import BCEInputError

from . import _names
from ._convert import column_kind, is_list, np_dtype, numpy_of


class Selection:
    """How one role (logits / targets / weight) is read from a table source.

    kind: 'wide' (one scalar column per class), 'list' (one list column of k
    values), 'row' (one scalar column, one value per row: a weight), 'key' (one
    column of group keys, ``--by``, kept as Arrow).
    """

    def __init__(self, kind, columns, dtype, k=None, shown=None):
        self.kind = kind
        self.columns = list(columns)
        self.dtype = np.dtype(dtype)
        self.k = k
        self.shown = list(shown) if shown is not None else list(self.columns)

    @property
    def n_classes(self):
        return self.k if self.kind == "list" else len(self.columns)


def _check_numeric(schema, cols, file, role):
    for c in cols:
        t = schema.field(c).type
        if column_kind(t) is None:
            raise BCEInputError(
                f"column of type {t} is not numeric, bool or a list of numbers; it cannot hold "
                f"{role}",
                file=file,
                column=c,
            )


def selection(source, cols, role, file) -> Selection:
    """The :class:`Selection` of columns ``cols`` (already chosen) for ``role``."""
    schema = source.schema
    _check_numeric(schema, cols, file, role)
    lists = [c for c in cols if is_list(schema.field(c).type)]
    types = [schema.field(c).type for c in cols]
    dtype = np.result_type(*[np_dtype(t) for t in types])
    if role != "targets" and dtype.kind in "biu":
        dtype = np.dtype(np.float64)
    if lists:
        if len(cols) != 1:
            raise BCEInputError(
                f"a list column must be the only {role} column; selected: {cols}",
                file=file,
                column=lists[0],
            )
        t = schema.field(cols[0]).type
        if hasattr(t, "list_size"):
            k = t.list_size
        else:
            k = first_list_length(source, cols[0], cols[0])
        return Selection("list", cols, dtype, k=k)
    return Selection("wide", cols, dtype)


def first_list_length(source, column: str, shown: str) -> int:
    """Read the first non-null row of a list column to learn its length."""
    import pyarrow.compute as pc  # here: its import takes ~28 ms, and only lists need it

    for rb, file, row0 in source.batches([column], 1024):
        arr = rb.column(0)
        if arr.null_count == len(arr):
            continue
        valid = np.flatnonzero(numpy_of(arr.is_valid()))
        k = numpy_of(pc.list_value_length(arr))[valid[0]]
        if int(k) == 0:
            raise BCEInputError(
                "the first list is empty: no classes", file=file, column=shown, row=row0 + valid[0]
            )
        return int(k)
    raise BCEInputError(
        "the input has no rows (or only null lists)", file=source.display, column=shown
    )


# --------------------------------------------------------------------- one file, both roles
def one_file(source, logits, targets, exclude, file) -> tuple:
    """``(logits, targets)`` selections of a table holding both (``logits`` / ``targets``:
    the user's selections, None for the default)."""
    schema = source.schema
    names = list(schema.names)
    if logits is None or targets is None:
        dl, dt = _names.default_one_file(schema, exclude, file)
    lcols = _names.explicit(logits, names, file, "logits") if logits else dl
    lset = set(lcols)
    tcols = (
        _names.explicit(targets, names, file, "targets")
        if targets
        else [c for c in dt if c not in lset]
    )
    if logits is None and targets is not None:
        tset = set(tcols)
        lcols = [c for c in lcols if c not in tset]
    for role, cols, pats in (
        ("logits", lcols, _names.LOGIT_PATTERNS),
        ("targets", tcols, _names.TARGET_PATTERNS),
    ):
        if not cols:
            raise BCEInputError(
                f"cannot tell which columns hold the {role}: no numeric column name matches "
                f"{', '.join(pats[:6])}...; columns: {_names.avail(names)}",
                file=file,
                hint="choose with --logits COLS --targets COLS",
            )
    tset = set(tcols)
    both = [c for c in lcols if c in tset]
    if both:
        raise BCEInputError(
            "the same column is selected for logits and targets", file=file, column=both[0]
        )
    lsel = selection(source, lcols, "logits", file)
    tsel = selection(source, tcols, "targets", file)
    if lsel.kind == "wide" and tsel.kind == "wide":
        lcols, tcols, _ = _names.pair(lcols, tcols, file)
        lsel = selection(source, lcols, "logits", file)
    return lsel, tsel


# -------------------------------------------------------------------- two files, one role each
def _named_or_default(source, chosen, role, exclude, file) -> list:
    names = list(source.schema.names)
    if chosen:
        return _names.explicit(chosen, names, file, role)
    return _names.default_all_numeric(source.schema, exclude, skip_keys=True)


def pair_tables(src_p, logits, file_p, src_l, targets, file_l, exclude) -> tuple:
    """The logit columns of PREDS and the target columns of LABELS, paired one to one:
    ``(logit_columns, target_columns, unpaired)``; the two lists are None where the
    pairing does not apply (a side selects nothing, or a list column), and each side
    is then chosen on its own by :func:`one_side`."""
    lcols = _named_or_default(src_p, logits, "logits", exclude, file_p)
    tcols = _named_or_default(src_l, targets, "targets", exclude, file_l)
    if (
        not lcols
        or not tcols
        or any(is_list(src_p.schema.field(c).type) for c in lcols)
        or any(is_list(src_l.schema.field(c).type) for c in tcols)
    ):
        return None, None, []
    lcols, tcols, unpaired = _names.common_subset(lcols, tcols, not logits, not targets)
    lcols, tcols, _ = _names.pair(lcols, tcols, file_p, files=(file_p, file_l))
    return lcols, tcols, unpaired


def one_side(source, chosen, role, exclude, file) -> list:
    """The columns of one side of two inputs, chosen on its own (see :func:`pair_tables`)."""
    cols = _named_or_default(source, chosen, role, exclude, file)
    if not cols:
        names = list(source.schema.names)
        raise BCEInputError(
            f"no numeric column (other than key-like ones such as 'id') to use as {role}; "
            f"columns: {_names.avail(names)}",
            file=file,
            hint=f"choose with --{role} COLS",
        )
    return cols


def targets_only(source, targets, file) -> Selection:
    """The target selection of a table holding only targets (``bce suggest-pos-weight``)."""
    names = list(source.schema.names)
    if targets:
        cols = _names.explicit(targets, names, file, "targets")
    else:
        cols = _names.default_targets(source.schema, ())
        if not cols:
            raise BCEInputError(
                "no numeric or bool column (other than key-like ones such as 'id') "
                f"to use as targets; columns: {_names.avail(names)}",
                file=file,
                hint="choose with --targets COLS",
            )
    return selection(source, cols, "targets", file)


# ---------------------------------------------------------------------------- weight
def has_column(source, col) -> bool:
    """Whether a table source has column ``col`` (or a column matching the glob)."""
    schema = getattr(source, "schema", None)
    if schema is None:
        return False
    return any(_names.excluded(n, (col,)) for n in schema.names)


def weight(source, chosen, file, C) -> tuple:
    """``(Selection, per_row)`` of a weight column selection: one value per row, or one
    per class (``C`` values)."""
    names = list(source.schema.names)
    cols = _names.explicit(chosen, names, file, "weight")
    sel = selection(source, cols, "weight", file)
    if sel.kind == "wide" and len(cols) == 1:
        return Selection("row", cols, sel.dtype), True
    if sel.n_classes != C:
        raise BCEInputError(
            f"weight selection {cols} gives {sel.n_classes} values per row for {C} classes",
            file=file,
            column=cols[0],
        )
    return sel, False


# ------------------------------------------------------------------------- --by key
def group_key(source, column, file) -> Selection:
    """The :class:`Selection` of the ``--by`` column: one plain value per row (strings,
    integers, booleans, or those dictionary-encoded; nulls allowed), read as Arrow."""
    t = source.schema.field(column).type
    v = t.value_type if pa.types.is_dictionary(t) else t
    if not (pa.types.is_string(v) or pa.types.is_large_string(v) or pa.types.is_integer(v)
            or pa.types.is_boolean(v)):
        raise BCEInputError(
            f"a --by column must hold strings, integers or booleans (or those "
            f"dictionary-encoded), not {t}",
            file=file,
            column=column,
            hint="cast it to strings or integers",
        )
    return Selection("key", [column], object)
