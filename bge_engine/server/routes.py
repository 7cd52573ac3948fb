"""The route handlers: read and check the body on the event loop, tokenise, hand the texts to
the batcher, wait for the rows (or the client leaving, or the timeout), shape the reply.

The two embedding routes are raw ASGI handlers (`asgi.Call` in, the reply's bytes out; the
app wraps them in `asgi.Endpoint`); the others are Starlette request handlers."""

from __future__ import annotations

import asyncio
import math
import time
from typing import List, Sequence

import numpy as np
import orjson
from starlette.requests import Request
from starlette.responses import Response

from .. import schema
from ..errors import InputTooLong, InvalidInput
from . import payloads
from .asgi import Call, ClientGone
from .batcher import Overloaded, Stopped
from .errors import JSON, ApiError, error_body
from .metrics import CONTENT_TYPE
from .openapi import document
from .options import WORKERS_MODEL

# A request with more characters than this is tokenised on a worker thread (the tokenizer
# releases the GIL), so that a large body does not hold up the event loop; below it the
# hop between threads costs more than the tokenising.
INLINE_CHARS = 16384
STARTED = int(time.time())


class _TimedOut(Exception):
    """The request waited past --request-timeout (set on its job's future)."""


def _timed_out(future: asyncio.Future) -> bool:
    return (future.done() and not future.cancelled()
            and isinstance(future.exception(), _TimedOut))


def endpoint(handler):
    """Turns ApiError into its envelope (the routes other than the two embedding ones, which
    are raw ASGI: asgi.Endpoint)."""

    async def run(request: Request) -> Response:
        try:
            return await handler(request)
        except ApiError as exc:
            return error_response(request.scope["path"], exc)

    run.__name__ = handler.__name__
    run.__doc__ = handler.__doc__
    return run


def error_response(path: str, exc: ApiError) -> Response:
    return Response(error_body(path, exc), status_code=exc.status, headers=exc.headers,
                    media_type=JSON)


def _json(data, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type=JSON)


def _ready(svc):
    """The service, or 503 while the model loads (or failed to)."""
    if not svc.ready:
        if svc.load_error is not None:
            raise ApiError(503, f"the model did not load: {svc.load_error}")
        raise ApiError(503, "the model is loading; retry in a moment",
                       headers={"Retry-After": "1"})
    return svc


async def _read_json(call: Call, limit: int):
    """The body parsed as JSON whatever its Content-Type (curl -d sends a form type), or
    413 past `limit` bytes, or 400."""
    body = await call.body(limit)
    if not body.strip():
        raise ApiError(400, "body: empty; send a JSON object", code="invalid_json")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, f"body: not JSON ({exc})", code="invalid_json") from None


async def _tokenize(engine, texts: List[str]) -> list:
    if sum(map(len, texts)) > INLINE_CHARS:
        return await asyncio.get_running_loop().run_in_executor(None, engine._tokenize, texts)
    return engine._tokenize(texts)


async def _disconnect(receive) -> None:
    """Returns once the client has gone (the body is read: the next message is the
    disconnect, when it comes)."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def _embed(svc, call: Call, ids: list, poolings: Sequence[str]) -> np.ndarray:
    """The rows of pre-tokenised texts through the batcher; 429 when too many wait, 408
    past the timeout, ClientGone if the client leaves (its waiting texts are dropped)."""
    if not ids:
        return svc.empty_rows()
    timeout = svc.options.request_timeout or None
    deadline = time.monotonic() + timeout if timeout else math.inf
    try:
        job = svc.batcher.submit(ids, poolings, deadline)
    except Overloaded as exc:
        svc.metrics.rejected_texts.inc(len(ids))
        raise ApiError(429, f"server busy: {exc}",
                       headers={"Retry-After": str(exc.retry_after)}) from None
    except Stopped as exc:
        raise ApiError(503, str(exc)) from None
    # The job's future is awaited alone; the client leaving and the timeout fail it with
    # their own exception (cheaper on the hot path than asyncio.wait over two awaitables).
    future = job.future
    watch = asyncio.ensure_future(_disconnect(call.receive))
    watch.add_done_callback(lambda w: future.done() or w.cancelled()
                            or future.set_exception(ClientGone()))
    timer = None
    if timeout:
        timer = asyncio.get_running_loop().call_later(
            timeout, lambda: future.done() or future.set_exception(_TimedOut()))
    try:
        return await future
    except Stopped as exc:
        raise ApiError(503, str(exc)) from None
    except _TimedOut:
        raise ApiError(408, f"waited over the request timeout of {timeout:g} s; "
                            "send fewer texts per request, or retry later") from None
    finally:
        watch.cancel()
        if timer is not None:
            timer.cancel()
        if not future.done() or future.cancelled() or future.exception() is not None:
            # the client left, the timeout passed, or this task was cancelled (a batch that
            # failed or a stopping batcher has dropped the job already: a no-op)
            svc.batcher.cancel(job, "timeout" if _timed_out(future) else "disconnect")


async def workers_run(call: Call) -> bytes:
    """POST .../ai/run/{model}: the Workers AI payload; the reply in Cloudflare's envelope."""
    svc = call.service
    model = call.path_params["model"]
    if model not in (WORKERS_MODEL, svc.options.served_name):
        raise ApiError(404, f"no model {schema.show(model)} here; this server runs "
                            f"{WORKERS_MODEL!r} (also as {svc.options.served_name!r})")
    svc = _ready(svc)
    payload = await _read_json(call, svc.options.payload_limit)
    try:
        requests, batched = schema.parse(payload)
    except InvalidInput as exc:
        raise ApiError(400, str(exc), code=exc.code) from None
    items = payload["requests"] if batched else [payload]
    default = svc.options.pooling
    all_ids, poolings, counts = [], [], []
    for j, (req, item) in enumerate(zip(requests, items)):
        try:
            ids = await _tokenize(svc.engine, req.texts)
        except InputTooLong as exc:
            raise ApiError(400, f"requests[{j}].{exc}" if batched else str(exc),
                           code=exc.code) from None
        pooling = req.pooling if "pooling" in item else default
        all_ids += ids
        poolings += [pooling] * len(ids)
        counts.append((len(ids), pooling))
    rows = await _embed(svc, call, all_ids, poolings)
    parts, at = [], 0
    for n, pooling in counts:
        parts.append((rows[at:at + n], pooling))
        at += n
    return payloads.workers_reply(parts, batched)


async def openai_embeddings(call: Call) -> bytes:
    """POST /v1/embeddings: the OpenAI embeddings API."""
    svc = _ready(call.service)
    body = await _read_json(call, svc.options.payload_limit)
    req = payloads.parse_openai(body, svc.engine.dim, svc.options.pooling)
    try:
        ids = await _tokenize(svc.engine, req.texts)
    except InputTooLong as exc:
        raise ApiError(400, f"input[{exc.index}]: {exc.n_tokens} tokens, over the model's "
                            f"limit of {exc.limit}; shorten or split it", code=exc.code,
                       param="input") from None
    rows = await _embed(svc, call, ids, [req.pooling] * len(ids))
    tokens = sum(a.shape[0] for a in ids)
    return payloads.openai_reply(rows, req.model or svc.options.served_name, req.base64,
                                 tokens)


@endpoint
async def models(request: Request) -> Response:
    """GET /v1/models: the one model served."""
    svc = request.app.state.service
    return _json({"object": "list", "data": [{"id": svc.options.served_name, "object": "model",
                                              "created": STARTED, "owned_by": "bge-engine"}]})


async def health(request: Request) -> Response:
    """GET /health: 200 once the engine is loaded and serving, else 503."""
    svc = request.app.state.service
    if svc.ready:
        return _json({"status": "ok"})
    if svc.load_error is not None:
        return _json({"status": "error", "error": str(svc.load_error)}, 503)
    return _json({"status": "loading"}, 503)


@endpoint
async def info(request: Request) -> Response:
    """GET /info: the model, every limit, the version and the CPU's kernels."""
    return _json(_ready(request.app.state.service).info)


async def metrics(request: Request) -> Response:
    """GET /metrics: Prometheus text."""
    return Response(request.app.state.service.metrics.render(), media_type=CONTENT_TYPE)


async def openapi(request: Request) -> Response:
    """GET /openapi.json: the routes' OpenAPI 3 document."""
    svc = request.app.state.service
    return _json(document(svc.options.served_name))
