"""ASGI middleware: --api-key, as `Authorization: Bearer KEY`, compared in constant time.
/health and /metrics stay open (probes and scrapers carry no key)."""

from __future__ import annotations

import hmac

from starlette.responses import Response

from .errors import JSON, error_body, ApiError

OPEN = ("/health", "/metrics")


class ApiKey:
    """Refuses (401, in the route family's envelope) a request without the key."""

    def __init__(self, app, key: str):
        self.app = app
        self.key = key.encode("utf-8")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in OPEN:
            await self.app(scope, receive, send)
            return
        given = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                given = value
                break
        if given is None:
            problem = "missing the header 'Authorization: Bearer <key>'"
        else:
            scheme, _, token = given.strip().partition(b" ")
            # compare_digest takes as long for any wrong key of a given length
            if scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.key):
                await self.app(scope, receive, send)
                return
            problem = "wrong API key in 'Authorization: Bearer <key>'"
        exc = ApiError(401, f"unauthorized: {problem}", headers={"WWW-Authenticate": "Bearer"})
        await Response(error_body(scope["path"], exc), status_code=401, headers=exc.headers,
                       media_type=JSON)(scope, receive, send)
