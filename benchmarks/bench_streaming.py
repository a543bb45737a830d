"""Streaming read benchmark for the data layer.

Generates (once, if missing) a 4M-row x 25-class float32 Parquet file of logits and a
second Parquet file of bool labels, then compares

* pyarrow alone: ``pq.read_table`` of the same columns (whole files into memory),
* ``bce_cli.data.open_inputs(...).batches()``, touching every batch (a sum per
  batch), run in a fresh subprocess so that its peak RSS (``ru_maxrss``) is its own.

Usage::

    python benchmarks/bench_streaming.py [DATA_DIR] [--rows N] [--batch-rows N] [--repeat K]

Goal: peak RSS <= 300 MB and time <= 1.5x the pyarrow read.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

CLASSES = 25


def generate(data_dir: str, rows: int, row_group: int) -> tuple[str, str]:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    preds = os.path.join(data_dir, f"preds_{rows}x{CLASSES}.parquet")
    labels = os.path.join(data_dir, f"labels_{rows}x{CLASSES}.parquet")
    if os.path.exists(preds) and os.path.exists(labels):
        return preds, labels
    os.makedirs(data_dir, exist_ok=True)
    rng = np.random.default_rng(0)
    names = [f"class_{i:02d}" for i in range(CLASSES)]
    pschema = pa.schema([pa.field(n, pa.float32()) for n in names])
    lschema = pa.schema([pa.field(n, pa.bool_()) for n in names])
    t0 = time.perf_counter()
    with (
        pq.ParquetWriter(preds + ".tmp", pschema) as pw,
        pq.ParquetWriter(labels + ".tmp", lschema) as lw,
    ):
        for a in range(0, rows, row_group):
            n = min(row_group, rows - a)
            x = rng.standard_normal((CLASSES, n), dtype=np.float32) * 3
            y = x + rng.standard_normal((CLASSES, n), dtype=np.float32) > 0
            pw.write_table(pa.table(list(x), schema=pschema), row_group_size=row_group)
            lw.write_table(pa.table(list(y), schema=lschema), row_group_size=row_group)
    os.replace(preds + ".tmp", preds)
    os.replace(labels + ".tmp", labels)
    print(
        f"generated {rows} x {CLASSES} in {time.perf_counter() - t0:.1f} s -> {data_dir}",
        file=sys.stderr,
    )
    return preds, labels


def child(preds: str, labels: str, batch_rows: int, mode: str) -> None:
    """Run one measurement in this (fresh) process; print JSON."""
    import resource

    import numpy as np

    t0 = time.perf_counter()
    if mode == "bce":
        from bce_cli.data import InputSpec, open_inputs

        total = 0.0
        pos = 0
        rows = 0
        with open_inputs(InputSpec(preds, labels, batch_rows=batch_rows)) as inp:
            for b in inp.batches():
                total += float(b.logits.sum(dtype=np.float64))
                pos += int(np.count_nonzero(b.targets))
                rows += b.n_rows
    else:
        import pyarrow.parquet as pq

        tx = pq.read_table(preds)
        ty = pq.read_table(labels)
        total = (
            sum(float(np.asarray(c).sum(dtype=np.float64)) for c in tx.columns)
            if mode == "pyarrow+touch"
            else 0.0
        )
        rows = tx.num_rows
        pos = ty.num_rows
    elapsed = time.perf_counter() - t0
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(
        json.dumps(
            {
                "mode": mode,
                "seconds": elapsed,
                "rss_mb": rss_mb,
                "rows": rows,
                "check": total,
                "pos": pos,
            }
        )
    )


def measure(preds, labels, batch_rows, mode, repeat):
    best = None
    for _ in range(repeat):
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--child",
                mode,
                "--batch-rows",
                str(batch_rows),
                preds,
                labels,
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        r = json.loads(out.stdout.strip().splitlines()[-1])
        if best is None or r["seconds"] < best["seconds"]:
            best = r
    return best


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("paths", nargs="*", help="DATA_DIR (or, internally, PREDS LABELS)")
    ap.add_argument("--rows", type=int, default=4_000_000)
    ap.add_argument("--row-group", type=int, default=256 * 1024)
    ap.add_argument("--batch-rows", type=int, default=65536)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(args.paths[0], args.paths[1], args.batch_rows, args.child)
        return 0
    data_dir = (
        args.paths[0] if args.paths else os.path.join(tempfile.gettempdir(), "bce_bench_streaming")
    )
    preds, labels = generate(data_dir, args.rows, args.row_group)
    size_mb = (os.path.getsize(preds) + os.path.getsize(labels)) / 1e6
    # warm the page cache once so both sides read from memory
    measure(preds, labels, args.batch_rows, "pyarrow", 1)
    pa_r = measure(preds, labels, args.batch_rows, "pyarrow", args.repeat)
    bce_r = measure(preds, labels, args.batch_rows, "bce", args.repeat)
    if bce_r["rows"] != pa_r["rows"]:
        raise SystemExit(f"row count differs: {bce_r['rows']} vs {pa_r['rows']}")
    ratio = bce_r["seconds"] / pa_r["seconds"]
    print(
        f"{args.rows} rows x {CLASSES} classes (float32 logits + bool labels, "
        f"{size_mb:.0f} MB on disk), batch_rows={args.batch_rows}, best of {args.repeat}"
    )
    print(f"{'reader':<40} {'seconds':>8} {'peak RSS MB':>12}")
    print(
        f"{'pyarrow pq.read_table (both files)':<40} {pa_r['seconds']:>8.3f} "
        f"{pa_r['rss_mb']:>12.0f}"
    )
    print(f"{'bce_cli.data batches() + sum':<40} {bce_r['seconds']:>8.3f} {bce_r['rss_mb']:>12.0f}")
    ok_t, ok_m = ratio <= 1.5, bce_r["rss_mb"] <= 300
    print(
        f"time ratio {ratio:.2f}x (goal <= 1.5x: {'ok' if ok_t else 'MISSED'}); "
        f"peak RSS {bce_r['rss_mb']:.0f} MB (goal <= 300 MB: {'ok' if ok_m else 'MISSED'})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
