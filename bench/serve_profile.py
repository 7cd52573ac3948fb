"""Where a request's time goes in `bge-engine serve`: per-stage wall times, and the CPU each
side spends per request (the server's and the load generator's), beside Engine.encode.

The server runs as a subprocess of this script (`--server-role`), with the stages of the
request path wrapped in timers (nothing in bge_engine changes): the ASGI entry, the body
read and JSON decode, the OpenAI checks, tokenising, the enqueue, the batcher thread taking
the batch, the forward pass, the event loop's wake-up on the result, the reply encoding,
and the send with the access log and metrics. `GET /_stages` returns the records.

CPU per request is the process's user + system time (psutil) over a fixed number of
requests: it counts work, not waiting, so it holds on a loaded machine where wall times do
not. Scenarios:

  c1      one client, one sentence per request (aiohttp, as bench/serve.py)
  stub    the same, with the forward pass replaced by zeros: the server's own cost
  health  GET /health: the smallest round trip (the HTTP stack and the client alone)
  c16     16 clients, one sentence each: batch sizes, forward time, idle cores
  c4x32   4 clients, 32 sentences each (not in the default set)
  inproc  Engine.encode([sentence]) back to back, and with a 2 ms pause between calls

    python bench/serve_profile.py --requests 400
    python bench/serve_profile.py --serve-args "--max-batch-tokens 2048" --scenarios c16
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))

# (key, start stamp, end stamp): the stages of one request, in path order
STAGES = (
    ("asgi entry -> body read", "a0", "r0"),
    ("body read + JSON decode", "r0", "r1"),
    ("OpenAI checks", "v0", "v1"),
    ("tokenise", "t0", "t1"),
    ("enqueue (submit)", "s0", "s1"),
    ("hand-off to batcher thread", "s1", "c0"),
    ("take -> forward start", "c0", "f0"),
    ("forward pass + pooling", "f0", "f1"),
    ("rows copied -> loop runs _resolve", "f1", "z0"),
    ("_resolve -> handler resumes", "z0", "e1"),
    ("reply encoding (orjson)", "o0", "o1"),
    ("Response + send", "o1", "b1"),
    ("access log + metrics after send", "b1", "a1"),
    ("total in the app", "a0", "a1"),
)


# -- the server role --------------------------------------------------------------------

def run_server(argv: list, stub: bool, count_calls: bool = False) -> None:
    """Runs `bge-engine serve` with timers around each stage of the request path; with
    `count_calls`, also counts the Python function calls the event loop's thread makes
    (cProfile: a count of work that the machine's load does not change)."""
    import cProfile
    import pstats

    profiler = [None]
    from bge_engine.engine import Engine  # first: it sets the thread pools' environment
    import numpy as np

    from bge_engine.server import app as appmod
    from bge_engine.server import batcher as bmod
    from bge_engine.server import payloads, routes
    from bge_engine.server.cli import serve
    from bge_engine.server.options import parse

    now = time.perf_counter_ns
    current = contextvars.ContextVar("record", default=None)
    records, batches = [], []
    by_job = {}
    local = threading.local()

    def rec():
        r = current.get()
        return r if r is not None else {}

    def timed_async(mod, name, k0, k1):
        f = getattr(mod, name)

        async def wrapper(*a, **kw):
            r = rec()
            r[k0] = now()
            try:
                return await f(*a, **kw)
            finally:
                r[k1] = now()
        setattr(mod, name, wrapper)

    def timed(mod, name, k0, k1):
        f = getattr(mod, name)

        def wrapper(*a, **kw):
            r = rec()
            r[k0] = now()
            try:
                return f(*a, **kw)
            finally:
                r[k1] = now()
        setattr(mod, name, wrapper)

    timed_async(routes, "_read_json", "r0", "r1")
    timed_async(routes, "_tokenize", "t0", "t1")
    timed(payloads, "parse_openai", "v0", "v1")
    timed(payloads, "openai_reply", "o0", "o1")
    embed = routes._embed

    async def embed_wrapper(*a, **kw):
        try:
            return await embed(*a, **kw)
        finally:
            rec()["e1"] = now()
    routes._embed = embed_wrapper

    submit = bmod.Batcher.submit

    def submit_wrapper(self, *a, **kw):
        r = rec()
        r["s0"] = now()
        job = submit(self, *a, **kw)
        r["s1"] = now()
        by_job[id(job)] = r
        return job
    bmod.Batcher.submit = submit_wrapper

    compute = bmod.Batcher._compute

    def compute_wrapper(self, batch):
        b = {"c0": now(), "n": len(batch),
             "tokens": int(sum(job.ids[i].shape[0] for job, i in batch))}
        local.batch = b
        compute(self, batch)
        b["c1"] = now()
        batches.append(b)
        for job, _ in batch:
            r = by_job.get(id(job))
            if r is not None:
                r.setdefault("c0", b["c0"])
                r["f0"], r["f1"] = b["f0"], b["f1"]
    bmod.Batcher._compute = compute_wrapper

    forward = Engine._embed_tokenized

    def forward_wrapper(self, ids, poolings, normalize=True):
        b = getattr(local, "batch", None) or {}
        b["f0"] = now()
        try:
            if stub:
                return np.zeros((len(ids), self.dim), dtype=np.float32)
            return forward(self, ids, poolings, normalize)
        finally:
            b["f1"] = now()
    Engine._embed_tokenized = forward_wrapper

    resolve = bmod._resolve

    def resolve_wrapper(jobs):
        t = now()
        for job in jobs:
            r = by_job.pop(id(job), None)
            if r is not None:
                r["z0"] = t
        resolve(jobs)
    bmod._resolve = resolve_wrapper

    create = appmod.create_app

    def create_wrapper(*a, **kw):
        app = create(*a, **kw)

        async def traced(scope, receive, send):
            if scope["type"] != "http":
                return await app(scope, receive, send)
            if scope["path"] == "/_stages":
                calls = top = None
                if profiler[0] is not None:  # Python calls on the event loop's thread
                    profiler[0].disable()
                    st = pstats.Stats(profiler[0])
                    calls = st.total_calls
                    top = sorted(((v[1], f"{k[0].split('site-packages/')[-1]}:{k[1]}:{k[2]}")
                                  for k, v in st.stats.items()), reverse=True)[:40]
                    profiler[0] = None
                if count_calls:
                    profiler[0] = cProfile.Profile()
                    profiler[0].enable()
                body = json.dumps({"records": records, "batches": batches,
                                   "loop_calls": calls,
                                   "loop_top": top if calls else None}).encode()
                records.clear()
                batches.clear()
                await send({"type": "http.response.start", "status": 200,
                            "headers": [(b"content-type", b"application/json")]})
                await send({"type": "http.response.body", "body": body})
                return
            r = {"a0": now()}
            current.set(r)

            async def send_timed(message):
                await send(message)
                if message["type"] == "http.response.body" and not message.get("more_body"):
                    r["b1"] = now()
            try:
                await app(scope, receive, send_timed)
            finally:
                r["a1"] = now()
                records.append(r)
        return traced
    appmod.create_app = create_wrapper
    import uvicorn.config
    loop_factory = uvicorn.config.LOOP_FACTORIES.get("auto")
    print(f"stages server: uvicorn loop {loop_factory}, http auto", flush=True)
    serve(parse(argv))


# -- the driver -------------------------------------------------------------------------

def _cpu(proc) -> float:
    t = proc.cpu_times()
    return t.user + t.system


def _ctx(proc) -> int:
    c = proc.num_ctx_switches()
    return c.voluntary + c.involuntary


async def _load(url: str, bodies: list, clients: int, method: str = "POST") -> list:
    """Closed loop, as bench/serve.py's: latencies (s) of every request."""
    import aiohttp

    latencies = []
    queue = iter(bodies)
    headers = {"Content-Type": "application/json"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients)) as session:
        async def client():
            for body in queue:
                start = time.perf_counter()
                if method == "GET":
                    async with session.get(url) as r:
                        await r.read()
                else:
                    async with session.post(url, data=body, headers=headers) as r:
                        await r.read()
                if r.status != 200:
                    raise RuntimeError(f"{url}: {r.status}")
                latencies.append(time.perf_counter() - start)
        for _ in range(8):
            if method == "GET":
                async with session.get(url) as r:
                    await r.read()
            else:
                async with session.post(url, data=bodies[0], headers=headers) as r:
                    await r.read()
        await asyncio.gather(*(client() for _ in range(clients)))
    return latencies


def measure(server, path: str, bodies: list, clients: int, method: str = "POST") -> dict:
    """Runs a load and reads both sides' CPU over it, and the server's stage records."""
    import psutil
    import requests

    requests.get(server.url + "/_stages", timeout=30)  # clears the records
    proc = psutil.Process(server.proc.pid)
    me = psutil.Process()
    cpu0, ctx0, mine0, wall0 = _cpu(proc), _ctx(proc), _cpu(me), time.perf_counter()
    load0 = os.getloadavg()[0]
    lat = asyncio.run(_load(server.url + path, bodies, clients, method))
    wall = time.perf_counter() - wall0
    cpu, ctx, mine = _cpu(proc) - cpu0, _ctx(proc) - ctx0, _cpu(me) - mine0
    stages = requests.get(server.url + "/_stages", timeout=30).json()
    n = len(bodies) + 8  # the 8 warm-up requests run inside the CPU window too
    return {"n": len(bodies), "wall_s": wall, "per_s": len(bodies) / wall,
            "p50_ms": statistics.median(lat) * 1e3,
            "p99_ms": sorted(lat)[int(.99 * len(lat))] * 1e3,
            "server_cpu_ms": cpu / n * 1e3, "client_cpu_ms": mine / n * 1e3,
            "server_ctx": ctx / n, "cores_busy": (cpu + mine) / wall,
            "load": load0, "stages": stages,
            "loop_calls": stages["loop_calls"] / n if stages.get("loop_calls") else None}


def stage_table(records: list) -> list:
    rows = []
    for label, k0, k1 in STAGES:
        vals = [(r[k1] - r[k0]) / 1e3 for r in records if k0 in r and k1 in r]
        if vals:
            rows.append((label, statistics.median(vals), statistics.mean(vals)))
    return rows


def batch_table(batches: list) -> dict:
    if not batches:
        return {}
    fwd = [(b["f1"] - b["f0"]) / 1e6 for b in batches if "f0" in b]
    gaps = [(b["c0"] - a["c1"]) / 1e6 for a, b in zip(batches, batches[1:])]
    span = (batches[-1]["c1"] - batches[0]["c0"]) / 1e6
    return {"batches": len(batches),
            "texts_per_batch": statistics.mean(b["n"] for b in batches),
            "tokens_per_batch": statistics.mean(b["tokens"] for b in batches),
            "forward_ms_mean": statistics.mean(fwd),
            "forward_us_per_token": sum(fwd) * 1e3 / sum(b["tokens"] for b in batches),
            "batcher_idle_share": sum(gaps) / span if span else 0.0,
            "gap_ms_mean": statistics.mean(gaps) if gaps else 0.0}


def inprocess(engine, texts: list, n: int, pause: float = 0.0) -> dict:
    """Engine.encode([t]) n times: wall p50 and CPU per call, and its tokenise share."""
    import psutil

    me = psutil.Process()
    lat, tok = [], []
    for t in texts[:8]:
        engine.encode([t], pooling="mean")
    cpu0 = _cpu(me)
    for i in range(n):
        t = texts[i % len(texts)]
        if pause:
            time.sleep(pause)
        start = time.perf_counter()
        engine.encode([t], pooling="mean")
        lat.append(time.perf_counter() - start)
    cpu = _cpu(me) - cpu0
    start = time.perf_counter()
    for i in range(n):
        engine._tokenize([texts[i % len(texts)]])
    tok_us = (time.perf_counter() - start) / n * 1e6
    return {"p50_ms": statistics.median(lat) * 1e3, "cpu_ms": cpu / n * 1e3,
            "tokenise_us": tok_us, "load": os.getloadavg()[0]}


def main() -> int:
    if sys.argv[1:2] == ["--server-role"]:  # the subprocess: [--stub] [--calls], serve's options
        rest = sys.argv[2:]
        flags = set()
        while rest and rest[0] in ("--stub", "--calls"):
            flags.add(rest.pop(0))
        run_server(rest, "--stub" in flags, "--calls" in flags)
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--requests", type=int, default=400)
    p.add_argument("--serve-args", default="")
    p.add_argument("--scenarios", default="c1,stub,health,c16,inproc")
    p.add_argument("--calls", action="store_true",
                   help="count the event loop's Python calls per request (cProfile; slower)")
    p.add_argument("--json", default=None, metavar="FILE")
    args = p.parse_args()

    from serve import Process, free_port, sentences
    model = args.model
    if model is None:
        from synthetic import write_synthetic_bge

        model = str(write_synthetic_bge(Path(tempfile.mkdtemp(prefix="bge-profile-")), seed=0))
    texts = sentences()
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    scenarios = args.scenarios.split(",")
    out = {}

    def start(stub: bool) -> Process:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--server-role"]
        cmd += ["--stub"] if stub else []
        cmd += ["--calls"] if args.calls else []
        port = free_port()
        cmd += ["--model", model, "--threads", str(args.threads), "--port", str(port),
                "--log-level", "warning", "--served-model-name", "bge"] + args.serve_args.split()
        return Process("profile-stub" if stub else "profile", cmd, port, "/v1/embeddings", env)

    def bodies(k: int, n: int) -> list:
        return [json.dumps({"model": "bge", "input": texts[i % len(texts)] if k == 1 else
                            [texts[(i * k + j) % len(texts)] for j in range(k)],
                            "encoding_format": "float"}).encode() for i in range(n)]

    n = args.requests
    servers = {}
    try:
        if {"c1", "health", "c16"} & set(scenarios):
            servers["real"] = start(False)
        if "stub" in scenarios:
            servers["stub"] = start(True)
        if "c1" in scenarios:
            out["c1"] = measure(servers["real"], "/v1/embeddings", bodies(1, n), 1)
        if "stub" in scenarios:
            out["stub"] = measure(servers["stub"], "/v1/embeddings", bodies(1, n), 1)
        if "health" in scenarios:
            out["health"] = measure(servers["real"], "/health", [b""] * n, 1, "GET")
        if "c16" in scenarios:
            out["c16"] = measure(servers["real"], "/v1/embeddings", bodies(1, 512), 16)
        if "c4x32" in scenarios:
            out["c4x32"] = measure(servers["real"], "/v1/embeddings", bodies(32, 32), 4)
    finally:
        for s in servers.values():
            s.stop()
    if "inproc" in scenarios:
        import bge_engine

        engine = bge_engine.Engine(model, threads=args.threads)
        out["inproc"] = inprocess(engine, texts, n)
        out["inproc_pause2ms"] = inprocess(engine, texts, n, pause=0.002)

    for name, res in out.items():
        if name.startswith("inproc"):
            print(f"\n{name}: p50 {res['p50_ms']:.2f} ms, CPU {res['cpu_ms']:.2f} ms/call, "
                  f"tokenise {res['tokenise_us']:.0f} us (load {res['load']:.2f})")
            continue
        print(f"\n{name}: {res['n']} requests, {res['per_s']:.1f}/s, p50 {res['p50_ms']:.2f} ms,"
              f" p99 {res['p99_ms']:.2f} ms; CPU per request: server {res['server_cpu_ms']:.3f}"
              f" ms, client {res['client_cpu_ms']:.3f} ms; server context switches "
              f"{res['server_ctx']:.1f}/request; cores busy {res['cores_busy']:.2f} "
              f"(load {res['load']:.2f})")
        if res.get("loop_calls"):
            print(f"Python calls on the event loop's thread per request: {res['loop_calls']:.0f}")
        recs = res["stages"]["records"]
        if name in ("c1", "stub") and recs:
            print("| stage | median us | mean us |\n|---|---|---|")
            for label, med, mean in stage_table(recs):
                print(f"| {label} | {med:.0f} | {mean:.0f} |")
        bt = batch_table(res["stages"]["batches"])
        if bt and name not in ("health",):
            print("batches: " + ", ".join(f"{k} {v:.3g}" for k, v in bt.items()))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
