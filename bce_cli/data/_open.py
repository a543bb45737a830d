"""Opening: from an :class:`InputSpec` (or a targets-only path) to :class:`Inputs`: files
found and opened, roles chosen, feeds built, shapes, weights and row counts checked;
whatever was opened is closed again when any step fails."""

from __future__ import annotations

from bce_cli._lazy import lazy
from bce_cli.errors import BCEInputError

from ._feeds import ArrayFeed, Role, TableFeed, array_role, table_role
from ._inputs import Inputs, close_all
from ._numpy import LOGIT_NAMES, TARGET_NAMES, ArrayView, NpzArchive, default_array_name, open_npy
from ._paths import resolve
from ._spec import InputSpec
from ._weights import ResolvedWeight, parse_weight, resolve_weight

# Tables only: an array input never imports pyarrow.
_columns = lazy("bce_cli.data._columns")
_join = lazy("bce_cli.data._join")
_names = lazy("bce_cli.data._names")
_sources = lazy("bce_cli.data._sources")

_ARRAY_FORMATS = ("npy", "npz")


def open_inputs(spec: InputSpec, *, stdin=None, joined=None) -> Inputs:
    """Open, validate (columns, types, shapes, row counts) and return :class:`Inputs`.

    Everything that can be checked without reading the data is checked here;
    reading errors (corrupt pages, nulls, ragged lists) surface from
    :meth:`Inputs.batches`.  With ``on`` (a join), both inputs' selected columns
    and keys are read into memory here: the join costs about the two inputs'
    selected columns in RAM (plus the key index) instead of one batch.  ``joined``
    replaces that join: ``joined(spec, res_p, src_p, res_l, src_l, exclude, wcol)``
    returns the two joined sources (``--engine dask``: the rows of one task, joined
    by Dask's merge; see :func:`bce_cli.data._join.memory_sources`).
    """
    if not isinstance(spec, InputSpec):
        raise TypeError("open_inputs expects an InputSpec")
    if spec.preds == "-" and spec.labels == "-":
        raise BCEInputError("only one of PREDS and LABELS can be standard input ('-')")
    res_p = resolve(spec.preds, stdin=stdin)
    res_l = resolve(spec.labels, stdin=stdin) if spec.labels is not None else None
    wspec = parse_weight(spec.weight)
    closers = []
    try:
        return _open_inputs(spec, res_p, res_l, wspec, closers, joined)
    except BaseException:
        close_all(closers)
        raise


def _open_inputs(spec, res_p, res_l, wspec, closers, joined=None) -> Inputs:
    wcol = wspec.value if wspec is not None and wspec.kind == "column" else None
    exclude = {c for c in (spec.on, wcol, spec.by) if c}
    src_p = _open_table(res_p, spec)
    src_l = _open_table(res_l, spec) if res_l is not None else None
    by_side = _by_side(spec, res_p, src_p, res_l, src_l)
    feeds = []
    sources = {
        "preds": {"path": res_p.display, "format": res_p.fmt, "files": _files(res_p)},
        "labels": None
        if res_l is None
        else {"path": res_l.display, "format": res_l.fmt, "files": _files(res_l)},
        "join": spec.on if res_l is not None else None,
    }

    if res_l is None:
        logits, targets, wread = _one_file(spec, res_p, src_p, exclude, wcol, feeds, closers)
        unpaired = []
    else:
        if spec.on:
            src_p, src_l = (joined or _join.join)(spec, res_p, src_p, res_l, src_l, exclude,
                                                  wcol)
        lcols = tcols = None
        unpaired = []
        if src_p is not None and src_l is not None:
            lcols, tcols, unpaired = _columns.pair_tables(
                src_p, spec.logits, res_p.display, src_l, spec.targets, res_l.display, exclude
            )
        logits, wread = _side(spec, res_p, src_p, "logits", spec.logits, exclude, feeds, closers,
                              wcol, lcols, by=spec.by if by_side == "preds" else None)
        targets, wread_l = _side(spec, res_l, src_l, "targets", spec.targets, exclude, feeds,
                                 closers, None if wread else wcol, tcols,
                                 by=spec.by if by_side == "labels" else None)
        wread = wread or wread_l

    if (logits.C, logits.S) != (targets.C, targets.S):
        raise BCEInputError(
            f"logits have {_shape_desc(logits)} per row but targets have {_shape_desc(targets)}",
            file=logits.file,
            hint="give as many logit columns / values as target columns / values",
        )
    weight = resolve_weight(wspec, wread, targets, feeds, spec)
    _check_row_counts(feeds)
    sources.update(
        logits={"file": logits.file, "columns": [logits.shown(i) for i in range(logits.C)]},
        targets={"file": targets.file, "columns": [targets.shown(i) for i in range(targets.C)]},
        weight=None if wspec is None else {"kind": wspec.kind, "spec": wspec.text},
        layout=logits.layout,
        unpaired=unpaired,
    )
    if spec.by:
        sources["by"] = {"column": spec.by, "from": by_side}
    inputs = Inputs(spec, feeds, logits, targets, weight, sources, closers)
    if spec.on and src_l is not None:  # joined: rows come in PREDS's order, with its keys
        inputs.key = (spec.on, logits.feed.source.table.column(spec.on))
    return inputs


def _open_table(res, spec):
    """The table source of a table input; None for a NumPy file."""
    if res.fmt in _ARRAY_FORMATS:
        return None
    return _sources.open_table_source(res, keep_types=tuple(c for c in (spec.on, spec.by) if c))


def _by_side(spec, res_p, src_p, res_l, src_l) -> str | None:
    """Which input holds the ``--by`` column: "preds" (looked at first) or "labels";
    None without ``--by``.  A NumPy file has no named columns."""
    if not spec.by:
        return None
    sides = [("preds", res_p, src_p)] + ([("labels", res_l, src_l)] if res_l is not None else [])
    tables = [(name, res, src) for name, res, src in sides if src is not None]
    for name, res, src in tables:
        if src.schema.get_field_index(spec.by) >= 0:
            _columns.group_key(src, spec.by, res.display)  # checks the type
            return name
    if not tables:
        raise BCEInputError(
            "--by needs a table (Parquet, Arrow, CSV): a NumPy file has no named columns",
            file=res_p.display,
            hint="save the predictions with a group column as Parquet",
        )
    names = [n for _, _, src in tables for n in src.schema.names]
    raise BCEInputError(
        f"no column for --by; available: {_names.avail(names)}",
        file=", ".join(res.display for _, res, _ in tables),
        column=spec.by,
    )


def _check_row_counts(feeds):
    """Row counts known up front: none empty, all equal."""
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


def _files(res):
    if res.buffer is not None:
        return ["<stdin>"]
    return [res.show(f) for f in res.files]


def _shape_desc(role):
    return f"{role.C} classes" + (f" x {role.S} values" if role.S else "")


def _one_file(spec, res, src, exclude, wcol, feeds, closers):
    """``(logits, targets, weight read from a column or None)`` of one file holding both."""
    br, order = spec.batch_rows, spec.order
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
        feed = ArrayFeed({"logits": lv, "targets": tv}, br, order, spec.rows)
        feeds.append(feed)
        _check_array_shapes(lv, tv)
        return array_role(feed, "logits", lv), array_role(feed, "targets", tv), None
    file = res.display
    lsel, tsel = _columns.one_file(src, spec.logits, spec.targets, exclude, file)
    (logits, targets), wread = _table_feed(spec, src, file, {"logits": lsel, "targets": tsel},
                                           wcol, max(lsel.n_classes, 1), feeds, spec.by)
    return logits, targets, wread


def _side(spec, res, src, role, chosen, exclude, feeds, closers, wcol, columns=None, by=None):
    """Open one side of a two-file input: ``(Role, weight read from a column or None)``.

    ``columns``: the table's columns for the role, already chosen and paired with the
    other side's (else they are chosen here from ``chosen``); ``by``: the ``--by``
    column, when this side's feed reads it."""
    if res.fmt in _ARRAY_FORMATS:
        defaults = LOGIT_NAMES if role == "logits" else TARGET_NAMES
        h = _open_array(res, chosen, defaults, role, closers)
        view = ArrayView(h, spec.class_dim, role)
        feed = ArrayFeed({role: view}, spec.batch_rows, spec.order, spec.rows)
        feeds.append(feed)
        return array_role(feed, role, view), None
    file = res.display
    if columns is None:
        columns = _columns.one_side(src, chosen, role, exclude, file)
    sel = _columns.selection(src, columns, role, file)
    (made,), wread = _table_feed(spec, src, file, {role: sel}, wcol, sel.n_classes, feeds, by)
    return made, wread


def _table_feed(spec, src, file, selections, wcol, C, feeds, by=None):
    """One feed for a table's ``selections`` (and its weight column, when it has
    ``wcol``; the ``--by`` column ``by``, as role "key"): ``([Role per selection],
    weight read or None)``."""
    roles = dict(selections)
    if by is not None:
        roles["key"] = _columns.group_key(src, by, file)
    wsel = None
    if wcol is not None and _columns.has_column(src, wcol):
        wsel, per_row = _columns.weight(src, wcol, file, C)
        roles["weight"] = wsel
    feed = TableFeed(src, roles, spec.batch_rows, spec.nan_policy, spec.order, spec.rows)
    feeds.append(feed)
    wread = None
    if wsel is not None:
        wread = ResolvedWeight(role=Role(feed, "weight", file, lambda i: wcol, "wide", 1),
                               per_row=per_row)
    return [table_role(feed, key, sel, file) for key, sel in selections.items()], wread


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


# ---------------------------------------------------------------------- targets only
def open_targets(
    path: str,
    *,
    targets: str | None = None,
    batch_rows: int = 65536,
    nan_policy: str = "error",
    class_dim: int = 1,
    stdin=None,
    rows: tuple[int, int] | None = None,
) -> Inputs:
    """Open a file holding only targets (``bce suggest-pos-weight LABELS``).

    Same formats as :func:`open_inputs`.  Which values are the targets:
    ``targets`` (comma-separated column names / globs, or the ``.npz`` array
    name) when given; else, for a table, the columns matching the target name
    patterns (``target*``, ``label*``, ... see ``_names.TARGET_PATTERNS``) and,
    when none match, every numeric / bool / numeric-list column; key-like
    columns (``id``, ``*_id``, ``index``... see ``_names.is_key_like``) are
    never picked by default.  A ``.npz`` uses ``targets`` (or ``target``,
    ``labels``, ``label``, ``y_true``, ``y``) or its only array.

    Returns an :class:`Inputs` whose batches have ``targets`` set (shape
    ``(n, C)`` or ``(n, C, S)``, the stored dtype kept: bool stays bool) and
    ``logits`` None; ``spec`` is an :class:`InputSpec` with ``preds`` = ``path``;
    ``sources["labels"]`` describes the file (``sources["preds"]`` is None).
    ``rows``: only these global rows (see :class:`InputSpec`).
    """
    spec = InputSpec(
        path, targets=targets, batch_rows=batch_rows, nan_policy=nan_policy, class_dim=class_dim,
        rows=rows,
    )
    res = resolve(path, stdin=stdin)
    closers = []
    feeds = []
    br, order = spec.batch_rows, spec.order
    try:
        if res.fmt in _ARRAY_FORMATS:
            h = _open_array(res, targets, TARGET_NAMES, "targets", closers)
            view = ArrayView(h, spec.class_dim, "targets")
            feed = ArrayFeed({"targets": view}, br, order, spec.rows)
            role = array_role(feed, "targets", view)
        else:
            src = _sources.open_table_source(res)
            sel = _columns.targets_only(src, targets, res.display)
            feed = TableFeed(src, {"targets": sel}, br, spec.nan_policy, order, spec.rows)
            role = table_role(feed, "targets", sel, res.display)
        feeds.append(feed)
        if feed.n_rows == 0:
            raise BCEInputError("the input has no rows", file=res.display)
    except BaseException:
        close_all(closers)
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
