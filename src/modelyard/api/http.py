"""The thin ASGI layer: a request object, response helpers and the disconnect watcher.

modelyard speaks raw ASGI rather than going through a framework: the gateway's whole budget is
well under a millisecond per request, and a framework's routing, request and response objects cost
a large share of it (see docs/design/http-stack.md). What a framework would give us is here in
~150 lines: exact-path routing, bounded body reading, JSON and raw responses, streaming.
"""

from __future__ import annotations

import asyncio
import re
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

import orjson

from modelyard.errors import InvalidJSONError, InvalidRequestError, ModelyardError, PayloadTooLargeError

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]

_JSON = b"application/json"
_REQUEST_ID_OK = re.compile(rb"^[A-Za-z0-9._:\-]{1,128}$")


class Request:
    """One HTTP exchange. Owned by the task serving it."""

    __slots__ = (
        "scope", "receive", "send", "method", "path", "request_id", "t0", "model", "endpoint", "status",
        "started", "finished", "disconnected", "extra_headers", "watcher", "authorization", "principal", "outcome",
        "priority",
    )

    def __init__(self, scope: Scope, receive: Receive, send: Send, t0: float) -> None:
        self.scope = scope
        self.receive = receive
        self.send = send
        self.method: str = scope["method"]
        self.path: str = scope["path"]
        self.t0 = t0
        rid = auth = None
        for k, v in scope["headers"]:
            if k == b"authorization":
                auth = v.decode("latin-1")
            elif k == b"x-request-id" and rid is None and _REQUEST_ID_OK.match(v):
                rid = v.decode()
        self.request_id: str = rid or secrets.token_hex(12)
        self.authorization: str | None = auth  # never logged
        self.principal: Any = None  # api.auth.Principal, set before the handler runs
        self.model: str | None = None  # public model label (metrics/logs)
        self.endpoint: str = self.path
        self.status = 0
        self.started = False  # response head sent
        self.finished = False  # last body byte sent
        self.disconnected = False
        self.extra_headers: Headers = []
        # accounting.outcome.Tally: the proxy's record of what answered (ended into an Outcome and
        # handed to the recorder by the app, also when the request failed or was cancelled)
        self.outcome: Any = None
        self.priority = 1  # admission priority (routing.priority levels), decided by the proxy
        self.watcher: asyncio.Task[None] | None = None

    def watch_disconnect(self) -> None:
        """From now on (the body has been read), cancel this request's task if the client leaves."""
        task = asyncio.current_task()
        if task is not None and self.watcher is None:
            self.watcher = asyncio.get_running_loop().create_task(watch_disconnect(self, task))

    def query(self) -> dict[str, str]:
        """The query string's parameters (the last value of a repeated one)."""
        return {k: v[-1] for k, v in parse_qs(self.scope.get("query_string", b"").decode("latin-1")).items()}

    def header(self, name: bytes) -> bytes | None:
        for k, v in self.scope["headers"]:
            if k == name:
                return v
        return None

    async def body(self, limit: int) -> bytes:
        """The whole request body, refusing more than ``limit`` bytes with 413."""
        cl = self.header(b"content-length")
        if cl is not None and cl.isdigit() and int(cl) > limit:
            raise PayloadTooLargeError(f"request body is {int(cl)} bytes; the limit is {limit} bytes")
        parts: list[bytes] = []
        size = 0
        async for chunk in self.chunks():
            size += len(chunk)
            if size > limit:
                raise PayloadTooLargeError(f"request body exceeds the limit of {limit} bytes")
            parts.append(chunk)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def chunks(self) -> AsyncIterator[bytes]:
        """The request body's non-empty chunks as they arrive (a client that leaves cancels)."""
        while True:
            msg = await self.receive()
            if msg["type"] == "http.disconnect":
                self.disconnected = True
                raise asyncio.CancelledError()
            chunk = msg.get("body", b"")
            if chunk:
                yield chunk
            if not msg.get("more_body", False):
                return

    async def json_object(self, limit: int) -> tuple[dict[str, Any], bytes]:
        raw = await self.body(limit)
        if not raw:
            raise InvalidJSONError("request body is empty; expected a JSON object")
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise InvalidJSONError(f"request body is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise InvalidRequestError("request body must be a JSON object")
        return data, raw

    # --- responses ----------------------------------------------------------------------------
    def _head(self, status: int, content_type: bytes, extra: Headers | None) -> Headers:
        headers = [(b"content-type", content_type), (b"x-request-id", self.request_id.encode())]
        headers.extend(self.extra_headers)
        if extra:
            headers.extend(extra)
        return headers

    async def respond(self, status: int, body: bytes, *, content_type: bytes = _JSON, headers: Headers | None = None) -> None:
        head = self._head(status, content_type, headers)
        head.append((b"content-length", str(len(body)).encode()))
        self.status = status
        self.started = True
        await self.send({"type": "http.response.start", "status": status, "headers": head})
        self.finished = True
        await self.send({"type": "http.response.body", "body": body})

    async def respond_json(self, status: int, data: Any, *, headers: Headers | None = None) -> None:
        await self.respond(status, orjson.dumps(data), headers=headers)

    async def respond_error(self, exc: ModelyardError) -> None:
        await self.respond(exc.status, exc.to_json(), headers=[(k.encode(), v.encode()) for k, v in exc.headers.items()])

    async def start_stream(self, status: int, content_type: bytes, headers: Headers | None = None) -> None:
        head = self._head(status, content_type, headers)
        head.append((b"cache-control", b"no-cache"))
        self.status = status
        self.started = True
        await self.send({"type": "http.response.start", "status": status, "headers": head})

    async def stream_chunk(self, data: bytes) -> None:
        await self.send({"type": "http.response.body", "body": data, "more_body": True})

    async def end_stream(self, data: bytes = b"") -> None:
        self.finished = True
        await self.send({"type": "http.response.body", "body": data})


async def watch_disconnect(req: Request, task: asyncio.Task[Any]) -> None:
    """Cancel ``task`` if the client goes away before the response finished.

    After the body has been read, the server's ``receive()`` returns only when the client
    disconnects or the response completes; only the former cancels.
    """
    while True:
        msg = await req.receive()
        if msg["type"] == "http.disconnect":
            if not req.finished:
                req.disconnected = True
                task.cancel()
            return
