"""The bodies of the embedding routes: the OpenAI request's checks, and both replies as bytes.

The Workers AI payload is checked by `bge_engine.schema` (the same checks as `embed()`); the
OpenAI one here, with the same text checks. Replies go through orjson: vectors as float64
arrays (each float32 widened exactly, so a client's parsed floats equal `Engine.embed`'s
Python floats), or base64 of the little-endian float32 bytes.
"""

from __future__ import annotations

import base64
from typing import Any, List, NamedTuple, Optional, Sequence

import numpy as np
import orjson

from .. import schema
from ..errors import InvalidInput
from .errors import ApiError
from .options import OPENAI_MAX_TEXTS

OPENAI_KEYS = ("input", "model", "encoding_format", "dimensions", "pooling", "user")
TOKEN_IDS = ("input: token-id arrays are not accepted; send the texts as strings (LangChain: "
             "OpenAIEmbeddings(..., check_embedding_ctx_length=False); this server counts and "
             "truncates tokens itself)")
_NUMPY = orjson.OPT_SERIALIZE_NUMPY


class OpenAIRequest(NamedTuple):
    """A checked OpenAI embeddings request."""

    texts: List[str]
    pooling: str
    base64: bool
    model: Optional[str]  # as the client sent it (echoed), None if absent


def _bad(message: str, param: Optional[str]) -> ApiError:
    return ApiError(400, message, code="invalid_input", param=param)


def _is_token_ids(value: Any) -> bool:
    """A list of ints, or a list of lists of ints: what tiktoken-based clients send."""
    if not isinstance(value, list) or not value:
        return False
    first = value[0]
    if isinstance(first, list):
        return all(isinstance(x, int) and not isinstance(x, bool) for x in first)
    return isinstance(first, int) and not isinstance(first, bool)


def parse_openai(body: Any, dim: int, default_pooling: str) -> OpenAIRequest:
    """Checks an OpenAI /v1/embeddings body.

    Raises:
        ApiError: 400, naming the key (and the text's index) at fault.
    """
    if not isinstance(body, dict):
        raise _bad(f"body: expected a JSON object with 'input', got {_json_type(body)}", None)
    unknown = next((k for k in body if k not in OPENAI_KEYS), None)
    if unknown is not None:
        raise _bad(f"body: unknown key {schema.show(unknown)}; allowed: "
                   + ", ".join(repr(k) for k in OPENAI_KEYS), unknown)
    if "input" not in body:
        raise _bad("body: missing key 'input' (a string or a list of strings)", "input")
    value = body["input"]
    if _is_token_ids(value):
        raise ApiError(400, TOKEN_IDS, code="token_ids_unsupported", param="input")
    try:
        texts = schema.check_texts(value, "input", max_texts=OPENAI_MAX_TEXTS)
    except InvalidInput as exc:
        raise _bad(str(exc), "input") from None
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise _bad(f"model: expected a string, got {_json_type(model)}", "model")
    fmt = body.get("encoding_format")
    if fmt is not None and fmt not in ("float", "base64"):
        raise _bad(f"encoding_format: expected 'float' or 'base64', got {schema.show(fmt)}",
                   "encoding_format")
    dims = body.get("dimensions")
    if dims is not None and (type(dims) is not int or dims != dim):
        raise _bad(f"dimensions: this model gives {dim}-dimensional vectors only, got "
                   f"{schema.show(dims)}; send {dim} or leave it out", "dimensions")
    pooling = body.get("pooling")
    if pooling is None:
        pooling = default_pooling
    elif pooling not in schema.POOLINGS:
        raise _bad(f"pooling: expected 'mean' or 'cls', got {schema.show(pooling)}", "pooling")
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise _bad(f"user: expected a string, got {_json_type(user)}", "user")
    return OpenAIRequest(texts, pooling, fmt == "base64", model)


def _json_type(value: Any) -> str:
    """The JSON name of a parsed value's type, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def openai_reply(rows: np.ndarray, model: str, as_base64: bool, tokens: int) -> bytes:
    """The OpenAI reply: rows (n, dim) float32 as float lists or base64 little-endian float32."""
    if as_base64:
        le = rows.astype("<f4", copy=False)
        vectors: Sequence = [base64.b64encode(row.tobytes()).decode("ascii") for row in le]
    else:
        vectors = rows.astype(np.float64)
    data = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)]
    return orjson.dumps({"object": "list", "data": data, "model": model,
                         "usage": {"prompt_tokens": tokens, "total_tokens": tokens}},
                        option=_NUMPY)


def _result(rows: np.ndarray, pooling: str) -> dict:
    """`schema.reply`'s dict, its data a float64 array for orjson."""
    return {"shape": [int(rows.shape[0]), int(rows.shape[1])],
            "data": rows.astype(np.float64), "pooling": pooling}


def workers_reply(parts: Sequence[tuple], batched: bool) -> bytes:
    """The Workers AI success envelope of (rows, pooling) per request (the `requests` form
    when `batched`)."""
    if batched:
        result = {"responses": [{"id": i, "result": _result(rows, pooling), "success": True}
                                for i, (rows, pooling) in enumerate(parts)]}
    else:
        result = _result(*parts[0])
    return orjson.dumps({"result": result, "success": True, "errors": [], "messages": []},
                        option=_NUMPY)
