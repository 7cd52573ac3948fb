"""The Engine front a sentence-transformers user meets (CONTRACT.md section 2): Engine() and
BGE_ENGINE_MODEL, encode's input types and shapes, prompts (prompt=, prompt_name=, encode_query,
encode_document, the built-in bge query instruction), and the library's logging.

Prompts are checked bit for bit against the same text with the prompt written in: a prompt is
text put before the text, tokenised with it, as sentence-transformers does.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bge_engine import Engine, InputTooLong, InvalidInput, ModelFormatError
from bge_engine.prompts import BGE_QUERY
from test_hub import link_model, make_cache

TEXTS = ["The quick brown fox", "jumps over the lazy dog", "an orange cloud"]
QUERY = "query: "
PASSAGE = "passage: "


def child(code: str, env_extra: dict, cwd: Path) -> subprocess.CompletedProcess:
    """Runs `code` in a fresh interpreter with BGE_ENGINE_MODEL unset unless env_extra sets
    it, offline, with an empty Hugging Face cache under cwd."""
    env = {k: v for k, v in os.environ.items() if k != "BGE_ENGINE_MODEL"}
    env.update(HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(cwd / "empty-hf-cache"), **env_extra)
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=180)


def with_st_config(src: Path, dst: Path, config: dict) -> Path:
    """src's checkpoint (symlinks) with config_sentence_transformers.json replaced by config."""
    folder = link_model(src, dst)
    (folder / "config_sentence_transformers.json").unlink(missing_ok=True)
    (folder / "config_sentence_transformers.json").write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="module")
def prompted(minilm_path, tmp_path_factory) -> Engine:
    """MiniLM with a checkpoint prompt file: query and passage prompts, no default."""
    folder = with_st_config(minilm_path, tmp_path_factory.mktemp("prompted") / "m",
                            {"prompts": {"query": QUERY, "passage": PASSAGE}})
    return Engine(str(folder))


# -- Engine(model=None) --------------------------------------------------------------------------

def test_engine_without_model_follows_bge_engine_model(minilm_path, minilm, tmp_path):
    """Engine() and Engine(None) load the model BGE_ENGINE_MODEL names (a fresh process)."""
    code = ("import json, bge_engine\n"
            "a, b = bge_engine.Engine(), bge_engine.Engine(None)\n"
            "print(json.dumps([str(a.folder), str(b.folder), a.encode('hello').tolist()]))")
    proc = child(code, {"BGE_ENGINE_MODEL": str(minilm_path)}, tmp_path)
    assert proc.returncode == 0, proc.stderr
    folder_a, folder_b, vector = json.loads(proc.stdout)
    assert folder_a == folder_b == str(minilm_path)
    assert np.array_equal(np.asarray(vector, dtype=np.float32), minilm.encode("hello"))


def test_engine_without_model_or_variable_means_bge_small(tmp_path):
    """Without BGE_ENGINE_MODEL, Engine() looks for BAAI/bge-small-en-v1.5 (offline, empty
    cache: ModelNotFound naming it)."""
    code = ("import bge_engine\n"
            "try:\n    bge_engine.Engine()\n"
            "except bge_engine.ModelNotFound as exc:\n    print(exc)\n")
    proc = child(code, {}, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "'BAAI/bge-small-en-v1.5' not found" in proc.stdout, proc.stdout


# -- encode's inputs and shapes ------------------------------------------------------------------

def test_bare_string_gives_one_row(minilm):
    one = minilm.encode("an orange cloud")
    assert one.shape == (384,) and one.dtype == np.float32
    assert np.array_equal(one, minilm.encode(["an orange cloud"])[0])
    assert minilm.encode(np.str_("an orange cloud")).shape == (384,)
    assert np.array_equal(minilm.encode(np.array("an orange cloud")), one)  # 0-D array
    assert minilm.encode(["an orange cloud"]).shape == (1, 384)
    assert minilm.encode([]).shape == (0, 384)


@pytest.mark.parametrize("make", [
    pytest.param(tuple, id="tuple"),
    pytest.param(np.array, id="ndarray-str"),
    pytest.param(lambda t: np.array(t, dtype=object), id="ndarray-object"),
])
def test_sequences_of_str(minilm, make):
    got = minilm.encode(make(TEXTS))
    assert got.shape == (3, 384)
    assert np.array_equal(got, minilm.encode(TEXTS))


@pytest.mark.parametrize("texts, named", [
    pytest.param(np.array([["a", "b"]]), "1-D", id="2-D"),
    pytest.param(np.array([b"a", b"b"]), "texts[0]", id="bytes"),
    pytest.param(np.array(["a", ""]), "texts[1]", id="empty-at-1"),
    pytest.param(np.array([1.0, 2.0]), "texts[0]", id="floats"),
    pytest.param({"a"}, "set", id="set"),
])
def test_bad_sequences_are_invalid_input(minilm, texts, named):
    with pytest.raises(InvalidInput, match=r"\btexts\b") as info:
        minilm.encode(texts)
    assert named in str(info.value)


# -- prompts -------------------------------------------------------------------------------------

def test_prompt_is_the_text_written_in(minilm):
    for pooling in ("mean", "cls"):
        got = minilm.encode(TEXTS, prompt=QUERY, pooling=pooling)
        assert np.array_equal(got, minilm.encode([QUERY + t for t in TEXTS], pooling=pooling))
        assert not np.array_equal(got, minilm.encode(TEXTS, pooling=pooling))
    assert np.array_equal(minilm.encode("x", prompt="a prompt"), minilm.encode("a promptx"))
    assert np.array_equal(minilm.encode(TEXTS, prompt=""), minilm.encode(TEXTS))


def test_checkpoint_prompts(prompted, minilm):
    assert prompted.prompts == {"query": QUERY, "document": "", "passage": PASSAGE}
    written = minilm.encode([QUERY + t for t in TEXTS])
    assert np.array_equal(prompted.encode(TEXTS, prompt_name="query"), written)
    assert np.array_equal(prompted.encode_query(TEXTS), written)
    assert np.array_equal(prompted.encode_query(TEXTS[0]), written[0])
    # "document" exists (empty) as in sentence-transformers, so encode_document takes it first.
    assert np.array_equal(prompted.encode_document(TEXTS), minilm.encode(TEXTS))
    assert np.array_equal(prompted.encode(TEXTS, prompt_name="passage"),
                          minilm.encode([PASSAGE + t for t in TEXTS]))
    # An explicit prompt wins over the query default, and over a name given beside it.
    assert np.array_equal(prompted.encode_query(TEXTS, prompt=PASSAGE),
                          prompted.encode(TEXTS, prompt_name="passage"))
    assert np.array_equal(prompted.encode(TEXTS, prompt="", prompt_name="query"),
                          minilm.encode(TEXTS))
    assert np.array_equal(prompted.encode(TEXTS), minilm.encode(TEXTS))  # no default prompt


def test_document_prompt_and_default_prompt_name(minilm_path, minilm, tmp_path):
    folder = with_st_config(minilm_path, tmp_path / "m", {
        "prompts": {"query": QUERY, "document": PASSAGE}, "default_prompt_name": "query"})
    engine = Engine(str(folder))
    assert np.array_equal(engine.encode_document(TEXTS),
                          minilm.encode([PASSAGE + t for t in TEXTS]))
    assert np.array_equal(engine.encode(TEXTS), minilm.encode([QUERY + t for t in TEXTS]))
    assert engine.count_tokens(TEXTS) == minilm.count_tokens([QUERY + t for t in TEXTS])


def test_checkpoint_without_prompts(minilm):
    """MiniLM's files carry no prompts: query and document are the empty prompt."""
    assert minilm.prompts == {"query": "", "document": ""}
    plain = minilm.encode(TEXTS)
    assert np.array_equal(minilm.encode_query(TEXTS), plain)
    assert np.array_equal(minilm.encode_document(TEXTS), plain)


@pytest.mark.parametrize("kwargs, named", [
    pytest.param({"prompt_name": "instruction"}, "'instruction'", id="unknown-name"),
    pytest.param({"prompt_name": "QUERY"}, "'QUERY'", id="name-case"),
    pytest.param({"prompt_name": 3}, "prompt_name", id="name-int"),
    pytest.param({"prompt": 3}, "prompt", id="prompt-int"),
    pytest.param({"prompt": b"q: "}, "prompt", id="prompt-bytes"),
    pytest.param({"prompt": "\ud800"}, "prompt", id="prompt-surrogate"),
])
def test_bad_prompts_are_invalid_input(prompted, kwargs, named):
    for call in (prompted.encode, prompted.encode_query, prompted.count_tokens):
        with pytest.raises(InvalidInput) as info:
            call(TEXTS, **kwargs)
        assert named in str(info.value) and info.value.code == "invalid_input"


def test_bge_hub_id_has_the_query_instruction(synthetic_path, bge, tmp_path, monkeypatch):
    """Loaded by its hub id (here from a Hugging Face cache), bge-small-en-v1.5 has the model
    card's retrieval instruction as its query prompt; loaded from a folder, its files say none."""
    cache = tmp_path / "hf-cache"
    make_cache(cache, "BAAI/bge-small-en-v1.5", synthetic_path)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    engine = Engine("BAAI/bge-small-en-v1.5")
    assert BGE_QUERY == "Represent this sentence for searching relevant passages: "
    assert engine.prompts == {"query": BGE_QUERY, "document": ""}
    written = bge.encode([BGE_QUERY + t for t in TEXTS])
    assert np.array_equal(engine.encode_query(TEXTS), written)
    assert np.array_equal(engine.encode(TEXTS, prompt_name="query"), written)
    assert np.array_equal(engine.encode_document(TEXTS), bge.encode(TEXTS))
    assert np.array_equal(engine.encode(TEXTS), bge.encode(TEXTS))
    assert engine.count_tokens(TEXTS, prompt_name="query") == bge.count_tokens(
        [BGE_QUERY + t for t in TEXTS])
    assert bge.prompts == {"query": "", "document": ""}  # the same files from a folder
    # A hub id of another model gets no built-in prompt.
    make_cache(cache, "someone/bge-small-en-v1.5-copy", synthetic_path)
    assert Engine("someone/bge-small-en-v1.5-copy").prompts["query"] == ""


def test_checkpoint_query_prompt_beats_the_built_in(synthetic_path, tmp_path, monkeypatch):
    src = with_st_config(synthetic_path, tmp_path / "src", {"prompts": {"query": QUERY}})
    cache = tmp_path / "hf-cache"
    make_cache(cache, "BAAI/bge-small-en-v1.5", src)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert Engine("BAAI/bge-small-en-v1.5").prompts["query"] == QUERY


def test_token_counts_and_truncation_include_the_prompt(minilm, minilm_path, caplog):
    assert minilm.count_tokens(TEXTS, prompt=QUERY) == minilm.count_tokens(
        [QUERY + t for t in TEXTS])
    assert minilm.count_tokens("hello", prompt=QUERY) == [minilm.count_tokens("hello")[0] + 2]
    text = "hello " * 509  # 511 tokens: fits alone, not behind the 2-token prompt
    assert minilm.count_tokens(text) == [511]
    strict = Engine(str(minilm_path), truncate=False)
    strict.encode(text)
    with pytest.raises(InputTooLong) as info:
        strict.encode(["short", text], prompt=QUERY)
    assert (info.value.index, info.value.n_tokens, info.value.limit) == (1, 513, 512)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="bge_engine"):
        cut = minilm.encode(["short", text], prompt=QUERY)
    assert [r.getMessage() for r in caplog.records] == [
        "truncated 1 of 2 texts to the model's 512 tokens"]
    # Truncation cuts the joined text: the prompt stays, the text's end goes.
    assert np.array_equal(cut[1], strict.encode(QUERY + "hello " * 508))


def test_pooling_without_prompt_tokens_is_refused(minilm_path, minilm, tmp_path):
    """A checkpoint whose pooling excludes prompt tokens (include_prompt: false) would need
    pooling bge-engine does not do: a prompt on it is refused, never run approximately."""
    folder = link_model(minilm_path, tmp_path / "m")
    pooling = folder / "1_Pooling" / "config.json"
    config = json.loads(pooling.read_text())
    pooling.unlink()
    pooling.write_text(json.dumps({**config, "include_prompt": False}))
    engine = Engine(str(folder))
    with pytest.raises(InvalidInput, match="include_prompt"):
        engine.encode(TEXTS, prompt=QUERY)
    assert np.array_equal(engine.encode(TEXTS), minilm.encode(TEXTS))


@pytest.mark.parametrize("content, named", [
    pytest.param("{not json", "not readable JSON", id="not-json"),
    pytest.param('["a"]', "JSON object", id="not-object"),
    pytest.param('{"prompts": {"query": 3}}', "'prompts'", id="prompt-int"),
    pytest.param('{"prompts": ["query: "]}', "'prompts'", id="prompts-list"),
    pytest.param('{"prompts": {"query": "q"}, "default_prompt_name": "doc"}',
                 "default_prompt_name", id="default-unknown"),
])
def test_bad_prompt_file_is_model_format_error(minilm_path, tmp_path, content, named):
    folder = link_model(minilm_path, tmp_path / "m")
    (folder / "config_sentence_transformers.json").unlink()
    (folder / "config_sentence_transformers.json").write_text(content)
    with pytest.raises(ModelFormatError) as info:
        Engine(str(folder))
    assert named in str(info.value) and "config_sentence_transformers.json" in str(info.value)


# -- logging -------------------------------------------------------------------------------------

def test_library_logs_through_a_null_handler(minilm_path, tmp_path):
    """A program that configured no logging gets no last-resort line for the truncation
    warning (the library's NullHandler); one that configured logging gets the record."""
    code = ("import logging, sys, bge_engine\n"
            f"e = bge_engine.Engine({str(minilm_path)!r})\n"
            "e.encode('hello ' * 600)\n"
            "handlers = logging.getLogger('bge_engine').handlers\n"
            "assert any(isinstance(h, logging.NullHandler) for h in handlers), handlers\n"
            "if sys.argv[1:] == ['configured']:\n"
            "    logging.basicConfig(format='%(name)s %(levelname)s %(message)s')\n"
            "    e.encode('hello ' * 600)\n")
    quiet = child(code, {}, tmp_path)
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr
    env = {k: v for k, v in os.environ.items() if k != "BGE_ENGINE_MODEL"}
    loud = subprocess.run([sys.executable, "-c", code, "configured"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=180)
    assert loud.returncode == 0, loud.stderr
    assert loud.stderr == "bge_engine WARNING truncated 1 of 1 texts to the model's 512 tokens\n"
