"""Time of the non-GEMM fp32 kernels per ISA at the model's shapes (reference included, for
the speed-up).

    python -m pytest bench/bench_kernels_ops.py --benchmark-only

  - attention, bge-small heads (12 x 32): one text of 16, 128 or 512 tokens, and a ragged
    batch of 32 texts of about 24 tokens (18 .. 30, sorted by length as the batcher does);
    1 and 2 threads. extra_info and the summary table (bench/conftest.py) give GFLOP/s of
    the two products (4 L^2 D per head and text) and the ratio to the FMA peak.
  - layernorm of (T, 384) and GELU of (T, 1536) at T = 16, 128, 512.
Benchmarks record, they never assert on time (the machine is shared and noisy).
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import kernels_or_skip

ISAS = ("ref", "avx2", "avx512")
HEADS, D = 12, 32
H = HEADS * D
TOKENS = (16, 128, 512)


def _batch(name):
    if name == "32x~24":
        rng = np.random.default_rng(24)
        return sorted(rng.integers(18, 31, 32).tolist())
    return [int(name[1:])]  # "L16" -> [16]


BATCHES = ("L16", "L128", "L512", "32x~24")


@pytest.mark.parametrize("threads", (1, 2))
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("isa", ISAS)
def test_attention(benchmark, report, isa, batch, threads):
    k = kernels_or_skip(isa)
    lengths = _batch(batch)
    off = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    T = int(off[-1])
    rng = np.random.default_rng(T)
    qkv = rng.standard_normal((T, 3 * H), dtype=np.float32)
    out = np.empty((T, H), np.float32)
    scratch = np.empty(k.attention_scratch_size(max(lengths), D, threads), np.float32)
    benchmark(k.attention, qkv, off, HEADS, np.float32(D**-0.5), out, scratch=scratch,
              threads=threads)
    flops = sum(4.0 * L * L * D * HEADS for L in lengths)
    if benchmark.stats is not None:  # None under --benchmark-disable
        report(benchmark, f"attention {batch}", isa, threads, flops)


@pytest.mark.parametrize("T", TOKENS)
@pytest.mark.parametrize("isa", ISAS)
def test_layernorm(benchmark, isa, T):
    k = kernels_or_skip(isa)
    rng = np.random.default_rng(T)
    x = rng.standard_normal((T, H), dtype=np.float32)
    gamma = rng.standard_normal(H, dtype=np.float32)
    beta = rng.standard_normal(H, dtype=np.float32)
    out = np.empty_like(x)
    benchmark(k.layernorm, x, gamma, beta, np.float32(1e-12), out)
    benchmark.extra_info.update(isa=isa, T=T, C=H)


@pytest.mark.parametrize("T", TOKENS)
@pytest.mark.parametrize("isa", ISAS)
def test_gelu(benchmark, isa, T):
    k = kernels_or_skip(isa)
    rng = np.random.default_rng(T)
    x = rng.standard_normal((T, 4 * H), dtype=np.float32)
    benchmark(k.gelu, x)  # in place: the values drift, the time does not
    benchmark.extra_info.update(isa=isa, T=T, C=4 * H)
