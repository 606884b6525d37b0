"""``RedisBudgets`` (modelyard.limits.budget) against a REAL Redis: seeding from the spend store
once, ``INCRBY`` only on a seeded counter, one counter shared by replicas, and Redis down (fail
open → 0, fail closed → ``LimiterUnavailableError``). Skipped without Redis, failed under CI=true.

``add`` never awaits (it is called where the spend row is written); ``aclose`` waits for the adds in
flight without closing the client, which is how these tests wait for them.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis

from modelyard.auth.keys import new_key
from modelyard.limits.base import LimiterUnavailableError
from modelyard.limits.budget import RedisBudgets
from modelyard.limits.redis import redis_client
from modelyard.limits.resp import RespClient

UTC = dt.timezone.utc
T0 = dt.datetime(2026, 1, 31, 12, tzinfo=UTC)
NOW = T0 + dt.timedelta(hours=1)


def _key(**kw: Any):  # noqa: ANN202
    _, key = new_key(now=T0, **kw)
    return key


class Store:
    """The spend store's per-period sums, counting the queries."""

    def __init__(self, value: int = 0, delay_s: float = 0.0) -> None:
        self.value = value
        self.delay_s = delay_s
        self.calls: list[tuple[str, dt.datetime]] = []

    async def __call__(self, key_id: str, since: dt.datetime) -> int:
        self.calls.append((key_id, since))
        await asyncio.sleep(self.delay_s)
        return self.value


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[RespClient]:
    c = redis_client(redis_url)
    yield c
    await c.aclose()


@pytest.fixture
def prefix(redis_prefix: str) -> str:
    return redis_prefix + "budget:"


def _counter(url: str, prefix: str, key_id: str, start: dt.datetime) -> tuple[bytes | None, int]:
    sync = redis.Redis.from_url(url)
    try:
        name = f"{prefix}{key_id}:{(start - dt.datetime(1970, 1, 1, tzinfo=UTC)) // dt.timedelta(microseconds=1)}"
        return sync.get(name), sync.ttl(name)
    finally:
        sync.close()


async def test_seeded_once_then_counted_in_redis(client: RespClient, prefix: str, redis_url: str) -> None:
    store = Store(1_000, delay_s=0.05)
    b = RedisBudgets(client, store, prefix=prefix)
    k = _key(max_budget=1, budget_duration="1d")
    assert await asyncio.gather(*(b.spent(k, NOW) for _ in range(5))) == [1_000] * 5
    assert store.calls == [(k.id, T0)]  # single-flight, from the period's start
    value, ttl = _counter(redis_url, prefix, k.id, T0)
    assert value == b"1000" and 86_400 < ttl <= 2 * 86_400  # expires a day after the period
    b.add(k, 7, NOW)
    b.add(k, 3, NOW)
    b.add(k, 0, NOW)  # nothing to charge
    await b.aclose()
    assert await b.spent(k, NOW) == 1_010 and len(store.calls) == 1
    tomorrow = T0 + dt.timedelta(days=1, hours=1)  # a new period: a new counter, seeded again
    store.value = 5
    assert await b.spent(k, tomorrow) == 5 and store.calls[-1] == (k.id, T0 + dt.timedelta(days=1))


async def test_add_before_seeding_is_dropped(client: RespClient, prefix: str, redis_url: str) -> None:
    """An absent counter is not created by an add: the next seed reads that row from the store."""
    store = Store(250)
    b = RedisBudgets(client, store, prefix=prefix)
    k = _key(max_budget=1)
    b.add(k, 40, NOW)
    await b.aclose()
    assert _counter(redis_url, prefix, k.id, T0) == (None, -2)
    assert await b.spent(k, NOW) == 250  # the store's sum (which includes the 40 once written)


async def test_two_replicas_share_one_counter(redis_url: str, prefix: str) -> None:
    c1, c2 = redis_client(redis_url), redis_client(redis_url)
    s1, s2 = Store(100, delay_s=0.02), Store(999, delay_s=0.02)  # the second store is "behind"
    b1, b2 = RedisBudgets(c1, s1, prefix=prefix), RedisBudgets(c2, s2, prefix=prefix)
    k = _key(max_budget=1, budget_duration="30d")
    try:
        both = await asyncio.gather(b1.spent(k, NOW), b2.spent(k, NOW))  # both seed: SET NX, one wins
        assert both[0] == both[1] and both[0] in (100, 999)
        b2.add(k, 11, NOW)
        await b2.aclose()
        assert await b1.spent(k, NOW) == both[0] + 11
        b1.add(k, 4, NOW)
        await b1.aclose()
        assert await b2.spent(k, NOW) == both[0] + 15
    finally:
        await c1.aclose()
        await c2.aclose()


async def test_add_recovers_from_noscript(client: RespClient, prefix: str) -> None:
    b = RedisBudgets(client, Store(10), prefix=prefix)
    k = _key(max_budget=1)
    assert await b.spent(k, NOW) == 10
    await client.execute("SCRIPT", "FLUSH")
    b.add(k, 5, NOW)  # EVALSHA → NOSCRIPT → SCRIPT LOAD + EVALSHA, in the background
    await b.aclose()
    assert await b.spent(k, NOW) == 15


def _dead_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"redis://127.0.0.1:{s.getsockname()[1]}/0"


async def test_redis_down_fail_open_counts_zero(caplog: pytest.LogCaptureFixture) -> None:
    c = redis_client(_dead_url(), timeout_s=0.5)
    store = Store(500)
    b = RedisBudgets(c, store, prefix="modelyard:test:unused:", fail_open=True)
    k = _key(max_budget=1)
    try:
        with caplog.at_level(logging.WARNING, logger="modelyard.budget"):
            assert await b.spent(k, NOW) == 0
            b.add(k, 5, NOW)  # logged, never raised
            await b.aclose()
        assert "budget counters in Redis unavailable: RespConnectionError" in caplog.text
        assert store.calls == []  # the counter was not even read: no seeding
    finally:
        await c.aclose()


async def test_redis_down_fail_closed_raises() -> None:
    c = redis_client(_dead_url(), timeout_s=0.5)
    b = RedisBudgets(c, Store(500), prefix="modelyard:test:unused:", fail_open=False)
    try:
        with pytest.raises(LimiterUnavailableError, match="budget counters unavailable: RespConnectionError") as info:
            await b.spent(_key(max_budget=1), NOW)
        assert info.value.status == 503
    finally:
        await b.aclose()
        await c.aclose()
