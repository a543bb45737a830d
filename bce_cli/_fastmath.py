"""Branch-free scalar exp/log1p building blocks for the loss kernels.

The core of the loss is ``T(a) = log1p(exp(-a))`` for ``a = |x| >= 0``:
``softplus(x) = max(x, 0) + T(|x|)``.  llvmlite has no SVML, so a libm call
keeps a loop scalar; these functions are plain arithmetic (no libm), which
LLVM inlines and vectorises inside ``prange`` loops.

Public functions (float64 in, float64 out; ``a`` must be ``>= 0`` or NaN):

- ``log1p_exp_neg(a)``: T(a), measured max error 0.92 ulp over [0, inf].
- ``exp_neg(a)``: exp(-a), within 1 ulp (the metrics' sigmoid: libm's exp,
  measured 15 ns a call here, was most of their kernel's time).
- ``log1p_exp_neg_f32(a)``: T(a) for float32 logits: relative error 4.3e-11
  (shorter polynomials, no compensation, ~2.7x faster); exactly 0.0 for ``a > 708``.

NaN gives NaN; ``a = +inf`` gives 0.0.  Errors are
measured by ``tests/test_fastmath.py`` against x87 long double, with callers
compiled under both flag sets.  Polynomial coefficients are discrete Remez fits
(mpmath, 60 digits) rounded to float64; each comment gives the fit's own error.
Polynomials are evaluated in Estrin's scheme (pairs, then powers t**2, t**4):
the dependency chain is half as long as Horner's, which measured 12-15% faster
in the vectorised loops, where latency rather than arithmetic was the limit.

Flags: every function here is compiled on its own with ``ELEMENT_FLAGS`` and
is *not* ``inline="always"``: Numba's IR-level inlining would compile the body
with the caller's flags, and ``reassoc`` from a summing caller deletes the
compensation terms of the float64 path (``t_lo``, ``lo``; measured with the
earlier Horner evaluation: 3.8 ulp instead of 0.89).  A plain call is inlined
by LLVM instead, which keeps each instruction's own flags, and the caller's
loop still vectorises.  The float32
path has no compensation and keeps its accuracy even under ``reassoc``.

Portability: the only non-Python operations are ``_f64_from_bits`` and
``_bits_of_f64`` (bitcasts between int64 and float64); :func:`retargeted` compiles
this module's functions for another target with those helpers swapped
(``bce_cli._cuda``: ``libdevice.longlong_as_double`` / ``double_as_longlong`` on
a GPU, ``struct`` round trips on numba's CUDA simulator).  Rounding to an integer
is an addition (``_round_parts``), not a conversion: AVX2 has no conversion
between float64 and int64 lanes, and LLVM made one element by element (the
kernels ran at half their AVX-512 speed on AVX2).
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from bce_cli._jit import retarget, scalar

_scalar = scalar()  # a plain njit with ELEMENT_FLAGS: see "Flags" above
_public = scalar(python=True)  # the same, callable from Python as well

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453
LN2_HI = 6.93147180369123816490e-01  # fdlibm: 21 trailing zero bits, so k*LN2_HI is exact
LN2_LO = 1.90821492927058770002e-10
A_MAX = 746.0  # exp(-746) < 2**-1075 rounds to 0.0: clamp, so 2**-k stays in range
A32_MAX = 708.0  # float32 path: 2**-k in one step (k <= 1022); beyond, T rounds to 0 in float32
# v + SHIFTER rounds v (0 <= v < 2**51) to the nearest integer, ties to even, as rint
# does, and holds it in the low bits of the sum's mantissa: the bits are
# SHIFTER_BITS + k.  No float-to-integer conversion, which AVX2 does not have for
# int64 lanes (LLVM then converts element by element: half the loop's speed).
SHIFTER = 6755399441055744.0  # 1.5 * 2**52
SHIFTER_BITS = 0x4338000000000000


@intrinsic
def _f64_from_bits(typingctx, bits):
    """Reinterpret int64 bits as float64 (the one CPU-only helper)."""
    if not isinstance(bits, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())

    return types.float64(types.int64), codegen


@intrinsic
def _bits_of_f64(typingctx, x):
    """The int64 bits of a float64 (the other CPU-only helper)."""
    if not isinstance(x, types.Float):
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(64))

    return types.int64(types.float64), codegen


@_scalar
def _pow2_neg(k):
    """2.0**-k for integer 0 <= k <= 1022, from the exponent bits (masked to them: the
    integer of a NaN reduction is arbitrary, and must not overflow the simulator's
    int64 packing; the result is NaN anyway)."""
    return _f64_from_bits(((1023 - k) & 0x7FF) << 52)


@_scalar
def _round_parts(v):
    """(float, integer) of v rounded to the nearest integer, ties to even, for
    0 <= v < 2**51 (NaN: NaN and some integer), with the ``SHIFTER``."""
    shifted = v + SHIFTER
    return shifted - SHIFTER, _bits_of_f64(shifted) - SHIFTER_BITS


@_scalar
def _scale(x, k):
    """x * 2**-k for 0 <= k <= 1080, in two steps so a subnormal result is rounded once."""
    k1 = k >> 1
    return (x * _pow2_neg(k1)) * _pow2_neg(k - k1)


@_scalar
def _exp_neg_parts(a):
    """exp(-a) = (hi + lo) * 2**-k for 0 <= a <= A_MAX; hi + lo good to ~2**-60.

    t = k*ln2 - a in [-ln2/2, ln2/2] kept as t + t_lo (Cody-Waite, two-part ln2);
    exp(t) = 1 + t + t*t*Q(t), Q Remez degree 9 (relative error 2**-57.9).
    """
    kf, k = _round_parts(a * LOG2E)
    t1 = kf * LN2_HI - a  # exact
    t = t1 + kf * LN2_LO
    t_lo = (t1 - t) + kf * LN2_LO
    t2 = t * t
    t4 = t2 * t2
    q = (((0.5000000000000011 + t * 0.16666666666666413)
          + t2 * (0.041666666666530267 + t * 0.008333333333494336))
         + t4 * (((0.0013888888943597783 + t * 0.0001984126950677098)
                  + t2 * (2.4801493136102227e-05 + t * 2.7557586274755034e-06))
                 + t4 * (2.7630233947193274e-07 + t * 2.5000069498027306e-08)))
    w = t2 * q
    s = t + w
    s_lo = (t - s) + w  # Fast2Sum: |t| >= |w|
    hi = 1.0 + s
    lo = ((1.0 - hi) + s) + (s_lo + t_lo * hi)  # Fast2Sum: 1 >= |s|
    return hi, lo, k


@_public
def exp_neg(a):
    """exp(-a) for a >= 0 in float64, within 1 ulp: ``_exp_neg_parts`` (good to
    2**-60) rounded once, then scaled (0.0 for a > 746, NaN for NaN)."""
    a = A_MAX if a > A_MAX else a  # NaN passes
    hi, lo, k = _exp_neg_parts(a)
    return _scale(hi + lo, k)


@_public
def log1p_exp_neg(a):
    """log1p(exp(-a)) for a >= 0 in float64, measured max error 0.92 ulp.

    e = exp(-a) as e + e_lo; fdlibm's log1p: 1+e = 2**kk * (1+f) with kk = 1 for
    e >= 0.5 (then f = (e-1)/2 is exact), s = f/(2+f), log1p(f) = f - hfsq + s*(hfsq+R),
    R = z*G(z), z = s*s in [0, 0.04], G Remez degree 7 (relative error 2**-54.6).
    """
    a = A_MAX if a > A_MAX else a  # NaN passes
    hi, lo, k = _exp_neg_parts(a)
    e = _scale(hi, k)
    e_lo = _scale(lo, k)
    big = e >= 0.5
    kk = 1.0 if big else 0.0
    f = (e - 1.0) * 0.5 if big else e
    f_lo = e_lo * 0.5 if big else e_lo
    s = f / (2.0 + f)
    z = s * s
    z2 = z * z
    z4 = z2 * z2
    r = z * (((0.6666666666666666 + z * 0.4000000000000784)
              + z2 * (0.28571428567324053 + z * 0.22222223040081962))
             + z4 * ((0.18181738292005045 + z * 0.15388840651313046)
                     + z2 * (0.13210251766615577 + z * 0.13604792929184858)))
    hfsq = 0.5 * f * f
    corr = f_lo * (1.0 - 2.0 * s + 2.0 * z)  # f_lo / (1 + f) to 2*|s|**3
    return kk * LN2_HI - ((hfsq - (s * (hfsq + r) + (kk * LN2_LO + corr))) - f)


@_public
def log1p_exp_neg_f32(a):
    """log1p(exp(-a)) for a = |float32 logit| >= 0, measured relative error 4.3e-11.

    One-constant reduction (error <= 3e-14), exp(t) Remez degree 7 (4.0e-11),
    log1p(e) = 2*s*A(s*s) with s = e/(2+e) in [0, 1/3], A Remez degree 6 (2.5e-12).
    Returns exactly 0.0 for a > 708 (T < 3e-308: 0.0 in float32 for a > 104).

    The result is a product whose first factor is picked (0 beyond 708), not the
    product itself: a caller's ``x*c + T`` then contracts into one multiply-add in a
    vector loop and in its scalar remainder alike.  With the product picked, AVX-512
    code fused the pick and the caller's sum into a masked multiply-add in vector
    bodies only, and an element's last bit depended on where it fell in the loop.
    """
    ac = A32_MAX if a > A32_MAX else a  # NaN passes
    kf, k = _round_parts(ac * LOG2E)
    t = kf * LN2 - ac
    t2 = t * t
    t4 = t2 * t2
    p = (((0.9999999999616819 + t * 1.0000000002430969)
          + t2 * (0.5000000104536314 + t * 0.16666665126139488))
         + t4 * ((0.04166622542534887 + t * 0.008333561089642165)
                 + t2 * (0.001394818333315612 + t * 0.0001977517190399622)))
    e = p * _pow2_neg(k)
    s = e / (2.0 + e)
    z = s * s
    z2 = z * z
    z4 = z2 * z2
    two_s = 0.0 if a > A32_MAX else s + s  # NaN passes
    return two_s * (((1.0000000000025142 + z * 0.33333333113656605)
                     + z2 * (0.20000031270357557 + z * 0.1428405130277295))
                    + z4 * ((0.1115293930945003 + z * 0.08558256232622283)
                            + z2 * 0.10939338135121426))


# The functions above in the order they call each other (each only those before it).
_CHAIN = ("_pow2_neg", "_round_parts", "_scale", "_exp_neg_parts", "log1p_exp_neg",
          "log1p_exp_neg_f32")


def retargeted(decorate, f64_from_bits, bits_of_f64, **helpers) -> dict:
    """This module's functions compiled by ``decorate`` (another numba target, such as
    ``cuda.jit(device=True)``) from the same Python source, with the bit-cast helpers
    ``_f64_from_bits`` and ``_bits_of_f64`` replaced (and any other global named in
    ``helpers``); returns ``{name: compiled}`` for the names in ``_CHAIN``."""
    namespace = dict(globals(), _f64_from_bits=f64_from_bits, _bits_of_f64=bits_of_f64,
                     **helpers)
    built = {}
    for name in _CHAIN:
        built[name] = namespace[name] = retarget(globals()[name], namespace, decorate)
    return built
