"""The bf16 GEMM (csrc/bge.h, the bf16 scheme): the conversion, the reference against an
exact rational model of the scheme, every SIMD level against the reference bit for bit.

  - bf16(): the C definition against an independent numpy one, on every float class;
  - the reference (csrc/ref/bgemm.c) against the scheme computed with exact fractions (each
    step's sum rounded once to nearest even, then flushed), on small shapes of adversarial
    values: ties, cancellation, products and sums in the denormal range;
  - each SIMD level (avx2, avx512 and ARM's neon emulate; avx512bf16 is vdpbf16ps) against
    the reference on the odd shapes of DESIGN.md section 5, outputs pre-filled with a
    sentinel and a guard after them: the bias and residual epilogues equal bit for bit,
    GELU within the vector GELU's bound; the same on adversarial data (tiny values, so
    that sums flush to zero, and mixed scales), where the emulations rely on MXCSR.FTZ
    (neon: FPCR.FZ, checked by FPSR.UFC); a sum that rounds up to FLT_MIN is kept;
  - ARM's neonbf16 (BFDOT: the pair summed first, rounded to odd) and x86's amx
    (tdpbf16ps: the even k of a pair first) within the bound of bge.h derived from K, on
    the same shapes and data, and each instruction's documented step on inputs where it
    differs from the reference;
  - the packed layout of bge_internal.h, byte for byte;
  - batch and thread invariance bit for bit; res aliasing out; bad arguments.
A level the host can't run is skipped, never passed silently.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from bge_engine import _kernels
from kernel_cases import covering_shapes, level

SIMD = ("avx2", "avx512", "avx512bf16", "neon")  # the reference's bits
# within bge.h's bound of the reference: BFDOT's own rounding; tdpbf16ps's pair order
BOUNDED = ("neonbf16", "amx")
REF = _kernels.Kernels("ref")
SENTINEL = np.float32(-7.25e30)
GUARD = 67
EPILOGUES = ("bias", "gelu", "residual")

Ms = [1, 2, 3, 7, 15, 16, 17, 31, 33, 63, 64, 65, 127, 129]
Ks = [1, 2, 3, 7, 17, 383, 384, 385, 1536, 1537]
Ns = [1, 7, 15, 16, 17, 31, 33, 63, 64, 65, 383, 384, 385, 1152, 1536, 1537]


SHAPES = covering_shapes(Ms, Ks, Ns, 48, 25e6, [
    (17, 384, 1152), (33, 384, 1536), (15, 1536, 384), (129, 385, 7), (1, 1537, 1537),
    (2, 1, 1), (3, 7, 17), (129, 127, 129)])


@pytest.fixture(params=SIMD)
def kern(request):
    """A level that gives the reference's bits."""
    return level(request.param, "bgemm")


@pytest.fixture(params=BOUNDED)
def bkern(request):
    """A level within bge.h's bound of the reference."""
    return level(request.param, "bgemm")


@pytest.fixture(params=SIMD + BOUNDED)
def anykern(request):
    """Every SIMD level: for what holds on all of them (invariance, aliasing, names)."""
    return level(request.param, "bgemm")


def bits(a):
    return np.ascontiguousarray(a).view(np.int32)


def guarded(shape):
    """An output array filled with the sentinel, followed in memory by a guard region."""
    n = int(np.prod(shape))
    buf = np.full(n + GUARD, SENTINEL, dtype=np.float32)
    return buf, buf[:n].reshape(shape)


def data(M, K, N, seed, kind="normal"):
    """x (M, K), w (N, K), bias (N), res (M, N): "normal" values as in the model;
    "tiny": products near 2^-126, so that sums cross the denormal range and flush;
    "mixed": magnitudes spread over 2^-40 .. 2^40, with cancelling pairs."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((M, K), dtype=np.float32)
    w = rng.standard_normal((N, K), dtype=np.float32) / np.float32(math.sqrt(K))
    b = rng.standard_normal(N, dtype=np.float32)
    res = rng.standard_normal((M, N), dtype=np.float32)
    if kind == "tiny":
        x = (x * np.float32(2.0**-60)).astype(np.float32)
        w = (w * np.float32(2.0**-64)).astype(np.float32)
        b = np.zeros(N, np.float32)
        res = (res * np.float32(2.0**-120)).astype(np.float32)
    elif kind == "mixed":
        x = (x * np.exp2(rng.integers(-40, 41, (M, K)))).astype(np.float32)
        w = (w * np.exp2(rng.integers(-40, 41, (N, K)))).astype(np.float32)
        if K >= 2:
            w[:, 1::2] = -w[:, 0:K - K % 2:2][:, :w[:, 1::2].shape[1]]
    return x, w, b, res


def gelu64(v):
    v = np.asarray(v, np.float64)
    return 0.5 * v * (1.0 + np.vectorize(math.erf)(v / math.sqrt(2.0)))


def run(kern, x, packed, b, epilogue, res, threads=1):
    out = np.full((x.shape[0], b.shape[0]), SENTINEL, np.float32)
    kern.bgemm(x, packed, b, out, epilogue, res=res, threads=threads)
    return out


# ---------------------------------------------------------------------------------------
# bf16(): the conversion
# ---------------------------------------------------------------------------------------

def bf16_numpy(x):
    """bf16() of bge.h written again in numpy: denormals to +-0, NaN quiet, else RNE."""
    u = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    u = np.where((u & 0x7F800000) == 0, u & 0x80000000, u)
    nan = (u & 0x7FFFFFFF) > 0x7F800000
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) & 0xFFFF
    return np.where(nan, (u >> 16) | 0x40, r).astype(np.uint16)


def test_bf16_bits_every_class():
    rng = np.random.default_rng(1)
    u = rng.integers(0, 2**32, 200_000, dtype=np.uint64).astype(np.uint32)
    u[:1000] &= 0x807FFFFF  # denormals and zeros
    u[1000:2000] |= 0x7F800000  # NaN and infinity
    u[2000:3000] = (u[2000:3000] & 0xFFFF0000) | 0x8000  # exact ties
    u[3000:3100] = 0x7F7FFFFF  # FLT_MAX: rounds to infinity
    x = u.view(np.float32)
    np.testing.assert_array_equal(_kernels.bf16_bits(x), bf16_numpy(x))
    special = np.array([0.0, -0.0, 1.0, -2.5, np.inf, -np.inf, 1e-40, -1e-40,
                        float.fromhex("0x1.01p0"), float.fromhex("0x1.03p0")], np.float32)  # ties
    want = [0x0000, 0x8000, 0x3F80, 0xC020, 0x7F80, 0xFF80, 0x0000, 0x8000, 0x3F80, 0x3F82]
    assert _kernels.bf16_bits(special).tolist() == want


# ---------------------------------------------------------------------------------------
# The reference against the scheme in exact arithmetic
# ---------------------------------------------------------------------------------------

TWO = Fraction(2)
F32_MIN = TWO**-126


def round_f32(q: Fraction, zero_sign: float) -> float:
    """q rounded once to the nearest fp32 (ties to even; denormal spacing below 2^-126;
    infinity past the largest), then a denormal result flushed to the zero of its sign
    (a zero sum takes zero_sign)."""
    if q == 0:
        return math.copysign(0.0, zero_sign)
    s, a = (1.0 if q > 0 else -1.0), abs(q)
    e = a.numerator.bit_length() - a.denominator.bit_length()
    if TWO**e > a:
        e -= 1
    ulp = TWO**(max(e, -126) - 23)
    r = round(a / ulp) * ulp  # Fraction rounds half to even
    if r >= TWO**128:
        return s * math.inf
    if r < F32_MIN:
        return math.copysign(0.0, s)
    return s * float(r)


def scheme_exact(x, w):
    """acc (M, N) of the scheme of bge.h for an even K, each step exact, then rounded and
    flushed."""
    xb = _kernels.bf16_bits(x).astype(np.uint32) << 16
    wb = _kernels.bf16_bits(w).astype(np.uint32) << 16
    xv, wv = xb.view(np.float32).astype(np.float64), wb.view(np.float32).astype(np.float64)
    M, K = x.shape
    N = w.shape[0]
    order = [k for g in range(0, K, 2) for k in (g + 1, g)]  # the odd k of a pair first
    out = np.zeros((M, N), np.float32)
    for m in range(M):
        for n in range(N):
            acc = 0.0
            for k in order:
                p = xv[m, k] * wv[n, k]  # exact in float64: 8 + 8 significant bits
                # a zero sum takes the sign IEEE addition gives it (float64 does the same)
                acc = round_f32(Fraction(acc) + Fraction(p), p + acc)
            out[m, n] = acc
    return out


def scheme_exact_ordered(x, w):
    """As scheme_exact, with the last pair of an odd K in the instruction's order: the pad
    (odd member, x = w = 0) first, then k = K - 1."""
    M, K = x.shape
    if K % 2 == 0:
        return scheme_exact(x, w)
    xp = np.concatenate([x, np.zeros((M, 1), np.float32)], axis=1)
    wp = np.concatenate([w, np.zeros((w.shape[0], 1), np.float32)], axis=1)
    return scheme_exact(xp, wp)


@pytest.mark.parametrize("kind,seed", [("normal", 1), ("normal", 2), ("tiny", 3), ("tiny", 4),
                                       ("mixed", 5), ("mixed", 6)])
@pytest.mark.parametrize("M,K,N", [(1, 1, 1), (2, 7, 3), (3, 16, 5), (2, 33, 4)])
def test_reference_is_the_scheme(M, K, N, kind, seed):
    x, w, _b, _res = data(M, K, N, seed * 1000 + K, kind)
    if kind == "normal":  # ties and cancellation: pairs whose products cancel or halve an ulp
        x[:, :2] = [1.0, 1.0] if K >= 2 else x[:, :2]
        w[:, 0] = 1.0
        if K >= 2:
            w[:, 1] = float.fromhex("0x1p-8")
    zero = np.zeros(N, np.float32)
    got = np.empty((M, N), np.float32)
    REF.bgemm(x, REF.bpack(w), zero, got)
    want = scheme_exact_ordered(x, w) + zero  # the epilogue's + bias (-0 + 0 = +0)
    np.testing.assert_array_equal(bits(got), bits(want))


def test_reference_order_and_flush():
    """Inputs where the other readings of the instruction give other bits (each was
    measured on Zen 4 to disagree with vdpbf16ps): the odd k first, each step rounded."""
    one, half_ulp = 1.0, float.fromhex("0x1p-24")
    zero = np.zeros(1, np.float32)
    out = np.empty((1, 1), np.float32)
    # acc = 1 (from pair 0), then pair 1: odd k adds 2^-24 (a tie: stays 1), even k too;
    # summing the pair first would give 1 + 2^-23
    x = np.array([[one, 0.0, half_ulp, half_ulp]], np.float32)
    w = np.array([[one, 0.0, one, one]], np.float32)
    REF.bgemm(x, REF.bpack(w), zero, out)
    assert out[0, 0] == 1.0
    # odd k first: 1 + 2^-24 -> 1, then - 1 -> 0; the even k first would leave 2^-24
    x = np.array([[one, 0.0, -one, half_ulp]], np.float32)
    REF.bgemm(x, REF.bpack(w), zero, out)
    assert bits(out)[0, 0] == 0
    # a sum in the denormal range flushes to zero: 2^-100 * 2^-30 = 2^-130
    x = np.array([[float.fromhex("0x1p-100"), 0.0]], np.float32)
    w = np.array([[float.fromhex("0x1p-30"), 0.0]], np.float32)
    REF.bgemm(x, REF.bpack(w), zero, out)
    assert bits(out)[0, 0] == 0


# ---------------------------------------------------------------------------------------
# Every SIMD level against the reference
# ---------------------------------------------------------------------------------------

_REF_CACHE: dict = {}


def ref_bias(x, w, b, key):
    """The reference's bias epilogue (cached per data set: every level compares with it)."""
    if key not in _REF_CACHE:
        out = np.empty((x.shape[0], w.shape[0]), np.float32)
        REF.bgemm(x, REF.bpack(w), b, out, "bias")
        _REF_CACHE[key] = out
    return _REF_CACHE[key]


def check_against_ref(kern, x, w, b, res, key):
    M, N = x.shape[0], w.shape[0]
    packed = kern.bpack(w)
    want = ref_bias(x, w, b, key)  # the reference's residual is this + res, one fp32 add
    for epilogue in EPILOGUES:
        r = res if epilogue == "residual" else None
        buf, out = guarded((M, N))
        kern.bgemm(x, packed, b, out, epilogue, res=r, threads=1)
        assert np.all(bits(buf[M * N:]) == bits(SENTINEL)), \
            f"{kern.isa} {epilogue} wrote past out ({key})"
        where = f"{kern.isa} {epilogue} {key}"
        if epilogue == "bias":
            np.testing.assert_array_equal(bits(out), bits(want), err_msg=where)
        elif epilogue == "residual":
            np.testing.assert_array_equal(bits(out), bits(want + res), err_msg=where)
        else:  # the vector GELU, within its bound of the scalar one (vmath.h)
            err = np.abs(out.astype(np.float64) - gelu64(want))
            assert np.all(err <= 3e-7 * np.abs(want) + 1e-37), where


@pytest.mark.parametrize("M,K,N", SHAPES)
def test_bgemm_against_ref(kern, M, K, N):
    x, w, b, res = data(M, K, N, seed=M * 1_000_003 + K * 1009 + N)
    check_against_ref(kern, x, w, b, res, ("normal", M, K, N))


@pytest.mark.parametrize("kind", ["tiny", "mixed"])
@pytest.mark.parametrize("M,K,N", [(9, 385, 49), (17, 64, 97), (3, 1537, 17), (33, 7, 385)])
def test_bgemm_against_ref_adversarial(kern, M, K, N, kind):
    x, w, b, res = data(M, K, N, seed=7 * M + K + N, kind=kind)
    if kind == "tiny":  # the sums do cross into the denormal range and get flushed
        assert np.any(ref_bias(x, w, b, (kind, M, K, N)) == 0)
    check_against_ref(kern, x, w, b, res, (kind, M, K, N))


def test_flush_comes_after_rounding(anykern):
    """acc = FLT_MIN, then a product of -2^-151: the exact sum is below 2^-126 but rounds to
    FLT_MIN, which the scheme keeps (ftz after rounding, as x86's FTZ and vdpbf16ps). An
    AArch64 FPCR.FZ flush (before rounding) would give 0: the neon level must notice it
    (FPSR.UFC) and redo the tile. BFDOT flushes the tiny product itself: FLT_MIN too."""
    ref = REF
    x = np.array([[0.0, 2.0**-63, 0.0, 2.0**-75]], np.float32)
    w = np.array([[0.0, 2.0**-63, 0.0, -2.0**-76]] * 9, np.float32)  # 9 columns: 2 panels
    zero = np.zeros(9, np.float32)
    want = np.empty((1, 9), np.float32)
    ref.bgemm(x, ref.bpack(w), zero, want)
    assert np.all(want == np.float32(2.0**-126)), want
    for rows in (1, 8, 11):  # the tile with mr = 1, a full tile, a full and a partial one
        xs = np.repeat(x, rows, axis=0)
        got = np.empty((rows, 9), np.float32)
        anykern.bgemm(xs, anykern.bpack(w), zero, got)
        np.testing.assert_array_equal(bits(got), bits(np.repeat(want, rows, axis=0)))


def test_level_leaves_mxcsr_alone(kern):
    """The emulating levels set MXCSR.FTZ (neon: FPCR.FZ) for their k loop only: fp32 work
    after a bgemm on the same thread still keeps denormals."""
    x, w, b, _ = data(4, 16, 8, seed=2)
    kern.bgemm(x, kern.bpack(w), b, np.empty((4, 8), np.float32))
    tiny = np.array([float.fromhex("0x1p-140")], np.float32)
    assert (tiny * np.float32(2.0))[0] != 0.0


# ---------------------------------------------------------------------------------------
# neonbf16 (BFDOT) within the bound of bge.h
# ---------------------------------------------------------------------------------------

def bf16_values(a):
    return (_kernels.bf16_bits(a).astype(np.uint32) << 16).view(np.float32)


def bfdot_bound(x, w):
    """bge.h's bound on |acc_neonbf16 - acc_ref| per output (M, N), float64:
    1.01 (2 Kp + 2) 2^-24 sum_k |xb wb| + 4 Kp 2^-126."""
    K = x.shape[1]
    Kp = K + K % 2
    A = np.abs(bf16_values(x).astype(np.float64)) @ np.abs(bf16_values(w).astype(np.float64)).T
    return 1.01 * (2 * Kp + 2) * 2.0**-24 * A + 4 * Kp * 2.0**-126


def check_within_bound(kern, x, w, b, res, key):
    """acc through every epilogue against the reference's: the bound on acc, then the
    epilogue's own roundings (one fp32 add: 2^-23 of the magnitude; residual: two; GELU:
    its slope <= 1.13 and the vector GELU's 1.5e-7 |v|, as for the exact levels)."""
    M, N = x.shape[0], w.shape[0]
    packed = kern.bpack(w)
    bound = bfdot_bound(x, w)
    zero = np.zeros(N, np.float32)
    acc = run(kern, x, packed, zero, "bias", None)  # acc + 0: acc itself
    acc_ref = np.empty((M, N), np.float32)
    REF.bgemm(x, REF.bpack(w), zero, acc_ref)
    err = np.abs(acc.astype(np.float64) - acc_ref)
    worst = np.unravel_index(np.argmax(err - bound), err.shape)
    assert np.all(err <= bound), \
        f"{kern.isa} {key}: acc off by {err[worst]:.3g} at {worst}, bound {bound[worst]:.3g}"
    want = ref_bias(x, w, b, key)
    for epilogue in EPILOGUES:
        r = res if epilogue == "residual" else None
        buf, out = guarded((M, N))
        kern.bgemm(x, packed, b, out, epilogue, res=r, threads=1)
        assert np.all(bits(buf[M * N:]) == bits(SENTINEL)), f"{kern.isa} wrote past out"
        o, wb = out.astype(np.float64), want.astype(np.float64)
        if epilogue == "bias":
            tol = 1.01 * bound + 2.0**-22 * np.maximum(np.abs(o), np.abs(wb))
            diff = np.abs(o - wb)
        elif epilogue == "residual":
            want_r = (want + res).astype(np.float64)
            tol = 1.01 * bound + 2.0**-21 * (np.abs(wb) + np.abs(res) + np.abs(o))
            diff = np.abs(o - want_r)
        else:
            tol = 1.2 * (bound + 2.0**-22 * np.abs(wb)) + 3e-7 * np.abs(wb) + 1e-37
            diff = np.abs(o - gelu64(want))
        assert np.all(diff <= tol), f"{kern.isa} {epilogue} {key}: {diff.max():.3g}"


@pytest.mark.parametrize("M,K,N", SHAPES)
def test_bfdot_within_bound(bkern, M, K, N):
    x, w, b, res = data(M, K, N, seed=M * 1_000_003 + K * 1009 + N)
    check_within_bound(bkern, x, w, b, res, ("normal", M, K, N))


@pytest.mark.parametrize("kind", ["tiny", "mixed"])
@pytest.mark.parametrize("M,K,N", [(9, 385, 49), (17, 64, 97), (3, 1537, 17), (33, 7, 385)])
def test_bfdot_within_bound_adversarial(bkern, M, K, N, kind):
    x, w, b, res = data(M, K, N, seed=7 * M + K + N, kind=kind)
    check_within_bound(bkern, x, w, b, res, (kind, M, K, N))


def test_bfdot_is_the_documented_step():
    """The Arm ARM's BFDotAdd (FPCR.EBF = 0): the pair's products summed first, that sum
    added to acc, each rounded to odd. Where the reference (the odd k, then the even k, each
    rounded to nearest even) gives other bits, this level gives BFDOT's: so it does run the
    instruction, as documented."""
    bkern = level("neonbf16", "bgemm")
    one, h = 1.0, 2.0**-24
    zero = np.zeros(1, np.float32)
    out, ref = np.empty((1, 1), np.float32), np.empty((1, 1), np.float32)
    cases = [
        # pair 1 = 2^-24 + 2^-24 = 2^-23 exactly, 1 + 2^-23 exact; the reference's two
        # steps are ties to even: 1
        ([one, 0.0, h, h], [one, 0.0, one, one], 1.0 + 2.0**-23, 1.0),
        # 1 + 2^-24 (a tie): to odd 1 + 2^-23, to nearest even 1
        ([one, 0.0, h, 0.0], [one, 0.0, one, 0.0], 1.0 + 2.0**-23, 1.0),
    ]
    for xv, wv, want, want_ref in cases:
        x, w = np.array([xv], np.float32), np.array([wv], np.float32)
        bkern.bgemm(x, bkern.bpack(w), zero, out)
        REF.bgemm(x, REF.bpack(w), zero, ref)
        assert ref[0, 0] == np.float32(want_ref)
        assert out[0, 0] == np.float32(want), (xv, float(out[0, 0]))


def test_tdpbf16ps_is_the_documented_step():
    """x = (1, 0, h, 1.5 h), w = (1, 0, h, h), h = 2^-12. The reference (one chain, the odd
    k of each pair first): 1, then 1 + 1.5 2^-24 -> 1 + 2^-23, then + 2^-24, a tie, to even:
    1 + 2^-22. The SDM's TDPBF16PS (the even k 1, 2^-24 and the odd k 0, 1.5 2^-24 in two
    chains, then added): 1 + 2^-24 is a tie kept at 1, the odd chain 1.5 2^-24, their sum
    1 + 2^-23. The Intrinsics Guide's one chain, even k first, and a pair summed first (to
    nearest or to odd) also give 1 + 2^-23. So this level does run tdpbf16ps."""
    kern = level("amx", "bgemm")
    h = 2.0**-12  # products of bf16 values: h h = 2^-24, (1.5 h) h = 1.5 2^-24
    x = np.array([[1.0, 0.0, h, 1.5 * h]], np.float32)
    w = np.array([[1.0, 0.0, h, h]], np.float32)
    zero = np.zeros(1, np.float32)
    out, ref = np.empty((1, 1), np.float32), np.empty((1, 1), np.float32)
    kern.bgemm(x, kern.bpack(w), zero, out)
    REF.bgemm(x, REF.bpack(w), zero, ref)
    assert ref[0, 0] == np.float32(1.0 + 2.0**-22)
    assert out[0, 0] == np.float32(1.0 + 2.0**-23), float(out[0, 0])


# ---------------------------------------------------------------------------------------
# The packed layout
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("isa", ("ref",) + SIMD + BOUNDED)
@pytest.mark.parametrize("K,N", [(1, 1), (7, 17), (9, 23), (384, 385), (383, 24), (5, 97)])
def test_packed_layout(isa, K, N):
    """64-byte header (magic "BGB2", nr, K, N, Kp, Np), then bf16(w[n, k]) at word
    (p * Kp/2 + k/2) * nr + n % nr, half k % 2, p = n / nr; zeros past N and at k = K."""
    if isa not in _kernels.usable_isas():
        pytest.skip(f"bgemm {isa}: host lacks {isa}")
    k = _kernels.Kernels(isa)
    w = np.random.default_rng(K * N).standard_normal((N, K)).astype(np.float32)
    data_ = k.bpack(w).data
    head = data_[:64].view(np.int32)
    assert data_[:4].tobytes() == b"BGB2"
    nr = int(head[1])
    Kp, panels = K + K % 2, -(-N // nr)
    assert head[2:6].tolist() == [K, N, Kp, panels * nr]
    assert data_.shape[0] == k.bpacked_bytes(K, N) == 64 + panels * nr * Kp * 2
    wpad = np.zeros((panels * nr, Kp), np.float32)
    wpad[:N, :K] = w
    want = _kernels.bf16_bits(wpad).reshape(panels, nr, Kp // 2, 2).transpose(0, 2, 1, 3)
    np.testing.assert_array_equal(data_[64:].view(np.uint16), want.reshape(-1))


# ---------------------------------------------------------------------------------------
# Batch and thread invariance, aliasing, arguments
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("K,N,epilogue", [(384, 1152, "bias"), (384, 1536, "gelu"),
                                          (1536, 384, "residual"), (385, 97, "gelu")])
def test_batch_invariance(anykern, K, N, epilogue):
    kern = anykern
    M = 45
    x, w, b, res = data(M, K, N, seed=K + N)
    if epilogue != "residual":
        res = None
    packed = kern.bpack(w)
    full = run(kern, x, packed, b, epilogue, res)
    for m in range(M):
        r = None if res is None else res[m:m + 1]
        one = run(kern, x[m:m + 1], packed, b, epilogue, r)
        assert np.array_equal(bits(one), bits(full[m:m + 1])), f"row {m} alone differs"
    for a, e in [(0, 8), (1, 9), (3, 20), (7, 45), (5, 6), (13, 44)]:
        r = None if res is None else res[a:e]
        part = run(kern, x[a:e], packed, b, epilogue, r)
        assert np.array_equal(bits(part), bits(full[a:e])), f"rows {a}:{e} differ"
    for threads in (2, 3, 5):
        out = run(kern, x, packed, b, epilogue, res, threads=threads)
        assert np.array_equal(bits(out), bits(full)), f"threads={threads} differs from 1"


@pytest.mark.parametrize("M,K,N", [(1, 384, 1537), (16, 384, 385), (100, 1536, 1152),
                                   (129, 385, 1152), (513, 17, 1537)])
def test_threads_bit_identical(anykern, M, K, N):
    """Few rows (a run of panels per thread) and many (rectangles), 2, 3 and 7 threads."""
    kern = anykern
    x, w, b, res = data(M, K, N, seed=M + N)
    packed = kern.bpack(w)
    one = run(kern, x, packed, b, "residual", res)
    for threads in (2, 3, 7):
        out = run(kern, x, packed, b, "residual", res, threads=threads)
        assert np.array_equal(bits(out), bits(one)), (M, N, threads)


def test_reference_threads_bit_identical():
    x, w, b, res = data(37, 97, 65, seed=9)
    packed = REF.bpack(w)
    one = run(REF, x, packed, b, "residual", res)
    for threads in (2, 5):
        np.testing.assert_array_equal(bits(run(REF, x, packed, b, "residual", res, threads)),
                                      bits(one))


@pytest.mark.parametrize("M,K,N", [(1, 9, 300), (17, 384, 385)])
def test_residual_may_alias_out(anykern, M, K, N):
    kern = anykern
    x, w, b, res = data(M, K, N, seed=3 * M + N)
    packed = kern.bpack(w)
    want = run(kern, x, packed, b, "residual", res)
    for threads in (1, 2):
        out = res.copy()
        kern.bgemm(x, packed, b, out, "residual", res=out, threads=threads)
        assert np.array_equal(bits(out), bits(want))


@pytest.mark.parametrize("isa", ("ref",) + SIMD + BOUNDED)
def test_bad_arguments(isa):
    if isa not in _kernels.usable_isas():
        pytest.skip(f"bgemm {isa}: host lacks {isa}")
    kern = _kernels.Kernels(isa)
    x, w, b, res = data(4, 8, 5, seed=11)
    packed = kern.bpack(w)
    out = np.zeros((4, 5), np.float32)
    need = kern.bgemm_scratch_bytes(4, 8)
    assert 0 < need <= 4 * 4 * 8
    kern.bgemm(x, packed, b, out, scratch=np.zeros(need, np.uint8))
    with pytest.raises(ValueError, match="scratch"):
        kern.bgemm(x, packed, b, out, scratch=np.zeros(need - 1, np.uint8))
    with pytest.raises(ValueError, match="scratch: must not overlap"):
        big = np.zeros(64, np.float32)  # out its floats 0-19, scratch all 256 bytes
        kern.bgemm(x, packed, b, big[:20].reshape(4, 5), scratch=big.view(np.uint8))
    other = "ref" if isa != "ref" else "avx2"
    if other in _kernels.usable_isas():
        with pytest.raises(ValueError, match="packed"):
            kern.bgemm(x, _kernels.Kernels(other).bpack(w), b, out)
        # the same bytes under this table's name: the C header check refuses another width
        theirs = _kernels.Kernels(other).bpack(w)
        disguised = _kernels.Packed(theirs.data, 8, 5, isa, "bf16")
        with pytest.raises(ValueError, match="packed by another kernel table"):
            kern.bgemm(x, disguised, b, out)
    with pytest.raises(ValueError, match="packed"):
        kern.bgemm(x, kern.pack(w), b, out)  # an fp32 packing
    with pytest.raises(ValueError, match="x"):
        kern.bgemm(np.zeros((4, 9), np.float32), packed, b, out)
    with pytest.raises(ValueError, match="res"):
        kern.bgemm(x, packed, b, out, "residual")
    with pytest.raises(ValueError, match="epilogue"):
        kern.bgemm(x, packed, b, out, "relu")
    with pytest.raises(ValueError, match="threads"):
        kern.bgemm(x, packed, b, out, threads=0)
    with pytest.raises(ValueError, match="out: must not overlap x"):
        buf = np.zeros(48, np.float32)
        kern.bgemm(buf[:32].reshape(4, 8), packed, b, buf[28:].reshape(4, 5))
    with pytest.raises(ValueError):
        kern.bpack(np.zeros((5, 8), np.float64))
    n = kern.bpacked_bytes(8, 5)
    buf = np.full(n + 128, 0xAB, np.uint8)
    at = (-buf.ctypes.data) % 64
    np.testing.assert_array_equal(kern.bpack(w, out=buf[at:at + n]).data, packed.data)
    assert np.all(buf[at + n:] == 0xAB)


def test_names_and_dot_loop(anykern):
    kern = anykern
    name = kern.names["bf16_gemm"]
    assert name.startswith("bge_bf16_gemm_") and name.endswith("__" + kern.isa)
    f1, f2 = kern.bf16_dot_loop(1000), kern.bf16_dot_loop(2000)
    assert f1 > 0 and f2 == 2 * f1
