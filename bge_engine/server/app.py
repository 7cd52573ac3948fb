"""The ASGI app: Starlette routing, the middleware, JSON for every error, the lifespan that
loads the engine and runs the batcher.

    uvicorn --factory bge_engine.server:create_app          # options from $BGE_ENGINE_SERVE_OPTIONS
    gunicorn -k uvicorn.workers.UvicornWorker 'bge_engine.server:create_app()'
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Callable, Optional

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from . import routes
from .asgi import Endpoint
from .access import AccessLog
from .auth import ApiKey
from .errors import JSON, ApiError, error_body
from .cli import configure_logging
from .options import Options, parse
from .service import Service

log = logging.getLogger("bge_engine.server")

_MESSAGES = {404: "no such route; see GET /openapi.json for the routes",
             405: "method not allowed on this route"}


async def _http_error(request: Request, exc: HTTPException) -> Response:
    """Starlette's own 404 and 405 (and any other HTTPException) in the route's envelope."""
    message = _MESSAGES.get(exc.status_code, str(exc.detail))
    if exc.status_code == 405:
        message = f"{request.method} is not allowed here; allowed: {exc.headers.get('Allow', '')}" \
            if exc.headers else message
    err = ApiError(exc.status_code, message, headers=dict(exc.headers or {}))
    return routes.error_response(request.scope["path"], err)


async def _server_error(request: Request, exc: Exception) -> Response:
    """A bug's 500, as JSON in the route's envelope (the traceback goes to the log)."""
    err = ApiError(500, f"internal error ({type(exc).__name__}); see the server's log")
    return Response(error_body(request.scope["path"], err), status_code=500, media_type=JSON)


def create_app(options: Optional[Options] = None, *, engine=None,
               load: Optional[Callable] = None,
               on_load_error: Optional[Callable[[BaseException], None]] = None) -> Starlette:
    """The ASGI app serving one Engine.

    Args:
        options: the server's options; None reads them from $BGE_ENGINE_SERVE_OPTIONS (a
            string of `bge-engine serve` options), as `uvicorn --factory` calls it.
        engine: an Engine to serve at once; None loads one from `options` on a thread when
            the app starts (/health answers 503 meanwhile).
        load: makes the Engine instead (tests).
        on_load_error: called with the exception if loading fails.
    """
    if options is None:
        options = parse(None)
        configure_logging(options.log_level, to_stderr=True)  # under uvicorn --factory
    service = Service(options, engine=engine, load=load, on_load_error=on_load_error)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        service.start(asyncio.get_running_loop())
        try:
            yield
        finally:
            service.stop()

    # the hot routes: raw ASGI endpoints (asgi.py)
    openai, workers = Endpoint(routes.openai_embeddings), Endpoint(routes.workers_run)
    table = [
        Route("/v1/embeddings", openai, methods=["POST"]),
        Route("/embeddings", openai, methods=["POST"]),
        Route("/client/v4/accounts/{account_id}/ai/run/{model:path}", workers, methods=["POST"]),
        Route("/ai/run/{model:path}", workers, methods=["POST"]),
        Route("/v1/models", routes.models, methods=["GET"]),
        Route("/health", routes.health, methods=["GET"]),
        Route("/info", routes.info, methods=["GET"]),
        Route("/metrics", routes.metrics, methods=["GET"]),
        Route("/openapi.json", routes.openapi, methods=["GET"]),
    ]
    middleware = [Middleware(AccessLog, metrics=service.metrics)]
    if options.api_key:
        middleware.append(Middleware(ApiKey, key=options.api_key))
    app = Starlette(routes=table, middleware=middleware, lifespan=lifespan,
                    exception_handlers={HTTPException: _http_error, Exception: _server_error})
    app.state.service = service
    return app
