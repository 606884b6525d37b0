"""Any OpenAI-compatible upstream over HTTP (OpenAI itself, vLLM, llama.cpp server, TGI, ...).

The HTTP pool is injected (one per app, owned by its lifespan) so tests can hand in their own.
Every failure leaves this module as a modelyard error, translated here, at the boundary.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from modelyard.backends.base import CallOptions, UpstreamReply
from modelyard.backends.httpclient import ConnectError, HTTPPool, Origin, ProtocolError, Response
from modelyard.errors import UpstreamConnectError, UpstreamError, UpstreamStatusError, UpstreamTimeoutError

_JSON = b"application/json"


class OpenAIBackend:
    """One OpenAI-compatible upstream (one deployment)."""

    def __init__(self, api_base: str, api_key: str | None, pool: HTTPPool) -> None:
        self._origin = Origin.from_url(api_base)
        self._pool = pool
        self._base = self._origin.base_path.encode()
        static = b"Content-Type: application/json\r\nUser-Agent: modelyard\r\n"
        if api_key:
            static += b"Authorization: Bearer " + api_key.encode() + b"\r\n"
        self._static_headers = static
        self.label = f"{self._origin.scheme}://{self._origin.host}:{self._origin.port}{self._origin.base_path}"

    def _headers(self, opts: CallOptions, stream: bool) -> bytes:
        accept = b"Accept: text/event-stream\r\n" if stream else b"Accept: application/json\r\n"
        return self._static_headers + accept + b"X-Request-Id: " + opts.request_id.encode() + b"\r\n"

    async def _send(self, method: bytes, path: str, body: bytes, opts: CallOptions, stream: bool) -> Response:
        try:
            resp = await self._pool.request(self._origin, method, self._base + path.encode(), self._headers(opts, stream), body)
        except ConnectError as exc:
            raise UpstreamConnectError(f"upstream unreachable: {exc}") from exc
        except ProtocolError as exc:
            raise UpstreamError(f"upstream connection failed: {exc}") from exc
        if resp.status >= 300:
            try:
                err_body = await resp.read()
            except ProtocolError:
                err_body = b""
            raise UpstreamStatusError(resp.status, err_body, retry_after=_str(resp.header(b"retry-after")))
        return resp

    async def call(self, path: str, body: bytes, opts: CallOptions) -> UpstreamReply:
        try:
            async with asyncio.timeout(opts.timeout_s):
                resp = await self._send(b"POST", path, body, opts, stream=False)
                data = await resp.read()
        except TimeoutError as exc:
            raise UpstreamTimeoutError(f"upstream did not answer within {opts.timeout_s:g}s") from exc
        except ProtocolError as exc:
            raise UpstreamError(f"upstream connection failed: {exc}") from exc
        return UpstreamReply(resp.status, resp.header(b"content-type") or _JSON, data)

    async def open_stream(self, path: str, body: bytes, opts: CallOptions) -> "HTTPStream":
        try:
            async with asyncio.timeout(opts.timeout_s):
                resp = await self._send(b"POST", path, body, opts, stream=True)
        except TimeoutError as exc:
            raise UpstreamTimeoutError(f"upstream did not answer within {opts.timeout_s:g}s") from exc
        return HTTPStream(resp, opts.timeout_s)

    async def aclose(self) -> None:  # the pool is closed by its owner
        return None


class HTTPStream:
    """A 2xx streaming response; each chunk must arrive within the idle timeout."""

    def __init__(self, resp: Response, idle_timeout_s: float) -> None:
        self._resp = resp
        self._idle = idle_timeout_s
        self.status = resp.status
        self.content_type = resp.header(b"content-type") or b"text/event-stream"

    async def chunks(self) -> AsyncIterator[bytes]:
        conn_iter = self._resp.iter()
        loop = asyncio.get_running_loop()
        idle = self._idle
        # One timeout context for the whole stream, pushed forward after each chunk: entering a
        # fresh one per SSE event costs more than relaying the event.
        try:
            async with asyncio.timeout(idle) as deadline:
                async for chunk in conn_iter:
                    deadline.reschedule(None)  # the consumer's time (a slow client) is not upstream idle time
                    yield chunk
                    deadline.reschedule(loop.time() + idle)
        except TimeoutError as exc:
            raise UpstreamTimeoutError(f"upstream stream stalled for {idle:g}s") from exc
        except ProtocolError as exc:
            raise UpstreamError(f"upstream stream broke: {exc}") from exc
        finally:
            await conn_iter.aclose()

    def close(self) -> None:
        self._resp.close()


def _str(v: bytes | None) -> str | None:
    return v.decode("latin-1") if v is not None else None
