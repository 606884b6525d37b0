"""A small asyncio Redis client for exactly what modelyard needs: pipelined commands over a few
connections, replies parsed by ``hiredis``.

Why not redis-py: the rate limiter runs an EVALSHA on every request and another one after it, and
redis-py's asyncio client costs ~180 µs of CPU per EVALSHA even with hiredis (connection-pool
checkout, per-command retry and event machinery, a coroutine stack several layers deep), which cut
the gateway's throughput by more than half. This client is an ``asyncio.Protocol`` that writes RESP
and matches replies to callers in order, as ``backends/httpclient.py`` does for HTTP; figures in
``docs/design/limits.md``.

The contract:

* **Pipelining.** Any number of commands may be in flight on one connection; Redis answers in
  order, so replies are matched first-in first-out with the callers' futures. Commands issued in
  the same event-loop iteration go out in one ``transport.write`` (one system call for a burst).
* **Connections.** At most ``connections`` (default 2), opened lazily: the first command opens
  one, and another is opened only while every open one has commands in flight; a command goes to
  the connection with the fewest in flight. Each connection sends AUTH and SELECT before use.
* **Failure.** A broken connection fails every command in flight on it with
  ``RespConnectionError`` and is forgotten; the next command opens a new one. Nothing is retried:
  a script may have run before its connection broke, and running it twice would charge twice.
* **Timeouts.** A command with no reply after ``timeout_s`` fails with ``RespTimeoutError``, and
  so does everything behind it on that connection, which is then closed: once a reply is skipped
  the FIFO matching cannot be trusted. One timer per connection, re-armed only when it fires, so
  a timeout costs nothing per command.
* **Cancellation.** A caller cancelled while its command is in flight leaves the command in the
  FIFO; its reply still arrives and is discarded. A caller cancelled while its connection is being
  opened has sent nothing.
* **Errors.** An error reply raises ``RespReplyError`` (``NoScriptError`` for ``NOSCRIPT``); every
  error here is a ``RespError``. Replies are RESP2, as hiredis gives them: ``bytes``, ``int``,
  ``None``, lists.

URLs: ``redis://[[user]:password@]host[:port][/db]``, ``rediss://`` (TLS through ``ssl``: it costs
nothing per command once the handshake is done; certificates are verified unless
``?ssl_cert_reqs=none``; ``ssl_ca_certs=<file>`` names a CA bundle) and
``unix://[[user]:password@]/path/to/socket[?db=N]``. Any other query parameter is an error rather
than silently ignored. Messages name the address, never the password.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import hiredis

Arg = bytes | str | int | float
_NEED_MORE = object()  # hiredis' "no complete reply yet" marker (RESP2 has no boolean replies)
_DEFAULT_PORT = 6379
_BULK = tuple(b"$%d\r\n" % n for n in range(256))  # bulk-string headers of short arguments, made once
_CERT_REQS = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}


class RespError(Exception):
    """Base of this module's errors: the caller decides what a failed command means."""


class RespConnectionError(RespError):
    """No connection could be opened (refused, unreachable, AUTH/SELECT refused), or it broke while
    the command was in flight: the command may or may not have run."""


class RespTimeoutError(RespConnectionError):
    """No reply within ``timeout_s``; the connection was closed (everything in flight on it fails)."""


class RespReplyError(RespError):
    """Redis answered with an error reply (the message is Redis's own, e.g. ``ERR ...``)."""


class NoScriptError(RespReplyError):
    """``NOSCRIPT``: EVALSHA of a script the server does not have (first use, SCRIPT FLUSH, restart)."""


# --- encoding --------------------------------------------------------------------------------------


def encode(args: Sequence[Arg]) -> bytes:
    """One command as a RESP array of bulk strings, built with one join. ``str`` is UTF-8;
    ``int`` and ``float`` are written as Redis parses numbers (``repr`` of a float round-trips).
    Exact type checks and ready-made headers first: this runs for every command (~2.5 µs for an
    acquire's 14 arguments)."""
    parts = [b"*%d\r\n" % len(args)]
    append = parts.append
    for arg in args:
        kind = type(arg)
        if kind is bytes:
            b = arg
        elif kind is str:
            b = arg.encode()
        elif kind is int:
            b = b"%d" % arg
        else:
            b = _encode_other(arg)
        n = len(b)
        append(_BULK[n] if n < 256 else b"$%d\r\n" % n)
        append(b)
        append(b"\r\n")
    return b"".join(parts)


def _encode_other(arg: object) -> bytes:
    if isinstance(arg, bool):
        raise TypeError(f"Redis arguments are bytes, str, int or float, not bool ({arg!r})")
    if isinstance(arg, bytes):
        return bytes(arg)
    if isinstance(arg, str):
        return str(arg).encode()
    if isinstance(arg, int):
        return b"%d" % arg
    if isinstance(arg, float) and arg == arg:  # NaN is no number Redis accepts
        return repr(float(arg)).encode()
    if isinstance(arg, (bytearray, memoryview)):
        return bytes(arg)
    raise TypeError(f"Redis arguments are bytes, str, int or float, not {type(arg).__name__} ({arg!r})")


class Script:
    """A Lua script run by its SHA1 (``RespClient.run_script``)."""

    __slots__ = ("source", "sha")

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest().encode()


# --- the address ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """Where and how to connect; ``where`` is for messages (no credentials)."""

    host: str = "localhost"
    port: int = _DEFAULT_PORT
    path: str | None = None  # a unix socket instead of host:port
    ssl: ssl.SSLContext | None = None
    username: str | None = None
    password: str | None = None
    db: int = 0

    @property
    def where(self) -> str:
        if self.path is not None:
            return f"unix:{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'rediss' if self.ssl else 'redis'}://{host}:{self.port}/{self.db}"

    @classmethod
    def from_url(cls, url: str) -> Target:
        """Parse a ``redis://``, ``rediss://`` or ``unix://`` URL; ``ValueError`` says what is wrong
        without repeating the URL (it may hold a password)."""
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("redis", "rediss", "unix"):
            raise ValueError(f"Redis URL: unsupported scheme {parts.scheme!r} (expected redis://, rediss:// or unix://)")
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        username = unquote(parts.username) if parts.username else None
        password = unquote(parts.password) if parts.password is not None else None
        if "password" in query:
            password = query.pop("password")
        db_text = query.pop("db", None)
        if scheme == "unix":
            if not parts.path:
                raise ValueError("Redis URL: unix:// needs a socket path (unix:///path/to/redis.sock)")
            target = {"path": parts.path}
        else:
            try:
                port = parts.port or _DEFAULT_PORT
            except ValueError:
                raise ValueError("Redis URL: the port is not a number in 1-65535") from None
            path = parts.path.strip("/")
            if path:
                db_text = path
            target = {"host": parts.hostname or "localhost", "port": port}
        try:
            db = int(db_text) if db_text not in (None, "") else 0
        except ValueError:
            raise ValueError(f"Redis URL: the database must be a number, not {db_text!r}") from None
        if db < 0:
            raise ValueError(f"Redis URL: the database must be >= 0, not {db}")
        context = None
        if scheme == "rediss":
            context = ssl.create_default_context(cafile=query.pop("ssl_ca_certs", None))
            reqs = query.pop("ssl_cert_reqs", "required").lower()
            if reqs not in _CERT_REQS:
                raise ValueError(f"Redis URL: ssl_cert_reqs must be none, optional or required, not {reqs!r}")
            if reqs != "required":
                context.check_hostname = False
                context.verify_mode = _CERT_REQS[reqs]
        if query:
            raise ValueError(f"Redis URL: unsupported parameter(s) {', '.join(sorted(query))}")
        return cls(ssl=context, username=username, password=password or None, db=db, **target)  # type: ignore[arg-type]


# --- one connection -------------------------------------------------------------------------------


class _Connection(asyncio.Protocol):
    """One connection: a FIFO of (future, deadline) for the commands in flight."""

    __slots__ = ("_client", "_loop", "transport", "_reader", "pending", "closed", "_out", "_timer", "_lost")

    def __init__(self, client: RespClient, loop: asyncio.AbstractEventLoop) -> None:
        self._client = client
        self._loop = loop
        self.transport: asyncio.Transport | None = None
        self._reader = hiredis.Reader(replyError=RespReplyError, notEnoughData=_NEED_MORE)
        self.pending: deque[tuple[asyncio.Future[Any], float]] = deque()
        self.closed = False
        self._out: list[bytes] | None = None  # commands of this loop iteration, not yet written
        self._timer: asyncio.TimerHandle | None = None
        self._lost: asyncio.Future[None] = loop.create_future()

    # --- asyncio.Protocol --------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        pending = self.pending
        while True:
            try:
                reply = reader.gets()
            except hiredis.ProtocolError as exc:
                self.fail(RespConnectionError(f"invalid reply from Redis: {exc}"))
                return
            if reply is _NEED_MORE:
                return
            if not pending:
                self.fail(RespConnectionError("a reply from Redis with no command waiting for it"))
                return
            fut = pending.popleft()[0]
            if fut.done():  # its caller was cancelled: the reply is read and dropped
                continue
            if isinstance(reply, RespReplyError):
                if reply.args and str(reply.args[0]).startswith("NOSCRIPT"):
                    reply = NoScriptError(*reply.args)
                fut.set_exception(reply)
            else:
                fut.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        detail = f": {exc}" if exc is not None else ""
        self.fail(RespConnectionError(f"connection to {self._client.target.where} lost{detail}"))
        if not self._lost.done():
            self._lost.set_result(None)

    # --- commands -------------------------------------------------------------------------------------
    def send(self, payload: bytes) -> asyncio.Future[Any]:
        """Queue one encoded command; the future gets its reply. Commands queued in the same loop
        iteration are written together."""
        loop = self._loop
        fut = loop.create_future()
        if self.closed:
            fut.set_exception(RespConnectionError(f"connection to {self._client.target.where} is closed"))
            return fut
        deadline = loop.time() + self._client.timeout_s
        self.pending.append((fut, deadline))
        if self._timer is None:
            self._timer = loop.call_at(deadline, self._check_timeout)
        out = self._out
        if out is None:
            self._out = [payload]
            loop.call_soon(self._flush)
        else:
            out.append(payload)
        return fut

    def _flush(self) -> None:
        out, self._out = self._out, None
        if out and not self.closed and self.transport is not None:
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))

    def _check_timeout(self) -> None:
        self._timer = None
        if not self.pending or self.closed:
            return
        deadline = self.pending[0][1]
        if deadline <= self._loop.time() + 1e-3:  # timers may fire up to a clock tick early
            self.fail(RespTimeoutError(f"no reply from {self._client.target.where} within {self._client.timeout_s:g}s"))
        else:
            self._timer = self._loop.call_at(deadline, self._check_timeout)

    def fail(self, exc: RespError) -> None:
        """Close the connection and fail everything in flight on it with ``exc``."""
        if not self.closed:
            self.closed = True
            self._client._forget(self)
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if self.transport is not None:
                self.transport.abort()
        pending = self.pending
        while pending:
            fut = pending.popleft()[0]
            if not fut.done():  # an instance each: callers re-raise it, each with its own traceback
                fut.set_exception(type(exc)(*exc.args))

    async def wait_closed(self, timeout_s: float) -> None:
        try:
            await asyncio.wait_for(asyncio.shield(self._lost), timeout_s)
        except TimeoutError:
            pass


# --- the client -----------------------------------------------------------------------------------


class RespClient:
    """Pipelined Redis commands over at most ``connections`` lazily opened connections.

    Safe to build outside an event loop (connections open on first use); use it from one loop.
    """

    __slots__ = ("target", "timeout_s", "_size", "_conns", "_opening", "_closed", "_tasks")

    def __init__(self, target: Target, *, timeout_s: float = 1.0, connections: int = 2) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
        if connections < 1:
            raise ValueError(f"connections must be >= 1, got {connections!r}")
        self.target = target
        self.timeout_s = timeout_s
        self._size = connections
        self._conns: list[_Connection] = []  # open, AUTH/SELECT done
        self._opening: asyncio.Task[_Connection] | None = None
        self._closed = False
        self._tasks: set[asyncio.Task[None]] = set()  # send_many waiting for a connection

    @classmethod
    def from_url(cls, url: str, *, timeout_s: float = 1.0, connections: int = 2) -> RespClient:
        return cls(Target.from_url(url), timeout_s=timeout_s, connections=connections)

    async def execute(self, *args: Arg) -> Any:
        """Run one command and return its reply; an error reply raises ``RespReplyError``."""
        conn = self._pick()
        if conn is None:
            conn = await self._first()
        return await conn.send(encode(args))

    def send_many(self, commands: Iterable[Sequence[Arg]]) -> list[asyncio.Future[Any]]:
        """Queue commands back to back on one connection, in this order, and return their futures
        without waiting: for callers that need an order (A before B) or do not wait for a reply.
        Each future gets its reply or error; await or inspect every one of them."""
        payloads = [encode(c) for c in commands]
        conn = self._pick()
        if conn is not None:
            return [conn.send(p) for p in payloads]
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[Any]] = [loop.create_future() for _ in payloads]
        task = loop.create_task(self._send_when_open(payloads, futures))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return futures

    async def execute_many(self, commands: Iterable[Sequence[Arg]]) -> list[Any]:
        """Run several commands back to back on one connection, written at once (not a MULTI:
        other clients' commands may run in between). Returns every reply in order; the first error
        reply or failure, if any, is raised once every command has its answer."""
        replies: list[Any] = []
        error: BaseException | None = None
        futures = self.send_many(commands)
        try:
            for fut in futures:
                try:
                    replies.append(await fut)
                except RespError as exc:
                    replies.append(exc)
                    error = error or exc
        finally:
            for fut in futures:  # cancelled caller: the replies still come and are dropped
                fut.cancel()
        if error is not None:
            raise error
        return replies

    async def run_script(self, script: Script, keys: Sequence[Arg], args: Sequence[Arg]) -> Any:
        """EVALSHA; on NOSCRIPT (first use, SCRIPT FLUSH, a restart) SCRIPT LOAD and EVALSHA again."""
        command = (b"EVALSHA", script.sha, len(keys), *keys, *args)
        try:
            return await self.execute(*command)
        except NoScriptError:
            await self.execute(b"SCRIPT", b"LOAD", script.source)
            return await self.execute(*command)

    async def aclose(self) -> None:
        """Close every connection; commands still in flight fail with ``RespConnectionError``."""
        self._closed = True
        if self._opening is not None:
            self._opening.cancel()
        for task in list(self._tasks):
            task.cancel()
        conns = list(self._conns)
        for conn in conns:
            conn.fail(RespConnectionError("the Redis client was closed"))
        for conn in conns:
            await conn.wait_closed(1.0)

    # --- connections ---------------------------------------------------------------------------------
    def _pick(self) -> _Connection | None:
        """The open connection with the fewest commands in flight; opens another in the background
        when all are busy and the limit allows. None when none is open."""
        best: _Connection | None = None
        for conn in self._conns:
            if not conn.pending:
                return conn
            if best is None or len(conn.pending) < len(best.pending):
                best = conn
        if best is not None and len(self._conns) < self._size and self._opening is None and not self._closed:
            self._start_open().add_done_callback(_retrieve)  # a failure shows on the next command that needs it
        return best

    async def _send_when_open(self, payloads: list[bytes], futures: list[asyncio.Future[Any]]) -> None:
        try:
            conn = await self._first()
        except RespError as exc:
            for fut in futures:
                if not fut.done():
                    fut.set_exception(type(exc)(*exc.args))
            return
        except asyncio.CancelledError:
            for fut in futures:
                if not fut.done():
                    fut.set_exception(RespConnectionError("the Redis client was closed"))
            raise
        for payload, fut in zip(payloads, futures, strict=True):
            if not fut.done():  # a caller cancelled before its command was sent: nothing to send
                conn.send(payload).add_done_callback(partial(_relay, fut))

    async def _first(self) -> _Connection:
        """Wait for a connection when none is open (one attempt at a time, shared by all waiters)."""
        if self._closed:
            raise RespConnectionError("the Redis client is closed")
        task = self._opening or self._start_open()
        try:
            return await asyncio.shield(task)
        except RespError as exc:  # a fresh exception per waiter: they share the attempt, not its traceback
            raise type(exc)(*exc.args) from exc.__cause__
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if task.cancelled() and current is not None and not current.cancelling():  # aclose, not our caller
                raise RespConnectionError("the Redis client was closed") from None
            raise

    def _start_open(self) -> asyncio.Task[_Connection]:
        task = asyncio.get_running_loop().create_task(self._open())
        self._opening = task
        return task

    async def _open(self) -> _Connection:
        t = self.target
        loop = asyncio.get_running_loop()
        conn: _Connection | None = None
        try:
            async with asyncio.timeout(self.timeout_s):
                if t.path is not None:
                    _, conn = await loop.create_unix_connection(lambda: _Connection(self, loop), t.path, ssl=t.ssl)
                else:
                    _, conn = await loop.create_connection(
                        lambda: _Connection(self, loop), t.host, t.port, ssl=t.ssl,
                        server_hostname=t.host if t.ssl is not None else None,
                    )
                hello: list[asyncio.Future[Any]] = []
                if t.password is not None:
                    auth = (b"AUTH", t.username, t.password) if t.username else (b"AUTH", t.password)
                    hello.append(conn.send(encode(auth)))
                if t.db:
                    hello.append(conn.send(encode((b"SELECT", t.db))))
                for fut in hello:
                    await fut
        except RespReplyError as exc:
            assert conn is not None
            conn.fail(RespConnectionError("closed after a failed handshake"))
            raise RespConnectionError(f"Redis at {t.where} refused the connection setup: {exc}") from exc
        except (OSError, TimeoutError, ssl.SSLError, RespConnectionError) as exc:
            if conn is not None:
                conn.fail(RespConnectionError("closed after a failed handshake"))
            what = "timed out" if isinstance(exc, TimeoutError) else f"{exc.__class__.__name__}: {exc}"
            raise RespConnectionError(f"cannot connect to Redis at {t.where}: {what}") from exc
        except BaseException:
            if conn is not None:
                conn.fail(RespConnectionError("connection setup cancelled"))
            raise
        finally:
            self._opening = None
        if self._closed:
            conn.fail(RespConnectionError("the Redis client was closed"))
            raise RespConnectionError("the Redis client is closed")
        if conn.closed:  # lost right after the handshake's last reply
            raise RespConnectionError(f"connection to {t.where} lost during setup")
        self._conns.append(conn)
        return conn

    def _forget(self, conn: _Connection) -> None:
        try:
            self._conns.remove(conn)
        except ValueError:
            pass


def _relay(outer: asyncio.Future[Any], inner: asyncio.Future[Any]) -> None:
    """Hand a connection's future (never cancelled: only its owner's copy is) to the caller's."""
    exc = inner.exception()
    if outer.done():
        return
    if exc is not None:
        outer.set_exception(exc)
    else:
        outer.set_result(inner.result())


def _retrieve(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()
