"""The Engine methods the server's batcher runs: pre-tokenised texts of many requests in one
ragged forward pass, each with its own pooling, equal bit for bit to encode() of each text."""

from __future__ import annotations

import numpy as np
import pytest

import bge_engine
from bge_engine.bench import sentences, text_of_tokens


def _texts():
    s = sentences()
    return [s[0], text_of_tokens(300), s[5], s[9] + " " + s[10], "a", text_of_tokens(700)]


@pytest.mark.parametrize("dtype", ["fp32", "int8"])
def test_embed_tokenized_mixed_poolings_bit_identical(synthetic_path, bge, dtype):
    engine = bge if dtype == "fp32" else bge_engine.Engine(str(synthetic_path), dtype=dtype)
    texts = _texts()
    poolings = ["mean", "cls", "cls", "mean", "cls", "mean"]
    ids = engine._tokenize(texts)
    rows = engine._embed_tokenized(ids, poolings)
    assert rows.shape == (len(texts), engine.dim) and rows.dtype == np.float32
    for i, (text, pooling) in enumerate(zip(texts, poolings)):
        alone = engine.encode([text], pooling=pooling)[0]
        assert rows[i].tobytes() == alone.tobytes(), f"text {i} ({pooling})"
    # one pooling for all, in another order: the same rows
    order = [5, 2, 0, 4, 1, 3]
    same = engine._embed_tokenized([ids[i] for i in order], ["cls"] * len(order))
    assert same.tobytes() == engine.encode([texts[i] for i in order], pooling="cls").tobytes()


def test_tokenize_counts_and_truncation(bge):
    texts = _texts()
    ids = bge._tokenize(texts)
    counts = bge.count_tokens(texts)
    assert [a.shape[0] for a in ids] == [min(c, bge.max_tokens) for c in counts]
    assert counts[5] == 700 and ids[5].shape[0] == bge.max_tokens


def test_embed_tokenized_edges(bge):
    assert bge._embed_tokenized([], []).shape == (0, bge.dim)
    with pytest.raises(ValueError, match="poolings"):
        bge._embed_tokenized(bge._tokenize(["a", "b"]), ["mean"])
    with pytest.raises(bge_engine.InvalidInput, match="poolings"):
        bge._embed_tokenized(bge._tokenize(["a", "b"]), ["mean", "max"])
