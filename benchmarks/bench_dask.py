"""``bce eval --engine local`` against ``--engine dask`` with 1 and 2 local workers.

    python benchmarks/bench_dask.py [--elements 2e7] [--classes 10] [--files 4] [--repeat 2]

Writes a Parquet dataset (float32 logits and targets, one column per class, in
``--files`` files) to a temporary directory, then times whole ``bce eval`` processes
(best of ``--repeat``; the dask figures include starting the LocalCluster) and checks
that every engine printed the same JSON report.
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
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_dataset(root, int(opts.elements), opts.classes, opts.files)
        base = [str(root), "--logits", "logit_*", "--targets", "label_*", "--format", "json"]
        print(f"{int(opts.elements):.2e} elements, {opts.classes} classes, {opts.files} "
              f"Parquet files, {os.cpu_count()} cores; best of {opts.repeat} whole runs")
        reports = {}
        for name, extra in [("local", ["--engine", "local"]),
                            ("dask, 1 worker", ["--engine", "dask", "--scheduler", "local:1"]),
                            ("dask, 2 workers", ["--engine", "dask", "--scheduler", "local:2"])]:
            seconds, reports[name] = run(base + extra, opts.repeat)
            print(f"  {name:<16} {seconds:6.2f} s")
        same = len(set(reports.values())) == 1
        print("  reports identical:", same)
        if not same:
            sys.exit(1)


if __name__ == "__main__":
    main()
