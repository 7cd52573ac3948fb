"""End-to-end comparison of bge-engine with the engines users pick instead, in one run, on
the same bge-small-shaped checkpoint:

  - ONNX Runtime fp32: the model exported with torch.onnx (opset 17), default session
    optimisations (ORT_ENABLE_ALL), fed with `tokenizers` and padding to the longest text;
  - PyTorch fp32: transformers BertModel, eager, inference mode;
  - PyTorch bf16: the same under `torch.autocast("cpu", dtype=torch.bfloat16)` (--dtype bf16);
  - ONNX Runtime int8: `quantize_dynamic`, QInt8, per channel (--dtype int8 and bf16).

Each engine runs in its own process (thread pools of different libraries never share one),
with the same thread count. Measured: batch-1 latency at 8, 16, 32, 128 and 512 tokens;
throughput on the 256 sentences of bench/sentences.txt in batches of 32, fed in the caller's
order (as fastembed feeds them) and length-sorted; peak RSS; cold start (process start to
first vector).

Interleaved: the engines' processes are started together and stay loaded; the parent then
asks each in turn for one measure (one text length, or one pass over the sentences), so the
engines of a comparison are measured seconds apart, not minutes. On a shared machine whose
speed drifts by 1.5-3x over minutes, measuring one engine whole and then the next put whole
drifts between them. --rounds N repeats the sweep N times (the first engine of each round
rotates; a short pause before each measure lets the last engine's spinning threads go idle),
cold starts alternate too, and the table gives medians over rounds and the median (and
range) of each round's ratios. Results go to bench/results/ as JSON and a markdown table.

    pip install -e ".[bench]"
    python bench/compare.py                     # the synthetic bge-small checkpoint, 1 and 2 threads
    python bench/compare.py --model DIR --threads 2 --rounds 8
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "tests"))

# The environment this script was started with, before importing bge_engine sets its own
# defaults (GOMP_SPINCOUNT, OPENBLAS_THREAD_TIMEOUT) in it: the peers run in this one, as they
# would in the user's program, not in ours.
START_ENV = dict(os.environ)

from bge_engine import bench  # noqa: E402

# The engines compared for each dtype; the first is ours, the ratios are against the others.
LINEUPS = {
    "fp32": ("bge-engine", "onnxruntime", "pytorch"),
    "int8": ("bge-engine-int8", "onnxruntime-int8", "bge-engine"),
    "bf16": ("bge-engine-bf16", "bge-engine", "onnxruntime-int8", "pytorch-bf16"),
    # ours only: bf16 against fp32, e.g. under BGE_ISA=avx2 (the emulated bf16 GEMM)
    "bf16-vs-fp32": ("bge-engine-bf16", "bge-engine"),
}
ENGINES = ("bge-engine", "bge-engine-int8", "bge-engine-bf16", "onnxruntime",
           "onnxruntime-int8", "pytorch", "pytorch-bf16")
LABELS = {"bge-engine": "bge-engine fp32", "bge-engine-int8": "bge-engine int8",
          "bge-engine-bf16": "bge-engine bf16",
          "onnxruntime": "ONNX Runtime fp32", "onnxruntime-int8": "ONNX Runtime int8",
          "pytorch": "PyTorch fp32", "pytorch-bf16": "PyTorch bf16 autocast"}


# -- workers: each runs in a fresh process and prints one JSON line --------------------------

def _pool(hidden, mask, pooling):
    """CLS or masked mean of a padded (B, L, H) batch, then L2 normalised (numpy)."""
    import numpy as np

    if pooling == "cls":
        v = hidden[:, 0]
    else:
        m = mask[..., None].astype(hidden.dtype)
        v = (hidden * m).sum(1) / m.sum(1)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _padded(tokenizer, texts):
    import numpy as np

    enc = tokenizer.encode_batch(texts)
    L = max(len(e.ids) for e in enc)
    ids = np.zeros((len(enc), L), np.int64)
    mask = np.zeros((len(enc), L), np.int64)
    for i, e in enumerate(enc):
        ids[i, :len(e.ids)] = e.ids
        mask[i, :len(e.ids)] = 1
    return ids, mask


def _peer_embedder(engine, folder, onnx_path, threads, pooling):
    """A function texts -> normalised (n, H) vectors for a peer engine, which runs in
    START_ENV: its libraries (PyTorch's own libgomp among them) read the environment when
    they load, below."""
    os.environ.clear()
    os.environ.update(START_ENV)
    import numpy as np
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(folder) / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(512)
    if engine.startswith("onnxruntime"):
        import onnxruntime as ort

        if engine == "onnxruntime-int8":
            onnx_path = str(onnx_path).replace(".onnx", ".int8.onnx")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])

        def embed(texts):
            ids, mask = _padded(tok, texts)
            (h,) = sess.run(["last_hidden_state"], {"input_ids": ids, "attention_mask": mask,
                                                    "token_type_ids": np.zeros_like(ids)})
            return _pool(h, mask, pooling)
        return embed
    import torch
    from transformers import BertModel

    torch.set_num_threads(threads)
    model = BertModel.from_pretrained(folder, attn_implementation="eager").eval()

    bf16 = engine == "pytorch-bf16"

    def embed(texts):
        ids, mask = _padded(tok, texts)
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            h = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                      token_type_ids=torch.zeros_like(torch.from_numpy(ids))).last_hidden_state
        return _pool(h.float().numpy(), mask, pooling)
    return embed


REPLY = "@@ "  # marks the worker's replies among whatever else a library prints


def serve(embed, sentences, commands, reply):
    """A worker's loop: for each command (a dict), times embed and calls reply(dict).

    {"op": "latency", "n": N, "calls": k}: k calls on one text of N tokens, after one
    untimed call; {"op": "throughput", "order": "caller" | "sorted", "calls": k}: k passes
    over the sentences in batches of 32 (sorted by length for "sorted"), after one untimed
    batch; replies {"seconds": [...]}. {"op": "rss"}: replies {"peak_rss_mb": ...}."""
    by_order = {"caller": bench.batches(sentences, bench.BATCH),
                "sorted": bench.batches(sorted(sentences, key=len), bench.BATCH)}
    for cmd in commands:
        if cmd["op"] == "rss":
            reply({"peak_rss_mb": bench.peak_rss_mb()})
            continue
        if cmd["op"] == "latency":
            text = bench.text_of_tokens(cmd["n"])
            fn = lambda: embed([text])  # noqa: E731
            fn()
        else:
            batches = by_order[cmd["order"]]
            fn = lambda: [embed(list(b)) for b in batches]  # noqa: E731
            embed(list(batches[0]))
        times = []
        for _ in range(cmd["calls"]):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        reply({"seconds": times})


def worker(engine, folder, onnx_path, threads, pooling):
    """Loads one engine, says it is ready, then serves the parent's commands (JSON lines on
    stdin) until stdin closes."""
    if engine.startswith("bge-engine"):
        import bge_engine

        e = bge_engine.Engine(folder, threads=threads, dtype=_dtype(engine))
        embed = lambda texts: e.encode(texts, pooling=pooling)  # noqa: E731
    else:
        embed = _peer_embedder(engine, folder, onnx_path, threads, pooling)

    def reply(d):
        print(REPLY + json.dumps(d), flush=True)

    reply({"ready": True})
    serve(embed, bench.sentences(), (json.loads(line) for line in sys.stdin), reply)


def cold_start_code(engine, folder, onnx_path, threads, pooling):
    """What a cold start runs: for bge-engine the few lines a user writes; a peer goes
    through _first_vector (this module's imports, bge_engine's among them, count against it:
    numpy, which it needs anyway, is most of them)."""
    if engine.startswith("bge-engine"):
        return ("import bge_engine; bge_engine.Engine(%r, threads=%d, dtype=%r).encode(%r, "
                "pooling=%r)" % (folder, threads, _dtype(engine), "hello", pooling))
    return ("import sys; sys.path.insert(0, %r); import compare; "
            "compare._first_vector(%r, %r, %r, %d, %r)"
            % (str(HERE), engine, folder, str(onnx_path), threads, pooling))


def _first_vector(engine, folder, onnx_path, threads, pooling):
    """Loads an engine and embeds one text: what a cold start measures."""
    if engine.startswith("bge-engine"):
        import bge_engine

        bge_engine.Engine(folder, threads=threads, dtype=_dtype(engine)).encode(
            "hello", pooling=pooling)
    else:
        _peer_embedder(engine, folder, onnx_path, threads, pooling)(["hello"])


def _dtype(engine):
    return engine.rsplit("-", 1)[1] if engine.endswith(("-int8", "-bf16")) else "fp32"


# -- the driver ------------------------------------------------------------------------------

def export_onnx(folder, path):
    """Exports the checkpoint's BertModel to ONNX, opset 17, dynamic batch and length."""
    import torch
    from transformers import BertModel

    class Encoder(torch.nn.Module):
        """BertModel with keyword inputs and the last hidden state as its one output."""

        def __init__(self):
            super().__init__()
            self.bert = BertModel.from_pretrained(folder, attn_implementation="eager").eval()

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.bert(input_ids=input_ids, attention_mask=attention_mask,
                             token_type_ids=token_type_ids).last_hidden_state

    ids = torch.ones((2, 16), dtype=torch.long)
    dyn = {0: "batch", 1: "length"}
    with torch.no_grad():
        torch.onnx.export(
            Encoder(), (ids, torch.ones_like(ids), torch.zeros_like(ids)), str(path),
            input_names=["input_ids", "attention_mask", "token_type_ids"],
            output_names=["last_hidden_state"], opset_version=17,
            dynamic_axes={"input_ids": dyn, "attention_mask": dyn, "token_type_ids": dyn,
                          "last_hidden_state": dyn}, dynamo=False)


SETTLE = 0.2  # seconds of quiet before each measure: the last engine's threads stop spinning


class Worker:
    """One engine's process (see worker), asked for one measure at a time."""

    def __init__(self, engine, folder, onnx_path, threads, pooling):
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", engine, "--model",
               str(folder), "--onnx", str(onnx_path), "--threads", str(threads), "--pooling",
               pooling]
        self.engine = engine
        self.err = tempfile.TemporaryFile(mode="w+")  # progress bars, warnings; shown on failure
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.err, text=True, bufsize=1, env=START_ENV)

    def read(self):
        """The worker's next reply; raises with its stderr if it exited instead."""
        for line in self.proc.stdout:
            if line.startswith(REPLY):
                return json.loads(line[len(REPLY):])
        self.err.seek(0)
        raise RuntimeError(f"the {self.engine} worker exited ({self.proc.wait()}):\n"
                           + self.err.read()[-3000:])

    def ask(self, cmd):
        time.sleep(SETTLE)
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self.read()

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=120)
        self.err.close()


def rotated(lineup, k):
    """The lineup starting at its k-th engine: round k's order, so each engine goes first
    as often as the others."""
    k %= len(lineup)
    return tuple(lineup[k:]) + tuple(lineup[:k])


def measure_rounds(lineup, folder, onnx_path, threads, pooling, rounds, n_sentences):
    """Every engine of the lineup on `threads` threads, interleaved (see the top of the file):
    a list of `rounds` dicts {engine: result}, the result as table() reads it."""
    workers = {e: Worker(e, folder, onnx_path, threads, pooling) for e in lineup}
    out = []
    try:
        for w in workers.values():
            w.read()  # ready: loaded
        for k in range(rounds):
            print(f"round {k + 1}/{rounds}, {threads} thread(s): "
                  + ", ".join(rotated(lineup, k)), file=sys.stderr)
            rd = {e: {"latency_s": {}} for e in lineup}
            for n in bench.LENGTHS:
                for e in rotated(lineup, k):
                    r = workers[e].ask({"op": "latency", "n": n, "calls": bench.repeats_for(n)})
                    rd[e]["latency_s"][str(n)] = statistics.median(r["seconds"])
            for key, order in (("throughput_caller", "caller"), ("throughput_sorted", "sorted")):
                for e in rotated(lineup, k):
                    r = workers[e].ask({"op": "throughput", "order": order, "calls": 1})
                    rd[e][key] = n_sentences / statistics.median(r["seconds"])
            for e in rotated(lineup, k):
                rd[e]["cold_start_s"] = bench.cold_start_seconds(
                    cold_start_code(e, folder, onnx_path, threads, pooling), repeats=1,
                    env=START_ENV)
            out.append(rd)
        for e, w in workers.items():
            rss = w.ask({"op": "rss"})["peak_rss_mb"]
            for rd in out:
                rd[e]["peak_rss_mb"] = rss
    finally:
        for w in workers.values():
            w.close()
    return out


def _measures(lineup):
    """(label, fmt, higher_is_better, value of one engine's result) for each table row."""
    rows = [(f"latency {n} tokens (ms)", "{:.2f}", False,
             lambda r, n=n: r["latency_s"][str(n)] * 1e3) for n in bench.LENGTHS]
    rows += [(f"throughput, {label} (sent/s)", "{:.1f}", True, lambda r, k=key: r[k])
             for key, label in (("throughput_caller", "caller's order"),
                                ("throughput_sorted", "length-sorted"))]
    rows += [("peak RSS (MB)", "{:.0f}", False, lambda r: r["peak_rss_mb"]),
             ("cold start (ms)", "{:.0f}", False, lambda r: r["cold_start_s"] * 1e3)]
    return rows


def table(results, threads_list, lineup):
    """The markdown table, with ratios of each peer to ours (> 1: ours is faster, smaller).

    With several rounds, each value is the median over rounds, and each ratio the median of
    the rounds' own ratios (within a round each measure is taken of every engine in turn),
    with the range of those ratios in brackets."""
    peers = lineup[1:]
    rounds = results["rounds"]
    lines = []
    for t in threads_list:
        head = " | ".join(LABELS[e] for e in lineup)
        ratio_head = " | ".join(f"{LABELS[p]} / ours" for p in peers)
        lines += [f"### {t} thread{'s' if t > 1 else ''}", "",
                  f"| measure | {head} | {ratio_head} |",
                  "|---" * (1 + len(lineup) + len(peers)) + "|"]
        for label, fmt, higher, value in _measures(lineup):
            per_round = [[value(rd[f"{e}/{t}"]) for e in lineup] for rd in rounds]
            medians = [statistics.median(v[i] for v in per_round) for i in range(len(lineup))]
            cells = []
            for i in range(1, len(lineup)):
                ratios = [(v[0] / v[i] if higher else v[i] / v[0]) for v in per_round]
                cell = f"{statistics.median(ratios):.2f}x"
                if len(ratios) > 1:
                    cell += f" ({min(ratios):.2f}-{max(ratios):.2f})"
                cells.append(cell)
            lines.append(f"| {label} | " + " | ".join(fmt.format(v) for v in medians) + " | "
                         + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None,
                   help="a checkpoint folder (default: the synthetic bge-small one, made here)")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--pooling", choices=("cls", "mean"), default="cls")
    p.add_argument("--dtype", choices=tuple(LINEUPS), default="fp32",
                   help="fp32: vs ONNX Runtime and PyTorch fp32; int8: vs ONNX Runtime int8 "
                        "(quantize_dynamic, QInt8, per channel) and our own fp32; bf16: vs our "
                        "own fp32, ONNX Runtime int8 and PyTorch bf16 autocast; bf16-vs-fp32: "
                        "our bf16 against our fp32 alone")
    p.add_argument("--rounds", type=int, default=5,
                   help="sweeps over every measure, engines interleaved within each; the "
                        "table gives medians and the median (and range) of each round's ratios")
    p.add_argument("--out", default=str(HERE / "results"))
    p.add_argument("--worker", choices=ENGINES, help=argparse.SUPPRESS)
    p.add_argument("--onnx", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.worker:
        worker(args.worker, args.model, args.onnx, args.threads[0], args.pooling)
        return 0

    tmp = Path(tempfile.mkdtemp(prefix="bge-bench-"))
    folder = args.model
    if folder is None:
        from synthetic import write_synthetic_bge

        folder = str(write_synthetic_bge(tmp / "bge-small-synthetic", seed=0))
    onnx_path = tmp / "model.onnx"
    print(f"exporting {folder} to ONNX (opset 17) ...", file=sys.stderr)
    export_onnx(folder, onnx_path)
    lineup = LINEUPS[args.dtype]
    if "onnxruntime-int8" in lineup:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(str(onnx_path), str(onnx_path).replace(".onnx", ".int8.onnx"),
                         weight_type=QuantType.QInt8, per_channel=True)
    results = {"model": folder, "date": time.strftime("%Y-%m-%d %H:%M"),
               "cpu": __import__("bge_engine").cpu_info()["cpu"],
               "isa": __import__("bge_engine").cpu_info()["isa"]}
    results["rounds"] = [{} for _ in range(args.rounds)]
    for t in args.threads:
        per_round = measure_rounds(lineup, folder, onnx_path, t, args.pooling, args.rounds,
                                   len(bench.sentences()))
        for rd, measured in zip(results["rounds"], per_round):
            rd.update({f"{e}/{t}": r for e, r in measured.items()})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"compare-{args.dtype}.json").write_text(json.dumps(results, indent=2))
    md = (f"# bge-engine vs peers\n\n{results['date']}, {results['cpu']}, bge-engine kernels: "
          f"{results['isa']}, model: {folder}\n\n" + table(results, args.threads, lineup))
    (out / f"compare-{args.dtype}.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
