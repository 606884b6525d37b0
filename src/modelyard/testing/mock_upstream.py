"""A fast, controllable mock OpenAI-compatible upstream server.

Raw asyncio ``Protocol`` + ``httptools`` (no framework): HTTP/1.1 keep-alive,
``Content-Length`` JSON responses and ``Transfer-Encoding: chunked`` SSE
streams. Used by the integration tests (as a real upstream process, with
failing / slow / connection-dropping variants), by ``modelyard serve --demo``
and by the gateway benchmark (the plain ``ok`` path stays synchronous: no task,
no timer, one ``transport.write`` per response).

Program::

    python -m modelyard.testing.mock_upstream --host 127.0.0.1 --port 0 \
        [--behavior SPEC] [--api-key KEY] [--models a,b]

prints exactly one line ``MOCK_LISTENING http://<host>:<port>`` once listening
and serves until SIGTERM/SIGINT (exit status 0).

In-process: ``server = await start_mock(...)``; ``server.url`` is
``http://<host>:<port>/v1``; ``server.state`` is the :class:`MockState`;
``await server.close()``.

Behaviour SPEC (request header ``x-mock-behavior`` wins over the server
default set by ``--behavior`` or ``POST /mock/control``); parts may be joined
with ``,`` (e.g. ``slow:200,error:503``), at most one of the actions:

``ok``  ``error:<status>`` (429 adds ``Retry-After: 1``)  ``hang``  ``drop``
``flaky:<k>`` (every k-th request under this behaviour answers 500),
and the modifiers ``slow:<ms>`` (delay before anything is sent),
``stream-slow:<ms>`` (delay between SSE events), ``stream-drop:<n>`` (send n
SSE events then close the connection without the terminating chunk/[DONE]).

Behaviours, auth (``--api-key``) and the counters apply to every path except
``/mock/*`` (control endpoints are never counted, never fail); ``/health`` is
exempt from auth only.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import http
import signal
import sys
import time
import types
from typing import Any

import httptools
import orjson

from modelyard.testing import mock_responses as R
from modelyard.testing.mock_responses import Behavior, parse_behavior

__all__ = ["Behavior", "MockServer", "MockState", "parse_behavior", "start_mock", "main"]

# Immutable, pre-encoded protocol constants.
_STATUS_LINES = types.MappingProxyType(
    {s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode()) for s in http.HTTPStatus}
)
_JSON_200 = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n%s\r\n%s"
_JSON_ANY = b"%scontent-type: application/json\r\ncontent-length: %d\r\n%s\r\n%s"
_SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
    b"transfer-encoding: chunked\r\n%s\r\n"
)
_CONN_CLOSE = b"connection: close\r\n"
_CONN_KEEP = b"connection: keep-alive\r\n"
_DONE_EVENT = b"e\r\ndata: [DONE]\n\n\r\n"  # len(b"data: [DONE]\n\n") == 14 == 0xe
_LAST_CHUNK = b"0\r\n\r\n"
_HEALTH = orjson.dumps({"status": "ok"})


# ---------------------------------------------------------------------- state
class MockState:
    """All mutable state of one mock server: behaviour, counters, last request."""

    def __init__(self, behavior: str = "ok", api_key: str | None = None,
                 models: tuple[str, ...] | list[str] = R.DEFAULT_MODELS) -> None:
        self.behavior = parse_behavior(behavior)
        self.api_key = api_key
        self.auth_header = ("Bearer " + api_key).encode() if api_key else None
        self.models = tuple(models)
        self.seq = 0  # response ids; never reset
        self.in_flight = 0  # a gauge: not touched by reset()
        self._spec_cache: dict[bytes, Behavior] = {}
        self.reset()

    def reset(self) -> None:
        self.requests = 0
        self.by_path: dict[str, int] = {}
        self.disconnects = 0
        self.completed = 0
        self.dropped = 0
        self.flaky_count = 0
        self.last_request: tuple[str, list, bytes] | None = None

    def set_behavior(self, spec: str) -> Behavior:
        self.behavior = parse_behavior(spec)
        return self.behavior

    def resolve(self, header: bytes | None) -> Behavior:
        """Behaviour for a request (header value or the server default)."""
        if header is None:
            return self.behavior
        b = self._spec_cache.get(header)
        if b is None:
            b = parse_behavior(header.decode("latin-1"))  # ValueError -> 400
            if len(self._spec_cache) >= 256:
                self._spec_cache.clear()
            self._spec_cache[header] = b
        return b

    def next_id(self) -> int:
        self.seq += 1
        return self.seq

    def stats(self) -> dict:
        last = None
        if self.last_request is not None:
            path, raw_headers, body = self.last_request
            headers: dict[str, str] = {}
            for k, v in raw_headers:
                key = k.decode("latin-1").lower()
                val = v.decode("latin-1")
                headers[key] = headers[key] + ", " + val if key in headers else val
            parsed: Any = None
            if body:
                try:
                    parsed = orjson.loads(body)
                except orjson.JSONDecodeError:
                    parsed = body.decode("utf-8", "replace")
            last = {"path": path, "headers": headers, "body": parsed}
        return {
            "requests": self.requests,
            "by_path": dict(self.by_path),
            "in_flight": self.in_flight,
            "disconnects": self.disconnects,
            "completed": self.completed,
            "dropped": self.dropped,
            "behavior": self.behavior.spec,
            "last_request": last,
            "cpu_s": time.process_time(),
        }


# ------------------------------------------------------------------- protocol
class _Conn(asyncio.Protocol):
    """One HTTP/1.1 connection. The ``ok`` path is fully synchronous."""

    __slots__ = (
        "server", "state", "transport", "parser", "closed", "busy", "active", "keep",
        "conn_hdr", "task", "queue", "_url", "_headers", "_body", "_bhdr", "_auth",
    )

    def __init__(self, server: MockServer) -> None:
        self.server = server
        self.state = server.state
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.closed = False
        self.busy = False  # an async request owns the connection
        self.active = False  # a counted request is in flight
        self.keep = True
        self.conn_hdr = b""
        self.task: asyncio.Task | None = None
        self.queue: collections.deque = collections.deque()
        self._url = b""
        self._headers: list = []
        self._body: list = []
        self._bhdr: bytes | None = None
        self._auth: bytes | None = None

    # -- asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server.conns.add(self)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail_protocol()
        except httptools.HttpParserError:
            self._fail_protocol()

    def eof_received(self) -> bool:
        return False  # client half-closed: close our side too

    def connection_lost(self, exc: BaseException | None) -> None:
        self.closed = True
        self.server.conns.discard(self)
        if self.active:
            self.active = False
            st = self.state
            st.in_flight -= 1
            if not self.server.closing:
                st.disconnects += 1
        if self.task is not None:
            self.task.cancel()
            self.task = None
        self.queue.clear()

    # -- httptools callbacks
    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._body = []
        self._bhdr = None
        self._auth = None

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))
        n = name.lower()
        if n == b"authorization":
            self._auth = value
        elif n == b"x-mock-behavior":
            self._bhdr = value.strip()

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        p = self.parser
        keep = p.should_keep_alive()
        hdr = b"" if keep else _CONN_CLOSE
        if keep and p.get_http_version() == "1.0":
            hdr = _CONN_KEEP
        body = self._body
        req = (p.get_method(), self._url, self._headers,
               body[0] if len(body) == 1 else b"".join(body), keep, hdr, self._bhdr, self._auth)
        if self.busy or self.closed:
            self.queue.append(req)
        else:
            self._handle(*req)

    # -- request handling
    def _handle(self, method: bytes, url: bytes, headers: list, body: bytes, keep: bool,
                conn_hdr: bytes, bhdr: bytes | None, auth: bytes | None) -> None:
        self.keep = keep
        self.conn_hdr = conn_hdr
        q = url.find(b"?")
        path = url[:q] if q >= 0 else url
        if path.startswith(b"/mock/"):
            self._control(method, path, body)
            return
        st = self.state
        path_s = path.decode("latin-1")
        st.requests += 1
        st.by_path[path_s] = st.by_path.get(path_s, 0) + 1
        st.in_flight += 1
        st.last_request = (path_s, headers, body)
        self.active = True
        if st.auth_header is not None and auth != st.auth_header and path != b"/health":
            self._send_json(401, orjson.dumps(R.error_body(401, "Incorrect API key provided")))
            return
        try:
            beh = st.resolve(bhdr)
        except ValueError as e:
            self._send_json(400, orjson.dumps(R.error_body(400, "mock: " + str(e))))
            return
        if beh.is_async:
            self.busy = True
            self.task = asyncio.get_running_loop().create_task(self._run_async(beh, method, path, body))
            return
        resp = self._compute(beh, method, path, body)
        if resp is None:
            return
        if resp[0] == 0:
            self._send_json(resp[1], resp[2], resp[3])
        elif beh.stream_delay > 0 or beh.stream_drop is not None:
            self.busy = True
            self.task = asyncio.get_running_loop().create_task(self._stream_async(beh, resp[1]))
        else:
            self._stream_sync(resp[1])

    def _compute(self, beh: Behavior, method: bytes, path: bytes, body: bytes) -> tuple | None:
        """Apply the behaviour's action and route. Returns ``(0, status, bytes,
        extra_headers)`` for JSON, ``(1, events)`` for SSE or ``None`` (dropped)."""
        action = beh.action
        if action == "drop":
            self._drop()
            return None
        if action == "error":
            return _error(beh.status)
        if action == "flaky":
            st = self.state
            st.flaky_count += 1
            if st.flaky_count % beh.flaky == 0:
                return _error(500)
        try:
            return self._route(method, path, body)
        except R.RequestError as e:
            return (0, 400, orjson.dumps(R.error_body(400, str(e), e.param)), b"")
        except Exception as e:  # never kill the connection on a mock bug
            return (0, 500, orjson.dumps(R.error_body(500, "mock internal error: %r" % e)), b"")

    def _route(self, method: bytes, path: bytes, raw: bytes) -> tuple:
        if path == b"/v1/chat/completions" or path == b"/v1/completions":
            if method != b"POST":
                return _error(405, "method not allowed")
            chat = path == b"/v1/chat/completions"
            body = _loads(raw)
            plan = R.ChatPlan(body, chat)
            st = self.state
            created = int(time.time())
            rid = ("chatcmpl-mock%d" if chat else "cmpl-mock%d") % st.next_id()
            if body.get("stream") is True:
                events = [b"%x\r\ndata: %s\n\n\r\n" % (len(d) + 8, d)
                          for d in R.stream_payloads(plan, rid, created)]
                events.append(_DONE_EVENT)
                return (1, events)
            build = R.chat_completion if chat else R.text_completion
            return (0, 200, orjson.dumps(build(plan, rid, created)), b"")
        if path == b"/v1/responses":  # an upstream that speaks the Responses API natively
            if method != b"POST":
                return _error(405, "method not allowed")
            body = _loads(raw)
            rid = "resp_mock%d" % self.state.next_id()
            if isinstance(body, dict) and body.get("stream") is True:
                events = [b"%x\r\n%s\r\n" % (len(d), d) for d in R.native_stream(body, rid, int(time.time()))]
                return (1, events)
            return (0, 200, orjson.dumps(R.native_response(body, rid, int(time.time()))), b"")
        if path == b"/v1/embeddings":
            if method != b"POST":
                return _error(405, "method not allowed")
            return (0, 200, orjson.dumps(R.embeddings(_loads(raw))), b"")
        if path == b"/v1/models":
            if method != b"GET":
                return _error(405, "method not allowed")
            return (0, 200, orjson.dumps(R.models_list(self.state.models)), b"")
        if path.startswith(b"/v1/models/") and method == b"GET":
            mid = path[11:].decode("utf-8", "replace")
            if mid in self.state.models:
                return (0, 200, orjson.dumps(R.model_object(mid)), b"")
            return _error(404, "The model %r does not exist" % mid)
        if path == b"/health":
            return (0, 200, _HEALTH, b"")
        return _error(404, "unknown path %s" % path.decode("latin-1"))

    def _control(self, method: bytes, path: bytes, raw: bytes) -> None:
        st = self.state
        if path == b"/mock/stats" and method == b"GET":
            self._write_json(200, orjson.dumps(st.stats()))
        elif path == b"/mock/reset" and method == b"POST":
            st.reset()
            self._write_json(200, b'{"status":"ok"}')
        elif path == b"/mock/control" and method in (b"POST", b"GET"):
            if method == b"POST":
                try:
                    data = orjson.loads(raw)
                    st.set_behavior(data["behavior"])
                except (orjson.JSONDecodeError, TypeError, KeyError, ValueError) as e:
                    self._write_json(400, orjson.dumps(R.error_body(400, "mock: bad control body: %s" % e)))
                    return
            self._write_json(200, orjson.dumps({"behavior": st.behavior.spec}))
        else:
            self._write_json(404, orjson.dumps(R.error_body(404, "unknown mock endpoint")))

    # -- async paths (slow / hang / stream-slow / stream-drop)
    async def _run_async(self, beh: Behavior, method: bytes, path: bytes, body: bytes) -> None:
        if beh.action == "hang":
            await asyncio.Event().wait()  # until the client goes away (cancelled)
            return
        await asyncio.sleep(beh.delay)
        if self.closed:
            return
        resp = self._compute(beh, method, path, body)
        if resp is None:
            return
        if resp[0] == 0:
            self._send_json(resp[1], resp[2], resp[3])
        elif beh.stream_delay > 0 or beh.stream_drop is not None:
            await self._stream_async(beh, resp[1])
            return
        else:
            self._stream_sync(resp[1])
        self._async_done()

    async def _stream_async(self, beh: Behavior, events: list[bytes]) -> None:
        t = self.transport
        drop = beh.stream_drop
        if drop is not None:
            events = events[: min(drop, len(events) - 1)]  # never the [DONE]
        t.write(_SSE_HEAD % self.conn_hdr)
        delay = beh.stream_delay
        for i, ev in enumerate(events):
            if i and delay > 0:
                await asyncio.sleep(delay)
            if self.closed:
                return
            t.write(ev)
        if drop is not None:
            if delay > 0:
                await asyncio.sleep(delay)
            if not self.closed:
                self._drop()
            return
        if self.closed:
            return
        t.write(_LAST_CHUNK)
        if not self.keep:
            t.close()
        self._finish()
        self._async_done()

    def _async_done(self) -> None:
        self.task = None
        self.busy = False
        while self.queue and not self.busy and not self.closed:
            self._handle(*self.queue.popleft())

    # -- writers
    def _send_json(self, status: int, payload: bytes, extra: bytes = b"") -> None:
        self._write_json(status, payload, extra)
        self._finish()

    def _write_json(self, status: int, payload: bytes, extra: bytes = b"") -> None:
        if status == 200 and not extra:
            self.transport.write(_JSON_200 % (len(payload), self.conn_hdr, payload))
        else:
            line = _STATUS_LINES.get(status) or b"HTTP/1.1 %d Mock Status\r\n" % status
            self.transport.write(_JSON_ANY % (line, len(payload),
                                              extra + self.conn_hdr, payload))
        if not self.keep:
            self.transport.close()

    def _stream_sync(self, events: list[bytes]) -> None:
        write = self.transport.write
        write(_SSE_HEAD % self.conn_hdr)
        for ev in events:  # one write (one chunk) per event
            write(ev)
        write(_LAST_CHUNK)
        if not self.keep:
            self.transport.close()
        self._finish()

    def _finish(self) -> None:
        if self.active:
            self.active = False
            st = self.state
            st.in_flight -= 1
            st.completed += 1

    def _drop(self) -> None:
        if self.active:
            self.active = False
            st = self.state
            st.in_flight -= 1
            st.dropped += 1
        self.closed = True
        self.transport.close()

    def _fail_protocol(self) -> None:
        if not self.closed and not self.transport.is_closing():
            body = orjson.dumps(R.error_body(400, "malformed HTTP request"))
            self.transport.write(_JSON_ANY % (_STATUS_LINES[400], len(body), _CONN_CLOSE, body))
        self._drop()


def _error(status: int, message: str | None = None) -> tuple:
    extra = b"retry-after: 1\r\n" if status == 429 else b""
    return (0, status, orjson.dumps(R.error_body(status, message)), extra)


def _loads(raw: bytes) -> Any:
    if not raw:
        raise R.RequestError("request body is empty; expected JSON")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise R.RequestError("malformed JSON body: %s" % e) from None


# --------------------------------------------------------------------- server
class MockServer:
    """A running mock server (see :func:`start_mock`)."""

    def __init__(self, state: MockState, host: str) -> None:
        self.state = state
        self.host = host
        self.port = 0
        self.conns: set[_Conn] = set()
        self.closing = False
        self._server: asyncio.base_events.Server | None = None

    @property
    def root_url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        if host == "::":
            host = "::1"
        if ":" in host:
            host = "[%s]" % host
        return "http://%s:%d" % (host, self.port)

    @property
    def url(self) -> str:
        return self.root_url + "/v1"

    async def _start(self, port: int) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Conn(self), self.host, port, reuse_address=True, backlog=2048
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self.closing:
            return
        self.closing = True
        assert self._server is not None
        self._server.close()
        for conn in list(self.conns):
            if conn.transport is not None:
                conn.transport.abort()
        try:
            await asyncio.wait_for(self._server.wait_closed(), 5)
        except asyncio.TimeoutError:
            pass

    async def __aenter__(self) -> MockServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def start_mock(host: str = "127.0.0.1", port: int = 0, behavior: str = "ok",
                     api_key: str | None = None,
                     models: tuple[str, ...] | list[str] = R.DEFAULT_MODELS) -> MockServer:
    """Start a mock upstream on the running loop and return it once listening."""
    server = MockServer(MockState(behavior, api_key, models), host)
    await server._start(port)
    return server


# -------------------------------------------------------------------- program
async def _serve(args: argparse.Namespace) -> None:
    models = [m for m in args.models.split(",") if m] or list(R.DEFAULT_MODELS)
    server = await start_mock(args.host, args.port, args.behavior, args.api_key, models)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    sys.stdout.write("MOCK_LISTENING %s\n" % server.root_url)
    sys.stdout.flush()
    await stop.wait()
    await server.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m modelyard.testing.mock_upstream",
                                 description="Mock OpenAI-compatible upstream server.")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--behavior", default="ok", help="default behaviour SPEC (see module doc)")
    ap.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY'")
    ap.add_argument("--models", default=",".join(R.DEFAULT_MODELS),
                    help="comma-separated ids listed by GET /v1/models")
    args = ap.parse_args(argv)
    try:
        parse_behavior(args.behavior)
    except ValueError as e:
        ap.error(str(e))
    try:
        import uvloop
    except ImportError:
        uvloop = None
    if uvloop is not None:
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.run(_serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
