"""A small, fast HTTP/1.1 client with keep-alive pooling, built on asyncio protocols + httptools.

Why not httpx or aiohttp: the gateway's budget is well under a millisecond per request on a 2-core
machine, and both spend far more CPU per request than the proxying itself needs (measured in
``bench/http_clients.py``; figures in ``docs/design/http-stack.md``). This client does only what an
OpenAI-compatible upstream needs: one request at a time per connection, ``Content-Length`` request
bodies, ``Content-Length`` / chunked / read-until-close responses, TLS via ``ssl``, and read
back-pressure for streams.

Cancellation is the contract that matters most: a caller cancelled mid-request (client disconnect,
timeout) aborts the connection, so the upstream sees the disconnect and stops generating; a
connection is returned to the pool only after its response was read to the end.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httptools

_HIGH_WATER = 1 << 20  # pause reading an upstream when this much body is buffered


class HTTPClientError(Exception):
    """Base of this module's errors (translated to modelyard errors by the backend)."""


class ConnectError(HTTPClientError):
    """Could not open a connection (refused, unreachable, TLS failure)."""


class ProtocolError(HTTPClientError):
    """The connection broke or the peer spoke invalid HTTP after the request was sent."""


@dataclass(frozen=True)
class Origin:
    scheme: str
    host: str
    port: int
    base_path: str  # e.g. "/v1" (no trailing slash)

    @classmethod
    def from_url(cls, url: str) -> "Origin":
        parts = urlsplit(url)
        scheme = parts.scheme or "http"
        port = parts.port or (443 if scheme == "https" else 80)
        return cls(scheme, parts.hostname or "127.0.0.1", port, parts.path.rstrip("/"))

    @property
    def host_header(self) -> bytes:
        default = 443 if self.scheme == "https" else 80
        host = self.host if ":" not in self.host else f"[{self.host}]"
        return (host if self.port == default else f"{host}:{self.port}").encode()


class _Connection(asyncio.Protocol):
    """One TCP connection; parses one response at a time."""

    __slots__ = (
        "transport", "_parser", "status", "headers", "_head", "_chunks", "_buffered", "_waiter",
        "done", "closed", "error", "keep_alive", "_paused", "reused",
    )

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._parser: httptools.HttpResponseParser | None = None
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self._head: asyncio.Future[None] | None = None
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._waiter: asyncio.Future[None] | None = None
        self.done = False
        self.closed = False
        self.error: BaseException | None = None
        self.keep_alive = True
        self._paused = False
        self.reused = False

    # --- asyncio.Protocol ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self._parser is None:  # bytes with no request outstanding: the peer is confused
            self._fail(ProtocolError("unexpected data from upstream"))
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ProtocolError(f"invalid HTTP from upstream: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._parser is not None and not self.done:
            # A read-until-close body ends here legitimately; anything else is a broken response.
            if self._head is not None and self._head.done() and not self._has_framing():
                self.done = True
                self._wake()
            else:
                self._fail(ProtocolError("upstream closed the connection before the response ended"))

    def pause_writing(self) -> None:  # request bodies are small; nothing to do
        pass

    def resume_writing(self) -> None:
        pass

    # --- httptools callbacks -----------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        assert self._parser is not None
        self.status = self._parser.get_status_code()
        self.keep_alive = self._parser.should_keep_alive()
        if self._head is not None and not self._head.done():
            self._head.set_result(None)

    def on_body(self, body: bytes) -> None:
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > _HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        self.done = True
        self._wake()

    # --- helpers ---------------------------------------------------------------------------------
    def _has_framing(self) -> bool:
        for name, _ in self.headers:
            if name in (b"content-length", b"transfer-encoding"):
                return True
        return self.status in (204, 304) or 100 <= self.status < 200

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    def _fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
        if self._head is not None and not self._head.done():
            self._head.set_exception(exc)
        self._wake()
        if self.transport is not None:
            self.transport.abort()

    def start(self, loop: asyncio.AbstractEventLoop, payload: bytes) -> asyncio.Future[None]:
        self._parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.headers = []
        self.done = False
        self.error = None
        self._head = loop.create_future()
        assert self.transport is not None
        self.transport.write(payload)
        return self._head

    async def next_chunk(self) -> bytes | None:
        """The next body chunk, or None at the end of the body."""
        while True:
            if self._chunks:
                # Hand over everything that has already arrived at once: one read from the
                # upstream often carries several chunked pieces (SSE events), and each piece
                # handed over separately costs a client write downstream. Nothing waits for it.
                chunks = self._chunks
                chunk = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
                chunks.clear()
                self._buffered = 0
                if self._paused and self._buffered < _HIGH_WATER // 2 and self.transport is not None:
                    self._paused = False
                    self.transport.resume_reading()
                return chunk
            if self.error is not None:
                raise self.error
            if self.done:
                return None
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    def reset_idle(self) -> None:
        self._parser = None
        self._head = None


@dataclass
class Response:
    """An upstream response whose head has arrived; the body is read with ``read`` or ``iter``.

    Always finish with ``read()``, exhaust ``iter()``, or call ``close()``; the pool gets the
    connection back only when the body was read to its end.
    """

    status: int
    headers: list[tuple[bytes, bytes]]
    _conn: _Connection
    _pool: "HTTPPool"
    _origin: Origin
    _released: bool = field(default=False)

    def header(self, name: bytes) -> bytes | None:
        for k, v in self.headers:
            if k == name:
                return v
        return None

    async def read(self) -> bytes:
        parts: list[bytes] = []
        try:
            while (chunk := await self._conn.next_chunk()) is not None:
                parts.append(chunk)
        except BaseException:
            self.close()
            raise
        self._finish()
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def iter(self) -> AsyncIterator[bytes]:
        try:
            while (chunk := await self._conn.next_chunk()) is not None:
                yield chunk
        except BaseException:
            self.close()
            raise
        self._finish()

    def _finish(self) -> None:
        if not self._released:
            self._released = True
            self._pool._release(self._origin, self._conn)

    def close(self) -> None:
        """Abandon the response: abort the connection (the upstream sees the disconnect)."""
        if not self._released:
            self._released = True
            if self._conn.transport is not None:
                self._conn.transport.abort()


class HTTPPool:
    """Keep-alive connections per origin. One owner (the app's lifespan); no global state."""

    def __init__(self, *, max_idle_per_origin: int = 512, connect_timeout_s: float = 10.0) -> None:
        self._idle: dict[Origin, deque[_Connection]] = {}
        self._max_idle = max_idle_per_origin
        self._connect_timeout = connect_timeout_s
        self._ssl: ssl.SSLContext | None = None
        self._closed = False

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = ssl.create_default_context()
        return self._ssl

    async def _connect(self, origin: Origin) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, conn = await loop.create_connection(
                    _Connection,
                    origin.host,
                    origin.port,
                    ssl=self._ssl_context() if origin.scheme == "https" else None,
                )
        except TimeoutError as exc:
            raise ConnectError(f"connect to {origin.host}:{origin.port} timed out") from exc
        except (OSError, ssl.SSLError) as exc:
            raise ConnectError(f"cannot connect to {origin.host}:{origin.port}: {exc.strerror or exc}") from exc
        return conn

    def _take_idle(self, origin: Origin) -> _Connection | None:
        idle = self._idle.get(origin)
        while idle:
            conn = idle.pop()
            if not conn.closed and conn.transport is not None and not conn.transport.is_closing():
                conn.reused = True
                return conn
        return None

    def _release(self, origin: Origin, conn: _Connection) -> None:
        if self._closed or conn.closed or not conn.keep_alive or conn.error is not None:
            if conn.transport is not None:
                conn.transport.close()
            return
        conn.reset_idle()
        idle = self._idle.setdefault(origin, deque())
        if len(idle) >= self._max_idle:
            old = idle.popleft()
            if old.transport is not None:
                old.transport.close()
        idle.append(conn)

    async def request(
        self,
        origin: Origin,
        method: bytes,
        path: bytes,
        header_block: bytes,
        body: bytes,
    ) -> Response:
        """Send one request and wait for the response head.

        ``header_block`` holds pre-encoded ``Name: value\\r\\n`` lines (without Host and
        Content-Length, which are added here). A request that fails on a reused keep-alive connection
        before any response byte arrived is retried once on a fresh connection (the peer closed
        the idle connection; the request cannot have been processed).
        """
        payload = b"".join(
            (
                method, b" ", path, b" HTTP/1.1\r\nHost: ", origin.host_header,
                b"\r\nContent-Length: ", str(len(body)).encode(), b"\r\n", header_block, b"\r\n", body,
            )
        )
        loop = asyncio.get_running_loop()
        for attempt in (0, 1):
            conn = self._take_idle(origin) or await self._connect(origin)
            head = conn.start(loop, payload)
            try:
                await head
            except ProtocolError:
                if conn.reused and attempt == 0 and not conn.headers and conn.status == 0:
                    continue
                raise
            except BaseException:
                if conn.transport is not None:
                    conn.transport.abort()
                raise
            return Response(conn.status, conn.headers, conn, self, origin)
        raise ProtocolError("unreachable")  # pragma: no cover

    async def aclose(self) -> None:
        self._closed = True
        for idle in self._idle.values():
            for conn in idle:
                if conn.transport is not None:
                    conn.transport.close()
        self._idle.clear()
