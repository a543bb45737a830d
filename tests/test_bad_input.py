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
