"""Batch, order and thread invariance: a text's embedding is bit-identical alone or inside
a batch of 100 texts of mixed lengths, whatever the thread count, and 8 Python threads sharing
one Engine get exactly the serial results; for every dtype."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import bge_engine

WORDS = ("orange cloud story river mountain quick brown fox jumps lazy dog engine vector "
         "embedding search index token layer attention kernel memory thread batch").split()


def mixed_texts(n: int, seed: int) -> list:
    """n texts of 1 to 40 words, drawn with a seeded generator."""
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(1, 41)))) for _ in range(n)]


@pytest.fixture(scope="module")
def texts():
    return mixed_texts(100, seed=7)


DTYPES = ("fp32", "bf16", "int8")
_ENGINES: dict = {}


@pytest.fixture(scope="module", params=DTYPES)
def dtype(request):
    return request.param


@pytest.fixture
def engine(minilm, minilm_path, dtype):
    """all-MiniLM-L6-v2 in `dtype` (one engine per dtype for the module)."""
    if dtype == "fp32":
        return minilm
    if dtype not in _ENGINES:
        _ENGINES[dtype] = bge_engine.Engine(str(minilm_path), dtype=dtype)
    return _ENGINES[dtype]


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_alone_equals_in_batch_of_100(engine, texts, pooling):
    batch = engine.encode(texts, pooling=pooling, batch_size=100)
    for i in (0, 1, 17, 42, 99):
        alone = engine.encode(texts[i], pooling=pooling)
        np.testing.assert_array_equal(alone, batch[i])
    # the Workers front: 100 texts in one call, the caller's order kept
    reply = engine.embed({"text": texts, "pooling": pooling})
    np.testing.assert_array_equal(np.array(reply["data"], np.float32), batch)


def test_batch_size_and_order_do_not_matter(engine, texts):
    base = engine.encode(texts[:40], batch_size=40)
    np.testing.assert_array_equal(engine.encode(texts[:40], batch_size=3), base)
    perm = np.random.default_rng(3).permutation(40)
    shuffled = engine.encode([texts[i] for i in perm], batch_size=7)
    np.testing.assert_array_equal(shuffled, base[perm])


def test_bge_alone_equals_in_batch(bge, synthetic_path, texts, dtype):
    if dtype != "fp32":
        bge = bge_engine.Engine(str(synthetic_path), dtype=dtype)
    batch = bge.encode(texts[:24], batch_size=24)
    for i in (0, 5, 23):
        np.testing.assert_array_equal(bge.encode(texts[i]), batch[i])


def test_thread_count_does_not_matter(minilm_path, texts, dtype):
    one = bge_engine.Engine(str(minilm_path), threads=1, dtype=dtype)
    two = bge_engine.Engine(str(minilm_path), threads=2, dtype=dtype)
    three = bge_engine.Engine(str(minilm_path), threads=3, dtype=dtype)
    np.testing.assert_array_equal(one.encode(texts[:30]), two.encode(texts[:30]))
    np.testing.assert_array_equal(one.encode(texts[:30]), three.encode(texts[:30]))


def test_eight_threads_share_one_engine(engine, texts):
    work = [texts[i::8][:6] for i in range(8)]
    serial = [engine.encode(w) for w in work]
    results = [None] * 8
    errors = []
    start = threading.Barrier(8)

    def run(i):
        try:
            start.wait()
            for _ in range(2):
                results[i] = engine.encode(work[i])
                np.testing.assert_array_equal(results[i], serial[i])
        except BaseException as exc:  # reported in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for i in range(8):
        np.testing.assert_array_equal(results[i], serial[i])
