"""GOP/s of the int8 GEMM per ISA at the model's shapes, against the int8 dot-product peak.

    python -m pytest bench/bench_kernels_qgemm.py --benchmark-only

bge-small's four GEMMs per layer, each with the epilogue the model fuses into it, at
T = 16, 128, 512 tokens, on 1 and 2 threads, on every int8 level the host has (avx2:
vpmaddwd; avxvnni: ymm vpdpbusd; vnni: zmm vpdpbusd; amx: tdpbusd on tiles); the peak of
each level is its dot_loop (independent multiply-accumulate chains, 2 ops per u8 x s8
product; for amx, tdpbusd into 4 tiles), run on
`threads` threads at once. The GEMM's ops are 2 T K N (the quantisation of the activations
is a separate call, timed on its own below). extra_info holds gops, peak_gops and
ratio_to_peak; a summary table is printed at the end. Benchmarks record, never assert on
time (the machine is shared and noisy).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from statistics import median

import numpy as np
import pytest
from conftest import (AFTER_RUN, LAYER_GEMMS, Summary, kernels_or_skip, sampled_peak,
                      summary_fixture)

from bge_engine import _kernels

ISAS = ("avx2", "avxvnni", "avx512vnni", "amx")
TOKENS = (16, 128, 512)
THREADS = (1, 2)

# (name, isa, threads, GOP/s, its extra_info)
RESULTS: list[tuple[str, str, int, float, dict]] = []
_PEAKS: dict[tuple[str, int], float] = {}  # the highest dot_peak sample of the session


def dot_peak(isa: str, threads: int, iters: int = 5_000_000, rounds: int = 7) -> float:
    """GOP/s of `threads` concurrent dot_loop calls (each releases the GIL): the highest
    median of a call's timings this session (sampled_peak, bench/conftest.py)."""
    k = _kernels.Kernels(isa)

    def median_rate(n):
        rates = []
        with ThreadPoolExecutor(threads) as pool:
            for _ in range(n):
                t0 = time.perf_counter()
                ops = sum(pool.map(k.dot_loop, [iters] * threads))
                rates.append(ops / (time.perf_counter() - t0) / 1e9)
        return median(rates)

    # warm up: clocks
    return sampled_peak(_PEAKS, (isa, threads), median_rate, lambda: k.dot_loop(iters // 10),
                        rounds)


def _ratio(extra: dict, gops: float, peak: float) -> None:
    extra.update(peak_gops=round(peak, 2), ratio_to_peak=round(gops / peak, 3))


def _report(benchmark, name, isa, threads, ops):
    gops = ops / benchmark.stats.stats.median / 1e9
    benchmark.extra_info.update(gops=round(gops, 2), isa=isa, threads=threads)
    _ratio(benchmark.extra_info, gops, dot_peak(isa, threads))
    RESULTS.append((name, isa, threads, gops, benchmark.extra_info))


def _final_ratios() -> None:
    for _name, isa, threads, gops, extra in RESULTS:
        _ratio(extra, gops, _PEAKS[(isa, threads)])


AFTER_RUN.append(_final_ratios)


def _row(name, isa, threads, gops, _extra):
    ratio = gops / _PEAKS[(isa, threads)]
    return f"{name:38s} {isa:7s} threads={threads}: {gops:7.1f} GOP/s {100 * ratio:5.1f} % of peak"


_summary = summary_fixture("bge-int8-summary", Summary(
    "int8 GOP/s (median) and ratio to the dot_loop peak of the same ISA and threads", _PEAKS,
    RESULTS, peak_line=lambda key, pk: f"peak {key[0]:7s} threads={key[1]}: {pk:7.1f} GOP/s",
    row_line=_row))


@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("isa", ISAS)
def test_dot_peak(benchmark, isa, threads):
    """The int8 peak: `threads` concurrent dot_loop calls."""
    k = kernels_or_skip(isa)
    iters = 1_000_000
    with ThreadPoolExecutor(threads) as pool:
        def run():
            return sum(pool.map(k.dot_loop, [iters] * threads))

        ops = benchmark(run)
    _report(benchmark, "dot_loop (peak)", isa, threads, ops)


def _problem(T, K, N, epilogue, k):
    rng = np.random.default_rng(T * 7919 + K + N)
    x = rng.standard_normal((T, K), dtype=np.float32)
    q = np.empty((T, _kernels.q8_row_bytes(K)), np.uint8)
    G = _kernels.q8_groups(K)
    scale, zp = np.empty((T, G), np.float32), np.empty((T, G), np.int32)
    k.quantize(x, q, scale, zp)
    w = rng.integers(-127, 128, (N, K)).astype(np.int8)
    w_scale = np.full((N, G), 1e-3, np.float32)
    b = rng.standard_normal(N, dtype=np.float32)
    res = rng.standard_normal((T, N), dtype=np.float32) if epilogue == "residual" else None
    return x, q, scale, zp, k.qpack(w, w_scale), b, res


@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("T", TOKENS)
@pytest.mark.parametrize("gemm", list(LAYER_GEMMS))
@pytest.mark.parametrize("isa", ISAS)
def test_qgemm(benchmark, isa, gemm, T, threads):
    k = kernels_or_skip(isa)
    K, N, epilogue = LAYER_GEMMS[gemm]
    x, q, scale, zp, packed, b, res = _problem(T, K, N, epilogue, k)
    out = np.empty((T, N), np.float32)
    benchmark(k.qgemm, q, scale, zp, packed, b, out, epilogue, res=res, threads=threads)
    _report(benchmark, f"{gemm} {T}x{K}x{N} +{epilogue}", isa, threads, 2.0 * T * K * N)


@pytest.mark.parametrize("K", (384, 1536))
@pytest.mark.parametrize("T", (128, 512))
@pytest.mark.parametrize("isa", ISAS)
def test_quantize(benchmark, isa, T, K):
    """The activation quantiser (per group of Q8_GROUP k: one pass for min/max, one to
    write q), 1 thread."""
    k = kernels_or_skip(isa)
    x = np.random.default_rng(T + K).standard_normal((T, K), dtype=np.float32)
    q = np.empty((T, _kernels.q8_row_bytes(K)), np.uint8)
    G = _kernels.q8_groups(K)
    scale, zp = np.empty((T, G), np.float32), np.empty((T, G), np.int32)
    benchmark(k.quantize, x, q, scale, zp)
    benchmark.extra_info.update(isa=isa, gbytes_per_s=round(
        x.nbytes / benchmark.stats.stats.median / 1e9, 2))
