"""The floating-point steps of the AMX bf16 semantics, exactly, in numpy.

fma32(a, b, c) is the fp32 fused multiply-add rounded once to nearest even: the product and
sum are formed in float64, where a * b is exact for bf16 or fp32 factors (24 + 24 bits < 53),
and the one rounding of a + b * c to fp32 is made correct by rounding the float64 sum to odd
first (a float64 that is inexact keeps a sticky last bit, so the final float64 -> fp32
rounding never rounds twice: 53 >= 24 + 2). daz() and ftz() are the SDM's "denormal inputs
treated as zero" and "denormal results flushed to zero" (tininess after rounding, as MXCSR.FZ
on x86), each keeping the sign.
"""

from __future__ import annotations

import numpy as np

F32_MIN_NORMAL = np.float32(2.0 ** -126)


def bf16_to_f32(h):
    """bf16 bits (uint16) -> their exact fp32 values."""
    return (np.asarray(h, np.uint16).astype(np.uint32) << 16).view(np.float32)


def daz(x):
    """x (fp32) with every denormal replaced by the zero of its sign."""
    x = np.asarray(x, np.float32)
    return np.where(np.abs(x) < F32_MIN_NORMAL, np.copysign(np.float32(0), x), x)


ftz = daz  # the same mapping, applied to results


def _two_sum(a, b):
    """s = fl(a + b) and the exact error e = (a + b) - s (float64, Knuth's TwoSum)."""
    s = a + b
    bb = s - a
    e = (a - (s - bb)) + (b - bb)
    return s, e


def _round_to_odd(s, e):
    """The float64 round-to-odd of s + e, where s = RN(s + e) and e is its exact error."""
    bits = s.view(np.uint64)
    even = (bits & np.uint64(1)) == 0
    move = (e != 0) & even & np.isfinite(s)
    out = s.copy()
    out[move] = np.nextafter(s[move], np.where(e[move] > 0, np.inf, -np.inf))
    return out


def fma32(a, b, c):
    """fp32 a * b + c rounded once to nearest even (no DAZ/FTZ: see tdp_step). Inputs fp32;
    a * b is exact in float64. Overflow gives +-inf as the fp32 rounding does."""
    a, b, c = (np.asarray(v, np.float32).astype(np.float64) for v in (a, b, c))
    a, b, c = np.broadcast_arrays(a, b, c)
    p = a * b                               # exact: 48 significant bits at most
    with np.errstate(over="ignore", invalid="ignore"):
        s, e = _two_sum(p, c)
        e = np.where(np.isfinite(s), e, 0.0)
        return _round_to_odd(np.array(s, np.float64), np.array(e, np.float64)).astype(np.float32)


def add32(a, b):
    """fp32 a + b rounded to nearest even (numpy's float32 add)."""
    with np.errstate(over="ignore", invalid="ignore"):
        return (np.asarray(a, np.float32) + np.asarray(b, np.float32)).astype(np.float32)


def tdp_step(acc, x, w):
    """One FMA step of TDPBF16PS: ftz(fma(daz(x), daz(w), daz(acc))), all fp32."""
    return ftz(fma32(daz(x), daz(w), daz(acc)))


def fma_chain_step(p, c):
    """ftz(RN32(p + c)) for float64 arrays p (exact products of fp32 values) and c (fp32
    values that are never denormal), returned as float64 holding fp32 values: the inner
    step of tdpbf16ps.tdpbf16ps, the same arithmetic as tdp_step with fewer conversions."""
    with np.errstate(over="ignore", invalid="ignore"):
        s = p + c
        bb = s - p
        e = (p - (s - bb)) + (c - bb)
        bits = s.view(np.int64)
        fix = (e != 0) & np.isfinite(e) & ((bits & 1) == 0)
        step = np.where((e > 0) == (s > 0), 1, -1)
        r = np.where(fix, bits + step, bits).view(np.float64).astype(np.float32)
    r = np.where(np.abs(r) < F32_MIN_NORMAL, np.copysign(np.float32(0), r), r)
    return r.astype(np.float64)
