"""Benchmark workloads and timers, shared by `bge-engine bench` and bench/compare.py.

Latency: one text of exactly L tokens ([CLS] and [SEP] included), batch 1. Throughput: the 256
English sentences of `data/sentences.txt` (10 to 40 tokens each) in batches of 32. Every figure
is the median over repeats, after a warm-up call; these machines are shared and noisy.
"""

from __future__ import annotations

import compileall
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Sequence

LENGTHS = (8, 16, 32, 128, 512)
BATCH = 32


def sentences() -> List[str]:
    """The 256 benchmark sentences, in file order (the caller's order)."""
    path = Path(__file__).with_name("data") / "sentences.txt"
    return [s for s in path.read_text(encoding="utf-8").splitlines() if s.strip()]


def text_of_tokens(n_tokens: int) -> str:
    """A text that bert-base-uncased WordPiece turns into exactly n_tokens tokens, specials
    included ("cloud" is one piece)."""
    if n_tokens < 3:
        raise ValueError("n_tokens: expected >= 3")
    return " ".join(["cloud"] * (n_tokens - 2))


def median_seconds(fn: Callable[[], object], repeats: int, min_seconds: float = 0.0) -> float:
    """The median wall time of fn() over `repeats` runs (more while under min_seconds)."""
    fn()  # warm-up: first-touch of buffers, thread pools
    times: List[float] = []
    start = time.perf_counter()
    while len(times) < repeats or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def repeats_for(n_tokens: int) -> int:
    return 30 if n_tokens <= 32 else 15 if n_tokens <= 128 else 7


def batches(items: Sequence, size: int) -> List[Sequence]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def peak_rss_mb() -> float:
    """This process's peak resident set so far, in MB: VmHWM where /proc has it (getrusage's
    ru_maxrss survives exec, so a child of a large process would report its parent's peak),
    else ru_maxrss (Linux reports KiB, macOS bytes)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1 << 20) if sys.platform == "darwin" else rss / 1024


FIRST_VECTOR = "@@first-vector "  # marks the child's report among whatever else it prints


def cold_start_seconds(code: str, repeats: int = 5, env: Dict[str, str] = None) -> float:
    """Median time from the start of a fresh process to its first vector: `python -c code`
    (the code must embed one text), timed from just before the process is spawned to the
    moment, right after the code ran, that the child reads the system-wide monotonic clock
    and reports it. The interpreter's shutdown after it is not counted (a library's
    teardown is not part of a cold start).

    bge_engine's modules are byte-compiled first, as `pip install` leaves them (the peers'
    are, in site-packages): an editable install run with PYTHONDONTWRITEBYTECODE=1 would
    otherwise compile them from source in every process, a cost no user pays."""
    compileall.compile_dir(os.path.dirname(os.path.abspath(__file__)), quiet=1)
    probe = (code + "\nimport sys as _s, time as _t\n"
             "_s.stdout.write('\\n%s%%r\\n' %% _t.monotonic())\n" % FIRST_VECTOR)
    times = []
    for _ in range(repeats):
        t0 = time.monotonic()
        out = subprocess.run([sys.executable, "-c", probe], check=True,
                             env=env or dict(os.environ), stdout=subprocess.PIPE,
                             text=True).stdout
        reports = [ln for ln in out.splitlines() if ln.startswith(FIRST_VECTOR)]
        if not reports:
            raise RuntimeError(f"the cold-start process reported no first vector: {code!r}")
        times.append(float(reports[-1][len(FIRST_VECTOR):]) - t0)
    return statistics.median(times)


def measure_engine(engine, sentences_: List[str]) -> dict:
    """Latency per length and throughput for a bge_engine.Engine."""
    latency = {}
    for n in LENGTHS:
        text = text_of_tokens(n)
        latency[n] = median_seconds(lambda: engine.encode(text), repeats_for(n))
    per_call = median_seconds(
        lambda: [engine.encode(list(b), batch_size=BATCH) for b in batches(sentences_, BATCH)],
        repeats=5)
    return {"latency_s": latency, "throughput_caller": len(sentences_) / per_call}


def run(model: str, dtype: str, threads: int) -> dict:
    """`bge-engine bench`: latency, throughput, peak RSS and cold start of one engine."""
    from .engine import Engine

    t0 = time.perf_counter()
    engine = Engine(model, dtype=dtype, threads=threads)
    load = time.perf_counter() - t0
    result = measure_engine(engine, sentences())
    result.update(
        model=str(engine.folder), dtype=dtype, threads=threads, load_s=load,
        peak_rss_mb=peak_rss_mb(),
        cold_start_s=cold_start_seconds(
            "import bge_engine; bge_engine.Engine(%r, dtype=%r, threads=%d).encode('hello')"
            % (str(engine.folder), dtype, threads)))
    return result
