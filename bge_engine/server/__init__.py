"""`bge-engine serve`: an HTTP service for the Workers AI endpoint and OpenAI embeddings
clients (CONTRACT.md 5), as a plain ASGI app on Starlette, run by uvicorn.

    bge-engine serve --model ./bge-small-en-v1.5 --port 8080
    uvicorn --factory bge_engine.server:create_app        # options in $BGE_ENGINE_SERVE_OPTIONS

Modules: options (the options and their parsing), cli (the subcommand's runner), app (the
ASGI app), routes (handlers), payloads (OpenAI checks, reply bodies), batcher (the compute
thread), service (the state routes share), errors (envelopes), metrics, access and auth
(middleware), openapi (the routes' document).
"""

from __future__ import annotations

__all__ = ["create_app"]


def __getattr__(name):
    # Starlette is imported on first use: `bge-engine --help` and the `serve` parser work
    # without the server extra.
    if name == "create_app":
        from .app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
