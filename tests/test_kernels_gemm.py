"""The SIMD fp32 GEMM kernels (csrc/x86/<isa>/gemm.c, csrc/arm/neon/gemm.c) against the
plain-C reference.

Run once per SIMD level; a level the host can't run is skipped, never passed silently.
  - odd shapes (DESIGN.md section 5) covering every tail of the MR x NR tiles, all three
    epilogues; outputs pre-filled with a sentinel, the guard region after them untouched;
    fp32 tolerance that grows with K (the usual gamma_K * sum |x||w| bound);
  - the packed layout documented beside each pack function;
  - batch invariance, bit for bit: a row alone, in any sub-batch at any offset, and with any
    thread count gives the same bits (one fixed-order fp32 chain per output element);
  - res aliasing out; bad arguments raise ValueError.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bge_engine import _kernels
from kernel_cases import covering_shapes, level

SIMD = ("avx2", "avx512", "neon")
LANES = {"avx2": 8, "avx512": 16, "neon": 4}  # floats per vector register
REF = _kernels.Kernels("ref")
SENTINEL = np.float32(-7.25e30)
GUARD = 67
EPS = 2.0**-24  # fp32 unit roundoff
EPILOGUES = ("bias", "gelu", "residual")

Ms = [1, 2, 3, 7, 15, 16, 17, 31, 33, 63, 64, 65, 127, 129]
Ks = [1, 7, 17, 383, 384, 385, 1536, 1537]
Ns = [1, 7, 16, 17, 31, 33, 383, 384, 385, 1152, 1536, 1537]


SHAPES = covering_shapes(Ms, Ks, Ns, 56, 100e6, [
    (17, 384, 1152), (65, 384, 384), (33, 384, 1536), (15, 1536, 384), (129, 1537, 7),
    (1, 1537, 1537), (2, 1, 1), (3, 7, 17)])


@pytest.fixture(params=SIMD)
def kern(request):
    return level(request.param, "gemm")


def tile_of(k):
    """(MR, NR) from the kernel's name, e.g. bge_f32_gemm_8x48__avx512."""
    m = re.fullmatch(r"bge_f32_gemm_(\d+)x(\d+)__" + k.isa, k.names["f32_gemm"])
    assert m, f"{k.names['f32_gemm']} does not follow bge_f32_gemm_<MR>x<NR>__{k.isa}"
    return int(m.group(1)), int(m.group(2))


def guarded(shape):
    """An output array filled with the sentinel, followed in memory by a guard region."""
    n = int(np.prod(shape))
    buf = np.full(n + GUARD, SENTINEL, dtype=np.float32)
    return buf, buf[:n].reshape(shape)


def data(M, K, N, seed, residual=True):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((M, K), dtype=np.float32)
    w = rng.standard_normal((N, K), dtype=np.float32) / np.float32(math.sqrt(K))
    b = rng.standard_normal(N, dtype=np.float32)
    res = rng.standard_normal((M, N), dtype=np.float32) if residual else None
    return x, w, b, res


def tolerance(x, w, b, res, epilogue, pre):
    """|simd - ref| bound: both sum K products in fp32, each within gamma_K * sum |x||w| of
    the exact value; the epilogue adds a few roundings; GELU has slope <= 1.13 and the
    vector GELU is within 5e-8 |v| of the scalar one (vmath.h)."""
    s = np.abs(x).astype(np.float64) @ np.abs(w).T.astype(np.float64) + np.abs(b)
    if res is not None:
        s = s + np.abs(res)
    K = x.shape[1]
    tol = 2.0 * (K + 4) * EPS * s + 1e-30
    if epilogue == "gelu":
        tol = 1.2 * tol + 1e-7 * np.abs(pre)
    return tol


@pytest.mark.parametrize("M,K,N", SHAPES)
def test_gemm_against_ref(kern, M, K, N):
    x, w, b, res = data(M, K, N, seed=M * 1_000_003 + K * 1009 + N)
    packed, rpacked = kern.pack(w), REF.pack(w)
    pre = x.astype(np.float64) @ w.T.astype(np.float64) + b
    for epilogue in EPILOGUES:
        r = res if epilogue == "residual" else None
        buf, out = guarded((M, N))
        kern.gemm(x, packed, b, out, epilogue, res=r, threads=1)
        assert np.all(buf[M * N:].view(np.int32) == SENTINEL.view(np.int32)), \
            f"{kern.isa} {epilogue} wrote past out (M={M}, K={K}, N={N})"
        want = np.empty((M, N), np.float32)
        REF.gemm(x, rpacked, b, want, epilogue, res=r)
        err = np.abs(out.astype(np.float64) - want)
        tol = tolerance(x, w, b, r, epilogue, pre)
        bad = ~(err <= tol)  # also catches NaN and a leftover sentinel
        assert not bad.any(), (
            f"{kern.isa} {epilogue} (M={M}, K={K}, N={N}): {bad.sum()} elements off, first at "
            f"{np.argwhere(bad)[0]}: got {out[bad][0]}, ref {want[bad][0]}, tol {tol[bad][0]}")


@pytest.mark.parametrize("K,N", [(1, 1), (7, 17), (9, 23), (384, 385), (383, 24), (5, 1537),
                                 (1537, 25)])
def test_packed_layout(kern, K, N):
    """packed[(p*K + k)*NR + j] = w[p*NR + j, k], zero past N; ceil(N/NR)*K*NR floats."""
    _, NR = tile_of(kern)
    w = np.random.default_rng(K * N).standard_normal((N, K), dtype=np.float32)
    panels = -(-N // NR)
    wpad = np.zeros((panels * NR, K), np.float32)
    wpad[:N] = w
    want = wpad.reshape(panels, NR, K).transpose(0, 2, 1).reshape(-1)
    got = kern.pack(w).data
    assert got.shape == want.shape
    assert np.array_equal(got.view(np.int32), want.view(np.int32))


# ---------------------------------------------------------------------------------------
# Batch and thread invariance: bit for bit
# ---------------------------------------------------------------------------------------

def bits(a):
    return np.ascontiguousarray(a).view(np.int32)


def run(kern, x, packed, b, epilogue, res, threads):
    out = np.full((x.shape[0], b.shape[0]), SENTINEL, np.float32)
    kern.gemm(x, packed, b, out, epilogue, res=res, threads=threads)
    return out


@pytest.mark.parametrize("K,N,epilogue", [(384, 1152, "bias"), (384, 1536, "gelu"),
                                          (1536, 384, "residual"), (385, 97, "gelu")])
def test_batch_invariance(kern, K, N, epilogue):
    M = 45
    x, w, b, res = data(M, K, N, seed=K + N)
    if epilogue != "residual":
        res = None
    packed = kern.pack(w)
    full = run(kern, x, packed, b, epilogue, res, threads=1)
    for m in range(M):  # each row alone, whatever its position in the batch
        r = None if res is None else res[m:m + 1]
        one = run(kern, x[m:m + 1], packed, b, epilogue, r, threads=1)
        assert np.array_equal(bits(one), bits(full[m:m + 1])), f"row {m} alone differs"
    for a, e in [(0, 8), (1, 9), (3, 20), (7, 45), (5, 6), (13, 44), (0, 44)]:
        r = None if res is None else res[a:e]
        part = run(kern, x[a:e], packed, b, epilogue, r, threads=1)
        assert np.array_equal(bits(part), bits(full[a:e])), f"rows {a}:{e} as a batch differ"
    for threads in (2, 3, 5):
        out = run(kern, x, packed, b, epilogue, res, threads=threads)
        assert np.array_equal(bits(out), bits(full)), f"threads={threads} differs from 1"


@settings(max_examples=25, deadline=None, derandomize=True)
@given(M=st.integers(1, 70), a=st.integers(0, 69), n=st.integers(1, 70),
       N=st.sampled_from([1, 17, 48, 49, 100, 385]), threads=st.integers(1, 4),
       epilogue=st.sampled_from(EPILOGUES))
def test_invariance_property(M, a, n, N, threads, epilogue):
    """Any sub-batch x[a:a+n] of any batch, any thread count: the same bits per row."""
    isas = [i for i in SIMD if i in _kernels.usable_isas()]
    if not isas:
        pytest.skip(f"gemm: host lacks every SIMD level of {SIMD}")
    a = min(a, M - 1)
    e = min(a + n, M)
    K = 67
    x, w, b, res = data(M, K, N, seed=M * 131 + N)
    if epilogue != "residual":
        res = None
    for isa in isas:
        kern = _kernels.Kernels(isa)
        packed = kern.pack(w)
        full = run(kern, x, packed, b, epilogue, res, threads=1)
        r = None if res is None else res[a:e]
        part = run(kern, x[a:e], packed, b, epilogue, r, threads=threads)
        assert np.array_equal(bits(part), bits(full[a:e]))


def test_threads_bit_identical_model_shape(kern):
    x, w, b, res = data(129, 1536, 384, seed=7)
    packed = kern.pack(w)
    one = run(kern, x, packed, b, "residual", res, threads=1)
    two = run(kern, x, packed, b, "residual", res, threads=2)
    assert np.array_equal(bits(one), bits(two))


def _same_bits_any_threads(kern, shapes, repeats):
    """gemm on 2, 3 and 7 threads (more than the cores), outputs pre-filled with the
    sentinel: the bits of one thread."""
    for M, K, N in shapes:
        x, w, b, res = data(M, K, N, seed=M + N)
        packed = kern.pack(w)
        one = run(kern, x, packed, b, "residual", res, threads=1)
        for threads in (2, 3, 7):
            for _ in range(repeats):
                out = run(kern, x, packed, b, "residual", res, threads=threads)
                assert np.array_equal(bits(out), bits(one)), (M, N, threads)


def test_few_rows_every_panel_once_whatever_the_threads(kern):
    # Up to 16 row tiles each thread takes its own run of panels, then panels from the back
    # of the others' runs (some threads start late, the others take their panels: 5
    # repeats); odd panel counts.
    _same_bits_any_threads(kern, ((1, 384, 1537), (16, 384, 385), (100, 1536, 1152)), 5)


def test_many_rows_cut_rows_first_whatever_the_threads(kern):
    # From 129 rows the rectangles are cut along the rows first (bge_run_rectangles): row
    # counts on both sides of it and off the tile, odd panel counts.
    _same_bits_any_threads(kern, ((128, 384, 385), (129, 385, 1152), (301, 384, 49),
                                  (513, 17, 1537)), 1)


# ---------------------------------------------------------------------------------------
# Aliasing and arguments
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("M,K,N", [(1, 9, 300), (17, 384, 385), (65, 1536, 384)])
def test_residual_may_alias_out(kern, M, K, N):
    x, w, b, res = data(M, K, N, seed=3 * M + N)
    packed = kern.pack(w)
    want = run(kern, x, packed, b, "residual", res, threads=1)
    for threads in (1, 2):
        out = res.copy()
        kern.gemm(x, packed, b, out, "residual", res=out, threads=threads)
        assert np.array_equal(bits(out), bits(want))


def test_bad_arguments(kern):
    x, w, b, res = data(4, 8, 5, seed=11)
    packed = kern.pack(w)
    out = np.zeros((4, 5), np.float32)
    other = "ref" if kern.isa != "ref" else "avx2"
    with pytest.raises(ValueError, match="packed"):
        kern.gemm(x, _kernels.Kernels(other).pack(w), b, out)
    with pytest.raises(ValueError, match="packed"):
        kern.gemm(x, w, b, out)  # an unpacked weight
    with pytest.raises(ValueError, match="x"):
        kern.gemm(np.zeros((4, 9), np.float32), packed, b, out)
    with pytest.raises(ValueError, match="x"):
        kern.gemm(x.astype(np.float64), packed, b, out)
    with pytest.raises(ValueError, match="x"):
        kern.gemm(np.zeros((4, 16), np.float32)[:, ::2], packed, b, out)
    with pytest.raises(ValueError, match="bias"):
        kern.gemm(x, packed, np.zeros(6, np.float32), out)
    with pytest.raises(ValueError, match="out"):
        kern.gemm(x, packed, b, np.zeros((4, 6), np.float32))
    with pytest.raises(ValueError, match="out"):
        kern.gemm(x, packed, b, np.zeros((5, 5), np.float32))
    with pytest.raises(ValueError, match="res"):
        kern.gemm(x, packed, b, out, "residual")
    with pytest.raises(ValueError, match="res"):
        kern.gemm(x, packed, b, out, "residual", res=np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError, match="res"):
        kern.gemm(x, packed, b, out, "bias", res=res)
    with pytest.raises(ValueError, match="epilogue"):
        kern.gemm(x, packed, b, out, "relu")
    with pytest.raises(ValueError, match="threads"):
        kern.gemm(x, packed, b, out, threads=0)
    with pytest.raises(ValueError, match="x: expected a float32 array of shape"):
        kern.gemm(np.zeros(8, np.float32), packed, b, out)
    with pytest.raises(ValueError, match="x: expected a float32 array of shape"):
        kern.gemm(x.tolist(), packed, b, out)
    ro = np.zeros((4, 5), np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="out: the output array is read-only"):
        kern.gemm(x, packed, b, ro)
    with pytest.raises(ValueError, match="bias: expected a C-contiguous float32 array"):
        kern.gemm(x, packed, np.zeros(10, np.float32)[::2], out)
    with pytest.raises(ValueError, match="out: must not overlap x"):
        buf = np.zeros(48, np.float32)  # x its floats 0-31, out its floats 28-47
        kern.gemm(buf[:32].reshape(4, 8), packed, b, buf[28:].reshape(4, 5))
    wrong = _kernels.Packed(packed.data.view(np.uint8), packed.K, packed.N, packed.isa, "fp32")
    with pytest.raises(ValueError, match="packed.data: expected a C-contiguous float32"):
        kern.gemm(x, wrong, b, out)
    with pytest.raises(ValueError):
        kern.pack(np.zeros((0, 8), np.float32))
    with pytest.raises(ValueError):
        kern.pack(np.zeros((5, 8), np.float64))


def test_name_and_fma_loop(kern):
    MR, NR = tile_of(kern)
    lanes = LANES[kern.isa]
    assert MR >= 1 and NR % lanes == 0
    f1, f2 = kern.fma_loop(1000), kern.fma_loop(2000)
    assert f1 > 0 and f2 == 2 * f1
    assert f1 % (2 * lanes * 1000) == 0  # 2 flops per lane per FMA, whole chains


@pytest.mark.parametrize("isa", ("ref",) + SIMD)
def test_pack_into_a_given_buffer(isa):
    """pack(out=) (the loader's arena) gives the bytes pack() gives in fresh memory, and
    refuses a buffer of the wrong size, type or alignment."""
    if isa not in _kernels.usable_isas():
        pytest.skip(f"gemm {isa}: host lacks {isa} (usable: {_kernels.usable_isas()})")
    k = _kernels.Kernels(isa)
    w = np.random.default_rng(5).standard_normal((385, 17)).astype(np.float32)
    n = k.packed_bytes(17, 385)
    buf = np.full(n + 128, 0xAB, dtype=np.uint8)
    at = (-buf.ctypes.data) % 64
    p = k.pack(w, out=buf[at:at + n])
    np.testing.assert_array_equal(p.data, k.pack(w).data)
    assert np.all(buf[at + n:] == 0xAB) and np.all(buf[:at] == 0xAB)
    for bad in (buf[at:at + n - 4], buf[at + 4:at + n + 4], np.empty(n // 4, np.float32)):
        with pytest.raises(ValueError, match="out"):
            k.pack(w, out=bad)
