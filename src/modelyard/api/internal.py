"""Running one OpenAI request through the proxy on someone's behalf, the reply captured.

The Responses API (translated onto chat completions), background responses and batch items all
need "a chat completion (or embedding) exactly as a client would have made it" — with the key's
models, limits and budget, auto routing, cascades, fallbacks, admission at a priority, and the
outcome's hops for spend — but with the reply kept instead of sent. Rather than a second path
beside ``Proxy.forward``, an *inner* ``Request`` is built whose ASGI ``send`` is a sink: the proxy
runs unchanged and writes to it.

- ``unary``: the reply's status, headers and body, once the proxy has answered.
- ``stream``: each body chunk handed to ``on_chunk`` as the proxy sends it (the head first to
  ``on_start``), so a translating caller can turn chat chunks into its own events on the fly.

The inner request never sees a client disconnect (its ``receive`` waits forever); a caller that
serves a client cancels the task instead (the outer request's own watcher does that). Errors the
proxy raises before answering propagate as they are (``ModelyardError``).
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from modelyard.api.http import Headers, Request

OnStart = Callable[[int, Headers], Awaitable[None]]
OnChunk = Callable[[bytes], Awaitable[None]]


@dataclass(slots=True)
class Captured:
    status: int = 0
    headers: Headers = field(default_factory=list)
    body: bytes = b""
    request: Request | None = None  # the inner request: its outcome (tally), model, extra headers

    def json(self) -> Any:
        try:
            return orjson.loads(self.body)
        except orjson.JSONDecodeError:
            return None

    @property
    def outcome(self) -> Any:
        return self.request.outcome if self.request is not None else None


async def _never() -> dict[str, Any]:
    await asyncio.Event().wait()
    raise AssertionError("unreachable")  # pragma: no cover


def inner_request(path: str, *, principal: Any, t0: float, request_id: str | None = None,
                  headers: Headers | None = None, endpoint: str = "",
                  send: Callable[[dict[str, Any]], Awaitable[None]]) -> Request:
    """A ``Request`` for ``path`` that no socket backs: ``send`` receives what the proxy writes."""
    hs: Headers = list(headers or ())
    if request_id is not None:
        hs = [(k, v) for k, v in hs if k != b"x-request-id"]
        hs.append((b"x-request-id", request_id.encode()))
    scope = {"type": "http", "method": "POST", "path": path, "headers": hs, "query_string": b""}
    req = Request(scope, _never, send, t0)
    if request_id is None:
        req.request_id = secrets.token_hex(12)
    req.principal = principal
    req.endpoint = endpoint or path.removeprefix("/v1/").replace("/", ".")
    return req


async def unary(proxy: Any, path: str, model: str, data: dict[str, Any], *, principal: Any, t0: float,
                request_id: str | None = None, headers: Headers | None = None, endpoint: str = "",
                priority: int | None = None, box: list[Request] | None = None) -> Captured:
    """One non-streaming request through ``proxy.forward``; the reply captured. ``box`` receives
    the inner request before it runs (its tally holds what was spent also when the call raises)."""
    out = Captured()

    async def send(msg: dict[str, Any]) -> None:
        if msg["type"] == "http.response.start":
            out.status = msg["status"]
            out.headers = list(msg.get("headers") or ())
        elif msg["type"] == "http.response.body":
            out.body += msg.get("body", b"")

    return await _run(proxy, path, model, data, out, send, stream=False, principal=principal, t0=t0,
                      request_id=request_id, headers=headers, endpoint=endpoint, priority=priority, box=box)


async def stream(proxy: Any, path: str, model: str, data: dict[str, Any], *, principal: Any, t0: float,
                 on_start: OnStart, on_chunk: OnChunk, request_id: str | None = None,
                 headers: Headers | None = None, endpoint: str = "", priority: int | None = None,
                 box: list[Request] | None = None) -> Captured:
    """One streaming request through ``proxy.forward``; chunks handed on as they are written."""
    out = Captured()

    async def send(msg: dict[str, Any]) -> None:
        if msg["type"] == "http.response.start":
            out.status = msg["status"]
            out.headers = list(msg.get("headers") or ())
            await on_start(out.status, out.headers)
        elif msg["type"] == "http.response.body":
            body = msg.get("body", b"")
            if body:
                await on_chunk(body)

    return await _run(proxy, path, model, data, out, send, stream=True, principal=principal, t0=t0,
                      request_id=request_id, headers=headers, endpoint=endpoint, priority=priority, box=box)


async def _run(proxy: Any, path: str, model: str, data: dict[str, Any], out: Captured,
               send: Callable[[dict[str, Any]], Awaitable[None]], *, stream: bool, principal: Any, t0: float,
               request_id: str | None, headers: Headers | None, endpoint: str, priority: int | None,
               box: list[Request] | None) -> Captured:
    req = out.request = inner_request(path, principal=principal, t0=t0, request_id=request_id, headers=headers,
                                      endpoint=endpoint, send=send)
    if box is not None:
        box.append(req)
    try:
        await proxy.forward(req, path.removeprefix("/v1"), model, data, orjson.dumps(data), stream=stream,
                            priority=priority)
    finally:
        if req.watcher is not None:
            req.watcher.cancel()
    return out


def sse_events(buf: bytes) -> tuple[list[bytes], bytes]:
    """Split complete SSE events' ``data:`` payloads off ``buf``; return (payloads, rest)."""
    if b"\r" in buf:
        buf = buf.replace(b"\r\n", b"\n")
    end = buf.rfind(b"\n\n")
    if end < 0:
        return [], buf
    payloads = []
    for event in buf[: end + 2].split(b"\n\n"):
        for line in event.split(b"\n"):
            if line.startswith(b"data:"):
                payloads.append(line[5:].strip())
    return payloads, buf[end + 2:]
