"""`bge-engine encode` (CONTRACT.md 4): a corpus from a file to a file.

Every input format to every output format, the rows equal to Engine.encode of their texts bit
for bit, the input's columns and order kept; bad rows failing the run (no output) or written
with a null embedding; nothing left under the output's name by a failed or interrupted run.
In-process runs use chunks of 7 rows and row groups of 10, so that a few dozen texts cross
many chunk and row-group edges; the command line runs in subprocesses as a user runs it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from bge_engine import InvalidInput
from bge_engine.corpus import encode_file, readers, writers

pa = pytest.importorskip("pyarrow")  # the `io` extra, which the `test` extra pulls in
pq = pytest.importorskip("pyarrow.parquet")

REPO = Path(__file__).resolve().parent.parent
SENTENCES = (REPO / "bench" / "sentences.txt").read_text(encoding="utf-8").splitlines()
# Beside the benchmark sentences: quoting, commas, non-ASCII, a carriage return inside a
# line (a .txt row ends only at "\n"), a text over the 512-token limit (truncated).
TEXTS = SENTENCES[:24] + ['a "quoted", comma text', "ünïcödé 東京 text", "a\rb",
                          "long " * 600]
INPUTS = (".txt", ".jsonl", ".csv", ".parquet")
OUTPUTS = (".npy", ".parquet", ".jsonl")


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    monkeypatch.setattr(readers, "CHUNK_ROWS", 7)
    monkeypatch.setattr(writers, "ROW_GROUP_ROWS", 10)


@pytest.fixture(scope="module")
def reference(bge) -> np.ndarray:
    return bge.encode(TEXTS)


def columns(texts) -> dict:
    """The input's columns for a .jsonl, .csv or .parquet input: an id, the text, a tag."""
    n = len(texts)
    return {"id": list(range(100, 100 + n)), "text": list(texts),
            "tag": [f"t{i % 3}" for i in range(n)]}


def write_input(path: Path, cols: dict) -> Path:
    """Writes `cols` in the format of path's suffix (.txt: the text column only)."""
    suffix = path.suffix
    if suffix == ".txt":
        path.write_bytes(b"".join(t.encode("utf-8") + b"\n" for t in cols["text"]))
    elif suffix == ".jsonl":
        rows = [dict(zip(cols, values)) for values in zip(*cols.values())]
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    elif suffix == ".csv":
        from pyarrow import csv

        csv.write_csv(pa.table(cols), str(path))
    else:
        pq.write_table(pa.table(cols), str(path))
    return path


def read_output(path: Path):
    """(vectors, other columns) of an output: vectors float32 (n, dim) with NaN rows where
    the embedding is null; the other columns as a dict of lists (None for a .npy)."""
    if path.suffix == ".npy":
        return np.load(path), None
    if path.suffix == ".parquet":
        table = pq.read_table(path)
        emb = table.column("embedding")
        assert emb.type == pa.list_(pa.float32(), 384)
        rows = emb.to_pylist()
        others = {n: table.column(n).to_pylist() for n in table.column_names if n != "embedding"}
        assert table.column_names[-1] == "embedding"
    else:
        records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        rows = [r.pop("embedding") for r in records]
        others = {k: [r.get(k) for r in records] for k in records[0]} if records else {}
    vectors = np.array([r if r is not None else [np.nan] * 384 for r in rows], dtype=np.float32)
    return vectors.reshape(len(rows), 384), others


@pytest.mark.parametrize("out", OUTPUTS)
@pytest.mark.parametrize("inp", INPUTS)
def test_every_format(tmp_path, bge, reference, inp, out):
    cols = columns(TEXTS)
    src = write_input(tmp_path / f"in{inp}", cols)
    dst = tmp_path / f"out{out}"
    summary = encode_file(bge, str(src), str(dst), progress=False)
    assert summary.rows == len(TEXTS) and summary.skipped == 0
    vectors, others = read_output(dst)
    assert vectors.dtype == np.float32 and vectors.shape == reference.shape
    assert np.array_equal(vectors, reference)  # bit for bit, in input order
    expected = {"text": TEXTS} if inp == ".txt" else cols
    if out != ".npy":
        assert list(others) == list(expected)  # the input's columns, in their order
        assert others == expected
    assert sorted(os.listdir(tmp_path)) == sorted([src.name, dst.name])  # no temporary left


def test_parquet_types_kept(tmp_path, bge, reference):
    """A .parquet input's column types (int32, nested lists, dictionary strings) survive."""
    n = len(TEXTS)
    table = pa.table({"key": pa.array(range(n), pa.int32()),
                      "body": pa.array(TEXTS).dictionary_encode(),
                      "labels": pa.array([[i, i + 1] for i in range(n)], pa.list_(pa.int64()))})
    pq.write_table(table, str(tmp_path / "in.parquet"))
    encode_file(bge, str(tmp_path / "in.parquet"), str(tmp_path / "out.parquet"),
                column="body", progress=False)
    out = pq.read_table(tmp_path / "out.parquet")
    assert out.schema.names == ["key", "body", "labels", "embedding"]
    assert out.drop_columns(["embedding"]).equals(table)
    assert np.array_equal(np.array(out["embedding"].to_pylist(), np.float32), reference)


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_pooling_and_batch_size(tmp_path, bge, pooling):
    src = write_input(tmp_path / "in.txt", {"text": TEXTS})
    encode_file(bge, str(src), str(tmp_path / "out.npy"), pooling=pooling, batch_size=3,
                progress=False)
    assert np.array_equal(np.load(tmp_path / "out.npy"), bge.encode(TEXTS, pooling=pooling))


# Bad rows, per input format: (file content, the 1-based rows that are bad, how a message
# names the first). A .jsonl row may lack the field, hold a number, null or ""; blank
# lines are skipped there, so a message names the line beside the row.
GOOD = SENTENCES[30:36]


def bad_input(tmp_path: Path, suffix: str):
    if suffix == ".txt":  # an empty line, and bytes that are not UTF-8 (shown as U+FFFD)
        path = tmp_path / "in.txt"
        path.write_bytes(GOOD[0].encode() + b"\n\n" + GOOD[1].encode() + b"\n\xff\xfe bytes\n"
                         + GOOD[2].encode() + b"\n")
        lines = [GOOD[0], "", GOOD[1], "\ufffd\ufffd bytes", GOOD[2]]
        return path, [2, 4], "row 2, column 'text'", {"text": lines}
    if suffix == ".jsonl":
        rows = [{"id": 0, "text": GOOD[0]}, {"id": 1}, {"id": 2, "text": GOOD[1]},
                {"id": 3, "text": 5}, {"id": 4, "text": None}, {"id": 5, "text": ""},
                {"id": 6, "text": GOOD[2]}]
        path = tmp_path / "in.jsonl"
        path.write_text(json.dumps(rows[0]) + "\n\n" + "".join(json.dumps(r) + "\n"
                                                               for r in rows[1:]))
        expected = {"id": list(range(7)), "text": [r.get("text") for r in rows]}
        return path, [2, 4, 5, 6], "row 2 (line 3), column 'text'", expected
    cols = {"id": list(range(5)), "text": [GOOD[0], "", GOOD[1], None, GOOD[2]]}
    table = pa.table(cols)
    path = tmp_path / f"in{suffix}"
    if suffix == ".csv":
        from pyarrow import csv

        csv.write_csv(table, str(path))  # None and "" both become an empty field
        cols = {"id": cols["id"], "text": [GOOD[0], "", GOOD[1], "", GOOD[2]]}
    else:
        pq.write_table(table, str(path))
    return path, [2, 4], "row 2, column 'text'", cols


@pytest.mark.parametrize("out", OUTPUTS)
@pytest.mark.parametrize("inp", INPUTS)
def test_bad_rows_fail(tmp_path, bge, inp, out):
    src, bad, first, _ = bad_input(tmp_path, inp)
    dst = tmp_path / f"out{out}"
    dst.write_bytes(b"an older output")  # kept as it was by a failed run
    with pytest.raises(InvalidInput, match=f"^{__import__('re').escape(first)}"):
        encode_file(bge, str(src), str(dst), progress=False)
    assert dst.read_bytes() == b"an older output"
    assert sorted(os.listdir(tmp_path)) == sorted([src.name, dst.name])


@pytest.mark.parametrize("out", [".parquet", ".jsonl"])
@pytest.mark.parametrize("inp", INPUTS)
def test_bad_rows_skip(tmp_path, bge, inp, out):
    src, bad, _, expected = bad_input(tmp_path, inp)
    dst = tmp_path / f"out{out}"
    summary = encode_file(bge, str(src), str(dst), on_error="skip", progress=False)
    texts = expected["text"]
    assert summary.rows == len(texts) and summary.skipped == len(bad)
    vectors, others = read_output(dst)
    good = [i for i in range(len(texts)) if i + 1 not in bad]
    assert np.isnan(vectors[[b - 1 for b in bad]]).all()  # null embeddings
    assert np.array_equal(vectors[good], bge.encode([texts[i] for i in good]))
    if inp == ".jsonl" and out == ".parquet":  # the text column is a string: null if not one
        expected = {**expected, "text": [t if isinstance(t, str) else None for t in texts]}
    if inp == ".jsonl" and out == ".jsonl":  # fields kept as they were, a missing one too
        assert others["id"] == expected["id"] and others["text"][0] == texts[0]
        lines = (tmp_path / "out.jsonl").read_text().splitlines()
        assert "text" not in json.loads(lines[1]) and json.loads(lines[3])["text"] == 5
    else:
        assert others == expected


def test_skip_refused_for_npy(tmp_path, bge):
    src, *_ = bad_input(tmp_path, ".txt")
    with pytest.raises(InvalidInput, match="npy"):
        encode_file(bge, str(src), str(tmp_path / "out.npy"), on_error="skip", progress=False)
    assert not (tmp_path / "out.npy").exists()


@pytest.mark.parametrize("inp", INPUTS)
def test_empty_input(tmp_path, bge, inp):
    src = tmp_path / f"in{inp}"
    if inp in (".txt", ".jsonl"):
        src.write_bytes(b"")
    else:
        write_input(src, {"text": pa.array([], pa.string())})
    encode_file(bge, str(src), str(tmp_path / "out.npy"), progress=False)
    assert np.load(tmp_path / "out.npy").shape == (0, 384)
    encode_file(bge, str(src), str(tmp_path / "out.parquet"), progress=False)
    table = pq.read_table(tmp_path / "out.parquet")
    assert table.num_rows == 0 and table.column_names == ["text", "embedding"]


def test_input_errors(tmp_path, bge):
    """Refused before anything is read: a bad suffix, a missing file or column, an output
    field the input already has, a .jsonl line that is not an object."""
    txt = write_input(tmp_path / "in.txt", {"text": GOOD})
    for src, dst, match in [
            (tmp_path / "in.doc", tmp_path / "o.npy", "INPUT .*expected a file ending in"),
            (txt, tmp_path / "o.txt", "OUTPUT .*expected a file ending in"),
            (tmp_path / "nothere.txt", tmp_path / "o.npy", "no such file"),
            (txt, tmp_path / "nofolder" / "o.npy", "no folder")]:
        with pytest.raises(InvalidInput, match=match):
            encode_file(bge, str(src), str(dst), progress=False)
    pq.write_table(pa.table({"body": GOOD}), str(tmp_path / "in.parquet"))
    with pytest.raises(InvalidInput, match=r"no column 'text' \(columns: \['body'\]\).*--column"):
        encode_file(bge, str(tmp_path / "in.parquet"), str(tmp_path / "o.npy"), progress=False)
    pq.write_table(pa.table({"text": GOOD, "embedding": GOOD}), str(tmp_path / "e.parquet"))
    with pytest.raises(InvalidInput, match="already has a column 'embedding'"):
        encode_file(bge, str(tmp_path / "e.parquet"), str(tmp_path / "o.parquet"),
                    progress=False)
    (tmp_path / "l.jsonl").write_text('{"text": "a"}\n[1, 2]\n')
    with pytest.raises(InvalidInput, match="line 2: expected a JSON object, got list"):
        encode_file(bge, str(tmp_path / "l.jsonl"), str(tmp_path / "o.npy"), progress=False)
    (tmp_path / "l.jsonl").write_text('{"text": "a"}\n{"text": \n')
    with pytest.raises(InvalidInput, match="line 2: not a JSON object"):
        encode_file(bge, str(tmp_path / "l.jsonl"), str(tmp_path / "o.npy"), progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.parquet", "in.parquet", "in.txt",
                                                         "l.jsonl"]


def test_jsonl_to_parquet_fields_fixed_by_first_chunk(tmp_path, bge):
    rows = [{"text": t, "n": i} for i, t in enumerate(GOOD)] * 2
    rows[9] = {"text": GOOD[0], "n": 1, "new": True}  # past the first chunk of 7 rows
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(InvalidInput, match=r"row 10 \(line 10\): field 'new'"):
        encode_file(bge, str(tmp_path / "in.jsonl"), str(tmp_path / "o.parquet"),
                    progress=False)
    assert not (tmp_path / "o.parquet").exists()


def test_npy_header_any_row_count(tmp_path):
    """The .npy header, written first and again at the end, has room for any row count."""
    for rows in (0, 1, 2**63 - 1):
        header = writers.npy_header(rows, 384)
        assert len(header) == writers.NPY_HEADER_BYTES and header.endswith(b"\n")
        (tmp_path / "h.npy").write_bytes(header)
        with open(tmp_path / "h.npy", "rb") as f:
            version = np.lib.format.read_magic(f)
            assert version == (1, 0)
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        assert shape == (rows, 384) and not fortran and dtype == np.float32


# -- the command line ----------------------------------------------------------------------

def cli(*args, chunk_rows: int = 7, env_extra: dict = None, **popen) -> subprocess.Popen:
    """`bge-engine ARGS` in a subprocess, with chunks of chunk_rows rows."""
    env = {k: v for k, v in os.environ.items() if k != "BGE_ENGINE_MODEL"}
    env["HF_HUB_OFFLINE"] = "1"
    env.update(env_extra or {})
    # SIGINT raises KeyboardInterrupt in the child as from a terminal, even where pytest runs
    # as a shell's background job (which starts its children with SIGINT ignored)
    code = ("import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
            "from bge_engine.corpus import readers; "
            f"readers.CHUNK_ROWS = {chunk_rows}; "
            "from bge_engine.cli import main; sys.exit(main(sys.argv[1:]))")
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], cwd=REPO, env=env,
                            **popen)


def run(*args, **kw) -> subprocess.CompletedProcess:
    proc = cli(*args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)
    out, err = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_cli_encode(tmp_path, synthetic_path, bge):
    cols = columns(GOOD)
    cols["body"] = cols.pop("text")
    src = write_input(tmp_path / "in.csv", cols)
    dst = tmp_path / "out.parquet"
    proc = run("encode", src, "-o", dst, "--model", synthetic_path, "--column", "body",
               "--pooling", "mean", "--threads", "1", "--batch-size", "2", chunk_rows=4)
    assert proc.returncode == 0, proc.stderr
    assert f"encoded {len(GOOD)} rows" in proc.stderr and "texts/s" in proc.stderr
    vectors, others = read_output(dst)
    assert np.array_equal(vectors, bge.encode(GOOD, pooling="mean"))
    assert others == cols and list(others) == ["id", "tag", "body"]


def test_cli_prompt_name(tmp_path, synthetic_path, bge):
    """--prompt-name puts the checkpoint's prompt before every text, as Engine.encode does;
    an unknown name is refused naming it."""
    import shutil

    model = tmp_path / "model"
    shutil.copytree(synthetic_path, model)
    (model / "config_sentence_transformers.json").write_text(
        json.dumps({"prompts": {"query": "query: "}}))
    src = write_input(tmp_path / "in.jsonl", columns(GOOD))
    proc = run("encode", src, "-o", tmp_path / "out.npy", "--model", model,
               "--prompt-name", "query")
    assert proc.returncode == 0, proc.stderr
    expected = bge.encode(GOOD, prompt="query: ")
    assert np.array_equal(np.load(tmp_path / "out.npy"), expected)
    assert not np.array_equal(expected, bge.encode(GOOD))
    proc = run("encode", src, "-o", tmp_path / "o2.npy", "--model", model,
               "--prompt-name", "nosuch")
    assert proc.returncode == 2 and "[invalid_input]" in proc.stderr, proc.stderr
    assert "nosuch" in proc.stderr and not (tmp_path / "o2.npy").exists()


@pytest.mark.parametrize("inp", INPUTS)
def test_cli_bad_row_exit_2(tmp_path, synthetic_path, inp):
    src, bad, first, _ = bad_input(tmp_path, inp)
    proc = run("encode", src, "-o", tmp_path / "out.npy", "--model", synthetic_path)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "[invalid_input]" in lines[0] and first in lines[0], proc.stderr
    assert not (tmp_path / "out.npy").exists()
    assert sorted(os.listdir(tmp_path)) == [src.name]


def test_cli_refusals(tmp_path, synthetic_path):
    src = write_input(tmp_path / "in.txt", {"text": GOOD})
    for args in ([src, "-o", tmp_path / "o.npy", "--on-error", "skip"],
                 [src, "-o", tmp_path / "o.xlsx"],
                 [tmp_path / "none.txt", "-o", tmp_path / "o.npy"]):
        proc = run("encode", *args, "--model", synthetic_path)
        assert proc.returncode == 2 and "[invalid_input]" in proc.stderr, proc.stderr
    for bad in (["--threads", "0"], ["--batch-size", "-1"], ["--on-error", "ignore"]):
        proc = run("encode", src, "-o", tmp_path / "o.npy", "--model", synthetic_path, *bad)
        assert proc.returncode == 2 and bad[0] in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and "[invalid_input]" in proc.stderr
    assert sorted(os.listdir(tmp_path)) == ["in.txt"]


def test_cli_without_pyarrow(tmp_path, synthetic_path, bge):
    """.txt and .jsonl to .npy and .jsonl need no pyarrow; .parquet says to install `io`."""
    src = write_input(tmp_path / "in.jsonl", columns(GOOD))
    blocker = tmp_path / "block" / "pyarrow"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('pyarrow is blocked here')\n")
    env = {"PYTHONPATH": str(blocker.parent)}
    for out in ("out.npy", "out.jsonl"):
        proc = run("encode", src, "-o", tmp_path / out, "--model", synthetic_path,
                   env_extra=env)
        assert proc.returncode == 0, proc.stderr
        assert np.array_equal(read_output(tmp_path / out)[0], bge.encode(GOOD))
    proc = run("encode", src, "-o", tmp_path / "out.parquet", "--model", synthetic_path,
               env_extra=env)
    assert proc.returncode == 1 and "bge-engine[io]" in proc.stderr, proc.stderr


def test_cli_progress_bar_on_a_terminal(tmp_path, synthetic_path):
    """On a terminal, stderr shows a tqdm bar counting texts with its rate in texts/s."""
    import fcntl
    import pty
    import struct
    import termios

    src = write_input(tmp_path / "in.txt", {"text": GOOD})
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # 100 columns
    proc = cli("encode", src, "-o", tmp_path / "o.npy", "--model", synthetic_path,
               chunk_rows=2, stdout=subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    seen = b""
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        seen += data
    os.close(master)
    assert proc.wait(timeout=300) == 0, seen
    text = seen.decode("utf-8", "replace")
    bar = text[:text.index("bge-engine: encoded")]
    assert f"encode: {len(GOOD)} texts [" in bar and " texts/s" in bar, text


def _wait_for(predicate, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.mark.parametrize("out,sig", [(".npy", signal.SIGINT), (".parquet", signal.SIGINT),
                                     (".jsonl", signal.SIGTERM)])
def test_interrupted_run_leaves_no_output(tmp_path, synthetic_path, out, sig):
    """A signal mid-way (after the first chunk is written, long before the last) leaves no
    file under the output's name and removes the temporary one."""
    texts = [f"{SENTENCES[i % len(SENTENCES)]} {i}" for i in range(4000)]
    src = write_input(tmp_path / "in.txt", {"text": texts})
    dst = tmp_path / f"out{out}"
    proc = cli("encode", src, "-o", dst, "--model", synthetic_path, chunk_rows=20,
               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def temporary():
        return [p for p in tmp_path.iterdir() if p.name.startswith(f".{dst.name}.")]

    # Mid-way: the temporary file holds a chunk's rows (.parquet: the writer has opened it,
    # which it does with the first chunk; its row groups are buffered up to 8192 rows).
    threshold = {".npy": 128 + 20 * 384 * 4, ".parquet": 0, ".jsonl": 20 * 384 * 8}[out]
    _wait_for(lambda: any(p.stat().st_size > threshold for p in temporary()) or
              proc.poll() is not None)
    assert proc.poll() is None, proc.stderr.read()
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == (130 if sig == signal.SIGINT else 128 + sig), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt"], err
