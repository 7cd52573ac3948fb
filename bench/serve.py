"""bge-engine serve under load, beside infinity-emb and the in-process Engine, in one run on
the same checkpoint (the synthetic bge-small folder of tests/synthetic.py unless --model).

A closed-loop async load generator (aiohttp; every client sends its next request as soon as
its last reply is read; a fixed number of requests per measure; loopback only) drives each
server's OpenAI route (/v1/embeddings for ours, /embeddings for infinity-emb, float
vectors). Scenarios, on the 256 sentences of bench/sentences.txt:

  c16    16 clients, one sentence per request: sentences/s, p50 and p99 latency
  c1     1 client, one sentence per request: p50 latency
  c4x32  4 clients, 32 sentences per request: sentences/s

The in-process peers are Engine.encode in this process: all the sentences in batches of 32
(sentences/s, beside c16 and c4x32), and one sentence per call (p50, beside c1).

Both servers start before the first measure and stay up; each round measures every
scenario on each system in turn (the first system rotates), so the systems of a comparison
are measured seconds apart on a shared machine whose speed drifts. The table gives the
median over rounds; each server's RSS is read after the last round.

    pip install -e ".[server,bench]"
    python -m venv /work/venvs/infinity
    /work/venvs/infinity/bin/pip install "infinity-emb[server,torch]" torch==2.13.0
    python bench/serve.py --infinity /work/venvs/infinity/bin/infinity_emb --rounds 3
    python bench/serve.py --calibrate          # tokens/s of one forward pass by batch tokens
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "tests"))

START_ENV = dict(os.environ)  # the peers' environment, before bge_engine sets its defaults

SERVED = "bge"
C16_REQUESTS = 512
C1_REQUESTS = 256
C4X32_REQUESTS = 32


def sentences() -> list:
    return [s for s in (HERE / "sentences.txt").read_text(encoding="utf-8").splitlines()
            if s.strip()]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tree_rss(pid: int) -> int:
    """RSS of a process and its children, in bytes."""
    import psutil

    proc = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [proc] + proc.children(recursive=True))


class Process:
    """A server subprocess, ready once GET {health} answers 200."""

    def __init__(self, name: str, cmd: list, port: int, route: str, env: dict,
                 health: str = "/health", timeout: float = 600):
        import requests

        self.name, self.route = name, route
        self.url = f"http://127.0.0.1:{port}"
        self.log = tempfile.NamedTemporaryFile(prefix=f"bench-{name}-", suffix=".log",
                                               delete=False)
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)
        end = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{name} exited ({self.proc.returncode}); log: {self.log.name}")
            if time.monotonic() > end:
                self.stop()
                raise RuntimeError(f"{name} not ready after {timeout:.0f} s; log: {self.log.name}")
            try:
                if requests.get(self.url + health, timeout=5).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


async def _closed_loop(url: str, bodies: list, clients: int) -> tuple:
    """Sends `bodies` over `clients` closed-loop clients; (seconds, latencies)."""
    import aiohttp

    latencies = []
    queue = iter(bodies)
    headers = {"Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as session:
        async def client():
            for body in queue:
                start = time.perf_counter()
                async with session.post(url, data=body, headers=headers) as r:
                    await r.read()
                    if r.status != 200:
                        raise RuntimeError(f"{url}: {r.status} {await r.text()}")
                latencies.append(time.perf_counter() - start)

        for _ in range(4):  # warm the connections and the server
            async with session.post(url, data=bodies[0], headers=headers) as r:
                await r.read()
        start = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        return time.perf_counter() - start, latencies


def _bodies(texts: list, per_request: int, n: int) -> list:
    out = []
    for i in range(n):
        batch = [texts[(i * per_request + j) % len(texts)] for j in range(per_request)]
        out.append(json.dumps({"model": SERVED, "input": batch,
                               "encoding_format": "float"}).encode())
    return out


def _pct(values: list, q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def measure_server(server: Process, scenario: str, texts: list) -> dict:
    url = server.url + server.route
    if scenario == "c16":
        seconds, lat = asyncio.run(_closed_loop(url, _bodies(texts, 1, C16_REQUESTS), 16))
        return {"per_s": C16_REQUESTS / seconds, "p50_ms": _pct(lat, .5) * 1e3,
                "p99_ms": _pct(lat, .99) * 1e3}
    if scenario == "c1":
        seconds, lat = asyncio.run(_closed_loop(url, _bodies(texts, 1, C1_REQUESTS), 1))
        return {"p50_ms": _pct(lat, .5) * 1e3, "p99_ms": _pct(lat, .99) * 1e3}
    seconds, lat = asyncio.run(_closed_loop(url, _bodies(texts, 32, C4X32_REQUESTS), 4))
    return {"per_s": C4X32_REQUESTS * 32 / seconds, "p50_ms": _pct(lat, .5) * 1e3}


def measure_inprocess(engine, scenario: str, texts: list) -> dict:
    if scenario == "c1":
        lat = []
        for t in texts[:C1_REQUESTS]:
            start = time.perf_counter()
            engine.encode([t], pooling="mean")
            lat.append(time.perf_counter() - start)
        return {"p50_ms": _pct(lat, .5) * 1e3, "p99_ms": _pct(lat, .99) * 1e3}
    n = C16_REQUESTS if scenario == "c16" else C4X32_REQUESTS * 32
    work = [texts[i % len(texts)] for i in range(n)]
    start = time.perf_counter()
    for i in range(0, n, 256):
        engine.encode(work[i:i + 256], batch_size=32, pooling="mean")
    return {"per_s": n / (time.perf_counter() - start)}


def calibrate(model: str, threads: int, rounds: int) -> None:
    """tokens/s of one forward pass (Engine._embed_tokenized) by batch tokens, for short
    sentences and for 512-token texts: where it stops growing is the --max-batch-tokens
    default. The short sentences' tokens per CPU-second (all threads) are printed too: on a
    loaded machine they hold where wall times do not (spinning threads count as busy)."""
    import bge_engine
    from bge_engine.bench import text_of_tokens

    engine = bge_engine.Engine(model, threads=threads)
    short = engine._tokenize(sentences())
    long_ = engine._tokenize([text_of_tokens(512)] * 32)
    print(f"| batch tokens | short sentences tokens/s | 512-token texts tokens/s "
          f"| short sentences tokens/CPU-s | load |")
    print("|---|---|---|---|---|")
    for budget in (64, 128, 256, 512, 1024, 2048, 4096):
        row = []
        for pool in (short, long_):
            batch, tokens = [], 0
            for ids in pool * 64:
                if batch and tokens + ids.shape[0] > budget:
                    break
                batch.append(ids)
                tokens += ids.shape[0]
            reps = max(2, 8192 // tokens)
            rates, cpu_rates = [], []
            for _ in range(rounds):
                start, cpu = time.perf_counter(), time.process_time()
                for _ in range(reps):
                    engine._embed_tokenized(batch, ["mean"] * len(batch))
                rates.append(tokens * reps / (time.perf_counter() - start))
                cpu_rates.append(tokens * reps / (time.process_time() - cpu))
            row.append(statistics.median(rates))
            if pool is short:
                per_cpu = statistics.median(cpu_rates)
        print(f"| {budget} | {row[0]:,.0f} | {row[1]:,.0f} | {per_cpu:,.0f} "
              f"| {os.getloadavg()[0]:.1f} |", flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="model folder (default: the synthetic bge-small)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--infinity", default=None, metavar="PATH",
                   help="the infinity_emb executable (its own venv); none: ours and in-process only")
    p.add_argument("--serve-args", default="", help="extra options for bge-engine serve")
    p.add_argument("--scenarios", default="c16,c1,c4x32", help="comma-separated subset")
    p.add_argument("--calibrate", action="store_true", help="tokens/s by batch tokens, then exit")
    p.add_argument("--json", default=None, metavar="FILE", help="write the results as JSON")
    args = p.parse_args()

    model = args.model
    if model is None:
        from synthetic import write_synthetic_bge

        model = str(write_synthetic_bge(Path(tempfile.mkdtemp(prefix="bge-serve-bench-")),
                                        seed=0))
    if args.calibrate:
        calibrate(model, args.threads, args.rounds)
        return 0

    import bge_engine

    texts = sentences()
    env = dict(START_ENV, OMP_NUM_THREADS=str(args.threads), HF_HUB_OFFLINE="1",
               DO_NOT_TRACK="1", INFINITY_ANONYMOUS_USAGE_STATS="0")
    systems = {}
    port = free_port()
    systems["bge-engine serve"] = Process(
        "bge-engine", [sys.executable, "-m", "bge_engine.cli", "serve", "--model", model,
                       "--threads", str(args.threads), "--port", str(port), "--log-level",
                       "warning", "--served-model-name", SERVED] + args.serve_args.split(),
        port, "/v1/embeddings", env)
    try:
        if args.infinity:
            port = free_port()
            systems["infinity-emb"] = Process(
                "infinity", [args.infinity, "v2", "--model-id", model, "--engine", "torch",
                             "--device", "cpu", "--host", "127.0.0.1", "--port", str(port), "--served-model-name",
                             SERVED], port, "/embeddings", env)
        engine = bge_engine.Engine(model, threads=args.threads)
        engine.encode(texts[:32])
        names = list(systems) + ["in-process"]
        results = {name: {s: [] for s in ("c16", "c1", "c4x32")} for name in names}
        for r in range(args.rounds):
            for scenario in args.scenarios.split(","):
                order = names[r % len(names):] + names[:r % len(names)]
                for name in order:
                    time.sleep(0.3)  # let the last system's spinning threads go idle
                    if name == "in-process":
                        res = measure_inprocess(engine, scenario, texts)
                    else:
                        res = measure_server(systems[name], scenario, texts)
                    results[name][scenario].append(res)
                    print(f"round {r + 1} {scenario:6} {name:18} " +
                          " ".join(f"{k} {v:,.1f}" for k, v in res.items()), flush=True)
        rss = {name: tree_rss(s.proc.pid) / 2**20 for name, s in systems.items()}
    finally:
        for s in systems.values():
            s.stop()

    def med(name, scenario, key):
        values = [x[key] for x in results[name][scenario] if key in x]
        return statistics.median(values) if values else float("nan")

    rows = [("16 clients x 1 sentence, sentences/s", "c16", "per_s"),
            ("16 clients, p99 ms", "c16", "p99_ms"),
            ("1 client x 1 sentence, p50 ms", "c1", "p50_ms"),
            ("4 clients x 32 sentences, sentences/s", "c4x32", "per_s")]
    print(f"\nmedians of {args.rounds} rounds, {args.threads} threads, model {model}")
    print("| measure | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for label, scenario, key in rows:
        print(f"| {label} | " + " | ".join(f"{med(n, scenario, key):,.1f}" for n in names) + " |")
    print("| server RSS after, MiB | " + " | ".join(
        f"{rss[n]:,.0f}" if n in rss else "-" for n in names) + " |")
    ours = "bge-engine serve"
    print(f"\nours / in-process: c16 {med(ours, 'c16', 'per_s') / med('in-process', 'c16', 'per_s'):.2f}x, "
          f"c1 p50 +{med(ours, 'c1', 'p50_ms') - med('in-process', 'c1', 'p50_ms'):.2f} ms")
    if "infinity-emb" in results:
        inf = "infinity-emb"
        print(f"ours / infinity-emb: c16 {med(ours, 'c16', 'per_s') / med(inf, 'c16', 'per_s'):.2f}x, "
              f"c1 p50 {med(ours, 'c1', 'p50_ms') / med(inf, 'c1', 'p50_ms'):.2f}x, "
              f"c4x32 {med(ours, 'c4x32', 'per_s') / med(inf, 'c4x32', 'per_s'):.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"model": model, "threads": args.threads,
                                               "rounds": args.rounds, "results": results,
                                               "rss_mib": rss}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
