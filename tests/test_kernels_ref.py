"""The plain-C reference kernels against independent float64 numpy, on odd shapes. The
reference is the truth every SIMD kernel is compared with, so it is checked on its own here.
Outputs are pre-filled with a sentinel; a guard region after them must stay untouched."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bge_engine import _kernels

REF = _kernels.Kernels("ref")
SENTINEL = np.float32(-7.25e30)
GUARD = 64
SIZES = [1, 2, 3, 7, 15, 16, 17, 31, 33, 63, 64, 65, 127, 129, 383, 384, 385, 1152, 1536, 1537]


def guarded(shape):
    """An output array filled with the sentinel, followed in memory by a guard region."""
    n = int(np.prod(shape))
    buf = np.full(n + GUARD, SENTINEL, dtype=np.float32)
    return buf, buf[:n].reshape(shape)


def assert_guard(buf, n):
    assert np.all(buf[n:] == SENTINEL), "a kernel wrote past its output"


def gelu64(x):
    return 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))


@pytest.mark.parametrize("M,K,N", [(1, 1, 1), (2, 7, 3), (7, 17, 16), (17, 383, 33),
                                   (33, 384, 385), (3, 1536, 384), (65, 385, 1152),
                                   (1, 1537, 1537), (129, 64, 65)])
@pytest.mark.parametrize("epilogue", ["bias", "gelu", "residual"])
def test_gemm(M, K, N, epilogue):
    rng = np.random.default_rng(M * 10007 + K * 31 + N)
    x = rng.standard_normal((M, K), dtype=np.float32)
    w = rng.standard_normal((N, K), dtype=np.float32) / np.float32(math.sqrt(K))
    b = rng.standard_normal(N, dtype=np.float32)
    res = rng.standard_normal((M, N), dtype=np.float32) if epilogue == "residual" else None
    buf, out = guarded((M, N))
    REF.gemm(x, REF.pack(w), b, out, epilogue, res=res, threads=2)
    want = x.astype(np.float64) @ w.T.astype(np.float64) + b
    if epilogue == "gelu":
        want = gelu64(want)
    elif epilogue == "residual":
        want = want + res
    tol = 1e-6 * K * (np.abs(x).astype(np.float64) @ np.abs(w).T.astype(np.float64) + 1)
    assert np.all(np.abs(out - want) <= tol + 1e-6 * np.abs(want))
    assert_guard(buf, M * N)


def test_gemm_residual_may_alias_out():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5, 9), dtype=np.float32)
    w = rng.standard_normal((300, 9), dtype=np.float32)
    b = rng.standard_normal(300, dtype=np.float32)
    h = rng.standard_normal((5, 300), dtype=np.float32)
    want = np.empty_like(h)
    REF.gemm(x, REF.pack(w), b, want, "residual", res=h.copy())
    REF.gemm(x, REF.pack(w), b, h, "residual", res=h)
    np.testing.assert_array_equal(h, want)


@pytest.mark.parametrize("T,C", [(1, 1), (3, 7), (17, 383), (5, 384), (2, 1537)])
def test_layernorm(T, C):
    rng = np.random.default_rng(T * 1000 + C)
    x = (rng.standard_normal((T, C)) * 3 + 1).astype(np.float32)
    g = rng.standard_normal(C).astype(np.float32)
    b = rng.standard_normal(C).astype(np.float32)
    buf, out = guarded((T, C))
    REF.layernorm(x, g, b, 1e-12, out)
    x64 = x.astype(np.float64)
    want = (x64 - x64.mean(1, keepdims=True)) / np.sqrt(x64.var(1, keepdims=True) + 1e-12) * g + b
    if C > 1:
        np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)
    assert_guard(buf, T * C)
    REF.layernorm(x, g, b, 1e-12, x)  # in place gives the same bits
    np.testing.assert_array_equal(x, out)


@pytest.mark.parametrize("R,C", [(1, 1), (2, 7), (3, 129), (4, 512), (1, 1537)])
def test_softmax(R, C):
    rng = np.random.default_rng(R + C)
    x = (rng.standard_normal((R, C)) * 8).astype(np.float32)
    want = np.exp(x.astype(np.float64) - x.max(1, keepdims=True))
    want /= want.sum(1, keepdims=True)
    REF.softmax(x)
    np.testing.assert_allclose(x, want, rtol=1e-5, atol=1e-7)


def test_gelu_and_l2norm():
    x = np.linspace(-12, 12, 4097, dtype=np.float32)
    want = gelu64(x.astype(np.float64))
    REF.gelu(x)
    np.testing.assert_allclose(x, want, rtol=1e-6, atol=1e-7)
    y = np.random.default_rng(0).standard_normal((7, 385)).astype(np.float32)
    y[3] = 0
    want = y / np.maximum(np.linalg.norm(y.astype(np.float64), axis=1, keepdims=True), 1e-300)
    REF.l2norm(y)
    np.testing.assert_allclose(y, want, rtol=1e-6, atol=1e-7)
    assert np.all(y[3] == 0)


def attention64(qkv, offsets, heads, scale):
    T, H = qkv.shape[0], qkv.shape[1] // 3
    D = H // heads
    out = np.zeros((T, H))
    q64 = qkv.astype(np.float64)
    for i in range(len(offsets) - 1):
        t0, t1 = offsets[i], offsets[i + 1]
        if t0 == t1:
            continue
        for h in range(heads):
            q = q64[t0:t1, h * D:(h + 1) * D]
            k = q64[t0:t1, H + h * D:H + (h + 1) * D]
            v = q64[t0:t1, 2 * H + h * D:2 * H + (h + 1) * D]
            s = scale * q @ k.T
            p = np.exp(s - s.max(1, keepdims=True))
            p /= p.sum(1, keepdims=True)
            out[t0:t1, h * D:(h + 1) * D] = p @ v
    return out


@pytest.mark.parametrize("lengths,H,heads", [([1], 384, 12), ([1, 2, 7, 17, 33, 64, 129], 384, 12),
                                             ([0, 5, 0, 3], 384, 12), ([9, 4], 21, 3),
                                             ([16], 64, 1)])
def test_attention(lengths, H, heads):
    rng = np.random.default_rng(sum(lengths) + H)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    T = int(offsets[-1])
    qkv = rng.standard_normal((T, 3 * H)).astype(np.float32)
    scale = 1 / math.sqrt(H // heads)
    buf, out = guarded((T, H))
    REF.attention(qkv, offsets, heads, scale, out, threads=2)
    np.testing.assert_allclose(out, attention64(qkv, offsets, heads, scale), rtol=1e-4, atol=1e-5)
    assert_guard(buf, T * H)


def test_attention_rejects_small_scratch():
    qkv = np.zeros((10, 3 * 384), np.float32)
    with pytest.raises(ValueError, match="scratch"):
        REF.attention(qkv, np.array([0, 10], np.int32), 12, 0.1, np.empty((10, 384), np.float32),
                      scratch=np.empty(3, np.float32))


def test_embed_and_pool():
    rng = np.random.default_rng(5)
    C, V, P = 385, 50, 20
    word, pos, typ = (rng.standard_normal((r, C)).astype(np.float32) for r in (V, P, 2))
    lengths = [3, 1, 20, 7]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    ids = rng.integers(0, V, offsets[-1]).astype(np.int32)
    out = np.empty((offsets[-1], C), np.float32)
    REF.embed(ids, offsets, word, pos, typ, out)
    positions = np.concatenate([np.arange(n) for n in lengths])
    np.testing.assert_array_equal(out, (word[ids] + typ[0]) + pos[positions])
    for mode in ("cls", "mean"):
        pooled = np.empty((4, C), np.float32)
        REF.pool(out, offsets, mode, pooled)
        for i in range(4):
            rows = out[offsets[i]:offsets[i + 1]].astype(np.float64)
            want = rows[0] if mode == "cls" else rows.mean(0)
            np.testing.assert_allclose(pooled[i], want, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="ids"):
        REF.embed(np.array([V], np.int32), np.array([0, 1], np.int32), word, pos, typ,
                  np.empty((1, C), np.float32))
    # the boundary names the argument that is wrong, and how
    args = dict(ids=ids, offsets=offsets, word=word, pos=pos, type_=typ, out=out)
    ro = out.copy()
    ro.flags.writeable = False
    for name, bad, msg in (("ids", ids.astype(np.int64), r"ids: .*int32"),
                           ("word", np.asfortranarray(word), r"word: .*not C-contiguous"),
                           ("pos", pos[:, :C - 1], r"pos: .*\(\d+, %d\)" % C),
                           ("type_", typ.astype(np.float64), r"type_: .*float32"),
                           ("out", ro, r"out: the output array is read-only"),
                           ("offsets", offsets[:-1], r"offsets: expected 0 first and %d last"
                            % offsets[-1])):
        with pytest.raises(ValueError, match=msg):
            REF.embed(**{**args, name: bad})
    y = np.ones((2, C), np.float32)
    y.flags.writeable = False
    with pytest.raises(ValueError, match="x: the output array is read-only"):
        REF.l2norm(y)
    with pytest.raises(ValueError, match=r"x: .*float32"):
        REF.l2norm(np.ones((2, C), np.float64))
    with pytest.raises(ValueError, match="not C-contiguous"):
        REF.l2norm(np.ones((C, 2), np.float32).T)


def test_boundary_rejects_bad_arrays_naming_shapes():
    w = np.zeros((8, 4), np.float32)
    packed = REF.pack(w)
    with pytest.raises(ValueError, match=r"x: .*\(3, 4\).*\(3, 5\)"):
        REF.gemm(np.zeros((3, 5), np.float32), packed, np.zeros(8, np.float32),
                 np.zeros((3, 8), np.float32))
    with pytest.raises(ValueError, match="float32"):
        REF.gemm(np.zeros((3, 4), np.float64), packed, np.zeros(8, np.float32),
                 np.zeros((3, 8), np.float32))
    with pytest.raises(ValueError, match="contiguous"):
        REF.layernorm(np.zeros((4, 6), np.float32)[:, ::2], np.ones(3, np.float32),
                      np.zeros(3, np.float32), 1e-12, np.zeros((4, 3), np.float32))
    with pytest.raises(ValueError, match="offsets"):
        REF.attention(np.zeros((4, 12), np.float32), np.array([0, 3], np.int32), 1, 1.0,
                      np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError, match="threads"):
        REF.gemm(np.zeros((3, 4), np.float32), packed, np.zeros(8, np.float32),
                 np.zeros((3, 8), np.float32), threads=0)
