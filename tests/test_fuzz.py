"""Hypothesis: arbitrary JSON-like payloads and arbitrary strings thrown at `Engine.embed`.

Whatever comes in, the answer is a valid Workers reply or `InvalidInput`; any other exception
fails. An independent oracle, written from CONTRACT.md section 1, says which of the two it must
be, and after every example the engine still gives, bit for bit, its earlier reply to a fixed
payload (no input changes later results).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from bge_engine import Engine, InputTooLong, InvalidInput

REF = {"text": ["a fixed reference text", "and another"]}
DIM = 384

FUZZ = settings(max_examples=75, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# Every code point, lone surrogates (category Cs) included.
chars = st.characters(exclude_categories=())
texts = st.text(chars, max_size=30)
keys = st.sampled_from(["text", "pooling", "requests"]) | st.text(chars, max_size=8)
leaves = (st.none() | st.booleans() | st.integers(-2**70, 2**70)
          | st.floats(allow_nan=True, allow_infinity=True) | texts
          | st.sampled_from(["mean", "cls", "", "\ud800"]))
json_like = st.recursive(
    leaves,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(keys, inner, max_size=4),
    max_leaves=12)

# Near-valid shapes, so that valid replies are common too.
text_values = texts | st.lists(texts, max_size=5) | json_like
poolings = st.sampled_from(["mean", "cls"]) | leaves
items = st.fixed_dictionaries({"text": text_values},
                              optional={"pooling": poolings, "extra": leaves})
good_items = st.fixed_dictionaries(
    {"text": st.text(chars, min_size=1, max_size=30)
             | st.lists(st.text(chars, min_size=1, max_size=30), max_size=5)},
    optional={"pooling": st.sampled_from(["mean", "cls"])})
items_or_junk = st.one_of(good_items, items, json_like)
payloads = st.one_of(
    json_like,
    items,
    good_items,
    st.fixed_dictionaries({"requests": st.lists(good_items, min_size=1, max_size=3)}),
    st.fixed_dictionaries({"requests": st.lists(items_or_junk, max_size=3)},
                          optional={"text": text_values}),
    st.dictionaries(keys, json_like, max_size=3),
)


# -- the oracle ---------------------------------------------------------------------------------

def _valid_text(t) -> bool:
    if not isinstance(t, str) or not t:
        return False
    try:
        t.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _item_texts(item):
    """The list of texts a valid {"text", "pooling"?} item holds, else None."""
    if not isinstance(item, dict) or "text" not in item or set(item) - {"text", "pooling"}:
        return None
    if "pooling" in item and not (isinstance(item["pooling"], str)
                                  and item["pooling"] in ("mean", "cls")):
        return None
    t = item["text"]
    if isinstance(t, str):
        return [t] if _valid_text(t) else None
    if isinstance(t, list) and len(t) <= 100 and all(_valid_text(x) for x in t):
        return list(t)
    return None


def is_valid(payload) -> bool:
    if not isinstance(payload, dict):
        return False
    if "requests" in payload:
        reqs = payload["requests"]
        return (set(payload) == {"requests"} and isinstance(reqs, list) and len(reqs) > 0
                and all(_item_texts(r) is not None for r in reqs))
    return _item_texts(payload) is not None


# -- checks --------------------------------------------------------------------------------------

def check_result(result, texts, pooling) -> None:
    assert set(result) == {"shape", "data", "pooling"}
    assert result["pooling"] == pooling
    assert result["shape"] == [len(texts), DIM]
    data = result["data"]
    assert isinstance(data, list) and len(data) == len(texts)
    for row in data:
        assert isinstance(row, list) and len(row) == DIM
        assert all(type(x) is float and math.isfinite(x) for x in row)
        assert abs(float(np.linalg.norm(np.asarray(row, dtype=np.float64))) - 1.0) < 1e-5


def check_reply(payload, reply) -> None:
    if "requests" in payload:
        assert set(reply) == {"responses"}
        responses = reply["responses"]
        assert len(responses) == len(payload["requests"])
        for i, (item, resp) in enumerate(zip(payload["requests"], responses)):
            assert set(resp) == {"id", "result", "success"}
            assert resp["id"] == i and resp["success"] is True
            check_result(resp["result"], _item_texts(item), item.get("pooling", "mean"))
    else:
        check_result(reply, _item_texts(payload), payload.get("pooling", "mean"))


@pytest.fixture(scope="module")
def minilm(minilm_path):
    """MiniLM on one thread (shadows the session engine): on a loaded 2-core machine every
    OpenMP region of a 2-thread engine can stall for a scheduler slice, and these tests make
    hundreds of small calls. Validation does not depend on the thread count."""
    return Engine(str(minilm_path), threads=1)


@pytest.fixture(scope="module")
def before(minilm) -> dict:
    return minilm.embed(REF)


def throw(engine, before, payload, *, check_after=True) -> None:
    """embed(payload) is a valid reply or InvalidInput, as the oracle says; the engine is intact."""
    valid = is_valid(payload)
    event("valid" if valid else "invalid")
    try:
        reply = engine.embed(payload)
    except InputTooLong:  # texts here are far below 512 tokens: never expected
        raise
    except InvalidInput as exc:
        assert exc.code == "invalid_input" and isinstance(exc, ValueError)
        assert str(exc), "an InvalidInput without a message"
        assert not valid, f"valid payload refused: {exc}"
    else:
        assert valid, f"invalid payload accepted: {payload!r}"
        check_reply(payload, reply)
    if check_after:
        assert engine.embed(REF) == before


# -- the properties ------------------------------------------------------------------------------

@FUZZ
@given(payload=payloads)
@example(payload={})
@example(payload={"text": []})
@example(payload={"requests": [{"text": "a"}]})
@example(payload={"requests": []})
@example(payload={"text": "\ud800"})
@example(payload={"text": ["a", "b", "\udfff"]})
@example(payload={"requests": [{"text": "a"}, {"text": ["b", "\ud800"], "pooling": "cls"}]})
@example(payload={"text": "a", "requests": [{"text": "a"}]})
@example(payload={"text": [""]})
@example(payload={"text": "a", "pooling": None})
@example(payload={"text": " \t\n"})  # only whitespace: [CLS] [SEP], valid
@example(payload={"text": "\x00\u200b\ufeff"})  # control and zero-width characters
@example(payload=[{"text": "a"}])
@example(payload=None)
@example(payload="a")
@example(payload={"text": True})
@example(payload={"text": ["a", 1.5]})
def test_arbitrary_payloads(minilm, before, payload):
    throw(minilm, before, payload)


def test_empty_list_is_valid(minilm):
    assert minilm.embed({"text": []}) == {"shape": [0, DIM], "data": [], "pooling": "mean"}
    assert minilm.embed({"text": [], "pooling": "cls"}) == {"shape": [0, DIM], "data": [],
                                                             "pooling": "cls"}


@FUZZ
@given(text=texts, others=st.lists(texts, max_size=3), pooling=st.sampled_from(["mean", "cls"]),
       batched=st.booleans())
@example(text="\ud800", others=[], pooling="mean", batched=False)
@example(text="", others=[], pooling="cls", batched=True)
@example(text="ok", others=["\udbff\udfff"], pooling="mean", batched=False)  # a pair, as two
@example(text="\U0001f600 emoji", others=["é", "日本語"], pooling="cls", batched=True)
def test_arbitrary_strings(minilm, before, text, others, pooling, batched):
    throw(minilm, before, text, check_after=False)  # a bare string is no payload
    if batched:
        payload = {"requests": [{"text": others}, {"text": text, "pooling": pooling}]}
    else:
        payload = {"text": [*others, text], "pooling": pooling}
    throw(minilm, before, payload)
