"""Shared pieces of the kernel benchmarks: the machine's fp32 FMA peak per ISA and thread
count (measured with the table's own fma_loop), and a summary table printed at the end.

Benchmarks record and print; they never assert on time (the machine is shared and noisy)."""

from __future__ import annotations

import time

import pytest

from bge_engine import _kernels

# name: (K, N, epilogue) of each GEMM x (T, K) @ W^T (K, N) in one encoder layer
LAYER_GEMMS = {
    "qkv": (384, 1152, "bias"),
    "attn_out": (384, 384, "residual"),
    "ffn_up": (384, 1536, "gelu"),
    "ffn_down": (1536, 384, "residual"),
}

# (name, isa, threads, GFLOP/s of the median time, of the best time, its extra_info), filled
# by the benchmarks through the `report` fixture and printed by pytest_terminal_summary.
RESULTS: list[tuple[str, str, int, float, float, dict]] = []
_PEAKS: dict[str, float] = {}  # one-core peak per isa: the best rate seen this session
# Called once every benchmark has run, before pytest-benchmark writes its JSON: each
# benchmark module's ratios are recomputed there against the final peaks.
AFTER_RUN: list = []


def kernels_or_skip(isa: str) -> "_kernels.Kernels":
    """The kernel table of `isa`, or a skip when this host or build can't run it."""
    if isa not in _kernels.usable_isas():
        pytest.skip(f"host lacks {isa} (usable: {_kernels.usable_isas()})")
    return _kernels.Kernels(isa)


def sampled_peak(peaks: dict, key, measure, warm, rounds: int) -> float:
    """The highest rate measure(n) has returned for `key` this session (kept in `peaks`):
    n = `rounds` at the first call, after warm(), and 3 at each later one. Sampled all along,
    not once: a first calibration that fell in a slow second (here once 114 GFLOP/s per core,
    where the FMA loop's own benchmark then ran at 170) would put every ratio over 100 %.
    The benchmarks' ratios are recomputed against the final peaks once every benchmark has
    run (pytest_runtestloop)."""
    if key not in peaks:
        warm()
    rate = measure(rounds if key not in peaks else 3)
    peaks[key] = max(peaks.get(key, 0.0), rate)
    return peaks[key]


def fma_peak(isa: str, threads: int, iters: int = 10_000_000, rounds: int = 15) -> float:
    """The fp32 FMA peak the GEMM is measured against, in GFLOP/s: threads x the one-core
    peak, the best timing of the table's fma_loop on one thread (sampled_peak). Per core and
    the best, not the median: on a shared machine other load can only lower a round's rate
    (a run of two loops at once mostly measures whether the other core is free), and the
    peak is what the machine can do. test_fma_peak measures the two-thread loop."""
    k = _kernels.Kernels(isa)

    def best_rate(n):
        rates = []
        for _ in range(n):
            t0 = time.perf_counter()
            flops = k.fma_loop(iters)
            rates.append(flops / (time.perf_counter() - t0) / 1e9)
        return max(rates)

    # warm up: clocks, page faults
    return threads * sampled_peak(_PEAKS, isa, best_rate, lambda: k.fma_loop(iters // 10),
                                  rounds)


def _ratios(extra: dict, gflops: float, best: float, peak: float) -> None:
    extra.update(peak_gflops=round(peak, 2), ratio_to_peak=round(gflops / peak, 3),
                 ratio_best_to_peak=round(best / peak, 3))


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
        benchmark.extra_info.update(gflops=round(gflops, 2), gflops_best=round(best, 2),
                                    isa=isa, threads=threads)
        _ratios(benchmark.extra_info, gflops, best, fma_peak(isa, threads))
        RESULTS.append((name, isa, threads, gflops, best, benchmark.extra_info))

    return _report


def _final_ratios() -> None:
    for _name, isa, threads, gflops, best, extra in RESULTS:
        _ratios(extra, gflops, best, threads * _PEAKS[isa])


AFTER_RUN.append(_final_ratios)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtestloop(session):
    yield
    for fn in AFTER_RUN:
        fn()


class Summary:
    """A table printed at the end of the run, as a pytest plugin: the section `title`, a line
    per peak (peak_line(key, value), keys sorted), the `header` line if any, then a line per
    row of `results` (row_line(*row)); nothing when `results` is empty. `peaks` and
    `results` are read at the end, once every benchmark has filled them."""

    def __init__(self, title, peaks, results, peak_line, row_line, header=None):
        self.title, self.peaks, self.results = title, peaks, results
        self.peak_line, self.row_line, self.header = peak_line, row_line, header

    def pytest_terminal_summary(self, terminalreporter):
        if not self.results:
            return
        tr = terminalreporter
        tr.section(self.title)
        for key, value in sorted(self.peaks.items()):
            tr.write_line(self.peak_line(key, value))
        if self.header is not None:
            tr.write_line(self.header)
        for row in self.results:
            tr.write_line(self.row_line(*row))


def summary_fixture(name: str, summary: Summary):
    """A module-scoped autouse fixture registering `summary` as the plugin `name`, once a
    session: a benchmark module's own table, printed beside the fp32 one below. Assign it to
    a module-level name of the benchmark module."""

    @pytest.fixture(scope="module", autouse=True)
    def _summary(request):
        pm = request.config.pluginmanager
        if not pm.has_plugin(name):
            pm.register(summary, name)

    return _summary


def _fp32_row(name, isa, threads, gflops, best, _extra):
    peak = threads * _PEAKS[isa]
    return (f"{name:32s} {isa:6s} t={threads}: {gflops:6.1f} GFLOP/s "
            f"{100 * gflops / peak:5.1f} %  {best:6.1f} GFLOP/s {100 * best / peak:5.1f} %")


_FP32_SUMMARY = Summary(
    "GFLOP/s against the fp32 FMA peak of the same ISA and thread count", _PEAKS, RESULTS,
    peak_line=lambda isa, peak: (f"peak {isa:7s}: {peak:7.1f} GFLOP/s per core (fma_loop, the "
                                 f"best timing of the session); the peak of t threads is t "
                                 f"times that"),
    row_line=_fp32_row, header=f"{'':48s}   median time        best time")


def pytest_terminal_summary(terminalreporter):
    _FP32_SUMMARY.pytest_terminal_summary(terminalreporter)
