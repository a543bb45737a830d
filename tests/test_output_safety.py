"""Output files (``--output``, ``--report``, ``suggest-pos-weight --output``) as CI meets them:
symlinks, devices, FIFOs and ``/dev/stdout`` are written into, never replaced; permissions
follow the umask; a killed run leaves no temporary file; an output never overwrites another
output or an input."""

from __future__ import annotations

import io
import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from bce_cli._safe_write import TMP_SUFFIX
from bce_cli.cli import app

runner = CliRunner()
BCE = [sys.executable, "-m", "bce_cli"]
ROOT = Path(__file__).resolve().parent.parent


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def run(*args, stdout=subprocess.PIPE):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([*BCE, *map(str, args)], stdout=stdout, stderr=subprocess.PIPE,
                          text=True, env=env, timeout=120)


@pytest.fixture
def npy_pair(tmp_path, rng):
    x = (rng.standard_normal((400, 3)) * 2).astype(np.float32)
    y = (rng.random((400, 3)) < 0.3).astype(np.float32)
    np.save(tmp_path / "logits.npy", x)
    np.save(tmp_path / "targets.npy", y)
    return tmp_path / "logits.npy", tmp_path / "targets.npy"


def temp_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith("tmp"))


def check_report(text: str) -> dict:
    report = json.loads(text)
    assert report["n_elements"] == 1200
    return report


def test_symlinks_stay_links_and_their_targets_are_written(npy_pair, tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (real / "losses.npy").write_bytes(b"old")
    links = {"report": tmp_path / "r.json", "out": tmp_path / "l.npy", "pw": tmp_path / "pw.json"}
    links["report"].symlink_to(real / "r.json")  # dangling: its target is created
    links["out"].symlink_to(real / "losses.npy")
    links["pw"].symlink_to(Path("real") / "pw.json")  # relative
    res = invoke("eval", *npy_pair, "--reduction", "none", "--output", links["out"],
                 "--report", links["report"])
    assert res.exit_code == 0, res.output
    res = invoke("suggest-pos-weight", npy_pair[1], "--output", links["pw"])
    assert res.exit_code == 0, res.output
    assert all(p.is_symlink() for p in links.values())
    check_report((real / "r.json").read_text())
    assert np.load(real / "losses.npy").shape == (400, 3)
    assert len(json.loads((real / "pw.json").read_text())["pos_weight"]) == 3
    assert temp_files(tmp_path) == temp_files(real) == []


class FifoReader:
    """Reads a FIFO on a thread.  If the FIFO is replaced instead of written into, the
    thread stays blocked in ``open``: ``close`` then releases it through a hard link."""

    def __init__(self, path: Path):
        self.path, self.keep = path, path.with_name(path.name + ".keep")
        os.mkfifo(path)
        os.link(path, self.keep)
        self.data = None
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        with open(self.keep, "rb") as fh:
            self.data = fh.read()

    def close(self):
        self.thread.join(timeout=30)
        if self.thread.is_alive():  # nothing opened the FIFO: let the reader go
            os.close(os.open(self.keep, os.O_WRONLY | os.O_NONBLOCK))
            self.thread.join(timeout=30)
        return self.data


def test_fifos_are_written_into(npy_pair, tmp_path):
    report, out = FifoReader(tmp_path / "report.json"), FifoReader(tmp_path / "out.npy")
    try:
        res = invoke("eval", *npy_pair, "--reduction", "none", "--output", out.path,
                     "--report", report.path)
    finally:
        got_report, got_out = report.close(), out.close()
    assert res.exit_code == 0, res.output
    assert stat.S_ISFIFO(os.stat(report.path).st_mode)
    assert stat.S_ISFIFO(os.stat(out.path).st_mode)
    check_report(got_report.decode())
    assert np.load(io.BytesIO(got_out)).shape == (400, 3)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0,
                    reason="making a device node (a copy of /dev/null) needs root")
def test_a_device_is_written_into_never_replaced(npy_pair, tmp_path):
    dev = tmp_path / "null.npy"  # a suffix --output accepts
    os.mknod(dev, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    res = invoke("eval", *npy_pair, "--reduction", "none", "--output", dev, "--report", dev)
    assert res.exit_code == 0, res.output  # two outputs may share a device
    res = invoke("suggest-pos-weight", npy_pair[1], "--output", dev)
    assert res.exit_code == 0, res.output
    st = os.stat(dev)
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3)
    assert temp_files(tmp_path) == []


@pytest.mark.parametrize("stdout_is", ["pipe", "file"])
def test_report_to_dev_stdout_lands_before_the_table(npy_pair, tmp_path, stdout_is):
    args = ("eval", *npy_pair, "--report", "/dev/stdout", "--format", "csv")
    if stdout_is == "pipe":
        res = run(*args)
        text = res.stdout
    else:  # opening /dev/stdout again would truncate this file and write over its start
        with open(tmp_path / "stdout.txt", "w") as fh:
            res = run(*args, stdout=fh)
        text = (tmp_path / "stdout.txt").read_text()
    assert res.returncode == 0, res.stderr
    report, end = json.JSONDecoder().raw_decode(text)
    assert report["n_elements"] == 1200
    assert text[end:].lstrip().startswith("name,loss,")


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_new_files_follow_the_umask(npy_pair, tmp_path, umask, mode):
    out, rep, pw = tmp_path / "l.parquet", tmp_path / "r.json", tmp_path / "pw.json"
    x, y = npy_pair
    bce = " ".join(BCE)
    script = (f"umask {umask:03o} && {bce} eval {x} {y} --reduction none --output {out} "
              f"--report {rep} && {bce} suggest-pos-weight {y} --output {pw}")
    res = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert res.returncode == 0, res.stderr
    assert {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in (out, rep, pw)} == \
        {p.name: oct(mode) for p in (out, rep, pw)}


def test_a_replaced_file_keeps_its_mode(npy_pair, tmp_path):
    rep, out = tmp_path / "r.json", tmp_path / "l.npy"
    for path, mode in ((rep, 0o640), (out, 0o604)):
        path.write_text("old")
        path.chmod(mode)
    res = invoke("eval", *npy_pair, "--reduction", "none", "--output", out, "--report", rep)
    assert res.exit_code == 0, res.output
    check_report(rep.read_text())
    assert np.load(out).shape == (400, 3)
    assert stat.S_IMODE(rep.stat().st_mode) == 0o640
    assert stat.S_IMODE(out.stat().st_mode) == 0o604


@pytest.mark.parametrize("how", ["same path", "symlink", "hard link"])
def test_output_and_report_naming_one_file_are_refused(npy_pair, tmp_path, how):
    out = tmp_path / "l.npy"
    rep = {"same path": out, "symlink": tmp_path / "r.npy", "hard link": tmp_path / "h.npy"}[how]
    if how == "symlink":
        rep.symlink_to(out.name)
    if how == "hard link":
        out.write_bytes(b"old")
        os.link(out, rep)
    before = sorted(p.name for p in tmp_path.iterdir())
    res = invoke("eval", *npy_pair, "--reduction", "none", "--output", out, "--report", rep)
    assert res.exit_code == 2, res.output
    assert "--output and --report name the same file" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    if how == "hard link":
        assert out.read_bytes() == b"old"


@pytest.mark.parametrize("option", ["--output", "--report", "--html"])
def test_an_output_to_a_uri_is_refused_by_name(npy_pair, option):
    """Inputs may be s3:// URIs, outputs are local paths: a URI is refused as one (it was
    taken for a local path whose directory is missing), before any work, nothing written."""
    uri = "s3://bucket/run/losses.parquet?endpoint_override=localhost:9000"
    extra = ["--reduction", "none"] if option == "--output" else []
    res = invoke("eval", *npy_pair, *extra, option, uri)
    assert res.exit_code == 2, res.output
    assert "a URI is not supported" in res.stderr and uri in res.stderr
    assert len(res.stderr.strip().splitlines()) <= 2 and "Traceback" not in res.stderr
    assert res.stdout == ""


@pytest.mark.parametrize("which", ["PREDS", "LABELS", "--pos-weight", "--baseline", "glob"])
def test_an_output_never_overwrites_an_input(npy_pair, tmp_path, which):
    x, y = npy_pair
    np.save(tmp_path / "pw.npy", np.ones(3))
    res = invoke("eval", x, y, "--report", tmp_path / "base.json")
    assert res.exit_code == 0, res.output
    victim = {"PREDS": x, "LABELS": y, "--pos-weight": tmp_path / "pw.npy",
              "--baseline": tmp_path / "base.json", "glob": y}[which]
    preds = tmp_path / "*gits.npy" if which == "glob" else x
    option = "--report" if which == "--baseline" else "--output"
    before = victim.read_bytes()
    res = invoke("eval", preds, y, "--pos-weight", tmp_path / "pw.npy", "--baseline",
                 tmp_path / "base.json", "--max-increase", "1", "--reduction", "none",
                 option, victim if which != "glob" else x)
    assert res.exit_code == 2, res.output
    name = "PREDS" if which == "glob" else which
    assert f"{option} would overwrite the input {name}" in res.stderr
    assert victim.read_bytes() == before
    res = invoke("suggest-pos-weight", y, "--output", y)
    assert res.exit_code == 2 and "the input LABELS" in res.stderr


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGHUP", "SIGINT"])
def test_a_terminated_run_leaves_no_temporary_file(tmp_path, signame):
    """The signal comes while the losses are being written or, at the latest, while the run
    waits for a reader of its --report FIFO (which never comes): never after the run."""
    signum = getattr(signal, signame)
    if signal.getsignal(signum) is signal.SIG_IGN:
        pytest.skip(f"{signame} is ignored here (nohup?), and so in the child")
    np.save(tmp_path / "x.npy", np.zeros((400_000, 2), np.float32))
    np.save(tmp_path / "y.npy", np.zeros((400_000, 2), np.float32))
    os.mkfifo(tmp_path / "report.json")
    out = tmp_path / "out.parquet"
    proc = subprocess.Popen([*BCE, "eval", tmp_path / "x.npy", tmp_path / "y.npy",
                             "--reduction", "none", "--output", out, "--batch-rows", "500",
                             "--report", tmp_path / "report.json", "--format", "json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        deadline = time.monotonic() + 60
        while not temp_files(tmp_path):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no temporary file appeared"
            time.sleep(0.005)
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 128 + signum, err
    assert b"Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json", "x.npy", "y.npy"]


def test_stale_temporary_files_of_dead_runs_are_removed(npy_pair, tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp_path / f".l.npy.{dead.pid}.0123abcd{TMP_SUFFIX}"
    live = tmp_path / f".l.npy.{os.getpid()}.4567cdef{TMP_SUFFIX}"
    other = tmp_path / f".other.npy.{dead.pid}.0123abcd{TMP_SUFFIX}"
    for path in (stale, live, other):
        path.write_bytes(b"x" * 1000)
    res = invoke("eval", *npy_pair, "--reduction", "none", "--output", tmp_path / "l.npy")
    assert res.exit_code == 0, res.output
    assert not stale.exists()
    assert live.exists() and other.exists()  # a running writer's; another target's
