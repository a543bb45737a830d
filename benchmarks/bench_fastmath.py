"""Micro-benchmark of bce_cli._fastmath: sum of T(|x|) = log1p(exp(-|x|)) in a prange loop.

    python benchmarks/bench_fastmath.py [n]

Prints M elements/s for the polynomial T (float64 path, float32 path) and for libm
(np.log1p(np.exp(-a))), over float32 and float64 logits ~ N(0, 3), plus whether each
loop vectorised (packed FMAs on zmm/ymm, no libm symbol in the assembly).
"""

from __future__ import annotations

import os
import re
import sys
import time

import numba
import numpy as np
from numba import prange

from bce_cli._fastmath import log1p_exp_neg, log1p_exp_neg_f32
from bce_cli._jit import SUM_FLAGS

# Not cached, so that inspect_asm works (Numba disables it for cached code).
kernel = numba.njit(parallel=True, nogil=True, error_model="numpy", fastmath=set(SUM_FLAGS))


@kernel
def sum_t64(x):
    s = 0.0
    for i in prange(x.size):
        s += log1p_exp_neg(abs(np.float64(x[i])))
    return s


@kernel
def sum_t32(x):
    s = 0.0
    for i in prange(x.size):
        s += log1p_exp_neg_f32(abs(np.float64(x[i])))
    return s


@kernel
def sum_libm(x):
    s = 0.0
    for i in prange(x.size):
        s += np.log1p(np.exp(-abs(np.float64(x[i]))))
    return s


@kernel
def sum_abs(x):  # the same loop without T: load, convert, add
    s = 0.0
    for i in prange(x.size):
        s += abs(np.float64(x[i]))
    return s


def best_rates(fns, xs, repeat):
    """Best-of-``repeat`` M elements/s, rounds interleaved (the machine may be shared)."""
    best = {}
    for fn in fns:
        for x in xs:
            fn(x)  # compile
    for _ in range(repeat):
        for fn in fns:
            for x in xs:
                t = _timed(fn, x)
                best[fn, x.dtype] = min(best.get((fn, x.dtype), t), t)
    return {k: xs[0].size / t / 1e6 for k, t in best.items()}


def _timed(fn, x):
    t0 = time.perf_counter()
    fn(x)
    return time.perf_counter() - t0


def vector_report(fn):
    """Packed double ops on zmm/ymm in the float32-input loop, or the libm call that blocks it."""
    lines = fn.inspect_asm(fn.signatures[0]).splitlines()
    if [ln for ln in lines if re.search(r"[\s$*](exp|log1p)(@\w+)?$", ln.split(",")[0])]:
        return "no: scalar libm calls"
    for reg in ("zmm", "ymm"):
        packed = [ln for ln in lines if re.match(rf"\s*v\w+pd\s.*%{reg}", ln)]
        fma = [ln for ln in packed if re.match(r"\s*vfn?m(add|sub)", ln)]
        if packed:
            return f"yes: {len(packed)} packed-double ops on {reg} ({len(fma)} FMAs)"
    return "no"


def main(n=20_000_000, repeat=10):
    x32 = np.random.default_rng(0).normal(0.0, 3.0, n).astype(np.float32)
    x64 = x32.astype(np.float64)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"n = {n:.2g}, threads = {numba.get_num_threads()}, numba {numba.__version__}, "
          f"best of {repeat}, load average before: {load:.2f}")
    print(f"{'loop':<34}{'float32 x':>12}{'float64 x':>12}   vectorised (float32 x)")
    rows = [("sum T, log1p_exp_neg (float64)", sum_t64),
            ("sum T, log1p_exp_neg_f32", sum_t32),
            ("sum T, libm log1p(exp(-a))", sum_libm),
            ("sum |x| (no transcendental)", sum_abs)]
    rates = best_rates([fn for _, fn in rows], [x32, x64], repeat)
    for name, fn in rows:
        r32, r64 = rates[fn, x32.dtype], rates[fn, x64.dtype]
        print(f"{name:<34}{r32:>10.0f} M{r64:>10.0f} M   {vector_report(fn)}")
    ref = float(np.sum(np.log1p(np.exp(-np.abs(x32.astype(np.longdouble))))))
    for name, fn in rows[:3]:
        print(f"  relative error of the sum, {name}: {abs(fn(x32) - ref) / ref:.1e}")


if __name__ == "__main__":
    main(int(float(sys.argv[1])) if len(sys.argv) > 1 else 20_000_000)
