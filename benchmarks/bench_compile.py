"""How long each kernel form takes to compile, in a fresh process with an empty cache.

    python benchmarks/bench_compile.py [--forms all|NAME,...] [--repeat 1]

For each form (``bce_cli._forms.all_forms``: what ``bce warmup`` compiles), a new
process with an empty ``NUMBA_CACHE_DIR`` compiles the form's entry point for its two
common argument types (``bce_cli._forms.common_signatures``: bool targets, then
targets of the logits' type), each through ``bce_cli._launch.pointer_entry`` as a
first call does (compile, save the object code, load it back).  The first includes
numba's start and the functions every form shares; the second is the form's own
compile alone: the figure to hold against "no form takes more than 2 s".  Best of
``--repeat`` processes; the slowest form is printed last.
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
import os, sys, time
from bce_cli import _cache_dirs, _native, _prebuilt
only = os.path.join(os.environ["NUMBA_CACHE_DIR"], "bce_cli")  # no other cache directory
# (bce_cli._jit, numba's cache where objects cannot be saved, takes this one too: it is
# first imported below, by the compile)
_native.cache_dirs = _cache_dirs.cache_dirs = lambda: [only]
_prebuilt.directory = lambda: None  # nor the objects installed with bce
from bce_cli import _launch
from bce_cli._forms import all_forms, common_signatures
form = next(f for f in all_forms() if f.name == sys.argv[1])
times = []
for sig in common_signatures(form):
    start = time.perf_counter()
    _launch.pointer_entry(form, sig)
    times.append(time.perf_counter() - start)
    assert _launch.how(form, sig) == "compiled", _launch.how(form, sig)
print(*times)
"""


def form_names(spec: str) -> list[str]:
    sys.path.insert(0, str(ROOT))
    from bce_cli._forms import all_forms

    names = [f.name for f in all_forms()]
    if spec == "all":
        return names
    wanted = spec.split(",")
    unknown = sorted(set(wanted) - set(names))
    if unknown:
        raise SystemExit(f"unknown form(s) {', '.join(unknown)}; forms: {', '.join(names)}")
    return wanted


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--forms", default="all",
                        help="'all' (default) or comma-separated form names, such as "
                             "planes_unit_f32,rows_general_f64")
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    print(f"{'form':<28} {'first type (+ numba start)':>27} {'second type alone':>18}")
    rows = []
    for name in form_names(args.forms):
        best = None
        for _ in range(args.repeat):
            with tempfile.TemporaryDirectory() as cache:
                done = subprocess.run([sys.executable, "-c", CHILD, name],
                                      env={**env, "NUMBA_CACHE_DIR": cache}, cwd=ROOT,
                                      capture_output=True, text=True, check=True)
            first, second = map(float, done.stdout.split())
            if best is None or second < best[1]:
                best = (first, second)
        rows.append((name, *best))
        print(f"{name:<28} {best[0]:>25.2f} s {best[1]:>16.2f} s", flush=True)
    name, first, second = max(rows, key=lambda row: row[2])
    print(f"slowest form, second type alone: {name} {second:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
