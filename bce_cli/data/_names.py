"""The naming rules: which column names hold the logits, the targets and keys, and how
logit and target names pair up.

Explicit selections (``--logits`` / ``--targets``) are comma-separated names or
glob patterns, matched in the file's column order; a name that is missing, or a
pattern that matches nothing, is an error listing the available columns.

Default selection, one file holding both: columns whose lower-cased name matches
``LOGIT_PATTERNS`` are logits, those matching ``TARGET_PATTERNS`` targets
(a column matching both is an error).  Default selection, two files: every
numeric / bool / numeric-list column of each file except key-like columns
(:func:`is_key_like`: named ``id``, ``key``, ``index``, ``row``, ``row_id``,
``__index_level_0__`` or ending in ``_id``, case-insensitive).  Defaults never
pick the join key (``on``) or the weight column, and skip non-numeric columns.

Pairing: when the two selections have the same names, they are paired by name;
when one default selection's names are a strict subset of the other's, the
common names are used (in the targets' order); else when their names minus the
usual prefixes / suffixes (``logit_``, ``_target``...) agree, by that stem; else
by position.  Classes follow the targets' order; a class is named after its
target column.  Explicit selections are used as given.
"""

from __future__ import annotations

import fnmatch

from bce_cli.errors import BCEInputError

from ._convert import column_kind

LOGIT_PATTERNS = (
    "logit*",
    "*_logit",
    "*_logits",
    "pred*",
    "*_pred",
    "*_preds",
    "y_pred*",
    "yhat*",
    "score*",
    "*_score",
    "output*",
)
TARGET_PATTERNS = (
    "target*",
    "*_target",
    "*_targets",
    "label*",
    "*_label",
    "*_labels",
    "y_true*",
    "truth*",
    "*_truth",
    "gt_*",
    "y",
)
_PREFIXES = tuple(
    p + sep
    for p in (
        "logits",
        "logit",
        "predictions",
        "prediction",
        "preds",
        "pred",
        "y_pred",
        "yhat",
        "scores",
        "score",
        "outputs",
        "output",
        "targets",
        "target",
        "labels",
        "label",
        "y_true",
        "truth",
        "gt",
    )
    for sep in ("_", "-", ".")
)
_SUFFIXES = tuple(
    sep + p
    for p in (
        "logits",
        "logit",
        "preds",
        "pred",
        "score",
        "targets",
        "target",
        "labels",
        "label",
        "truth",
    )
    for sep in ("_", "-", ".")
)
_GLOB = set("*?[")
KEY_NAMES = ("id", "key", "index", "row", "row_id", "__index_level_0__")


def is_key_like(name: str) -> bool:
    """A row key / index column that a default selection leaves out."""
    low = str(name).lower()
    return low in KEY_NAMES or (low.endswith("_id") and len(low) > 3)


def excluded(name, exclude) -> bool:
    """True when ``name`` is, or matches a glob in, ``exclude`` (key and weight)."""
    return any(name == e or (_GLOB & set(e) and fnmatch.fnmatchcase(name, e)) for e in exclude)


def avail(names, limit=30):
    shown = ", ".join(names[:limit])
    if len(names) > limit:
        shown += f", ... ({len(names)} in all)"
    return shown or "(none)"


def explicit(selection: str, names: list, file: str, role: str) -> list:
    """The columns named or matched by ``selection``, each once, in the order given
    (time linear in the number of names and columns)."""
    known = set(names)
    chosen = {}  # an ordered set
    for item in (s.strip() for s in selection.split(",")):
        if not item:
            continue
        if _GLOB & set(item):
            hits = [n for n in names if fnmatch.fnmatchcase(n, item)]
            if not hits:
                raise BCEInputError(
                    f"no column matches {item!r} for the {role}; available: {avail(names)}",
                    file=file,
                    column=item,
                )
        else:
            if item not in known:
                raise BCEInputError(
                    f"no such column for the {role}; available: {avail(names)}",
                    file=file,
                    column=item,
                )
            hits = [item]
        chosen.update(dict.fromkeys(hits))
    if not chosen:
        raise BCEInputError(f"empty selection for the {role}", file=file)
    return list(chosen)


def _matches(name, patterns):
    low = name.lower()
    return any(fnmatch.fnmatchcase(low, p) for p in patterns)


def default_one_file(schema, exclude, file):
    names = [n for n in schema.names if not excluded(n, exclude)]
    usable = [n for n in names if column_kind(schema.field(n).type)]
    logits = [n for n in usable if _matches(n, LOGIT_PATTERNS)]
    targets = [n for n in usable if _matches(n, TARGET_PATTERNS)]
    target_set = set(targets)
    both = [n for n in logits if n in target_set]
    if both:
        raise BCEInputError(
            f"column names {both} look like both logits and targets",
            file=file,
            column=both[0],
            hint="choose with --logits COLS --targets COLS",
        )
    return logits, targets


def default_all_numeric(schema, exclude, skip_keys=False):
    """Every numeric / bool / numeric-list column not excluded (nor key-like, with
    ``skip_keys``)."""
    return [
        n
        for n in schema.names
        if not excluded(n, exclude)
        and not (skip_keys and is_key_like(n))
        and column_kind(schema.field(n).type)
    ]


def default_targets(schema, exclude):
    """Default target columns of a file holding only targets: the non-key columns
    matching ``TARGET_PATTERNS`` if any, else every numeric non-key column."""
    usable = default_all_numeric(schema, exclude, skip_keys=True)
    matched = [n for n in usable if _matches(n, TARGET_PATTERNS)]
    return matched or usable


def common_subset(logits: list, targets: list, l_default: bool, t_default: bool):
    """When one side's names are a strict subset of the other's, and the larger side
    was chosen by default, narrow it to the common names.  Returns
    ``(logits, targets, dropped)``; unchanged (``dropped`` empty) otherwise."""
    sl, st = set(logits), set(targets)
    if len(sl) != len(logits) or len(st) != len(targets):
        return logits, targets, []
    if sl < st and t_default:
        return logits, [t for t in targets if t in sl], [t for t in targets if t not in sl]
    if st < sl and l_default:
        return [c for c in logits if c in st], targets, [c for c in logits if c not in st]
    return logits, targets, []


def stem(name: str) -> str:
    low = name.lower()
    for p in _PREFIXES:
        if low.startswith(p) and len(low) > len(p):
            return low[len(p) :]
    for s in _SUFFIXES:
        if low.endswith(s) and len(low) > len(s):
            return low[: -len(s)]
    return low


def pair(logits: list, targets: list, where: str, files=None) -> tuple:
    """Reorder logits to pair with targets; raise on a count mismatch (``files``: the
    names of the logits' and the targets' files, when they are two)."""
    if len(logits) != len(targets):
        if files is None:
            counts = (f"{len(logits)} logit column(s) {logits} but {len(targets)} target "
                      f"column(s) {targets}; they must pair one to one")
        else:
            counts = (f"{len(logits)} logit column(s) in {files[0]} {logits} but "
                      f"{len(targets)} target column(s) in {files[1]} {targets}")
        raise BCEInputError(
            counts,
            file=where,
            hint="choose them with --logits COLS --targets COLS",
        )
    if set(logits) == set(targets) and len(set(targets)) == len(targets):
        return [t for t in targets], targets, "name"
    ls, ts = [stem(n) for n in logits], [stem(n) for n in targets]
    if set(ls) == set(ts) and len(set(ls)) == len(ls) and len(set(ts)) == len(ts):
        by = dict(zip(ls, logits, strict=False))
        return [by[s] for s in ts], targets, "stem"
    return list(logits), list(targets), "position"
