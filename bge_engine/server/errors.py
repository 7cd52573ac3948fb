"""The server's error replies: one exception type, two JSON envelopes (CONTRACT.md 5).

Handlers raise `ApiError(status, message, ...)`; the app turns it into the envelope of the
route's family: Workers AI routes get {"result": null, "success": false, "errors": [{"code":
int, "message": str}], "messages": []}, OpenAI routes {"error": {"message", "type", "param",
"code"}}. Every status maps to one Workers code and one OpenAI type and code.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import orjson

# status -> (Workers AI code, OpenAI type, OpenAI code). 400, 401, 404, 408, 413, 429 and 503
# are CONTRACT.md 5's table; 405 is the Cloudflare API's own "method not available for that
# URI" (7001); 500, which only a bug gives, carries its status as its code.
STATUS_CODES: Dict[int, Tuple[int, str, str]] = {
    400: (5006, "invalid_request_error", "invalid_input"),
    401: (10000, "authentication_error", "invalid_api_key"),
    404: (5007, "invalid_request_error", "not_found"),
    405: (7001, "invalid_request_error", "method_not_allowed"),
    408: (3007, "timeout_error", "timeout"),
    413: (3006, "invalid_request_error", "payload_too_large"),
    429: (3040, "rate_limit_error", "queue_full"),
    500: (500, "server_error", "internal_error"),
    503: (3040, "server_error", "not_ready"),
}

JSON = "application/json"


class ApiError(Exception):
    """An error reply.

    Args:
        status: the HTTP status (a key of STATUS_CODES).
        message: what was wrong, where, and what to do.
        code: the OpenAI envelope's code where it says more than the status's (e.g.
            "input_too_long"); the Workers code always follows the status.
        param: the OpenAI envelope's param: the body key at fault, or None.
        headers: extra reply headers (Retry-After, Allow, WWW-Authenticate).
    """

    def __init__(self, status: int, message: str, *, code: Optional[str] = None,
                 param: Optional[str] = None, headers: Optional[Dict[str, str]] = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.headers = headers or {}


def workers_body(status: int, message: str) -> bytes:
    """The Workers AI error envelope."""
    code = STATUS_CODES.get(status, STATUS_CODES[500])[0]
    return orjson.dumps({"result": None, "success": False,
                         "errors": [{"code": code, "message": message}], "messages": []})


def openai_body(status: int, message: str, code: Optional[str] = None,
                param: Optional[str] = None) -> bytes:
    """The OpenAI error envelope."""
    _, kind, default_code = STATUS_CODES.get(status, STATUS_CODES[500])
    return orjson.dumps({"error": {"message": message, "type": kind, "param": param,
                                   "code": code or default_code}})


def is_openai_path(path: str) -> bool:
    """Whether a path belongs to the OpenAI family (its errors use the OpenAI envelope)."""
    return path.startswith("/v1/") or path == "/v1" or path.startswith("/embeddings")


def error_body(path: str, exc: ApiError) -> bytes:
    """The envelope of the family `path` belongs to."""
    if is_openai_path(path):
        return openai_body(exc.status, exc.message, exc.code, exc.param)
    return workers_body(exc.status, exc.message)
