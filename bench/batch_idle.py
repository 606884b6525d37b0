"""The Batch API on idle capacity: interactive p99 with vs without a batch, and the batch's throughput.

    flock /tmp/modelyard-bench.lock .venv/bin/python bench/batch_idle.py [--items 10000] [--chat 60]
        [--gap-ms 400] [--concurrency 16] [--offline-concurrency 32] [--out bench/results/batch_idle-DATE.txt]

A real ``modelyard serve`` over the embedded ``chat`` (SmolLM2-135M, llama.cpp) and
``text-embedding`` (all-MiniLM-L6-v2) on this machine, SQLite spend rows, the batch runner's
defaults except ``per_model`` concurrency (``--concurrency``) for the embeddings model. Four phases on the same items:

1. **offline limit**: the ``--items`` embedding requests (one short text each) sent straight to
   ``/v1/embeddings`` at ``--offline-concurrency`` concurrent clients — the most the machine does;
2. **batch, idle**: the same items as one batch, nothing else running: items/s from
   ``in_progress_at`` to ``completed_at`` (target ≥ 80 % of 1.);
3. **interactive alone**: ``--chat`` chat completions (max_tokens 16), one at a time with an
   exponential gap of mean ``--gap-ms`` between one's answer and the next request (a user, or a
   few): latency p50/p99;
4. **interactive with the batch**: the same chat sequence while a batch of the same items runs
   (target: p99 within 10 % of 3.); the batch's progress during it is reported too.

Loopback only; every process is stopped at the end. Figures depend on what else the machine runs
(the load average at start is printed): compare within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import io
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE.parent / "src"))
from gateway import machine_info  # noqa: E402
from integration.support import ProcessPool  # noqa: E402

from modelyard.registry.artifacts import ArtifactStore  # noqa: E402
from modelyard.registry.defaults import import_defaults  # noqa: E402

WORDS = "the a cat dog sat ran on under mat tree house river quick slow red blue green model token batch".split()


def texts(n: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 14))) for _ in range(n)]


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


async def offline(url: str, items: list[str], concurrency: int) -> float:
    q = list(items)
    errors = 0
    async with httpx.AsyncClient(base_url=url, timeout=120) as c:
        async def worker() -> None:
            nonlocal errors
            while q:
                t = q.pop()
                r = await c.post("/v1/embeddings", json={"model": "text-embedding", "input": t})
                errors += r.status_code != 200
        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        dt_s = time.perf_counter() - t0
    if errors:
        raise SystemExit(f"offline phase: {errors} errors")
    return len(items) / dt_s


def batch_file(items: list[str]) -> bytes:
    return b"".join(json.dumps({"custom_id": f"i{i}", "method": "POST", "url": "/v1/embeddings",
                                "body": {"model": "text-embedding", "input": t}}).encode() + b"\n"
                    for i, t in enumerate(items))


def start_batch(client: Any, items: list[str]) -> str:
    f = client.files.create(file=("bench.jsonl", io.BytesIO(batch_file(items))), purpose="batch")
    return client.batches.create(input_file_id=f.id, endpoint="/v1/embeddings", completion_window="24h").id


def wait_batch(client: Any, bid: str, timeout: float = 3600) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        b = client.batches.retrieve(bid)
        if b.status in ("completed", "failed", "cancelled", "expired"):
            return b
        time.sleep(0.2)
    raise SystemExit(f"batch {bid} did not finish in {timeout:g}s")


async def chat_load(url: str, n: int, gap_ms: float, seed: int = 11) -> list[float]:
    rng = random.Random(seed)
    lat = []
    async with httpx.AsyncClient(base_url=url, timeout=120) as c:
        for i in range(n):
            await asyncio.sleep(rng.expovariate(1000 / gap_ms))
            t0 = time.perf_counter()
            r = await c.post("/v1/chat/completions", json={
                "model": "chat", "max_tokens": 16, "temperature": 0,
                "messages": [{"role": "user", "content": f"Write one sentence about the number {i}."}]})
            lat.append(time.perf_counter() - t0)
            if r.status_code != 200:
                raise SystemExit(f"chat: {r.status_code} {r.text[:200]}")
    return lat


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=10_000)
    ap.add_argument("--chat", type=int, default=60, help="interactive chat requests per phase")
    ap.add_argument("--gap-ms", type=float, default=400.0)
    ap.add_argument("--concurrency", type=int, default=16, help="the batch runner's items at once (batch.per_model)")
    ap.add_argument("--offline-concurrency", type=int, default=32, help="clients of the offline limit")
    ap.add_argument("--out", type=Path, default=HERE / "results" / f"batch_idle-{dt.date.today().isoformat()}.txt")
    args = ap.parse_args()
    info = machine_info()
    with tempfile.TemporaryDirectory(prefix="batch-idle-") as tmp:
        home = Path(tmp) / "home"
        import_defaults(ArtifactStore(home / "artifacts"), names=["chat", "text-embedding"])
        pool = ProcessPool(Path(tmp))
        try:
            gw = pool.gateway({
                "memory": {"data_dir": str(home)},
                "server": {"access_log": False},
                "router": {"timeout_s": 300, "queue": {"size": 4096, "ttl_s": 300}},
                "batch": {"per_model": {"text-embedding": args.concurrency}, "poll_interval_s": 0.1},
                "models": [
                    {"name": "chat", "deployments": [{"kind": "local", "artifact": "chat", "n_ctx": 1024,
                                                      "n_parallel": 2, "keep_alive_s": 3600}]},
                    {"name": "text-embedding", "deployments": [{"kind": "local", "artifact": "text-embedding",
                                                                "keep_alive_s": 3600}]},
                ],
            })
            client = gw.client(timeout=120)
            items = texts(args.items)
            # warm both models (loads are not part of any figure)
            asyncio.run(offline(gw.url, items[:64], 4))
            asyncio.run(chat_load(gw.url, 2, 1))
            off = asyncio.run(offline(gw.url, items, args.offline_concurrency))
            b = wait_batch(client, start_batch(client, items))
            idle = b.request_counts.completed / max(1e-9, b.completed_at - b.in_progress_at) if b.completed_at else 0.0
            assert b.request_counts.completed == args.items, b
            alone = asyncio.run(chat_load(gw.url, args.chat, args.gap_ms))
            bid = start_batch(client, items)
            with_batch = asyncio.run(chat_load(gw.url, args.chat, args.gap_ms))
            during = client.batches.retrieve(bid).request_counts.completed
            b2 = wait_batch(client, bid)
        finally:
            pool.close()
    p99a, p99b = pct(alone, 99), pct(with_batch, 99)
    lines = [
        f"# bench/batch_idle.py  {dt.datetime.now().isoformat(timespec='seconds')}",
        f"machine: {info['nproc']} cores, {info['cpu_model']}, load average at start {info['loadavg_at_start']}",
        f"items: {args.items} embeddings (6-14 words each); chat: {args.chat} requests, max_tokens 16, "
        f"mean gap {args.gap_ms:g} ms; batch concurrency {args.concurrency}",
        "",
        f"offline limit (straight to /v1/embeddings, c={args.offline_concurrency}): {off:8.1f} items/s",
        f"batch while idle (in_progress -> completed):            {idle:8.1f} items/s  = {idle / off:.0%} of the limit "
        f"(target >= 80%)",
        "",
        f"interactive chat alone:      p50 {statistics.median(alone) * 1000:7.1f} ms  p99 {p99a * 1000:7.1f} ms",
        f"interactive chat with batch: p50 {statistics.median(with_batch) * 1000:7.1f} ms  p99 {p99b * 1000:7.1f} ms  "
        f"= {p99b / p99a:.2f}x (target <= 1.10x)",
        f"batch items done during the interactive phase: {during} of {args.items} "
        f"(the rest after it: status {b2.status}, {b2.request_counts.completed} completed)",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
