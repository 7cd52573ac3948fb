"""GFLOP/s of the bf16 GEMM per ISA at the model's shapes, against the bf16 peak.

    python -m pytest bench/bench_kernels_bgemm.py --benchmark-only

bge-small's four GEMMs per layer with the epilogue the model fuses into each, at T = 16,
128, 512 tokens, 1 and 2 threads, the fp32 GEMM of the same level beside each (the ratio
bf16 / fp32 is what dtype="bf16" buys there). The peak of the avx512bf16 and amx levels is
their bf16_dot_loop (independent vdpbf16ps or tdpbf16ps chains, 2 flops per bf16 product;
issue 21's target: the amx GEMM at T >= 128 x 384 x 1536 at >= 40 % of it), measured as the
int8 peak is (bench_kernels_qgemm.py: the highest median of `threads` concurrent loops this
session); the emulating levels (avx512, avx2: one FMA per product) are held against their
fp32 FMA peak (fma_loop). extra_info holds gflops, peak_gflops and ratio_to_peak; a summary
table is printed at the end. Benchmarks record, never assert on time.
"""

from __future__ import annotations

import math
import time
from concurrent.futures import ThreadPoolExecutor
from statistics import median

import numpy as np
import pytest
from conftest import (AFTER_RUN, LAYER_GEMMS, Summary, kernels_or_skip, sampled_peak,
                      summary_fixture)

from bge_engine import _kernels

ISAS = ("avx2", "avx512", "avx512bf16", "amx")
DOT_LOOP_ISAS = ("avx512bf16", "amx")  # the others emulate: held against fma_loop
TOKENS = (16, 128, 512)
THREADS = (1, 2)

# (name, isa, threads, GFLOP/s of the median time, of the best, its extra_info)
RESULTS: list[tuple[str, str, int, float, float, dict]] = []
_PEAKS: dict[tuple[str, int], float] = {}


def peak(isa: str, threads: int, iters: int = 5_000_000, rounds: int = 7) -> float:
    """GFLOP/s of `threads` concurrent peak loops: bf16_dot_loop on DOT_LOOP_ISAS, fma_loop
    on the emulating levels; the highest median of this session (sampled_peak)."""
    k = _kernels.Kernels(isa)
    loop = k.bf16_dot_loop if isa in DOT_LOOP_ISAS else k.fma_loop

    def median_rate(n):
        rates = []
        with ThreadPoolExecutor(threads) as pool:
            for _ in range(n):
                t0 = time.perf_counter()
                flops = sum(pool.map(loop, [iters] * threads))
                rates.append(flops / (time.perf_counter() - t0) / 1e9)
        return median(rates)

    return sampled_peak(_PEAKS, (isa, threads), median_rate, lambda: loop(iters // 10),
                        rounds)


def _ratio(extra: dict, gflops: float, best: float, pk: float) -> None:
    extra.update(peak_gflops=round(pk, 2), ratio_to_peak=round(gflops / pk, 3),
                 ratio_best_to_peak=round(best / pk, 3))


def _report(benchmark, name, isa, threads, flops):
    if benchmark.stats is None:  # --benchmark-disable
        return
    gflops = flops / benchmark.stats.stats.median / 1e9
    best = flops / benchmark.stats.stats.min / 1e9
    benchmark.extra_info.update(gflops=round(gflops, 2), gflops_best=round(best, 2), isa=isa,
                                threads=threads)
    _ratio(benchmark.extra_info, gflops, best, peak(isa, threads))
    RESULTS.append((name, isa, threads, gflops, best, benchmark.extra_info))


def _final_ratios() -> None:
    for _name, isa, threads, gflops, best, extra in RESULTS:
        _ratio(extra, gflops, best, _PEAKS[(isa, threads)])


AFTER_RUN.append(_final_ratios)


def _row(name, isa, threads, gflops, best, _extra):
    pk = _PEAKS[(isa, threads)]
    return (f"{name:42s} {isa:10s} t={threads}: {gflops:7.1f} GFLOP/s "
            f"{100 * gflops / pk:5.1f} %  {best:7.1f} {100 * best / pk:5.1f} %")


_summary = summary_fixture("bge-bf16-summary", Summary(
    "bf16 GEMM GFLOP/s and ratio to the peak of the same ISA and threads "
    "(avx512bf16: vdpbf16ps; avx512, avx2: fp32 FMA)", _PEAKS, RESULTS,
    peak_line=lambda key, pk: f"peak {key[0]:10s} threads={key[1]}: {pk:7.1f} GFLOP/s",
    row_line=_row, header=f"{'':60s}   median time        best time"))


@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("isa", ISAS)
def test_peak(benchmark, isa, threads):
    """The peak loop itself: `threads` concurrent calls."""
    k = kernels_or_skip(isa)
    loop = k.bf16_dot_loop if isa in DOT_LOOP_ISAS else k.fma_loop
    iters = 1_000_000
    with ThreadPoolExecutor(threads) as pool:
        def run():
            return sum(pool.map(loop, [iters] * threads))

        flops = benchmark(run)
    _report(benchmark, "peak loop", isa, threads, flops)


def _problem(T, K, N, epilogue):
    rng = np.random.default_rng(T * 7919 + K + N)
    x = rng.standard_normal((T, K), dtype=np.float32)
    w = rng.standard_normal((N, K), dtype=np.float32) / np.float32(math.sqrt(K))
    b = rng.standard_normal(N, dtype=np.float32)
    res = rng.standard_normal((T, N), dtype=np.float32) if epilogue == "residual" else None
    return x, w, b, res


@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("T", TOKENS)
@pytest.mark.parametrize("gemm", list(LAYER_GEMMS))
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", ("bf16", "fp32"))
def test_gemm(benchmark, dtype, isa, gemm, T, threads):
    k = kernels_or_skip(isa)
    K, N, epilogue = LAYER_GEMMS[gemm]
    x, w, b, res = _problem(T, K, N, epilogue)
    out = np.empty((T, N), np.float32)
    if dtype == "bf16":
        scratch = np.empty(k.bgemm_scratch_bytes(T, K), np.uint8)
        benchmark(k.bgemm, x, k.bpack(w), b, out, epilogue, res=res, scratch=scratch,
                  threads=threads)
    else:
        benchmark(k.gemm, x, k.pack(w), b, out, epilogue, res=res, threads=threads)
    _report(benchmark, f"{dtype} {gemm} {T}x{K}x{N} +{epilogue}", isa, threads,
            2.0 * T * K * N)
