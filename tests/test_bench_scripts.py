"""The benchmark scripts (bench/) still run against the engine's API: their pure parts here, on
tiny inputs (the measurements themselves need the peers and minutes, so CI does not run them)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

import compare  # noqa: E402
import int8_scheme_study as study  # noqa: E402


def _result(scale):
    lat = {str(n): 0.001 * n * scale for n in compare.bench.LENGTHS}
    return {"latency_s": lat, "throughput_caller": 100 / scale, "throughput_sorted": 90 / scale,
            "peak_rss_mb": 100 * scale, "cold_start_s": 0.2 * scale}


def test_compare_table_gives_median_ratios_and_their_range():
    lineup = compare.LINEUPS["fp32"]
    rounds = [{f"{e}/2": _result(s) for e, s in zip(lineup, scales)}
              for scales in ((1, 2, 3), (1, 1.5, 4), (1, 2.5, 2))]
    md = compare.table({"rounds": rounds}, [2], lineup)
    row = next(line for line in md.splitlines() if line.startswith("| latency 16 tokens"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    # ours 16 ms every round; ONNX Runtime 32, 24, 40 ms: median 32, ratios 2, 1.5, 2.5
    assert cells[1:4] == ["16.00", "32.00", "48.00"]
    assert cells[4] == "2.00x (1.50-2.50)" and cells[5] == "3.00x (2.00-4.00)"
    tp = next(line for line in md.splitlines() if line.startswith("| throughput, caller"))
    assert "2.00x (1.50-2.50)" in tp  # higher is better: ours over theirs


def test_study_model_runs_the_checkpoint(minilm, minilm_path):
    texts = ["a small test sentence", "another, longer sentence for the simulated model"]
    sim = study.SimModel(minilm_path)
    ref = minilm.encode(texts)
    fp = sim.encode(texts, study.Config("fp32-sim (check)", int8=()), None)
    q = sim.encode(texts, study.Config("x+w groups 64", group=64, wgroup=64), None)
    assert np.min(np.sum(ref * fp, axis=1)) > 0.99999
    assert 0.99 < np.min(np.sum(ref * q, axis=1)) < 1.0
