"""The Workers AI input and output contract of `@cf/baai/bge-small-en-v1.5`
(docs/contract.md, section 1).

`parse` turns a payload into a list of `Request`s or raises `InvalidInput` naming the key or
index at fault; `reply` and `batch_reply` shape the answer. Nothing here touches the model.
"""

from __future__ import annotations

from typing import Any, List, NamedTuple, Optional

from ._lazy import numpy_on_first_use
from .errors import InvalidInput

np = numpy_on_first_use(globals())

MAX_TEXTS = 100
POOLINGS = ("mean", "cls")
DEFAULT_POOLING = "mean"


class Request(NamedTuple):  # not a dataclass: see weights.py (cold start)
    """One embedding request: its texts and the pooling they want."""

    texts: List[str]
    pooling: str


def show(value: Any, limit: int = 60) -> str:
    """A short repr of a caller's value for an error message; never raises (the repr of an
    int of over 4300 digits does)."""
    try:
        text = repr(value)
    except Exception:  # any failing __repr__ must not turn into a crash
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _unknown(keys, allowed) -> Optional[str]:
    """The first key not in `allowed`, shown for a message, or None."""
    return next((show(k) for k in keys if k not in allowed), None)


def check_text(text: Any, where: str) -> str:
    """Returns `text` if it is a non-empty string of valid Unicode, else raises InvalidInput.

    Args:
        text: the candidate.
        where: how the message names it, e.g. "text[3]".
    """
    if not isinstance(text, str):
        raise InvalidInput(f"{where}: expected a string, got {type(text).__name__}")
    if not text:
        raise InvalidInput(f"{where}: expected a non-empty string, got ''")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInput(
            f"{where}: not valid Unicode (lone surrogate at position {exc.start}); "
            "send UTF-8 text") from None
    return text


def check_texts(texts: Any, where: str, max_texts: Optional[int] = MAX_TEXTS) -> List[str]:
    """Validates a str or a list of str; returns the list (a str becomes a list of one).

    Args:
        texts: the candidate.
        where: the key naming it in messages, e.g. "text" or "requests[2].text".
        max_texts: the most texts a list may hold, or None for no limit.
    """
    if isinstance(texts, str):
        return [check_text(texts, where)]
    if not isinstance(texts, list):
        raise InvalidInput(
            f"{where}: expected a string or a list of strings, got {type(texts).__name__}")
    if max_texts is not None and len(texts) > max_texts:
        raise InvalidInput(
            f"{where}: {len(texts)} texts, at most {max_texts} per call; split the list")
    return [check_text(t, f"{where}[{i}]") for i, t in enumerate(texts)]


def _parse_one(item: Any, where: str) -> Request:
    if not isinstance(item, dict):
        raise InvalidInput(f"{where}: expected an object with 'text', got {type(item).__name__}")
    unknown = _unknown(item, ("text", "pooling"))
    if unknown:
        raise InvalidInput(f"{where or 'payload'}: unknown key {unknown}; "
                           "allowed: 'text', 'pooling'")
    if "text" not in item:
        raise InvalidInput(f"{where}: missing key 'text'")
    prefix = f"{where}." if where else ""
    texts = check_texts(item["text"], f"{prefix}text")
    pooling = item.get("pooling", DEFAULT_POOLING)
    if not isinstance(pooling, str) or pooling not in POOLINGS:
        raise InvalidInput(f"{prefix}pooling: expected 'mean' or 'cls', got {show(pooling)}")
    return Request(texts, pooling)


def parse(payload: Any) -> tuple:
    """Validates a payload.

    Returns:
        (requests, batched): the list of `Request`s, and whether the payload used the
        `requests` form (whose reply is a `responses` list).

    Raises:
        InvalidInput: naming the key or index at fault.
    """
    if not isinstance(payload, dict):
        raise InvalidInput(
            f"payload: expected an object (dict) with 'text' or 'requests', "
            f"got {type(payload).__name__}")
    if "requests" in payload:
        extra = _unknown(payload, ("requests",))
        if extra:
            raise InvalidInput(
                f"payload: unknown key {extra} beside 'requests'; "
                "send either {'text': ...} or {'requests': [...]}")
        items = payload["requests"]
        if not isinstance(items, list) or not items:
            raise InvalidInput("requests: expected a non-empty list of {'text': ...} objects")
        return [_parse_one(item, f"requests[{i}]") for i, item in enumerate(items)], True
    if "text" not in payload:
        unknown = _unknown(payload, ())
        hint = f" (unknown key {unknown})" if unknown else ""
        raise InvalidInput(f"payload: expected the key 'text' or 'requests'{hint}")
    return [_parse_one(payload, "")], False


def reply(vectors: np.ndarray, pooling: str) -> dict:
    """The Workers reply for one request: vectors (n, dim) float32."""
    return {"shape": [int(vectors.shape[0]), int(vectors.shape[1])],
            "data": vectors.tolist(), "pooling": pooling}


def batch_reply(replies: list) -> dict:
    """The Workers reply for the `requests` form."""
    return {"responses": [{"id": i, "result": r, "success": True}
                          for i, r in enumerate(replies)]}
