"""Weights: the ``--weight`` and ``--pos-weight`` specifications, and ``--weight`` resolved
against the opened inputs (a constant, or values read with each batch)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np

from bce_cli.errors import BCEInputError, printable

from ._feeds import ArrayFeed, Role, array_role
from ._numpy import NPY_ERRORS, ArrayView, MemArray, load_error, open_npy
from ._paths import check_regular, read_json, resolve


def _number(text):
    try:
        return float(text)
    except ValueError:
        return None


def checked_factors(values, flag, names=None, file=None) -> np.ndarray:
    """``values`` as float64, refusing NaN, infinite and negative factors: PyTorch
    accepts negative weights, but no evaluation means them, and one NaN or inf
    would make the whole loss NaN or inf."""
    arr = np.asarray(values, dtype=np.float64)
    bad = ~np.isfinite(arr) | (arr < 0)
    if bad.any():
        i = int(np.argmax(bad.reshape(-1)))
        where = "" if arr.size == 1 else (
            f" for class {names[i]!r}" if names is not None and i < len(names) else
            f" at position {i}")
        raise BCEInputError(f"{flag} must be finite and >= 0; got "
                            f"{float(arr.reshape(-1)[i])!r}{where}", file=file)
    return arr


@dataclass
class WeightSpec:
    """kind: 'const' (value: float64 array (1,)), 'per_class' (float64 (C,) or None
    until checked), 'file' (value: path), 'column' (value: name)."""

    kind: str
    value: object
    text: str


def parse_weight(spec_str, class_names=None) -> WeightSpec | None:
    """Classify a ``--weight`` string.

    >>> parse_weight("0.5").kind, parse_weight("1,2").kind, parse_weight("w").kind
    ('const', 'per_class', 'column')
    >>> parse_weight("w.npy").kind
    'file'
    """
    if spec_str is None:
        return None
    text = str(spec_str).strip()
    if not text:
        raise BCEInputError("empty --weight")
    v = _number(text)
    if v is not None:
        return WeightSpec("const", checked_factors([v], "--weight"), text)
    if "," in text:
        parts = [p.strip() for p in text.split(",")]
        vals = [_number(p) for p in parts]
        if all(x is not None for x in vals):
            arr = np.array(vals, dtype=np.float64)
            if class_names is not None and len(arr) != len(class_names):
                raise BCEInputError(
                    f"--weight gives {len(arr)} numbers for {len(class_names)} classes "
                    f"({', '.join(map(str, class_names))})"
                )
            return WeightSpec("per_class", checked_factors(arr, "--weight", class_names),
                              text)
    if (
        text.lower().endswith(".npy")
        or (os.sep in text or text.startswith("."))
        and os.path.exists(text)
    ):
        return WeightSpec("file", text, text)
    return WeightSpec("column", text, text)


# ------------------------------------------------ a weight resolved against the inputs
@dataclass
class ResolvedWeight:
    """The weight of every batch: ``const``, an array that broadcasts to the batch shape,
    or values read with the inputs (``role``: where they come from; ``per_row``: one
    value per row, else one per class or element)."""

    const: np.ndarray | None = None
    role: Role | None = None
    per_row: bool = False

    def for_batch(self, values, n, S, offset) -> np.ndarray:
        """The batch's weight, from the ``values`` read for it (None for a constant):
        checked, and shaped to broadcast to ``(n, C)`` / ``(n, C, S)``."""
        if self.const is not None:
            return self.const
        self._check(values, offset)
        if self.per_row:
            return values.reshape((n, 1) if S is None else (n, 1, 1))
        if S is not None and values.ndim == 2:
            return values.reshape(n, values.shape[1], 1)
        return values

    def _check(self, arr, offset):
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
        file, local = self.role.feed.locate(offset + int(index[0]))
        column = self.role.shown(int(index[1]) if arr.ndim > 1 else 0)
        raise BCEInputError(f"--weight must be finite and >= 0; got {value!r}", file=file,
                            column=column, row=local)


def resolve_weight(wspec, from_column, targets, feeds, spec) -> ResolvedWeight | None:
    """The :class:`ResolvedWeight` of ``wspec`` for inputs whose targets are ``targets``
    (a :class:`Role`).  ``from_column``: the weight read from a column of the inputs,
    when ``wspec`` names one that exists; a weight file's feed is added to ``feeds``."""
    if wspec is None:
        return None
    C, S = targets.C, targets.S
    nd = 2 if S is None else 3
    if wspec.kind == "const":
        return ResolvedWeight(const=np.full((1,) * nd, wspec.value[0], dtype=np.float64))
    if wspec.kind == "per_class":
        if len(wspec.value) != C:
            raise BCEInputError(
                f"--weight gives {len(wspec.value)} numbers for {C} classes "
                f"({', '.join(targets.class_names())})"
            )
        return ResolvedWeight(const=wspec.value.reshape((1, C) if S is None else (1, C, 1)))
    if wspec.kind == "column":
        if from_column is None:
            raise BCEInputError(
                f"no weight column {wspec.value!r} in the input(s)",
                file=spec.preds,
                column=wspec.value,
                hint="--weight takes a column name, a number, C numbers or a .npy file",
            )
        return from_column
    return _weight_file(wspec.value, targets, feeds, spec)


def _weight_file(path, targets, feeds, spec) -> ResolvedWeight:
    C, S = targets.C, targets.S
    nd = 2 if S is None else 3
    res = resolve(path)
    if res.fmt != "npy":
        raise BCEInputError("a weight file must be a .npy array", file=res.display)
    h = open_npy(res, "weight")
    shape = h.shape
    n_rows = next((f.n_rows for f in feeds if f.n_rows is not None), None)
    if len(shape) == 1 and shape[0] == C and C > 1:
        values = checked_factors(h.arr, "--weight", targets.class_names(), file=h.file)
        return ResolvedWeight(const=values.reshape((1, C) + ((1,) if S else ())))
    if h.arr.size == 1:
        value = checked_factors(np.asarray(h.arr).reshape(-1), "--weight", file=h.file)
        return ResolvedWeight(const=np.full((1,) * nd, value[0]))
    if shape[0] == 1:
        v = ArrayView(MemArray(h.file, "weight", np.asarray(h.arr)), spec.class_dim, "weight")
        blk = next(v.blocks(1, "C"))
        try:
            np.broadcast_shapes(blk.shape, (1, C) if S is None else (1, C, S))
        except ValueError:
            raise BCEInputError(
                f"weight array of shape {h.shape} does not broadcast", file=h.file
            ) from None
        return ResolvedWeight(const=checked_factors(blk, "--weight", file=h.file))
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
    feed = ArrayFeed({"weight": view}, spec.batch_rows, spec.order, spec.rows)
    feeds.append(feed)
    return ResolvedWeight(role=array_role(feed, "weight", view))


# ------------------------------------------------------------------------ pos_weight
def _load_npy(path):
    if not os.path.exists(path):
        raise BCEInputError("no such file or directory", file=path)
    check_regular(path, path)
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except NPY_ERRORS as exc:
        raise load_error(exc, path) from None
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "biuf":
        raise BCEInputError("expected a .npy array of numbers", file=path)
    return arr


def parse_pos_weight(spec_str, class_names) -> np.ndarray:
    """``--pos-weight`` as float64, one finite value >= 0 per class (see
    :func:`_parse_pos_weight`)."""
    text = str(spec_str).strip()
    file = text if os.path.exists(text) else None
    return checked_factors(_parse_pos_weight(spec_str, class_names), "--pos-weight",
                           [str(n) for n in class_names], file=file)


def _parse_pos_weight(spec_str, class_names) -> np.ndarray:
    """``--pos-weight`` as a float64 array with one value per class.

    Accepts a number (all classes), ``C`` comma-separated numbers, a ``.npy`` file
    of ``C`` values, or the JSON that ``bce suggest-pos-weight`` writes (matched by
    class name; a class missing from it, or whose ``pos_weight`` is null, is an
    error).  For ``(N, C, S)`` batches the caller reshapes it to ``(C, 1)``.

    >>> parse_pos_weight("2.5", ["a", "b"]).tolist()
    [2.5, 2.5]
    >>> parse_pos_weight("1,3", ["a", "b"]).tolist()
    [1.0, 3.0]
    """
    names = [str(n) for n in class_names]
    C = len(names)
    text = str(spec_str).strip()
    v = _number(text)
    if v is not None:
        return np.full(C, v, dtype=np.float64)
    if text.lower().endswith(".json"):
        return _pos_weight_json(text, names)
    if text.lower().endswith(".npy"):
        arr = np.asarray(_load_npy(text), dtype=np.float64)
        flat = arr.reshape(-1)
        if flat.size == 1:
            return np.full(C, float(flat[0]))
        if arr.ndim != 1 and arr.size == C:
            arr = flat
        if arr.ndim != 1 or arr.size != C:
            raise BCEInputError(
                f"pos_weight array has shape {arr.shape}, expected ({C},) for the classes "
                f"{', '.join(names)}",
                file=text,
            )
        return np.array(arr, dtype=np.float64)
    parts = [p.strip() for p in text.split(",")]
    vals = [_number(p) for p in parts]
    if len(parts) > 1 and all(x is not None for x in vals):
        if len(vals) != C:
            raise BCEInputError(
                f"--pos-weight gives {len(vals)} numbers for {C} classes ({', '.join(names)})"
            )
        return np.array(vals, dtype=np.float64)
    if os.path.exists(text):
        # a file without a known extension: try JSON
        return _pos_weight_json(text, names)
    raise BCEInputError(
        f"cannot understand --pos-weight {text!r}",
        hint="give a number, one number per class separated by commas, a .npy file, or "
        "the JSON written by `bce suggest-pos-weight`",
    )


def _pos_weight_json(path, names):
    doc = read_json(path, missing="no such file or directory", unreadable="not readable JSON")
    if not isinstance(doc, dict) or "pos_weight" not in doc:
        raise BCEInputError(
            "expected the JSON written by `bce suggest-pos-weight` (a 'pos_weight' key)",
            file=path,
        )
    classes = doc.get("classes")
    if (
        isinstance(classes, list)
        and classes
        and all(isinstance(c, dict) and "name" in c for c in classes)
    ):
        by_name = {str(c["name"]): c for c in classes}
        missing = [n for n in names if n not in by_name]
        if missing:
            raise BCEInputError(
                f"no pos_weight for class(es) {missing}; the file has {', '.join(by_name)}",
                file=path,
                hint="run `bce suggest-pos-weight` on the same labels",
            )
        out = []
        for n in names:
            pw = by_name[n].get("pos_weight")
            if pw is None:
                raise BCEInputError(
                    f"class {n!r} has pos_weight null: it had no positives when the file was made",
                    file=path,
                    column=n,
                    hint="set its value by hand, or use --clip-max / another method",
                )
            out.append(_json_number(pw, path, n))
        return np.array(out, dtype=np.float64)
    pws = doc["pos_weight"]
    if not isinstance(pws, list) or len(pws) != len(names):
        raise BCEInputError(
            f"'pos_weight' must list {len(names)} values (one per class)", file=path
        )
    if any(p is None for p in pws):
        i = pws.index(None)
        raise BCEInputError(
            f"class {names[i]!r} has pos_weight null: it had no positives",
            file=path,
            column=names[i],
        )
    return np.array([_json_number(p, path, n) for p, n in zip(pws, names, strict=True)],
                    dtype=np.float64)


def _json_number(value, path, name) -> float:
    """A pos_weight value of the JSON file: a number (validity is checked later)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    shown = printable(json.dumps(value)[:40], 40)
    raise BCEInputError(f"pos_weight of class {name!r} is {shown}, not a number", file=path,
                        column=name)
