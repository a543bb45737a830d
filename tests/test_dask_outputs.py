"""--engine dask --reduction none --output DIR: a Parquet dataset, one file per task, whose
files read in name order are the table --engine local writes to one file, exactly; written
in a hidden directory beside DIR and renamed into place, so a failed job leaves nothing."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

pytest.importorskip("distributed", reason="Dask is an optional extra: pip install "
                    "'bce-cli[dask]'")

from tests.test_dask import FILES, _write, invoke, local_cluster  # noqa: E402

N = sum(rows for rows, _ in FILES)


@pytest.fixture(scope="module")
def scheduler():
    with local_cluster() as address:
        yield address


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("dask-out")
    rng = np.random.default_rng(20261130)
    x = rng.normal(size=(N, 3)) * 4
    y = (rng.random((N, 3)) < 0.3).astype(np.float32)
    wide = {"logit_a": x[:, 0].astype(np.float32), "logit_b": x[:, 1], "a": y[:, 0],
            "b": rng.random(N), "w": rng.random(N) * 2}
    bad = dict(wide, b=wide["b"].copy())
    bad["b"][1000 + 777 + 42] = np.nan  # the third file's row 42
    flat = pa.array(x.reshape(-1))
    lists = {"logits": pa.FixedSizeListArray.from_arrays(flat, 3),
             "targets": pa.array(list(y), type=pa.list_(pa.float32()))}
    return {"wide": _write(root, "wide", wide), "bad": _write(root, "bad", bad),
            "list": _write(root, "list", lists)}


ARGS = {
    "wide": lambda d: [d["wide"], "--logits", "logit_*", "--targets", "a,b", "--weight", "w"],
    "list": lambda d: [d["list"], "--logits", "logits", "--targets", "targets"],
}


def _parts(folder):
    return sorted(os.listdir(folder))


def _run_both(tmp_path, args, scheduler, batch_rows):
    local_out, dask_out = tmp_path / "local.parquet", tmp_path / "losses"
    common = ["eval", *args, "--reduction", "none", "--batch-rows", batch_rows, "--format",
              "json"]
    local = invoke(*common, "--output", local_out, "--report", tmp_path / "local.json")
    dask = invoke(*common, "--output", dask_out, "--report", tmp_path / "dask.json",
                  "--engine", "dask", "--scheduler", scheduler)
    return local, dask, local_out, dask_out


@pytest.mark.parametrize("tier", ["numpy", "compiled"])
@pytest.mark.parametrize("batch_rows", [250, 4096])
@pytest.mark.parametrize("layout", list(ARGS))
def test_the_files_in_order_are_the_local_table(data, scheduler, tmp_path, layout,
                                                batch_rows, tier, monkeypatch):
    # Each tier's per-batch sums are the same bits in every process: the compiled tier's
    # whether a process compiled its forms (this one, on a fresh clone) or loaded them
    # (the workers; tests/test_jit.py::test_same_bits_compiled_or_loaded_on_any_threads),
    # and a local cluster leaves this process's NUMBA_NUM_THREADS alone
    # (test_dask.py::test_a_local_cluster_leaves_this_process_environment_alone).
    monkeypatch.setenv("BCE_TIER", tier)
    local, dask, local_out, dask_out = _run_both(tmp_path, ARGS[layout](data), scheduler,
                                                 batch_rows)
    assert local.exit_code == 0, local.output
    assert dask.exit_code == 0, dask.output
    assert dask.stdout.replace(str(dask_out), "OUT") == local.stdout.replace(str(local_out),
                                                                             "OUT")
    names = _parts(dask_out)
    assert all(n.startswith("part-") and n.endswith(".parquet") for n in names)
    if batch_rows >= N:
        assert names == ["part-0000.parquet"]
    else:
        assert len(names) > 2  # the driver's first batch, then one file per task
        assert names[0] == "part-0000.parquet" and names[1] == f"part-{batch_rows:04d}.parquet"
    want = pq.read_table(local_out)
    got = pa.concat_tables([pq.read_table(dask_out / n) for n in names])
    assert got.equals(want)  # same columns, types and every value, bit for bit
    assert got.column_names == (["a", "b"] if layout == "wide" else ["loss"])
    assert pq.read_table(dask_out).equals(want)  # read back as one dataset
    # --report alongside: the same report (it names its own output)
    reports = [json.loads((tmp_path / f"{e}.json").read_text()) for e in ("local", "dask")]
    for r in reports:
        r["options"].pop("output")
    assert reports[0] == reports[1]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_failed_job_leaves_nothing(data, scheduler, tmp_path):
    out = tmp_path / "losses"
    res = invoke("eval", data["bad"], "--logits", "logit_*", "--targets", "a,b",
                 "--reduction", "none", "--output", out, "--report", tmp_path / "r.json",
                 "--batch-rows", 200, "--engine", "dask", "--scheduler", scheduler)
    assert res.exit_code == 2, res.output
    assert "part2.parquet" in res.stderr and "row 42" in res.stderr
    assert list(tmp_path.iterdir()) == []  # no DIR, no temporary directory, no report


def test_a_local_cluster_of_two_and_an_empty_directory(data, tmp_path, monkeypatch):
    monkeypatch.setenv("BCE_TIER", "numpy")  # one tier (test_the_files_in_order_... has both)
    out = tmp_path / "losses"
    out.mkdir()
    res = invoke("eval", *ARGS["wide"](data), "--reduction", "none", "--output", out,
                 "--batch-rows", 500, "--engine", "dask", "--scheduler", "local:2")
    assert res.exit_code == 0, res.output
    local = invoke("eval", *ARGS["wide"](data), "--reduction", "none", "--output",
                   tmp_path / "l.parquet")
    assert local.exit_code == 0, local.output
    assert pq.read_table(out).equals(pq.read_table(tmp_path / "l.parquet"))
    assert len(_parts(out)) > 2


@pytest.mark.parametrize("what, message", [
    ("full", "is a directory that is not empty"),
    ("file", "exists and is not a directory"),
    ("npy", "not .npy"),
    ("no parent", "the output's directory does not exist"),
    ("the report", "--output and --report name the same path"),
    ("s3", "--output to a URI is not yet supported"),
])
def test_refused_before_any_work(data, tmp_path, what, message):
    out = tmp_path / "losses"
    extra = []
    if what == "full":
        out.mkdir()
        (out / "keep.txt").write_text("mine")
    elif what == "file":
        out.write_text("mine")
    elif what == "npy":
        out = tmp_path / "losses.npy"
    elif what == "s3":
        out = "s3://bucket/losses"
    elif what == "no parent":
        out = tmp_path / "nowhere" / "losses"
    else:
        extra = ["--report", out]
    before = sorted(p.name for p in tmp_path.rglob("*"))
    res = invoke("eval", *ARGS["wide"](data), "--reduction", "none", "--output", out, *extra,
                 "--engine", "dask", "--scheduler", "tcp://127.0.0.1:9")  # never reached
    assert res.exit_code == 2, res.output
    assert message in res.stderr
    assert sorted(p.name for p in tmp_path.rglob("*")) == before
    if what == "full":
        assert (out / "keep.txt").read_text() == "mine"


def test_a_killed_run_s_directory_is_removed_by_the_next(data, scheduler, tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    stale = tmp_path / f".losses.{dead}.0123abcd.bce.tmp"
    stale.mkdir()
    (stale / "part-0000.parquet").write_bytes(b"half")
    res = invoke("eval", *ARGS["wide"](data), "--reduction", "none", "--output",
                 tmp_path / "losses", "--engine", "dask", "--scheduler", scheduler)
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["losses"]


def test_files_the_workers_left_elsewhere_are_an_error(tmp_path):
    """A worker that wrote its file where this machine cannot see it (no shared file
    system): exit 2 with a hint, nothing left; a task's half-written temporary, gone."""
    from types import SimpleNamespace

    from bce_cli.errors import BCEInputError
    from bce_cli.outputs import LossDataset

    out = tmp_path / "losses"
    for seen in ([0], [0, 100]):
        ds = LossDataset(str(out), SimpleNamespace(n_rows=200))
        ds.starts = [0, 100]
        for start in seen:
            pq.write_table(pa.table({"a": [0.5]}), ds.parts.path(start))
        (tmp_path / ds.tmp / ".part-100.parquet.1.abcd.bce.tmp").write_bytes(b"half")
        if seen == [0]:
            with pytest.raises(BCEInputError, match="1 of the 2 files") as err:
                ds.commit()
            assert "shared file system" in err.value.hint
            ds.abort()
            assert list(tmp_path.iterdir()) == []
        else:
            ds.commit()
            assert _parts(out) == ["part-000.parquet", "part-100.parquet"]


def test_a_directory_filled_meanwhile_is_left_alone(tmp_path):
    """Another run (or anyone) put files in DIR after the check: the rename fails (exit 2),
    DIR keeps what it has, and the temporary directory goes."""
    from types import SimpleNamespace

    from bce_cli.errors import BCEInputError
    from bce_cli.outputs import LossDataset

    out = tmp_path / "losses"
    ds = LossDataset(str(out), SimpleNamespace(n_rows=10))
    ds.starts = [0]
    pq.write_table(pa.table({"a": [0.5]}), ds.parts.path(0))
    out.mkdir()
    (out / "theirs.parquet").write_bytes(b"theirs")
    with pytest.raises(BCEInputError, match="cannot write") as err:
        ds.commit()
    assert "new or empty directory" in err.value.hint
    ds.abort()
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["losses", "theirs.parquet"]


# ------------------------------------------------- with tasks run again, with --timeout
@pytest.fixture
def cluster():
    """A fresh cluster of two workers (the tests patch them), with a client."""
    from distributed import Client

    from tests.test_dask_robust import _cluster

    with _cluster() as cluster, Client(cluster) as client:
        yield cluster.scheduler_address, client


def test_a_task_run_again_replaces_its_file(data, cluster, tmp_path, monkeypatch):
    """The first task on each worker writes its file and a half-written temporary, then
    loses its connection: run again, the file is replaced whole, the temporary dropped."""
    monkeypatch.setenv("BCE_TIER", "numpy")  # one tier (test_the_files_in_order_... has both)
    address, client = cluster

    def flaky():
        import bce_cli._dask as d

        task, failed = d._eval_task, []

        def once(rows, *, parts=None, **kwargs):
            result = task(rows, parts=parts, **kwargs)
            if not failed:
                failed.append(rows)
                with open(parts.path(rows[0]) + ".half.bce.tmp", "wb") as f:
                    f.write(b"half")
                raise OSError("connection reset by peer")
            return result

        d._eval_task = once

    client.run(flaky)
    local, dask, local_out, dask_out = _run_both(tmp_path, ARGS["wide"](data), address, 250)
    assert dask.exit_code == 0, dask.output
    assert all(re.fullmatch(r"part-\d{4}\.parquet", n) for n in _parts(dask_out))
    assert pq.read_table(dask_out).equals(pq.read_table(local_out))


def test_timeout_leaves_nothing(data, cluster, tmp_path):
    """Past --timeout: exit 2, and neither DIR nor the temporary directory, even once the
    cancelled tasks that were still running have ended."""
    import time

    from tests.test_dask_robust import _slow

    address, client = cluster
    client.run(_slow(1.5))
    out = tmp_path / "losses"
    res = invoke("eval", *ARGS["wide"](data), "--reduction", "none", "--output", out,
                 "--batch-rows", 250, "--engine", "dask", "--scheduler", address,
                 "--timeout", "1")
    assert res.exit_code == 2, res.output
    assert "it was cancelled" in res.stderr
    assert list(tmp_path.iterdir()) == []
    time.sleep(2.5)  # the running tasks end, and find their directory gone
    assert list(tmp_path.iterdir()) == []
