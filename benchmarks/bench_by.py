"""``bce eval --by COLUMN`` against the plain run, on the same files.

    python benchmarks/bench_by.py [--data DIR] [--rows 4000000] [--groups 1000] [--repeat 3]

Makes (once) the 4M-row x 25-class float32 logits and bool labels of
``bench_streaming.generate`` (256k-row groups), then a copy of the logits with one
more column, ``group``: strings of ``--groups`` distinct values in random order.
Prints the best wall time of ``--repeat`` fresh ``bce eval`` processes (warm
kernel cache) without and with ``--by group``, and their ratio (the goal: at most
1.5x).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

from bench_e2e import BCE, PY, best, cpu  # noqa: E402

ADD_GROUPS = """
import sys
import numpy as np, pyarrow as pa, pyarrow.parquet as pq
src, dst, n_groups = sys.argv[1], sys.argv[2], int(sys.argv[3])
names = np.array([f"source-{i:05d}" for i in range(n_groups)], dtype=object)
rng = np.random.default_rng(1)
f = pq.ParquetFile(src)
with pq.ParquetWriter(dst + ".tmp", f.schema_arrow.append(pa.field("group", pa.string()))) as w:
    for i in range(f.num_row_groups):
        t = f.read_row_group(i)
        g = pa.array(names[rng.integers(0, n_groups, t.num_rows)], pa.string())
        w.write_table(t.append_column("group", g), row_group_size=t.num_rows)
import os; os.replace(dst + ".tmp", dst)
"""
MAKE = """
import sys
sys.path.insert(0, sys.argv[1])
from bench_streaming import generate
generate(sys.argv[2], int(sys.argv[3]), 256 * 1024)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", help="directory for the generated inputs (kept between runs)")
    ap.add_argument("--rows", type=int, default=4_000_000)
    ap.add_argument("--groups", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    data = Path(args.data or tempfile.mkdtemp(prefix="bce-by-"))
    data.mkdir(parents=True, exist_ok=True)
    subprocess.run([PY, "-c", MAKE, str(HERE), str(data), str(args.rows)], check=True)
    preds = data / f"preds_{args.rows}x25.parquet"
    labels = data / f"labels_{args.rows}x25.parquet"
    grouped = data / f"preds_{args.rows}x25_{args.groups}groups.parquet"
    if not grouped.exists():
        subprocess.run([PY, "-c", ADD_GROUPS, str(preds), str(grouped), str(args.groups)],
                       check=True)
    print(f"machine: {cpu()}; best of {args.repeat} fresh processes; data in {data}")
    env = dict(os.environ)
    env.pop("BCE_TIER", None)
    inputs = [str(grouped), str(labels)]
    best([BCE, "eval", *inputs, "--by", "group"], 1, env)  # fills the kernel cache
    plain, rss = best([BCE, "eval", *inputs], args.repeat, env)
    by, rss_by = best([BCE, "eval", *inputs, "--by", "group", "--format", "json"],
                      args.repeat, env)
    print(f"bce eval, {args.rows:,} rows x 25 float32 + bool labels, 256k-row groups")
    print(f"  plain                        {plain:6.2f} s  {rss:6.0f} MB")
    print(f"  --by group ({args.groups:,} groups)     {by:6.2f} s  {rss_by:6.0f} MB   "
          f"{by / plain:4.2f}x plain")


if __name__ == "__main__":
    main()
