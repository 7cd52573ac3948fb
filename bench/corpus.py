"""Corpus benchmarks: `bge-engine encode` against in-process Engine.encode, its peak RSS at
two corpus sizes, and Ray Data (2 actors x 1 CPU) against one 2-thread Engine.

    python bench/corpus.py                       # the issue's sizes: 100,000 / 10,000 / 20,000
    python bench/corpus.py --texts 4000 --small 2000 --large 20000 --ray-texts 4000 --rounds 3

Texts are the benchmark sentences (bench/sentences.txt) repeated with a counter ("... 1234"),
written to a .txt; the model is the synthetic bge-small checkpoint the tests generate
(tests/synthetic.py: 12 layers, 384 wide, seeded weights), so no download is needed.

- throughput: per round, `bge-engine encode corpus.txt -o out.parquet` in a subprocess (its
  encode phase, from the first read to the rename, as its last stderr line reports it) and
  Engine.encode of the same texts in a fresh subprocess (the encode call alone); the two
  alternate, medians over rounds. Model loading is excluded from both.
- peak RSS: the ru_maxrss of `bge-engine encode` subprocesses at --small and --large texts.
- Ray: ray.init(num_cpus=2) (timed: start-up), then per round a 2-row warm-up run (the actor
  pool's start and each actor's Engine load) and a run on --ray-texts rows, both through
  embed_dataset(num_actors=2, cpus_per_actor=1) from in-memory Arrow blocks; throughput is
  rows / (run - warm-up). The peer is Engine(threads=2).encode of the same texts in this
  process, alternated with the Ray runs.

Medians over --rounds. Share the machine with nothing else if you can: say what else ran.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))


def texts(n: int) -> list:
    base = (REPO / "bench" / "sentences.txt").read_text(encoding="utf-8").splitlines()
    return [f"{base[i % len(base)]} {i}" for i in range(n)]


def write_txt(path: Path, n: int) -> Path:
    path.write_text("".join(t + "\n" for t in texts(n)), encoding="utf-8")
    return path


def run_cli(model: str, src: Path, dst: Path, dtype: str, threads: int) -> dict:
    """One `bge-engine encode` subprocess: its encode phase (s), wall time and peak RSS."""
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "bge_engine", "encode", str(src), "-o",
                             str(dst), "--model", model, "--dtype", dtype, "--threads",
                             str(threads)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"bge-engine encode failed: {err}")
    m = re.search(r"encoded (\d+) rows in ([\d.]+) s", err)
    return {"rows": int(m.group(1)), "seconds": float(m.group(2)), "wall": wall,
            "peak_rss_mb": usage.ru_maxrss / 1024}


IN_PROCESS = """
import json, sys, time, bge_engine
texts = open(sys.argv[1], encoding="utf-8").read().splitlines()
engine = bge_engine.Engine(sys.argv[2], dtype=sys.argv[3], threads=int(sys.argv[4]))
started = time.perf_counter()
engine.encode(texts)
print(json.dumps({"rows": len(texts), "seconds": time.perf_counter() - started}))
"""


def run_in_process(model: str, src: Path, dtype: str, threads: int) -> dict:
    out = subprocess.run([sys.executable, "-c", IN_PROCESS, str(src), model, dtype,
                          str(threads)], capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def bench_cli(model: str, work: Path, args) -> dict:
    src = write_txt(work / "corpus.txt", args.texts)
    cli, lib = [], []
    for r in range(args.rounds):
        cli.append(run_cli(model, src, work / "out.parquet", args.dtype, args.threads))
        lib.append(run_in_process(model, src, args.dtype, args.threads))
        print(f"  round {r + 1}: encode {cli[-1]['rows'] / cli[-1]['seconds']:.1f} texts/s, "
              f"in-process {lib[-1]['rows'] / lib[-1]['seconds']:.1f} texts/s", flush=True)
    cli_rate = statistics.median(c["rows"] / c["seconds"] for c in cli)
    lib_rate = statistics.median(c["rows"] / c["seconds"] for c in lib)
    return {"texts": args.texts, "encode_texts_per_s": cli_rate,
            "in_process_texts_per_s": lib_rate, "ratio": cli_rate / lib_rate,
            "ratios": [c["seconds"] and (c["rows"] / c["seconds"]) / (l["rows"] / l["seconds"])
                       for c, l in zip(cli, lib)]}


def bench_rss(model: str, work: Path, args) -> dict:
    out = {}
    for n in (args.small, args.large):
        src = write_txt(work / f"rss{n}.txt", n)
        r = run_cli(model, src, work / f"rss{n}.parquet", args.dtype, args.threads)
        out[n] = r["peak_rss_mb"]
        print(f"  {n} texts: peak RSS {r['peak_rss_mb']:.1f} MB "
              f"({r['rows'] / r['seconds']:.1f} texts/s)", flush=True)
        (work / f"rss{n}.parquet").unlink()
    return {"peak_rss_mb": out, "growth_mb": out[args.large] - out[args.small]}


def bench_ray(model: str, args) -> dict:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import pyarrow as pa
    import ray

    import bge_engine
    import bge_engine.ray as ber

    started = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    startup = time.perf_counter() - started
    corpus = texts(args.ray_texts)
    table = pa.table({"id": list(range(len(corpus))), "text": corpus})
    size = -(-table.num_rows // 16)
    blocks = [table.slice(i, size) for i in range(0, table.num_rows, size)]
    warm_blocks = [table.slice(0, 2)]
    engine = bge_engine.Engine(model, dtype=args.dtype, threads=2)

    def ray_run(parts) -> float:
        t = time.perf_counter()
        ds = ber.embed_dataset(ray.data.from_arrow(parts), model=model, dtype=args.dtype,
                               num_actors=2, cpus_per_actor=1, batch_size=256)
        ds.materialize()
        return time.perf_counter() - t

    rays, warms, peers = [], [], []
    for r in range(args.rounds):
        warms.append(ray_run(warm_blocks))
        rays.append(ray_run(blocks))
        t = time.perf_counter()
        engine.encode(corpus)
        peers.append(time.perf_counter() - t)
        print(f"  round {r + 1}: ray {rays[-1]:.1f} s (pool start {warms[-1]:.1f} s), "
              f"one 2-thread Engine {peers[-1]:.1f} s", flush=True)
    ray.shutdown()
    ray_rate = statistics.median(len(corpus) / (t - w) for t, w in zip(rays, warms))
    peer_rate = statistics.median(len(corpus) / t for t in peers)
    return {"texts": len(corpus), "ray_init_s": startup,
            "pool_start_s": statistics.median(warms),
            "ray_texts_per_s": ray_rate, "engine_texts_per_s": peer_rate,
            "ratio": ray_rate / peer_rate}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="a model folder (default: the synthetic one)")
    p.add_argument("--dtype", default="fp32")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--texts", type=int, default=100_000, help="texts in the throughput runs")
    p.add_argument("--small", type=int, default=10_000, help="texts in the small RSS run")
    p.add_argument("--large", type=int, default=100_000, help="texts in the large RSS run")
    p.add_argument("--ray-texts", type=int, default=20_000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--skip", default="", help="comma-separated parts to skip: cli,rss,ray")
    p.add_argument("--json", default=None, help="write the results here too")
    args = p.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    with tempfile.TemporaryDirectory(prefix="bge-corpus-bench-") as tmp:
        work = Path(tmp)
        model = args.model
        if model is None:
            from synthetic import write_synthetic_bge

            model = str(write_synthetic_bge(work / "bge-synthetic", seed=0))
        results = {"dtype": args.dtype, "threads": args.threads, "rounds": args.rounds,
                   "load_average": os.getloadavg()}
        if "cli" not in skip:
            print(f"bge-engine encode vs in-process, {args.texts} texts:", flush=True)
            results["throughput"] = bench_cli(model, work, args)
        if "rss" not in skip:
            print(f"peak RSS, {args.small} vs {args.large} texts:", flush=True)
            results["rss"] = bench_rss(model, work, args)
        if "ray" not in skip:
            print(f"Ray 2 actors x 1 CPU vs one 2-thread Engine, {args.ray_texts} texts:",
                  flush=True)
            results["ray"] = bench_ray(model, args)
        results["load_average_after"] = os.getloadavg()
    print(json.dumps(results, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
