"""``bce eval --engine local`` against ``--engine dask`` with 1 and 2 local workers.

    python benchmarks/bench_dask.py [--elements 2e7] [--classes 10] [--files 4] [--repeat 2]
                                    [--workers 1,2] [--memory 1,2,4]

Writes a Parquet dataset (float32 logits and targets, one column per class, in
``--files`` files) to a temporary directory, then times whole ``bce eval`` processes
(best of ``--repeat``: a local run, one with ``--threads N`` for each N of ``--workers``,
then dask on N local workers, its figures including the LocalCluster's start), then
``bce eval --scheduler ADDRESS`` against a LocalCluster of each of ``--workers`` workers
started beforehand (as a deployed cluster is: only the client process timed), and checks
that every engine printed the same JSON report.

``--memory``: at each of these multiples of the data (the same files hard-linked
again, so 4x costs no disk), the peak RSS of a local run, and of the driver and of
each worker of a run on a fresh LocalCluster of 2 workers (``ru_maxrss`` of each
process, read on the workers with ``client.run``; the workers' idle peak is shown
beside it).  Empty: no memory runs.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def write_dataset(root: Path, elements: int, classes: int, files: int) -> None:
    rng = np.random.default_rng(0)
    rows = elements // classes // files
    for k in range(files):
        cols = {f"logit_{c}": rng.normal(size=rows).astype(np.float32) for c in range(classes)}
        cols |= {f"label_{c}": (rng.random(rows) < 0.3).astype(np.float32)
                 for c in range(classes)}
        pq.write_table(pa.table(cols), root / f"part{k}.parquet", row_group_size=1 << 17)


def scaled(base: Path, scale: int) -> Path:
    """A directory holding the files of ``base`` ``scale`` times (hard links)."""
    if scale == 1:
        return base
    out = base.parent / f"x{scale}"
    out.mkdir()
    files = sorted(base.iterdir())
    for k in range(scale * len(files)):
        os.link(files[k % len(files)], out / f"part{k:04d}.parquet")
    return out


def _peak_kib() -> int:
    """This process's peak RSS (VmHWM, Linux; ``ru_maxrss`` would count the RSS of the
    process that forked it, here the benchmark holding its data)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))


# bce eval, printing its peak RSS on stderr as it exits
_BCE = ("import atexit, sys\n"
        "from benchmarks.bench_dask import _peak_kib\n"
        "atexit.register(lambda: print('PEAK', _peak_kib(), file=sys.stderr))\n"
        "from bce_cli.cli import main\n"
        "sys.argv[0] = 'bce'\n"
        "main()\n")


def peak_of_run(args: list[str]) -> tuple[int, str]:
    """(peak RSS in KiB, stdout) of one ``bce eval`` process."""
    root = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", _BCE, "eval", *args], capture_output=True,
                          text=True, env=env, check=True)
    peak = [line for line in done.stderr.splitlines() if line.startswith("PEAK ")]
    return int(peak[-1].split()[1]), done.stdout


def memory(args: list[str], scale: int, elements: int) -> list[str]:
    """Peak RSS of a local run and of a dask run on 2 fresh workers, as report lines."""
    from distributed import Client

    from bce_cli._dask import local_cluster

    local, report = peak_of_run([*args, "--engine", "local"])
    with local_cluster(2) as cluster, Client(cluster) as client:
        idle = client.run(_peak_kib)
        driver, dask_report = peak_of_run([*args, "--engine", "dask", "--scheduler",
                                           cluster.scheduler_address])
        busy = client.run(_peak_kib)
    if dask_report != report:
        raise SystemExit("the dask report differs from the local one")
    mib = lambda kib: f"{kib / 1024:,.0f} MiB"  # noqa: E731
    workers = ", ".join(f"{mib(busy[w])} (idle {mib(idle[w])})" for w in sorted(busy))
    return [f"  {scale}x ({scale * elements:.1e} elements): local {mib(local)}; dask driver "
            f"{mib(driver)}, workers {workers}"]


def run(args: list[str], repeat: int) -> tuple[float, str]:
    best, out = float("inf"), ""
    for _ in range(repeat):
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "bce_cli", "eval", *args],
                              capture_output=True, text=True, check=True)
        best = min(best, time.perf_counter() - start)
        out = done.stdout
    return best, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--elements", type=float, default=2e7)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--workers", default="1,2",
                        help="numbers of local workers to time: 1,2,16")
    parser.add_argument("--memory", default="",
                        help="multiples of the data at which to measure peak RSS: 1,2,4")
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "x1"
        root.mkdir()
        write_dataset(root, int(opts.elements), opts.classes, opts.files)
        select = ["--logits", "logit_*", "--targets", "label_*", "--format", "json"]
        base = [str(root), *select]
        print(f"{int(opts.elements):.2e} elements, {opts.classes} classes, {opts.files} "
              f"Parquet files, {os.cpu_count()} cores; best of {opts.repeat} whole runs")
        reports = {}
        workers = [int(w) for w in opts.workers.split(",")]
        runs = [("local", ["--engine", "local"])]
        runs += [(f"local --threads {n}", ["--engine", "local", "--threads", str(n)])
                 for n in workers]
        runs += [(f"dask, {n} worker{'s' if n > 1 else ''}",
                  ["--engine", "dask", "--scheduler", f"local:{n}"]) for n in workers]
        times = {}
        for name, extra in runs:
            times[name], reports[name] = run(base + extra, opts.repeat)
            print(f"  {name:<18} {times[name]:6.2f} s")
        # As on a deployed cluster: the workers started beforehand and kept (warm after the
        # first run), only the `bce eval --scheduler ADDRESS` process timed.
        from bce_cli._dask import local_cluster

        for n in workers:
            name = f"dask, {n} running"
            with local_cluster(n) as cluster:
                seconds, reports[name] = run(
                    base + ["--engine", "dask", "--scheduler", cluster.scheduler_address],
                    opts.repeat + 1)
            times[name] = seconds
            print(f"  {name:<18} {seconds:6.2f} s  (worker{'s' if n > 1 else ''} started "
                  "beforehand)")
        # The goals: N running workers against one, and against a local run with --threads N
        # (which sets the kernels' threads; pyarrow still decodes on every core).
        one = times.get("dask, 1 running")
        for n in workers:
            if n == 1:
                continue
            running = times[f"dask, {n} running"]
            ratios = [f"{running / times[f'local --threads {n}']:.2f}x the time of a local run "
                      f"with --threads {n}"]
            if one is not None:
                ratios.insert(0, f"{one / running:.2f}x as fast as one worker")
            print(f"  {n} workers running: " + ", ".join(ratios))
        same = len(set(reports.values())) == 1
        print("  reports identical:", same)
        if not same:
            sys.exit(1)
        scales = [int(s) for s in opts.memory.split(",") if s.strip()]
        if scales:
            print("peak RSS (dask: a fresh LocalCluster of 2 workers, started beforehand)")
        for scale in scales:
            print(*memory([str(scaled(root, scale)), *select], scale, int(opts.elements)),
                  sep="\n", flush=True)


if __name__ == "__main__":
    main()
