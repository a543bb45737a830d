"""Run a benchmark with AVX2 code only, on a machine that also has AVX-512.

    python benchmarks/as_avx2.py benchmarks/bench.py --skip-startup

The kernels' speed depends on the vector width more than PyTorch's does, and many
CI machines have AVX2 only.  This runs ``SCRIPT [ARGS]`` in a fresh process whose
numba compiles for the host CPU without its AVX-512 features (``NUMBA_CPU_FEATURES``,
a kernel cache of its own; bce installed from a release wheel loads its x86-64-v3
kernels, as on an AVX2 machine), whose NumPy dispatches no
AVX-512 loops (``NPY_DISABLE_CPU_FEATURES``) and whose PyTorch runs its AVX2
kernels (``ATEN_CPU_CAPABILITY``): both sides of every ratio on AVX2, on the
same machine in the same session.  The figures are those of this core running
AVX2 code, not those of another CPU.  On a machine without AVX-512 it changes nothing.
"""

from __future__ import annotations

import os
import sys
import tempfile


def _wide(feature: str) -> bool:
    return feature.startswith(("avx512", "avx10", "amx")) or feature == "evex512"


def avx2_env(env: dict) -> dict:
    """``env`` with the variables that keep numba, NumPy and PyTorch to AVX2 code."""
    import llvmlite.binding as llvm

    from bce_cli._tiers import numpy_avx512_targets

    features = llvm.get_host_cpu_features()
    flags = ",".join(("+" if on and not _wide(name) else "-") + name
                     for name, on in features.items())
    return dict(env, NUMBA_CPU_FEATURES=flags,
                NUMBA_CACHE_DIR=os.path.join(tempfile.gettempdir(), "bce-avx2-kernel-cache"),
                NPY_DISABLE_CPU_FEATURES=" ".join(numpy_avx512_targets()),
                ATEN_CPU_CAPABILITY="avx2",
                BCE_BENCH_ISA="AVX2 code only (benchmarks/as_avx2.py)")


def main() -> None:
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    os.execve(sys.executable, [sys.executable, *sys.argv[1:]], avx2_env(dict(os.environ)))


if __name__ == "__main__":
    main()
