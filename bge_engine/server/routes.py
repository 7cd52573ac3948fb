"""The route handlers: read and check the body on the event loop, tokenise, hand the texts to
the batcher, wait for the rows (or the client leaving, or the timeout), shape the reply."""

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


class ClientGone(Exception):
    """The client disconnected while its texts waited."""


def endpoint(handler):
    """Turns ApiError into its envelope and a departed client into an empty 499 reply (the
    status nginx logs for it; nobody reads it)."""

    async def run(request: Request) -> Response:
        try:
            return await handler(request)
        except ApiError as exc:
            return error_response(request.scope["path"], exc)
        except ClientGone:
            return Response(status_code=499)

    run.__name__ = handler.__name__
    run.__doc__ = handler.__doc__
    return run


def error_response(path: str, exc: ApiError) -> Response:
    return Response(error_body(path, exc), status_code=exc.status, headers=exc.headers,
                    media_type=JSON)


def _json(data, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type=JSON)


def _service(request: Request):
    svc = request.app.state.service
    if not svc.ready:
        if svc.load_error is not None:
            raise ApiError(503, f"the model did not load: {svc.load_error}")
        raise ApiError(503, "the model is loading; retry in a moment",
                       headers={"Retry-After": "1"})
    return svc


async def _read_json(request: Request, limit: int):
    """The body parsed as JSON whatever its Content-Type (curl -d sends a form type), or
    413 past `limit` bytes, or 400."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise ApiError(413, f"body: {length} bytes, over the limit of {limit}; "
                            "send fewer texts per request")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"body: over the limit of {limit} bytes; "
                                "send fewer texts per request")
        chunks.append(chunk)
    body = b"".join(chunks)
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


async def _embed(svc, request: Request, ids: list, poolings: Sequence[str]) -> np.ndarray:
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
    watch = asyncio.ensure_future(_disconnect(request.receive))
    try:
        await asyncio.wait((job.future, watch), timeout=timeout,
                           return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
        if not job.future.done():
            # the client left, the timeout passed, or this task was cancelled
            svc.batcher.cancel(job, "disconnect" if watch.done() else "timeout")
    if job.future.done():
        try:
            return job.future.result()
        except Stopped as exc:
            raise ApiError(503, str(exc)) from None
    if watch.done() and not watch.cancelled():
        raise ClientGone()
    raise ApiError(408, f"waited over the request timeout of {timeout:g} s; "
                        "send fewer texts per request, or retry later")


@endpoint
async def workers_run(request: Request) -> Response:
    """POST .../ai/run/{model}: the Workers AI payload; the reply in Cloudflare's envelope."""
    svc = request.app.state.service
    model = request.path_params["model"]
    if model not in (WORKERS_MODEL, svc.options.served_name):
        raise ApiError(404, f"no model {schema.show(model)} here; this server runs "
                            f"{WORKERS_MODEL!r} (also as {svc.options.served_name!r})")
    svc = _service(request)
    payload = await _read_json(request, svc.options.payload_limit)
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
    rows = await _embed(svc, request, all_ids, poolings)
    parts, at = [], 0
    for n, pooling in counts:
        parts.append((rows[at:at + n], pooling))
        at += n
    return Response(payloads.workers_reply(parts, batched), media_type=JSON)


@endpoint
async def openai_embeddings(request: Request) -> Response:
    """POST /v1/embeddings: the OpenAI embeddings API."""
    svc = _service(request)
    body = await _read_json(request, svc.options.payload_limit)
    req = payloads.parse_openai(body, svc.engine.dim, svc.options.pooling)
    try:
        ids = await _tokenize(svc.engine, req.texts)
    except InputTooLong as exc:
        raise ApiError(400, f"input[{exc.index}]: {exc.n_tokens} tokens, over the model's "
                            f"limit of {exc.limit}; shorten or split it", code=exc.code,
                       param="input") from None
    rows = await _embed(svc, request, ids, [req.pooling] * len(ids))
    tokens = sum(a.shape[0] for a in ids)
    return Response(payloads.openai_reply(rows, req.model or svc.options.served_name,
                                          req.base64, tokens), media_type=JSON)


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
    return _json(_service(request).info)


async def metrics(request: Request) -> Response:
    """GET /metrics: Prometheus text."""
    return Response(request.app.state.service.metrics.render(), media_type=CONTENT_TYPE)


async def openapi(request: Request) -> Response:
    """GET /openapi.json: the routes' OpenAPI 3 document."""
    svc = request.app.state.service
    return _json(document(svc.options.served_name))
