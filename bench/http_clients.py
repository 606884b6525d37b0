"""Which HTTP client should the gateway use upstream? The same mock upstream, several clients.

Starts the bundled mock OpenAI upstream (a subprocess on loopback) and, in this process on uvloop,
drives the same ~300-byte non-streaming chat completion through each client:

* ``httpx.AsyncClient`` (pooled, keep-alive limits = concurrency)
* ``httpx2.AsyncClient`` (the client the ``openai`` SDK uses in this environment), when installed
* ``aiohttp.ClientSession`` (pooled ``TCPConnector``, limit = concurrency)
* ``modelyard.backends.httpclient.HTTPPool`` (``Origin.from_url`` + ``pool.request`` +
  ``resp.read()``, inside ``asyncio.timeout`` as ``OpenAIBackend.call`` uses it)
* ``raw protocol (floor)``: the load generator's asyncio Protocol + httptools connection, driven
  the same way — the lower bound for any client in Python on this loop

For each: c=1 latency (p50/p99 over ``--requests`` requests after a warm-up, the clients interleaved in blocks of 50), c=``--concurrency``
throughput (req/s over ``--duration`` s after a warm-up), and the CPU each costs per request in
this process (``time.process_time``), plus the mock's CPU per request (``/proc/<pid>/stat``) as a
check that the client, not the mock, is the bottleneck. Every status is checked; errors are
counted and printed.

Usage: ``.venv/bin/python bench/http_clients.py [--requests 2000] [--duration 3] [--concurrency 64] [--json]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from gateway import Child, chat_body, cpu_seconds, machine_busy_s, machine_info  # bench/ is on sys.path when run as a script
from loadgen import Errors, _Conn, build_request, summarize

PATH = "/v1/chat/completions"
HEADERS = {"Content-Type": "application/json", "Accept": "application/json", "User-Agent": "modelyard-bench"}
TIMEOUT_S = 10.0

# A client is "make(url, concurrency) -> (request, close)" where request() -> (status, body).
Request = Callable[[], Awaitable[tuple[int, bytes]]]


async def _make_httpx_like(module: str, url: str, body: bytes, c: int) -> tuple[Request, Callable[[], Awaitable[None]]]:
    """httpx and httpx2 share one API: one pooled AsyncClient either way."""
    lib = __import__(module)
    client = lib.AsyncClient(limits=lib.Limits(max_connections=c, max_keepalive_connections=c), timeout=TIMEOUT_S)
    full = url + PATH

    async def request() -> tuple[int, bytes]:
        r = await client.post(full, content=body, headers=HEADERS)
        return r.status_code, r.content

    return request, client.aclose


async def make_httpx(url: str, body: bytes, c: int) -> tuple[Request, Callable[[], Awaitable[None]]]:
    return await _make_httpx_like("httpx", url, body, c)


async def make_httpx2(url: str, body: bytes, c: int) -> tuple[Request, Callable[[], Awaitable[None]]]:
    return await _make_httpx_like("httpx2", url, body, c)


async def make_aiohttp(url: str, body: bytes, c: int) -> tuple[Request, Callable[[], Awaitable[None]]]:
    import aiohttp

    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=c, limit_per_host=c),
        timeout=aiohttp.ClientTimeout(total=TIMEOUT_S),
    )
    full = url + PATH

    async def request() -> tuple[int, bytes]:
        async with session.post(full, data=body, headers=HEADERS) as r:
            return r.status, await r.read()

    return request, session.close


async def make_httppool(url: str, body: bytes, c: int) -> tuple[Request, Callable[[], Awaitable[None]]]:
    from modelyard.backends.httpclient import HTTPPool, Origin

    pool = HTTPPool()
    origin = Origin.from_url(url + "/v1")
    header_block = b"".join(f"{k}: {v}\r\n".encode() for k, v in HEADERS.items())
    path = PATH.encode()

    async def request() -> tuple[int, bytes]:
        async with asyncio.timeout(TIMEOUT_S):
            resp = await pool.request(origin, b"POST", path, header_block, body)
            return resp.status, await resp.read()

    return request, pool.aclose


async def make_floor(url: str, body: bytes, c: int) -> tuple[Request, Callable[[], Awaitable[None]]]:
    """The raw Protocol connection of bench/loadgen.py, one per concurrent caller (a tiny pool)."""
    loop = asyncio.get_running_loop()
    errors = Errors()
    raw = build_request(url, PATH, body)
    idle: list[_Conn] = []
    waiters: dict[_Conn, asyncio.Future] = {}

    def on_done(conn: _Conn) -> None:
        fut = waiters.pop(conn, None)
        if fut is not None and not fut.done():
            fut.set_result(None)

    host, port = url.split("//", 1)[1].split(":")

    async def request() -> tuple[int, bytes]:
        conn = idle.pop() if idle else None
        if conn is None or conn.broken:
            _, conn = await loop.create_connection(lambda: _Conn(raw, False, errors, on_done), host, int(port))
        fut = waiters[conn] = loop.create_future()
        conn.send()
        async with asyncio.timeout(TIMEOUT_S):
            await fut
        if conn.broken:
            return 0, b"connection broken"
        idle.append(conn)
        return conn.status, b"".join(conn.body)

    async def close() -> None:
        for conn in idle:
            if conn.transport is not None:
                conn.transport.close()

    return request, close


CLIENTS: list[tuple[str, Callable]] = [
    ("httpx.AsyncClient", make_httpx),
    ("httpx2.AsyncClient", make_httpx2),
    ("aiohttp.ClientSession", make_aiohttp),
    ("modelyard HTTPPool", make_httppool),
    ("raw protocol (floor)", make_floor),
]


def _check(status: int, data: bytes, errors: Errors) -> bool:
    if status != 200:
        errors.add(f"status {status}", data)
        return False
    if b'"chat.completion"' not in data:
        errors.add("bad body", data)
        return False
    return True


class Subject:
    """One client under test: its request function, its errors and its results."""

    def __init__(self, name: str, request: Request, close: Callable[[], Awaitable[None]]) -> None:
        self.name = name
        self.request = request
        self.close = close
        self.errors = Errors()
        self.out: dict = {"client": name}

    async def one(self, lat: list[int] | None) -> None:
        t0 = time.perf_counter_ns()
        try:
            status, data = await self.request()
        except Exception as exc:  # noqa: BLE001 - every failure is counted and shown
            self.errors.add(type(exc).__name__, str(exc))
            return
        if _check(status, data, self.errors) and lat is not None:
            lat.append(time.perf_counter_ns() - t0)


async def measure_c1(subjects: list[Subject], args: argparse.Namespace) -> None:
    """c=1 for every client, interleaved in blocks of 50 so that machine noise hits all alike."""
    for s in subjects:
        for _ in range(args.warmup):
            await s.one(None)
    lat: dict[str, list[int]] = {s.name: [] for s in subjects}
    cpu: dict[str, float] = {s.name: 0.0 for s in subjects}
    left = args.requests
    while left > 0:
        k = min(50, left)
        for s in subjects:
            c0 = time.process_time()
            for _ in range(k):
                await s.one(lat[s.name])
            cpu[s.name] += time.process_time() - c0
        left -= k
    for s in subjects:
        s.out["c1"] = {
            "latency": summarize(lat[s.name]),
            "client_cpu_us_per_req": cpu[s.name] / args.requests * 1e6,
        }


async def measure_cn(s: Subject, args: argparse.Namespace, mock_pid: int) -> None:
    """c=N for one client: N tasks sending back to back for ``--duration`` s after a warm-up."""
    state = {"measure": False, "stop": False}
    counted: list[int] = []

    async def worker() -> None:
        while not state["stop"]:
            await s.one(counted if state["measure"] else None)

    workers = [asyncio.create_task(worker()) for _ in range(args.concurrency)]
    try:
        await asyncio.sleep(args.warmup_s)
        counted.clear()
        cpu0, mock0, t0, busy0 = time.process_time(), cpu_seconds(mock_pid), time.perf_counter(), machine_busy_s()
        state["measure"] = True
        await asyncio.sleep(args.duration)
        state["measure"] = False
        cpu1, mock1, t1, busy1 = time.process_time(), cpu_seconds(mock_pid), time.perf_counter(), machine_busy_s()
        n = len(counted)
        state["stop"] = True
        _, pending = await asyncio.wait(workers, timeout=TIMEOUT_S + 5)
        if pending:
            s.errors.add("worker did not finish", f"{len(pending)} workers still busy after the window")
    finally:
        state["stop"] = True
        for t in workers:
            t.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
    s.out["cN"] = {
        "rps": n / (t1 - t0),
        "completed": n,
        "latency": summarize(counted),
        "client_cpu_us_per_req": (cpu1 - cpu0) / max(1, n) * 1e6,
        "client_core_share": (cpu1 - cpu0) / (t1 - t0),
        "mock_cpu_us_per_req": (mock1 - mock0) / max(1, n) * 1e6,
        "other_cores": max(0.0, (busy1 - busy0) - (cpu1 - cpu0) - (mock1 - mock0)) / (t1 - t0),
    }


async def run_all(url: str, args: argparse.Namespace, mock_pid: int) -> list[dict]:
    body = chat_body("bench-model").encode()
    wanted = [c for c in CLIENTS if not args.only or any(o.lower() in c[0].lower() for o in args.only)]
    subjects: list[Subject] = []
    skipped: list[dict] = []
    try:
        for name, factory in wanted:
            try:
                request, close = await factory(url, body, args.concurrency)
            except ImportError as exc:
                skipped.append({"client": name, "skipped": f"not installed: {exc}"})
                continue
            subjects.append(Subject(name, request, close))
        print(f"c=1 phase, {len(subjects)} clients interleaved ...", file=sys.stderr)
        await measure_c1(subjects, args)
        for s in subjects:
            print(f"c={args.concurrency} phase: {s.name} ...", file=sys.stderr)
            await measure_cn(s, args, mock_pid)
    finally:
        for s in subjects:
            await s.close()
    results = []
    for s in subjects:
        s.out["errors"] = s.errors.to_json()
        results.append(s.out)
    return results + skipped


def print_report(machine: dict, args: argparse.Namespace, results: list[dict]) -> None:
    print("=" * 112)
    print(f"upstream HTTP client comparison against the mock upstream (loopback, {args.loop} loop, client in one process, "
          f"mock in another)")
    print(f"machine: nproc={machine['nproc']}  cpu={machine['cpu_model']}  {machine['implementation']} {machine['python']}  "
          f"loadavg at start={' '.join(f'{x:.2f}' for x in machine['loadavg_at_start'])}")
    print(f"c=1: {args.requests} requests per client after {args.warmup} warm-up, clients interleaved in blocks of 50; c={args.concurrency}: {args.duration:g} s after "
          f"{args.warmup_s:g} s warm-up; body {len(chat_body('bench-model'))} bytes")
    print("=" * 112)
    print(f"{'client':<24}{'c=1 p50 ms':>11}{'p99 ms':>9}{'CPU µs/req':>12}"
          f"{'c=' + str(args.concurrency) + ' req/s':>13}{'p50 ms':>9}{'p99 ms':>9}{'CPU µs/req':>12}{'core':>7}"
          f"{'mock µs/req':>13}{'others':>8}{'errors':>8}")
    for r in results:
        if "skipped" in r:
            print(f"{r['client']:<24}  skipped: {r['skipped']}")
            continue
        c1, cn = r["c1"], r["cN"]
        print(f"{r['client']:<24}{c1['latency'].get('p50', float('nan')):>11.3f}{c1['latency'].get('p99', float('nan')):>9.3f}"
              f"{c1['client_cpu_us_per_req']:>12.0f}{cn['rps']:>13.0f}{cn['latency'].get('p50', float('nan')):>9.2f}"
              f"{cn['latency'].get('p99', float('nan')):>9.2f}{cn['client_cpu_us_per_req']:>12.0f}"
              f"{cn['client_core_share'] * 100:>6.0f}%{cn['mock_cpu_us_per_req']:>13.0f}{cn['other_cores']:>8.2f}"
              f"{r['errors']['total']:>8}")
    print("(CPU µs/req = this process's CPU per request; core = share of one core it used at c=N; mock µs/req from"
          " /proc/<pid>/stat;\n others = cores used by other processes on the machine during the c=N window: noise)")
    total = sum(r.get("errors", {}).get("total", 0) for r in results)
    if total:
        print(f"\nRUN HAD {total} ERRORS — these figures are NOT a clean measurement:")
        for r in results:
            e = r.get("errors")
            if e and e["total"]:
                print(f"- {r['client']}: {e['by_kind']}")
                for s in e["samples"]:
                    print(f"    {s}")
    else:
        print("\nerrors: none (every response was a 200 chat completion)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=2000, help="c=1 requests per client (default 2000)")
    ap.add_argument("--warmup", type=int, default=200, help="c=1 warm-up requests per client (default 200)")
    ap.add_argument("--duration", type=float, default=3.0, help="seconds of the c=N phase per client (default 3)")
    ap.add_argument("--warmup-s", type=float, default=0.5, help="warm-up seconds before the c=N window (default 0.5)")
    ap.add_argument("--concurrency", type=int, default=64, help="concurrent requests in the c=N phase (default 64)")
    ap.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop", help="event loop (default uvloop, as the gateway)")
    ap.add_argument("--only", action="append", help="measure only clients whose name contains this (repeatable)")
    ap.add_argument("--json", action="store_true", help="also print the results as one JSON object")
    args = ap.parse_args(argv)
    if args.requests < 1 or args.duration <= 0 or args.concurrency < 1:
        ap.error("--requests, --duration and --concurrency must be positive")

    machine = machine_info()
    workdir = Path(tempfile.mkdtemp(prefix="modelyard-clients-"))
    mock = Child("mock", [sys.executable, "-m", "modelyard.testing.mock_upstream", "--host", "127.0.0.1", "--port", "0"], workdir)
    try:
        url = mock.wait_for(r"MOCK_LISTENING (http://\S+)", 30).group(1)
        if args.loop == "uvloop":
            import uvloop

            runner = uvloop.run
        else:
            runner = asyncio.run
        results = runner(run_all(url, args, mock.pid))
    finally:
        mock.stop()
        for p in workdir.iterdir():
            p.unlink()
        workdir.rmdir()
    print_report(machine, args, results)
    if args.json:
        print(json.dumps({"machine": machine, "args": vars(args), "results": results}))
    return 1 if any(r.get("errors", {}).get("total", 0) for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
