"""Request priorities at saturation: high-priority p99 ≤ 1/3 of low-priority p99 (issue 11 §2).

    flock /tmp/modelyard-bench.lock .venv/bin/python bench/priorities.py [--mode admission|e2e|both]
        [--rho 0.95,1.0,1.1] [--duration 20] [--cap 4] [--high-share 0.3] [--aging 2.0] [--json PATH]

Workload (both modes): open-loop Poisson arrivals at ``rho`` × the model's capacity
(``cap`` / mean service time), ``high-share`` of them high priority (interactive traffic), the
rest low (batch). ρ = 1.0 is saturation: the queue never drains. Every run is done twice on the
same arrival sequence: **FIFO** (every request normal: what admission did before priorities) and
**priority** (high / low as sent). Requests arriving in the first 10 % of the window are warm-up
and not counted; arrivals stop at ``duration`` and the queue drains (every request completes:
queue size and TTL are set so that nothing is refused, and any refusal is counted and printed).

1. ``admission``: the real ``routing.admission.Admission`` in this process, each admitted request
   holding its slot for a service time drawn from a chat-like model — 5 ms + output tokens ×
   0.5 ms, tokens lognormal (median 60, σ 0.8, at most 512): median ≈ 35 ms, p99 ≈ 190 ms (a
   time-scaled LLM: long answers are rare but long).
2. ``e2e``: a real ``modelyard serve`` (master key, SQLite, access log) over the mock upstream
   (``--behavior slow:<service-ms>``: fixed service time), model ``bench-model`` capped by
   ``queue.max_concurrency: cap``; two virtual keys made through ``POST /key/generate``, one
   ``priority: high`` and one ``priority: low`` (``--via header``: one key with
   ``allow_priority_header`` sending ``x-priority``). The client is httpx in this process.

Printed: p50 / p99 / max latency (arrival → response) per level, the ratio high p99 / low p99
(target ≤ 1/3), the achieved utilisation, the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))
from gateway import BENCH_MASTER, Child, machine_info  # noqa: E402

from modelyard.errors import OverloadedError  # noqa: E402
from modelyard.routing.admission import Admission  # noqa: E402

TARGET_RATIO = 1 / 3
HIGH, NORMAL, LOW = 2, 1, 0
WARMUP_SHARE = 0.1


# --- workload --------------------------------------------------------------------------------


def chat_service_s(rng: random.Random) -> float:
    tokens = min(512.0, math.exp(rng.gauss(math.log(60.0), 0.8)))
    return 0.005 + tokens * 0.0005


def mean_service_s(seed: int = 1) -> float:
    rng = random.Random(seed)
    return statistics.fmean(chat_service_s(rng) for _ in range(200_000))


def arrivals(rate: float, duration: float, high_share: float, seed: int) -> list[tuple[float, int]]:
    """(arrival offset s, level) of a Poisson process of ``rate`` per second."""
    rng = random.Random(seed)
    out, t = [], 0.0
    while True:
        t += rng.expovariate(rate)
        if t >= duration:
            return out
        out.append((t, HIGH if rng.random() < high_share else LOW))


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


def summarize(lat: dict[int, list[float]], refused: int, busy_s: float, elapsed: float, cap: int) -> dict[str, Any]:
    out: dict[str, Any] = {"refused": refused, "utilisation": busy_s / (elapsed * cap) if elapsed > 0 else 0.0}
    for level, name in ((HIGH, "high"), (LOW, "low")):
        xs = lat[level]
        out[name] = {"n": len(xs), "p50_ms": pct(xs, 0.5) * 1e3, "p99_ms": pct(xs, 0.99) * 1e3,
                     "max_ms": max(xs, default=float("nan")) * 1e3}
    out["ratio"] = out["high"]["p99_ms"] / out["low"]["p99_ms"]
    return out


# --- 1. the admission queue alone ------------------------------------------------------------


async def admission_run(plan: list[tuple[float, int]], services: list[float], *, cap: int, aging: float | None,
                        prioritized: bool, duration: float) -> dict[str, Any]:
    adm = Admission("bench", max_concurrency=cap, queue_size=1_000_000, ttl_s=3600.0, aging_s=aging)
    lat: dict[int, list[float]] = {HIGH: [], LOW: []}
    refused = 0
    busy = 0.0
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    warm = duration * WARMUP_SHARE

    async def one(offset: float, level: int, service: float) -> None:
        nonlocal refused, busy
        start = loop.time()
        try:
            await adm.acquire(level if prioritized else NORMAL)
        except OverloadedError:
            refused += 1
            return
        try:
            await asyncio.sleep(service)
        finally:
            adm.release()
        end = loop.time()
        busy += service
        if offset >= warm:
            lat[level].append(end - start)

    tasks = []
    for (offset, level), service in zip(plan, services, strict=True):
        delay = t0 + offset - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(offset, level, service)))
    await asyncio.gather(*tasks)
    return summarize(lat, refused, busy, loop.time() - t0, cap)


def admission_mode(args: argparse.Namespace) -> list[dict[str, Any]]:
    mean_s = mean_service_s()
    results = []
    for rho in args.rho:
        rate = rho * args.cap / mean_s
        plan = arrivals(rate, args.duration, args.high_share, seed=args.seed)
        rng = random.Random(args.seed + 1)
        services = [chat_service_s(rng) for _ in plan]
        row: dict[str, Any] = {"mode": "admission", "rho": rho, "rate": rate, "requests": len(plan),
                               "mean_service_ms": mean_s * 1e3}
        for policy, prioritized in (("fifo", False), ("priority", True)):
            print(f"admission rho={rho} {policy} ({len(plan)} requests, {args.duration:g} s)...", file=sys.stderr)
            row[policy] = asyncio.run(admission_run(plan, services, cap=args.cap, aging=args.aging,
                                                    prioritized=prioritized, duration=args.duration))
        results.append(row)
    return results


# --- 2. end to end through a real gateway ----------------------------------------------------


def _post_json(url: str, body: dict[str, Any], token: str) -> dict[str, Any]:
    import urllib.request

    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"authorization": f"Bearer {token}", "content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


async def e2e_run(url: str, plan: list[tuple[float, int]], headers: dict[int, dict[str, str]], *, duration: float,
                  cap: int, service_s: float, concurrency_limit: int) -> dict[str, Any]:
    import httpx

    body = json.dumps({"model": "bench-model", "max_tokens": 16,
                       "messages": [{"role": "user", "content": "Summarise the attached notes in one line."}]})
    lat: dict[int, list[float]] = {HIGH: [], LOW: []}
    errors: dict[str, int] = {}
    done = 0
    warm = duration * WARMUP_SHARE
    limits = httpx.Limits(max_connections=concurrency_limit, max_keepalive_connections=concurrency_limit)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=httpx.Timeout(300.0, pool=300.0)) as client:
        # warm the connection pool (and the gateway) outside the measured plan
        await asyncio.gather(*(client.post("/v1/chat/completions", content=body, headers=headers[LOW]) for _ in range(cap)))
        loop = asyncio.get_running_loop()
        t0 = loop.time()

        async def one(offset: float, level: int) -> None:
            nonlocal done
            start = loop.time()
            try:
                r = await client.post("/v1/chat/completions", content=body, headers=headers[level])
            except httpx.HTTPError as exc:
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                return
            if r.status_code != 200:
                errors[str(r.status_code)] = errors.get(str(r.status_code), 0) + 1
                return
            done += 1
            if offset >= warm:
                lat[level].append(loop.time() - start)

        tasks = []
        for offset, level in plan:
            delay = t0 + offset - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(offset, level)))
        await asyncio.gather(*tasks)
        elapsed = loop.time() - t0
    out = summarize(lat, sum(errors.values()), done * service_s, elapsed, cap)
    out["errors"] = errors
    return out


def e2e_mode(args: argparse.Namespace) -> list[dict[str, Any]]:
    work = Path(tempfile.mkdtemp(prefix="modelyard-prio-"))
    children: list[Child] = []
    results = []
    try:
        mock = Child("mock", [sys.executable, "-m", "modelyard.testing.mock_upstream", "--host", "127.0.0.1",
                              "--port", "0", "--behavior", f"slow:{args.service_ms:g}"], work)
        children.append(mock)
        mock_url = mock.wait_for(r"MOCK_LISTENING (http://\S+)", 30).group(1)
        cfg = work / "gw.yaml"
        cfg.write_text(
            "server: {host: 127.0.0.1, access_log: true}\n"
            f"memory: {{data_dir: '{work / 'home'}'}}\n"
            f"auth: {{master_key: {BENCH_MASTER}}}\n"
            f"routing: {{priority: {{aging_s: {args.aging if args.aging is not None else 1e9}}}}}\n"
            "router: {retry: {num_retries: 0}}\n"
            "models:\n  - name: bench-model\n"
            f"    queue: {{max_concurrency: {args.cap}, size: 100000, ttl_s: 300}}\n"
            f"    deployments: [{{api_base: '{mock_url}/v1', model: bench-model}}]\n")
        gw = Child("gw", [sys.executable, "-m", "modelyard", "serve", "--config", str(cfg), "--port", "0"], work)
        children.append(gw)
        url = gw.wait_for(r"modelyard listening on (http://\S+)", 90).group(1)
        gen = f"{url}/key/generate"
        if args.via == "header":
            key = _post_json(gen, {"key_alias": "prio-bench", "allow_priority_header": True}, BENCH_MASTER)["key"]
            headers = {lvl: {"authorization": f"Bearer {key}", "content-type": "application/json", "x-priority": name}
                       for lvl, name in ((HIGH, "high"), (LOW, "low"), (NORMAL, "normal"))}
        else:
            keys = {lvl: _post_json(gen, {"key_alias": f"prio-{name}", "priority": name}, BENCH_MASTER)["key"]
                    for lvl, name in ((HIGH, "high"), (LOW, "low"), (NORMAL, "normal"))}
            headers = {lvl: {"authorization": f"Bearer {k}", "content-type": "application/json"} for lvl, k in keys.items()}
        # capacity as the gateway delivers it: the mock's delay plus the path's own cost, measured
        # by one closed loop of cap clients before the runs
        cap_s = asyncio.run(_measure_service(url, headers[NORMAL], args.cap))
        for rho in args.rho:
            rate = rho * args.cap / cap_s
            plan = arrivals(rate, args.duration, args.high_share, seed=args.seed)
            row: dict[str, Any] = {"mode": f"e2e ({args.via})", "rho": rho, "rate": rate, "requests": len(plan),
                                   "mean_service_ms": cap_s * 1e3}
            for policy in ("fifo", "priority"):
                hdrs = headers if policy == "priority" else {HIGH: headers[NORMAL], LOW: headers[NORMAL]}
                print(f"e2e rho={rho} {policy} ({len(plan)} requests, {args.duration:g} s)...", file=sys.stderr)
                row[policy] = asyncio.run(e2e_run(url, plan, hdrs, duration=args.duration, cap=args.cap,
                                                  service_s=cap_s, concurrency_limit=4096))
            results.append(row)
    finally:
        for c in reversed(children):
            c.stop()
    return results


async def _measure_service(url: str, headers: dict[str, str], cap: int, n: int = 200) -> float:
    """Seconds per request per slot: ``cap`` clients back to back, ``n`` requests in all."""
    import httpx

    body = json.dumps({"model": "bench-model", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]})
    async with httpx.AsyncClient(base_url=url, timeout=60.0) as client:
        left = n

        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                r = await client.post("/v1/chat/completions", content=body, headers=headers)
                r.raise_for_status()

        await asyncio.gather(*(worker() for _ in range(cap)))  # warm-up
        left = n
        t = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(cap)))
        return (time.perf_counter() - t) * cap / n


# --- report ----------------------------------------------------------------------------------


def report(rows: list[dict[str, Any]], args: argparse.Namespace, machine: dict[str, Any]) -> bool:
    print(f"machine: {machine['nproc']} cores, {machine['cpu_model']}, Python {machine['python']}, "
          f"load at start {machine['loadavg_at_start']}")
    print(f"cap {args.cap} in flight, {args.high_share:.0%} of arrivals high, the rest low; aging_s {args.aging}; "
          f"{args.duration:g} s of arrivals per run (first {WARMUP_SHARE:.0%} not counted)")
    print("\n| mode | ρ | policy | util | high n | high p50 / p99 / max ms | low n | low p50 / p99 / max ms "
          "| high p99 / low p99 | refused |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    ok = True
    for row in rows:
        for policy in ("fifo", "priority"):
            r = row[policy]
            h, lo = r["high"], r["low"]
            mark = ""
            if policy == "priority":
                met = r["ratio"] <= TARGET_RATIO and r["refused"] == 0
                ok = ok and met
                mark = " ✓" if met else " ✗"
            print(f"| {row['mode']} | {row['rho']:.2f} | {policy} | {r['utilisation']:.2f} | {h['n']} | "
                  f"{h['p50_ms']:.0f} / {h['p99_ms']:.0f} / {h['max_ms']:.0f} | {lo['n']} | "
                  f"{lo['p50_ms']:.0f} / {lo['p99_ms']:.0f} / {lo['max_ms']:.0f} | **{r['ratio']:.3f}**{mark} | "
                  f"{r['refused']}{' ' + json.dumps(r['errors']) if r.get('errors') else ''} |")
    for row in rows:
        print(f"{row['mode']} ρ={row['rho']:.2f}: {row['rate']:.1f} arrivals/s, {row['requests']} requests, "
              f"mean service {row['mean_service_ms']:.1f} ms")
    print(f"target: high p99 ≤ 1/3 low p99 with priorities, no refusals → {'met' if ok else 'MISSED'}")
    return ok


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mode", choices=["admission", "e2e", "both"], default="both")
    ap.add_argument("--rho", type=lambda s: [float(x) for x in s.split(",")], default=[0.95, 1.0, 1.1])
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--cap", type=int, default=4)
    ap.add_argument("--high-share", type=float, default=0.3)
    ap.add_argument("--aging", type=lambda s: None if s == "none" else float(s), default=2.0,
                    help="aging_s (seconds per level; 'none': strict priority)")
    ap.add_argument("--service-ms", type=float, default=40.0, help="e2e: the mock's delay per request")
    ap.add_argument("--via", choices=["keys", "header"], default="keys", help="e2e: key priorities or x-priority")
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args(argv)
    machine = machine_info()
    rows: list[dict[str, Any]] = []
    if args.mode in ("admission", "both"):
        rows += admission_mode(args)
    if args.mode in ("e2e", "both"):
        rows += e2e_mode(args)
    ok = report(rows, args, machine)
    if args.json is not None:
        args.json.write_text(json.dumps({"machine": machine, "args": {k: v for k, v in vars(args).items() if k != "json"},
                                         "rows": rows}, indent=2, default=str))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
