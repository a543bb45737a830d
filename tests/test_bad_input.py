"""Hostile and malformed inputs, met through the command line: every one ends in exit 0,
1 or 2 with a short message naming the file, never a crash (a signal) or exit 3."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pyarrow as pa
import pyarrow.feather as feather
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from bce_cli.cli import app

runner = CliRunner()


def invoke(*args, **kw):
    return runner.invoke(app, [str(a) for a in args], **kw)


def input_error(res, *names):
    """Exit 2 with a one- or two-line message naming each of ``names``."""
    assert res.exit_code == 2, res.output
    text = res.stderr.strip()
    assert "internal error" not in text, text
    assert len(text.splitlines()) <= 2, text
    for name in names:
        assert str(name) in text, text
    return text


# ------------------------------------------------------------------ corrupt Arrow files
def _table():
    rng = np.random.default_rng(3)
    return pa.table({
        "logit_a": rng.normal(size=64).astype(np.float32),
        "logit_b": pa.array(rng.normal(size=64), mask=np.arange(64) % 9 == 4),
        "target_a": rng.random(64) < 0.5,
        "target_b": pa.array((rng.random(64) < 0.5).astype(np.float64)),
    })


def _write(fmt, path):
    t = _table()
    if fmt == "feather_v1":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            feather.write_feather(t, path, version=1)
    elif fmt == "ipc_file":
        feather.write_feather(t, path, compression="uncompressed")
    elif fmt == "ipc_stream":
        with ipc.new_stream(path, t.schema) as w:
            w.write_table(t, max_chunksize=20)
    else:
        pq.write_table(t, path, row_group_size=20, compression="none")


# Runs every corrupt file through the command line in one child process (a crash of
# the child fails the test instead of killing pytest); prints "<file> <exit code>".
_CHILD = textwrap.dedent("""
    import sys
    from typer.testing import CliRunner
    from bce_cli.cli import app
    runner = CliRunner()
    for path in sys.argv[1:]:
        print("start", path, flush=True)
        res = runner.invoke(app, ["eval", path, "--nan-policy", "omit", "--format", "json"])
        print("done", path, res.exit_code, res.stderr.strip().replace("\\n", " ")[:300],
              flush=True)
""")


@pytest.mark.parametrize("fmt,ext", [("feather_v1", ".feather"), ("ipc_file", ".arrow"),
                                     ("ipc_stream", ".arrows"), ("parquet", ".parquet")])
def test_bit_flipped_files_never_crash(tmp_path, fmt, ext):
    base = tmp_path / f"base{ext}"
    _write(fmt, base)
    data = bytes(base.read_bytes())
    rng = np.random.default_rng(20261129)
    paths = []
    for k in range(30):
        d = bytearray(data)
        for off in rng.integers(0, len(d), size=1 + k % 3):
            d[int(off)] ^= 1 << int(rng.integers(0, 8))
        p = tmp_path / f"flip{k}{ext}"
        p.write_bytes(bytes(d))
        paths.append(str(p))
    res = subprocess.run([sys.executable, "-c", _CHILD, *paths], capture_output=True, text=True,
                         timeout=600)
    lines = res.stdout.splitlines()
    last = lines[-1] if lines else ""
    assert res.returncode == 0, f"child died ({res.returncode}) at: {last}\n{res.stderr[-2000:]}"
    done = [ln.split(" ", 3) for ln in lines if ln.startswith("done ")]
    assert len(done) == len(paths)
    bad = [ln for ln in done if ln[2] not in ("0", "1", "2")]
    assert not bad, bad


def test_feather_v1_is_still_read(tmp_path):
    _write("feather_v1", tmp_path / "v1.feather")
    _write("ipc_file", tmp_path / "v2.arrow")
    out = []
    for name in ("v1.feather", "v2.arrow"):
        res = invoke("eval", tmp_path / name, "--nan-policy", "omit", "--format", "json")
        assert res.exit_code == 0, res.output
        out.append(json.loads(res.stdout)["loss"])
    assert out[0] == out[1]
    data = (tmp_path / "v1.feather").read_bytes()
    res = invoke("eval", "-", "--nan-policy", "omit", "--format", "json", input=data)
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["loss"] == out[0]


def test_feather_v1_reader_runs_no_code_from_the_data_directory(tmp_path, monkeypatch):
    """The child that reads Feather v1 starts isolated (-I): a pyarrow.py lying next to
    the data (a cloned repository, a shared folder) is never imported and run."""
    _write("feather_v1", tmp_path / "v1.feather")
    marker = tmp_path / "ran"
    (tmp_path / "pyarrow.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    res = invoke("eval", "v1.feather", "--nan-policy", "omit", "--format", "json")
    assert res.exit_code == 0, res.output
    assert not marker.exists()


# ------------------------------------------------------------------ malformed headers
@pytest.fixture
def pair(tmp_path):
    rng = np.random.default_rng(5)
    x = rng.normal(size=(12, 2)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", (x > 0).astype(np.float32))
    return tmp_path / "x.npy", tmp_path / "y.npy"


def _unclosed_header(path):
    """A copy of a .npy whose header dict never closes its shape tuple."""
    data = bytearray(path.read_bytes())
    i = data.index(b"(12, 2)")
    data[i : i + 7] = b"(12, 2 "
    return bytes(data)


@pytest.mark.parametrize("where", ["logits", "targets", "weight", "pos_weight", "suggest",
                                   "npz"])
def test_npy_header_with_unclosed_bracket(tmp_path, pair, where):
    x, y = pair
    bad = tmp_path / "bad.npy"
    bad.write_bytes(_unclosed_header(x))
    if where == "npz":
        import zipfile

        with zipfile.ZipFile(tmp_path / "bad.npz", "w") as z:
            z.writestr("logits.npy", bad.read_bytes())
            z.writestr("targets.npy", y.read_bytes())
        args, name = ("eval", tmp_path / "bad.npz"), "bad.npz"
    else:
        args = {"logits": ("eval", bad, y), "targets": ("eval", x, bad),
                "weight": ("eval", x, y, "--weight", bad),
                "pos_weight": ("eval", x, y, "--pos-weight", bad),
                "suggest": ("suggest-pos-weight", bad)}[where]
        name = "bad.npy"
    input_error(invoke(*args), name)


@pytest.mark.parametrize("ext", [".parquet", ".csv"])
def test_duplicate_column_names(tmp_path, ext):
    p = tmp_path / f"dup{ext}"
    if ext == ".csv":
        p.write_text("logit_a,logit_a,target_a\n0.5,1.5,1\n-1,2,0\n")
    else:
        t = pa.Table.from_arrays([pa.array([0.5, -1.0]), pa.array([1.5, 2.0]),
                                  pa.array([1.0, 0.0])], names=["logit_a", "logit_a", "target_a"])
        pq.write_table(t, p)
    text = input_error(invoke("eval", p), p.name, "'logit_a'")
    assert "twice" in text


def test_csv_header_not_utf8(tmp_path):
    p = tmp_path / "latin1.csv"
    p.write_bytes("logit_é,target_é\n".encode("latin-1") + b"0.5,1\n-1,0\n")
    text = input_error(invoke("eval", p), p.name)
    assert "UTF-8" in text


# ------------------------------------------------------------------ malformed JSON inputs
_DEEP = "[" * 100000 + "]" * 100000


@pytest.mark.parametrize("doc", [
    '{"pos_weight": ["a", "b"]}',
    '{"pos_weight": [[1], [2]]}',
    '{"pos_weight": [1, true]}',
    '{"pos_weight": ' + _DEEP + "}",
    _DEEP,
    '{"pos_weight": [1, 2], "classes": [{"name": "0", "pos_weight": "x"},'
    ' {"name": "1", "pos_weight": 1}]}',
    '{"pos_weight": [1, 2], "classes": [{"name": "0", "pos_weight": [1]},'
    ' {"name": "1", "pos_weight": 1}]}',
])
def test_malformed_pos_weight_json(tmp_path, pair, doc):
    p = tmp_path / "pw.json"
    p.write_text(doc)
    input_error(invoke("eval", *pair, "--pos-weight", p), "pw.json")


@pytest.mark.parametrize("doc", [
    {"loss": 0.5, "classes": "x"},
    {"loss": "0.5", "classes": []},
    {"loss": [0.5]},
    {"loss": True},
    {"loss": 0.5, "classes": [1, "x"]},
    {"loss": 0.5, "classes": [{"name": "0", "loss": "x"}]},
    {"loss": 0.5, "classes": [{"name": "0", "loss": {"a": 1}}]},
    {"loss": 0.5, "classes": [{"loss": 0.3}]},
    {"loss": 0.5, "reduction": ["x"]},
    {"loss": 0.5, "reduction": "median"},
    "deep",
])
def test_malformed_baseline(tmp_path, pair, doc):
    p = tmp_path / "base.json"
    p.write_text('{"loss": ' + _DEEP + "}" if doc == "deep" else json.dumps(doc))
    input_error(invoke("eval", *pair, "--baseline", p, "--max-increase", "0.1"), "base.json")


def test_baseline_with_infinite_loss_spelled_as_string(tmp_path, pair):
    base = tmp_path / "base.json"
    res = invoke("eval", *pair, "--report", base)
    assert res.exit_code == 0, res.output
    doc = json.loads(base.read_text())
    doc["loss"] = "Infinity"
    base.write_text(json.dumps(doc))
    res = invoke("eval", *pair, "--baseline", base, "--max-increase", "0.1")
    assert res.exit_code == 0, res.output


@pytest.mark.parametrize("key", [pa.array([{"a": i} for i in range(6)]),
                                 pa.array([[i] for i in range(6)]),
                                 pa.array(np.arange(6, dtype=np.float16))])
def test_join_on_nested_key(tmp_path, key):
    pq.write_table(pa.table({"k": key, "logit": np.zeros(6)}), tmp_path / "p.parquet")
    pq.write_table(pa.table({"k": key, "target": np.ones(6)}), tmp_path / "l.parquet")
    text = input_error(invoke("eval", tmp_path / "p.parquet", tmp_path / "l.parquet", "--on", "k"),
                       "p.parquet", "'k'")
    assert "key" in text


# ------------------------------------------------------------------ bad weights
@pytest.mark.parametrize("bad", [-1.0, np.inf, np.nan])
def test_bad_value_in_weight_column(tmp_path, bad):
    w = np.ones(300)
    w[257] = bad
    t = pa.table({"logit": np.zeros(300), "target": np.ones(300), "w": w})
    pq.write_table(t, tmp_path / "w.parquet", row_group_size=100)
    text = input_error(invoke("eval", tmp_path / "w.parquet", "--weight", "w",
                              "--batch-rows", "64"), "w.parquet", "'w'", "row 257")
    assert "finite and >= 0" in text


def test_bad_weight_column_in_labels_file(tmp_path, pair):
    pq.write_table(pa.table({"logit": np.zeros(10)}), tmp_path / "p.parquet")
    pq.write_table(pa.table({"target": np.ones(10), "w": np.r_[np.ones(9), -2.0]}),
                   tmp_path / "l.parquet")
    input_error(invoke("eval", tmp_path / "p.parquet", tmp_path / "l.parquet", "--weight", "w"),
                "l.parquet", "'w'", "row 9")


@pytest.mark.parametrize("shape", ["rows", "elements", "classes", "one_row"])
def test_bad_value_in_weight_file(tmp_path, pair, shape):
    w = {"rows": np.ones(12), "elements": np.ones((12, 2)), "classes": np.ones(2),
         "one_row": np.ones((1, 2))}[shape]
    w.reshape(-1)[-1] = -0.5
    np.save(tmp_path / "w.npy", w)
    text = input_error(invoke("eval", *pair, "--weight", tmp_path / "w.npy", "--batch-rows", 5),
                       "w.npy")
    assert "finite and >= 0" in text and "-0.5" in text
    if shape in ("rows", "elements"):
        assert "row 11" in text


def test_bad_value_in_pos_weight_file(tmp_path, pair):
    np.save(tmp_path / "pw.npy", np.array([1.0, np.inf]))
    text = input_error(invoke("eval", *pair, "--pos-weight", tmp_path / "pw.npy"), "pw.npy")
    assert "finite and >= 0" in text


# ------------------------------------------------------------------ column matching
def test_two_files_pair_names_with_commas_and_glob_characters(tmp_path):
    names = ["a,b", "c[1]", "d*"]
    rng = np.random.default_rng(2)
    pq.write_table(pa.table({n: rng.normal(size=8) for n in names}), tmp_path / "p.parquet")
    pq.write_table(pa.table({n: rng.random(8) < 0.5 for n in reversed(names)}),
                   tmp_path / "l.parquet")
    res = invoke("eval", tmp_path / "p.parquet", tmp_path / "l.parquet", "--format", "json")
    assert res.exit_code == 0, res.output
    assert [c["name"] for c in json.loads(res.stdout)["classes"]] == list(reversed(names))


# ------------------------------------------------------------------ pipes, devices, garbage
BCE = [sys.executable, "-m", "bce_cli"]


def _run(*args, stdin=None, timeout=30):
    return subprocess.run([*BCE, *map(str, args)], stdin=stdin, capture_output=True,
                          timeout=timeout)


def _printable_error(stderr: bytes):
    text = stderr.decode("utf-8")
    assert "internal error" not in text, text
    assert all(line.isprintable() for line in text.splitlines()), text
    assert "\ufffd" not in text, text
    return text


def test_fifo_without_writer_is_refused(tmp_path):
    import os

    fifo = tmp_path / "preds.parquet"
    os.mkfifo(fifo)
    res = _run("eval", fifo)  # blocked forever before
    assert res.returncode == 2, res.stderr
    text = _printable_error(res.stderr)
    assert "preds.parquet" in text and "FIFO" in text


def test_npz_symlinked_to_a_device_is_refused(tmp_path):
    link = tmp_path / "data.npz"
    link.symlink_to("/dev/zero")
    res = _run("eval", link)  # grew memory without bound before
    assert res.returncode == 2, res.stderr
    assert "data.npz" in _printable_error(res.stderr)


def test_endless_zeros_on_stdin(tmp_path):
    with open("/dev/zero", "rb") as zero:
        res = _run("eval", "-", stdin=zero)  # grew memory without bound before
    assert res.returncode == 2, res.stderr
    assert "unrecognised format" in _printable_error(res.stderr)


def test_binary_garbage_on_stdin(tmp_path):
    garbage = np.random.default_rng(7).integers(0, 256, 3000, dtype=np.uint8).tobytes()
    res = invoke("eval", "-", input=garbage)
    text = input_error(res, "<stdin>", "unrecognised format")
    assert text.isascii()


def test_garbage_inside_a_csv_is_not_quoted_raw(tmp_path):
    garbage = np.random.default_rng(8).integers(0, 256, 3000, dtype=np.uint8).tobytes()
    p = tmp_path / "bad.csv"
    p.write_bytes(b"logit,target\n0.5,1\n" + garbage.replace(b"\n", b","))
    res = invoke("eval", p)
    assert res.exit_code == 2, res.output
    _printable_error(res.stderr.encode())


def test_standard_input_is_bounded(monkeypatch):
    from bce_cli.data import _paths

    monkeypatch.setattr(_paths, "STDIN_LIMIT", 1000)
    data = "logit,target\n" + "0.5,1\n" * 1000
    text = input_error(invoke("eval", "-", input=data), "<stdin>")
    assert "standard input" in text and "1000 bytes" in text
    small = "logit,target\n" + "0.5,1\n" * 10
    assert invoke("eval", "-", input=small).exit_code == 0


@pytest.mark.parametrize("option", ["--weight", "--pos-weight", "--pos-weight-json",
                                    "--baseline"])
def test_fifo_given_to_an_option_is_refused(tmp_path, pair, option):
    import os

    name = "w.json" if option in ("--pos-weight-json", "--baseline") else "w.npy"
    fifo = tmp_path / name
    os.mkfifo(fifo)
    extra = ["--max-increase", "0.1"] if option == "--baseline" else []
    option = option.replace("-json", "")
    res = _run("eval", *pair, option, fifo, *extra)
    assert res.returncode == 2, res.stderr
    assert name in _printable_error(res.stderr)


@pytest.mark.parametrize("damage", ["zip version", "compression method", "deflated data"])
def test_npz_that_zipfile_cannot_open(tmp_path, damage):
    """zipfile raises NotImplementedError for an unknown zip version or compression
    method and zlib.error for corrupt deflated data: input errors, not bugs."""
    path = tmp_path / "xy.npz"
    np.savez_compressed(path, logits=np.zeros((50, 3)), targets=np.zeros((50, 3)))
    data = bytearray(path.read_bytes())
    central = data.find(b"PK\x01\x02")
    if damage == "zip version":  # "version needed to extract" of the first member: 10.9
        data[central + 6:central + 8] = (109).to_bytes(2, "little")
    elif damage == "compression method":  # both headers of the first member: method 99
        data[8:10] = data[central + 10:central + 12] = (99).to_bytes(2, "little")
    else:  # scramble the middle of the first member's deflated bytes
        start = 30 + int.from_bytes(data[26:28], "little") + int.from_bytes(data[28:30], "little")
        data[start + 2:start + 12] = b"\xff" * 10
    path.write_bytes(bytes(data))
    res = invoke("eval", path, "--logits", "logits", "--targets", "targets")
    input_error(res, "xy.npz")
