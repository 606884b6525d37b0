"""What a Redis-backed rate limit costs per request: redis-py (redis.asyncio) vs modelyard's own
RESP client (``modelyard.limits.resp``), the same ``RedisLimiter`` on both.

For each variant, on uvloop as the gateway runs, with two scopes per request (a key and a model,
limits high enough that everything is admitted, as in a healthy gateway):

* ``acquire``: one admission per request;
* ``acquire+settle``: an admission, then its settle with a different token count (the refund
  path, as a real response makes it);

each sequentially (one at a time: the c=1 cost, wall time = latency) and at ``--concurrency``
(default 64) workers. Reported per request: CPU of this process (``time.process_time``), wall
time, and Redis's own CPU (``INFO cpu`` before and after: the server shares the machine with the
gateway in ``bench/gateway.py``).

Variants:

* ``redis-py``: today's ``RedisLimiter`` on ``redis.asyncio`` (blocking pool of 64 connections, 1 s
  timeouts, one retry, hiredis installed: how ``limits.redis`` used redis-py before), commands that
  must go together sent as one non-transactional redis-py pipeline;
* ``resp, settle awaited``: on ``RespClient``, each settle its own EVALSHA, awaited (the plain
  pipelined way): what queueing settles saves;
* ``resp``: on ``RespClient``, as the gateway runs it (settles queued, sent ahead of the next
  acquire);
* ``previous`` (with ``--previous FILE``): the limiter module of an earlier version, e.g.
  ``git show eb00ae1:src/modelyard/limits/redis.py > /tmp/prev.py`` (redis-py, a script that reads
  every bucket, a settle round trip per request): the figures before ``RespClient``.

Steady state: before measuring, each scope's hash gets a full window of buckets (60 one-second
buckets of requests and tokens), as a scope under constant traffic has; an empty hash would hide
what reading the window costs. Keys are written under ``modelyard:bench:rl:<random>:`` and deleted
at the end.

Usage: ``.venv/bin/python bench/redis_limiter.py [--url redis://127.0.0.1:6379/0] [--requests 20000]
[--concurrency 64] [--connections 2] [--previous FILE] [--json]``
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import platform
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import redis
import redis.asyncio as aioredis
import uvloop
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from modelyard.limits.base import Limit, Window
from modelyard.limits.base import Reservation, check_args
from modelyard.limits.redis import _SETTLE, RedisLimiter, redis_client
from modelyard.limits.resp import NoScriptError, RespConnectionError, RespReplyError

SCOPES = [("key:bench", Limit(rpm=10**9, tpm=10**12)), ("model:bench", Limit(rpm=10**9, tpm=10**12))]
ESTIMATE, ACTUAL = 200, 60


class RedisPy:
    """redis.asyncio behind the calls ``RedisLimiter`` makes on its client, configured as before."""

    def __init__(self, url: str) -> None:
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=64, timeout=1.0, socket_timeout=1.0, socket_connect_timeout=1.0, retry=Retry(NoBackoff(), 1)
        )
        self.redis = aioredis.Redis.from_pool(pool)
        self._tasks: set[asyncio.Task[None]] = set()

    def send_many(self, commands: Sequence[Sequence[Any]]) -> list[asyncio.Future[Any]]:
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[Any]] = [loop.create_future() for _ in commands]
        task = loop.create_task(self._run(commands, futures))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return futures

    async def _run(self, commands: Sequence[Sequence[Any]], futures: list[asyncio.Future[Any]]) -> None:
        try:
            if len(commands) == 1:
                results: list[Any] = [await self.redis.execute_command(*commands[0])]
            else:
                pipe = self.redis.pipeline(transaction=False)
                for command in commands:
                    pipe.execute_command(*command)
                results = await pipe.execute(raise_on_error=False)
        except redis.RedisError as exc:
            results = [exc] * len(commands)
        for fut, result in zip(futures, results, strict=True):
            if fut.done():
                continue
            if isinstance(result, redis.exceptions.NoScriptError):
                fut.set_exception(NoScriptError(f"NOSCRIPT {result}"))
            elif isinstance(result, redis.ResponseError):
                fut.set_exception(RespReplyError(str(result)))
            elif isinstance(result, redis.RedisError):
                fut.set_exception(RespConnectionError(str(result)))
            else:
                fut.set_result(result)

    async def execute_many(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        return [await fut for fut in self.send_many(commands)]

    async def aclose(self) -> None:
        await self.redis.aclose()


class AwaitedSettle(RedisLimiter):
    """Each settle as its own EVALSHA of the settle script, awaited (the alternative to queueing)."""

    __slots__ = ()

    async def settle(self, reservation: Reservation, actual_tokens: int) -> None:
        check_args((), actual_tokens)
        if reservation.settled:
            return
        reservation.settled = True
        delta = actual_tokens - reservation.estimated_tokens
        if delta:
            keys = [self._prefix + name for name in reservation.scopes]
            args = [*self._consts, self._now(), len(keys), reservation.bucket, max(0, -delta), max(0, delta)]
            await self._redis.run_script(_SETTLE, keys, args)


def redis_cpu_s(sync: redis.Redis) -> float:
    info = sync.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def fill_window(sync: redis.Redis, prefix: str) -> None:
    """A full window of buckets per scope, ending at the server's current second."""
    now = int(sync.time()[0])
    for name, _ in SCOPES:
        fields: dict[str, int] = {}
        for b in range(now - 59, now + 1):
            fields[f"r{b}"] = 20
            fields[f"t{b}"] = 20 * ESTIMATE
        sync.hset(prefix + name, mapping=fields)
        sync.pexpire(prefix + name, Window().ttl_ms)


async def measure(op: Callable[[], Awaitable[None]], total: int, concurrency: int, sync: redis.Redis) -> dict[str, float]:
    for _ in range(200):  # warm-up: connections, scripts loaded, hashes recounted
        await op()
    redis0 = redis_cpu_s(sync)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    if concurrency == 1:
        for _ in range(total):
            await op()
    else:
        per = total // concurrency

        async def worker() -> None:
            for _ in range(per):
                await op()

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        total = per * concurrency
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    return {"cpu_us": cpu / total * 1e6, "wall_us": wall / total * 1e6, "redis_cpu_us": (redis_cpu_s(sync) - redis0) / total * 1e6,
            "per_s": total / wall}


async def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    sync = redis.Redis.from_url(args.url)
    base = f"modelyard:bench:rl:{uuid.uuid4().hex}:"
    # (name, make limiter, settles awaited one by one)
    variants: list[tuple[str, Callable[[str], Any], bool]] = [
        ("redis-py", lambda prefix: RedisLimiter(RedisPy(args.url), prefix=prefix, owns_client=True), False),  # type: ignore[arg-type]
        ("resp, settle awaited", lambda prefix: AwaitedSettle(
            redis_client(args.url, connections=args.connections), prefix=prefix, owns_client=True), True),
        ("resp", lambda prefix: RedisLimiter(redis_client(args.url, connections=args.connections), prefix=prefix, owns_client=True), False),
    ]
    if args.previous:
        spec = importlib.util.spec_from_file_location("previous_redis_limiter", args.previous)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        variants.insert(0, ("previous", lambda prefix: module.RedisLimiter.from_url(args.url, prefix=prefix), False))
    rows: list[dict[str, Any]] = []
    try:
        for name, make, awaited in variants:
            for concurrency in (1, args.concurrency):
                for what in ("acquire", "acquire+settle"):
                    if awaited and what == "acquire":
                        continue  # the same as "resp"
                    prefix = f"{base}{len(rows)}:"
                    fill_window(sync, prefix)
                    limiter = make(prefix)

                    async def op(limiter: Any = limiter, settle: bool = what != "acquire") -> None:
                        decision, reservation = await limiter.acquire(SCOPES, ESTIMATE)
                        assert decision.allowed and reservation is not None
                        if settle:
                            await limiter.settle(reservation, ACTUAL)

                    try:
                        total = args.requests if concurrency > 1 else args.requests // 4
                        result = await measure(op, total, concurrency, sync)
                    finally:
                        await limiter.aclose()
                    rows.append({"variant": name, "concurrency": concurrency, "op": what, **result})
                    if not args.json:
                        print(f"{name:>20}  c={concurrency:<3} {what:<15} CPU {result['cpu_us']:6.1f} µs   "
                              f"wall {result['wall_us']:6.1f} µs   Redis CPU {result['redis_cpu_us']:6.1f} µs   "
                              f"{result['per_s']:7.0f}/s", flush=True)
    finally:
        keys = list(sync.scan_iter(match=base + "*", count=1000))
        if keys:
            sync.delete(*keys)
        sync.close()
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", default="redis://127.0.0.1:6379/0")
    ap.add_argument("--requests", type=int, default=20_000, help="requests per concurrent phase (a quarter of it sequentially)")
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--connections", type=int, default=2, help="RespClient connections")
    ap.add_argument("--previous", default=None, metavar="FILE", help="an earlier limits/redis.py to measure too")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    sync = redis.Redis.from_url(args.url)
    server = sync.info("server")["redis_version"]
    sync.close()
    if not args.json:
        print(f"Python {platform.python_version()}, uvloop, Redis {server} at {args.url}; 2 scopes, "
              f"window pre-filled; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    rows = uvloop.run(run(args))
    if args.json:
        json.dump({"python": platform.python_version(), "redis": server, "rows": rows}, sys.stdout, indent=1)
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
