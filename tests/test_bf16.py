"""dtype="bf16" end to end: the quality bar of CONTRACT.md (min cosine >= 0.9999 to fp32 on
every text, both poolings) on the real all-MiniLM-L6-v2 weights and the synthetic bge-small
checkpoint, on every ISA level this host can run (the goldens of tests/golden/, made by
PyTorch fp32), short texts of one to three words included; the weights packed once in
bf16 (half the bytes of fp32); the kernels named by cpu_info()."""

from __future__ import annotations

import numpy as np
import pytest

import bge_engine
from bge_engine import _kernels
from bge_engine.loader import MatmulLoad
from bge_engine.model import BertModel
from bge_engine.weights import MATMULS, load_checkpoint

MIN_COSINE = 0.9999
# avxvnni, vnni, amx: the bf16 GEMM of the level below; dotprod, i8mm: neon's
LEVELS = ["ref", "avx2", "avx512", "avx512bf16", "neon", "neonbf16"]
SHORT = ["a", "hello", "orange", "cloud", "the dog", "quick fox", "rain today", "Zürich",
         "東京", "🍊", "ok", "yes!", "no", "search", "vector index", "red car", "big data",
         "New York City", "machine learning model", "how are you", "open the door",
         "good morning everyone", "error 404", "the lazy dog", "state of the art", "3.14",
         "last train home", "café", "I", "is it raining"]


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module", params=["minilm", "bge"])
def case(request, minilm_path, synthetic_path, golden_minilm, golden_bge):
    if request.param == "minilm":
        return minilm_path, golden_minilm
    return synthetic_path, golden_bge


@pytest.mark.parametrize("isa", LEVELS)
def test_goldens_at_the_bf16_bar(case, isa):
    """Every golden text in one ragged batch, both poolings, against PyTorch fp32."""
    if isa not in _kernels.usable_isas():
        pytest.skip(f"this host or build lacks {isa}")
    folder, golden = case
    ckpt, k = load_checkpoint(folder), _kernels.Kernels(isa)
    model = BertModel(ckpt, k, MatmulLoad(k, ckpt, bf16=MATMULS))
    assert all(layer.qkv.w.dtype == layer.down.w.dtype == "bf16" for layer in model.layers)
    ids, offsets = golden["ids"], golden["offsets"]
    keep = np.arange(offsets.shape[0] - 1)
    if isa == "ref":  # the scalar reference: the texts up to 64 tokens (the SIMD levels
        # equal it bit for bit, tests/test_kernels_bgemm.py)
        keep = keep[np.diff(offsets) <= 64]
        ids = np.concatenate([ids[offsets[i]:offsets[i + 1]] for i in keep])
        offsets = np.concatenate([[0], np.cumsum(np.diff(golden["offsets"])[keep])])
        offsets = offsets.astype(np.int32)
    ws = model.new_workspace()
    h = model.forward(ids, offsets, ws, 2)
    for pooling in ("cls", "mean"):
        cos = cosines(model.pool(h, offsets, pooling, True), golden[pooling][keep])
        assert cos.min() >= MIN_COSINE, f"{isa} {pooling}: min cosine {cos.min():.6f}"


@pytest.fixture(scope="module")
def _engine_pairs():
    pairs: dict = {}
    yield pairs
    pairs.clear()


@pytest.fixture
def engines(request, _engine_pairs):
    """engines(name): the (fp32, bf16) engines of checkpoint "minilm" or "bge", made once per
    module when first asked for (the synthetic checkpoint is written only then: minutes under
    qemu, where .ci/aarch64 runs the MiniLM ones alone)."""
    def get(name):
        if name not in _engine_pairs:
            fixture = {"minilm": "minilm_path", "bge": "synthetic_path"}[name]
            p = str(request.getfixturevalue(fixture))
            _engine_pairs[name] = (bge_engine.Engine(p), bge_engine.Engine(p, dtype="bf16"))
        return _engine_pairs[name]
    return get


@pytest.mark.parametrize("pooling", ["mean", "cls"])
@pytest.mark.parametrize("name", ["minilm", "bge"])
def test_short_and_golden_texts_against_our_fp32(engines, golden_minilm, name, pooling):
    fp32, bf16 = engines(name)
    texts = SHORT + [str(t) for t in golden_minilm["texts"]]
    cos = cosines(bf16.encode(texts, pooling=pooling), fp32.encode(texts, pooling=pooling))
    worst = int(np.argmin(cos))
    assert cos.min() >= MIN_COSINE, f"{texts[worst]!r}: cosine {cos[worst]:.6f}"
    assert cos.max() < 1.0 or name == "bge", "bf16 gave the fp32 bits: is it running?"


def test_weights_are_packed_once_in_half_the_bytes(engines):
    fp32, bf16 = engines("minilm")
    for layer in bf16._model.layers:
        for name in MATMULS:
            assert getattr(layer, name).w.dtype == "bf16"
    ratio = bf16._model.layers[0].qkv.w.nbytes / fp32._model.layers[0].qkv.w.nbytes
    assert 0.49 < ratio < 0.52


def test_cpu_info_names_the_bf16_kernel():
    kernels = bge_engine.cpu_info()["kernels"]
    assert kernels["bf16_gemm"].startswith("bge_bf16_gemm")
    isa = _kernels.Kernels().isa
    if "avx512bf16" in _kernels.usable_isas() and isa in ("avx512bf16", "amx"):
        assert kernels["bf16_gemm"] == "bge_bf16_gemm_8x48__avx512bf16"
    if isa == "neonbf16":  # AArch64 with FEAT_BF16: BFDOT
        assert kernels["bf16_gemm"] == "bge_bf16_gemm_8x8__neonbf16"
    elif isa in ("neon", "dotprod", "i8mm"):  # other AArch64: the NEON emulation
        assert kernels["bf16_gemm"] == "bge_bf16_gemm_8x8__neon"


def test_dtype_is_validated(minilm_path):
    with pytest.raises(ValueError, match="dtype"):
        bge_engine.Engine(str(minilm_path), dtype="bfloat16")
