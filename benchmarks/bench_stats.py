"""What the statistics cost: the same ``bce eval`` jobs by this checkout and by another
revision (before the statistics existed), side by side in one run.

    make bench                    # runs this last
    python benchmarks/bench_stats.py [--against REV] [--data DIR] [--repeat 5]

The other revision is checked out into a temporary git worktree and run from there
(``python -m bce_cli`` with its own kernel cache); both caches are warmed first,
and the two commands alternate run by run so that a change in the machine's load
hits both alike.  Printed: best wall time of fresh processes and the ratio.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).parent
ROOT = HERE.parent
PY = sys.executable
# The last revision whose report had no intervals ("today's loss-only run" of issue 14).
LOSS_ONLY = "39a06b0"

sys.path.insert(0, str(HERE))
from bench_e2e import cpu, make_parquet  # noqa: E402


def _timed(cmd, env) -> float:
    # Run from the checkout the job imports (its PYTHONPATH): ``python -m`` puts the working
    # directory first on sys.path, ahead of PYTHONPATH, so a job run from this checkout
    # would import this checkout's bce_cli whatever its PYTHONPATH says.
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=env.get("PYTHONPATH"), stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE)
    if proc.returncode not in (0, 1):
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr.decode()}")
    return time.perf_counter() - start


def side_by_side(jobs, repeat):
    """``jobs``: (label, cmd, env); best wall time of each, run in turn."""
    for _, cmd, env in jobs:
        _timed(cmd, env)  # warm: kernels compiled into the job's cache, files in page cache
    times = {label: [] for label, _, _ in jobs}
    for _ in range(repeat):
        for label, cmd, env in jobs:
            times[label].append(_timed(cmd, env))
    return {label: min(ts) for label, ts in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--against", default=LOSS_ONLY, help="revision to compare with")
    ap.add_argument("--data", help="directory for the generated inputs (kept between runs)")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    data = Path(args.data or tempfile.mkdtemp(prefix="bce-stats-")).resolve()
    data.mkdir(parents=True, exist_ok=True)
    pq_in = make_parquet(data / "pq256k", 4_000_000, 256 * 1024)
    print(f"machine: {cpu()}; best of {args.repeat} fresh processes, alternating")
    with tempfile.TemporaryDirectory() as tmp:
        other = os.path.join(tmp, "other")
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", other,
                        args.against], check=True)
        try:
            env = {k: v for k, v in os.environ.items() if k != "BCE_TIER"}
            here_env = dict(env, PYTHONPATH=str(ROOT),
                            NUMBA_CACHE_DIR=tempfile.mkdtemp(dir=tmp))
            other_env = dict(env, PYTHONPATH=other, NUMBA_CACHE_DIR=tempfile.mkdtemp(dir=tmp))
            jobs = [(f"{args.against} (loss only)", [PY, "-m", "bce_cli", "eval", *pq_in],
                     other_env),
                    ("this checkout (with intervals)", [PY, "-m", "bce_cli", "eval", *pq_in],
                     here_env)]
            times = side_by_side(jobs, args.repeat)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", other],
                           check=False)
    print("bce eval preds.parquet labels.parquet, 4M x 25 float32 + bool, 256k-row groups")
    base = next(iter(times.values()))
    for label, t in times.items():
        print(f"  {label:<40} {t:6.2f} s   {t / base:5.2f}x")


if __name__ == "__main__":
    main()
