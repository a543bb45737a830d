"""``open_inputs``: from an :class:`InputSpec` to aligned, validated, streamed batches."""

from __future__ import annotations

import numpy as np

from bce_cli._lazy import lazy
from bce_cli.errors import BCEInputError

from ._numpy import (
    LOGIT_NAMES,
    TARGET_NAMES,
    ArrayView,
    MemArray,
    NpzArchive,
    default_array_name,
    open_npy,
)
from ._paths import resolve
from ._spec import Batch, InputSpec
from ._weights import checked_factors, parse_weight

# Tables only: an array input never imports pyarrow.
pa = lazy("pyarrow")
pc = lazy("pyarrow.compute")
_arrow = lazy("bce_cli.data._arrow")
_select = lazy("bce_cli.data._select")

_ARRAY_FORMATS = ("npy", "npz")


# ------------------------------------------------------------------ role providers
class _Role:
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


class _ArrayFeed:
    def __init__(self, views: dict, batch_rows, order):
        self.views = views
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

    def __iter__(self):
        its = {k: v.blocks(self.batch_rows, self.order) for k, v in self.views.items()}
        while True:
            out = {}
            for k, it in its.items():
                blk = next(it, None)
                if blk is None:
                    return
                out[k] = blk
            yield out


def _check_numeric(schema, cols, file, role):
    for c in cols:
        t = schema.field(c).type
        if _arrow.column_kind(t) is None:
            raise BCEInputError(
                f"column of type {t} is not numeric, bool or a list of numbers; it cannot hold "
                f"{role}",
                file=file,
                column=c,
            )


def _table_sel(source, cols, role, file):
    schema = source.schema
    _check_numeric(schema, cols, file, role)
    lists = [c for c in cols if _arrow.is_list(schema.field(c).type)]
    types = [schema.field(c).type for c in cols]
    dtype = np.result_type(*[_arrow.np_dtype(t) for t in types])
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
            k = _arrow.first_list_length(source, cols[0], cols[0])
        return _arrow.RoleSel("list", cols, dtype, k=k)
    return _arrow.RoleSel("wide", cols, dtype)


def _table_role(feed, key, sel, file):
    if sel.kind == "list":
        col = sel.shown[0]
        names = [f"{col}[{i}]" for i in range(sel.k)]
        return _Role(feed, key, file, lambda i: f"{col}[{i}]", "list", sel.k, names=names)
    cols = list(sel.shown)
    return _Role(feed, key, file, lambda i: cols[i], "wide", len(cols), names=cols)


def _array_role(feed, key, view: ArrayView):
    names = [view.h.name] if view.cdim is None else None
    return _Role(
        feed, key, view.h.file, view.column_name, "array", view.C, view.S, names=names, view=view
    )


# --------------------------------------------------------------------------- inputs
class Inputs:
    """Opened, validated inputs; iterate :meth:`batches` (each call reads again).

    Attributes: ``class_names`` (one per class, named after the targets),
    ``n_classes``, ``n_rows`` (None when unknown up front: CSV, remote Arrow
    streams), ``layout`` ('wide' | 'list' | 'array', the logits' layout),
    ``sources`` (files, formats and columns used, for the report).

    ``array_shape`` / ``class_dim``: for the array layout (``.npy`` / ``.npz``
    logits), the logits array's shape as stored in the file, e.g. ``(N,)``,
    ``(N, C)`` or ``(N, C, H, W)``, and the axis of that shape holding the classes
    (non-negative: ``class_dim`` as given, ``ndim + class_dim`` when negative;
    ``None`` for a 1-D array).  Batches hold ``np.moveaxis(a, class_dim, 1)``
    with the axes after the class axis flattened, C order, into ``S``:
    ``(n, C, prod(other non-row axes))``; a 1-D array gives ``(n, 1)``, a 2-D one
    ``(n, C)`` unchanged.  :meth:`to_input_layout` undoes exactly that.  For
    tables both are ``None``.  (From :func:`open_targets`, these describe the
    targets array.)
    """

    def __init__(self, spec, feeds, logits, targets: _Role, weight, sources, closers):
        self.spec = spec
        self._feeds = feeds
        self._logits = logits  # None for open_targets
        self._targets = targets
        self._weight = weight  # None | ("const", ndarray) | ("role", _Role, mode)
        self.sources = sources
        self._closers = closers
        self.class_names = targets.class_names()
        self.n_classes = targets.C
        main = logits if logits is not None else targets
        self.layout = main.layout
        self._main_file = (sources.get("preds") or sources.get("labels") or {}).get(
            "path", main.file
        )
        view = main.view if main.layout == "array" else None
        self.array_shape = None if view is None else tuple(view.h.shape)
        self.class_dim = None if view is None else view.cdim
        self._S = None if view is None else view.S
        self.n_rows = None
        for f in feeds:
            if getattr(f, "n_rows", None) is not None:
                self.n_rows = f.n_rows
                break
        self.elements_per_row = targets.C * (targets.S or 1)
        # ``(name, values)`` of the join key (``on``) in batch order, else None: a
        # per-element output keeps it so that its rows can be matched again.
        self.key = None

    def to_input_layout(self, losses):
        """Per-element values (``losses``: the per-batch ``(n, C)`` / ``(n, C, S)``
        arrays concatenated in batch order, ``(N, C)`` / ``(N, C, S)``) back in the
        input file's shape ``array_shape``: a 1-D input gives ``(N,)``; an N-D one
        has ``S`` unflattened and the class axis moved back to ``class_dim``
        (C-contiguous).  For tables (``array_shape`` None) ``losses`` comes back
        unchanged.  Raises ValueError when the shape does not fit.
        """
        if self.array_shape is None:
            return losses
        a = np.asarray(losses)
        shape = self.array_shape
        N = shape[0]
        if len(shape) == 1:
            if a.shape not in ((N, 1), (N,)):
                raise ValueError(
                    f"expected shape ({N}, 1) for an input of shape {shape}, got {a.shape}"
                )
            return a.reshape(N)
        cd = self.class_dim
        C = shape[cd]
        if len(shape) == 2:
            if a.shape != (N, C):
                raise ValueError(
                    f"expected shape ({N}, {C}) for an input of shape {shape}, got {a.shape}"
                )
            return a
        rest = tuple(s for i, s in enumerate(shape[1:], 1) if i != cd)
        if a.shape != (N, C, self._S):
            raise ValueError(
                f"expected shape ({N}, {C}, {self._S}) for an input of shape "
                f"{shape} (class_dim {cd}), got {a.shape}"
            )
        return np.ascontiguousarray(np.moveaxis(a.reshape((N, C) + rest), 1, cd))

    # -- names for messages
    def _role(self, which):
        if which == "logits" and self._logits is not None:
            return self._logits
        return self._targets

    def column_of(self, class_index: int, which: str = "targets") -> str:
        return self._role(which).shown(int(class_index))

    def locate(self, row: int, class_index: int | None = None, which: str = "targets"):
        """``(file, column, row_in_file)`` for a global row (already read) and class."""
        role = self._role(which)
        file, local = role.feed.locate(int(row))
        column = None if class_index is None else role.shown(int(class_index))
        return file, column, local

    def error_at(self, reason, row, class_index=None, which="targets", hint=None, flat=None):
        """An error at one element, placed by its file, column and row in the file.

        ``flat`` is the element's index along the batch's flattened trailing
        axis ``S`` (N-D arrays); it is stated as the element's index inside the
        file's row, so that a message names one position, never a batch index.
        """
        file, column, local = self.locate(row, class_index, which)
        if flat is not None and self.array_shape is not None and len(self.array_shape) > 2:
            reason = f"{reason} at element {self.element_in_row(class_index, flat)} of the row"
        return BCEInputError(reason, file=file, column=column, row=local, hint=hint)

    def element_in_row(self, class_index, flat) -> list:
        """The index inside a row of the input file of batch element ``[:, class_index, flat]``.

        >>> class _I: array_shape, class_dim = (5, 2, 3, 4), 2
        >>> Inputs.element_in_row(_I(), 1, 6)
        [1, 1, 2]
        """
        cd = self.class_dim
        rest = [n for i, n in enumerate(self.array_shape) if i not in (0, cd)]
        inner = [int(i) for i in np.unravel_index(int(flat), rest)] if rest else []
        inner.insert(cd - 1, int(class_index))
        return inner

    # -- data
    def batches(self):
        """Yield :class:`Batch` objects of ``spec.batch_rows`` rows (the last shorter).

        Reading errors (corrupt pages, nulls under nan_policy 'error', ragged lists,
        row counts that turn out to differ) raise BCEInputError naming file,
        column and row.
        """
        its = [iter(f) for f in self._feeds]
        offset = 0
        S = self._targets.S
        while True:
            parts = [next(it, None) for it in its]
            if all(p is None for p in parts):
                break
            if any(p is None for p in parts):
                self._mismatch(parts, offset)
            merged = {}
            for p in parts:
                merged.update(p)
            ns = {v.shape[0] for v in merged.values()}
            if len(ns) != 1:
                self._mismatch(parts, offset, sizes=merged)
            n = ns.pop()
            logits = merged.get("logits")
            targets = merged["targets"]
            if "weight" in merged:
                self._check_weight(merged["weight"], offset)
            weight = self._batch_weight(merged, n, S)
            yield Batch(logits=logits, targets=targets, weight=weight, row_offset=offset)
            offset += n
        if offset == 0:
            raise BCEInputError("the input has no rows", file=self._main_file)

    def _check_weight(self, arr, offset):
        """Refuse a negative, infinite or NaN weight read from a column or file, naming
        its file, column and row (one min and one max per batch when all is well)."""
        if arr.dtype.kind == "b" or arr.size == 0:
            return
        lo = arr.min()
        if arr.dtype.kind in "iu":
            if lo >= 0:
                return
            bad = arr < 0
        else:
            if lo >= 0 and np.isfinite(arr.max()):  # a NaN makes lo >= 0 False
                return
            bad = ~np.isfinite(arr) | (arr < 0)
        index = np.unravel_index(int(np.argmax(bad.reshape(-1))), arr.shape)
        value = arr[index].item()
        role = self._weight[1]
        file, local = role.feed.locate(offset + int(index[0]))
        column = role.shown(int(index[1]) if arr.ndim > 1 else 0)
        raise BCEInputError(f"--weight must be finite and >= 0; got {value!r}", file=file,
                            column=column, row=local)

    def _batch_weight(self, merged, n, S):
        w = self._weight
        if w is None:
            return None
        if w[0] == "const":
            return w[1]
        arr = merged["weight"]
        mode = w[2]
        if mode == "row":
            return arr.reshape((n, 1) if S is None else (n, 1, 1))
        if S is not None and arr.ndim == 2:
            return arr.reshape(n, arr.shape[1], 1)
        return arr

    def _mismatch(self, parts, offset, sizes=None):
        desc = []
        for f, p in zip(self._feeds, parts, strict=False):
            if p is None:
                desc.append(f"{f.source_name} ends after {offset} rows")
            else:
                n = next(iter(p.values())).shape[0]
                desc.append(f"{f.source_name} has at least {offset + n} rows")
        raise BCEInputError(
            "row counts differ: " + "; ".join(desc),
            file=self._main_file,
            hint="the two files must have one row per example, in the same order "
            "(or join them with --on KEY)",
        )

    def close(self):
        for c in self._closers:
            try:
                c()
            except Exception:  # noqa: BLE001 - closing must not mask the real error
                pass
        self._closers = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ------------------------------------------------------------------------- opening
def _open(res, spec):
    if res.fmt in _ARRAY_FORMATS:
        return res
    return _arrow.open_table_source(res, keep_types=(spec.on,) if spec.on else ())


def open_inputs(spec: InputSpec, *, stdin=None) -> Inputs:
    """Open, validate (columns, types, shapes, row counts) and return :class:`Inputs`.

    Everything that can be checked without reading the data is checked here;
    reading errors (corrupt pages, nulls, ragged lists) surface from
    :meth:`Inputs.batches`.  With ``on`` (a join), both inputs' selected columns
    and keys are read into memory here: the join costs about the two inputs'
    selected columns in RAM (plus the key index) instead of one batch.
    """
    if not isinstance(spec, InputSpec):
        raise TypeError("open_inputs expects an InputSpec")
    if spec.preds == "-" and spec.labels == "-":
        raise BCEInputError("only one of PREDS and LABELS can be standard input ('-')")
    res_p = resolve(spec.preds, stdin=stdin)
    res_l = resolve(spec.labels, stdin=stdin) if spec.labels is not None else None
    wspec = parse_weight(spec.weight)
    wcol = wspec.value if wspec is not None and wspec.kind == "column" else None
    exclude = {c for c in (spec.on, wcol) if c}
    closers = []
    src_p = _open(res_p, spec)
    src_l = _open(res_l, spec) if res_l is not None else None
    order = spec.order
    br = spec.batch_rows

    feeds = []
    sources = {
        "preds": {"path": res_p.display, "format": res_p.fmt, "files": _files(res_p)},
        "labels": None
        if res_l is None
        else {"path": res_l.display, "format": res_l.fmt, "files": _files(res_l)},
        "join": spec.on if res_l is not None else None,
    }

    if src_l is None:
        logits, targets, wrole = _one_file(spec, res_p, src_p, exclude, wcol, feeds, closers)
        unpaired = []
    else:
        logits, targets, wrole, unpaired = _two_files(
            spec, res_p, src_p, res_l, src_l, exclude, wcol, feeds, closers
        )

    # shapes
    if (logits.C, logits.S) != (targets.C, targets.S):
        raise BCEInputError(
            f"logits have {_shape_desc(logits)} per row but targets have {_shape_desc(targets)}",
            file=logits.file,
            hint="give as many logit columns / values as target columns / values",
        )

    weight = _weight(spec, wspec, wrole, logits, targets, feeds, order, br)

    # row counts known up front
    known = [(f.source_name, f.n_rows) for f in feeds if f.n_rows is not None]
    if any(n == 0 for _, n in known):
        name = next(s for s, n in known if n == 0)
        raise BCEInputError("the input has no rows", file=name)
    if len({n for _, n in known}) > 1:
        desc = ", ".join(f"{s}: {n} rows" for s, n in known)
        raise BCEInputError(
            f"row counts differ ({desc})",
            file=known[0][0],
            hint="the files must have one row per example, in the same order "
            "(or join them with --on KEY)",
        )
    sources.update(
        logits={"file": logits.file, "columns": [logits.shown(i) for i in range(logits.C)]},
        targets={"file": targets.file, "columns": [targets.shown(i) for i in range(targets.C)]},
        weight=None if wspec is None else {"kind": wspec.kind, "spec": wspec.text},
        layout=logits.layout,
        unpaired=unpaired,
    )
    inputs = Inputs(spec, feeds, logits, targets, weight, sources, closers)
    if spec.on and src_l is not None:  # joined: rows come in PREDS's order, with its keys
        inputs.key = (spec.on, logits.feed.source.table.column(spec.on))
    return inputs


def _files(res):
    if res.buffer is not None:
        return ["<stdin>"]
    return [res.show(f) for f in res.files]


def _shape_desc(role):
    return f"{role.C} classes" + (f" x {role.S} values" if role.S else "")


def _one_file(spec, res, src, exclude, wcol, feeds, closers):
    br, order, pol = spec.batch_rows, spec.order, spec.nan_policy
    if res.fmt == "npy":
        raise BCEInputError(
            "a .npy file holds one array (the logits); give the targets as a second file",
            file=res.display,
            hint="bce eval preds.npy targets.npy",
        )
    if res.fmt == "npz":
        z = NpzArchive(res)
        closers.append(z.close)
        ln = z.pick(spec.logits, LOGIT_NAMES, 0, "logits")
        tn = z.pick(spec.targets, TARGET_NAMES, 1 if len(z.names) == 2 else None, "targets")
        if ln == tn:
            raise BCEInputError(
                f"the logits and the targets would both be array {ln!r}",
                file=z.file,
                hint="name them with --logits NAME --targets NAME",
            )
        lv = ArrayView(z.array(ln), spec.class_dim, "logits")
        tv = ArrayView(z.array(tn), spec.class_dim, "targets")
        feed = _ArrayFeed({"logits": lv, "targets": tv}, br, order)
        feeds.append(feed)
        _check_array_shapes(lv, tv)
        return _array_role(feed, "logits", lv), _array_role(feed, "targets", tv), None
    schema = src.schema
    names = list(schema.names)
    file = res.display
    if spec.logits is None or spec.targets is None:
        dl, dt = _select.default_one_file(schema, exclude, file)
    lcols = _select.explicit(spec.logits, names, file, "logits") if spec.logits else dl
    lset = set(lcols)
    tcols = (
        _select.explicit(spec.targets, names, file, "targets")
        if spec.targets
        else [c for c in dt if c not in lset]
    )
    if spec.logits is None and spec.targets is not None:
        tset = set(tcols)
        lcols = [c for c in lcols if c not in tset]
    for role, cols, pats in (
        ("logits", lcols, _select.LOGIT_PATTERNS),
        ("targets", tcols, _select.TARGET_PATTERNS),
    ):
        if not cols:
            raise BCEInputError(
                f"cannot tell which columns hold the {role}: no numeric column name matches "
                f"{', '.join(pats[:6])}...; columns: {_select._avail(names)}",
                file=file,
                hint="choose with --logits COLS --targets COLS",
            )
    tset = set(tcols)
    both = [c for c in lcols if c in tset]
    if both:
        raise BCEInputError(
            "the same column is selected for logits and targets", file=file, column=both[0]
        )
    lsel0 = _table_sel(src, lcols, "logits", file)
    tsel0 = _table_sel(src, tcols, "targets", file)
    if lsel0.kind == "wide" and tsel0.kind == "wide":
        lcols, tcols, _ = _select.pair(lcols, tcols, file)
        lsel0 = _table_sel(src, lcols, "logits", file)
    roles = {"logits": lsel0, "targets": tsel0}
    wrole_sel = None
    if wcol is not None and _has_column(src, wcol):
        wrole_sel = _weight_sel(src, wcol, file, max(lsel0.n_classes, 1))
        roles["weight"] = wrole_sel[0]
    feed = _arrow.TableFeed(src, roles, br, pol, order)
    feeds.append(feed)
    wrole = None
    if wrole_sel is not None:
        wrole = (_Role(feed, "weight", file, lambda i: wcol, "wide", 1), wrole_sel[1])
    return (
        _table_role(feed, "logits", lsel0, file),
        _table_role(feed, "targets", tsel0, file),
        wrole,
    )


def _has_column(src, col):
    """Whether a table source has column ``col`` (or a column matching the glob)."""
    schema = getattr(src, "schema", None)
    if schema is None:
        return False
    return any(_select.excluded(n, (col,)) for n in schema.names)


def _weight_sel(src, wsel, file, C):
    """(RoleSel, mode) for a weight column selection: mode 'row' or 'element'."""
    names = list(src.schema.names)
    cols = _select.explicit(wsel, names, file, "weight")
    sel = _table_sel(src, cols, "weight", file)
    if sel.kind == "wide" and len(cols) == 1:
        return _arrow.RoleSel("row", cols, sel.dtype), "row"
    if sel.n_classes != C:
        raise BCEInputError(
            f"weight selection {cols} gives {sel.n_classes} values per row for {C} classes",
            file=file,
            column=cols[0],
        )
    return sel, "element"


def _check_array_shapes(lv, tv):
    if (lv.C, lv.S) != (tv.C, tv.S):
        raise BCEInputError(
            f"logits array {lv.h.name!r} has shape {lv.h.shape} but targets array "
            f"{tv.h.name!r} has shape {tv.h.shape}",
            file=lv.h.file,
        )


def _open_array(res, explicit, defaults, role, closers):
    """The one array a .npy holds, or the ``role`` array of a .npz (its only one, if so)."""
    if res.fmt == "npy":
        return open_npy(res, default_array_name(res))
    z = NpzArchive(res)
    closers.append(z.close)
    return z.array(z.pick(explicit, defaults, 0 if len(z.names) == 1 else None, role))


def _side(spec, res, src, role, explicit, exclude, feeds, closers, wcol, chosen=None):
    """Open one side of a two-file input: returns (_Role, weight_role_or_None).

    ``chosen``: the table's columns for the role, already selected and paired."""
    br, order, pol = spec.batch_rows, spec.order, spec.nan_policy
    if res.fmt in _ARRAY_FORMATS:
        defaults = LOGIT_NAMES if role == "logits" else TARGET_NAMES
        h = _open_array(res, explicit, defaults, role, closers)
        view = ArrayView(h, spec.class_dim, role)
        feed = _ArrayFeed({role: view}, br, order)
        feeds.append(feed)
        return _array_role(feed, role, view), None
    file = res.display
    names = list(src.schema.names)
    if chosen is not None:
        cols = chosen
    elif explicit:
        cols = _select.explicit(explicit, names, file, role)
    else:
        cols = _select.default_all_numeric(src.schema, exclude, skip_keys=True)
        if not cols:
            raise BCEInputError(
                f"no numeric column (other than key-like ones such as 'id') to use as {role}; "
                f"columns: {_select._avail(names)}",
                file=file,
                hint=f"choose with --{role} COLS",
            )
    sel = _table_sel(src, cols, role, file)
    roles = {role: sel}
    wrole = None
    if wcol is not None and _has_column(src, wcol):
        wsel, mode = _weight_sel(src, wcol, file, sel.n_classes)
        roles["weight"] = wsel
        wrole = ("pending", mode)
    feed = _arrow.TableFeed(src, roles, br, pol, order)
    feeds.append(feed)
    if wrole is not None:
        wrole = (_Role(feed, "weight", file, lambda i: wcol, "wide", 1), wrole[1])
    return _table_role(feed, role, sel, file), wrole


def _two_files(spec, res_p, src_p, res_l, src_l, exclude, wcol, feeds, closers):
    unpaired = []
    if spec.on:
        src_p, src_l = _join(spec, res_p, src_p, res_l, src_l, exclude, wcol)
    # wide + wide: pair the column lists before building the feeds
    lexp, texp = spec.logits, spec.targets
    lchosen = tchosen = None
    if res_p.fmt not in _ARRAY_FORMATS and res_l.fmt not in _ARRAY_FORMATS:
        lcols = (
            _select.explicit(lexp, list(src_p.schema.names), res_p.display, "logits")
            if lexp
            else _select.default_all_numeric(src_p.schema, exclude, skip_keys=True)
        )
        tcols = (
            _select.explicit(texp, list(src_l.schema.names), res_l.display, "targets")
            if texp
            else _select.default_all_numeric(src_l.schema, exclude, skip_keys=True)
        )
        if (
            lcols
            and tcols
            and not any(_arrow.is_list(src_p.schema.field(c).type) for c in lcols)
            and not any(_arrow.is_list(src_l.schema.field(c).type) for c in tcols)
        ):
            lcols, tcols, dropped = _select.common_subset(lcols, tcols, not lexp, not texp)
            if dropped:
                unpaired = dropped
            if len(lcols) != len(tcols):
                raise BCEInputError(
                    f"{len(lcols)} logit column(s) in {res_p.display} {lcols} but "
                    f"{len(tcols)} target column(s) in {res_l.display} {tcols}",
                    file=res_p.display,
                    hint="choose them with --logits COLS --targets COLS",
                )
            lchosen, tchosen, _ = _select.pair(lcols, tcols, res_p.display)
    logits, wr_p = _side(spec, res_p, src_p, "logits", lexp, exclude, feeds, closers, wcol,
                         lchosen)
    targets, wr_l = _side(
        spec, res_l, src_l, "targets", texp, exclude, feeds, closers, None if wr_p else wcol,
        tchosen,
    )
    return logits, targets, wr_p or wr_l, unpaired


# ---------------------------------------------------------------------------- join
def _join(spec, res_p, src_p, res_l, src_l, exclude, wcol):
    on = spec.on
    for res, src in ((res_p, src_p), (res_l, src_l)):
        if res.fmt in _ARRAY_FORMATS:
            raise BCEInputError(
                "--on needs two tables (a NumPy file has no key column)", file=res.display
            )
        if src.schema.get_field_index(on) < 0:
            raise BCEInputError(
                f"no key column for --on; available: {_select._avail(list(src.schema.names))}",
                file=res.display,
                column=on,
            )
    # only the key, the selected columns and the weight are loaded
    tp = _load_all(
        src_p, res_p.display, _join_columns(spec.logits, src_p, res_p, on, exclude, wcol)
    )
    tl = _load_all(
        src_l, res_l.display, _join_columns(spec.targets, src_l, res_l, on, exclude, wcol)
    )
    kp, kl = tp.column(on), tl.column(on)
    for key, res in ((kp, res_p), (kl, res_l)):
        if _arrow.nested(key.type):
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
                if name != on and col.null_count and _arrow.column_kind(col.type):
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
        _arrow.MemorySource(res_p, tp, res_p.display + " (joined)"),
        _arrow.MemorySource(res_l, tl, res_l.display + f" (joined on {on})"),
    )


def _join_columns(selection, src, res, on, exclude, wcol):
    names = list(src.schema.names)
    if selection:
        cols = _select.explicit(selection, names, res.display, "columns")
    else:
        cols = _select.default_all_numeric(src.schema, exclude, skip_keys=True)
    chosen = set(cols)
    extra = [n for n in names if wcol and _select.excluded(n, (wcol,)) and n not in chosen]
    return [on] + [c for c in cols + extra if c != on]


def _load_all(src, display, columns):
    batches = [rb for rb, _, _ in src.batches(columns, 1 << 16)]
    if not batches:
        raise BCEInputError("the input has no rows", file=display)
    return pa.Table.from_batches(batches).combine_chunks()


# -------------------------------------------------------------------------- weight
def _weight(spec, wspec, wrole, logits, targets, feeds, order, br):
    if wspec is None:
        return None
    C, S = targets.C, targets.S
    nd = 2 if S is None else 3
    if wspec.kind == "const":
        return ("const", np.full((1,) * nd, wspec.value[0], dtype=np.float64))
    if wspec.kind == "per_class":
        if len(wspec.value) != C:
            raise BCEInputError(
                f"--weight gives {len(wspec.value)} numbers for {C} classes "
                f"({', '.join(targets.class_names())})"
            )
        return ("const", wspec.value.reshape((1, C) if S is None else (1, C, 1)))
    if wspec.kind == "column":
        if wrole is None:
            raise BCEInputError(
                f"no weight column {wspec.value!r} in the input(s)",
                file=spec.preds,
                column=wspec.value,
                hint="--weight takes a column name, a number, C numbers or a .npy file",
            )
        return ("role", wrole[0], wrole[1])
    # file
    res = resolve(wspec.value)
    if res.fmt != "npy":
        raise BCEInputError("a weight file must be a .npy array", file=res.display)
    h = open_npy(res, "weight")
    shape = h.shape
    n_rows = next((f.n_rows for f in feeds if f.n_rows is not None), None)
    if len(shape) == 1 and shape[0] == C and C > 1:
        values = checked_factors(h.arr, "--weight", targets.class_names(), file=h.file)
        return ("const", values.reshape((1, C) + ((1,) if S else ())))
    if h.arr.size == 1:
        value = checked_factors(np.asarray(h.arr).reshape(-1), "--weight", file=h.file)
        return ("const", np.full((1,) * nd, value[0]))
    if shape[0] == 1:
        v = ArrayView(MemArray(h.file, "weight", np.asarray(h.arr)), spec.class_dim, "weight")
        blk = next(v.blocks(1, "C"))
        return ("const", _check_weight_block(blk, C, S, h))
    if n_rows is not None and shape[0] != n_rows:
        raise BCEInputError(
            f"weight array has {shape[0]} rows, the input has {n_rows}", file=h.file
        )
    view = ArrayView(h, spec.class_dim, "weight")
    if (view.C, view.S) not in ((C, S), (1, S), (1, None)):
        raise BCEInputError(
            f"weight array of shape {shape} does not broadcast to {C} classes"
            + (f" x {S}" if S else ""),
            file=h.file,
        )
    feed = _ArrayFeed({"weight": view}, br, order)
    feeds.append(feed)
    return ("role", _array_role(feed, "weight", view), "element")


def _check_weight_block(blk, C, S, h):
    try:
        np.broadcast_shapes(blk.shape, (1, C) if S is None else (1, C, S))
    except ValueError:
        raise BCEInputError(
            f"weight array of shape {h.shape} does not broadcast", file=h.file
        ) from None
    return checked_factors(blk, "--weight", file=h.file)


# ---------------------------------------------------------------------- targets only
def open_targets(
    path: str,
    *,
    targets: str | None = None,
    batch_rows: int = 65536,
    nan_policy: str = "error",
    class_dim: int = 1,
    stdin=None,
) -> Inputs:
    """Open a file holding only targets (``bce suggest-pos-weight LABELS``).

    Same formats as :func:`open_inputs`.  Which values are the targets:
    ``targets`` (comma-separated column names / globs, or the ``.npz`` array
    name) when given; else, for a table, the columns matching the target name
    patterns (``target*``, ``label*``, ... see ``_select.TARGET_PATTERNS``) and,
    when none match, every numeric / bool / numeric-list column; key-like
    columns (``id``, ``*_id``, ``index``... see ``_select.is_key_like``) are
    never picked by default.  A ``.npz`` uses ``targets`` (or ``target``,
    ``labels``, ``label``, ``y_true``, ``y``) or its only array.

    Returns an :class:`Inputs` whose batches have ``targets`` set (shape
    ``(n, C)`` or ``(n, C, S)``, the stored dtype kept: bool stays bool) and
    ``logits`` None; ``spec`` is an :class:`InputSpec` with ``preds`` = ``path``;
    ``sources["labels"]`` describes the file (``sources["preds"]`` is None).
    """
    spec = InputSpec(
        path, targets=targets, batch_rows=batch_rows, nan_policy=nan_policy, class_dim=class_dim
    )
    res = resolve(path, stdin=stdin)
    closers = []
    feeds = []
    br, order = spec.batch_rows, spec.order
    try:
        if res.fmt in _ARRAY_FORMATS:
            h = _open_array(res, targets, TARGET_NAMES, "targets", closers)
            view = ArrayView(h, spec.class_dim, "targets")
            feed = _ArrayFeed({"targets": view}, br, order)
            role = _array_role(feed, "targets", view)
        else:
            src = _arrow.open_table_source(res)
            file = res.display
            names = list(src.schema.names)
            if targets:
                cols = _select.explicit(targets, names, file, "targets")
            else:
                cols = _select.default_targets(src.schema, ())
                if not cols:
                    raise BCEInputError(
                        "no numeric or bool column (other than key-like ones such as 'id') "
                        f"to use as targets; columns: {_select._avail(names)}",
                        file=file,
                        hint="choose with --targets COLS",
                    )
            sel = _table_sel(src, cols, "targets", file)
            feed = _arrow.TableFeed(src, {"targets": sel}, br, spec.nan_policy, order)
            role = _table_role(feed, "targets", sel, file)
        feeds.append(feed)
        if feed.n_rows == 0:
            raise BCEInputError("the input has no rows", file=res.display)
    except BaseException:
        for c in closers:
            c()
        raise
    sources = {
        "preds": None,
        "labels": {"path": res.display, "format": res.fmt, "files": _files(res)},
        "join": None,
        "logits": None,
        "targets": {"file": role.file, "columns": [role.shown(i) for i in range(role.C)]},
        "weight": None,
        "layout": role.layout,
        "unpaired": [],
    }
    return Inputs(spec, feeds, None, role, None, sources, closers)
