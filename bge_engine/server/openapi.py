"""The OpenAPI 3 document of the routes (GET /openapi.json): for clients' generators and for
the tests' schemathesis run."""

from __future__ import annotations

from .. import schema
from .options import OPENAI_MAX_TEXTS, WORKERS_MODEL

_TEXT = {"type": "string", "minLength": 1}
_TEXTS = {"oneOf": [_TEXT, {"type": "array", "items": _TEXT, "maxItems": schema.MAX_TEXTS}]}
_POOLING = {"type": "string", "enum": list(schema.POOLINGS)}
_ONE = {"type": "object", "additionalProperties": False, "required": ["text"],
        "properties": {"text": _TEXTS, "pooling": _POOLING}}
_WORKERS_IN = {"oneOf": [_ONE, {
    "type": "object", "additionalProperties": False, "required": ["requests"],
    "properties": {"requests": {"type": "array", "minItems": 1, "items": _ONE}}}]}
_OPENAI_IN = {
    "type": "object", "additionalProperties": False, "required": ["input"],
    "properties": {
        "input": {"oneOf": [_TEXT, {"type": "array", "items": _TEXT,
                                    "maxItems": OPENAI_MAX_TEXTS}]},
        "model": {"type": "string"},
        "encoding_format": {"type": "string", "enum": ["float", "base64"]},
        "dimensions": {"type": "integer"},
        "pooling": _POOLING,
        "user": {"type": "string"},
    }}
_WORKERS_ERROR = {"type": "object", "required": ["result", "success", "errors", "messages"],
                  "properties": {"result": {"type": "null"}, "success": {"const": False},
                                 "errors": {"type": "array", "items": {
                                     "type": "object", "required": ["code", "message"],
                                     "properties": {"code": {"type": "integer"},
                                                    "message": {"type": "string"}}}},
                                 "messages": {"type": "array"}}}
_OPENAI_ERROR = {"type": "object", "required": ["error"], "properties": {"error": {
    "type": "object", "required": ["message", "type", "param", "code"],
    "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                   "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]}}}}}
_OBJECT = {"type": "object"}


def _json(schema_: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema_}}}


def _post(summary: str, body: dict, ok: dict, error: dict, params=()) -> dict:
    responses = {"200": _json(ok, "the embeddings")}
    for status, what in (("400", "bad body"), ("401", "missing or wrong API key"),
                         ("404", "unknown model"), ("408", "timed out"),
                         ("413", "body too large"), ("429", "queue full"),
                         ("503", "not ready")):
        responses[status] = _json(error, what)
    op = {"summary": summary, "requestBody": {"required": True, "content": {
        "application/json": {"schema": body}}}, "responses": responses}
    if params:
        op["parameters"] = list(params)
    return {"post": op}


def _get(summary: str, media: str = "application/json") -> dict:
    return {"get": {"summary": summary, "responses": {
        "200": {"description": "OK", "content": {media: {"schema": _OBJECT if media ==
                                                         "application/json" else {"type": "string"}}}},
        "503": {"description": "not ready", "content": {"application/json": {"schema": _OBJECT}}}}}}


def document(served_name: str) -> dict:
    """The OpenAPI document; `served_name` is the model's name in /v1/models."""
    model = {"name": "model", "in": "path", "required": True,
             "schema": {"type": "string", "enum": [WORKERS_MODEL, served_name]}}
    account = {"name": "account_id", "in": "path", "required": True,
               "schema": {"type": "string", "pattern": "^[a-zA-Z0-9]{1,32}$"}}
    workers_ok = {"type": "object", "required": ["result", "success"],
                  "properties": {"success": {"const": True}, "result": _OBJECT}}
    openai_ok = {"type": "object", "required": ["object", "data", "model", "usage"]}
    workers = _post("Workers AI run (CONTRACT.md 1's payload)", _WORKERS_IN, workers_ok,
                    _WORKERS_ERROR, [model])
    openai = _post("OpenAI embeddings", _OPENAI_IN, openai_ok, _OPENAI_ERROR)
    return {
        "openapi": "3.1.0",
        "info": {"title": "bge-engine", "version": _version(),
                 "description": "Workers AI and OpenAI embeddings endpoints"},
        "paths": {
            "/ai/run/{model}": workers,
            "/client/v4/accounts/{account_id}/ai/run/{model}": {
                "post": dict(workers["post"], parameters=[account, model])},
            "/v1/embeddings": openai,
            "/embeddings": openai,
            "/v1/models": _get("the model served"),
            "/health": _get("200 once serving, else 503"),
            "/info": _get("model, limits, version, CPU"),
            "/metrics": _get("Prometheus metrics", "text/plain"),
        },
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }


def _version() -> str:
    from .. import __version__

    return __version__
