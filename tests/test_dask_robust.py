"""--engine dask when things go wrong or live elsewhere: S3 inputs read by the workers,
relative paths with the workers in another directory, a worker killed mid-job, a task
that fails once, --timeout, an unreachable scheduler, progress as tasks finish.  Every
report is the local one, bit for bit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from typer.testing import CliRunner

pytest.importorskip("distributed", reason="Dask is an optional extra: pip install "
                    "'bce-cli[dask]'")

from bce_cli.cli import app  # noqa: E402

from ._net import free_port  # noqa: E402
from .test_dask import _write  # noqa: E402

runner = CliRunner()
FILES = [(700, 300), (555, 100), (900, 1000), (10, 3)]  # (rows, row group size)
N_ROWS = sum(rows for rows, _ in FILES)
BATCH = 200


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(autouse=True)
def one_tier(monkeypatch):
    """Both runs of a comparison on one tier: the tiers agree to about 1e-15, not bit for
    bit, and a run's tier depends on the process it starts in (a form this process has
    compiled already is used: the pytest process has compiled forms in earlier test
    files, a driver started in a subprocess has not).  test_dask.py compares the
    engines on each tier."""
    monkeypatch.setenv("BCE_TIER", "numpy")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("robust")
    rng = np.random.default_rng(20261129)
    cols = {"logit_a": rng.normal(size=N_ROWS).astype(np.float32),
            "logit_b": 3 * rng.normal(size=N_ROWS),
            "a": (rng.random(N_ROWS) > 0.7).astype(np.float32), "b": rng.random(N_ROWS)}
    _write(root, "both", cols, FILES)
    bad = dict(cols, b=cols["b"].copy())
    bad["b"][700 + 555 + 42] = np.nan  # the third file's row 42
    _write(root, "bad", bad, FILES)
    np.save(root / "w.npy", rng.random(N_ROWS) * 2)
    return root


def _cluster(cwd=None):
    from bce_cli._dask import local_cluster

    here = os.getcwd()
    if cwd is not None:
        os.chdir(cwd)  # the workers are spawned here
    try:
        return local_cluster(2)
    finally:
        os.chdir(here)


@pytest.fixture
def cluster(tmp_path):
    """A fresh cluster of two workers (some tests patch or kill them), with a client."""
    from distributed import Client

    with _cluster(tmp_path) as cluster, Client(cluster) as client:
        yield cluster.scheduler_address, client


def _slow(seconds):
    """Run on the workers: every task sleeps ``seconds`` first."""
    def patch():
        import bce_cli._dask as d

        def wrap(task):
            def slow(rows, **kwargs):
                time.sleep(seconds)
                return task(rows, **kwargs)
            return slow

        d._eval_task, d._count_task = wrap(d._eval_task), wrap(d._count_task)
    return patch


def _args(data, *extra):
    return ["eval", data / "both", "--logits", "logit_*", "--targets", "a,b", "--format",
            "json", "--batch-rows", BATCH, *extra]


# ------------------------------------------------------------------------------ paths
def test_relative_paths_reach_workers_elsewhere(data, cluster, monkeypatch):
    address, client = cluster
    assert client.run(os.getcwd) != {}  # the workers run in another directory
    assert all(cwd != str(data) for cwd in client.run(os.getcwd).values())
    monkeypatch.chdir(data)
    args = ["eval", "both", "--logits", "logit_*", "--targets", "a,b", "--weight", "w.npy",
            "--format", "json", "--batch-rows", BATCH]
    local = invoke(*args)
    dask = invoke(*args, "--engine", "dask", "--scheduler", address)
    assert local.exit_code == 0, local.output
    assert dask.exit_code == 0, dask.output
    assert dask.stdout == local.stdout
    # a glob, and suggest-pos-weight
    for args in (["eval", "./both/*.parquet", "--logits", "logit_*", "--targets", "a,b"],
                 ["suggest-pos-weight", "both/", "--targets", "a,b"]):
        args += ["--format", "json", "--batch-rows", BATCH]
        local = invoke(*args)
        dask = invoke(*args, "--engine", "dask", "--scheduler", address)
        assert local.exit_code == dask.exit_code == 0, dask.output
        assert dask.stdout == local.stdout


def test_errors_name_relative_files_as_given(data, cluster, monkeypatch):
    address, _ = cluster
    monkeypatch.chdir(data)
    args = ["eval", "bad", "--logits", "logit_*", "--targets", "a,b", "--batch-rows", BATCH]
    local = invoke(*args)
    dask = invoke(*args, "--engine", "dask", "--scheduler", address)
    assert local.exit_code == dask.exit_code == 2
    assert "bad/part2.parquet, column 'b', row 42" in dask.stderr
    assert dask.stderr == local.stderr


# --------------------------------------------------------------------- failing workers
def test_a_task_that_fails_once_runs_again(data, cluster, tmp_path):
    address, client = cluster
    log = tmp_path / "failed"

    def flaky():  # the first task on each worker loses its connection
        import bce_cli._dask as d

        task, failed = d._eval_task, []

        def once(rows, **kwargs):
            if not failed:
                failed.append(rows)
                with open(log, "a") as f:
                    f.write(f"{rows}\n")
                raise OSError("connection reset by peer")
            return task(rows, **kwargs)

        d._eval_task = once

    client.run(flaky)
    local = invoke(*_args(data))
    dask = invoke(*_args(data), "--engine", "dask", "--scheduler", address)
    assert dask.exit_code == 0, dask.output
    assert dask.stdout == local.stdout
    assert len(log.read_text().splitlines()) == 2  # one failure on each worker


def _python_env():
    return {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}


def test_a_worker_killed_mid_job(data, cluster):
    address, client = cluster
    client.run(_slow(0.4))
    pids = client.run(os.getpid)
    argv = [sys.executable, "-m", "bce_cli", *map(str, _args(data)), "--engine", "dask",
            "--scheduler", address]
    driver = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=_python_env())
    try:
        victim, until = None, time.monotonic() + 30
        while victim is None and time.monotonic() < until and driver.poll() is None:
            busy = [w for w, keys in client.processing().items() if keys and w in pids]
            if busy:
                victim = busy[0]
            else:
                time.sleep(0.02)
        assert victim is not None, "no task ever ran"
        os.kill(pids[victim], signal.SIGKILL)
        out, err = driver.communicate(timeout=60)
    finally:
        driver.kill()
    local = invoke(*_args(data))
    assert driver.returncode == 0, err
    assert out == local.stdout
    assert victim not in client.scheduler_info()["workers"]  # it did die


# ------------------------------------------------------------------- timeout, unreachable
@pytest.mark.parametrize("command", ["eval", "suggest-pos-weight"])
def test_timeout_cancels_the_job(data, cluster, command):
    address, client = cluster
    client.run(_slow(4))
    args = (_args(data) if command == "eval"
            else ["suggest-pos-weight", data / "both", "--targets", "a,b", "--batch-rows",
                  BATCH])
    start = time.monotonic()
    result = invoke(*args, "--engine", "dask", "--scheduler", address, "--timeout", "1")
    took = time.monotonic() - start
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "--timeout 1 s" in lines[0] and "it was cancelled" in lines[0]
    assert " of " in lines[0] and "tasks finished" in lines[0]
    assert took < 3.5, took
    until = time.monotonic() + 10  # the scheduler forgets the cancelled tasks
    while client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks)) and (
            time.monotonic() < until):
        time.sleep(0.1)
    assert client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks)) == 0


def test_timeout_is_for_dask(data):
    result = invoke(*_args(data), "--timeout", "5")
    assert result.exit_code == 2
    assert "--timeout is for --engine dask" in result.stderr


def test_timeout_must_be_positive(data):
    result = invoke(*_args(data), "--engine", "dask", "--scheduler", "local:1",
                    "--timeout", "0")
    assert result.exit_code == 2
    assert "--timeout must be a number of seconds > 0" in result.stderr


def test_an_unreachable_scheduler_is_said_quickly(data):
    start = time.monotonic()
    result = invoke(*_args(data), "--engine", "dask", "--scheduler", "tcp://127.0.0.1:1")
    assert time.monotonic() - start < 15
    assert result.exit_code == 2, result.output
    assert "cannot reach the Dask scheduler at tcp://127.0.0.1:1" in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 2  # the message and a hint


# ----------------------------------------------------------------------------- progress
def test_progress_as_tasks_finish_fold_in_order(data, cluster, tmp_path):
    """The first task waits until the driver has counted every other task's rows: it
    only finishes if progress comes as tasks finish, not in the dataset's order."""
    from bce_cli.data import InputSpec
    from bce_cli.evaluate import EvalOptions, evaluate

    address, client = cluster
    flag = tmp_path / "others-counted"

    def hold_the_first():
        import bce_cli._dask as d

        task = d._eval_task

        def held(rows, **kwargs):
            if rows[0] == BATCH:  # the first task (the driver computes batch 0)
                until = time.monotonic() + 10
                while not os.path.exists(flag) and time.monotonic() < until:
                    time.sleep(0.02)
            return task(rows, **kwargs)

        d._eval_task = held

    client.run(hold_the_first)
    spec = InputSpec(preds=str(data / "both"), logits="logit_*", targets="a,b",
                     batch_rows=BATCH)
    seen = []

    def progress(n):
        seen.append(n)
        if sum(seen) >= N_ROWS - 2 * BATCH and not flag.exists():
            flag.write_text("")  # every row but the driver's batch and the held task's

    started = time.monotonic()
    report = evaluate(spec, EvalOptions(engine="dask", scheduler=address),
                      progress=progress)
    assert time.monotonic() - started < 8  # released by progress, not by the wait's end
    assert flag.exists() and sum(seen) == N_ROWS
    local = evaluate(spec, EvalOptions())
    assert json.dumps(report) == json.dumps(local)


# ---------------------------------------------------------------------------------- S3
@pytest.fixture(scope="module")
def s3(data):
    """A moto S3 server holding the dataset; AWS credentials in the environment, which
    the workers of a cluster started afterwards inherit."""
    moto_server = pytest.importorskip("moto.server", reason="moto[server] is not installed")
    boto3 = pytest.importorskip("boto3", reason="boto3 is not installed")
    mp = pytest.MonkeyPatch()
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1"}.items():
        mp.setenv(k, v)
    mp.delenv("AWS_PROFILE", raising=False)
    port = free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    try:
        client = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}",
                              region_name="us-east-1")
        client.create_bucket(Bucket="bce")
        for part in sorted((data / "both").iterdir()):
            client.upload_file(str(part), "bce", f"both/{part.name}")
        yield f"?endpoint_override=127.0.0.1:{port}&scheme=http&region=us-east-1"
    finally:
        server.stop()
        mp.undo()


def test_s3_dataset_read_by_the_workers(s3):
    from distributed import Client

    with _cluster() as cluster, Client(cluster) as client:
        address = cluster.scheduler_address
        # the workers hold no file of it: they read it from S3
        assert all(v == "testing" for v in client.run(os.environ.get,
                                                      "AWS_ACCESS_KEY_ID").values())
        for args in (["eval", f"s3://bce/both/{s3}", "--logits", "logit_*", "--targets",
                      "a,b"],
                     ["suggest-pos-weight", f"s3://bce/both/{s3}", "--targets", "a,b"]):
            args += ["--format", "json", "--batch-rows", BATCH]
            local = invoke(*args)
            dask = invoke(*args, "--engine", "dask", "--scheduler", address)
            assert local.exit_code == 0, local.output
            assert dask.exit_code == 0, dask.output
            assert dask.stdout == local.stdout
