"""--engine dask: the same report as --engine local, bit for bit, on a small cluster of
worker processes (one for the module); errors placed as locally; what is not yet
supported is refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from contextlib import contextmanager

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

pytest.importorskip("distributed", reason="Dask is an optional extra: pip install "
                    "'bce-cli[dask]'")

from bce_cli.cli import app  # noqa: E402

runner = CliRunner()
# (rows, row group size) of each file: row groups and batches straddle the files
FILES = [(1000, 300), (777, 100), (1500, 1000), (10, 3), (600, 600)]


@contextmanager
def local_cluster():
    """The address of a LocalCluster of 2 worker processes, one thread each."""
    from bce_cli._dask import local_cluster as start

    with start(2) as cluster:
        yield cluster.scheduler_address


@pytest.fixture(scope="module")
def scheduler():
    with local_cluster() as address:
        yield address


def _write(root, name, columns, files=FILES):
    (root / name).mkdir()
    start = 0
    for k, (rows, group) in enumerate(files):
        table = pa.table({c: v[start:start + rows] for c, v in columns.items()})
        pq.write_table(table, root / name / f"part{k}.parquet", row_group_size=group)
        start += rows
    return str(root / name)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("dask")
    rng = np.random.default_rng(20261129)
    n = sum(rows for rows, _ in FILES)
    logits = {"logit_a": rng.normal(size=n).astype(np.float32), "logit_b": 3 * rng.normal(size=n)}
    targets = {"a": (rng.random(n) > 0.7).astype(np.float32), "b": rng.random(n)}
    weight = {"w": rng.random(n) * 2}
    keys = np.array(["north", "south", "east", "west", None], dtype=object)[
        rng.integers(0, 5, n)]
    group = {"g": pa.array(keys.tolist(), pa.string())}  # --by: a null key is a group too
    shifted = {"new_a": (logits["logit_a"] + rng.normal(scale=0.3, size=n)).astype(np.float32),
               "new_b": logits["logit_b"] * 0.9}  # bce compare: a second model
    messy_t = {k: v.astype(np.float64).copy() for k, v in targets.items()}
    messy_t["a"][rng.random(n) < 0.1] = -1.0
    messy_t["b"][rng.random(n) < 0.05] = np.nan
    messy_x = {k: v.copy() for k, v in logits.items()}
    messy_x["logit_b"][rng.random(n) < 0.05] = np.nan
    bad = {k: v.copy() for k, v in targets.items()}
    bad["b"][1000 + 777 + 42] = np.nan  # the third file's row 42
    pos_weight = root / "pw.json"
    pos_weight.write_text(json.dumps({"pos_weight": [2.5, 0.5],
                                      "classes": [{"name": "a", "pos_weight": 2.5},
                                                  {"name": "b", "pos_weight": 0.5}]}))
    return {
        "both": _write(root, "both", {**logits, **targets, **weight, **group, **shifted}),
        "preds": _write(root, "preds", {**logits, **weight}),
        "preds_new": _write(root, "preds_new", {"logit_a": shifted["new_a"],
                                                "logit_b": shifted["new_b"], **weight}),
        "labels": _write(root, "labels", {**targets, **group}),
        "messy": _write(root, "messy", {**messy_x, **messy_t, **group}),
        "bad": _write(root, "bad", {**logits, **bad}),
        "pos_weight": str(pos_weight),
    }


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def both_engines(*args, scheduler):
    """(local, dask) results of the same command."""
    return invoke(*args, "--engine", "local"), invoke(*args, "--engine", "dask",
                                                      "--scheduler", scheduler)


CASES = {
    "plain": lambda d: [d["both"], "--logits", "logit_*", "--targets", "a,b"],
    "two datasets": lambda d: [d["preds"], d["labels"], "--logits", "logit_*"],
    "weight column": lambda d: [d["both"], "--logits", "logit_*", "--targets", "a,b",
                                "--weight", "w", "--reduction", "sum"],
    "pos_weight json": lambda d: [d["preds"], d["labels"], "--logits", "logit_*",
                                  "--pos-weight", d["pos_weight"]],
    "smoothing, ignore, omit": lambda d: [d["messy"], "--logits", "logit_*", "--targets",
                                          "a,b", "--label-smoothing", "0.1", "--ignore-value",
                                          "-1", "--nan-policy", "omit"],
    "by": lambda d: [d["both"], "--logits", "logit_*", "--targets", "a,b", "--by", "g",
                     "--weight", "w"],
    "by in labels": lambda d: [d["preds"], d["labels"], "--logits", "logit_*", "--by", "g"],
    "by, ignore, omit": lambda d: [d["messy"], "--logits", "logit_*", "--targets", "a,b",
                                   "--ignore-value", "-1", "--nan-policy", "omit", "--by", "g"],
    "metrics": lambda d: [d["both"], "--logits", "logit_*", "--targets", "a,b", "--weight", "w",
                          "--metrics", "all"],
    "metrics, ignore, omit": lambda d: [d["messy"], "--logits", "logit_*", "--targets", "a,b",
                                        "--ignore-value", "-1", "--nan-policy", "omit",
                                        "--metrics", "all", "--bins", "7"],
}


@pytest.mark.parametrize("batch_rows", [250, 1024])
@pytest.mark.parametrize("case", list(CASES))
def test_dask_report_is_the_local_report(data, scheduler, case, batch_rows):
    args = [*CASES[case](data), "--format", "json", "--batch-rows", batch_rows]
    _same_report(args, scheduler, sum(rows for rows, _ in FILES))


def _same_report(args, scheduler, n_rows):
    """``bce eval ARGS`` under both engines: both succeed with the same report."""
    local, dask = both_engines("eval", *args, scheduler=scheduler)
    assert local.exit_code == 0, local.output
    assert dask.exit_code == 0, dask.output
    assert dask.stdout == local.stdout  # every number, to the last bit
    assert json.loads(dask.stdout)["n_rows"] == n_rows


COMPARE_CASES = {
    "one dataset, two column sets": lambda d: [
        d["both"], "--logits-base", "logit_*", "--logits-new", "new_*", "--targets", "a,b",
        "--weight", "w"],
    "three datasets": lambda d: [d["preds"], d["preds_new"], d["labels"], "--logits",
                                 "logit_*", "--by", "g"],
    "by, reduction sum": lambda d: [
        d["both"], "--logits-base", "logit_*", "--logits-new", "new_*", "--targets", "a,b",
        "--by", "g", "--reduction", "sum"],
}


@pytest.mark.parametrize("case", list(COMPARE_CASES))
def test_compare_report_is_the_local_report(data, scheduler, case):
    args = [*COMPARE_CASES[case](data), "--format", "json", "--batch-rows", 400]
    local, dask = both_engines("compare", *args, scheduler=scheduler)
    assert local.exit_code == 0, local.output
    assert dask.exit_code == 0, dask.output
    assert dask.stdout == local.stdout  # every number, to the last bit
    assert json.loads(dask.stdout)["n_rows"] == sum(rows for rows, _ in FILES)


@pytest.mark.parametrize("tier", ["numpy", "compiled"])
def test_both_tiers_agree_bit_for_bit(data, scheduler, monkeypatch, tier):
    monkeypatch.setenv("BCE_TIER", tier)
    args = [*CASES["weight column"](data), "--format", "json", "--batch-rows", 500]
    local, dask = both_engines("eval", *args, scheduler=scheduler)
    assert local.exit_code == dask.exit_code == 0, local.output + dask.output
    assert dask.stdout == local.stdout


def test_gates_fail_the_same(data, scheduler):
    args = [*CASES["plain"](data), "--max-class-loss", "0.5", "--batch-rows", 300]
    local, dask = both_engines("eval", *args, scheduler=scheduler)
    assert local.exit_code == dask.exit_code == 1
    assert dask.output == local.output


def test_suggest_pos_weight(data, scheduler):
    args = [data["labels"], "--format", "json", "--batch-rows", 333]
    local, dask = both_engines("suggest-pos-weight", *args, scheduler=scheduler)
    assert local.exit_code == dask.exit_code == 0, dask.output
    assert dask.stdout == local.stdout


def _processes_with(marker: str) -> list[int]:
    """The processes whose environment holds ``marker`` (Linux's /proc)."""
    pids = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if marker.encode() in f.read():
                    pids.append(int(entry))
        except (OSError, ValueError):  # not a process, gone, or not ours to read
            pass
    return pids


def _marked_run(argv: list[str], tmp_path):
    """``argv`` run in a subprocess whose environment carries a marker, with Dask's
    scratch space in ``tmp_path``: (the finished process, the processes still marked)."""
    marker = f"BCE_TEST_MARK_{os.getpid()}_{time.time_ns()}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), marker: "1",
           "TMPDIR": str(tmp_path), "DASK_TEMPORARY_DIRECTORY": str(tmp_path)}
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)
    return done, _processes_with(marker)


def _no_worker_left_a_directory(tmp_path) -> bool:
    scratch = tmp_path / "dask-scratch-space"
    assert scratch.is_dir()  # the cluster's scratch space was here (its lock file stays)
    return not any(scratch.glob("worker-*"))


needs_proc = pytest.mark.skipif(not os.path.isdir("/proc/self"),
                                reason="lists processes through /proc")


@needs_proc
def test_the_command_ends_with_its_cluster_gone(data, tmp_path):
    """``bce`` after a Dask job (cli.command): the exit handlers run, then the process ends
    without Python's teardown; the report is whole and the LocalCluster's processes (its
    scheduler is a thread of the driver; nannies and workers are processes) are gone with
    the driver, their scratch directories removed."""
    args = [*CASES["two datasets"](data), "--format", "json", "--batch-rows", 700]
    done, left = _marked_run([sys.executable, "-m", "bce_cli", "eval", *map(str, args),
                              "--engine", "dask", "--scheduler", "local:2"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout == invoke("eval", *args).stdout
    assert left == []
    assert _no_worker_left_a_directory(tmp_path)


_LEFT_OPEN = """
from bce_cli import cli

def main():  # a job that leaves its cluster and client open
    from distributed import Client
    from bce_cli._dask import local_cluster
    cluster = local_cluster(1)
    client = Client(cluster)
    print(client.submit(sum, [1, 2]).result())

cli.main = main
cli.command()
"""


@needs_proc
def test_the_command_closes_a_cluster_left_open(tmp_path):
    """The exit handlers that ``cli.command`` runs before skipping the teardown are what
    close a cluster nobody closed: its processes end and their directories go."""
    done, left = _marked_run([sys.executable, "-c", _LEFT_OPEN], tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "3\n"
    assert left == []
    assert _no_worker_left_a_directory(tmp_path)


def test_bad_row_in_a_later_file_is_placed(data, scheduler):
    args = ["eval", data["bad"], "--logits", "logit_*", "--targets", "a,b", "--batch-rows",
            200]
    local, dask = both_engines(*args, scheduler=scheduler)
    assert local.exit_code == dask.exit_code == 2
    assert "part2.parquet" in dask.stderr and "column 'b'" in dask.stderr
    assert "row 42" in dask.stderr
    assert dask.stderr == local.stderr


def test_a_local_cluster_of_two(data):
    args = [*CASES["two datasets"](data), "--format", "json", "--batch-rows", 700]
    local = invoke("eval", *args)
    dask = invoke("eval", *args, "--engine", "dask", "--scheduler", "local:2")
    assert dask.exit_code == 0, dask.output
    assert dask.stdout == local.stdout


def test_not_yet_supported(data):
    result = invoke("compare", data["preds"], data["preds_new"], data["labels"], "--on", "id",
                    "--engine", "dask")
    assert result.exit_code == 2
    assert "not yet supported with --engine dask" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


# --on KEY: the join through Dask's merge.  PREDS's files are named so that a "natural"
# sort (part5 before part10) is not bce's path order; LABELS holds the same rows shuffled
# and cut into other files; a string key ("id") and an integer one ("n": int64 in PREDS,
# int32 in LABELS).
ON_FILES = [(700, 200), (1100, 1100), (40, 7), (900, 250), (300, 300)]


def _write_named(root, name, table, files, names):
    (root / name).mkdir()
    start = 0
    for (rows, group), file in zip(files, names, strict=True):
        pq.write_table(table.slice(start, rows), root / name / file, row_group_size=group)
        start += rows
    return str(root / name)


def _joined(root, name, preds, labels):
    """Two datasets, ``preds`` in PREDS's row order, ``labels`` shuffled."""
    n = preds.num_rows
    order = np.random.default_rng(len(name)).permutation(n)
    p = _write_named(root, name + "_p", preds, ON_FILES, [f"part{5 * k}.parquet"
                                                         for k in range(len(ON_FILES))])
    lfiles = [(n // 3, 500), (n // 3, 123), (n - 2 * (n // 3), 1000)]
    return p, _write_named(root, name + "_l", labels.take(order), lfiles,
                           [f"l{k}.parquet" for k in range(3)])


@pytest.fixture(scope="module")
def joined(tmp_path_factory):
    pytest.importorskip("dask.dataframe", reason="--on under --engine dask needs "
                        "dask.dataframe: pip install 'bce-cli[dask]'")
    root = tmp_path_factory.mktemp("dask_on")
    rng = np.random.default_rng(20261130)
    n = sum(rows for rows, _ in ON_FILES)
    ids = pa.array([f"row-{i:05d}" for i in rng.permutation(n)])
    nums = rng.permutation(n) * 3 - 1000
    preds = pa.table({"id": ids, "n": pa.array(nums, pa.int64()),
                      "logit_a": rng.normal(size=n).astype(np.float32),
                      "logit_b": 3 * rng.normal(size=n), "w": rng.random(n) * 2})
    t_a = (rng.random(n) > 0.7).astype(np.float32)
    t_b = rng.random(n)
    group = np.array(["north", "south", "east"])[rng.integers(0, 3, n)]
    labels = pa.table({"id": ids, "n": pa.array(nums, pa.int32()), "a": t_a, "b": t_b,
                       "g": group})
    messy_b = t_b.copy()
    messy_b[rng.random(n) < 0.05] = np.nan
    messy_a = t_a.copy()
    messy_a[rng.random(n) < 0.1] = -1.0
    messy = labels.set_column(2, "a", pa.array(messy_a)).set_column(3, "b", pa.array(messy_b))
    out = {"preds": _joined(root, "clean", preds, labels),
           "messy": _joined(root, "messy", preds, messy)}
    # the error cases: one defect each, rows at known places
    dup = labels.set_column(0, "id", pa.array(ids.to_pylist()[:-1] + [ids[10].as_py()]))
    out["dup"] = _joined(root, "dup", preds, dup)
    missing = labels.set_column(0, "id", pa.array(ids.to_pylist()[:-2] + ["x1", "x2"]))
    out["missing"] = _joined(root, "missing", preds, missing)
    keys = ids.to_pylist()
    keys[1500] = None
    out["null key"] = _joined(root, "nullkey", preds.set_column(0, "id", pa.array(keys)),
                              labels)
    null_b = pa.array(t_b.tolist()[:2000] + [None] + t_b.tolist()[2001:])
    out["null value"] = _joined(root, "nullvalue", preds, labels.set_column(3, "b", null_b))
    bad_b = t_b.copy()
    bad_b[2500] = 1.5
    out["bad target"] = _joined(root, "badtarget", preds,
                                labels.set_column(3, "b", pa.array(bad_b)))
    out["key types"] = _joined(root, "keytypes", preds,
                               labels.set_column(1, "n", pa.array(nums.astype(str))))
    out["pos_weight"] = str(root / "pw.json")
    (root / "pw.json").write_text(json.dumps({"pos_weight": [2.5, 0.5]}))
    return out


ON_CASES = {
    "string key": lambda d: [*d["preds"], "--on", "id", "--logits", "logit_*",
                             "--targets", "a,b"],
    "integer key of two widths, weight, by": lambda d: [
        *d["preds"], "--on", "n", "--logits", "logit_*", "--targets", "a,b", "--weight", "w",
        "--by", "g"],
    "pos_weight, sum": lambda d: [*d["preds"], "--on", "id", "--logits", "logit_*",
                                  "--targets", "a,b", "--pos-weight", d["pos_weight"],
                                  "--reduction", "sum"],
    "smoothing, ignore, omit, metrics": lambda d: [
        *d["messy"], "--on", "id", "--logits", "logit_*", "--targets", "a,b",
        "--label-smoothing", "0.1", "--ignore-value", "-1", "--nan-policy", "omit",
        "--metrics", "all", "--by", "g"],
}


@pytest.mark.parametrize("batch_rows", [250, 1024])
@pytest.mark.parametrize("case", list(ON_CASES))
def test_on_report_is_the_local_report(joined, scheduler, case, batch_rows):
    args = [*ON_CASES[case](joined), "--format", "json", "--batch-rows", batch_rows]
    _same_report(args, scheduler, sum(rows for rows, _ in ON_FILES))


def test_on_a_local_cluster_of_one(joined):
    args = [*ON_CASES["string key"](joined), "--format", "json", "--batch-rows", 600,
            "--reduction", "mean", "--metrics", "auroc"]
    local = invoke("eval", *args)
    dask = invoke("eval", *args, "--engine", "dask", "--scheduler", "local:1")
    assert dask.exit_code == 0, dask.output
    assert dask.stdout == local.stdout


def test_on_output_dataset_is_the_local_output(joined, scheduler, tmp_path):
    args = [*ON_CASES["string key"](joined), "--reduction", "none", "--batch-rows", 400]
    local = invoke("eval", *args, "--output", tmp_path / "local.parquet")
    dask = invoke("eval", *args, "--output", tmp_path / "dask", "--engine", "dask",
                  "--scheduler", scheduler)
    assert local.exit_code == dask.exit_code == 0, dask.output
    assert pq.read_table(tmp_path / "dask").equals(pq.read_table(tmp_path / "local.parquet"))


ON_ERRORS = {  # the case's data, the options, what the message names
    "duplicate key": ("dup", ["--on", "id"], "1 duplicate key value(s)"),
    "unmatched keys": ("missing", ["--on", "id"], "2 key(s) of"),
    "null key": ("null key", ["--on", "id"], "missing join key (null)"),
    "null value": ("null value", ["--on", "n"], "missing value (null)"),
    "bad target": ("bad target", ["--on", "id"], "(joined on id)"),
    "key types": ("key types", ["--on", "n"], "key types differ"),
}


@pytest.mark.parametrize("case", list(ON_ERRORS))
def test_on_errors_are_the_local_errors(joined, scheduler, case):
    which, options, expected = ON_ERRORS[case]
    args = ["eval", *joined[which], *options, "--logits", "logit_*", "--targets", "a,b",
            "--batch-rows", 300]
    local, dask = both_engines(*args, scheduler=scheduler)
    assert local.exit_code == dask.exit_code == 2, dask.output
    assert expected in local.stderr
    assert dask.stderr == local.stderr


def _python(code):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, check=False)


def test_without_dask_the_extra_is_named(data):
    done = _python("import sys; sys.modules['distributed'] = None\n"
                   "from bce_cli.cli import main\n"
                   f"sys.argv = ['bce', 'eval', {data['both']!r}, '--engine', 'dask']\n"
                   "main()")
    assert done.returncode == 2, done.stderr
    assert "pip install 'bce-cli[dask]'" in done.stderr


def _local_run(*args, block_pandas=False):
    """(dask imported, distributed imported, exit status, stdout, pandas imported) of a local
    ``bce eval``
    in a fresh process; ``block_pandas``: with pandas unimportable."""
    done = _python("import io, sys\n"
                   + ("sys.modules['pandas'] = None\n" if block_pandas else "")
                   + "from bce_cli.cli import main\n"
                   f"sys.argv = ['bce', 'eval', *{[str(a) for a in args]!r}]\n"
                   "out, sys.stdout = sys.stdout, io.StringIO()\n"
                   "try:\n    main()\nexcept SystemExit as e:\n    code = e.code\n"
                   "report, sys.stdout = sys.stdout.getvalue(), out\n"
                   "print(repr(('dask' in sys.modules, 'distributed' in sys.modules, code, "
                   "report, 'pandas' in sys.modules)))")
    return eval(done.stdout.strip().splitlines()[-1]) if done.stdout.strip() else done.stderr


def test_a_local_cluster_leaves_this_process_environment_alone():
    """Its workers run numba on one thread each, set in their own environment: the
    Nanny's pre-spawn-environ would have written NUMBA_NUM_THREADS=1 into this process's
    too, and a compile here after numba started its threads then fails."""
    from distributed import Client

    from bce_cli._dask import local_cluster

    before = dict(os.environ)
    with local_cluster(1) as cluster, Client(cluster) as client:
        assert dict(os.environ) == before

        def numba_threads():
            import numba

            return numba.config.NUMBA_NUM_THREADS

        assert list(client.run(numba_threads).values()) == [1]


def test_the_local_engine_never_imports_dask(data):
    ran = _local_run(data["both"], "--logits", "logit_*", "--targets", "a,b")
    assert ran[:3] == (False, False, 0), ran


def test_a_local_join_needs_neither_dask_nor_pandas(joined):
    """pandas is Dask's dataframe's, not bce's: a local --on run imports neither Dask nor
    pandas (installed here) and runs as well without pandas."""
    args = [*ON_CASES["string key"](joined), "--format", "json"]
    ran = _local_run(*args)
    assert ran[:3] == (False, False, 0) and ran[4] is False, ran
    assert _local_run(*args, block_pandas=True)[:4] == ran[:4]


def test_help_imports_no_dask_nor_pandas():
    done = _python("import sys\nfrom bce_cli.cli import main\n"
                   "sys.argv = ['bce', 'eval', '--help']\n"
                   "try:\n    main()\nexcept SystemExit:\n    pass\n"
                   "print(sorted(m for m in ('dask', 'distributed', 'pandas') "
                   "if m in sys.modules))")
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stderr
