"""The command line, run as a user runs it: `python -m bge_engine.cli ...` in a subprocess.

Checks CONTRACT.md section 4: Workers JSON on stdout, one reply per input line, errors on stderr
as one line naming the code, exit status 2 for bad input and 1 otherwise, and that the vectors
printed are exactly the library's (JSON floats are float32 values printed as Python floats).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import bge_engine

REPO = Path(__file__).resolve().parent.parent


def run(*args, stdin: str = None, env_extra: dict = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "BGE_ENGINE_MODEL"}
    env["HF_HUB_OFFLINE"] = "1"  # never reach for the network
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "bge_engine.cli", *map(str, args)],
                          cwd=REPO, env=env, input=stdin, capture_output=True, text=True,
                          encoding="utf-8", timeout=180)


def as_f32(data) -> np.ndarray:
    return np.asarray(data, dtype=np.float32)


def assert_same_reply(cli: dict, lib: dict) -> None:
    """The CLI's reply is the library's, the vectors equal after float32 (tolerance 0)."""
    if "responses" in lib:
        assert [r["id"] for r in cli["responses"]] == [r["id"] for r in lib["responses"]]
        assert all(r["success"] is True for r in cli["responses"])
        for c, l in zip(cli["responses"], lib["responses"]):
            assert_same_reply(c["result"], l["result"])
        return
    assert cli["shape"] == lib["shape"] and cli["pooling"] == lib["pooling"]
    assert np.array_equal(as_f32(cli["data"]).reshape(cli["shape"]),
                          as_f32(lib["data"]).reshape(lib["shape"]))
    assert cli == lib  # Python floats round-trip through JSON exactly


def error_line(proc: subprocess.CompletedProcess, code: str) -> str:
    """The one stderr line of a failed run, which names `code`."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert code in lines[0], proc.stderr
    return lines[0]


def test_embed_texts(minilm_path, minilm):
    proc = run("embed", "--model", minilm_path, "a text", "another one")
    assert proc.returncode == 0, proc.stderr
    reply = json.loads(proc.stdout)
    assert reply["shape"] == [2, 384] and reply["pooling"] == "mean"
    assert len(reply["data"]) == 2 and all(len(row) == 384 for row in reply["data"])
    assert_same_reply(reply, minilm.embed({"text": ["a text", "another one"]}))
    assert proc.stdout.count("\n") == 1  # one JSON document, one line


def test_embed_pooling_cls(minilm_path, minilm):
    proc = run("embed", "--model", minilm_path, "--pooling", "cls", "an orange cloud")
    assert proc.returncode == 0, proc.stderr
    reply = json.loads(proc.stdout)
    assert reply["shape"] == [1, 384] and reply["pooling"] == "cls"
    assert_same_reply(reply, minilm.embed({"text": ["an orange cloud"], "pooling": "cls"}))
    mean = minilm.embed({"text": ["an orange cloud"]})
    assert reply["data"] != mean["data"]


def test_embed_model_from_environment(minilm_path, minilm):
    proc = run("embed", "from the environment", env_extra={"BGE_ENGINE_MODEL": str(minilm_path)})
    assert proc.returncode == 0, proc.stderr
    assert_same_reply(json.loads(proc.stdout), minilm.embed({"text": ["from the environment"]}))


PAYLOADS = [
    {"text": "first line"},
    {"text": ["second", "line"], "pooling": "cls"},
    {"requests": [{"text": "third"}, {"text": ["line", "here"], "pooling": "cls"}]},
    {"text": []},
]


def test_embed_input_file(tmp_path, minilm_path, minilm):
    path = tmp_path / "in.jsonl"
    lines = [json.dumps(p) for p in PAYLOADS]
    lines.insert(2, "")  # blank lines are skipped
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    proc = run("embed", "--model", minilm_path, "--input", path)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.splitlines()
    assert len(out) == len(PAYLOADS)
    for line, payload in zip(out, PAYLOADS):
        assert_same_reply(json.loads(line), minilm.embed(payload))


def test_embed_input_stdin(minilm_path, minilm):
    stdin = "".join(json.dumps(p) + "\n" for p in PAYLOADS[:3])
    proc = run("embed", "--model", minilm_path, "--input", "-", stdin=stdin)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.splitlines()
    assert len(out) == 3
    for line, payload in zip(out, PAYLOADS):
        assert_same_reply(json.loads(line), minilm.embed(payload))


@pytest.mark.parametrize("bad, named", [
    pytest.param('{"text": 5}', "text", id="text-int"),
    pytest.param('{"text": ["a", ""]}', "text[1]", id="empty-at-1"),
    pytest.param('{"text": "\\ud800"}', "text", id="lone-surrogate"),
    pytest.param('{"text": "a", "pooling": "max"}', "pooling", id="pooling"),
    pytest.param('["a"]', "payload", id="not-an-object"),
    pytest.param('{"text": "a"', "line 2", id="not-json"),
])
def test_embed_bad_input_line(minilm_path, minilm, bad, named):
    """A bad line: exit 2, one stderr line naming the code, the line and the key; the replies
    of the lines before it were written."""
    stdin = "\n".join([json.dumps({"text": "good"}), bad, json.dumps({"text": "never"})]) + "\n"
    proc = run("embed", "--model", minilm_path, "--input", "-", stdin=stdin)
    assert proc.returncode == 2, proc.stderr
    line = error_line(proc, "invalid_input")
    assert "line 2" in line and named in line, line
    out = proc.stdout.splitlines()
    assert len(out) == 1
    assert_same_reply(json.loads(out[0]), minilm.embed({"text": "good"}))


def test_embed_text_argument_not_utf8(minilm_path):
    """A TEXT argument that is not UTF-8 (a lone surrogate once decoded) is bad input."""
    proc = run("embed", "--model", minilm_path, "fine", os.fsdecode(b"bad \xff byte"))
    assert proc.returncode == 2, proc.stderr
    assert "text[1]" in error_line(proc, "invalid_input")
    assert proc.stdout == ""


def test_embed_stdin_not_utf8(minilm_path, minilm):
    """A line of stdin that is not UTF-8 is bad input on that line (C.UTF-8 locale)."""
    stdin = b'{"text": "good"}\n{"text": "bad \xff byte"}\n'
    env = {k: v for k, v in os.environ.items() if k != "BGE_ENGINE_MODEL"}
    env.update(LC_ALL="C.UTF-8", HF_HUB_OFFLINE="1")
    env.pop("PYTHONIOENCODING", None)
    proc = subprocess.run([sys.executable, "-m", "bge_engine.cli", "embed", "--model",
                           str(minilm_path), "--input", "-"], cwd=REPO, env=env, input=stdin,
                          capture_output=True, timeout=180)
    stderr = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == 2, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "invalid_input" in lines[0] and "line 2" in lines[0], stderr
    out = proc.stdout.decode().splitlines()
    assert len(out) == 1
    assert_same_reply(json.loads(out[0]), minilm.embed({"text": "good"}))


def test_embed_input_file_not_utf8(tmp_path, minilm_path, minilm):
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'{"text": "good"}\n{"text": "bad \xff byte"}\n')
    proc = run("embed", "--model", minilm_path, "--input", path)
    assert proc.returncode == 2, proc.stderr
    assert "line 2" in error_line(proc, "invalid_input")
    out = proc.stdout.splitlines()
    assert len(out) == 1
    assert_same_reply(json.loads(out[0]), minilm.embed({"text": "good"}))


def test_embed_no_texts_is_bad_input(minilm_path):
    proc = run("embed", "--model", minilm_path)
    assert proc.returncode == 2
    error_line(proc, "invalid_input")
    assert proc.stdout == ""


def test_embed_model_not_found(tmp_path):
    missing = tmp_path / "no-such-model"
    proc = run("embed", "--model", missing, "a text")
    assert proc.returncode == 1
    line = error_line(proc, "model_not_found")
    assert "no-such-model" in line
    assert proc.stdout == ""


def test_embed_model_format_error(tmp_path, minilm_path):
    folder = tmp_path / "broken"
    folder.mkdir()
    for name in ("config.json", "tokenizer.json"):
        (folder / name).symlink_to(minilm_path / name)
    (folder / "model.safetensors").write_bytes(np.random.default_rng(3).bytes(2048))
    proc = run("embed", "--model", folder, "a text")
    assert proc.returncode == 1
    line = error_line(proc, "model_format")
    assert "model.safetensors" in line


def test_info():
    proc = run("info")
    assert proc.returncode == 0, proc.stderr
    assert bge_engine.__version__ in proc.stdout
    kernels = bge_engine.cpu_info()["kernels"]
    assert kernels
    for slot, name in kernels.items():
        assert slot in proc.stdout and name in proc.stdout, (slot, name)


def test_info_json():
    proc = run("info", "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert {"features", "kernels", "isa", "version"} <= set(info)
    here = bge_engine.cpu_info()
    assert info["version"] == bge_engine.__version__
    assert info["kernels"] == here["kernels"] and info["isa"] == here["isa"]
    assert info["features"] == here["features"]


def test_version():
    proc = run("--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"bge-engine {bge_engine.__version__}"
