"""Which columns hold the logits and which the targets.

Explicit selections (``--logits`` / ``--targets``) are comma-separated names or
glob patterns, matched in the file's column order; a name that is missing, or a
pattern that matches nothing, is an error listing the available columns.

Default selection, one file holding both: columns whose lower-cased name matches
``LOGIT_PATTERNS`` are logits, those matching ``TARGET_PATTERNS`` targets
(a column matching both is an error).  Default selection, two files: every
numeric / bool / numeric-list column of each file.  Defaults never pick the join
key (``on``) or the weight column, and skip non-numeric columns.

Pairing: when the two selections have the same names, they are paired by name;
else when their names minus the usual prefixes / suffixes (``logit_``,
``_target``...) agree, by that stem; else by position.  Classes follow the
targets' order; a class is named after its target column.
"""

from __future__ import annotations

import fnmatch

from bce_cli.errors import BCEInputError

from ._arrow import column_kind

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


def excluded(name, exclude) -> bool:
    """True when ``name`` is, or matches a glob in, ``exclude`` (key and weight)."""
    return any(name == e or (_GLOB & set(e) and fnmatch.fnmatchcase(name, e)) for e in exclude)


def _avail(names, limit=30):
    shown = ", ".join(names[:limit])
    if len(names) > limit:
        shown += f", ... ({len(names)} in all)"
    return shown or "(none)"


def explicit(selection: str, names: list, file: str, role: str) -> list:
    chosen = []
    for item in (s.strip() for s in selection.split(",")):
        if not item:
            continue
        if _GLOB & set(item):
            hits = [n for n in names if fnmatch.fnmatchcase(n, item)]
            if not hits:
                raise BCEInputError(
                    f"no column matches {item!r} for the {role}; available: {_avail(names)}",
                    file=file,
                    column=item,
                )
        else:
            if item not in names:
                raise BCEInputError(
                    f"no such column for the {role}; available: {_avail(names)}",
                    file=file,
                    column=item,
                )
            hits = [item]
        chosen.extend(h for h in hits if h not in chosen)
    if not chosen:
        raise BCEInputError(f"empty selection for the {role}", file=file)
    return chosen


def _matches(name, patterns):
    low = name.lower()
    return any(fnmatch.fnmatchcase(low, p) for p in patterns)


def default_one_file(schema, exclude, file):
    names = [n for n in schema.names if not excluded(n, exclude)]
    usable = [n for n in names if column_kind(schema.field(n).type)]
    logits = [n for n in usable if _matches(n, LOGIT_PATTERNS)]
    targets = [n for n in usable if _matches(n, TARGET_PATTERNS)]
    both = [n for n in logits if n in targets]
    if both:
        raise BCEInputError(
            f"column names {both} look like both logits and targets",
            file=file,
            column=both[0],
            hint="choose with --logits COLS --targets COLS",
        )
    return logits, targets


def default_all_numeric(schema, exclude):
    return [
        n for n in schema.names if not excluded(n, exclude) and column_kind(schema.field(n).type)
    ]


def stem(name: str) -> str:
    low = name.lower()
    for p in _PREFIXES:
        if low.startswith(p) and len(low) > len(p):
            return low[len(p) :]
    for s in _SUFFIXES:
        if low.endswith(s) and len(low) > len(s):
            return low[: -len(s)]
    return low


def pair(logits: list, targets: list, where: str) -> tuple:
    """Reorder logits to pair with targets; raise on a count mismatch."""
    if len(logits) != len(targets):
        raise BCEInputError(
            f"{len(logits)} logit column(s) {logits} but {len(targets)} target column(s) "
            f"{targets}; they must pair one to one",
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
