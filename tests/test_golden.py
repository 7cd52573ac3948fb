"""End to end against the goldens of an independent reference (PyTorch + transformers,
tests/golden/make_goldens.py): every layer's hidden states and both poolings, for the real
all-MiniLM-L6-v2 weights and the synthetic 12-layer bge-small checkpoint, on every ISA level
this host can run. The bar: cosine >= 0.99999 and max-abs <= 1e-4 on every golden vector."""

from __future__ import annotations

import numpy as np
import pytest

from bge_engine import _kernels
from bge_engine.loader import MatmulLoad
from bge_engine.model import BertModel
from bge_engine.tokenizer import Tokenizer
from bge_engine.weights import load_checkpoint
from synthetic import synthetic_digest

MIN_COSINE = 0.99999
MAX_ABS = 1e-4
LEVELS = ["ref", "avx2", "avxvnni", "avx512", "avx512vnni", "avx512bf16", "amx", "neon",
          "dotprod", "i8mm", "neonbf16"]


def check_rows(got: np.ndarray, want: np.ndarray, what: str) -> None:
    """Row-wise cosine and max-abs bars between two (n, d) arrays."""
    assert got.shape == want.shape, what
    g, w = got.astype(np.float64), want.astype(np.float64)
    cos = (g * w).sum(1) / (np.linalg.norm(g, axis=1) * np.linalg.norm(w, axis=1))
    err = np.abs(g - w).max()
    assert cos.min() >= MIN_COSINE, f"{what}: min cosine {cos.min():.8f}"
    assert err <= MAX_ABS, f"{what}: max-abs {err:.3g}"


@pytest.fixture(scope="module", params=["minilm", "bge"])
def case(request, minilm_path, synthetic_path, golden_minilm, golden_bge):
    if request.param == "minilm":
        return minilm_path, golden_minilm
    return synthetic_path, golden_bge


def test_goldens_were_made_from_these_weights(case):
    folder, golden = case
    assert synthetic_digest(folder) == str(golden["weights_digest"])


def test_tokenizer_matches_reference(case):
    folder, golden = case
    cfg = load_checkpoint(folder).config
    tok = Tokenizer(folder / "tokenizer.json", cfg.vocab)
    ids = [tok.truncate(i, cfg.max_positions) for i in tok.encode(list(golden["texts"]))]
    np.testing.assert_array_equal(np.concatenate(ids), golden["ids"])


@pytest.mark.parametrize("isa", LEVELS)
def test_every_layer_and_pooling(case, isa):
    if isa not in _kernels.usable_isas():
        pytest.skip(f"this host or build lacks {isa}")
    folder, golden = case
    ckpt, k = load_checkpoint(folder), _kernels.Kernels(isa)
    model = BertModel(ckpt, k, MatmulLoad(k, ckpt))
    ws = model.new_workspace()
    ids, offsets = golden["ids"], golden["offsets"]
    k = int(golden["n_layer_texts"])
    for i in range(k):  # per layer, each text alone
        t0, t1 = offsets[i], offsets[i + 1]
        states = []
        model.forward(ids[t0:t1], np.array([0, t1 - t0], np.int32), ws, 2, hidden_states=states)
        assert len(states) == golden["hidden_states"].shape[0]
        for layer, h in enumerate(states):
            check_rows(h, golden["hidden_states"][layer, t0:t1], f"{isa} text {i} layer {layer}")
    # all texts as one ragged batch, both poolings from one forward pass
    h = model.forward(ids, offsets, ws, 2)
    for pooling in ("cls", "mean"):
        check_rows(model.pool(h, offsets, pooling, True), golden[pooling], f"{isa} {pooling}")


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_engine_encode_and_embed_match_goldens(case, pooling, minilm, bge):
    folder, golden = case
    engine = minilm if folder == minilm.folder else bge
    texts = list(golden["texts"])
    check_rows(engine.encode(texts, pooling=pooling), golden[pooling], f"encode {pooling}")
    reply = engine.embed({"text": texts, "pooling": pooling})
    check_rows(np.array(reply["data"], np.float32), golden[pooling], f"embed {pooling}")
