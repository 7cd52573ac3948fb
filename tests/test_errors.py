"""The error table of CONTRACT.md section 3, row by row, with concrete bad inputs.

Every error is checked for its class and the builtin it also is (ValueError or
FileNotFoundError), its stable `code`, a message naming the key, index, file or tensor at fault,
and that the engine computes exactly what it computed before the bad call.

Broken model folders are made cheaply: the MiniLM folder's files are symlinked into tmp_path
and one thing is broken (a file left out, a config.json rewritten, a safetensors file rewritten
from the MiniLM tensors with one tensor changed).
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from bge_engine import (BgeError, Engine, InputTooLong, InvalidInput, ModelFormatError,
                        ModelNotFound)
from synthetic import write_synthetic_bge

REF = {"text": ["The quick brown fox", "jumps over the lazy dog"], "pooling": "cls"}


@pytest.fixture(scope="module")
def minilm(minilm_path):
    """MiniLM on one thread (shadows the session engine): on a loaded 2-core machine every
    OpenMP region of a 2-thread engine can stall for a scheduler slice, and these tests make
    hundreds of small calls. Validation does not depend on the thread count."""
    return Engine(str(minilm_path), threads=1)


@pytest.fixture(scope="module")
def before(minilm) -> dict:
    """MiniLM's reply to REF before any bad call of this module."""
    return minilm.embed(REF)


def assert_unchanged(engine: Engine, before: dict) -> None:
    """The engine still gives, bit for bit, the reply it gave before the bad calls."""
    after = engine.embed(REF)
    assert after["shape"] == before["shape"]
    assert np.array_equal(np.asarray(after["data"], dtype=np.float32),
                          np.asarray(before["data"], dtype=np.float32))
    assert after == before


def check_error(exc: BaseException, cls: type, base: type, code: str, *names: str) -> str:
    """Class, builtin base, code, and each of `names` in the message; returns the message."""
    assert type(exc) is cls, f"{type(exc).__name__}: {exc}"
    assert isinstance(exc, BgeError) and isinstance(exc, base)
    assert exc.code == code
    assert type(exc).code == code  # stable: a class attribute, not set per instance
    message = str(exc)
    assert "\n" not in message, "the CLI prints errors as one line"
    for name in names:
        assert name in message, f"{name!r} not named in: {message}"
    return message


# -- InvalidInput: payloads --------------------------------------------------------------------

LONG_LIST = [f"text {i}" for i in range(101)]

# (payload, the key or index the message must name)
BAD_PAYLOADS = [
    # not a dict
    pytest.param([], "payload", id="list-empty"),
    pytest.param(["a text"], "payload", id="list"),
    pytest.param("a text", "payload", id="str"),
    pytest.param(None, "payload", id="None"),
    pytest.param(7, "payload", id="int"),
    pytest.param(b'{"text": "a"}', "payload", id="bytes"),
    # neither / both of text and requests
    pytest.param({}, "'text'", id="neither-empty"),
    pytest.param({"pooling": "mean"}, "'text'", id="neither-pooling-only"),
    pytest.param({"texts": "a"}, "'texts'", id="neither-typo-named"),
    pytest.param({"text": "a", "requests": [{"text": "b"}]}, "'text'", id="both"),
    # unknown keys, named
    pytest.param({"text": "a", "colour": "red"}, "'colour'", id="unknown-key"),
    pytest.param({"text": "a", "pooling": "mean", "normalize": False}, "'normalize'",
                 id="unknown-key-2"),
    pytest.param({"requests": [{"text": "a"}], "pooling": "cls"}, "'pooling'",
                 id="requests-and-pooling"),
    pytest.param({"requests": [{"text": "a"}, {"text": "b", "truncate": True}]}, "'truncate'",
                 id="unknown-key-in-request"),
    # text not a str or a list of str
    pytest.param({"text": 5}, "text", id="text-int"),
    pytest.param({"text": {"a": "b"}}, "text", id="text-dict"),
    pytest.param({"text": None}, "text", id="text-None"),
    pytest.param({"text": b"bytes"}, "text", id="text-bytes"),
    pytest.param({"text": ("a", "b")}, "text", id="text-tuple"),
    pytest.param({"text": ["a", "b", "c", 4]}, "text[3]", id="text-list-int-at-3"),
    pytest.param({"text": ["a", ["b"]]}, "text[1]", id="text-nested-list"),
    pytest.param({"text": ["a", None]}, "text[1]", id="text-list-None"),
    # empty strings
    pytest.param({"text": ""}, "text", id="empty"),
    pytest.param({"text": ["a", "b", ""]}, "text[2]", id="empty-at-2"),
    # more than 100 texts
    pytest.param({"text": LONG_LIST}, "101", id="101-texts"),
    # pooling not mean / cls
    pytest.param({"text": "a", "pooling": "max"}, "pooling", id="pooling-max"),
    pytest.param({"text": "a", "pooling": None}, "pooling", id="pooling-None"),
    pytest.param({"text": "a", "pooling": 1}, "pooling", id="pooling-1"),
    pytest.param({"text": "a", "pooling": "MEAN"}, "pooling", id="pooling-MEAN"),
    pytest.param({"text": "a", "pooling": ["mean"]}, "pooling", id="pooling-list"),
    # requests: empty, not a list, an item not a dict, an item with bad text
    pytest.param({"requests": []}, "requests", id="requests-empty"),
    pytest.param({"requests": {"text": "a"}}, "requests", id="requests-dict"),
    pytest.param({"requests": "a"}, "requests", id="requests-str"),
    pytest.param({"requests": None}, "requests", id="requests-None"),
    pytest.param({"requests": [{"text": "a"}, "b"]}, "requests[1]", id="request-not-dict"),
    pytest.param({"requests": [{"text": "a"}, None]}, "requests[1]", id="request-None"),
    pytest.param({"requests": [{"text": "a"}, {"pooling": "cls"}]}, "requests[1]",
                 id="request-no-text"),
    pytest.param({"requests": [{"text": "a"}, {"text": 5}]}, "requests[1]",
                 id="request-text-int"),
    pytest.param({"requests": [{"text": "a"}, {"text": ["x", ""]}]}, "requests[1].text[1]",
                 id="request-empty-at-1"),
    pytest.param({"requests": [{"text": "a"}, {"text": "b"}, {"text": "c", "pooling": "max"}]},
                 "requests[2]", id="request-pooling-max"),
    pytest.param({"requests": [{"text": "a"}, {"text": ["b", "\ud800"]}]},
                 "requests[1].text[1]", id="request-surrogate"),
    pytest.param({"requests": [{"text": LONG_LIST}]}, "requests[0]", id="request-101"),
    # lone surrogates
    pytest.param({"text": "\ud800"}, "text", id="surrogate"),
    pytest.param({"text": "ok \udfff ok"}, "text", id="surrogate-low-inside"),
    pytest.param({"text": ["a", "b", "x\ud800y"]}, "text[2]", id="surrogate-at-2"),
    pytest.param({"text": ["a", "\ud83d\ude00"]}, "text[1]", id="surrogate-pair-as-two"),
]


@pytest.mark.parametrize("payload, named", BAD_PAYLOADS)
def test_invalid_input(minilm, before, payload, named):
    with pytest.raises(InvalidInput) as info:
        minilm.embed(payload)
    check_error(info.value, InvalidInput, ValueError, "invalid_input", named)
    assert_unchanged(minilm, before)


def test_invalid_input_names_the_right_index(minilm):
    """The index in the message is the first bad one, not a neighbour."""
    for bad in range(5):
        texts = ["fine"] * 5
        texts[bad] = 42
        with pytest.raises(InvalidInput) as info:
            minilm.embed({"text": texts})
        found = re.findall(r"text\[(\d+)\]", str(info.value))
        assert found == [str(bad)], str(info.value)
        with pytest.raises(InvalidInput) as info:
            minilm.embed({"requests": [{"text": "fine"}] * bad + [{"text": ""}]})
        assert re.findall(r"requests\[(\d+)\]", str(info.value)) == [str(bad)], str(info.value)


def test_bounds_that_are_valid(minilm, before):
    """The edges of the rules above: 100 texts, [] and a one-character text are fine."""
    hundred = minilm.embed({"text": ["x"] * 100})
    assert hundred["shape"] == [100, 384] and len(hundred["data"]) == 100
    empty = minilm.embed({"text": []})
    assert empty == {"shape": [0, 384], "data": [], "pooling": "mean"}
    one = minilm.embed({"requests": [{"text": "a", "pooling": "cls"}]})
    assert one["responses"][0]["result"]["pooling"] == "cls"
    assert one["responses"][0]["success"] is True
    assert_unchanged(minilm, before)


# -- InputTooLong --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def strict(minilm_path) -> Engine:
    return Engine(str(minilm_path), truncate=False)


def test_input_too_long(strict, minilm, before):
    long_text = "hello " * 600  # one token per word: 602 with [CLS] and [SEP]
    n = strict.count_tokens([long_text])[0]
    assert n == 602
    with pytest.raises(InputTooLong) as info:
        strict.embed({"text": ["short", "also short", long_text, long_text]})
    exc = info.value
    check_error(exc, InputTooLong, ValueError, "input_too_long", "text[2]")
    assert isinstance(exc, InvalidInput)
    assert (exc.index, exc.n_tokens, exc.limit) == (2, n, 512)
    assert str(n) in str(exc) and "512" in str(exc)

    # A bare string is index 0; 513 tokens is one too many.
    with pytest.raises(InputTooLong) as info:
        strict.embed({"text": "hello " * 511})
    assert (info.value.index, info.value.n_tokens, info.value.limit) == (0, 513, 512)

    # The requests form names the request, and the index is the text's within its list.
    with pytest.raises(InputTooLong) as info:
        strict.embed({"requests": [{"text": "a"}, {"text": ["b", long_text]}]})
    check_error(info.value, InputTooLong, ValueError, "input_too_long", "requests[1]", "text[1]")
    assert (info.value.index, info.value.n_tokens, info.value.limit) == (1, n, 512)

    # encode refuses too.
    with pytest.raises(InputTooLong) as info:
        strict.encode(["a", long_text])
    assert info.value.index == 1
    assert_unchanged(strict, before)
    assert_unchanged(minilm, before)


def test_truncation_warns_and_cuts_to_512(minilm, strict, caplog):
    """truncate=True cuts a long text to [CLS] + 510 pieces + [SEP], and logs how many texts."""
    long_a = "hello " * 511  # 513 tokens
    long_b = "world " * 520  # 522 tokens
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="bge_engine"):
        reply = minilm.embed({"text": [long_a, "a short one", long_b]})
    assert reply["shape"] == [3, 384]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in caplog.records]
    message = warnings[0].getMessage()
    assert re.search(r"\b2\b", message) and "512" in message, message
    # The cut text is the 512-token text made of its first 510 pieces, accepted as is even
    # by a truncate=False engine (512 is within the limit).
    exact = strict.embed({"text": "hello " * 510})
    assert strict.count_tokens("hello " * 510) == [512]
    assert reply["data"][0] == exact["data"][0]
    # No warning for texts within the limit.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="bge_engine"):
        minilm.embed({"text": ["a short one"]})
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


# -- ModelNotFound -------------------------------------------------------------------------------

def test_model_not_found_folder(tmp_path, minilm, before):
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelNotFound) as info:
        Engine(str(missing))
    message = check_error(info.value, ModelNotFound, FileNotFoundError, "model_not_found",
                          "no-such-model")
    assert "folder" in message and "config.json" in message
    assert_unchanged(minilm, before)


def test_model_not_found_hub_offline(tmp_path, monkeypatch, minilm, before):
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.chdir(tmp_path)  # no folder named like the hub id
    with pytest.raises(ModelNotFound) as info:
        Engine("nobody-here/no-such-model")
    message = check_error(info.value, ModelNotFound, FileNotFoundError, "model_not_found",
                          "nobody-here/no-such-model")
    assert "local folder" in message
    assert "BGE_ENGINE_MODEL" in message or "Engine(model=" in message
    assert_unchanged(minilm, before)


# -- ModelFormatError ----------------------------------------------------------------------------

def link_folder(src: Path, dst: Path, *, skip=()) -> Path:
    """dst holding symlinks to src's files (1_Pooling as a real folder), except `skip`."""
    dst.mkdir(parents=True, exist_ok=True)
    for item in src.iterdir():
        if item.name in skip or item.name.startswith("."):
            continue
        if item.is_dir():
            link_folder(item, dst / item.name, skip=skip)
        else:
            (dst / item.name).symlink_to(item)
    return dst


def replace_file(folder: Path, name: str, data) -> None:
    path = folder / name
    if path.is_symlink() or path.exists():
        path.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(json.dumps(data), encoding="utf-8")


@pytest.fixture(scope="module")
def minilm_tensors(minilm_path) -> dict:
    return load_file(str(minilm_path / "model.safetensors"))


def expect_format_error(folder: Path, *names: str) -> str:
    with pytest.raises(ModelFormatError) as info:
        Engine(str(folder))
    return check_error(info.value, ModelFormatError, ValueError, "model_format", *names)


@pytest.mark.parametrize("missing", ["config.json", "model.safetensors", "tokenizer.json"])
def test_missing_file(tmp_path, minilm_path, minilm, before, missing):
    folder = link_folder(minilm_path, tmp_path / "m", skip={missing})
    expect_format_error(folder, missing)
    assert_unchanged(minilm, before)


@pytest.mark.parametrize("how", ["garbage", "truncated", "empty"])
def test_corrupt_safetensors(tmp_path, minilm_path, minilm, before, how):
    folder = link_folder(minilm_path, tmp_path / "m")
    real = (minilm_path / "model.safetensors").read_bytes()
    data = {"garbage": np.random.default_rng(1).bytes(4096),
            "truncated": real[: len(real) // 2],
            "empty": b""}[how]
    replace_file(folder, "model.safetensors", data)
    expect_format_error(folder, "model.safetensors")
    assert_unchanged(minilm, before)


def test_corrupt_tokenizer_json(tmp_path, minilm_path, minilm, before):
    folder = link_folder(minilm_path, tmp_path / "m")
    replace_file(folder, "tokenizer.json", b"{not json")
    expect_format_error(folder, "tokenizer.json")
    assert_unchanged(minilm, before)


def _rewrite(folder: Path, tensors: dict) -> None:
    (folder / "model.safetensors").unlink()  # a symlink to the real file: never write through it
    save_file(tensors, str(folder / "model.safetensors"))


@pytest.mark.parametrize("name, make", [
    pytest.param("encoder.layer.0.attention.self.query.weight",
                 lambda a: np.zeros((384, 383), np.float32), id="shape-query"),
    pytest.param("encoder.layer.4.intermediate.dense.weight",
                 lambda a: np.ascontiguousarray(a.T), id="shape-transposed"),
    pytest.param("embeddings.word_embeddings.weight",
                 lambda a: np.ascontiguousarray(a[:-1]), id="shape-vocab"),
    pytest.param("encoder.layer.2.output.LayerNorm.bias",
                 lambda a: a[None, :].copy(), id="shape-extra-dim"),
])
def test_tensor_wrong_shape(tmp_path, minilm_path, minilm_tensors, minilm, before, name, make):
    folder = link_folder(minilm_path, tmp_path / "m")
    tensors = dict(minilm_tensors)
    tensors[name] = make(tensors[name])
    _rewrite(folder, tensors)
    message = expect_format_error(folder, "model.safetensors", name)
    assert "shape" in message and str(tuple(tensors[name].shape)) in message
    assert_unchanged(minilm, before)


@pytest.mark.parametrize("name, dtype", [
    ("encoder.layer.3.output.dense.bias", np.int32),
    ("embeddings.position_embeddings.weight", np.int32),
    ("encoder.layer.1.attention.self.value.weight", np.float64),
])
def test_tensor_wrong_dtype(tmp_path, minilm_path, minilm_tensors, minilm, before, name, dtype):
    folder = link_folder(minilm_path, tmp_path / "m")
    tensors = dict(minilm_tensors)
    tensors[name] = tensors[name].astype(dtype)
    _rewrite(folder, tensors)
    message = expect_format_error(folder, "model.safetensors", name)
    assert np.dtype(dtype).name in message, message
    assert_unchanged(minilm, before)


@pytest.mark.parametrize("name, bad", [
    ("encoder.layer.3.intermediate.dense.weight", np.nan),  # read by Kernels.load_packed
    ("encoder.layer.0.attention.self.value.weight", -np.inf),  # the third part of QKV
    ("encoder.layer.5.output.dense.weight", np.inf),
    ("encoder.layer.2.output.LayerNorm.bias", np.nan),  # read in Python
])
@pytest.mark.parametrize("dtype", ["fp32", "int8"])
def test_tensor_not_finite(tmp_path, minilm_path, minilm_tensors, minilm, before, name, bad,
                           dtype):
    folder = link_folder(minilm_path, tmp_path / "m")
    tensors = dict(minilm_tensors)
    a = tensors[name].copy()
    a.reshape(-1)[a.size // 2 + 3] = bad
    tensors[name] = a
    _rewrite(folder, tensors)
    with pytest.raises(ModelFormatError) as info:
        Engine(str(folder), dtype=dtype)
    message = check_error(info.value, ModelFormatError, ValueError, "model_format",
                          "model.safetensors", name)
    assert "NaN or infinity" in message
    assert_unchanged(minilm, before)


@pytest.mark.parametrize("name", ["encoder.layer.5.output.LayerNorm.weight",
                                  "embeddings.token_type_embeddings.weight"])
def test_tensor_missing(tmp_path, minilm_path, minilm_tensors, minilm, before, name):
    folder = link_folder(minilm_path, tmp_path / "m")
    tensors = {k: v for k, v in minilm_tensors.items() if k != name}
    _rewrite(folder, tensors)
    message = expect_format_error(folder, "model.safetensors", name)
    assert "missing" in message
    assert_unchanged(minilm, before)


@pytest.mark.parametrize("key, value", [
    ("model_type", "roberta"),
    ("hidden_act", "gelu_new"),
    ("hidden_act", "relu"),
    ("position_embedding_type", "relative_key"),
    ("num_attention_heads", 7),  # 384 is not divisible by 7
    ("hidden_size", 380),  # nor 380 by 12
    ("hidden_size", "384"),
    ("num_hidden_layers", 0),
    ("is_decoder", True),
])
def test_config_refused(tmp_path, minilm_path, minilm, before, key, value):
    folder = link_folder(minilm_path, tmp_path / "m")
    config = json.loads((minilm_path / "config.json").read_text())
    config[key] = value
    replace_file(folder, "config.json", config)
    message = expect_format_error(folder, "config.json")
    # the key at fault is named (for a head count that does not divide, either key will do)
    named = {"num_attention_heads": ("num_attention_heads", "hidden_size"),
             "hidden_size": ("num_attention_heads", "hidden_size")}.get(key, (key,))
    assert any(n in message for n in named), message
    assert_unchanged(minilm, before)


def test_config_not_json(tmp_path, minilm_path, minilm, before):
    folder = link_folder(minilm_path, tmp_path / "m")
    replace_file(folder, "config.json", b"[1, 2")
    expect_format_error(folder, "config.json")
    assert_unchanged(minilm, before)


@pytest.mark.parametrize("modes", [
    {"pooling_mode_max_tokens": True},
    {"pooling_mode_mean_sqrt_len_tokens": True},
    {"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": True},
    {},
])
def test_pooling_config_refused(tmp_path, minilm_path, minilm, before, modes):
    folder = link_folder(minilm_path, tmp_path / "m")
    config = {"word_embedding_dimension": 384, "pooling_mode_cls_token": False,
              "pooling_mode_mean_tokens": False, "pooling_mode_max_tokens": False,
              "pooling_mode_mean_sqrt_len_tokens": False, **modes}
    replace_file(folder, "1_Pooling/config.json", config)
    expect_format_error(folder, "1_Pooling", "config.json")
    assert_unchanged(minilm, before)


# -- What loads: the bert. prefix, and no 1_Pooling -----------------------------------------------

def test_bert_prefix_loads_bit_identical(tmp_path, bge):
    folder = write_synthetic_bge(tmp_path / "prefixed", seed=0, prefix="bert.")
    prefixed = Engine(str(folder))
    assert prefixed.pooling == bge.pooling == "cls"
    for pooling in ("cls", "mean"):
        payload = {"text": ["an orange cloud", "x"], "pooling": pooling}
        assert prefixed.embed(payload) == bge.embed(payload)


def test_no_pooling_config_means_mean(tmp_path, synthetic_path, bge):
    folder = link_folder(synthetic_path, tmp_path / "nopool", skip={"1_Pooling"})
    assert not (folder / "1_Pooling").exists()
    engine = Engine(str(folder))
    assert bge.pooling == "cls" and engine.pooling == "mean"
    texts = ["an orange cloud"]
    got = engine.encode(texts)
    assert np.array_equal(got, bge.encode(texts, pooling="mean"))
    assert not np.array_equal(got, bge.encode(texts))  # the cls row differs: the check can fail


# -- The encode front ----------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, named", [
    pytest.param({"batch_size": 0}, "batch_size", id="batch-0"),
    pytest.param({"batch_size": -3}, "batch_size", id="batch-negative"),
    pytest.param({"batch_size": 2.0}, "batch_size", id="batch-float"),
    pytest.param({"batch_size": "8"}, "batch_size", id="batch-str"),
    pytest.param({"batch_size": True}, "batch_size", id="batch-bool"),
    pytest.param({"batch_size": None}, "batch_size", id="batch-None"),
    pytest.param({"pooling": "max"}, "pooling", id="pooling-max"),
    pytest.param({"pooling": "CLS"}, "pooling", id="pooling-CLS"),
    pytest.param({"pooling": 0}, "pooling", id="pooling-0"),
])
def test_encode_bad_arguments(minilm, before, kwargs, named):
    with pytest.raises(InvalidInput) as info:
        minilm.encode(["a", "b"], **kwargs)
    check_error(info.value, InvalidInput, ValueError, "invalid_input", named)
    assert_unchanged(minilm, before)


@pytest.mark.parametrize("texts, named", [
    pytest.param(["a", "b", 3], "[2]", id="int-at-2"),
    pytest.param(["a", None], "[1]", id="None-at-1"),
    pytest.param(["a", b"b"], "[1]", id="bytes-at-1"),
    pytest.param(["", "a"], "[0]", id="empty-at-0"),
    pytest.param("", "text", id="empty-str"),
    pytest.param(["a", "\ud800"], "[1]", id="surrogate-at-1"),
    pytest.param(5, "text", id="int"),
    pytest.param(None, "text", id="None"),
])
def test_encode_bad_texts(minilm, before, texts, named):
    with pytest.raises(InvalidInput) as info:
        minilm.encode(texts)
    check_error(info.value, InvalidInput, ValueError, "invalid_input", named)
    assert_unchanged(minilm, before)


# -- Values whose repr() itself raises -------------------------------------------------------------

HUGE = 10 ** 5000  # an int whose repr() raises ValueError (Python's 4300-digit limit)


@pytest.mark.parametrize("call", [
    pytest.param(lambda e: e.embed({"text": "a", "pooling": HUGE}), id="pooling"),
    pytest.param(lambda e: e.embed({"text": "a", HUGE: 1}), id="unknown-key"),
    pytest.param(lambda e: e.embed({HUGE: 1}), id="neither-key"),
    pytest.param(lambda e: e.embed({"requests": [{"text": "a"}], HUGE: 1}), id="beside-requests"),
    pytest.param(lambda e: e.encode(["a"], batch_size=-HUGE), id="encode-batch-size"),
    pytest.param(lambda e: e.encode(["a"], pooling=HUGE), id="encode-pooling"),
])
def test_huge_int_is_invalid_input(minilm, before, call):
    try:
        call(minilm)
    except InvalidInput as exc:
        check_error(exc, InvalidInput, ValueError, "invalid_input")
    except Exception as exc:
        raise AssertionError(f"{type(exc).__name__} instead of InvalidInput: {exc}") from None
    else:
        raise AssertionError("accepted")
    assert_unchanged(minilm, before)
