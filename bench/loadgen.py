"""A cheap HTTP/1.1 load generator: raw asyncio ``Protocol`` + ``httptools`` on uvloop.

The benchmark machine has 2 cores shared by the load generator, the mock upstream and the gateway,
so the generator must cost as little CPU per request as possible: no HTTP library, no task per
request in the throughput mode (each connection sends its next request from the parser callback
that completed the previous one), pre-encoded request bytes.

It is run in its own process by ``bench/gateway.py`` (one run per phase)::

    python bench/loadgen.py '<json spec>'

and prints ``MARK start`` / ``MARK end`` lines around the measured window of a throughput run (the
parent reads the CPU counters of the gateway and the mock at those moments), then one line
``RESULT <json>``. Modes:

``latency``     c=1, ``requests`` requests per target, the targets interleaved in blocks (so that
                noise from the shared machine hits every target alike), after ``warmup``.
``stream``      like ``latency`` for ``stream: true`` bodies; records time to the response head,
                to the first body byte and to the first content event, and to the end.
``throughput``  ``concurrency`` keep-alive connections sending back to back for ``duration`` s
                after ``warmup_s`` s of unmeasured load (``"stream": true`` for SSE responses).

Every response's status is checked (non-200 is an error) and its body is sanity-checked (a chat
completion, or a stream that ends with ``[DONE]``); errors are counted and sampled, never dropped.
Loopback only: targets are ``http://127.0.0.1:PORT`` URLs.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time
from urllib.parse import urlsplit

import httptools

_now = time.perf_counter_ns
_CONTENT = re.compile(rb'"content":"[^"]')  # an SSE chunk carrying generated text


def build_request(url: str, path: str, body: bytes, authorization: str | None = None) -> bytes:
    """The complete request bytes (head + body) for ``POST path`` on ``url``."""
    parts = urlsplit(url)
    host = f"{parts.hostname}:{parts.port}"
    if parts.hostname not in ("127.0.0.1", "localhost", "::1"):
        raise ValueError(f"loopback targets only, got {url!r}")
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: modelyard-bench\r\n"
        f"Accept: application/json\r\nContent-Type: application/json\r\n"
        + (f"Authorization: {authorization}\r\n" if authorization else "")
        + f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    return head + body


def summarize(values_ns: list[int]) -> dict:
    """Percentiles in milliseconds (nearest-rank) of a list of durations in nanoseconds."""
    n = len(values_ns)
    if n == 0:
        return {"n": 0}
    v = sorted(values_ns)

    def pct(p: float) -> float:
        k = max(0, min(n - 1, int(round(p / 100.0 * n + 0.5)) - 1))
        return v[k] / 1e6

    return {
        "n": n,
        "p50": pct(50),
        "p90": pct(90),
        "p99": pct(99),
        "mean": sum(v) / n / 1e6,
        "min": v[0] / 1e6,
        "max": v[-1] / 1e6,
    }


class Errors:
    """Counts of failed requests by kind, with a few samples."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.samples: list[str] = []

    def add(self, kind: str, detail: bytes | str = b"") -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        if len(self.samples) < 5:
            if isinstance(detail, bytes):
                detail = detail[:300].decode("utf-8", "replace")
            self.samples.append(f"{kind}: {detail}")

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def to_json(self) -> dict:
        return {"total": self.total, "by_kind": self.counts, "samples": self.samples}


class _Conn(asyncio.Protocol):
    """One keep-alive connection; one request outstanding at a time.

    ``on_done(conn)`` is called from the parser callback that completed a response (or when the
    connection broke while a request was outstanding; then ``conn.broken`` is set).
    """

    def __init__(self, request: bytes, stream: bool, errors: Errors, on_done, expect: tuple[bytes, ...] = ()) -> None:
        self.request = request
        self.expect = expect or (b'"chat.completion"', b'"choices"')
        self.stream = stream
        self.errors = errors
        self.on_done = on_done
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.outstanding = False
        self.broken = False
        self.status = 0
        self.body: list[bytes] = []
        self.t0 = self.t_head = self.t_body = self.t_content = self.t_end = 0

    # -- asyncio
    def connection_made(self, transport) -> None:  # noqa: ANN001
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._break(f"invalid HTTP: {exc}")

    def connection_lost(self, exc: Exception | None) -> None:
        if self.outstanding:
            self._break(f"connection lost: {exc}")
        self.broken = True

    def _break(self, why: str) -> None:
        self.broken = True
        if self.outstanding:
            self.outstanding = False
            self.errors.add("connection", why)
            self.on_done(self)
        if self.transport is not None:
            self.transport.abort()

    # -- httptools
    def on_headers_complete(self) -> None:
        self.t_head = _now()
        self.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        if not self.t_body:
            self.t_body = _now()
        if self.stream and not self.t_content and _CONTENT.search(body):
            self.t_content = _now()
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.t_end = _now()
        self.outstanding = False
        body = b"".join(self.body)
        ok = True
        if self.status != 200:
            self.errors.add(f"status {self.status}", body)
            ok = False
        elif self.stream:
            if not body.rstrip().endswith(b"data: [DONE]") or not self.t_content:
                self.errors.add("bad stream body", body[-300:])
                ok = False
        elif not all(e in body for e in self.expect):
            self.errors.add("bad body", body)
            ok = False
        self.ok = ok
        if not self.parser.should_keep_alive():
            self.broken = True
            self.errors.add("server closed keep-alive", b"")
        self.on_done(self)

    # -- sending
    def send(self) -> None:
        self.body = []
        self.status = 0
        self.ok = False
        self.t_head = self.t_body = self.t_content = self.t_end = 0
        self.outstanding = True
        self.t0 = _now()
        self.transport.write(self.request)  # type: ignore[union-attr]


async def _connect(url: str, request: bytes, stream: bool, errors: Errors, on_done, expect: tuple[bytes, ...] = ()) -> _Conn:
    parts = urlsplit(url)
    loop = asyncio.get_running_loop()
    _, conn = await loop.create_connection(
        lambda: _Conn(request, stream, errors, on_done, expect), parts.hostname, parts.port
    )
    return conn


# ------------------------------------------------------------------------------ c=1 modes
async def run_sequential(spec: dict) -> dict:
    """c=1 over several targets, interleaved in blocks; ``stream`` selects the stream metrics."""
    stream = bool(spec.get("stream"))
    n = int(spec["requests"])
    warmup = int(spec.get("warmup", 200))
    block = int(spec.get("block", 50))
    req_timeout = float(spec.get("request_timeout_s", 10.0))
    targets = spec["targets"]  # [{"name", "url", "path", "body"}]
    loop = asyncio.get_running_loop()
    state: dict[str, object] = {"fut": None}

    def on_done(_conn: _Conn) -> None:
        fut = state["fut"]
        if fut is not None and not fut.done():  # type: ignore[union-attr]
            fut.set_result(None)  # type: ignore[union-attr]

    per: list[dict] = []
    for t in targets:
        errors = Errors()
        request = build_request(t["url"], t["path"], t["body"].encode(), t.get("authorization"))
        conn = await _connect(t["url"], request, stream, errors, on_done)
        per.append({"t": t, "conn": conn, "errors": errors, "url": t["url"], "request": request,
                    "total": [], "head": [], "body": [], "content": [], "done": 0, "sent": 0})

    async def one(p: dict, record: bool) -> None:
        conn: _Conn = p["conn"]
        if conn.broken:  # reconnect once per failure; the failure was already counted
            conn = p["conn"] = await _connect(p["url"], p["request"], stream, p["errors"], on_done)
        fut = state["fut"] = loop.create_future()
        conn.send()
        p["sent"] += 1
        try:
            await asyncio.wait_for(fut, req_timeout)
        except asyncio.TimeoutError:
            p["errors"].add("timeout", f"no response within {req_timeout:g}s")
            conn.outstanding = False  # counted once, as a timeout
            conn._break("timeout")
            return
        if not record or not conn.ok:
            return
        p["done"] += 1
        p["total"].append(conn.t_end - conn.t0)
        if stream:
            p["head"].append(conn.t_head - conn.t0)
            p["body"].append(conn.t_body - conn.t0)
            p["content"].append(conn.t_content - conn.t0)

    cpu0 = time.process_time()
    # Warm-up: every target, interleaved, not recorded.
    for _ in range(warmup):
        for p in per:
            await one(p, False)
    for p in per:
        p["warm_errors"] = p["errors"].total
    # Measured: blocks of ``block`` requests per target in turn.
    left = n
    while left > 0:
        k = min(block, left)
        for p in per:
            for _ in range(k):
                await one(p, True)
        left -= k
    cpu = time.process_time() - cpu0
    out = {"mode": "stream" if stream else "latency", "requests": n, "warmup": warmup, "targets": {}}
    for p in per:
        r = {"total": summarize(p["total"]), "errors": p["errors"].to_json(), "completed": p["done"]}
        if stream:
            r["head"] = summarize(p["head"])
            r["first_body_byte"] = summarize(p["body"])
            r["first_content"] = summarize(p["content"])
        out["targets"][p["t"]["name"]] = r
        p["conn"].transport.close()
    out["loadgen_cpu_us_per_req"] = cpu / max(1, (warmup + n) * len(per)) * 1e6
    return out


# ---------------------------------------------------------------------------- throughput
async def run_throughput(spec: dict) -> dict:
    url, path, body = spec["url"], spec["path"], spec["body"].encode()
    concurrency = int(spec["concurrency"])
    duration = float(spec["duration"])
    warmup_s = float(spec.get("warmup_s", 1.0))
    drain_s = float(spec.get("drain_s", 10.0))
    request = build_request(url, path, body, spec.get("authorization"))
    errors = Errors()
    loop = asyncio.get_running_loop()
    lat: list[int] = []
    st = {"phase": 0, "t_start": 0, "t_end": 0, "count": 0, "inflight": 0}  # phase 0 warm, 1 measure, 2 stop
    drained = loop.create_future()

    def on_done(conn: _Conn) -> None:
        st["inflight"] -= 1
        ph = st["phase"]
        if ph == 1 and conn.t_end and conn.ok:
            st["count"] += 1
            lat.append(conn.t_end - conn.t0)
        elif ph == 1 and not conn.ok and conn.t_end:
            pass  # counted in errors by the connection
        if ph < 2 and not conn.broken:
            st["inflight"] += 1
            conn.send()
        elif st["inflight"] == 0 and not drained.done():
            drained.set_result(None)

    stream = bool(spec.get("stream", False))  # body is a stream: true request; responses are checked as SSE
    expect = tuple(e.encode() for e in spec.get("expect", ()))  # substrings every 200 body must hold
    conns = [await _connect(url, request, stream, errors, on_done, expect) for _ in range(concurrency)]
    for c in conns:
        st["inflight"] += 1
        c.send()
    await asyncio.sleep(warmup_s)
    warm_errors = errors.total
    errors.counts.clear()
    errors.samples.clear()
    print("MARK start", flush=True)
    cpu0 = time.process_time()
    st["t_start"] = _now()
    st["phase"] = 1
    await asyncio.sleep(duration)
    st["phase"] = 2
    st["t_end"] = _now()
    cpu = time.process_time() - cpu0
    print("MARK end", flush=True)
    if st["inflight"] > 0:
        try:
            await asyncio.wait_for(drained, drain_s)
        except asyncio.TimeoutError:
            errors.add("timeout", f"{st['inflight']} requests still outstanding {drain_s:g}s after the window")
    broken = sum(1 for c in conns if c.broken)
    for c in conns:
        if c.transport is not None:
            c.transport.close()
    window_s = (st["t_end"] - st["t_start"]) / 1e9
    count = st["count"]
    return {
        "mode": "throughput",
        "concurrency": concurrency,
        "window_s": window_s,
        "completed": count,
        "rps": count / window_s if window_s > 0 else 0.0,
        "latency": summarize(lat),
        "errors": errors.to_json(),
        "warmup_errors": warm_errors,
        "broken_connections": broken,
        "loadgen_cpu_us_per_req": cpu / max(1, count) * 1e6,
    }


async def _main(spec: dict) -> dict:
    mode = spec["mode"]
    if mode in ("latency", "stream"):
        spec["stream"] = mode == "stream"
        return await run_sequential(spec)
    if mode == "throughput":
        return await run_throughput(spec)
    raise ValueError(f"unknown mode {mode!r}")


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python bench/loadgen.py '<json spec>'", file=sys.stderr)
        return 2
    spec = json.loads(argv[1])
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a modelyard dependency
        uvloop = None
    if uvloop is not None:
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    result = asyncio.run(_main(spec))
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
