"""The int8 kernels: activation quantiser, weight packing, u8 x s8 GEMM (csrc/ref/qgemm.c and
csrc/x86/<isa>/qgemm.c).

  - the reference against numpy: the quantiser against a transcription of the exact scheme
    of csrc/bge.h (bit for bit), the int32 sums against an int64 matmul, the fp32 epilogue
    against the same float32 operations in numpy;
  - every int8 level the host has (avx2, avxvnni, avx512 which carries the level below's
    int8 kernels, avx512vnni, amx; a level the host can't run is skipped, saying so) against the
    reference EXACTLY: quantised bytes, scales and zero points, int32 sums, and the fp32
    outputs of the bias and residual epilogues. GELU: the SIMD levels use their vector GELU
    (x86/<isa>/vmath.h, within 1.5e-7 |v| of the reference's scalar one), so there the
    bound holds, and the SIMD levels agree with each other bit for bit;
  - the scheme is per group of Q8_GROUP = 64 consecutive k (activation scale and zero point
    per (row, group), weight scale per (column, group), int32 sums per group, an fp32 sum
    over the groups in ascending order); the raw int32 GEMM sums over every k at once;
  - odd shapes (K not a multiple of 4, K at and around group boundaries: 1, 63, 64, 65,
    127, 128, 383 .. 385, 1536, 1537), zero points at both ends within one row (groups of
    either sign), weights at -127 and 127, sums near the int32 limit; outputs
    sentinel-filled with a guard region after them that must stay untouched;
  - thread-count and batch invariance, bit for bit; the documented packed layout; another
    table's packing rejected; bad arguments raise ValueError.
"""

from __future__ import annotations

import functools
import math
import re

import numpy as np
import pytest

import kernel_cases
from bge_engine import _kernels
from kernel_cases import covering_shapes

REF = _kernels.Kernels("ref")
INT8_LEVELS = ("avx2", "avxvnni", "avx512", "avx512vnni", "amx", "dotprod", "i8mm")
GUARD = 67
F_SENT = np.float32(-7.25e30)
I_SENT = np.int32(-0x5A5A5A5A)
U_SENT = np.uint8(0xA5)
GELU_BOUND = 1.5e-7  # BGE_VMATH_GELU_BOUND, x86/avx2/vmath.h, x86/avx512/vmath.h, arm/neon/vmath.h
HEADER = ("magic", "layout", "K", "N", "Kp", "Np", "nr", "kgroup", "elt", "group", "ngroups")
G = _kernels.Q8_GROUP

Ms = [1, 2, 3, 7, 15, 16, 17, 31, 33, 63, 64, 65, 127, 129]
Ks = [1, 3, 4, 5, 7, 17, 63, 64, 65, 127, 128, 383, 384, 385, 1536, 1537]
Ns = [1, 7, 16, 17, 31, 33, 383, 384, 385, 1152, 1536, 1537]


SHAPES = covering_shapes(Ms, Ks, Ns, 42, 40e6, [
    (17, 384, 1152), (65, 384, 384), (33, 384, 1536), (15, 1536, 384), (129, 5, 7),
    (1, 1537, 1537), (2, 1, 1), (3, 3, 17)])


def level(isa):
    return kernel_cases.level(isa, "int8")


@pytest.fixture(params=INT8_LEVELS)
def kern(request):
    return level(request.param)


def kp(K):
    return (K + 3) // 4 * 4


def ng(K):
    return (K + G - 1) // G


def test_group_constants():
    assert G == 64 and _kernels.q8_groups(1) == 1 and _kernels.q8_groups(64) == 1
    assert _kernels.q8_groups(65) == 2 and _kernels.q8_groups(1537) == 25


# ---------------------------------------------------------------------------------------
# numpy transcription of the scheme (csrc/bge.h)
# ---------------------------------------------------------------------------------------

def np_cvt(v):
    """cvtps2dq: round half to even; NaN and values past the int32 range -> INT32_MIN."""
    r = np.rint(v.astype(np.float32))
    ok = (r >= np.float32(-2.0**31)) & (r < np.float32(2.0**31))
    out = np.full(r.shape, np.iinfo(np.int32).min, dtype=np.int64)
    out[ok] = r[ok].astype(np.int64)
    return out


def np_quantize(x):
    """x (M, K) float32 -> q (M, Kp) uint8, scale (M, ngroups) float32, zp (M, ngroups) int32:
    each group of G consecutive k quantised on its own with the per-row formula."""
    M, K = x.shape
    q = np.zeros((M, kp(K)), np.uint8)
    scale = np.ones((M, ng(K)), np.float32)
    zp = np.zeros((M, ng(K)), np.int32)
    f0 = np.float32(0)
    with np.errstate(all="ignore"):
        for m in range(M):
            for g in range(ng(K)):
                k0, k1 = g * G, min(g * G + G, K)
                part = x[m, k0:k1]
                mn = np.fmin(f0, np.fmin.reduce(part))  # fmin skips NaN, as minps(x, acc) does
                mx = np.fmax(f0, np.fmax.reduce(part))
                if mx == mn:
                    continue
                rng = np.float32(mx - mn)
                scale[m, g] = rng / np.float32(255.0)
                inv = np.float32(np.float32(255.0) / rng)
                zp[m, g] = np.clip(np_cvt(np.array([-mn * inv], np.float32))[0], 0, 255)
                q[m, k0:k1] = np.clip(np_cvt(part * inv) + zp[m, g], 0, 255).astype(np.uint8)
            q[m, K:] = zp[m, -1]
    return q, scale, zp


def np_colsum(w):
    """colsum (N, ngroups) int64: the sum of w_s8 over each group."""
    N, K = w.shape
    return np.stack([w[:, g * G:g * G + G].astype(np.int64).sum(axis=1) for g in range(ng(K))],
                    axis=1)


def np_gemm(q, scale, zp, w, w_scale, bias, res=None):
    """The fp32 result (bias, or bias + residual) of the scheme, op for op in float32: per
    group, d = acc_g - zp colsum (int32, exact); s = s + (float)d * (scale w_scale) in
    ascending group order from 0; then + bias [+ res]."""
    N, K = w.shape
    cs = np_colsum(w)
    s = np.zeros((q.shape[0], N), np.float32)
    for g in range(ng(K)):
        k0, k1 = g * G, min(g * G + G, K)
        acc = q[:, k0:k1].astype(np.int64) @ w[:, k0:k1].T.astype(np.int64)
        d = (acc - zp[:, g, None].astype(np.int64) * cs[None, :, g]).astype(np.int32)
        s = s + d.astype(np.float32) * (scale[:, g, None] * w_scale[None, :, g])
    v = s + bias[None, :]
    if res is not None:
        v = v + res
    return v


def gelu64(v):
    v = v.astype(np.float64)
    return 0.5 * v * (1.0 + np.vectorize(math.erf)(v / math.sqrt(2.0)))


# ---------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------

def activations(M, K, rng):
    """Rows of every kind: mixed sign, all >= 0 (zp 0), all <= 0 (zp 255), zero, tiny,
    huge, one with exact halfway cases, and rows whose groups differ (each group of G k
    >= 0, <= 0, zero, tiny or huge: both zero-point extremes within one row)."""
    x = rng.standard_normal((M, K), dtype=np.float32)
    kinds = rng.integers(0, 9, M)
    for m in range(M):
        if kinds[m] == 1:
            x[m] = np.abs(x[m])
        elif kinds[m] == 2:
            x[m] = -np.abs(x[m])
        elif kinds[m] == 3:
            x[m] *= np.float32(1e-30)
        elif kinds[m] == 4:
            x[m] *= np.float32(1e30)
        elif kinds[m] == 5 and K >= 2:
            x[m] = np.float32(0.5) + rng.integers(0, 255, K).astype(np.float32)
            x[m, 0], x[m, 1] = 0.0, 255.0  # inv = 1: every x + 0.5 is a halfway case
        elif kinds[m] >= 6:
            for g, how in enumerate(rng.integers(0, 6, ng(K))):
                part = x[m, g * G:g * G + G]
                if how == 1:
                    part[:] = np.abs(part)
                elif how == 2:
                    part[:] = -np.abs(part)
                elif how == 3:
                    part[:] = 0.0
                elif how == 4:
                    part *= np.float32(1e-20)
                elif how == 5:
                    part *= np.float32(1e20)
    if M >= 3:
        x[M - 1] = 0.0
    return x


def weights(N, K, rng):
    """w_s8 at both ends (row 0 all 127, row N-1 all -127, a zero group) and a scale per
    (column, group)."""
    w = rng.integers(-127, 128, (N, K)).astype(np.int8)
    w[0] = 127
    if N > 1:
        w[N - 1] = -127
    if N > 2 and K > G:
        w[1, G:2 * G] = 0
    w_scale = (rng.random((N, ng(K)), dtype=np.float32) + np.float32(0.5)) * np.float32(0.01)
    return w, w_scale


def quantized(M, K, seed):
    return np_quantize(activations(M, K, np.random.default_rng(seed)))


def guarded(shape, dtype, sentinel):
    n = int(np.prod(shape))
    buf = np.full(n + GUARD, sentinel, dtype=dtype)
    return buf, buf[:n].reshape(shape)


def assert_guard(buf, n, what):
    tail = buf[n:].view(np.uint8)
    want = np.full(GUARD, buf.dtype.type(buf[-1]), buf.dtype).view(np.uint8)
    assert np.array_equal(tail, want), f"{what} wrote past its output"


@functools.lru_cache(maxsize=None)
def ref_case(M, K, N):
    """(x, q, scale, zp, w, w_scale, bias, res, acc, out) with the reference's results."""
    rng = np.random.default_rng(M * 1_000_003 + K * 1009 + N)
    x = activations(M, K, rng)
    w, w_scale = weights(N, K, rng)
    bias = rng.standard_normal(N, dtype=np.float32)
    res = rng.standard_normal((M, N), dtype=np.float32)
    q, scale, zp = (np.empty((M, kp(K)), np.uint8), np.empty((M, ng(K)), np.float32),
                    np.empty((M, ng(K)), np.int32))
    REF.quantize(x, q, scale, zp)
    packed = REF.qpack(w, w_scale)
    acc = np.empty((M, N), np.int32)
    REF.qgemm_i32(q, packed, acc)
    out = {}
    for epi in ("bias", "gelu", "residual"):
        out[epi] = np.empty((M, N), np.float32)
        REF.qgemm(q, scale, zp, packed, bias, out[epi], epi,
                  res=res if epi == "residual" else None)
    return x, q, scale, zp, w, w_scale, bias, res, acc, out


# ---------------------------------------------------------------------------------------
# the reference against numpy
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("M,K", [(1, 1), (3, 3), (7, 4), (17, 5), (9, 63), (9, 64), (9, 65),
                                 (17, 127), (17, 128), (33, 383), (65, 1537)])
def test_ref_quantize_is_the_scheme(M, K):
    x = activations(M, K, np.random.default_rng(M + 31 * K))
    q, scale, zp = np_quantize(x)
    bq, gq = guarded((M, kp(K)), np.uint8, U_SENT)
    s, z = np.empty((M, ng(K)), np.float32), np.empty((M, ng(K)), np.int32)
    REF.quantize(x, gq, s, z, threads=2)
    assert np.array_equal(gq, q) and np.array_equal(s.view(np.int32), scale.view(np.int32))
    assert np.array_equal(z, zp)
    assert_guard(bq, gq.size, "ref quantize")


def int8_kernels():
    """(name, Kernels) for the reference and every int8 level this host runs."""
    for isa in ("ref",) + INT8_LEVELS:
        if isa in _kernels.usable_isas():
            yield isa, _kernels.Kernels(isa)


def every_level_quantizes(x, q, scale, zp, **kw):
    """The reference and every int8 level the host runs quantise x to exactly q, scale and
    zp (kw: the quantiser's own options, threads=)."""
    for isa, k in int8_kernels():
        got = np.empty_like(q), np.empty_like(scale), np.empty_like(zp)
        k.quantize(x, *got, **kw)
        assert np.array_equal(got[0], q), isa
        assert np.array_equal(got[1].view(np.int32), scale.view(np.int32)), isa
        assert np.array_equal(got[2], zp), isa


def test_quantize_special_rows():
    """Halfway cases round to even, zero points at both ends, a zero row, NaN and inf."""
    x = np.array([[0, 255, 0.5, 1.5, 2.5, 3.5, 254.5],
                  [0, 1, 2, 3, 4, 5, 6],
                  [0, -1, -2, -3, -4, -5, -6],
                  [0, 0, 0, 0, 0, 0, 0],
                  [np.nan, 1, -1, 0, 2, np.nan, 0],
                  [np.inf, 1, -1, 0, 2, 3, 0],
                  [-np.inf, 1, -1, 0, 2, 3, np.inf],
                  [np.nan] * 7], np.float32)
    q, scale, zp = np_quantize(x)
    assert list(q[0, :7]) == [0, 255, 0, 2, 2, 4, 254] and zp[0, 0] == 0 and scale[0, 0] == 1
    assert zp[1, 0] == 0 and q[1, 6] == 255 and zp[2, 0] == 255 and q[2, 6] == 0
    assert zp[3, 0] == 0 and scale[3, 0] == 1 and not q[3].any() and q[0, 7] == zp[0, 0]
    every_level_quantizes(x, q, scale, zp)


def test_quantize_groups_independent():
    """Each group has its own scale and zero point: a row of 130 = 64 + 64 + 2 with a
    negative group (zp 255), a zero group and a positive one (zp 0); the row's padding
    bytes take the last group's zero point."""
    K = 130
    x = np.zeros((3, K), np.float32)
    x[0, :64] = -np.arange(64, dtype=np.float32)  # zp 255
    x[0, 128:] = [1.0, 3.0]                        # zp 0; group 1 all zero
    x[1, :64] = np.arange(64, dtype=np.float32)
    x[1, 64:128] = np.float32(1e-30) * np.arange(-32, 32, dtype=np.float32)
    x[1, 128:] = [-2.0, -1.0]                      # the last group's zp 255 -> padding 255
    x[2] = np.float32(0.5) + np.arange(K, dtype=np.float32) % 255
    q, scale, zp = np_quantize(x)
    assert list(zp[0]) == [255, 0, 0] and scale[0, 1] == 1 and not q[0, 64:128].any()
    assert q[0, 0] == 255 and q[0, 63] == 0 and list(q[0, 128:130]) == [85, 255]
    assert list(q[0, 130:]) == [0, 0] and list(q[1, 130:]) == [255, 255]
    assert zp[1, 0] == 0 and 0 < zp[1, 1] < 255 and zp[1, 2] == 255
    every_level_quantizes(x, q, scale, zp)


@pytest.mark.parametrize("M,K,N", [(1, 1, 1), (2, 3, 7), (7, 5, 16), (9, 63, 17), (9, 64, 17),
                                   (9, 65, 17), (5, 127, 33), (5, 128, 33), (17, 383, 33),
                                   (33, 384, 385), (3, 1537, 1537), (65, 385, 1152)])
def test_ref_gemm_is_the_scheme(M, K, N):
    x, q, scale, zp, w, w_scale, bias, res, acc, out = ref_case(M, K, N)
    assert np.array_equal(acc, q[:, :K].astype(np.int64) @ w.T.astype(np.int64))
    assert np.array_equal(out["bias"].view(np.int32),
                          np_gemm(q, scale, zp, w, w_scale, bias).view(np.int32))
    assert np.array_equal(out["residual"].view(np.int32),
                          np_gemm(q, scale, zp, w, w_scale, bias, res).view(np.int32))
    v = out["bias"]
    assert np.all(np.abs(out["gelu"] - gelu64(v)) <= 2e-7 * np.abs(v) + 1e-37)
    # and the scheme approximates the fp32 product of the dequantised operands
    gk = np.arange(K) // G  # the group of each k
    deq = (q[:, :K].astype(np.float64) - zp[:, gk]) * scale[:, gk]
    exact = deq @ (w.astype(np.float64) * w_scale[:, gk]).T + bias
    assert np.allclose(out["bias"], exact, rtol=1e-5, atol=1e-5 * (1 + np.abs(exact).max()))


def test_ref_gemm_near_int32_limit():
    K = _kernels.Q8_MAX_K
    q = np.full((2, kp(K)), 255, np.uint8)
    w = np.full((3, K), 127, np.int8)
    w[1] = -127
    for isa, k in int8_kernels():
        acc = np.empty((2, 3), np.int32)
        k.qgemm_i32(q, k.qpack(w, np.ones((3, ng(K)), np.float32)), acc)
        assert np.array_equal(acc, np.array([[1, -1, 1]] * 2) * (255 * 127 * K)), isa


# ---------------------------------------------------------------------------------------
# every int8 level against the reference, exactly
# ---------------------------------------------------------------------------------------

def test_names(kern):
    n = kern.names
    home = {"avx2": "avx2", "avxvnni": "avxvnni", "avx512vnni": "avx512vnni", "amx": "amx",
            "avx512": r"(avx2|avxvnni)", "dotprod": "dotprod", "i8mm": "i8mm"}[kern.isa]
    assert re.fullmatch(rf"bge_qu8s8_gemm_\d+x\d+__{home}", n["qu8s8_gemm"]), n
    tile = n["qu8s8_gemm"][len("bge_qu8s8_gemm"):]
    assert n["qs8_pack"] == "bge_qs8_pack" + tile
    assert n["qu8s8_gemm_i32"] == "bge_qu8s8_gemm_i32" + tile
    # the quantisers: x86's own levels'; on ARM the neon level's, which every ARM level keeps
    quant = "neon" if kern.isa in ("dotprod", "i8mm") else r"(avx2|avx512vnni)"
    assert re.fullmatch(rf"bge_qu8_quantize__{quant}", n["qu8_quantize"]), n
    want = {"avx512vnni": "avx512vnni", "amx": "avx512vnni", "dotprod": "neon",
            "i8mm": "neon"}.get(kern.isa, "avx2")
    assert n["qs8_quantize_weights"] == "bge_qs8_quantize_weights__" + want, n


@pytest.mark.parametrize("N,K", [(1, 1), (7, 17), (17, 63), (3, 64), (383, 65), (384, 383),
                                 (385, 384), (16, 1536), (9, 1537)])
def test_weight_quantiser_equals_reference(kern, N, K):
    """Every level's qs8_quantize_weights writes the reference's bytes: random rows, an
    all-zero row and group (scale 1), values on the rounding ties of their group's scale,
    the largest finite float; a NaN or an infinity anywhere is refused."""
    rng = np.random.default_rng(N * 7919 + K)
    w = rng.standard_normal((N, K), dtype=np.float32)
    w[0, :min(K, 64)] = 0.0
    if N > 2:
        w[2] = 0.0
        w[1, 0] = np.float32(3.4e38)
    if N > 3 and K > 1:  # |w| = 127: scale 1, so halves are exact ties of rint
        w[3, 0] = 127.0
        w[3, 1:min(K, 64)] = np.arange(1, min(K, 64), dtype=np.float32) * 0.5 - 16.25
    want_q, want_s = _kernels.quantize_weight(w, table=REF)
    for threads in (1, 3):
        q, s = _kernels.quantize_weight(w, threads=threads, table=kern)
        assert np.array_equal(q, want_q) and np.array_equal(s.view(np.int32),
                                                            want_s.view(np.int32)), threads
    for bad in (np.nan, np.inf, -np.inf):
        w2 = w.copy()
        w2[N - 1, K - 1] = bad
        with pytest.raises(ValueError, match="NaN or infinity"):
            _kernels.quantize_weight(w2, table=kern)


@pytest.mark.parametrize("M,K", [(1, 1), (2, 3), (3, 4), (7, 5), (15, 7), (16, 17), (9, 63),
                                 (9, 64), (9, 65), (17, 127), (17, 128), (17, 383),
                                 (31, 384), (33, 385), (63, 1536), (129, 1537)])
def test_quantize_against_ref(kern, M, K):
    x = activations(M, K, np.random.default_rng(7 * M + K))
    want = [np.empty((M, kp(K)), np.uint8), np.empty((M, ng(K)), np.float32),
            np.empty((M, ng(K)), np.int32)]
    REF.quantize(x, *want)
    bq, q = guarded((M, kp(K)), np.uint8, U_SENT)
    bs, s = guarded((M, ng(K)), np.float32, F_SENT)
    bz, z = guarded((M, ng(K)), np.int32, I_SENT)
    kern.quantize(x, q, s, z, threads=1)
    assert np.array_equal(q, want[0]), f"{kern.isa} quantize bytes differ (M={M}, K={K})"
    assert np.array_equal(s.view(np.int32), want[1].view(np.int32))
    assert np.array_equal(z, want[2])
    for b, n in ((bq, q.size), (bs, s.size), (bz, z.size)):
        assert_guard(b, n, f"{kern.isa} quantize")
    q2 = np.empty_like(q)
    kern.quantize(x, q2, s, z, threads=3)
    assert np.array_equal(q2, want[0])


@pytest.mark.parametrize("M,K,N", SHAPES)
def test_gemm_against_ref(kern, M, K, N):
    x, q, scale, zp, w, w_scale, bias, res, acc, out = ref_case(M, K, N)
    packed = kern.qpack(w, w_scale)
    ba, a = guarded((M, N), np.int32, I_SENT)
    kern.qgemm_i32(q, packed, a)
    assert_guard(ba, M * N, f"{kern.isa} qgemm_i32")
    bad = a != acc
    assert not bad.any(), (f"{kern.isa} i32 (M={M}, K={K}, N={N}): {bad.sum()} differ, first "
                           f"at {np.argwhere(bad)[0]}: {a[bad][0]} vs ref {acc[bad][0]}")
    for epi in ("bias", "residual", "gelu"):
        bo, o = guarded((M, N), np.float32, F_SENT)
        kern.qgemm(q, scale, zp, packed, bias, o, epi, res=res if epi == "residual" else None)
        assert_guard(bo, M * N, f"{kern.isa} qgemm {epi}")
        want = out[epi]
        if epi == "gelu":  # the vector GELU, within its bound of the scalar one
            bad = ~(np.abs(o - want) <= GELU_BOUND * np.abs(out["bias"]) + 1e-37)
        else:
            bad = o.view(np.int32) != want.view(np.int32)
        assert not bad.any(), (
            f"{kern.isa} {epi} (M={M}, K={K}, N={N}): {bad.sum()} differ, first at "
            f"{np.argwhere(bad)[0]}: {o[bad][0]!r} vs ref {want[bad][0]!r}")


@pytest.mark.parametrize("M,K,N", [(17, 384, 1152), (33, 385, 1537), (7, 1537, 31)])
def test_simd_levels_agree_on_gelu(M, K, N):
    """All SIMD levels: the same bits, GELU included (the vector GELUs are one algorithm)."""
    levels = [i for i in INT8_LEVELS if i in _kernels.usable_isas()]
    if len(levels) < 2:
        pytest.skip(f"int8: fewer than two SIMD levels usable here ({levels})")
    x, q, scale, zp, w, w_scale, bias, res, acc, out = ref_case(M, K, N)
    outs = []
    for isa in levels:
        k = _kernels.Kernels(isa)
        o = np.empty((M, N), np.float32)
        outs.append(k.qgemm(q, scale, zp, k.qpack(w, w_scale), bias, o, "gelu"))
    for isa, o in zip(levels[1:], outs[1:]):
        assert np.array_equal(o.view(np.int32), outs[0].view(np.int32)), (levels[0], isa)


def _same_bits_any_threads(kern, shapes, repeats):
    """qgemm on 2, 3 and 7 threads (more than the cores), out pre-filled with the sentinel:
    the bits of one thread; qgemm_i32: the exact raw sums."""
    for M, K, N in shapes:
        x, q, scale, zp, w, w_scale, bias, res, acc, out = ref_case(M, K, N)
        packed = kern.qpack(w, w_scale)
        base = np.empty((M, N), np.float32)
        kern.qgemm(q, scale, zp, packed, bias, base, "residual", res=res, threads=1)
        for t in (2, 3, 7):
            for _ in range(repeats):
                o = np.full((M, N), F_SENT, np.float32)
                kern.qgemm(q, scale, zp, packed, bias, o, "residual", res=res, threads=t)
                assert np.array_equal(o.view(np.int32), base.view(np.int32)), (M, N, t)
                a = np.full((M, N), -1, np.int32)
                kern.qgemm_i32(q, packed, a, threads=t)
                assert np.array_equal(a, acc), (M, N, t)


def test_few_rows_every_panel_once_whatever_the_threads(kern):
    """Up to 8 row tiles each thread takes its own run of panels, then panels from the back
    of the others' runs (some threads start late: 5 repeats); odd panel counts."""
    _same_bits_any_threads(kern, ((1, 384, 1537), (16, 1536, 385), (100, 384, 1152)), 5)


def test_many_rows_cut_rows_first_whatever_the_threads(kern):
    """From 129 rows the rectangles are cut along the rows first (bge_run_rectangles): row
    counts on both sides of it and off the tile, odd panel counts."""
    _same_bits_any_threads(kern, ((128, 384, 385), (129, 385, 1152), (301, 130, 49)), 1)


def test_thread_and_batch_invariance(kern):
    """A row's bits do not depend on the thread count, the batch or its place in it."""
    M, K, N = 129, 385, 1537
    x, q, scale, zp, w, w_scale, bias, res, acc, out = ref_case(M, K, N)
    packed = kern.qpack(w, w_scale)
    base = np.empty((M, N), np.float32)
    kern.qgemm(q, scale, zp, packed, bias, base, "gelu", threads=1)
    for t in (2, 3, 5):
        o = np.empty((M, N), np.float32)
        kern.qgemm(q, scale, zp, packed, bias, o, "gelu", threads=t)
        assert np.array_equal(o.view(np.int32), base.view(np.int32)), f"threads={t}"
        a = np.empty((M, N), np.int32)
        kern.qgemm_i32(q, packed, a, threads=t)
        assert np.array_equal(a, acc), f"i32 threads={t}"
    for lo, hi in ((0, 1), (5, 6), (128, 129), (3, 20), (17, 129), (1, 65)):
        xs = np.ascontiguousarray(x[lo:hi])
        qs, ss, zs = (np.empty((hi - lo, kp(K)), np.uint8),
                      np.empty((hi - lo, ng(K)), np.float32),
                      np.empty((hi - lo, ng(K)), np.int32))
        kern.quantize(xs, qs, ss, zs, threads=2)
        assert np.array_equal(qs, q[lo:hi]) and np.array_equal(zs, zp[lo:hi])
        o = np.empty((hi - lo, N), np.float32)
        kern.qgemm(qs, ss, zs, packed, bias, o, "gelu", threads=2)
        assert np.array_equal(o.view(np.int32), base[lo:hi].view(np.int32)), (lo, hi)


def test_residual_may_alias_out(kern):
    M, K, N = 33, 385, 383
    x, q, scale, zp, w, w_scale, bias, res, acc, out = ref_case(M, K, N)
    o = res.copy()
    kern.qgemm(q, scale, zp, kern.qpack(w, w_scale), bias, o, "residual", res=o, threads=2)
    assert np.array_equal(o.view(np.int32), out["residual"].view(np.int32))


# ---------------------------------------------------------------------------------------
# packing
# ---------------------------------------------------------------------------------------

def header(packed):
    return dict(zip(HEADER, packed.data[:4 * len(HEADER)].view(np.int32).tolist()))


I8MM_LAYOUT = 7  # BGE_Q8_LAYOUT_I8MM


def i8mm_panels(wp, nr):
    """The i8mm layout (arm/i8mm/qgemm.c) of wp (Np, Kp), flat: per panel of nr columns, per
    k-octet o, per column pair c, 8 k of column 2c then 8 of column 2c + 1; a last quad
    (Kp % 8 = 4) as 4 k per column."""
    Np, Kp = wp.shape
    K8 = Kp // 8 * 8
    out = []
    for p in range(Np // nr):
        P = wp[nr * p:nr * (p + 1)]
        octets = P[:, :K8].reshape(nr // 2, 2, K8 // 8, 8).transpose(2, 0, 1, 3)
        out += [octets.reshape(-1), P[:, K8:].reshape(-1)]
    return np.concatenate(out)


@pytest.mark.parametrize("K,N", [(1, 1), (5, 17), (64, 3), (65, 25), (385, 49), (384, 1152)])
def test_packed_layout(K, N):
    """The layout documented in ref/qgemm.c, for every level the host has."""
    rng = np.random.default_rng(K + N)
    w, w_scale = weights(N, K, rng)
    for isa, k in int8_kernels():
        p = k.qpack(w, w_scale)
        h = header(p)
        assert h["magic"] == 0x38514742 and (h["K"], h["N"], h["Kp"]) == (K, N, kp(K)), isa
        assert (h["group"], h["ngroups"]) == (G, ng(K)), isa
        nr, kg, elt, Np, Kp, g = h["nr"], h["kgroup"], h["elt"], h["Np"], h["Kp"], ng(K)
        assert Np % nr == 0 and N <= Np < N + nr and p.data.ctypes.data % 64 == 0
        d = p.data
        # w_scale then colsum, Np x ngroups each, 0 past N: panel by panel, in a panel group
        # by group, w_scale[n, g] at float (p ngroups + g) nr + j for n = nr p + j
        def by_column(region):
            return region.reshape(Np // nr, g, nr).transpose(0, 2, 1).reshape(Np, g)
        ws = by_column(d[64:64 + 4 * g * Np].view(np.float32))
        assert np.array_equal(ws[:N], w_scale) and not ws[N:].any(), isa
        cs = by_column(d[64 + 4 * g * Np:64 + 8 * g * Np].view(np.int32))
        assert np.array_equal(cs[:N], np_colsum(w)) and not cs[N:].any(), isa
        off = 64 + (8 * g * Np + 63) // 64 * 64
        wp = np.zeros((Np, Kp), np.int64)
        wp[:N, :K] = w
        if h["layout"] == I8MM_LAYOUT:  # arm/i8mm/qgemm.c: octets by column pairs
            want = i8mm_panels(wp, nr)
        else:  # weights[((p G + g) nr + j) kgroup + r] = w[nr p + j, kgroup g + r]
            want = wp.reshape(Np // nr, nr, Kp // kg, kg).transpose(0, 2, 1, 3).reshape(-1)
        got = d[off:].view(np.int8 if elt == 1 else np.int16)
        assert got.size == want.size and np.array_equal(got, want), isa
        assert p.nbytes == off + Np * Kp * elt


def test_other_tables_packing_rejected():
    usable = [i for i in ("ref",) + INT8_LEVELS if i in _kernels.usable_isas()]
    if len(usable) < 2:
        pytest.skip("int8: only the reference level is usable here")
    M, K, N = 3, 17, 33
    x, q, scale, zp, w, w_scale, bias, res, acc, out = ref_case(M, K, N)
    tables = {i: _kernels.Kernels(i) for i in usable}
    packs = {i: t.qpack(w, w_scale) for i, t in tables.items()}
    o, a = np.empty((M, N), np.float32), np.empty((M, N), np.int32)
    for i, t in tables.items():
        for j, p in packs.items():
            same = t.names["qs8_pack"] == tables[j].names["qs8_pack"]
            if same:  # the same kernel (e.g. avx512 carries avx2's): accepted, same result
                t.qgemm(q, scale, zp, p, bias, o)
                t.qgemm_i32(q, p, a)
                assert np.array_equal(a, acc)
                continue
            with pytest.raises(ValueError, match="packed by another kernel table"):
                t.qgemm(q, scale, zp, p, bias, o)
            with pytest.raises(ValueError, match="packed by another kernel table"):
                t.qgemm_i32(q, p, a)


# ---------------------------------------------------------------------------------------
# arguments
# ---------------------------------------------------------------------------------------

def test_bad_arguments():
    k = _kernels.Kernels(_kernels.usable_isas()[-1])
    M, K, N = 3, 17, 33
    x, q, scale, zp, w, w_scale, bias, res, acc, out = ref_case(M, K, N)
    p = k.qpack(w, w_scale)
    o = np.empty((M, N), np.float32)
    with pytest.raises(ValueError, match=r"w_s8.*-127, 127"):
        k.qpack(np.full((2, 3), -128, np.int8), np.ones((2, 1), np.float32))
    with pytest.raises(ValueError, match=r"w_scale.*\(33, 1\)"):
        k.qpack(w, np.ones(33, np.float32))
    with pytest.raises(ValueError, match=r"scale.*\(3, 1\)"):
        k.qgemm(q, scale.reshape(-1), zp, p, bias, o)
    with pytest.raises(ValueError, match=r"zp.*\(3, 1\)"):
        k.quantize(x, q.copy(), scale.copy(), np.empty(3, np.int32))
    with pytest.raises(ValueError, match=r"w_s8.*int8"):
        k.qpack(w.astype(np.int16), w_scale)
    with pytest.raises(ValueError, match=r"q.*\(3, 20\).*\(3, 17\)"):
        k.qgemm(np.ascontiguousarray(q[:, :17]), scale, zp, p, bias, o)
    with pytest.raises(ValueError, match=r"zp.*int32"):
        k.qgemm(q, scale, zp.astype(np.int64), p, bias, o)
    with pytest.raises(ValueError, match=r"out.*\(3, 33\).*\(3, 32\)"):
        k.qgemm(q, scale, zp, p, bias, np.empty((3, 32), np.float32))
    with pytest.raises(ValueError, match="res"):
        k.qgemm(q, scale, zp, p, bias, o, "residual")
    with pytest.raises(ValueError, match="epilogue"):
        k.qgemm(q, scale, zp, p, bias, o, "relu")
    with pytest.raises(ValueError, match="int8 Packed"):
        k.qgemm(q, scale, zp, w, bias, o)
    with pytest.raises(ValueError, match=r"acc.*int32"):
        k.qgemm_i32(q, p, np.empty((M, N), np.int64))
    with pytest.raises(ValueError, match=r"q.*\(3, 20\)"):
        k.quantize(x, np.empty((3, 17), np.uint8), scale.copy(), zp.copy())
    with pytest.raises(ValueError, match="threads"):
        k.quantize(x, q.copy(), scale.copy(), zp.copy(), threads=0)
    assert k.dot_loop(1000) > 0 and _kernels.q8_row_bytes(17) == 20


@pytest.mark.parametrize("isa", ("ref",) + tuple(INT8_LEVELS))
def test_qpack_into_a_given_buffer(isa):
    """qpack(out=) (the loader's arena) gives the bytes qpack() gives in fresh memory, and
    refuses a buffer of the wrong size or alignment."""
    k = level(isa)
    rng = np.random.default_rng(6)
    w = rng.integers(-127, 128, size=(49, 65), dtype=np.int8)
    s = rng.uniform(0.01, 1, size=(49, ng(65))).astype(np.float32)
    n = k.qpacked_bytes(65, 49)
    buf = np.full(n + 128, 0xAB, dtype=np.uint8)
    at = (-buf.ctypes.data) % 64
    p = k.qpack(w, s, out=buf[at:at + n])
    np.testing.assert_array_equal(p.data, k.qpack(w, s).data)
    assert np.all(buf[at + n:] == 0xAB) and np.all(buf[:at] == 0xAB)
    for bad in (buf[at:at + n - 1], buf[at + 4:at + n + 4]):
        with pytest.raises(ValueError, match="out"):
            k.qpack(w, s, out=bad)


@pytest.mark.parametrize("isa", ("ref",) + tuple(INT8_LEVELS))
@pytest.mark.parametrize("M,K,N,epilogue", [(1, 7, 17, "bias"), (17, 385, 49, "gelu"),
                                            (33, 384, 1152, "residual"), (9, 1537, 7, "bias")])
def test_qlinear_is_quantize_then_qgemm(isa, M, K, N, epilogue):
    """qlinear (the forward pass's int8 Linear) gives the bits of quantize + qgemm, and
    leaves the quantised x in the flat workspace buffers."""
    k = level(isa)
    rng = np.random.default_rng(M * 7 + K)
    x = rng.standard_normal((M, K)).astype(np.float32)
    w = rng.integers(-127, 128, size=(N, K), dtype=np.int8)
    s = rng.uniform(0.001, 0.01, size=(N, ng(K))).astype(np.float32)
    b = rng.standard_normal(N).astype(np.float32)
    res = rng.standard_normal((M, N)).astype(np.float32) if epilogue == "residual" else None
    p = k.qpack(w, s)
    q, sc, zp = (np.empty((M, kp(K)), np.uint8), np.empty((M, ng(K)), np.float32),
                 np.empty((M, ng(K)), np.int32))
    k.quantize(x, q, sc, zp, threads=2)
    want = k.qgemm(q, sc, zp, p, b, np.empty((M, N), np.float32), epilogue, res=res)
    fq = np.zeros(M * kp(K) + 5, np.uint8)
    fs, fz = np.zeros(M * ng(K) + 3, np.float32), np.zeros(M * ng(K) + 3, np.int32)
    out = np.full((M, N), F_SENT, np.float32)
    k.qlinear(x, p, b, out, fq, fs, fz, epilogue, res=res, threads=2)
    np.testing.assert_array_equal(out, want)
    np.testing.assert_array_equal(fq[:M * kp(K)].reshape(M, -1), q)
    np.testing.assert_array_equal(fs[:M * ng(K)].reshape(M, -1), sc)
    np.testing.assert_array_equal(fz[:M * ng(K)].reshape(M, -1), zp)


def test_qlinear_bad_arguments():
    k = _kernels.Kernels("ref")
    p = k.qpack(np.ones((5, 9), np.int8), np.ones((5, 1), np.float32))
    x, b, out = np.ones((3, 9), np.float32), np.zeros(5, np.float32), np.empty((3, 5), np.float32)
    q, s, z = np.empty(36, np.uint8), np.empty(3, np.float32), np.empty(3, np.int32)
    k.qlinear(x, p, b, out, q, s, z)
    with pytest.raises(ValueError, match="q: expected a flat uint8 array of at least 36"):
        k.qlinear(x, p, b, out, q[:35], s, z)
    with pytest.raises(ValueError, match="zp"):
        k.qlinear(x, p, b, out, q, s, z.astype(np.int64))
    with pytest.raises(ValueError, match="x"):
        k.qlinear(np.ones((3, 8), np.float32), p, b, out, q, s, z)
    with pytest.raises(ValueError, match="packed"):
        k.qlinear(x, "w", b, out, q, s, z)
    with pytest.raises(ValueError, match="res"):
        k.qlinear(x, p, b, out, q, s, z, "residual")
    with pytest.raises(ValueError, match="x: expected a float32 array of shape"):
        k.qlinear(np.ones(9, np.float32), p, b, out, q, s, z)
    with pytest.raises(ValueError, match="not C-contiguous"):
        k.qlinear(np.ones((3, 18), np.float32)[:, ::2], p, b, out, q, s, z)
    ro = np.empty((3, 5), np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="out: the output array is read-only"):
        k.qlinear(x, p, b, ro, q, s, z)
    with pytest.raises(ValueError, match="q: must not overlap"):  # q inside out's bytes
        k.qlinear(x, p, b, out, out.reshape(-1).view(np.uint8), s, z)
    short = _kernels.Packed(p.data[:32], p.K, p.N, p.isa, "int8")
    with pytest.raises(ValueError, match="packed: too short"):
        k.qlinear(x, short, b, out, q, s, z)


def test_qgemm_quantize_softmax_bad_arguments():
    """The unfused int8 calls and softmax name the argument that is wrong, and how."""
    k = _kernels.Kernels("ref")
    p = k.qpack(np.ones((5, 9), np.int8), np.ones((5, 1), np.float32))
    x, b = np.ones((3, 9), np.float32), np.zeros(5, np.float32)
    q, s, z = np.empty((3, 12), np.uint8), np.empty((3, 1), np.float32), np.empty((3, 1), np.int32)
    k.quantize(x, q, s, z)
    out, acc = np.empty((3, 5), np.float32), np.empty((3, 5), np.int32)
    k.qgemm(q, s, z, p, b, out)
    k.qgemm_i32(q, p, acc)
    ro = q.copy()
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="q: the output array is read-only"):
        k.quantize(x, ro, s, z)
    with pytest.raises(ValueError, match=r"zp: .*int32"):
        k.quantize(x, q, s, z.astype(np.int64))
    with pytest.raises(ValueError, match=r"scale: .*\(3, 1\)"):
        k.qgemm(q, np.empty((3, 2), np.float32), z, p, b, out)
    with pytest.raises(ValueError, match=r"q: .*\(3, 12\).*not C-contiguous"):
        k.qgemm(np.empty((3, 24), np.uint8)[:, ::2], s, z, p, b, out)
    shared = np.zeros((3, 5), np.float32)  # q's bytes inside out's
    with pytest.raises(ValueError, match="out: must not overlap q"):
        k.qgemm(shared.reshape(-1).view(np.uint8)[:36].reshape(3, 12), s, z, p, b, shared)
    shared_acc = np.zeros((3, 5), np.int32)
    with pytest.raises(ValueError, match="acc: must not overlap q"):
        k.qgemm_i32(shared_acc.reshape(-1).view(np.uint8)[:36].reshape(3, 12), p, shared_acc)
    ro_acc = acc.copy()
    ro_acc.flags.writeable = False
    with pytest.raises(ValueError, match="acc: the output array is read-only"):
        k.qgemm_i32(q, p, ro_acc)
    short = _kernels.Packed(p.data[:32], p.K, p.N, p.isa, "int8")
    for call in (lambda: k.qgemm(q, s, z, short, b, out), lambda: k.qgemm_i32(q, short, acc)):
        with pytest.raises(ValueError, match="packed: too short"):
            call()
    with pytest.raises(ValueError, match="x: the output array is read-only"):
        k.softmax(np.frombuffer(bytes(48), np.float32).reshape(3, 4))
    with pytest.raises(ValueError, match=r"x: .*float32"):
        k.softmax(np.ones((3, 4), np.float64))


def test_quantize_special_values_in_whole_groups():
    """The same special values in whole 64-wide groups (the SIMD quantisers' packed path):
    NaN, +-inf, a tiny range (inv overflows to inf), halfway cases, both zero-point ends."""
    rng = np.random.default_rng(11)
    rows = [rng.standard_normal(128).astype(np.float32) for _ in range(9)]
    rows[0][3], rows[0][70] = np.nan, np.nan
    rows[1][5] = np.inf
    rows[2][0], rows[2][99] = -np.inf, np.inf
    rows[3][:] = 0
    rows[3][10], rows[3][20] = 1e-45, -1e-45  # subnormal range: 255 / range is inf
    rows[4][:64] = np.arange(64) * 4.0 + 0.5  # halfway cases after scaling
    rows[5] = np.abs(rows[5])  # zp 0
    rows[6] = -np.abs(rows[6])  # zp 255
    rows[7][:] = 3.0  # flat positive group: mx = 3, mn = 0
    rows[8][:] = np.nan
    x = np.stack(rows)
    q, scale, zp = np_quantize(x)
    every_level_quantizes(x, q, scale, zp, threads=2)
