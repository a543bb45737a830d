"""Accuracy of ``bce_cli._fastmath`` against x87 long double, as the kernels use it.

Every function is called from ``prange`` loops compiled with both flag sets of
``_jit`` (``SUM_FLAGS`` adds ``reassoc``, which must not reach the element math).
Run with ``pytest -s`` to see the measured errors.
"""

from __future__ import annotations

import functools
import math
import re

import numba
import numpy as np
import pytest
from llvmlite import binding as llvm
from numba import prange

from bce_cli import _fastmath as fm
from bce_cli._jit import ELEMENT_FLAGS, SUM_FLAGS

LD = np.longdouble
FLAG_SETS = {"element": ELEMENT_FLAGS, "sum": SUM_FLAGS}
F32_BINADES = [2.0**-30, 0.5, 1.0, 8.0, 16.0, 64.0, 512.0]  # every float32 in [lo, 2*lo)
CHUNK = 1 << 21

ULP_T64 = 2.0  # log1p_exp_neg, float64 ulp
REL_T32 = 1e-10  # log1p_exp_neg_f32, relative, wherever T is a normal float64


@functools.cache
def _map(name, flags):
    """out[i] = f(a[i]) in a prange loop compiled with ``flags`` (the caller's flags)."""
    f = getattr(fm, name)

    @numba.njit(parallel=True, error_model="numpy", fastmath=set(FLAG_SETS[flags]))
    def run(a, out):
        for i in prange(a.size):
            out[i] = f(a[i])

    def call(a):
        a = np.ascontiguousarray(a, dtype=np.float64)
        out = np.empty_like(a)
        run(a, out)
        return out

    return call


@numba.njit(parallel=True, error_model="numpy", fastmath=set(SUM_FLAGS))
def _sum_t32(x):
    s = 0.0
    for i in prange(x.size):
        s += fm.log1p_exp_neg_f32(abs(np.float64(x[i])))
    return s


@numba.njit(parallel=True, error_model="numpy", fastmath=set(SUM_FLAGS))
def _sum_t64(x):
    s = 0.0
    for i in prange(x.size):
        s += fm.log1p_exp_neg(abs(x[i]))
    return s


def _ref_t(a):
    return np.log1p(np.exp(-np.asarray(a, dtype=LD)))


def _ulp64(ref):
    """Spacing of float64 at the exact value ``ref`` (long double), 2**-1074 for subnormals."""
    _, e = np.frexp(ref)
    return np.ldexp(LD(1), np.maximum(e - 53, -1074))


def _ulp_err(got, ref):
    return np.abs(got.astype(LD) - ref) / _ulp64(ref)


def _rel_err_normal(got, ref):
    """Relative error where ``ref`` is a normal float64, else 0."""
    normal = ref >= LD(np.finfo(np.float64).tiny)
    return np.where(normal, np.abs(got.astype(LD) - ref) / np.where(normal, ref, 1), 0)


def _f32_ok(got, ref):
    """float32(got) within one float32 ulp of float32(ref)."""
    g, r = got.astype(np.float32), ref.astype(np.float32)
    return np.abs(g.astype(np.float64) - r) <= np.spacing(r)


def _check_t(a, label):
    """Both T functions, both caller flag sets, chunked: print and assert the max errors."""
    worst = {}
    for start in range(0, a.size, CHUNK):
        part = a[start:start + CHUNK]
        ref = _ref_t(part)
        for flags in FLAG_SETS:
            u64 = _ulp_err(_map("log1p_exp_neg", flags)(part), ref)
            got32 = _map("log1p_exp_neg_f32", flags)(part)
            r32 = _rel_err_normal(got32, np.where(part <= fm.A32_MAX, ref, 0))
            assert _f32_ok(got32, ref).all(), part[~_f32_ok(got32, ref)][:5]
            for key, err in ((f"T64 ulp [{flags}]", u64), (f"T32 rel [{flags}]", r32)):
                i = int(np.argmax(err))
                if key not in worst or err[i] > worst[key][0]:
                    worst[key] = (float(err[i]), float(part[i]))
    print(f"\n{label}: " + "; ".join(f"{k} {v[0]:.3g} at a={v[1]!r}" for k, v in worst.items()))
    for flags in FLAG_SETS:
        assert worst[f"T64 ulp [{flags}]"][0] <= ULP_T64, worst
        assert worst[f"T32 rel [{flags}]"][0] <= REL_T32, worst
    return worst


@pytest.mark.parametrize("lo", F32_BINADES)
def test_every_float32_in_binade(lo):
    bits = np.arange(np.float32(lo).view(np.int32), np.float32(2 * lo).view(np.int32),
                     dtype=np.int32)
    _check_t(bits.view(np.float32).astype(np.float64), f"float32 binade [{lo!r}, {2 * lo!r})")


def test_random_float64_and_breakpoints():
    rng = np.random.default_rng(20240601)
    near = []
    # e = 0.5 (log1p split), k switches (ln2/2, 3ln2/2), exp(-a) subnormal, 0.0, f32 cut
    for c in (math.log(2), 0.5 * math.log(2), 1.5 * math.log(2), 708.3964, 745.1332, 708.0):
        near.append(c + np.arange(-2000, 2000) * np.spacing(c))
        near.append(c + rng.uniform(-1e-3, 1e-3, 20_000))
    a = np.concatenate([rng.uniform(0, 750, 3_000_000), rng.uniform(0, 1, 500_000),
                        np.exp(rng.uniform(-745, 0, 500_000)), *near])
    _check_t(np.abs(a), "random float64 in [0, 750] and breakpoints")


SPECIAL = np.array([0.0, -0.0, 5e-324, 1e-300, 1e-20, 1e300, np.inf, np.nan, 745.2, 746.0, 800.0])


@pytest.mark.parametrize("flags", list(FLAG_SETS))
@pytest.mark.parametrize("name", ["log1p_exp_neg", "log1p_exp_neg_f32"])
def test_special_values_in_loop(name, flags):
    got = _map(name, flags)(SPECIAL)
    assert got[0] == got[1]  # -0.0 as 0.0
    assert math.isnan(got[7])  # NaN propagates
    np.testing.assert_array_equal(got[[5, 6, 8, 9, 10]], 0.0)  # huge, +inf, beyond underflow
    finite = [0, 2, 3, 4]  # 0, 5e-324, 1e-300, 1e-20: log 2
    ref = _ref_t(SPECIAL[finite])
    if name == "log1p_exp_neg":
        assert _ulp_err(got[finite], ref).max() <= 0.5  # correctly rounded log 2
    else:
        assert _rel_err_normal(got[finite], ref).max() <= REL_T32
    assert math.isnan(getattr(fm, name)(math.nan))  # called from Python too
    assert getattr(fm, name)(math.inf) == 0.0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_summing_loop_matches_exact_sum(dtype):
    """A reassoc summing loop over N(0, 3) logits: float64 sum within 1e-9 of the exact one."""
    x = np.random.default_rng(3).normal(0, 3, 2_000_000).astype(dtype)
    ref = float(np.sum(_ref_t(np.abs(x.astype(np.float64)))))  # long double sum
    kernel = _sum_t32 if dtype == np.float32 else _sum_t64
    got = kernel(x)
    rel = abs(got - ref) / ref
    print(f"\n{np.dtype(dtype).name} sum rel err {rel:.2e}")
    assert rel <= 1e-9 if dtype == np.float32 else rel <= 1e-12


def _host_has(feature):
    return bool(llvm.get_host_cpu_features().get(feature, False))


LIBM = re.compile(r"[\s$*](exp|expm1|log|log1p)(@\w+)?$")  # a call or address of libm


@pytest.mark.skipif(not _host_has("fma") or not _host_has("avx2"), reason="needs AVX2+FMA")
@pytest.mark.parametrize("kernel", [_sum_t32, _sum_t64], ids=["f32", "f64"])
def test_summing_loop_vectorises_without_libm(kernel):
    x = np.ones(16, dtype=np.float32 if kernel is _sum_t32 else np.float64)
    kernel(x)
    lines = kernel.inspect_asm(kernel.signatures[0]).splitlines()
    assert not [ln for ln in lines if LIBM.search(ln.split(",")[0])]
    packed = [ln for ln in lines if re.match(r"\s*vfn?m(add|sub)\d+pd\s.*%[yz]mm", ln)]
    assert len(packed) >= 10, "the element math did not vectorise"


@pytest.mark.parametrize("kernel", [_sum_t32, _sum_t64], ids=["f32", "f64"])
def test_element_math_converts_no_float_to_integer(kernel):
    """AVX2 has no conversion between float64 and int64 lanes: LLVM made each one
    element by element, and the loop ran at half its speed.  The rounding of the
    exponent reduction is an addition (``_round_parts``), so the loop has none."""
    x = np.ones(16, dtype=np.float32 if kernel is _sum_t32 else np.float64)
    kernel(x)
    ir = kernel.inspect_llvm(kernel.signatures[0])
    assert not re.findall(r"= (?:fptosi|fptoui|sitofp|uitofp) [^\n]*", ir)


def test_round_parts_is_rint():
    """``_round_parts``: nearest integer, ties to even, as float and as integer, over
    the range the reductions use (a * log2(e) for a up to A_MAX), and NaN stays NaN."""
    v = np.concatenate([np.arange(0, 2200) * 0.5,  # every tie
                        np.random.default_rng(3).uniform(0, fm.A_MAX * fm.LOG2E, 10_000),
                        np.nextafter(np.arange(1, 1100) + 0.5, 0),
                        np.nextafter(np.arange(1, 1100) + 0.5, 2000)])
    parts = _round_map(v)
    np.testing.assert_array_equal(parts[0], np.rint(v))
    np.testing.assert_array_equal(parts[1], np.rint(v).astype(np.int64))
    f, _ = _round_map(np.array([np.nan]))
    assert np.isnan(f[0])


@numba.njit(error_model="numpy", fastmath=set(ELEMENT_FLAGS))
def _round_loop(v, f, k):
    for i in range(v.size):
        f[i], k[i] = fm._round_parts(v[i])


def _round_map(v):
    f = np.empty_like(v)
    k = np.empty(v.size, dtype=np.int64)
    _round_loop(v, f, k)
    return f, k
