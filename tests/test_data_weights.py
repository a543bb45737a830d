"""--weight and --pos-weight parsing."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bce_cli.data import parse_pos_weight, parse_weight
from bce_cli.errors import BCEInputError

NAMES = ["cat", "dog", "eel"]


def test_pos_weight_number_and_list():
    np.testing.assert_array_equal(parse_pos_weight("2.5", NAMES), [2.5, 2.5, 2.5])
    out = parse_pos_weight("1, 2,3e0", NAMES)
    assert out.dtype == np.float64 and out.tolist() == [1.0, 2.0, 3.0]
    with pytest.raises(BCEInputError, match="2 numbers for 3 classes"):
        parse_pos_weight("1,2", NAMES)
    with pytest.raises(BCEInputError, match="cannot understand"):
        parse_pos_weight("lots", NAMES)


def test_pos_weight_npy(tmp_path):
    np.save(tmp_path / "pw.npy", np.array([1.5, 2, 3], dtype=np.float32))
    assert parse_pos_weight(str(tmp_path / "pw.npy"), NAMES).tolist() == [1.5, 2.0, 3.0]
    np.save(tmp_path / "bad.npy", np.ones(4))
    with pytest.raises(BCEInputError) as ei:
        parse_pos_weight(str(tmp_path / "bad.npy"), NAMES)
    assert "bad.npy" in str(ei.value) and "(3,)" in str(ei.value)
    np.save(tmp_path / "obj.npy", np.array([None, 1], dtype=object), allow_pickle=True)
    with pytest.raises(BCEInputError, match="obj.npy"):
        parse_pos_weight(str(tmp_path / "obj.npy"), NAMES)
    with pytest.raises(BCEInputError, match="no such file"):
        parse_pos_weight(str(tmp_path / "missing.npy"), NAMES)


def _suggest_json(path, classes):
    doc = {
        "method": "ratio",
        "pos_weight": [c[1] for c in classes],
        "classes": [{"name": n, "n_pos": 1.0, "n_neg": 3.0, "pos_weight": pw} for n, pw in classes],
    }
    path.write_text(json.dumps(doc))
    return str(path)


def test_pos_weight_json_matched_by_name(tmp_path):
    # the JSON lists classes in another order, plus an extra one
    p = _suggest_json(
        tmp_path / "pw.json", [("eel", 3.0), ("zebra", 9.0), ("cat", 1.0), ("dog", 2.0)]
    )
    assert parse_pos_weight(p, NAMES).tolist() == [1.0, 2.0, 3.0]


def test_pos_weight_json_missing_class(tmp_path):
    p = _suggest_json(tmp_path / "pw.json", [("cat", 1.0), ("zebra", 2.0)])
    with pytest.raises(BCEInputError) as ei:
        parse_pos_weight(p, NAMES)
    text = str(ei.value)
    assert "pw.json" in text and "'dog'" in text and "'eel'" in text and "zebra" in text


def test_pos_weight_json_null(tmp_path):
    p = _suggest_json(tmp_path / "pw.json", [("cat", 1.0), ("dog", None), ("eel", 2.0)])
    with pytest.raises(BCEInputError) as ei:
        parse_pos_weight(p, NAMES)
    assert ei.value.column == "dog" and "no positives" in str(ei.value)


def test_pos_weight_json_broken(tmp_path):
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(BCEInputError, match="x.json"):
        parse_pos_weight(str(tmp_path / "x.json"), NAMES)
    (tmp_path / "y.json").write_text("[1, 2]")
    with pytest.raises(BCEInputError, match="suggest-pos-weight"):
        parse_pos_weight(str(tmp_path / "y.json"), NAMES)


def test_parse_weight_kinds():
    assert parse_weight(None) is None
    w = parse_weight("0.25")
    assert w.kind == "const" and w.value.tolist() == [0.25]
    w = parse_weight("1,2,3", NAMES)
    assert w.kind == "per_class" and w.value.tolist() == [1.0, 2.0, 3.0]
    with pytest.raises(BCEInputError, match="2 numbers for 3 classes"):
        parse_weight("1,2", NAMES)
    assert parse_weight("w.npy").kind == "file"
    assert parse_weight("sample_weight").kind == "column"
    assert parse_weight("w_*").kind == "column"
