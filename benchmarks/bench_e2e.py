"""The user's whole job, from a cold start: ``bce eval`` against the scripts it replaces.

    make bench                      # runs this after bench.py
    python benchmarks/bench_e2e.py [--data DIR] [--cache DIR] [--repeat 3] [--max-elements 1e8]
                                   [--skip-warmup] [--from-wheel | --wheel FILE]

Every figure is the best wall time of ``--repeat`` fresh processes, side by side in
one run on the same files:

* bce eval with an empty kernel cache (a fresh CI machine), again with the
  cache that run left behind, and with the cache ``bce warmup`` filled (a CI
  cache step or an image layer);
* the five-line PyTorch and NumPy scripts a user would write instead;
* the bare cost: importing numpy, pyarrow, typer and rich and reading the inputs
  (``np.load`` / ``pq.read_table``) in a fresh process;
* per-element losses written to Parquet (``--reduction none --output``) against
  the PyTorch script that writes them with ``pq.write_table``;
* fixed costs from 1e3 to ``--max-elements`` elements: ``bce eval`` (empty cache,
  after warmup) / bare;
* ``bce warmup``: compile time of every kernel form.

``--from-wheel`` adds the first run of the ``bce`` that a ``pip install`` of the
release wheel gives a fresh x86-64 Linux machine: it builds that wheel (``make wheel``'s
``BCE_PREBUILT=all pip wheel .``, which compiles the kernels into it:
``bce_cli/_wheel.py``, a few minutes) and installs it with its dependencies into
a new virtual environment.  Every other row runs bce from this checkout, which
holds no kernels compiled ahead: its first run is a plain install's (a checkout,
a git URL, a CPU below x86-64-v3).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).parent
PY = sys.executable
BCE = str(Path(sys.executable).parent / "bce")
WHEEL = None  # --from-wheel: the bce command installed from this checkout's wheel

TORCH_NPY = """
import sys, numpy as np, torch, torch.nn.functional as F
x = torch.from_numpy(np.load(sys.argv[1])); y = torch.from_numpy(np.load(sys.argv[2]))
per_class = F.binary_cross_entropy_with_logits(x, y, reduction="none").mean(0)
print(per_class.mean().item())
"""
NUMPY_NPY = """
import sys, numpy as np
x = np.load(sys.argv[1]); y = np.load(sys.argv[2])
loss = np.maximum(x, 0) - x * y + np.log1p(np.exp(-np.abs(x)))
print(loss.mean(axis=0, dtype=np.float64).mean())
"""
TORCH_PQ = """
import sys, numpy as np, torch, torch.nn.functional as F, pyarrow.parquet as pq
tx = pq.read_table(sys.argv[1]); ty = pq.read_table(sys.argv[2])
x = torch.from_numpy(np.column_stack([c.to_numpy() for c in tx.columns]))
y = torch.from_numpy(np.column_stack([c.to_numpy(zero_copy_only=False)
                                      for c in ty.columns]).astype(np.float32))
print(F.binary_cross_entropy_with_logits(x, y, reduction="none").mean(0).mean().item())
"""
TORCH_PQ_NONE = """
import sys, numpy as np, torch, torch.nn.functional as F, pyarrow as pa, pyarrow.parquet as pq
tx = pq.read_table(sys.argv[1]); ty = pq.read_table(sys.argv[2])
x = torch.from_numpy(np.column_stack([c.to_numpy() for c in tx.columns]))
y = torch.from_numpy(np.column_stack([c.to_numpy(zero_copy_only=False)
                                      for c in ty.columns]).astype(np.float32))
loss = F.binary_cross_entropy_with_logits(x, y, reduction="none").numpy()
pq.write_table(pa.table({n: loss[:, i] for i, n in enumerate(tx.column_names)}), sys.argv[3])
"""
BARE_NPY = ("import sys, numpy, pyarrow, typer, rich; numpy.load(sys.argv[1]); "
            "numpy.load(sys.argv[2])")
BARE_PQ = ("import sys, numpy, pyarrow.parquet as pq, typer, rich; pq.read_table(sys.argv[1]); "
           "pq.read_table(sys.argv[2])")


def cpu() -> str:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = re.search(r"model name\s*:\s*(.*)", text)
    flags = set(re.search(r"flags\s*:\s*(.*)", text).group(1).split()) if text else set()
    width = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "SSE"
    return f"{model.group(1) if model else 'unknown CPU'}, {os.cpu_count()} cores, {width}"


def run(cmd, env=None) -> tuple[float, float]:
    """(wall seconds, peak RSS MB) of one fresh process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    err = proc.stderr.read().decode()
    proc.stderr.close()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode not in (0, 1):
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(map(str, cmd))}\n{err}")
    return wall, usage.ru_maxrss / 1024


def best(cmd, repeat, env=None, fresh_cache=None):
    """Best wall time and its peak RSS; ``fresh_cache``: a new empty cache dir per run."""
    results = []
    for _ in range(repeat):
        e = dict(env or os.environ)
        if fresh_cache is not None:
            e["NUMBA_CACHE_DIR"] = tempfile.mkdtemp(dir=fresh_cache)
        results.append(run(cmd, e))
    return min(results)


# Inputs are made in child processes: this process stays small, because a child
# forked from it starts with its resident memory counted in its peak RSS.
MAKE_NPY = """
import sys, numpy as np
rows, cols = int(sys.argv[3]), int(sys.argv[4])
rng = np.random.default_rng(0)
x = rng.standard_normal((rows, cols), dtype=np.float32) * 3
np.save(sys.argv[1], x)
np.save(sys.argv[2], (x + rng.standard_normal((rows, cols), dtype=np.float32) > 0)
        .astype(np.float32))
"""
MAKE_PQ = """
import sys
sys.path.insert(0, sys.argv[1])
from bench_streaming import generate
generate(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
"""


def make_npy(d: Path, rows: int, cols: int, tag: str):
    x_path, y_path = d / f"x_{tag}.npy", d / f"y_{tag}.npy"
    if not x_path.exists():
        subprocess.run([PY, "-c", MAKE_NPY, x_path, y_path, str(rows), str(cols)], check=True)
    return str(x_path), str(y_path)


def make_parquet(d: Path, rows: int, row_group: int):
    subprocess.run([PY, "-c", MAKE_PQ, str(HERE), str(d), str(rows), str(row_group)], check=True)
    return (str(d / f"preds_{rows}x25.parquet"), str(d / f"labels_{rows}x25.parquet"))


def job_rows(title, inputs, repeat, tmp, scripts, bare, warmed):
    env = dict(os.environ)
    env.pop("BCE_TIER", None)
    cache = tempfile.mkdtemp(dir=tmp)
    cold = best([BCE, "eval", *inputs], repeat, env, fresh_cache=tmp)
    again_env = dict(env, NUMBA_CACHE_DIR=cache)
    run([BCE, "eval", *inputs], again_env)  # leaves its cache behind (if it made one)
    again = best([BCE, "eval", *inputs], repeat, again_env)
    rows = [("bce eval, empty cache (first run)", cold), ("bce eval, again", again)]
    if WHEEL:
        wheel = best([WHEEL, "eval", *inputs], repeat, env, fresh_cache=tmp)
        rows.insert(1, ("bce from the wheel, first run", wheel))
    if warmed:
        rows.append(("bce eval, after bce warmup", best([BCE, "eval", *inputs], repeat,
                                                        dict(env, NUMBA_CACHE_DIR=warmed))))
    rows += [(name, best([PY, "-c", code, *inputs], repeat, env)) for name, code in scripts]
    bare_t, bare_rss = best([PY, "-c", bare, *inputs], repeat, env)
    rows.append(("bare: imports + read", (bare_t, bare_rss)))
    print(f"\n{title}")
    for name, (t, rss) in rows:
        print(f"  {name:<40} {t:6.2f} s  {rss:7.0f} MB   {t / bare_t:5.2f}x bare")
    print(f"  first run / again: {cold[0] / again[0]:.2f}")
    if warmed:
        warm = dict(rows)["bce eval, after bce warmup"][0]
        print(f"  first run / after warmup: {cold[0] / warm:.2f}" + (
            f"; from the wheel: {wheel[0] / warm:.2f}" if WHEEL else ""))
    return cold, again


def per_element(inputs, repeat, tmp, warmed, have_torch):
    """``--reduction none --output losses.parquet`` on the Parquet job, against the
    PyTorch script that writes its losses with ``pq.write_table`` (pyarrow's defaults)."""
    env = dict(os.environ)
    env.pop("BCE_TIER", None)
    out = os.path.join(tmp, "losses.parquet")
    mb = lambda: os.path.getsize(out) / 1e6  # noqa: E731
    label = "after warmup" if warmed else "empty cache"
    bce_t = best([BCE, "eval", *inputs, "--reduction", "none", "--output", out], repeat,
                 dict(env, NUMBA_CACHE_DIR=warmed) if warmed else env,
                 fresh_cache=None if warmed else tmp)
    line = (f"\nper-element losses to Parquet (--reduction none --output), same job: bce "
            f"({label}) {bce_t[0]:.2f} s, {bce_t[1]:.0f} MB peak, file {mb():.0f} MB")
    if have_torch:
        torch_t = best([PY, "-c", TORCH_PQ_NONE, *inputs, out], repeat, env)
        line += (f"; PyTorch script + pq.write_table {torch_t[0]:.2f} s, {torch_t[1]:.0f} MB "
                 f"peak, file {mb():.0f} MB")
    print(line, flush=True)


def fixed_costs(d: Path, repeat, max_elements, warmed):
    print("\nfixed costs: bce eval / bare (imports numpy, pyarrow, typer, rich + np.load), "
          "(n/10, 10) float32 .npy pairs; bce with an empty cache"
          + (", installed from the wheel" if WHEEL else "")
          + (" and after bce warmup" if warmed else ""))
    env = dict(os.environ)
    env.pop("BCE_TIER", None)
    n = 1000
    with tempfile.TemporaryDirectory() as tmp:
        while n <= max_elements:
            x, y = make_npy(d, n // 10, 10, f"fixed{n}")
            bare_t = best([PY, "-c", BARE_NPY, x, y], repeat)[0]
            cold_t = best([BCE, "eval", x, y], repeat, env, fresh_cache=tmp)[0]
            line = (f"  {n:>11,} elements: bare {bare_t:5.2f} s, bce empty cache {cold_t:5.2f} s "
                    f"({cold_t / bare_t:4.2f}x)")
            if WHEEL:
                wheel_t = best([WHEEL, "eval", x, y], repeat, env, fresh_cache=tmp)[0]
                line += f", from the wheel {wheel_t:5.2f} s ({wheel_t / bare_t:4.2f}x)"
            if warmed:
                warm_t = best([BCE, "eval", x, y], repeat, dict(env, NUMBA_CACHE_DIR=warmed))[0]
                line += f", after warmup {warm_t:5.2f} s ({warm_t / bare_t:4.2f}x)"
            print(line, flush=True)
            n *= 10


def warmup(cache) -> None:
    env = dict(os.environ, NUMBA_CACHE_DIR=cache)
    out = subprocess.run([BCE, "warmup"], env=env, capture_output=True, text=True, check=True)
    times = [float(m.group(1)) for m in re.finditer(r"\s([\d.]+) s$", out.stderr, re.M)]
    print(f"\n{out.stdout.strip()}")
    print(f"  per form (two argument types each): median {statistics.median(times):.2f} s, "
          f"max {max(times):.2f} s (the first includes numba's start)")


@contextlib.contextmanager
def no_other_cache(tmp: str):
    """"Empty cache" means empty: bce also reads compiled kernels from the package's
    ``__pycache__`` and from ``~/.cache/bce`` whatever ``NUMBA_CACHE_DIR`` says.  The
    user's cache is hidden (``XDG_CACHE_HOME``) and the package's kernel files are
    moved aside for the run, then put back."""
    pycache = HERE.parent / "bce_cli" / "__pycache__"
    aside = Path(tmp) / "package-cache"
    aside.mkdir()
    moved = [p for p in pycache.glob("*") if p.name.startswith(("native.", "kernels."))]
    if moved:
        print(f"note: {len(moved)} kernel cache files of {pycache} are set aside for the run")
    for p in moved:
        shutil.move(str(p), aside / p.name)
    old = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(Path(tmp) / "xdg")
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("XDG_CACHE_HOME", None)
        else:
            os.environ["XDG_CACHE_HOME"] = old
        for p in moved:
            if not p.exists():
                shutil.move(str(aside / p.name), p)


def from_wheel(tmp: str, wheel: str | None = None) -> str:
    """The ``bce`` command of a new virtual environment with ``wheel`` installed (None: the
    release wheel built from this checkout)."""
    root = HERE.parent
    wheels, venv = os.path.join(tmp, "wheel"), os.path.join(tmp, "venv")
    start = time.perf_counter()
    if wheel is None:
        shutil.rmtree(root / "build", ignore_errors=True)  # as `make wheel` does
        subprocess.run([PY, "-m", "pip", "wheel", "--quiet", "--no-build-isolation", "--no-deps",
                        "-w", wheels, str(root)], check=True,
                       env=dict(os.environ, BCE_PREBUILT="all"))
        wheel = next(Path(wheels).glob("*.whl"))
    built = time.perf_counter() - start
    wheel = Path(wheel)
    subprocess.run([PY, "-m", "venv", venv], check=True)
    subprocess.run([os.path.join(venv, "bin", "python"), "-m", "pip", "install", "--quiet",
                    str(wheel)], check=True)
    import zipfile

    with zipfile.ZipFile(wheel) as zf:
        objects = sum(name.endswith(".o") for name in zf.namelist())
    print(f"bce from {wheel.name} ({wheel.stat().st_size / 1e6:.1f} MB, {objects} compiled "
          f"objects" + (f"; built in {built:.0f} s" if built > 1 else "")
          + ") in a new virtual environment")
    return os.path.join(venv, "bin", "bce")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", help="directory for the generated inputs (kept between runs)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--max-elements", type=float, default=1e8)
    ap.add_argument("--cache", help="the kernel cache `bce warmup` fills (kept between runs: "
                                    "a second warmup only loads it); default: a new one")
    ap.add_argument("--skip-warmup", action="store_true",
                    help="no bce warmup (130-170 s on an empty cache), no after-warmup rows")
    ap.add_argument("--from-wheel", action="store_true",
                    help="also time bce installed from this checkout's wheel (built, a few "
                         "minutes, then installed into a new virtual environment)")
    ap.add_argument("--wheel", help="--from-wheel with this wheel (`make wheel` built it)")
    args = ap.parse_args()
    subprocess.run([PY, "-m", "compileall", "-q", str(HERE.parent / "bce_cli")], check=True)
    data = Path(args.data or tempfile.mkdtemp(prefix="bce-e2e-"))
    data.mkdir(parents=True, exist_ok=True)
    print(f"machine: {cpu()}; code: {os.environ.get('BCE_BENCH_ISA', 'native')}; python "
          f"{sys.version.split()[0]}; best of {args.repeat} fresh processes; data in {data}")
    have_torch = subprocess.run([PY, "-c", "import torch"], capture_output=True).returncode == 0
    if not have_torch:
        print("note: torch is not installed; the PyTorch scripts are skipped")
    global WHEEL
    with tempfile.TemporaryDirectory() as tmp, no_other_cache(tmp):
        if args.from_wheel or args.wheel:
            WHEEL = from_wheel(tmp, args.wheel)
        warmed = None
        if not args.skip_warmup:
            warmed = args.cache or tempfile.mkdtemp(dir=tmp)
            warmup(warmed)
        npy = make_npy(data, 1_000_000, 20, "1Mx20")
        scripts = ([("PyTorch script", TORCH_NPY)] if have_torch else []) + \
            [("NumPy script", NUMPY_NPY)]
        job_rows("bce eval x.npy y.npy, 1M x 20 float32", npy, args.repeat, tmp, scripts,
                 BARE_NPY, warmed)
        pq_in = make_parquet(data / "pq256k", 4_000_000, 256 * 1024)
        scripts = [("PyTorch script", TORCH_PQ)] if have_torch else []
        job_rows("bce eval preds.parquet labels.parquet, 4M x 25 float32 + bool, 256k-row groups",
                 pq_in, args.repeat, tmp, scripts, BARE_PQ, warmed)
        pq1m = make_parquet(data / "pq1m", 4_000_000, 1 << 20)
        for label, bce, env in [("empty cache", BCE, None)] + (
                [("from the wheel, first run", WHEEL, None)] if WHEEL else []) + (
                [("after warmup", BCE, dict(os.environ, NUMBA_CACHE_DIR=warmed))]
                if warmed else []):
            t, rss = best([bce, "eval", *pq1m], args.repeat, env, fresh_cache=None if env
                          else tmp)
            t8, rss8 = best([bce, "eval", *pq_in, "--batch-rows", "8192"], args.repeat, env,
                            fresh_cache=None if env else tmp)
            base, _ = best([bce, "eval", *pq_in], args.repeat, env,
                           fresh_cache=None if env else tmp)
            print(f"  {label}: 1M-row groups {t:.2f} s, {rss:.0f} MB peak; --batch-rows 8192 "
                  f"(256k groups): {t8:.2f} s = {t8 / base:.2f}x the default, {rss8:.0f} MB")
        per_element(pq_in, args.repeat, tmp, warmed, have_torch)
        fixed_costs(data, args.repeat, args.max_elements, warmed)


if __name__ == "__main__":
    main()
