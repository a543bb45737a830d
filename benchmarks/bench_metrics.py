"""What ``--metrics all`` costs: the same ``bce eval`` job plain and with every metric,
side by side in one run (fresh processes, this checkout, one warm kernel cache).

    python benchmarks/bench_metrics.py [--data DIR] [--repeat 5] [--rows 4000000]

The job is ``bench_streaming.generate``'s Parquet pair (float32 logits, bool targets,
25 classes, 256k-row groups).  ``bce warmup`` fills a fresh kernel cache first (with
``--no-warmup`` the metrics' kernel is still compiled by the first run, but the loss's
forms never are, so the loss keeps the NumPy tier).  Both commands run once (files in
the page cache), then alternate run by run so that a change in the machine's load
hits both alike.  Printed: best wall time of each, the ratio, and the load average.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).parent
ROOT = HERE.parent
PY = sys.executable

sys.path.insert(0, str(HERE))
from bench_e2e import cpu, make_parquet  # noqa: E402
from bench_stats import side_by_side  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", help="directory for the generated inputs (kept between runs)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--rows", type=int, default=4_000_000)
    ap.add_argument("--no-warmup", action="store_true",
                    help="skip `bce warmup` (the loss's kernels then stay uncompiled, and the "
                         "loss keeps the NumPy tier)")
    args = ap.parse_args()
    data = Path(args.data or tempfile.mkdtemp(prefix="bce-metrics-")).resolve()
    data.mkdir(parents=True, exist_ok=True)
    inputs = make_parquet(data / "pq256k", args.rows, 256 * 1024)
    print(f"machine: {cpu()}; best of {args.repeat} fresh processes, alternating")
    with tempfile.TemporaryDirectory() as cache:
        env = {k: v for k, v in os.environ.items() if k != "BCE_TIER"}
        env.update(PYTHONPATH=str(ROOT), NUMBA_CACHE_DIR=cache)
        if not args.no_warmup:  # as a deployment would: every kernel form in the cache
            subprocess.run([PY, "-m", "bce_cli", "warmup"], env=env, check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        base = [PY, "-m", "bce_cli", "eval", *inputs, "--format", "json"]
        jobs = [("bce eval (loss only)", base, env),
                ("bce eval --metrics all", [*base, "--metrics", "all"], env)]
        times = side_by_side(jobs, args.repeat)
    print(f"bce eval preds.parquet labels.parquet, {args.rows} x 25 float32 + bool")
    first = next(iter(times.values()))
    for label, t in times.items():
        print(f"  {label:<28} {t:6.2f} s   {t / first:5.2f}x")
    print(f"load average (1, 5, 15 min): {os.getloadavg()}")


if __name__ == "__main__":
    main()
