"""Speed of bce against PyTorch and NumPy on the same arrays, in one run.

    make bench                # or: python benchmarks/bench.py [--n 20000000] [--repeat 5]

Prints elements/s (best of --repeat) for each case: bce's compiled kernels
(the compiled tier, forced), the ratio to PyTorch CPU and to the NumPy
expression a user would write, and bce's vectorised NumPy tier (what a fresh
process runs until the compiled tier pays, see bce_cli/_tiers.py); then the
start-up costs: the compiled tier cold (empty cache) and warm, ``bce --help``
and a warm ``bce eval`` on a tiny file against the bare imports.  Between the two, a
block by size (``--sizes``, and ``--n``): 1-D float32 mean and none, bce's compiled tier
against PyTorch, as the ratio changes with the size of the arrays.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numba
import numpy as np
from bench_e2e import cpu, no_other_cache  # the script's own directory is on sys.path

from bce_cli import BCEAccumulator, _tiers, bce_with_logits

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # the torch columns are skipped with a note
    torch = None


def best(fns, repeat):
    """Best time of each function, calling them in turn (round robin), so that a
    change in the machine's load hits all of them alike and the ratios hold."""
    for fn in fns:
        fn()  # warm-up (compiles on first call)
    times = [[] for _ in fns]
    for _ in range(repeat):
        for fn, ts in zip(fns, times, strict=True):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
    return [min(ts) for ts in times]


def tiered(tier, fn):
    """``fn`` run on one tier (bce_cli._tiers): "compiled" kernels or vectorised "numpy"."""
    def run():
        _tiers.set_tier(tier)
        try:
            return fn()
        finally:
            _tiers.set_tier(None)
    return run


def numpy_loss(x, y, w=None, p=None, reduction="mean", axis=None):
    """The NumPy expression a user would write (PyTorch's formula, NumPy's SIMD exp/log1p)."""
    sp = np.log1p(np.exp(-np.abs(x))) + np.maximum(-x, 0)
    loss = (1 - y) * x + (sp if p is None else (1 + (p - 1) * y) * sp)
    if w is not None:
        loss = loss * w
    if reduction == "none":
        return loss
    return loss.mean(axis=axis, dtype=np.float64) if reduction == "mean" else loss.sum(axis)


def torch_loss(xt, yt, wt=None, pt=None, reduction="mean", per_class=False):
    if per_class:
        return F.binary_cross_entropy_with_logits(xt, yt, weight=wt, pos_weight=pt,
                                                  reduction="none").mean(0)
    return F.binary_cross_entropy_with_logits(xt, yt, weight=wt, pos_weight=pt,
                                              reduction=reduction)


def cases(n, rng):
    """(label, dtype, reduction, weights, shape, with_w, with_p, per_class)."""
    yield "1-D", np.float32, "mean", "-", (n,), False, False, False
    yield "1-D", np.float32, "none", "-", (n,), False, False, False
    yield "1-D", np.float32, "mean", "weight[N] + pos_weight", (n,), True, True, False
    yield "(N,20)", np.float32, "mean", "weight[C] + pos_weight[C]", (n // 20, 20), True, True, \
        False
    yield "1-D", np.float64, "mean", "-", (n,), False, False, False
    yield "1-D", np.float64, "none", "-", (n,), False, False, False
    for c in (1, 3, 20, 1000):
        yield f"(N,{c}) per class", np.float32, "mean", "pos_weight[C]", (n // c, c), False, \
            True, True


def run_case(label, dtype, reduction, weights, shape, with_w, with_p, per_class, rng, repeat):
    x = (rng.standard_normal(shape) * 3).astype(dtype)
    y = (rng.random(shape) < 0.3).astype(dtype)
    c = shape[-1] if len(shape) == 2 else 1
    if with_w:
        w = (rng.random(shape if len(shape) == 1 else (c,)) + 0.5).astype(dtype)
    else:
        w = None
    p = (rng.random(c) * 3 + 0.5).astype(dtype) if with_p else None
    n = x.size
    if per_class:
        def ours():
            return BCEAccumulator(c, pos_weight=p).update(x, y).compute().class_loss
    else:
        def ours():
            return bce_with_logits(x, y, weight=w, pos_weight=p, reduction=reduction)
    fns = [tiered("compiled", ours),
           lambda: numpy_loss(x, y, w, p, reduction, axis=0 if per_class else None),
           tiered("numpy", ours)]
    if torch is not None:
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)
        wt = None if w is None else torch.from_numpy(w)
        pt = None if p is None else torch.from_numpy(p)
        fns.append(lambda: torch_loss(xt, yt, wt, pt, reduction, per_class))
    if per_class:  # the same elements as one flat class, for the per-element comparison
        xf, yf, pf = x.reshape(-1), y.reshape(-1), p[:1]
        fns.append(tiered("compiled", lambda: bce_with_logits(xf, yf, pos_weight=pf)))
    times = best(fns, repeat)
    return {
        "case": label, "dtype": np.dtype(dtype).name, "reduction": reduction,
        "weights": weights, "bce": n / times[0], "numpy": n / times[1], "tier": n / times[2],
        "torch": n / times[3] if torch is not None else None,
        "flat": n / times[-1] if per_class else None,
    }


def _mean_and_none(x, y) -> list:
    """bce's compiled tier, mean then none, then PyTorch's (when installed)."""
    fns = [tiered("compiled", lambda: bce_with_logits(x, y)),
           tiered("compiled", lambda: bce_with_logits(x, y, reduction="none"))]
    if torch is not None:
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)
        fns += [lambda: torch_loss(xt, yt), lambda: torch_loss(xt, yt, reduction="none")]
    return fns


def by_size(sizes, repeat, rng) -> list[tuple]:
    """1-D float32, ``mean`` and ``none``: bce's compiled tier against PyTorch at each of
    ``sizes`` (elements), all four timed in turn: (size, bce mean, PyTorch mean, bce
    none, PyTorch none), in elements/s (PyTorch's None without torch).  Small arrays get
    more rounds, so that each size takes about as long."""
    rows = []
    for n in sizes:
        x = (rng.standard_normal(n) * 3).astype(np.float32)
        y = (rng.random(n) < 0.3).astype(np.float32)
        times = best(_mean_and_none(x, y), max(repeat, min(1000, int(2e8 // n))))
        rates = [n / t for t in times]
        if torch is None:
            rates = [rates[0], None, rates[1], None]
        else:
            rates = [rates[0], rates[2], rates[1], rates[3]]
        rows.append((n, *rates))
    return rows


def startup(tmp: Path) -> list[tuple[str, float]]:
    env = dict(os.environ)
    py = sys.executable
    bce = str(Path(sys.executable).parent / "bce")
    x = np.random.default_rng(0).standard_normal((100, 3)).astype(np.float32)
    np.save(tmp / "x.npy", x)
    np.save(tmp / "y.npy", (x > 0).astype(np.float32))

    def timed(cmd, extra_env=None, repeat=3):
        e = dict(env, **(extra_env or {}))
        ts = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            subprocess.run(cmd, env=e, check=True, capture_output=True)
            ts.append(time.perf_counter() - t0)
        return min(ts)

    cache = tempfile.mkdtemp(dir=tmp)
    # the compiled tier forced: what numba costs to start, compile and load one form
    small = ("import numpy as np; from bce_cli import bce_with_logits; "
             "x = np.zeros(100_000, np.float32); bce_with_logits(x, x)")
    forced = {"NUMBA_CACHE_DIR": cache, "BCE_TIER": "compiled"}
    cold = timed([py, "-c", small], forced, repeat=1)
    warm = timed([py, "-c", small], forced)
    imports = timed([py, "-c", "import numpy, numba, pyarrow, typer, rich"])
    help_t = timed([bce, "--help"])
    timed([bce, "eval", str(tmp / "x.npy"), str(tmp / "y.npy")], repeat=1)  # fill the cache
    eval_t = timed([bce, "eval", str(tmp / "x.npy"), str(tmp / "y.npy")])
    return [
        ("compiled tier, cold: import + compile + run 1e5 float32", cold),
        ("compiled tier, warm: the same with the form cached", warm),
        ("bare imports: numpy, numba, pyarrow, typer, rich", imports),
        ("bce --help", help_t),
        ("bce eval on a 100x3 .npy pair (warm)", eval_t),
        ("  ratio: warm bce eval / bare imports", eval_t / imports),
    ]


def fmt_rate(v):
    return "-" if v is None else f"{v / 1e6:,.0f}"


def fmt_ratio(a, b):
    return "-" if b is None else f"{a / b:.1f}x"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20_000_000, help="elements per case")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--skip-startup", action="store_true")
    ap.add_argument("--startup-only", action="store_true", help="the start-up block alone")
    ap.add_argument("--sizes", default="200000,2000000",
                    help="sizes for the 1-D float32 block by size (and --n): empty for none")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    print(f"machine: {cpu()}; numba {numba.__version__} ({numba.get_num_threads()} threads), "
          f"numpy {np.__version__}, torch "
          f"{torch.__version__ + f' ({torch.get_num_threads()} threads)' if torch else '-'}")
    print(f"code: {os.environ.get('BCE_BENCH_ISA', 'native')}"
          + (f" (PyTorch: {torch.backends.cpu.get_cpu_capability()})" if torch else ""))
    if torch is None:
        print("note: torch is not installed; PyTorch columns are skipped "
              "(pip install torch==2.13.0)")
    print(f"{args.n:,} elements per case, 30% positives, logits ~ N(0, 3); "
          f"M elements/s, best of {args.repeat}\n")
    head = ("case", "dtype", "reduction", "weights", "bce", "PyTorch", "NumPy", "vs PyTorch",
            "vs NumPy", "bce NumPy tier")
    rows = []
    results = []
    for case in [] if args.startup_only else cases(args.n, rng):
        r = run_case(*case, rng=rng, repeat=args.repeat)
        results.append(r)
        rows.append((r["case"], r["dtype"], r["reduction"], r["weights"], fmt_rate(r["bce"]),
                     fmt_rate(r["torch"]), fmt_rate(r["numpy"]), fmt_ratio(r["bce"], r["torch"]),
                     fmt_ratio(r["bce"], r["numpy"]), fmt_rate(r["tier"])))
    if results:
        widths = [max(len(str(row[i])) for row in [head, *rows]) for i in range(len(head))]

        def line(row):
            cells = (str(v).ljust(w) for v, w in zip(row, widths, strict=True))
            return "| " + " | ".join(cells) + " |"
        print(line(head))
        print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
        for row in rows:
            print(line(row))
        ratios = ", ".join(f"{r['case'].split()[0]} {r['bce'] / r['flat']:.0%}"
                           for r in results if r["flat"])
        print("\nper class against 1-D over the same elements (their mean loss with one "
              f"pos_weight, timed in turn with each case): {ratios}")
    sizes = sorted({int(float(v)) for v in args.sizes.split(",") if v.strip()} | {args.n})
    if not args.startup_only and args.sizes.strip():
        print("\n1-D float32 by size (M elements/s, bce's compiled tier; the four timed in "
              "turn)")
        print("| elements | mean: bce | PyTorch | vs PyTorch | none: bce | PyTorch | "
              "vs PyTorch |")
        print("|---|---|---|---|---|---|---|")
        for n, bm, tm, bn, tn in by_size(sizes, args.repeat, rng):
            print(f"| {n:,} | {fmt_rate(bm)} | {fmt_rate(tm)} | {fmt_ratio(bm, tm)} | "
                  f"{fmt_rate(bn)} | {fmt_rate(tn)} | {fmt_ratio(bn, tn)} |")
    if not args.skip_startup:
        print("\nstart-up (seconds, best of 3 runs in fresh processes)")
        with tempfile.TemporaryDirectory() as tmp, no_other_cache(tmp):
            for name, t in startup(Path(tmp)):
                print(f"  {name:<62} {t:.2f}{'' if 'ratio' in name else ' s'}")


if __name__ == "__main__":
    main()
