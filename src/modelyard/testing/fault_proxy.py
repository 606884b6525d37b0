"""A fault-injecting TCP proxy on loopback, for the reliability tests: gateway → proxy → upstream.

    proxy = FaultProxy("127.0.0.1", upstream_port).start()   # its own thread and event loop
    proxy.url                                                 # http://127.0.0.1:<port>
    proxy.set("reset")                                        # every request from now on
    proxy.close()

It works on bytes, not on HTTP: a fault applies to each request a client *sends* while it is set (on
a kept-alive connection too) and to the response bytes of that request. Faults (``Fault.parse``):

``pass``           forward both ways untouched
``latency:<s>``    hold each request ``s`` seconds before forwarding it
``reset``          answer the request with a TCP reset (SO_LINGER 0), both sides closed
``blackhole``      swallow the request; never answer, keep the connection open
``cut:<n>``        forward the request, relay the first ``n`` response bytes, then reset both sides
``slow:<bps>``     relay the response at ``bps`` bytes per second (16-byte pieces)
``status:<code>x<k>``  answer the next ``k`` requests itself with HTTP ``code`` (a JSON error,
                   ``Connection: close``), then pass (``5xx`` bursts)

Loopback only; every connection and task is closed by ``close()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
import threading
from dataclasses import dataclass, field
from typing import Any

_LOOPBACK = ("127.0.0.1", "::1", "localhost")


@dataclass(frozen=True)
class Fault:
    kind: str = "pass"
    seconds: float = 0.0
    n: int = 0
    status: int = 503

    @classmethod
    def parse(cls, spec: str) -> Fault:
        kind, _, arg = spec.partition(":")
        if kind in ("pass", "reset", "blackhole") and not arg:
            return cls(kind)
        if kind == "latency":
            return cls(kind, seconds=float(arg))
        if kind in ("cut", "slow"):
            return cls(kind, n=int(arg))
        if kind == "status":
            code, _, count = arg.partition("x")
            return cls(kind, status=int(code), n=int(count or 1))
        raise ValueError(f"unknown fault {spec!r}")


@dataclass
class ProxyStats:
    connections: int = 0
    requests: int = 0  # client chunks that started a request while a fault was set (approximately requests)
    faults: dict[str, int] = field(default_factory=dict)


def _rst(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class FaultProxy:
    def __init__(self, upstream_host: str, upstream_port: int, *, host: str = "127.0.0.1") -> None:
        if upstream_host not in _LOOPBACK or host not in _LOOPBACK:
            raise ValueError("the fault proxy runs on loopback only")
        self._up = (upstream_host, upstream_port)
        self._host = host
        self._fault = Fault()
        self._burst_left = 0
        self._lock = threading.Lock()
        self.stats = ProxyStats()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fault-proxy", daemon=True)
        self._server: asyncio.AbstractServer | None = None
        self._conns: set[asyncio.Task[Any]] = set()
        self.port = 0

    # --- control (from any thread) -------------------------------------------------------------

    def start(self) -> FaultProxy:
        self._thread.start()
        fut = asyncio.run_coroutine_threadsafe(self._start(), self._loop)
        self.port = fut.result(10)
        return self

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self.port}"

    def set(self, spec: str | Fault) -> None:
        fault = spec if isinstance(spec, Fault) else Fault.parse(spec)
        with self._lock:
            self._fault = fault
            self._burst_left = fault.n if fault.kind == "status" else 0

    def close(self) -> None:
        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._loop.close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- in the proxy's loop -------------------------------------------------------------------

    async def _start(self) -> int:
        self._server = await asyncio.start_server(self._accept, self._host, 0)
        return self._server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for t in list(self._conns):
            t.cancel()
        if self._conns:
            await asyncio.gather(*self._conns, return_exceptions=True)

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.get_running_loop().create_task(self._serve(reader, writer))
        self._conns.add(task)
        task.add_done_callback(self._conns.discard)

    def _take_fault(self) -> Fault:
        with self._lock:
            f = self._fault
            if f.kind == "status":
                if self._burst_left <= 0:
                    return Fault()
                self._burst_left -= 1
            self.stats.requests += 1
            self.stats.faults[f.kind] = self.stats.faults.get(f.kind, 0) + 1
            return f

    async def _serve(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        self.stats.connections += 1
        uwriter: asyncio.StreamWriter | None = None
        pump: asyncio.Task[None] | None = None
        mode: dict[str, Any] = {"fault": Fault()}  # the fault of the request whose response is flowing
        try:
            ureader, uwriter = await asyncio.open_connection(*self._up)
            pump = asyncio.get_running_loop().create_task(self._responses(ureader, cwriter, uwriter, mode))
            while data := await creader.read(65536):
                f = self._take_fault()
                if f.kind == "reset":
                    _rst(cwriter)
                    _rst(uwriter)
                    return
                if f.kind == "blackhole":
                    while await creader.read(65536):  # swallow everything, answer nothing
                        pass
                    return
                if f.kind == "status":
                    body = json.dumps({"error": {"message": f"fault proxy: injected HTTP {f.status}",
                                                 "type": "server_error", "param": None, "code": None}}).encode()
                    cwriter.write(b"HTTP/1.1 %d Injected\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                                  b"connection: close\r\n\r\n%s" % (f.status, len(body), body))
                    await cwriter.drain()
                    cwriter.close()
                    return
                if f.kind == "latency":
                    await asyncio.sleep(f.seconds)
                mode["fault"], mode["sent"] = f, 0
                uwriter.write(data)
                await uwriter.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            if pump is not None:
                pump.cancel()
                with contextlib.suppress(BaseException):
                    await pump
            for w in (cwriter, uwriter):
                if w is not None and not w.is_closing():
                    w.close()

    async def _responses(self, ureader: asyncio.StreamReader, cwriter: asyncio.StreamWriter,
                         uwriter: asyncio.StreamWriter, mode: dict[str, Any]) -> None:
        try:
            while data := await ureader.read(65536):
                f: Fault = mode["fault"]
                if f.kind == "cut":
                    left = f.n - mode["sent"]
                    if len(data) >= left:
                        cwriter.write(data[:left])
                        await cwriter.drain()
                        _rst(cwriter)
                        _rst(uwriter)
                        return
                    mode["sent"] += len(data)
                    cwriter.write(data)
                elif f.kind == "slow":
                    for i in range(0, len(data), 16):
                        cwriter.write(data[i : i + 16])
                        await cwriter.drain()
                        await asyncio.sleep(16 / max(1, f.n))
                else:
                    cwriter.write(data)
                await cwriter.drain()
        except OSError:
            pass
        finally:
            if not cwriter.is_closing():
                cwriter.close()
