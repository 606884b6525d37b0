"""Tests of modelyard's own Redis client (``modelyard.limits.resp``).

The encoder and URL parser are tested as pure functions, and the failure paths that need a
misbehaving server (garbage replies, silence) against a small asyncio server in the test. Everything
else runs against a REAL Redis (``redis_url``: skipped when absent, failed under ``CI=true``); AUTH
success, unix sockets and TLS need a private ``redis-server`` started by the test (skipped, saying
why, when the binary or ``openssl`` is missing).
"""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import socket
import ssl
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import hiredis
import pytest
import redis

from modelyard.limits.resp import (
    NoScriptError,
    RespClient,
    RespConnectionError,
    RespError,
    RespReplyError,
    RespTimeoutError,
    Script,
    Target,
    encode,
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[RespClient]:
    c = RespClient.from_url(redis_url, timeout_s=2.0)
    yield c
    await c.aclose()


@pytest.fixture
def key(redis_url: str) -> Iterator[str]:
    """A key prefix of this test's own, deleted afterwards."""
    from .services import redis_cleanup

    p = f"modelyard:test:resp:{uuid.uuid4().hex}:"
    yield p
    redis_cleanup(redis_url, p)


# --- encoding and URLs (no server) ---------------------------------------------------------------


def test_encode_writes_resp_bulk_strings() -> None:
    assert encode((b"GET", "k")) == b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"
    assert encode(("SET", "é", 0, -12, 1.5, b"")) == (
        b"*6\r\n$3\r\nSET\r\n$2\r\n\xc3\xa9\r\n$1\r\n0\r\n$3\r\n-12\r\n$3\r\n1.5\r\n$0\r\n\r\n"
    )
    assert encode(("X", 0.1, 1e20, float("inf"))) == b"*4\r\n$1\r\nX\r\n$3\r\n0.1\r\n$5\r\n1e+20\r\n$3\r\ninf\r\n"
    assert encode((bytearray(b"ab"), memoryview(b"cd"))) == b"*2\r\n$2\r\nab\r\n$2\r\ncd\r\n"
    assert encode(()) == b"*0\r\n"


def test_encode_round_trips_through_a_resp_parser() -> None:
    args = [b"\r\n\x00binary", "ünïcode", 2**63, -1, 3.25, b"x" * 70_000]
    reader = hiredis.Reader()
    reader.feed(encode(args))
    assert reader.gets() == [b"\r\n\x00binary", "ünïcode".encode(), b"9223372036854775808", b"-1", b"3.25", b"x" * 70_000]


@pytest.mark.parametrize("bad", [True, None, float("nan"), ["list"], object()])
def test_encode_refuses_what_redis_cannot_take(bad: object) -> None:
    with pytest.raises(TypeError, match="Redis arguments are bytes, str, int or float"):
        encode(("SET", "k", bad))


def test_script_sha_is_the_sha1_of_its_source() -> None:
    script = Script("return 1")
    assert script.sha == hashlib.sha1(b"return 1").hexdigest().encode()


def test_target_from_url() -> None:
    t = Target.from_url("redis://127.0.0.1:6380/3")
    assert (t.host, t.port, t.db, t.password, t.username, t.ssl, t.path) == ("127.0.0.1", 6380, 3, None, None, None, None)
    assert Target.from_url("redis://h").port == 6379 and Target.from_url("redis://h/").db == 0
    t = Target.from_url("redis://:p%40ss@h:1/0")
    assert (t.username, t.password) == (None, "p@ss")
    t = Target.from_url("redis://alice:secret@h?db=4")
    assert (t.username, t.password, t.db) == ("alice", "secret", 4)
    t = Target.from_url("redis://[::1]:7000")
    assert (t.host, t.port, t.where) == ("::1", 7000, "redis://[::1]:7000/0")
    t = Target.from_url("unix:///run/redis.sock?db=2&password=pw")
    assert (t.path, t.db, t.password, t.where) == ("/run/redis.sock", 2, "pw", "unix:/run/redis.sock")
    t = Target.from_url("rediss://h:6390/1")
    assert t.ssl is not None and t.ssl.verify_mode == ssl.CERT_REQUIRED and t.ssl.check_hostname
    assert t.where == "rediss://h:6390/1"
    t = Target.from_url("rediss://h?ssl_cert_reqs=none")
    assert t.ssl is not None and t.ssl.verify_mode == ssl.CERT_NONE and not t.ssl.check_hostname


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://:hunter2@h", "unsupported scheme"),
        ("redis://:hunter2@h/x", "database must be a number"),
        ("redis://:hunter2@h:99999", "port"),
        ("redis://:hunter2@h?socket_timeout=5", "unsupported parameter"),
        ("rediss://:hunter2@h?ssl_cert_reqs=maybe", "ssl_cert_reqs"),
        ("unix://:hunter2@", "socket path"),
    ],
)
def test_target_from_url_errors_never_repeat_the_password(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        Target.from_url(url)
    assert "hunter2" not in str(info.value)


def test_client_is_built_without_a_loop_and_connects_lazily() -> None:
    c = RespClient.from_url(f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there: no error yet
    assert c.target.port > 0
    with pytest.raises(ValueError):
        RespClient.from_url("redis://h", connections=0)


# --- against the real Redis ---------------------------------------------------------------------


async def test_commands_and_reply_types(client: RespClient, key: str) -> None:
    assert await client.execute("PING") == b"PONG"
    assert await client.execute("SET", key + "a", 41) == b"OK"
    assert await client.execute("INCR", key + "a") == 42
    assert await client.execute("GET", key + "missing") is None
    assert await client.execute("RPUSH", key + "l", "x", b"y", 3) == 3
    assert await client.execute("LRANGE", key + "l", 0, -1) == [b"x", b"y", b"3"]
    assert await client.execute("EVAL", "return {1, 'two', {3}}", 0) == [1, b"two", [3]]


async def test_a_thousand_concurrent_commands_each_get_their_own_reply(client: RespClient, key: str) -> None:
    echoes = [f"payload-{i}-" + "x" * (i % 300) for i in range(1000)]
    incrs = [f"{key}n{i}" for i in range(1000)]
    got = await asyncio.gather(
        *(client.execute("ECHO", e) for e in echoes),
        *(client.execute("INCRBY", k, i) for i, k in enumerate(incrs)),
    )
    assert got[:1000] == [e.encode() for e in echoes]
    assert got[1000:] == list(range(1000))
    ids = await asyncio.gather(*(client.execute("CLIENT", "ID") for _ in range(300)))
    assert 1 <= len(set(ids)) <= 2  # pipelined over at most `connections` connections


async def test_send_many_and_execute_many_keep_order_on_one_connection(client: RespClient, key: str) -> None:
    futures = client.send_many([("RPUSH", key + "q", i) for i in range(50)] + [("LRANGE", key + "q", 0, -1)])
    replies = [await f for f in futures]
    assert replies[:50] == list(range(1, 51)) and replies[50] == [str(i).encode() for i in range(50)]
    with pytest.raises(RespReplyError, match="WRONGTYPE"):
        await client.execute_many([("SET", key + "s", 1), ("LPUSH", key + "s", 2), ("INCR", key + "s")])
    assert await client.execute("GET", key + "s") == b"2"  # the commands around the error ran


async def test_error_reply_raises_and_the_connection_stays_usable(client: RespClient) -> None:
    first = await client.execute("CLIENT", "ID")
    with pytest.raises(RespReplyError, match="unknown command") as info:
        await client.execute("NO-SUCH-COMMAND", 1)
    assert isinstance(info.value, RespError) and not isinstance(info.value, NoScriptError)
    with pytest.raises(RespReplyError, match="wrong number of arguments"):
        await client.execute("GET")
    assert await client.execute("CLIENT", "ID") == first


async def test_noscript_and_run_script_loads_the_script(client: RespClient, key: str) -> None:
    script = Script(f"-- {uuid.uuid4().hex}\nreturn redis.call('INCRBY', KEYS[1], ARGV[1])")
    with pytest.raises(NoScriptError, match="^NOSCRIPT"):
        await client.execute("EVALSHA", script.sha, 1, key + "c", 1)
    assert await client.run_script(script, [key + "c"], [5]) == 5
    assert await client.execute("EVALSHA", script.sha, 1, key + "c", 1) == 6  # loaded now


async def test_auth_against_a_server_without_password_fails_clearly(redis_url: str) -> None:
    target = Target.from_url(redis_url)
    c = RespClient(Target(host=target.host, port=target.port, password="hunter2"))
    try:
        with pytest.raises(RespConnectionError, match="refused the connection setup: .*AUTH") as info:
            await c.execute("PING")
        assert "hunter2" not in str(info.value) and isinstance(info.value.__cause__, RespReplyError)
    finally:
        await c.aclose()


async def test_select_db_from_the_url(redis_url: str, key: str) -> None:
    target = Target.from_url(redis_url)
    c = RespClient(Target(host=target.host, port=target.port, db=7))
    sync7 = redis.Redis(host=target.host, port=target.port, db=7)
    try:
        await c.execute("SET", key + "db", "seven")
        assert sync7.get(key + "db") == b"seven"
        assert redis.Redis(host=target.host, port=target.port, db=target.db).get(key + "db") is None
    finally:
        sync7.delete(key + "db")
        sync7.close()
        await c.aclose()


async def test_connection_refused_fails_fast_every_time() -> None:
    c = RespClient.from_url(f"redis://127.0.0.1:{free_port()}/0", timeout_s=1.0)
    try:
        for _ in range(2):  # no failure is cached: each command tries to connect again
            t0 = time.monotonic()
            with pytest.raises(RespConnectionError, match="cannot connect to Redis at redis://127.0.0.1"):
                await c.execute("PING")
            assert time.monotonic() - t0 < 0.5
        results = await asyncio.gather(*(c.execute("PING") for _ in range(20)), return_exceptions=True)
        assert all(isinstance(r, RespConnectionError) for r in results)  # waiters share one attempt
    finally:
        await c.aclose()


async def test_killed_connection_fails_everything_in_flight_then_reconnects(redis_url: str, key: str) -> None:
    c = RespClient.from_url(redis_url, timeout_s=5.0, connections=1)
    admin = RespClient.from_url(redis_url)
    try:
        victim = await c.execute("CLIENT", "ID")
        blocked = asyncio.ensure_future(c.execute("BLPOP", key + "empty", 5))
        behind = [asyncio.ensure_future(c.execute("ECHO", str(i))) for i in range(10)]
        await asyncio.sleep(0.05)  # BLPOP is blocking in Redis; the echoes wait behind it
        assert await admin.execute("CLIENT", "KILL", "ID", victim) == 1
        results = await asyncio.wait_for(asyncio.gather(blocked, *behind, return_exceptions=True), 2)
        assert all(isinstance(r, RespConnectionError) and "lost" in str(r) for r in results), results
        assert await c.execute("ECHO", "again") == b"again"
        assert await c.execute("CLIENT", "ID") != victim
    finally:
        await admin.aclose()
        await c.aclose()


async def test_a_cancelled_caller_does_not_desynchronise_the_replies(redis_url: str, key: str) -> None:
    c = RespClient.from_url(redis_url, timeout_s=5.0, connections=1)
    other = RespClient.from_url(redis_url)
    try:
        blocked = asyncio.ensure_future(c.execute("BLPOP", key + "q", 5))
        after = [asyncio.ensure_future(c.execute("ECHO", f"after-{i}")) for i in range(5)]
        await asyncio.sleep(0.05)
        blocked.cancel()
        mid = after.pop(2)
        mid.cancel()
        await other.execute("RPUSH", key + "q", "for-the-cancelled-caller")  # BLPOP's reply: dropped
        assert await asyncio.gather(*after) == [b"after-0", b"after-1", b"after-3", b"after-4"]
        assert blocked.cancelled() and mid.cancelled()
        assert await c.execute("ECHO", "next") == b"next"
        assert await other.execute("LLEN", key + "q") == 0  # the cancelled BLPOP did run
    finally:
        await other.aclose()
        await c.aclose()


async def test_a_timeout_drops_the_connection(redis_url: str, key: str) -> None:
    c = RespClient.from_url(redis_url, timeout_s=0.2, connections=1)
    admin = RespClient.from_url(redis_url)
    try:
        stuck = await c.execute("CLIENT", "ID")
        t0 = time.monotonic()
        blocked = asyncio.ensure_future(c.execute("BLPOP", key + "empty", 2))
        behind = asyncio.ensure_future(c.execute("ECHO", "behind"))
        with pytest.raises(RespTimeoutError, match="no reply from redis://.* within 0.2s"):
            await blocked
        assert 0.15 < time.monotonic() - t0 < 1.0
        with pytest.raises(RespTimeoutError):
            await behind
        assert await c.execute("CLIENT", "ID") != stuck  # a new connection
        for _ in range(50):  # the stuck one is closed, not left blocking in Redis
            clients = await admin.execute("CLIENT", "LIST")
            if f"id={stuck} ".encode() not in clients:
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail("the timed-out connection is still open")
    finally:
        await admin.aclose()
        await c.aclose()


async def test_aclose_fails_what_is_in_flight(redis_url: str, key: str) -> None:
    c = RespClient.from_url(redis_url, timeout_s=5.0)
    await c.execute("PING")
    blocked = asyncio.ensure_future(c.execute("BLPOP", key + "empty", 5))
    await asyncio.sleep(0.05)
    await c.aclose()
    with pytest.raises(RespConnectionError, match="closed"):
        await blocked
    with pytest.raises(RespConnectionError, match="closed"):
        await c.execute("PING")


# --- servers that misbehave ----------------------------------------------------------------------


class _Bad:
    """A server that answers the first command of each connection wrongly; counts connections
    opened and closed by the client."""

    def __init__(self, handler: str) -> None:
        self.handler = handler
        self.opened = self.closed = 0

    async def on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.opened += 1
        try:
            await reader.read(100)
            if self.handler == "garbage":
                writer.write(b"?what\r\n")
            elif self.handler == "extra":
                writer.write(b"+OK\r\n+UNASKED\r\n")
            elif self.handler == "close":
                return
            while await reader.read(100):  # "silent": never answers
                pass
        except ConnectionError:
            pass
        finally:
            self.closed += 1
            writer.close()

    async def settled(self) -> None:
        """Until every connection the server accepted has ended."""
        for _ in range(200):
            if self.closed == self.opened:
                return
            await asyncio.sleep(0.01)


@pytest.mark.parametrize(
    ("handler", "error", "message"),
    [
        ("garbage", RespConnectionError, "invalid reply"),
        ("close", RespConnectionError, "lost"),
        ("silent", RespTimeoutError, "within 0.2s"),
    ],
)
async def test_misbehaving_server(handler: str, error: type[Exception], message: str) -> None:
    bad = _Bad(handler)
    server = await asyncio.start_server(bad.on_client, "127.0.0.1", 0)
    c = RespClient.from_url(f"redis://127.0.0.1:{server.sockets[0].getsockname()[1]}", timeout_s=0.2)
    try:
        with pytest.raises(error, match=message):
            await c.execute("PING")
        await bad.settled()  # the client closed the connection it could no longer trust
        assert (bad.opened, bad.closed) == (1, 1)
    finally:
        await c.aclose()
        await bad.settled()
        server.close()


async def test_a_reply_nobody_asked_for_closes_the_connection() -> None:
    bad = _Bad("extra")
    server = await asyncio.start_server(bad.on_client, "127.0.0.1", 0)
    c = RespClient.from_url(f"redis://127.0.0.1:{server.sockets[0].getsockname()[1]}", timeout_s=0.5)
    try:
        assert await c.execute("PING") == b"OK"
        await bad.settled()
        assert (bad.opened, bad.closed) == (1, 1)
        assert await c.execute("PING") == b"OK"  # on a new connection
        assert bad.opened == 2
    finally:
        await c.aclose()
        await bad.settled()
        server.close()


async def test_aclose_while_connecting_fails_the_waiters_not_cancels_them() -> None:
    bad = _Bad("silent")  # accepts, never answers AUTH: the connection setup hangs
    server = await asyncio.start_server(bad.on_client, "127.0.0.1", 0)
    c = RespClient(Target(host="127.0.0.1", port=server.sockets[0].getsockname()[1], password="pw"), timeout_s=5.0)
    try:
        waiters = [asyncio.ensure_future(c.execute("PING")) for _ in range(3)]
        await asyncio.sleep(0.1)
        await c.aclose()
        results = await asyncio.gather(*waiters, return_exceptions=True)
        assert all(isinstance(r, RespConnectionError) and "closed" in str(r) for r in results), results
    finally:
        await bad.settled()
        server.close()


# --- a private redis-server: AUTH, unix socket, TLS ---------------------------------------------


def _start_redis(tmp_path: Path, *args: str) -> subprocess.Popen[bytes]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed: cannot start a private server")
    log = tmp_path / "redis.log"
    proc = subprocess.Popen(
        [binary, "--save", "", "--appendonly", "no", "--dir", str(tmp_path), "--logfile", str(log), *args],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and proc.poll() is None:
        if log.exists() and "Ready to accept connections" in log.read_text(errors="replace"):
            return proc
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    # e.g. a build without TLS: a limit of this machine, not of the client under test
    pytest.skip(f"private redis-server did not start: {log.read_text(errors='replace')[-500:] if log.exists() else ''}")
    raise AssertionError


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """redis-server with a password, on a free port and a unix socket."""
    port, sock = free_port(), tmp_path / "redis.sock"
    proc = _start_redis(tmp_path, "--port", str(port), "--unixsocket", str(sock), "--requirepass", "s3cret p@ss")
    yield port, sock
    proc.terminate()
    proc.wait(10)


async def test_auth_with_password_and_with_username(private_redis: tuple[int, Path]) -> None:
    port, _ = private_redis
    for url in (f"redis://:s3cret%20p%40ss@127.0.0.1:{port}/2", f"redis://default:s3cret%20p%40ss@127.0.0.1:{port}/2"):
        c = RespClient.from_url(url)
        try:
            assert await c.execute("PING") == b"PONG"
            assert await c.execute("CLIENT", "INFO")  # and the database is 2:
            assert b" db=2 " in await c.execute("CLIENT", "INFO")
        finally:
            await c.aclose()
    wrong = RespClient.from_url(f"redis://:nope@127.0.0.1:{port}/0")
    anonymous = RespClient.from_url(f"redis://127.0.0.1:{port}/0")
    try:
        with pytest.raises(RespConnectionError, match="WRONGPASS") as info:
            await wrong.execute("PING")
        assert "nope" not in str(info.value)
        with pytest.raises(RespReplyError, match="NOAUTH"):
            await anonymous.execute("GET", "k")
    finally:
        await wrong.aclose()
        await anonymous.aclose()


async def test_unix_socket(private_redis: tuple[int, Path]) -> None:
    _, sock = private_redis
    c = RespClient.from_url(f"unix://{sock}?db=3&password=s3cret%20p%40ss")
    try:
        assert await c.execute("ECHO", "over a unix socket") == b"over a unix socket"
        assert b" db=3 " in await c.execute("CLIENT", "INFO")
    finally:
        await c.aclose()


async def test_tls(tmp_path: Path) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed: cannot make a test certificate")
    cert, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost", "-keyout", str(keyfile), "-out", str(cert)],
        check=True, capture_output=True,
    )
    port = free_port()
    proc = _start_redis(tmp_path, "--port", "0", "--tls-port", str(port), "--tls-cert-file", str(cert),
                        "--tls-key-file", str(keyfile), "--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no")
    clients: list[RespClient] = []
    try:
        verified = RespClient.from_url(f"rediss://localhost:{port}/0?ssl_ca_certs={cert}")
        unverified = RespClient.from_url(f"rediss://127.0.0.1:{port}/0?ssl_cert_reqs=none")
        untrusted = RespClient.from_url(f"rediss://localhost:{port}/0")
        clients += [verified, unverified, untrusted]
        assert await verified.execute("ECHO", "secret") == b"secret"
        assert await unverified.execute("PING") == b"PONG"
        with pytest.raises(RespConnectionError, match="CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
            await untrusted.execute("PING")
    finally:
        for c in clients:
            await c.aclose()
        proc.terminate()
        proc.wait(10)
