"""Unit tests of the HTTP/1.1 client (modelyard.backends.httpclient) against tiny raw asyncio
servers written here. Deadlines (``asyncio.timeout``) only bound a hang; nothing asserts timing."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable

import pytest

from modelyard.backends.httpclient import ConnectError, HTTPPool, Origin, ProtocolError

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, "Server"], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, dict[bytes, bytes], bytes] | None:
    """One request (line, headers, body), or None at EOF."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    line, *rest = head[:-4].split(b"\r\n")
    headers = {}
    for h in rest:
        k, _, v = h.partition(b":")
        headers[k.strip().lower()] = v.strip()
    body = await reader.readexactly(int(headers.get(b"content-length", b"0")))
    return line, headers, body


async def wait_eof(reader: asyncio.StreamReader) -> None:
    try:
        while await reader.read(65536):
            pass
    except ConnectionError:
        pass


def ok(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n" + extra + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body


class Server:
    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.accepts = 0
        self.requests: list[tuple[bytes, dict[bytes, bytes], bytes]] = []
        self.got_request = asyncio.Event()
        self.saw_eof = asyncio.Event()
        self.tasks: list[asyncio.Task] = []

    async def __aenter__(self) -> "Server":
        self.srv = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.srv.sockets[0].getsockname()[1]
        self.origin = Origin.from_url(f"http://127.0.0.1:{self.port}/v1")
        self.pool = HTTPPool()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.pool.aclose()
        self.srv.close()
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepts += 1
        self.tasks.append(asyncio.current_task())  # type: ignore[arg-type]
        try:
            await self.handler(reader, writer, self)
        finally:
            writer.close()

    async def next(self, reader: asyncio.StreamReader) -> bool:
        req = await read_request(reader)
        if req is None:
            return False
        self.requests.append(req)
        self.got_request.set()
        return True

    def request(self, body: bytes = b'{"x":1}', path: bytes = b"/v1/chat/completions"):  # noqa: ANN201
        return self.pool.request(self.origin, b"POST", path, b"Content-Type: application/json\r\n", body)


async def keep_alive_handler(reader, writer, srv: Server) -> None:  # noqa: ANN001
    while await srv.next(reader):
        writer.write(ok(b"reply to " + srv.requests[-1][2]))
        await writer.drain()


async def test_content_length_body_and_request_shape() -> None:
    async with Server(keep_alive_handler) as s:
        resp = await s.request(b'{"hello":"world"}')
        assert resp.status == 200
        assert resp.header(b"content-type") == b"text/plain"
        assert await resp.read() == b'reply to {"hello":"world"}'
        line, headers, body = s.requests[0]
        assert line == b"POST /v1/chat/completions HTTP/1.1"
        assert headers[b"host"] == f"127.0.0.1:{s.port}".encode()
        assert headers[b"content-length"] == b"17"
        assert headers[b"content-type"] == b"application/json"
        assert body == b'{"hello":"world"}'


async def test_chunked_body() -> None:
    async def handler(reader, writer, srv: Server) -> None:  # noqa: ANN001
        while await srv.next(reader):
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for part in (b"5\r\nhello\r\n", b"6\r\n wo", b"rld\r\n", b"0\r\n\r\n"):
                writer.write(part)
                await writer.drain()

    async with Server(handler) as s:
        resp = await s.request()
        assert await resp.read() == b"hello world"
        resp2 = await s.request()  # chunked framing is reusable
        chunks = [c async for c in resp2.iter()]
        assert b"".join(chunks) == b"hello world"
        assert s.accepts == 1


@pytest.mark.parametrize("version", [b"HTTP/1.1", b"HTTP/1.0"])
async def test_read_until_close_body(version: bytes) -> None:
    async def handler(reader, writer, srv: Server) -> None:  # noqa: ANN001
        if await srv.next(reader):
            writer.write(version + b" 200 OK\r\nContent-Type: text/plain\r\n\r\nfirst part, ")
            await writer.drain()
            writer.write(b"second part")
            await writer.drain()
            writer.close()

    async with Server(handler) as s:
        resp = await s.request()
        assert resp.status == 200
        assert await resp.read() == b"first part, second part"
        resp = await s.request()  # that connection cannot be reused
        assert await resp.read() == b"first part, second part"
        assert s.accepts == 2


async def test_keep_alive_reuses_one_connection() -> None:
    async with Server(keep_alive_handler) as s:
        for i in range(3):
            resp = await s.request(str(i).encode())
            assert await resp.read() == b"reply to " + str(i).encode()
        assert s.accepts == 1


async def test_connection_close_response_is_not_pooled() -> None:
    async def handler(reader, writer, srv: Server) -> None:  # noqa: ANN001
        if await srv.next(reader):
            writer.write(ok(b"bye", b"Connection: close\r\n"))
            await writer.drain()
            await wait_eof(reader)

    async with Server(handler) as s:
        assert await (await s.request()).read() == b"bye"
        assert await (await s.request()).read() == b"bye"
        assert s.accepts == 2


async def test_server_closed_idle_connection_next_request_succeeds() -> None:
    closed = asyncio.Event()

    async def handler(reader, writer, srv: Server) -> None:  # noqa: ANN001
        if await srv.next(reader):
            writer.write(ok(b"one"))
            await writer.drain()
            writer.close()  # close the idle keep-alive connection after one response
            closed.set()
            return
        # never reached

    async with Server(handler) as s:
        assert await (await s.request()).read() == b"one"
        async with asyncio.timeout(5):
            await closed.wait()
        assert await (await s.request()).read() == b"one"
        assert s.accepts == 2


async def test_stale_connection_closed_after_the_request_was_sent_is_retried_fresh() -> None:
    """The race the pool retries for: the peer closes a pooled connection just as a request goes
    out on it (it reads the request and closes without a byte of response)."""

    async def handler(reader, writer, srv: Server) -> None:  # noqa: ANN001
        conn_no = srv.accepts
        while await srv.next(reader):
            if conn_no == 1 and len(srv.requests) == 2:
                return  # the second request on the first connection: hang up unanswered
            writer.write(ok(b"served on connection %d" % conn_no))
            await writer.drain()

    async with Server(handler) as s:
        assert await (await s.request()).read() == b"served on connection 1"
        assert await (await s.request()).read() == b"served on connection 2"
        assert s.accepts == 2
        assert len(s.requests) == 3


async def test_fresh_connection_closed_without_answer_is_a_protocol_error() -> None:
    async def handler(reader, writer, srv: Server) -> None:  # noqa: ANN001
        await srv.next(reader)  # read, then hang up unanswered

    async with Server(handler) as s:
        with pytest.raises(ProtocolError):
            await s.request()
        assert s.accepts == 1  # not retried: a fresh connection is not stale


async def test_connection_refused_is_connect_error() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    pool = HTTPPool()
    try:
        with pytest.raises(ConnectError):
            await pool.request(Origin.from_url(f"http://127.0.0.1:{port}"), b"GET", b"/", b"", b"")
    finally:
        await pool.aclose()


async def test_cancel_while_waiting_for_the_head_aborts_the_connection() -> None:
    async def handler(reader, writer, srv: Server) -> None:  # noqa: ANN001
        if await srv.next(reader):
            await wait_eof(reader)  # never answer; notice the client going away
            srv.saw_eof.set()

    async with Server(handler) as s:
        task = asyncio.create_task(s.request())
        async with asyncio.timeout(5):
            await s.got_request.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        async with asyncio.timeout(5):
            await s.saw_eof.wait()
        assert not s.pool._idle.get(s.origin)  # noqa: SLF001


async def test_partly_read_response_closed_is_not_pooled() -> None:
    async def handler(reader, writer, srv: Server) -> None:  # noqa: ANN001
        while await srv.next(reader):
            if len(srv.requests) == 1:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10)
                await writer.drain()
                await wait_eof(reader)
                srv.saw_eof.set()
                return
            writer.write(ok(b"fine"))
            await writer.drain()

    async with Server(handler) as s:
        resp = await s.request()
        body = resp.iter()
        assert await anext(body) == b"x" * 10
        resp.close()
        await body.aclose()
        assert not s.pool._idle.get(s.origin)  # noqa: SLF001
        async with asyncio.timeout(5):
            await s.saw_eof.wait()  # the upstream saw the abort
        assert await (await s.request()).read() == b"fine"
        assert s.accepts == 2


async def test_body_cut_short_is_a_protocol_error() -> None:
    async def handler(reader, writer, srv: Server) -> None:  # noqa: ANN001
        if await srv.next(reader):
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"y" * 10)
            await writer.drain()

    async with Server(handler) as s:
        resp = await s.request()
        with pytest.raises(ProtocolError):
            await resp.read()
        assert not s.pool._idle.get(s.origin)  # noqa: SLF001


async def test_error_status_is_returned_with_its_body() -> None:
    async def handler(reader, writer, srv: Server) -> None:  # noqa: ANN001
        while await srv.next(reader):
            body = b'{"error":{"message":"nope"}}'
            writer.write(b"HTTP/1.1 404 Not Found\r\nRetry-After: 3\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()

    async with Server(handler) as s:
        resp = await s.request()
        assert resp.status == 404
        assert resp.header(b"retry-after") == b"3"
        assert await resp.read() == b'{"error":{"message":"nope"}}'
        await (await s.request()).read()
        assert s.accepts == 1  # an error response read to its end still frees the connection


async def test_garbage_from_upstream_is_a_protocol_error() -> None:
    async def handler(reader, writer, srv: Server) -> None:  # noqa: ANN001
        if await srv.next(reader):
            writer.write(b"this is not http\r\n\r\n")
            await writer.drain()
            await wait_eof(reader)

    async with Server(handler) as s:
        with pytest.raises(ProtocolError):
            await s.request()


def test_origin_from_url() -> None:
    o = Origin.from_url("https://api.example.com/v1/")
    assert (o.scheme, o.host, o.port, o.base_path) == ("https", "api.example.com", 443, "/v1")
    assert o.host_header == b"api.example.com"
    o = Origin.from_url("http://localhost:8000")
    assert (o.port, o.base_path, o.host_header) == (8000, "", b"localhost:8000")
    assert Origin.from_url("http://[::1]:9000/x").host_header == b"[::1]:9000"
