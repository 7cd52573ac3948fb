"""ASGI middleware: one access line per request at INFO, and the request metrics."""

from __future__ import annotations

import logging
import time

access_log = logging.getLogger("bge_engine.server.access")


def route_family(path: str) -> str:
    """The metrics label of a path (a fixed set: paths themselves would grow without bound)."""
    if "/ai/run/" in path:
        return "workers"
    if path in ("/v1/embeddings", "/embeddings"):
        return "openai"
    if path in ("/v1/models", "/health", "/info", "/metrics", "/openapi.json"):
        return path.rsplit("/", 1)[1]
    return "other"


class AccessLog:
    """Counts every HTTP request by route family and status, times it, and logs it."""

    def __init__(self, app, metrics):
        self.app = app
        self.metrics = metrics
        # (family, status) -> its (requests counter, latency histogram) children: labels()
        # checks and looks its arguments up on every call; a few families x statuses
        self._children = {}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # what the client sees if the app fails before answering
        recorded = False

        def record():
            nonlocal recorded
            recorded = True
            seconds = time.perf_counter() - start
            path = scope["path"]
            family = route_family(path)
            children = self._children.get((family, status))
            if children is None:
                children = self._children[family, status] = (
                    self.metrics.requests.labels(family, str(status)),
                    self.metrics.latency.labels(family))
            children[0].inc()
            children[1].observe(seconds)
            if access_log.isEnabledFor(logging.INFO):
                client = scope.get("client")
                where = f"{client[0]}:{client[1]}" if client else "-"
                access_log.info('%s "%s %s HTTP/%s" %d %.2f ms', where, scope["method"], path,
                                scope.get("http_version", "1.1"), status, seconds * 1e3)

        async def send_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                # Counted and logged before the last body part leaves: a client that has its
                # answer finds the request in /metrics and in the log, never a moment later.
                record()
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            if not recorded:
                record()
