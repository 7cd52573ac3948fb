"""Engine(dtype="int8") end to end: quality against the fp32 engine on real weights and on the
synthetic bge-small checkpoint, and the same bit-for-bit batch and thread invariance as fp32.
The kernels themselves are checked exactly against the reference in test_kernels_qgemm.py."""

from __future__ import annotations

import numpy as np
import pytest

import bge_engine
from bge_engine import bench

MIN_COSINE = 0.999  # the int8 bar against our own fp32, on every text


@pytest.fixture(scope="module")
def sentences():
    return bench.sentences()[:96]


@pytest.fixture(scope="module")
def minilm_int8(minilm_path):
    return bge_engine.Engine(str(minilm_path), dtype="int8")


@pytest.fixture(scope="module")
def bge_int8(synthetic_path):
    return bge_engine.Engine(str(synthetic_path), dtype="int8")


@pytest.mark.parametrize("which", ["minilm", "bge"])
def test_int8_keeps_the_model_quality(which, request, sentences):
    # only this case's engines (the synthetic checkpoint is slow to make under emulation)
    fp32, int8 = request.getfixturevalue(which), request.getfixturevalue(which + "_int8")
    ref = fp32.encode(sentences)
    got = int8.encode(sentences)
    assert got.dtype == np.float32 and got.shape == ref.shape
    cos = (got.astype(np.float64) * ref).sum(1)
    assert cos.min() >= MIN_COSINE, f"min cosine {cos.min():.5f}"
    assert not np.array_equal(got, ref)  # it really ran the int8 path


def test_int8_batch_and_order_invariance(minilm_int8, sentences):
    batch = minilm_int8.encode(sentences, batch_size=96)
    for i in (0, 13, 95):
        np.testing.assert_array_equal(minilm_int8.encode(sentences[i]), batch[i])
    perm = np.random.default_rng(11).permutation(40)
    np.testing.assert_array_equal(
        minilm_int8.encode([sentences[i] for i in perm], batch_size=7), batch[:40][perm])


def test_int8_thread_count_invariance(minilm_path, sentences):
    one = bge_engine.Engine(str(minilm_path), dtype="int8", threads=1)
    two = bge_engine.Engine(str(minilm_path), dtype="int8", threads=2)
    np.testing.assert_array_equal(one.encode(sentences[:32]), two.encode(sentences[:32]))


def test_int8_embed_contract(bge_int8):
    reply = bge_int8.embed({"text": ["a story", "an orange cloud"], "pooling": "cls"})
    assert reply["shape"] == [2, 384] and reply["pooling"] == "cls"
    norms = np.linalg.norm(np.array(reply["data"]), axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-5)
    assert bge_int8.dtype == "int8"


def test_unknown_dtype_is_refused(minilm_path):
    with pytest.raises(ValueError, match="dtype"):
        bge_engine.Engine(str(minilm_path), dtype="int4")


@pytest.mark.parametrize("N,K", [(7, 1), (5, 63), (9, 64), (3, 65), (16, 384), (4, 1537)])
def test_quantize_weight_per_channel_and_group(N, K):
    from bge_engine import _kernels
    from bge_engine.loader import quantize_weight

    rng = np.random.default_rng(N * 1000 + K)
    w = rng.standard_normal((N, K)).astype(np.float32)
    w[0, : min(K, 64)] = 0  # an all-zero group gets scale 1
    w[-1, -1] = 50.0  # an outlier only moves its own group's scale
    q, scale = quantize_weight(w)
    G = _kernels.Q8_GROUP
    assert q.dtype == np.int8 and q.shape == (N, K) and q.flags.c_contiguous
    assert scale.shape == (N, -(-K // G)) and scale.dtype == np.float32
    for n in range(N):
        for g in range(scale.shape[1]):
            seg = w[n, G * g:G * g + G]
            amax = np.abs(seg).max()
            want = np.float32(amax / np.float32(127)) if amax > 0 else np.float32(1)
            assert scale[n, g] == want
            np.testing.assert_array_equal(q[n, G * g:G * g + G],
                                          np.clip(np.rint(seg / want), -127, 127))
    assert q.min() >= -127 and q.max() <= 127


def test_quantize_weight_rounds_half_to_even_and_refuses_non_finite():
    from bge_engine.loader import quantize_weight

    # amax 127 gives scale exactly 1, so w / scale lands on the halves themselves
    w = np.array([[127.0, 2.5, 3.5, -2.5, -3.5, 0.5, -0.5, 126.5]], dtype=np.float32)
    q, scale = quantize_weight(w)
    assert scale[0, 0] == 1.0
    np.testing.assert_array_equal(q[0], [127, 2, 4, -2, -4, 0, 0, 126])
    for bad in (np.nan, np.inf, -np.inf):
        w2 = w.copy()
        w2[0, 3] = bad
        with pytest.raises(ValueError, match="NaN or infinity"):
            quantize_weight(w2)


def test_quantize_weight_is_the_same_for_any_thread_count():
    from bge_engine.loader import quantize_weight

    w = np.random.default_rng(3).standard_normal((1537, 385)).astype(np.float32)
    q1, s1 = quantize_weight(w, threads=1)
    q2, s2 = quantize_weight(w, threads=2)
    np.testing.assert_array_equal(q1, q2)
    np.testing.assert_array_equal(s1, s2)
