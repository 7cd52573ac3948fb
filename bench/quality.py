"""Quality benchmark: how close do the bf16 and int8 engines stay to bge-engine fp32?

On the same texts (bench/sentences.txt's 256 sentences + 50 longer varied texts, from
bench/int8_scheme_study.py, + SHORT: 60 texts of one to three words), with the same token
ids, each engine's embeddings are compared with bge-engine fp32's, for both poolings (CLS
and mean), and separately on the short texts alone:

  - bge-engine bf16: `Engine(folder, dtype="bf16")` (bar: min cosine >= 0.9999);
  - PyTorch bf16 autocast: transformers BertModel under `torch.autocast("cpu",
    torch.bfloat16)`, the peer the bf16 issue names;
  - bge-engine int8: `Engine(folder, dtype="int8")` (a row says so where the build lacks it);
  - the int8 scheme bench/int8_scheme_study.py recommends, simulated in numpy there (exact
    integer arithmetic), labelled "simulated", until the engine implements it;
  - ONNX Runtime dynamic int8: BertModel exported with torch.onnx (opset 17), then
    `quantize_dynamic(weight_type=QInt8, per_channel=True)`;
  - CTranslate2 int8: `TransformersConverter` + `Encoder(compute_type="int8")`.

Per engine: min and mean cosine to fp32, and the share of texts whose nearest neighbour among
the others (by cosine) is the same as with fp32 embeddings ("clear": the same, over the texts
whose fp32 nearest neighbour leads the runner-up by >= 0.001 in cosine). The fp32 runs of the peers are
listed too, as a check of the pipeline (they should sit at cosine ~1). A peer whose package is
missing gets a row saying so. Targets: int8 min cosine >= 0.999 and same NN >= 99 %; bf16 min
cosine >= 0.9999 (CONTRACT.md), on every text, short ones included.

    python bench/quality.py                       # all-MiniLM-L6-v2 and the synthetic bge-small
    python bench/quality.py --model DIR           # any BERT folder (Hugging Face layout)

Writes bench/results/quality.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))

import int8_scheme_study as study  # noqa: E402

TARGET_MIN_COS = 0.999
TARGET_MIN_COS_BF16 = 0.9999
TARGET_SAME_NN = 0.99
BATCH = 32
# Texts of one to three words (bench/int8_scheme_study.py): a handful of tokens each, where
# the [CLS] and [SEP] rows make up most of a mean pooling.
SHORT = study.SHORT_TEXTS


# -- helpers -----------------------------------------------------------------------------------

def _pool(hidden: np.ndarray, mask: np.ndarray, pooling: str) -> np.ndarray:
    """CLS row or masked mean of a padded (B, L, H) batch, L2-normalised."""
    if pooling == "cls":
        v = hidden[:, 0].astype(np.float64)
    else:
        m = mask[..., None].astype(np.float64)
        v = (hidden * m).sum(1) / m.sum(1)
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def _padded_batches(all_ids: List[np.ndarray]):
    """Yields (indices, ids (B, L) int64, mask (B, L) int64), texts sorted by length."""
    order = sorted(range(len(all_ids)), key=lambda i: len(all_ids[i]))
    for s in range(0, len(order), BATCH):
        idx = order[s:s + BATCH]
        L = max(len(all_ids[i]) for i in idx)
        ids = np.zeros((len(idx), L), np.int64)
        mask = np.zeros((len(idx), L), np.int64)
        for r, i in enumerate(idx):
            ids[r, :len(all_ids[i])] = all_ids[i]
            mask[r, :len(all_ids[i])] = 1
        yield idx, ids, mask


# -- engines: each returns a callable all_ids -> (n, H) embeddings -----------------------------

def onnx_runner(folder: Path, work: Path, pooling: str, threads: int, int8: bool) -> Callable:
    import onnxruntime as ort
    import torch
    from transformers import BertModel

    fp32 = work / "model.onnx"
    if not fp32.is_file():
        class Wrapped(torch.nn.Module):
            def __init__(self, m):
                super().__init__()
                self.m = m

            def forward(self, input_ids, attention_mask, token_type_ids):
                return self.m(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).last_hidden_state

        model = BertModel.from_pretrained(str(folder), add_pooling_layer=False,
                                          attn_implementation="eager").eval()
        x = torch.ones((2, 8), dtype=torch.int64)
        axes = {0: "batch", 1: "tokens"}
        torch.onnx.export(Wrapped(model), (x, x, torch.zeros_like(x)), str(fp32),
                          input_names=["input_ids", "attention_mask", "token_type_ids"],
                          output_names=["last_hidden_state"],
                          dynamic_axes={"input_ids": axes, "attention_mask": axes,
                                        "token_type_ids": axes, "last_hidden_state": axes},
                          opset_version=17, dynamo=False)
    path = fp32
    if int8:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        path = work / "model.int8.onnx"
        if not path.is_file():
            quantize_dynamic(str(fp32), str(path), weight_type=QuantType.QInt8, per_channel=True)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])

    def run(all_ids):
        rows = {}
        for idx, ids, mask in _padded_batches(all_ids):
            h = sess.run(None, {"input_ids": ids, "attention_mask": mask,
                                "token_type_ids": np.zeros_like(ids)})[0]
            for r, v in zip(idx, _pool(h, mask, pooling)):
                rows[r] = v
        return np.stack([rows[i] for i in range(len(all_ids))])

    return run


def ct2_runner(folder: Path, work: Path, pooling: str, threads: int, int8: bool) -> Callable:
    import ctranslate2

    path = work / "ct2"
    if not (path / "model.bin").is_file():
        ctranslate2.converters.TransformersConverter(str(folder)).convert(str(path), force=True)
    enc = ctranslate2.Encoder(str(path), device="cpu", compute_type="int8" if int8 else "float32",
                              intra_threads=threads)

    def run(all_ids):
        rows = {}
        for idx, ids, mask in _padded_batches(all_ids):
            batch = [all_ids[i].tolist() for i in idx]
            h = np.array(enc.forward_batch(batch).last_hidden_state)
            for r, v in zip(idx, _pool(h, mask, pooling)):
                rows[r] = v
        return np.stack([rows[i] for i in range(len(all_ids))])

    return run


def torch_bf16_runner(folder: Path, pooling: str, threads: int) -> Callable:
    """PyTorch fp32 weights run under bf16 autocast (matmuls in bf16 on the CPU)."""
    import torch
    from transformers import BertModel

    torch.set_num_threads(threads)
    model = BertModel.from_pretrained(str(folder), add_pooling_layer=False,
                                      attn_implementation="eager").eval()

    def run(all_ids):
        rows = {}
        for idx, ids, mask in _padded_batches(all_ids):
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
                t = torch.from_numpy(ids)
                h = model(input_ids=t, attention_mask=torch.from_numpy(mask),
                          token_type_ids=torch.zeros_like(t)).last_hidden_state
            for r, v in zip(idx, _pool(h.float().numpy(), mask, pooling)):
                rows[r] = v
        return np.stack([rows[i] for i in range(len(all_ids))])

    return run


def bge_engine_of(folder: Path, threads: int, dtype: str):
    """bge-engine's own Engine of `dtype`, or None where this build does not offer it."""
    import bge_engine

    try:
        return bge_engine.Engine(str(folder), dtype=dtype, threads=threads)
    except ValueError:
        return None


# -- the benchmark -----------------------------------------------------------------------------

def measure(name: str, folder: Path, threads: int, simulate: bool = True) -> List[Dict]:
    import bge_engine

    texts = study.eval_texts() + SHORT
    short = np.arange(len(texts) - len(SHORT), len(texts))
    fp32 = bge_engine.Engine(str(folder), threads=threads)
    all_ids = fp32._tokenize(texts)  # the engine's ids: specials, truncation to 512
    ours = {d: bge_engine_of(folder, threads, d) for d in ("bf16", "int8")}
    sim = study.SimulatedInt8Engine(folder) if simulate else None
    rows: List[Dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for pooling in ("cls", "mean"):
            ref = fp32.encode(texts, pooling=pooling)

            def add(engine: str, fn: Optional[Callable], note: str = ""):
                row = {"model": name, "engine": engine, "pooling": pooling,
                       "texts": len(texts), "short_texts": len(SHORT)}
                if fn is None:
                    row["error"] = note
                else:
                    t = time.time()
                    try:
                        emb = fn()
                    except Exception as exc:  # a peer failing is a row, not a crash
                        row["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
                    else:
                        row.update(study.compare(ref, emb))
                        row["short_min_cos"] = study.compare(ref[short], emb[short])["min_cos"]
                        row["seconds"] = round(time.time() - t, 2)
                rows.append(row)
                print(_row_md(row), flush=True)

            print(f"\n## {name}, {pooling} pooling ({len(texts)} texts, {len(SHORT)} of one "
                  "to three words)\n")
            print("| engine | min cosine | min cosine, 1-3 words | mean cosine | same NN % | "
                  "same NN, clear % |\n|---|---|---|---|---|---|", flush=True)
            for dtype in ("bf16", "int8"):
                e = ours[dtype]
                if e is None:
                    add(f"bge-engine {dtype}", None, f"not in this build (no dtype={dtype!r})")
                else:
                    add(f"bge-engine {dtype}", lambda e=e: e.encode(texts, pooling=pooling))
            try:
                import torch  # noqa: F401
                import transformers  # noqa: F401
                have_torch = ""
            except ImportError as exc:
                have_torch = f"not installed ({exc.name})"
            if have_torch:
                add("PyTorch bf16 autocast", None, have_torch)
            else:
                add("PyTorch bf16 autocast",
                    lambda: torch_bf16_runner(folder, pooling, threads)(all_ids))
            if sim is not None:
                add(f"bge-engine int8, recommended scheme (simulated: {sim.config.name})",
                    lambda: sim.encode(texts, pooling))
            try:
                import onnxruntime  # noqa: F401
                import torch  # noqa: F401, F811
                import transformers  # noqa: F401, F811
                have_ort = ""
            except ImportError as exc:
                have_ort = f"not installed ({exc.name})"
            for int8 in (True, False):
                label = "onnxruntime " + ("int8 (dynamic, per-channel)" if int8 else
                                          "fp32 (pipeline check)")
                if have_ort:
                    add(label, None, have_ort)
                else:
                    add(label, lambda: onnx_runner(folder, work, pooling, threads, int8)(all_ids))
            try:
                import ctranslate2  # noqa: F401
                have_ct2 = ""
            except ImportError:
                have_ct2 = "not installed (pip install ctranslate2)"
            for int8 in (True, False):
                label = "ctranslate2 " + ("int8" if int8 else "fp32 (pipeline check)")
                if have_ct2:
                    add(label, None, have_ct2)
                else:
                    add(label, lambda: ct2_runner(folder, work, pooling, threads, int8)(all_ids))
    return rows


def _row_md(r: Dict) -> str:
    if "error" in r:
        return f"| {r['engine']} | - | - | - | {r['error']} | - |"
    bf16 = "bf16" in r["engine"]  # its bar is the cosine alone (CONTRACT.md)
    bar = TARGET_MIN_COS_BF16 if bf16 else TARGET_MIN_COS
    ok = min(r["min_cos"], r["short_min_cos"]) >= bar and (bf16 or r["same_nn"] >= TARGET_SAME_NN)
    mark = f" (meets {bar})" if ok and "check" not in r["engine"] else ""
    return (f"| {r['engine']} | {r['min_cos']:.5f}{mark} | {r['short_min_cos']:.5f} | "
            f"{r['mean_cos']:.6f} | {100 * r['same_nn']:.1f} | {100 * r['same_nn_clear']:.1f} |")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="both",
                   help="'minilm', 'synthetic', 'both' (default) or a BERT folder")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=HERE / "results" / "quality.json")
    p.add_argument("--no-sim", action="store_true",
                   help="skip the numpy simulation of the study's recommended int8 scheme")
    a = p.parse_args(argv)
    rows: List[Dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        if a.model in ("minilm", "synthetic", "both"):
            models = study.model_folders(a.model, Path(tmp))
        else:
            models = [(Path(a.model).name, Path(a.model))]
        for name, folder in models:
            rows += measure(name, folder, a.threads, simulate=not a.no_sim)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({
        "targets": {"min_cos": TARGET_MIN_COS, "min_cos_bf16": TARGET_MIN_COS_BF16,
                    "same_nn": TARGET_SAME_NN},
        "host": {"machine": platform.machine(), "python": platform.python_version()},
        "rows": rows}, indent=1) + "\n")
    print(f"\nwrote {a.out}")


if __name__ == "__main__":
    main()
