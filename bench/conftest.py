"""Shared pieces of the kernel benchmarks: the machine's fp32 FMA peak per ISA and thread
count (measured with the table's own fma_loop), and a summary table printed at the end.

Benchmarks record and print; they never assert on time (the machine is shared and noisy)."""

from __future__ import annotations

import time

import pytest

from bge_engine import _kernels

# (name, isa, threads, GFLOP/s of the median time, of the best time, peak), filled by the
# benchmarks through the `report` fixture and printed by pytest_terminal_summary.
RESULTS: list[tuple[str, str, int, float, float, float]] = []
_PEAKS: dict[str, float] = {}  # one-core peak per isa


def kernels_or_skip(isa: str) -> "_kernels.Kernels":
    """The kernel table of `isa`, or a skip when this host or build can't run it."""
    if isa not in _kernels.usable_isas():
        pytest.skip(f"host lacks {isa} (usable: {_kernels.usable_isas()})")
    return _kernels.Kernels(isa)


def fma_peak(isa: str, threads: int, iters: int = 10_000_000, rounds: int = 15) -> float:
    """The fp32 FMA peak the GEMM is measured against, in GFLOP/s: threads x the one-core
    peak, the best of `rounds` timings of the table's fma_loop on one thread. Per core and
    the best, not the median: on a shared machine other load can only lower a round's rate
    (a run of two loops at once mostly measures whether the other core is free), and the
    peak is what the machine can do. test_fma_peak measures the two-thread loop as well."""
    if isa not in _PEAKS:
        k = _kernels.Kernels(isa)
        k.fma_loop(iters // 10)  # warm up: clocks, page faults
        rates = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            flops = k.fma_loop(iters)
            rates.append(flops / (time.perf_counter() - t0) / 1e9)
        _PEAKS[isa] = max(rates)
    return threads * _PEAKS[isa]


@pytest.fixture
def report():
    """report(benchmark, name, isa, threads, flops): GFLOP/s from the median time (and from
    the best time, less disturbed by other load), the ratio to fma_peak(isa, threads), into
    extra_info and the summary table."""

    def _report(benchmark, name, isa, threads, flops):
        if benchmark.stats is None:  # --benchmark-disable: nothing was timed
            return
        gflops = flops / benchmark.stats.stats.median / 1e9
        best = flops / benchmark.stats.stats.min / 1e9
        peak = fma_peak(isa, threads)
        benchmark.extra_info.update(
            gflops=round(gflops, 2), gflops_best=round(best, 2), peak_gflops=round(peak, 2),
            ratio_to_peak=round(gflops / peak, 3), ratio_best_to_peak=round(best / peak, 3),
            isa=isa, threads=threads)
        RESULTS.append((name, isa, threads, gflops, best, peak))

    return _report


def pytest_terminal_summary(terminalreporter):
    if not RESULTS:
        return
    tr = terminalreporter
    tr.section("GFLOP/s against the fp32 FMA peak of the same ISA and thread count")
    for isa, peak in sorted(_PEAKS.items()):
        tr.write_line(f"peak {isa:7s}: {peak:7.1f} GFLOP/s per core (fma_loop, best of 15); "
                      f"the peak of t threads is t times that")
    tr.write_line(f"{'':48s}   median time        best time")
    for name, isa, threads, gflops, best, peak in RESULTS:
        tr.write_line(f"{name:32s} {isa:6s} t={threads}: {gflops:6.1f} GFLOP/s "
                      f"{100 * gflops / peak:5.1f} %  {best:6.1f} GFLOP/s "
                      f"{100 * best / peak:5.1f} %")
