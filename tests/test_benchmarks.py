"""The benchmarks' own machinery (their figures are not tested: see ``make bench``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

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


def test_bench_compile_times_a_compile_of_the_form_asked():
    """``benchmarks/bench_compile.py`` times the form it is asked for, compiled in its child
    (the child checks that each argument type was compiled, not loaded from a cache or from
    the objects installed with bce), and names the slowest; an unknown form is refused with
    the list of forms."""
    script = str(ROOT / "benchmarks" / "bench_compile.py")
    res = subprocess.run([sys.executable, script, "--forms", "planes_unit_f32_direct"],
                         capture_output=True, text=True, timeout=300, check=True)
    lines = res.stdout.strip().splitlines()
    row = lines[1].split()
    assert row[0] == "planes_unit_f32_direct" and len(lines) == 3
    first, second = float(row[1]), float(row[3])
    assert first > 0 and second > 0
    assert lines[2] == f"slowest form, second type alone: planes_unit_f32_direct {second:.2f} s"
    bad = subprocess.run([sys.executable, script, "--forms", "planes_unit_f16"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "unknown form(s) planes_unit_f16" in bad.stderr
    assert "rows_general_f64" in bad.stderr


def test_bench_by_size_gives_a_row_per_size(monkeypatch):
    """``bench.by_size``: one row per size, in order, bce's two rates measured, PyTorch's
    exactly when torch is installed."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import bench

    rows = bench.by_size([100, 3000], 1, np.random.default_rng(0))
    assert [row[0] for row in rows] == [100, 3000]
    for _, bce_mean, torch_mean, bce_none, torch_none in rows:
        assert bce_mean > 0 and bce_none > 0
        assert (torch_mean is None) == (torch_none is None) == (bench.torch is None)
