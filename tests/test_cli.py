"""The command line, run as a user runs it: `python -m bge_engine.cli ...` in a subprocess.

Checks CONTRACT.md section 4: Workers JSON on stdout, one reply per input line, errors on stderr
as one line naming the code, exit status 2 for bad input (payloads, option values, a missing
--input file) and 1 otherwise, a bad input line answered with an error line while the lines
after it are still answered, a closed stdout ending quietly, and that the vectors printed are
exactly the library's (JSON floats are float32 values printed as Python floats).
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


def cli_env(env_extra: dict = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "BGE_ENGINE_MODEL"}
    env["HF_HUB_OFFLINE"] = "1"  # never reach for the network
    env.update(env_extra or {})
    return env


def run(*args, stdin: str = None, env_extra: dict = None,
        module: str = "bge_engine.cli") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *map(str, args)],
                          cwd=REPO, env=cli_env(env_extra), input=stdin, capture_output=True,
                          text=True, encoding="utf-8", timeout=180)


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
    pytest.param('{"text": "a"', "not JSON", id="not-json"),
])
def test_embed_bad_input_line(minilm_path, minilm, bad, named):
    """A bad line: one stderr line naming the code, the line and the key; the lines before and
    after it are answered; exit 2 at the end."""
    stdin = "\n".join([json.dumps({"text": "good"}), bad, json.dumps({"text": "after"})]) + "\n"
    proc = run("embed", "--model", minilm_path, "--input", "-", stdin=stdin)
    assert proc.returncode == 2, proc.stderr
    line = error_line(proc, "invalid_input")
    assert "line 2:" in line and named in line, line
    out = proc.stdout.splitlines()
    assert len(out) == 2
    assert_same_reply(json.loads(out[0]), minilm.embed({"text": "good"}))
    assert_same_reply(json.loads(out[1]), minilm.embed({"text": "after"}))


def test_embed_input_bad_lines_2_and_3(tmp_path, minilm_path, minilm):
    """Lines 2 and 3 are bad: lines 1 and 4 are answered, in order, each bad line gets its own
    error line naming its number, and the exit status is 2."""
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join([json.dumps(PAYLOADS[0]), '{"text": ""}', "not json at all",
                               json.dumps(PAYLOADS[1])]) + "\n", encoding="utf-8")
    proc = run("embed", "--model", minilm_path, "--input", path)
    assert proc.returncode == 2, proc.stderr
    errors = proc.stderr.splitlines()
    assert len(errors) == 2, proc.stderr
    assert errors[0].startswith("bge-engine: error [invalid_input]: line 2: text"), errors
    assert errors[1].startswith("bge-engine: error [invalid_input]: line 3: not JSON"), errors
    out = proc.stdout.splitlines()
    assert len(out) == 2
    assert_same_reply(json.loads(out[0]), minilm.embed(PAYLOADS[0]))
    assert_same_reply(json.loads(out[1]), minilm.embed(PAYLOADS[1]))


def test_embed_input_too_long_line_goes_on(minilm_path, minilm):
    """--no-truncate: a line over the limit is an input_too_long line; the next is answered."""
    stdin = json.dumps({"text": "hello " * 600}) + "\n" + json.dumps({"text": "fine"}) + "\n"
    proc = run("embed", "--model", minilm_path, "--no-truncate", "--input", "-", stdin=stdin)
    assert proc.returncode == 2, proc.stderr
    assert "line 1: text[0]: 602 tokens" in error_line(proc, "input_too_long")
    out = proc.stdout.splitlines()
    assert len(out) == 1
    assert_same_reply(json.loads(out[0]), minilm.embed({"text": "fine"}))


def test_embed_no_truncate(minilm_path):
    proc = run("embed", "--model", minilm_path, "--no-truncate", "short", "hello " * 600)
    assert proc.returncode == 2, proc.stderr
    line = error_line(proc, "input_too_long")
    assert line.startswith("bge-engine: error [input_too_long]: text[1]: 602 tokens"), line
    assert proc.stdout == ""


def test_embed_truncation_warning_names_bge_engine(minilm_path, minilm):
    """Without --no-truncate a long text is cut, with one warning line prefixed bge-engine."""
    proc = run("embed", "--model", minilm_path, "short", "hello " * 600)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "bge-engine: warning: truncated 1 of 2 texts to the model's 512 tokens\n"
    assert_same_reply(json.loads(proc.stdout),
                      minilm.embed({"text": ["short", "hello " * 600]}))


def test_embed_input_file_missing(tmp_path, minilm_path):
    missing = tmp_path / "no-such-file.jsonl"
    proc = run("embed", "--model", minilm_path, "--input", missing)
    assert proc.returncode == 2, proc.stderr
    line = error_line(proc, "invalid_input")
    assert "--input" in line and str(missing) in line and "No such file" in line, line
    assert "Errno" not in line
    assert proc.stdout == ""


@pytest.mark.parametrize("args, named", [
    pytest.param(["embed", "--threads", "0", "a"], "--threads", id="threads-0"),
    pytest.param(["embed", "--threads", "-2", "a"], "--threads", id="threads-negative"),
    pytest.param(["embed", "--threads", "two", "a"], "--threads", id="threads-word"),
    pytest.param(["bench", "--threads", "0"], "--threads", id="bench-threads-0"),
    pytest.param(["embed", "--dtype", "fp64", "a"], "--dtype", id="dtype"),
    pytest.param(["bench", "--dtype", "fp64"], "--dtype", id="bench-dtype"),
    pytest.param(["embed", "--pooling", "max", "a"], "--pooling", id="pooling"),
    pytest.param(["embed", "--frobnicate", "a"], "--frobnicate", id="unknown-option"),
    pytest.param(["frobnicate"], "frobnicate", id="unknown-command"),
    pytest.param([], "command", id="no-command"),
])
def test_bad_option_values(minilm_path, args, named):
    """A bad option value: exit 2, one invalid_input line naming the option, no Python-isms."""
    proc = run(*args, env_extra={"BGE_ENGINE_MODEL": str(minilm_path)})
    assert proc.returncode == 2, proc.stderr
    line = error_line(proc, "invalid_input")
    assert line.startswith("bge-engine: error [invalid_input]: bge-engine"), line
    assert named in line and "None" not in line and "positive int" not in line, line
    assert proc.stdout == ""


def test_closed_stdout_ends_quietly(tmp_path, minilm_path):
    """`bge-engine embed --input FILE | head -n 1`: head gets its line, the command stops at
    the closed pipe with nothing on stderr (exit 141, as a command killed by SIGPIPE)."""
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps({"text": f"line {i}"}) + "\n" for i in range(40)),
                    encoding="utf-8")
    producer = subprocess.Popen(
        [sys.executable, "-m", "bge_engine", "embed", "--model", str(minilm_path), "--input",
         str(path)], cwd=REPO, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    head = subprocess.Popen(["head", "-n", "1"], stdin=producer.stdout, stdout=subprocess.PIPE)
    producer.stdout.close()  # head holds the only reading end now
    first, _ = head.communicate(timeout=180)
    stderr = producer.communicate(timeout=180)[1].decode()
    assert json.loads(first)["shape"] == [1, 384]
    assert stderr == "", stderr  # 40 replies of ~8 kB overflow the pipe: the write failed
    assert producer.returncode == 141


def test_closed_stdout_before_the_reply(minilm_path):
    """The reader is gone before the one reply of `embed TEXT` is written (and flushed)."""
    producer = subprocess.Popen(
        [sys.executable, "-m", "bge_engine", "embed", "--model", str(minilm_path), "a text"],
        cwd=REPO, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    producer.stdout.close()  # before the model has loaded, so before the write
    stderr = producer.communicate(timeout=180)[1].decode()
    assert stderr == "", stderr
    assert producer.returncode == 141


def test_python_m_bge_engine(minilm_path, minilm):
    proc = run("embed", "--model", minilm_path, "a text", module="bge_engine")
    assert proc.returncode == 0, proc.stderr
    assert_same_reply(json.loads(proc.stdout), minilm.embed({"text": ["a text"]}))
    proc = run("--version", module="bge_engine")
    assert proc.stdout.strip() == f"bge-engine {bge_engine.__version__}"


def test_embed_dtype(minilm_path):
    proc = run("embed", "--model", minilm_path, "--dtype", "int8", "a text")
    assert proc.returncode == 0, proc.stderr
    int8 = bge_engine.Engine(str(minilm_path), dtype="int8")
    assert_same_reply(json.loads(proc.stdout), int8.embed({"text": ["a text"]}))
    fp32 = bge_engine.Engine(str(minilm_path)).embed({"text": ["a text"]})
    assert json.loads(proc.stdout)["data"] != fp32["data"]


def test_help_lists_every_subcommand():
    from bge_engine import cli

    names = [name for name, _, _ in cli.COMMANDS]
    assert {"embed", "bench", "info"} <= set(names)
    proc = run("--help", module="bge_engine")
    assert proc.returncode == 0, proc.stderr
    listed = proc.stdout.split("{", 1)[1].split("}", 1)[0].split(",")
    assert listed == names, proc.stdout
    for name in names:
        sub = run(name, "--help")
        assert sub.returncode == 0, sub.stderr
        assert sub.stdout.startswith(f"usage: bge-engine {name}"), sub.stdout
    embed_help = run("embed", "--help").stdout
    for option in ("--model", "--dtype", "--threads", "--no-truncate", "--input", "--pooling"):
        assert option in embed_help, option


def test_bad_bge_isa_warning_names_the_variable():
    """The warning is located at the environment variable, not at a line of the importer
    (the console script's path said nothing useful)."""
    proc = run("info", module="bge_engine", env_extra={"BGE_ISA": "avx9000"})
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("<environment>:0: RuntimeWarning: BGE_ISA='avx9000' names no "
                               "known level; expected one of ref"), lines[0]


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


@pytest.fixture
def logger_restored():
    """The bge_engine logger's handlers and level put back after an in-process main()."""
    from bge_engine import log

    logger = log.logger()
    handlers, level, stderr_handler = list(logger.handlers), logger.level, log._stderr_handler
    yield
    logger.handlers[:] = handlers
    logger.setLevel(level)
    log._stderr_handler = stderr_handler


def test_main_in_process_twice_prints_each_warning_once(minilm_path, capsys, logger_restored):
    """main() called twice in one process (as an app embedding the CLI may) sets up its stderr
    handler once: the truncation warning of the second run is printed once."""
    from bge_engine import cli

    for _ in range(2):
        assert cli.main(["embed", "--model", str(minilm_path), "hello " * 600]) == 0
        out, err = capsys.readouterr()
        assert json.loads(out)["shape"] == [1, 384]
        assert err == "bge-engine: warning: truncated 1 of 1 texts to the model's 512 tokens\n"
