"""How long each kind of kernel form takes to compile, in a fresh process with an empty cache.

    python benchmarks/bench_compile.py [--repeat 2]

For each case, a new process with an empty ``NUMBA_CACHE_DIR`` and the compiled tier
forced runs ``class_stats`` (for ``metrics``: ``MetricsAccumulator.update``) twice on 1e5
elements: with bool targets (numba's start, the
shared functions and the form's first argument type), then with targets of the logits'
type (that form's second argument type: its compile alone).  The second column is the
figure to hold against "no form takes more than 2 s"; best of ``--repeat`` processes.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = """
import sys, time
import numpy as np
import os
from bce_cli import _cache_dirs, _native, _tiers
only = os.path.join(os.environ["NUMBA_CACHE_DIR"], "bce_cli")  # no other cache directory
_native.cache_dirs = _cache_dirs.cache_dirs = lambda: [only]
from bce_cli._dispatch import LossOptions, class_stats
from bce_cli.stats import OUT_NONE, OUT_ONLY
_tiers.set_tier("compiled")
bits, kind = int(sys.argv[1]), sys.argv[2]
dt = np.float32 if bits == 32 else np.float64
shape, axis = ((20000, 5), 1) if kind in ("rows", "metrics") else ((100000,), None)
x = np.random.default_rng(0).standard_normal(shape).astype(dt)
y = np.random.default_rng(1).random(shape) < 0.3
opts = LossOptions(ignore=-1.0) if kind == "general" else LossOptions()
write = OUT_ONLY if kind == "direct" else OUT_NONE
times = []
for targets in (y, y.astype(dt)):
    start = time.perf_counter()
    if kind == "metrics":  # --metrics' pass: its own form
        from bce_cli.metrics import MetricsAccumulator

        MetricsAccumulator(5).update(x, targets)
    else:
        class_stats(x, targets, axis, opts, write=write, moments=kind != "direct")
    times.append(time.perf_counter() - start)
from bce_cli import _launch
print(" ".join(sorted({f.name for f, _ in _launch._entries})), *times)
"""

CASES = [f"{bits}:{kind}" for bits in (32, 64)
         for kind in ("plain", "general", "direct", "rows", "metrics")]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--cases", default=",".join(CASES),
                        help="comma-separated BITS:KIND (kinds: plain, general, direct, rows, "
                             "metrics)")
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    print(f"{'form':<28} {'first type (+ numba start)':>27} {'second type alone':>18}")
    for bits, kind in (case.split(":") for case in args.cases.split(",")):
        best = None
        for _ in range(args.repeat):
            with tempfile.TemporaryDirectory() as cache:
                done = subprocess.run([sys.executable, "-c", CHILD, str(bits), kind],
                                      env={**env, "NUMBA_CACHE_DIR": cache}, cwd=ROOT,
                                      capture_output=True, text=True, check=True)
            *names, first, second = done.stdout.split()
            if best is None or float(second) < best[2]:
                best = (" ".join(names), float(first), float(second))
        print(f"{best[0]:<28} {best[1]:>25.2f} s {best[2]:>16.2f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
