"""The int8 kernels: activation quantiser, weight packing, u8 x s8 GEMM (csrc/ref/qgemm.c and
csrc/x86/<isa>/qgemm.c).

  - the reference against numpy: the quantiser against a transcription of the exact scheme
    of csrc/bge.h (bit for bit), the int32 sums against an int64 matmul, the fp32 epilogue
    against the same float32 operations in numpy;
  - every int8 level the host has (avx2, avxvnni, avx512 which carries the level below's
    int8 kernels, vnni; a level the host can't run is skipped, saying so) against the
    reference EXACTLY: quantised bytes, scales and zero points, int32 sums, and the fp32
    outputs of the bias and residual epilogues. GELU: the SIMD levels use their vector GELU
    (x86/<isa>/vmath.h, within 1.5e-7 |v| of the reference's scalar one), so there the
    bound holds, and the SIMD levels agree with each other bit for bit;
  - odd shapes (K not a multiple of 4 included), zero points at both ends, weights at -127
    and 127, sums near the int32 limit; outputs sentinel-filled with a guard region after
    them that must stay untouched;
  - thread-count and batch invariance, bit for bit; the documented packed layout; another
    table's packing rejected; bad arguments raise ValueError.
"""

from __future__ import annotations

import functools
import math
import re

import numpy as np
import pytest

from bge_engine import _kernels

REF = _kernels.Kernels("ref")
INT8_LEVELS = ("avx2", "avxvnni", "avx512", "vnni")
GUARD = 67
F_SENT = np.float32(-7.25e30)
I_SENT = np.int32(-0x5A5A5A5A)
U_SENT = np.uint8(0xA5)
GELU_BOUND = 1.5e-7  # BGE_VMATH_GELU_BOUND, x86/avx2/vmath.h and x86/avx512/vmath.h
HEADER = ("magic", "layout", "K", "N", "Kp", "Np", "nr", "kgroup", "elt")

Ms = [1, 2, 3, 7, 15, 16, 17, 31, 33, 63, 64, 65, 127, 129]
Ks = [1, 3, 4, 5, 7, 17, 383, 384, 385, 1536, 1537]
Ns = [1, 7, 16, 17, 31, 33, 383, 384, 385, 1152, 1536, 1537]


def _covering_shapes():
    """Every M, K and N at least twice in varied combinations (strides coprime with the list
    lengths), capped in work, plus the model's shapes with tails in M."""
    shapes = set()
    for i in range(42):
        M, K, N = Ms[i % len(Ms)], Ks[(3 * i + 1) % len(Ks)], Ns[(5 * i + 2) % len(Ns)]
        while M * K * N > 40e6 and M > 1:
            M = Ms[Ms.index(M) - 1]
        shapes.add((M, K, N))
    shapes |= {(17, 384, 1152), (65, 384, 384), (33, 384, 1536), (15, 1536, 384),
               (129, 5, 7), (1, 1537, 1537), (2, 1, 1), (3, 3, 17)}
    return sorted(shapes)


SHAPES = _covering_shapes()


def level(isa):
    if isa not in _kernels.usable_isas():
        pytest.skip(f"int8 {isa}: this host/build can't run {isa} "
                    f"(usable: {_kernels.usable_isas()}, built: {_kernels.built_isas()})")
    return _kernels.Kernels(isa)


@pytest.fixture(params=INT8_LEVELS)
def kern(request):
    return level(request.param)


def kp(K):
    return (K + 3) // 4 * 4


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
    """x (M, K) float32 -> q (M, Kp) uint8, scale (M,) float32, zp (M,) int32."""
    M, K = x.shape
    q = np.zeros((M, kp(K)), np.uint8)
    scale = np.ones(M, np.float32)
    zp = np.zeros(M, np.int32)
    f0 = np.float32(0)
    with np.errstate(all="ignore"):
        for m in range(M):
            row = x[m]
            mn = np.fmin(f0, np.fmin.reduce(row))  # fmin skips NaN, as minps(x, acc) does
            mx = np.fmax(f0, np.fmax.reduce(row))
            if mx == mn:
                continue
            rng = np.float32(mx - mn)
            scale[m] = rng / np.float32(255.0)
            inv = np.float32(np.float32(255.0) / rng)
            zp[m] = np.clip(np_cvt(np.array([-mn * inv], np.float32))[0], 0, 255)
            q[m, :K] = np.clip(np_cvt(row * inv) + zp[m], 0, 255).astype(np.uint8)
            q[m, K:] = zp[m]
    return q, scale, zp


def np_epilogue(acc, scale, zp, w_scale, colsum, bias, res=None):
    """The fp32 epilogue (bias, or bias + residual) of the scheme, op for op in float32."""
    d = (acc.astype(np.int64) - zp[:, None].astype(np.int64) * colsum[None, :]).astype(np.int32)
    v = d.astype(np.float32) * (scale[:, None] * w_scale[None, :])
    v = v + bias[None, :]
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
    huge, and one with exact halfway cases."""
    x = rng.standard_normal((M, K), dtype=np.float32)
    kinds = rng.integers(0, 8, M)
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
    if M >= 3:
        x[M - 1] = 0.0
    return x


def weights(N, K, rng):
    w = rng.integers(-127, 128, (N, K)).astype(np.int8)
    w[0] = 127
    if N > 1:
        w[N - 1] = -127
    w_scale = (rng.random(N, dtype=np.float32) + np.float32(0.5)) * np.float32(0.01)
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
    q, scale, zp = (np.empty((M, kp(K)), np.uint8), np.empty(M, np.float32),
                    np.empty(M, np.int32))
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

@pytest.mark.parametrize("M,K", [(1, 1), (3, 3), (7, 4), (17, 5), (33, 383), (65, 1537)])
def test_ref_quantize_is_the_scheme(M, K):
    x = activations(M, K, np.random.default_rng(M + 31 * K))
    q, scale, zp = np_quantize(x)
    bq, gq = guarded((M, kp(K)), np.uint8, U_SENT)
    s, z = np.empty(M, np.float32), np.empty(M, np.int32)
    REF.quantize(x, gq, s, z, threads=2)
    assert np.array_equal(gq, q) and np.array_equal(s.view(np.int32), scale.view(np.int32))
    assert np.array_equal(z, zp)
    assert_guard(bq, gq.size, "ref quantize")


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
    assert list(q[0, :7]) == [0, 255, 0, 2, 2, 4, 254] and zp[0] == 0 and scale[0] == 1
    assert zp[1] == 0 and q[1, 6] == 255 and zp[2] == 255 and q[2, 6] == 0
    assert zp[3] == 0 and scale[3] == 1 and not q[3].any() and q[0, 7] == zp[0]
    for isa in ("ref",) + INT8_LEVELS:
        if isa not in _kernels.usable_isas():
            continue
        k = _kernels.Kernels(isa)
        got = np.empty_like(q), np.empty_like(scale), np.empty_like(zp)
        k.quantize(x, *got)
        assert np.array_equal(got[0], q), isa
        assert np.array_equal(got[1].view(np.int32), scale.view(np.int32)), isa
        assert np.array_equal(got[2], zp), isa


@pytest.mark.parametrize("M,K,N", [(1, 1, 1), (2, 3, 7), (7, 5, 16), (17, 383, 33),
                                   (33, 384, 385), (3, 1537, 1537), (65, 385, 1152)])
def test_ref_gemm_is_the_scheme(M, K, N):
    x, q, scale, zp, w, w_scale, bias, res, acc, out = ref_case(M, K, N)
    assert np.array_equal(acc, q[:, :K].astype(np.int64) @ w.T.astype(np.int64))
    colsum = w.astype(np.int64).sum(axis=1)
    assert np.array_equal(out["bias"], np_epilogue(acc, scale, zp, w_scale, colsum, bias))
    assert np.array_equal(out["residual"],
                          np_epilogue(acc, scale, zp, w_scale, colsum, bias, res))
    v = out["bias"]
    assert np.all(np.abs(out["gelu"] - gelu64(v)) <= 2e-7 * np.abs(v) + 1e-37)
    # and the scheme approximates the fp32 product (per-row error <= K * step_x * |w|)
    deq = (q[:, :K].astype(np.float64) - zp[:, None]) * scale[:, None]
    exact = deq @ (w.astype(np.float64) * w_scale[:, None]).T + bias
    assert np.allclose(out["bias"], exact, rtol=1e-5, atol=1e-5 * (1 + np.abs(exact).max()))


def test_ref_gemm_near_int32_limit():
    K = _kernels.Q8_MAX_K
    q = np.full((2, kp(K)), 255, np.uint8)
    w = np.full((3, K), 127, np.int8)
    w[1] = -127
    for isa in ("ref",) + INT8_LEVELS:
        if isa not in _kernels.usable_isas():
            continue
        k = _kernels.Kernels(isa)
        acc = np.empty((2, 3), np.int32)
        k.qgemm_i32(q, k.qpack(w, np.ones(3, np.float32)), acc)
        assert np.array_equal(acc, np.array([[1, -1, 1]] * 2) * (255 * 127 * K)), isa


# ---------------------------------------------------------------------------------------
# every int8 level against the reference, exactly
# ---------------------------------------------------------------------------------------

def test_names(kern):
    n = kern.names
    home = {"avx2": "avx2", "avxvnni": "avxvnni", "vnni": "avx512vnni",
            "avx512": r"(avx2|avxvnni)"}[kern.isa]
    assert re.fullmatch(rf"bge_qu8s8_gemm_\d+x\d+__{home}", n["qu8s8_gemm"]), n
    tile = n["qu8s8_gemm"][len("bge_qu8s8_gemm"):]
    assert n["qs8_pack"] == "bge_qs8_pack" + tile and n["qu8s8_gemm_i32"] == "bge_qu8s8_gemm_i32" + tile
    assert re.fullmatch(r"bge_qu8_quantize__(avx2|avx512vnni)", n["qu8_quantize"]), n


@pytest.mark.parametrize("M,K", [(1, 1), (2, 3), (3, 4), (7, 5), (15, 7), (16, 17), (17, 383),
                                 (31, 384), (33, 385), (63, 1536), (129, 1537)])
def test_quantize_against_ref(kern, M, K):
    x = activations(M, K, np.random.default_rng(7 * M + K))
    want = [np.empty((M, kp(K)), np.uint8), np.empty(M, np.float32), np.empty(M, np.int32)]
    REF.quantize(x, *want)
    bq, q = guarded((M, kp(K)), np.uint8, U_SENT)
    bs, s = guarded((M,), np.float32, F_SENT)
    bz, z = guarded((M,), np.int32, I_SENT)
    kern.quantize(x, q, s, z, threads=1)
    assert np.array_equal(q, want[0]), f"{kern.isa} quantize bytes differ (M={M}, K={K})"
    assert np.array_equal(s.view(np.int32), want[1].view(np.int32))
    assert np.array_equal(z, want[2])
    for b, n in ((bq, q.size), (bs, M), (bz, M)):
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
        qs, ss, zs = (np.empty((hi - lo, kp(K)), np.uint8), np.empty(hi - lo, np.float32),
                      np.empty(hi - lo, np.int32))
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
    return dict(zip(HEADER, packed.data[:36].view(np.int32).tolist()))


@pytest.mark.parametrize("K,N", [(1, 1), (5, 17), (385, 49), (384, 1152)])
def test_packed_layout(K, N):
    """The layout documented in ref/qgemm.c, for every level the host has."""
    rng = np.random.default_rng(K + N)
    w, w_scale = weights(N, K, rng)
    for isa in ("ref",) + INT8_LEVELS:
        if isa not in _kernels.usable_isas():
            continue
        k = _kernels.Kernels(isa)
        p = k.qpack(w, w_scale)
        h = header(p)
        assert h["magic"] == 0x38514742 and (h["K"], h["N"], h["Kp"]) == (K, N, kp(K)), isa
        nr, kg, elt, Np, Kp = h["nr"], h["kgroup"], h["elt"], h["Np"], h["Kp"]
        assert Np % nr == 0 and N <= Np < N + nr and p.data.ctypes.data % 64 == 0
        d = p.data
        assert np.array_equal(d[64:64 + 4 * N].view(np.float32), w_scale)
        assert not d[64 + 4 * N:64 + 4 * Np].any()
        cs = d[64 + 4 * Np:64 + 8 * Np].view(np.int32)
        assert np.array_equal(cs[:N], w.astype(np.int64).sum(axis=1)) and not cs[N:].any()
        off = 64 + (8 * Np + 63) // 64 * 64
        wp = np.zeros((Np, Kp), np.int64)
        wp[:N, :K] = w
        # weights[((p G + g) nr + j) kgroup + r] = w[nr p + j, kgroup g + r]
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
        k.qpack(np.full((2, 3), -128, np.int8), np.ones(2, np.float32))
    with pytest.raises(ValueError, match=r"w_scale.*\(33,\)"):
        k.qpack(w, np.ones(32, np.float32))
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
    with pytest.raises(ValueError, match="PackedQ8"):
        k.qgemm(q, scale, zp, w, bias, o)
    with pytest.raises(ValueError, match=r"acc.*int32"):
        k.qgemm_i32(q, p, np.empty((M, N), np.int64))
    with pytest.raises(ValueError, match=r"q.*\(3, 20\)"):
        k.quantize(x, np.empty((3, 17), np.uint8), scale.copy(), zp.copy())
    with pytest.raises(ValueError, match="threads"):
        k.quantize(x, q.copy(), scale.copy(), zp.copy(), threads=0)
    assert k.dot_loop(1000) > 0 and _kernels.q8_row_bytes(17) == 20
