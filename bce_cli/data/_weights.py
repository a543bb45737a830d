"""``--weight`` and ``--pos-weight`` specifications."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np

from bce_cli.errors import BCEInputError, printable

from ._paths import check_regular


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


def _load_npy(path):
    if not os.path.exists(path):
        raise BCEInputError("no such file or directory", file=path)
    from ._numpy import NPY_ERRORS, load_error

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
    if not os.path.exists(path):
        raise BCEInputError("no such file or directory", file=path)
    check_regular(path, path)
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except RecursionError:
        raise BCEInputError("not readable JSON: nested too deeply", file=path) from None
    except (OSError, ValueError) as exc:
        raise BCEInputError(f"not readable JSON: {printable(exc)}", file=path) from None
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
