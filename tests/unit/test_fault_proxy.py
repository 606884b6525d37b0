"""The fault proxy itself, against a tiny loopback echo server: each fault does what it says."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from modelyard.testing.fault_proxy import Fault, FaultProxy


def test_parse() -> None:
    assert Fault.parse("pass") == Fault()
    assert Fault.parse("latency:0.25") == Fault("latency", seconds=0.25)
    assert Fault.parse("cut:100") == Fault("cut", n=100)
    assert Fault.parse("status:503x4") == Fault("status", n=4, status=503)
    for bad in ("nope", "latency", "reset:1", "cut:x"):
        with pytest.raises(ValueError):
            Fault.parse(bad)
    with pytest.raises(ValueError, match="loopback"):
        FaultProxy("10.0.0.1", 80)


def _echo10(conn: socket.socket) -> None:
    with conn:
        try:
            while data := conn.recv(4096):
                conn.sendall(data * 10)
        except OSError:  # the proxy reset it: that is the point
            pass


@pytest.fixture
def echo() -> int:
    srv = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        srv.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            threading.Thread(target=_echo10, args=(conn,), daemon=True).start()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield srv.getsockname()[1]
    stop.set()
    t.join()
    srv.close()


def roundtrip(port: int, data: bytes, want: int, timeout: float = 2.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        got = b""
        try:
            while len(got) < want and (chunk := s.recv(4096)):
                got += chunk
        except ConnectionResetError:
            got += b"<RST>"
        except TimeoutError:
            got += b"<TIMEOUT>"
        return got


def test_each_fault(echo: int) -> None:
    with FaultProxy("127.0.0.1", echo) as p:
        assert roundtrip(p.port, b"abc", 30) == b"abc" * 10
        p.set("latency:0.2")
        t = time.monotonic()
        assert roundtrip(p.port, b"abc", 30) == b"abc" * 10 and time.monotonic() - t >= 0.2
        p.set("reset")
        assert roundtrip(p.port, b"abc", 30) in (b"<RST>", b"")
        p.set("blackhole")
        assert roundtrip(p.port, b"abc", 30, timeout=0.3) == b"<TIMEOUT>"
        p.set("cut:7")
        assert roundtrip(p.port, b"abc", 30) in (b"abcabca<RST>", b"abcabca")
        p.set("slow:160")  # 16 bytes per 0.1 s
        t = time.monotonic()
        assert roundtrip(p.port, b"abc", 30) == b"abc" * 10 and time.monotonic() - t >= 0.1
        p.set("status:502x1")
        assert roundtrip(p.port, b"GET / HTTP/1.1\r\n\r\n", 10_000).startswith(b"HTTP/1.1 502 ")
        assert roundtrip(p.port, b"abc", 30) == b"abc" * 10  # the burst is over
        assert p.stats.faults["reset"] == 1 and p.stats.connections == 8
