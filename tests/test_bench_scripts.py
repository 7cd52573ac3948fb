"""The benchmark scripts (bench/) still run against the engine's API: their pure parts here, on
tiny inputs (the measurements themselves need the peers and minutes, so CI does not run them)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

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


def test_compare_rounds_rotate_the_first_engine():
    lineup = compare.LINEUPS["int8"]
    firsts = [compare.rotated(lineup, k)[0] for k in range(6)]
    assert firsts == list(lineup) * 2
    assert all(sorted(compare.rotated(lineup, k)) == sorted(lineup) for k in range(6))


def test_compare_worker_serves_each_measure():
    """The worker's loop, with a stand-in engine that records what it was given."""
    seen, replies = [], []
    sentences = [f"sentence number {i}" + " word" * (i % 7) for i in range(70)]

    def embed(texts):
        seen.append(list(texts))
        return np.zeros((len(texts), 4), np.float32)

    commands = [{"op": "latency", "n": 16, "calls": 3},
                {"op": "throughput", "order": "caller", "calls": 2},
                {"op": "throughput", "order": "sorted", "calls": 1},
                {"op": "rss"}]
    compare.serve(embed, sentences, iter(commands), replies.append)
    assert [len(r["seconds"]) for r in replies[:3]] == [3, 2, 1]
    assert all(t >= 0 for r in replies[:3] for t in r["seconds"])
    assert replies[3]["peak_rss_mb"] > 0
    text = compare.bench.text_of_tokens(16)
    assert seen[:4] == [[text]] * 4  # one untimed call, then the 3 timed ones
    passes = seen[4:]
    caller = [sentences[i:i + 32] for i in range(0, 70, 32)]
    by_len = sorted(sentences, key=len)
    ordered = [by_len[i:i + 32] for i in range(0, 70, 32)]
    # an untimed first batch, 2 passes in the caller's order, one untimed, 1 sorted pass
    assert passes == [caller[0]] + caller * 2 + [ordered[0]] + ordered


def test_compare_keeps_the_start_environment_for_the_peers():
    # START_ENV is taken before bge_engine sets its thread-spin defaults; the peers' workers
    # and cold starts run in it, and _peer_embedder restores it before loading a peer.
    code = ("import os, sys; sys.path.insert(0, %r); import compare; "
            "print(sorted(k for k in ('GOMP_SPINCOUNT', 'OPENBLAS_THREAD_TIMEOUT') "
            "if k in compare.START_ENV), os.environ['OPENBLAS_THREAD_TIMEOUT'])" % str(BENCH))
    env = {k: v for k, v in os.environ.items()
           if k not in ("GOMP_SPINCOUNT", "OPENBLAS_THREAD_TIMEOUT")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[] 16"


def test_cold_start_ends_at_the_first_vector_not_at_exit():
    # the child's work (0.2 s of sleep) counts; a 3 s atexit hook, the interpreter's
    # shutdown, does not; the child's own output does not confuse the report
    code = ("import atexit, time; print('@@first-vector? no'); time.sleep(0.2); "
            "atexit.register(time.sleep, 3.0)")
    seconds = compare.bench.cold_start_seconds(code, repeats=1)
    assert 0.2 <= seconds < 2.0
    with pytest.raises(subprocess.CalledProcessError):
        compare.bench.cold_start_seconds("raise SystemExit(3)", repeats=1)


def test_study_model_runs_the_checkpoint(minilm, minilm_path):
    texts = ["a small test sentence", "another, longer sentence for the simulated model"]
    sim = study.SimModel(minilm_path)
    ref = minilm.encode(texts)
    fp = sim.encode(texts, study.Config("fp32-sim (check)", int8=()), None)
    q = sim.encode(texts, study.Config("x+w groups 64", group=64, wgroup=64), None)
    assert np.min(np.sum(ref * fp, axis=1)) > 0.99999
    assert 0.99 < np.min(np.sum(ref * q, axis=1)) < 1.0


def test_study_sink_rows_and_outliers_lift_short_texts(minilm, minilm_path):
    # the study's remedies for texts of one to three words (docs/design/int8.md): the
    # [CLS] and [SEP] rows in fp32 lift the simulated int8 on "ok" and "thanks"
    texts = ["ok", "thanks"]
    sim = study.SimModel(minilm_path)
    sim.calibrate(study.CALIBRATION_TEXTS[:8])
    ref = minilm.encode(texts, pooling="mean")
    base = dict(group=64, wgroup=64)

    def cos(cfg):
        return np.min(np.sum(ref * sim.encode(texts, cfg, "mean"), axis=1))

    plain = cos(study.Config("x+w groups 64", **base))
    sinks = cos(study.Config("sinks fp32", sinks="fp32", **base))
    two = cos(study.Config("sinks in two digits", sinks="two digits", **base))
    outliers = cos(study.Config("4 outliers", outliers=4, **base))
    assert plain < 0.999 <= sinks, (plain, sinks)
    assert plain < two < sinks and plain < outliers < 1.0, (plain, two, sinks, outliers)
