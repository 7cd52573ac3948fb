"""GFLOP/s of the fp32 GEMM per ISA at the model's shapes, against the FMA peak.

    python -m pytest bench/bench_kernels_gemm.py --benchmark-only

bge-small's four GEMMs per layer, each with the epilogue the model fuses into it, at
T = 16, 128, 512 tokens, on 1 and 2 threads; plus the fp32 FMA peak of each ISA measured
with its fma_loop. extra_info holds gflops (median time), gflops_best (best time),
peak_gflops (threads x the one-core fma_loop peak) and ratio_to_peak, ratio_best_to_peak; a
summary table is printed at the end (bench/conftest.py). Benchmarks record, they never assert
on time. On a shared machine, two-thread figures mostly tell whether the other core was free.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from conftest import LAYER_GEMMS, kernels_or_skip

ISAS = ("avx2", "avx512")
TOKENS = (16, 128, 512)
THREADS = (1, 2)


@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("isa", ISAS)
def test_fma_peak(benchmark, report, isa, threads):
    """The fp32 FMA peak: `threads` concurrent fma_loop calls (each releases the GIL)."""
    k = kernels_or_skip(isa)
    iters = 2_000_000
    with ThreadPoolExecutor(threads) as pool:
        def run():
            return sum(pool.map(k.fma_loop, [iters] * threads))

        flops = benchmark(run)
    report(benchmark, "fma_loop (peak)", isa, threads, flops)


@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("T", TOKENS)
@pytest.mark.parametrize("gemm", list(LAYER_GEMMS))
@pytest.mark.parametrize("isa", ISAS)
def test_gemm(benchmark, report, isa, gemm, T, threads):
    k = kernels_or_skip(isa)
    K, N, epilogue = LAYER_GEMMS[gemm]
    rng = np.random.default_rng(T * 7919 + K + N)
    x = rng.standard_normal((T, K), dtype=np.float32)
    w = rng.standard_normal((N, K), dtype=np.float32) / np.float32(math.sqrt(K))
    b = rng.standard_normal(N, dtype=np.float32)
    res = rng.standard_normal((T, N), dtype=np.float32) if epilogue == "residual" else None
    out = np.empty((T, N), np.float32)
    packed = k.pack(w)
    benchmark(k.gemm, x, packed, b, out, epilogue, res=res, threads=threads)
    report(benchmark, f"{gemm} {T}x{K}x{N} +{epilogue}", isa, threads, 2.0 * T * K * N)
