"""Integration tests of the Redis limiter (modelyard.limits.redis) against a REAL Redis.

``MODELYARD_TEST_REDIS_URL`` (default ``redis://127.0.0.1:6379/0``) names the server. Without a
reachable Redis these tests skip, except under ``CI=true``, where a missing Redis fails them. Each
test uses its own key prefix and deletes its keys afterwards. Semantics tests inject the clock;
the cross-process test uses Redis's own TIME, as production does.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import queue
import socket
import uuid
from collections.abc import AsyncIterator

import pytest
import redis
from hypothesis import HealthCheck, given, settings, strategies as st

from modelyard.limits import Limit, LimiterUnavailableError, MemoryLimiter, RedisLimiter
from modelyard.limits.base import Reservation
from modelyard.limits.redis import ACQUIRE_LUA, _NOW, redis_client
from modelyard.limits.resp import RespClient, RespConnectionError, Target
from modelyard.testing.clock import ManualClock

from .services import redis_cleanup, require_redis
from .tcp_relay import TcpRelay


@pytest.fixture
def prefix(redis_prefix: str) -> str:
    return redis_prefix + "rl:"


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[RespClient]:
    c = redis_client(redis_url)
    yield c
    await c.aclose()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fields(url: str, key: str) -> dict[str, int]:
    """A scope's hash as {field: value}, read with a separate (sync redis-py) client."""
    sync = redis.Redis.from_url(url)
    try:
        return {f.decode(): int(v) for f, v in sync.hgetall(key).items()}
    finally:
        sync.close()


def _assert_totals_consistent(url: str, key: str) -> None:
    """The running totals equal the sum of the bucket fields present (when the hash has them)."""
    fields = _fields(url, key)
    if "O0" not in fields:
        return
    assert fields["R0"] == sum(v for f, v in fields.items() if f[0] == "r"), fields
    assert fields["T0"] == sum(v for f, v in fields.items() if f[0] == "t"), fields


# --- the skip-or-fail fixture itself ----------------------------------------------------------


def test_missing_redis_skips_locally_and_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="Redis not reachable"):
        require_redis(dead)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true: Redis not reachable"):
        require_redis(dead)


# --- semantics (clock injected) -----------------------------------------------------------------


async def test_rpm_refuses_with_retry_after_and_window_slides(client: RespClient, prefix: str) -> None:
    clock = ManualClock(1000.5)
    lim = RedisLimiter(client, prefix=prefix, clock=clock)
    key = [("key:ab12", Limit(rpm=3))]
    for _ in range(3):
        d, r = await lim.acquire(key, 0)
        assert d.allowed and r is not None
    d, r = await lim.acquire(key, 0)
    assert not d.allowed and r is None and d.which == "key:ab12 rpm"
    assert d.retry_after_s == pytest.approx(1061 - 1000.5)
    assert d.headers["x-ratelimit-remaining-requests"] == "0"
    assert d.headers["x-ratelimit-reset-requests"] == "1m0.5s"
    clock.t = 1060.999
    assert not (await lim.acquire(key, 0))[0].allowed
    clock.t = 1061.0
    assert (await lim.acquire(key, 0))[0].allowed
    assert await client.execute("PTTL", prefix + "key:ab12") > 60_000  # expires about two windows after its last charge


async def test_tpm_estimate_and_settle(client: RespClient, prefix: str) -> None:
    clock = ManualClock(1000.5)
    lim = RedisLimiter(client, prefix=prefix, clock=clock)
    scope = [("key:a", Limit(tpm=1000))]
    d1, r1 = await lim.acquire(scope, 600)
    assert d1.allowed and r1 is not None
    d, _ = await lim.acquire(scope, 500)
    assert not d.allowed and d.which == "key:a tpm"
    await lim.settle(r1, 300)  # less than estimated
    d2, r2 = await lim.acquire(scope, 500)
    assert d2.allowed and r2 is not None and d2.headers["x-ratelimit-remaining-tokens"] == "200"
    clock.advance(10)
    await lim.settle(r2, 900)  # more than estimated: +400 charged now
    d, _ = await lim.acquire(scope, 1)
    assert not d.allowed and d.headers["x-ratelimit-remaining-tokens"] == "0"
    clock.t = 1061.0
    assert (await lim.acquire(scope, 600))[0].allowed  # only the 400 of bucket 1010 is left
    await lim.settle(r2, 0)  # second settle: no-op
    assert not (await lim.acquire(scope, 1))[0].allowed


async def test_refused_request_charges_no_scope(client: RespClient, prefix: str) -> None:
    lim = RedisLimiter(client, prefix=prefix, clock=ManualClock(1000.5))
    key = ("key:a", Limit(rpm=10, tpm=10_000))
    model = ("model:chat", Limit(rpm=2))
    dep = ("deployment:chat/0", Limit(tpm=5000))
    for _ in range(2):
        assert (await lim.acquire([key, model, dep], 100))[0].allowed
    d, _ = await lim.acquire([key, model, dep], 100)
    assert not d.allowed and d.which == "model:chat rpm"
    d, _ = await lim.acquire([key, dep], 4900)
    assert not d.allowed and d.which == "deployment:chat/0 tpm"
    d, _ = await lim.acquire([key], 0)
    assert d.headers["x-ratelimit-remaining-requests"] == "7"
    assert d.headers["x-ratelimit-remaining-tokens"] == "9800"


async def test_server_time_is_used_without_a_clock(client: RespClient, prefix: str, redis_url: str) -> None:
    lim = RedisLimiter(client, prefix=prefix)
    d, r = await lim.acquire([("key:a", Limit(rpm=1))], 5)
    assert d.allowed and r is not None
    secs, _ = await client.execute("TIME")
    assert abs(r.bucket - int(secs)) <= 1
    d, _ = await lim.acquire([("key:a", Limit(rpm=1))], 5)
    assert not d.allowed and 59 < d.retry_after_s <= 61
    await lim.settle(r, 0)
    await lim.flush()  # settles are queued; flush sends them and waits for Redis
    fields = _fields(redis_url, prefix + "key:a")  # the token charge was refunded in full
    assert fields.pop("O0") in (r.bucket - 60, r.bucket - 59)  # the refused acquire may be a second later
    assert fields == {f"r{r.bucket}": 1, "R0": 1, "T0": 0}


async def test_script_reloads_after_script_flush(client: RespClient, prefix: str) -> None:
    lim = RedisLimiter(client, prefix=prefix, clock=ManualClock(1000.5))
    scope = [("key:a", Limit(rpm=5, tpm=100))]
    d, r = await lim.acquire(scope, 10)
    assert d.allowed and r is not None
    await client.execute("SCRIPT", "FLUSH")
    d, _ = await lim.acquire(scope, 10)
    assert d.allowed and d.headers["x-ratelimit-remaining-requests"] == "3"
    await client.execute("SCRIPT", "FLUSH")
    await lim.settle(r, 0)  # the settle script reloads too
    d, _ = await lim.acquire(scope, 0)
    assert d.headers["x-ratelimit-remaining-tokens"] == "90"


async def test_unreachable_redis_raises_limiter_unavailable() -> None:
    lim = RedisLimiter.from_url(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.5)
    try:
        with pytest.raises(LimiterUnavailableError) as info:
            await lim.acquire([("key:a", Limit(rpm=1))], 1)
        assert info.value.status == 503 and isinstance(info.value.__cause__, RespConnectionError)
        assert "cannot connect to Redis" in info.value.message
    finally:
        await lim.aclose()


# --- settles are queued, sent in batches, and their failures reported -------------------------


async def test_settles_reach_redis_without_an_acquire_within_the_delay(client: RespClient, prefix: str, redis_url: str) -> None:
    lim = RedisLimiter(client, prefix=prefix, clock=ManualClock(1000.5), settle_delay_s=0.01)
    scope = [("key:a", Limit(tpm=1000))]
    reservations = [(await lim.acquire(scope, 100))[1] for _ in range(5)]
    for r in reservations:
        assert r is not None
        await lim.settle(r, 30)  # returns at once: queued
    await asyncio.sleep(0.2)  # the timer sent them (one script call), nothing else did
    assert _fields(redis_url, prefix + "key:a")["t1000"] == 5 * 30
    _assert_totals_consistent(redis_url, prefix + "key:a")


async def test_a_flushed_script_cache_does_not_lose_queued_settles(client: RespClient, prefix: str, redis_url: str) -> None:
    lim = RedisLimiter(client, prefix=prefix, clock=ManualClock(1000.5), settle_delay_s=0.01)
    d, r = await lim.acquire([("key:a", Limit(tpm=1000))], 100)
    assert r is not None
    await client.execute("SCRIPT", "FLUSH")
    await lim.settle(r, 1)  # the timer's batch meets NOSCRIPT, loads the scripts, is sent again
    await asyncio.sleep(0.2)
    assert _fields(redis_url, prefix + "key:a")["t1000"] == 1
    await lim.flush()  # nothing failed


async def test_aclose_sends_what_is_queued(redis_url: str, prefix: str) -> None:
    lim = RedisLimiter.from_url(redis_url, prefix=prefix, clock=ManualClock(1000.5), settle_delay_s=60, max_connections=1)
    _, r = await lim.acquire([("key:a", Limit(tpm=1000))], 100)
    assert r is not None
    await lim.settle(r, 60)
    await lim.aclose()
    assert _fields(redis_url, prefix + "key:a")["t1000"] == 60


async def test_failed_settles_are_reported_not_lost(redis_url: str, prefix: str) -> None:
    """Redis becomes unreachable after admission: the settle batch fails in the background, and
    the next settle (or flush) raises saying how many were not applied; RateGuard counts it."""
    from modelyard.limits.guard import RateGuard

    target = Target.from_url(redis_url)
    relay = TcpRelay((target.host, target.port))
    lim = RedisLimiter.from_url(f"redis://127.0.0.1:{relay.port}/{target.db}", prefix=prefix, timeout_s=0.5, settle_delay_s=0.01)
    guard = RateGuard(lim)
    try:
        scope = [("key:a", Limit(rpm=10, tpm=1000))]
        reservations = [(await lim.acquire(scope, 100))[1] for _ in range(3)]
        relay.cut()
        await lim.settle(reservations[0], 10)
        await lim.settle(reservations[1], 10)
        await asyncio.sleep(0.3)  # the batch of two was sent and failed
        with pytest.raises(LimiterUnavailableError, match="2 settle\\(s\\) not applied") as info:
            await lim.settle(reservations[2], 10)
        assert isinstance(info.value.__cause__, RespConnectionError)
        assert (await guard.check(scope, 1)) == (None, None) and guard.unavailable == 1  # fail open
        await asyncio.sleep(0.3)  # the third settle's batch failed too
        reservation = Reservation(("key:a",), 1, 100)
        await guard.settle(reservation, 5)  # reported to the guard, not raised into the request
        assert guard.unavailable == 2
        with pytest.raises(LimiterUnavailableError, match="1 settle\\(s\\) not applied"):
            await lim.flush()  # the one queued by guard.settle
    finally:
        relay.close()
        await lim.aclose()


# --- running totals: steady traffic, and hashes shared with the previous script ----------------


async def test_steady_traffic_keeps_totals_exact_and_the_hash_bounded(client: RespClient, prefix: str, redis_url: str) -> None:
    """Two and a half windows of traffic every 0.7 s: each Decision equals the in-memory one, the
    totals match the buckets, and the hash never holds more than one window of buckets."""
    clock = ManualClock(1000.2)
    mem, red = MemoryLimiter(clock), RedisLimiter(client, prefix=prefix, clock=clock)
    scopes = [("key:a", Limit(rpm=70, tpm=9_000)), ("model:m", Limit(rpm=200))]
    for i in range(215):
        tokens = 40 + i % 90
        (dm, rm), (dr, rr) = await mem.acquire(scopes, tokens), await red.acquire(scopes, tokens)
        assert dr == dm, i
        if rm is not None and rr is not None:
            await mem.settle(rm, tokens // 2)
            await red.settle(rr, tokens // 2)
        clock.t = (10_002 + 7 * (i + 1)) / 10  # not advance(0.7): no float drift (Redis reads the time as %.6f)
    fields = _fields(redis_url, prefix + "key:a")
    assert len(fields) <= 2 * 61 + 3
    _assert_totals_consistent(redis_url, prefix + "key:a")
    _assert_totals_consistent(redis_url, prefix + "model:m")


async def test_idle_scope_is_recounted_after_a_window(client: RespClient, prefix: str, redis_url: str) -> None:
    clock = ManualClock(1000.5)
    lim = RedisLimiter(client, prefix=prefix, clock=clock)
    scope = [("key:a", Limit(rpm=3))]
    for _ in range(3):
        assert (await lim.acquire(scope, 7))[0].allowed
    clock.advance(100)  # more than a window later: every bucket is stale (the key has not expired yet)
    d, _ = await lim.acquire(scope, 7)
    assert d.allowed and d.headers["x-ratelimit-remaining-requests"] == "2"
    assert _fields(redis_url, prefix + "key:a") == {"r1100": 1, "t1100": 7, "R0": 1, "T0": 7, "O0": 1040}


# The acquire script of the version before running totals (commit eb00ae1), verbatim: during a
# rolling upgrade both run against the same hashes.
PREVIOUS_ACQUIRE_LUA = _NOW + """
local est = tonumber(ARGV[5])
local oldest = cur - n
local allowed = 1
local reply = {0, string.format('%.6f', now), cur}
for i, key in ipairs(KEYS) do
  local rpm = tonumber(ARGV[4 + 2 * i])
  local tpm = tonumber(ARGV[5 + 2 * i])
  local flat = redis.call('HGETALL', key)
  local r, t = 0, 0
  local keep, stale = {}, {}
  for j = 1, #flat, 2 do
    local f = flat[j]
    if tonumber(string.sub(f, 2)) < oldest then
      stale[#stale + 1] = f
    else
      local v = tonumber(flat[j + 1])
      keep[#keep + 1] = f
      keep[#keep + 1] = v
      if string.sub(f, 1, 1) == 'r' then r = r + v else t = t + v end
    end
  end
  if #stale > 0 then redis.call('HDEL', key, unpack(stale)) end
  if (rpm >= 0 and r + 1 > rpm) or (tpm >= 0 and t + est > tpm) then allowed = 0 end
  reply[3 + i] = keep
end
if allowed == 1 then
  for _, key in ipairs(KEYS) do
    redis.call('HINCRBY', key, 'r' .. cur, 1)
    if est > 0 then redis.call('HINCRBY', key, 't' .. cur, est) end
    redis.call('PEXPIRE', key, ttl_ms)
  end
end
reply[1] = allowed
return reply
"""


async def test_shares_hashes_with_the_previous_script(client: RespClient, prefix: str, redis_url: str) -> None:
    """The old script reads the totals as stale buckets and deletes them; the new one recounts."""
    assert ACQUIRE_LUA != PREVIOUS_ACQUIRE_LUA
    key = prefix + "model:m"
    lim = RedisLimiter(client, prefix=prefix, clock=ManualClock(1000.5))
    scope = [("model:m", Limit(rpm=5, tpm=1000))]

    async def old_acquire(tokens: int) -> int:
        reply = await client.execute("EVAL", PREVIOUS_ACQUIRE_LUA, 1, key, "1000.5", "1.0", 60, 122_000, tokens, 5, 1000)
        return reply[0]

    assert await old_acquire(10) == 1  # a hash the new script has never seen: recounted
    assert (await lim.acquire(scope, 20))[0].headers["x-ratelimit-remaining-requests"] == "3"
    assert await old_acquire(30) == 1  # sees the totals as stale buckets
    assert "O0" not in _fields(redis_url, key)
    d, _ = await lim.acquire(scope, 40)
    assert d.headers["x-ratelimit-remaining-requests"] == "1" and d.headers["x-ratelimit-remaining-tokens"] == "900"
    assert await old_acquire(0) == 1
    assert await old_acquire(0) == 0  # five admitted in all, by either script
    assert not (await lim.acquire(scope, 0))[0].allowed
    _assert_totals_consistent(redis_url, key)


# --- same decisions as the in-memory limiter, for random traffic -----------------------------

SCOPES = {
    "a": [("key:a", Limit(rpm=4, tpm=300)), ("model:m", Limit(rpm=6))],
    "b": [("key:b", Limit(rpm=3)), ("model:m", Limit(rpm=6, tpm=500))],
}
ops = st.lists(
    st.one_of(
        st.tuples(st.just("acquire"), st.sampled_from(["a", "b"]), st.integers(0, 120)),
        st.tuples(st.just("settle"), st.just(""), st.integers(0, 200)),
        st.tuples(
            st.just("advance"), st.just(""), st.sampled_from([1, 500, 999, 30_000, 59_999, 61_000]) | st.integers(0, 30_000)
        ),
    ),
    max_size=30,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops)
def test_redis_decides_exactly_like_memory(redis_url: str, steps: list[tuple[str, str, int]]) -> None:
    """Differential: every Decision (allowed, which, retry-after, headers) is the in-memory one."""

    async def run(prefix: str) -> None:
        client = redis_client(redis_url)
        clock = ManualClock(1000.0)
        mem, red = MemoryLimiter(clock), RedisLimiter(client, prefix=prefix, clock=clock)
        ms, reservations = 0, []
        try:
            for op, scope, n in steps:
                if op == "advance":
                    ms += n
                    clock.t = (1_000_000 + ms) / 1000
                elif op == "settle":
                    if reservations:
                        rm, rr = reservations[n % len(reservations)]
                        await mem.settle(rm, n)
                        await red.settle(rr, n)
                else:
                    (dm, rm), (dr, rr) = await mem.acquire(SCOPES[scope], n), await red.acquire(SCOPES[scope], n)
                    assert dr == dm
                    if rm is not None and rr is not None:
                        assert rr.bucket == rm.bucket
                        reservations.append((rm, rr))
        finally:
            await client.aclose()

    prefix = f"modelyard:test:rl:{uuid.uuid4().hex}:"
    try:
        asyncio.run(run(prefix))
        for scope in ("key:a", "key:b", "model:m"):
            _assert_totals_consistent(redis_url, prefix + scope)
    finally:
        redis_cleanup(redis_url, prefix)


# --- atomicity across OS processes --------------------------------------------------------------


def _hammer(url: str, prefix: str, attempts: int, start: multiprocessing.synchronize.Barrier, out: multiprocessing.Queue) -> None:
    async def main() -> int:
        lim = RedisLimiter.from_url(url, prefix=prefix)
        try:
            start.wait(timeout=30)
            results = await asyncio.gather(*(lim.acquire([("model:hot", Limit(rpm=50))], 3) for _ in range(attempts)))
            return sum(d.allowed for d, _ in results)
        finally:
            await lim.aclose()

    out.put(asyncio.run(main()))


def test_two_processes_admit_exactly_rpm(redis_url: str, prefix: str) -> None:
    ctx = multiprocessing.get_context("spawn")
    start, out = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_hammer, args=(redis_url, prefix, 200, start, out)) for _ in range(2)]
    for p in procs:
        p.start()
    admitted: list[int] = []
    try:
        for _ in range(600):  # up to 60 s, but fail at once if a worker died
            try:
                admitted.append(out.get(timeout=0.1))
            except queue.Empty:
                assert not any(p.exitcode not in (None, 0) for p in procs), [p.exitcode for p in procs]
            if len(admitted) == len(procs):
                break
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
                p.join()
    assert len(admitted) == 2 and all(p.exitcode == 0 for p in procs)
    assert sum(admitted) == 50, admitted  # who wins is up to the race; the total is not
    (tokens,) = [int(v) for f, v in redis.Redis.from_url(redis_url).hgetall(prefix + "model:hot").items() if f.startswith(b"t")]
    assert tokens == 50 * 3
