"""Raw ASGI endpoints for the two embedding routes, the hot path.

Starlette still routes, checks the method and runs the middleware; the endpoint itself reads
the body from `receive` and sends the reply as two ASGI messages, without building
Starlette's Request and Response objects for every request (docs/server.md, "Speed").
A handler takes a `Call` and returns the reply's JSON bytes, or raises `ApiError` (its
envelope is sent) or `ClientGone` (an empty 499, the status nginx logs for it).
"""

from __future__ import annotations

from typing import Awaitable, Callable, Dict, Optional

from .errors import ApiError, error_body

_JSON = (b"content-type", b"application/json")


class ClientGone(Exception):
    """The client disconnected before its reply."""


class Call:
    """One request to an embedding route, as its handler sees it.

    Attributes:
        scope, receive: the ASGI request.
        service: the app's `Service`.
    """

    __slots__ = ("scope", "receive", "service")

    def __init__(self, scope, receive):
        self.scope, self.receive = scope, receive
        self.service = scope["app"].state.service

    @property
    def path(self) -> str:
        return self.scope["path"]

    @property
    def path_params(self) -> dict:
        return self.scope.get("path_params", {})

    def header(self, name: bytes) -> Optional[bytes]:
        """A request header's value (`name` in lower case, as ASGI gives them), or None."""
        for key, value in self.scope["headers"]:
            if key == name:
                return value
        return None

    async def body(self, limit: int) -> bytes:
        """The whole body, or 413 past `limit` bytes; ClientGone if the client leaves."""
        length = self.header(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise ApiError(413, f"body: {length.decode()} bytes, over the limit of {limit}; "
                                "send fewer texts per request")
        chunks, size = [], 0
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                raise ClientGone()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise ApiError(413, f"body: over the limit of {limit} bytes; "
                                    "send fewer texts per request")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def send_reply(send, status: int, body: bytes,
                     headers: Optional[Dict[str, str]] = None) -> None:
    """Sends a JSON reply (an empty body has no content type, as Starlette's Response)."""
    raw = [(b"content-length", str(len(body)).encode())]
    if body:
        raw.append(_JSON)
    for key, value in (headers or {}).items():
        raw.append((key.lower().encode("latin-1"), value.encode("latin-1")))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class Endpoint:
    """A Starlette route's endpoint (a class instance, so Starlette treats it as ASGI)
    running `handler(call) -> bytes`."""

    def __init__(self, handler: Callable[[Call], Awaitable[bytes]]):
        self.handler = handler
        self.__name__ = handler.__name__
        self.__doc__ = handler.__doc__

    async def __call__(self, scope, receive, send) -> None:
        call = Call(scope, receive)
        try:
            body = await self.handler(call)
        except ApiError as exc:
            await send_reply(send, exc.status, error_body(scope["path"], exc), exc.headers)
            return
        except ClientGone:
            await send_reply(send, 499, b"")
            return
        await send_reply(send, 200, body)
