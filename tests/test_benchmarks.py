"""The benchmarks' own machinery (their figures are not tested: see ``make bench``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PROBE = r"""
import json, numba, numpy as np
try:
    from numpy._core._multiarray_umath import __cpu_dispatch__, __cpu_features__
except ImportError:  # NumPy 1.x
    from numpy.core._multiarray_umath import __cpu_dispatch__, __cpu_features__

@numba.njit(fastmath=True)
def total(x):
    s = 0.0
    for v in x:
        s += v * v
    return s

total(np.ones(64))
asm = total.inspect_asm(total.signatures[0])
print(json.dumps({"zmm": "zmm" in asm, "ymm": "ymm" in asm,
                  "features": (numba.config.CPU_FEATURES or "").split(","),
                  "numpy_avx512": any(__cpu_features__.get(name) for name in __cpu_dispatch__
                                      if name.startswith("AVX512") or name == "X86_V4"),
                  "numpy_avx2": bool(__cpu_features__.get("AVX2"))}))
"""


def test_as_avx2_gives_avx2_code_only(tmp_path):
    """``benchmarks/as_avx2.py`` runs a script whose numba emits no AVX-512 registers and
    whose NumPy dispatches no AVX-512 loops, AVX2 staying on (where the host has it)."""
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "as_avx2.py"), str(script)],
                         capture_output=True, text=True, timeout=300, check=True)
    seen = json.loads(res.stdout.strip().splitlines()[-1])
    assert not seen["zmm"] and not seen["numpy_avx512"] and "-avx512f" in seen["features"]
    native = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                            timeout=300, check=True)
    host = json.loads(native.stdout.strip().splitlines()[-1])
    if host["numpy_avx2"]:
        assert seen["ymm"] and seen["numpy_avx2"]
