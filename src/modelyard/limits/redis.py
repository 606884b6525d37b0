"""The shared limiter: every gateway replica decides against the same counters in Redis.

One Lua script checks every scope and charges all or none, so replicas never race (no
read-modify-write from Python). Time is Redis's own ``TIME`` (replicas with skewed clocks agree);
tests pass a clock instead. Each scope is one hash ``<prefix><scope>`` with fields ``r<bucket>``
(requests) and ``t<bucket>`` (tokens); stale buckets are deleted when the scope is next touched
and the whole key expires about two windows after its last charge.

The script returns the scope's counted buckets as it found them; the Decision (which limit,
retry-after, headers) is then built by the same pure ``decide`` the in-memory limiter uses.

Not for Redis Cluster as is: a multi-key script needs all its keys in one slot.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError

from modelyard.limits.base import (
    Bucket,
    Decision,
    Limit,
    LimiterUnavailableError,
    Reservation,
    Window,
    check_args,
    decide,
)

_NOW = """
local now
if ARGV[1] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
else
  now = tonumber(ARGV[1])
end
local bucket_s = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local ttl_ms = ARGV[4]
local cur = math.floor(now / bucket_s)
"""

# ARGV: now ('' = server TIME), bucket_s, n, ttl_ms, estimated tokens, then rpm, tpm per key (-1: none).
# Returns {allowed, now (string), bucket, {field, value, ...} per key (counted buckets, pre-charge)}.
ACQUIRE_LUA = (
    _NOW
    + """
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
)

# ARGV: now, bucket_s, n, ttl_ms, charged bucket, refund (>= 0), overage (>= 0).
SETTLE_LUA = (
    _NOW
    + """
local charged = tonumber(ARGV[5])
local refund = tonumber(ARGV[6])
local over = tonumber(ARGV[7])
local field = 't' .. ARGV[5]
for _, key in ipairs(KEYS) do
  if refund > 0 and charged >= cur - n then
    local v = tonumber(redis.call('HGET', key, field) or '0')
    local d = math.min(v, refund)
    if d > 0 and d == v then
      redis.call('HDEL', key, field)
    elseif d > 0 then
      redis.call('HINCRBY', key, field, -d)
    end
  end
  if over > 0 then
    redis.call('HINCRBY', key, 't' .. cur, over)
    redis.call('PEXPIRE', key, ttl_ms)
  end
end
return 1
"""
)


class _Script:
    __slots__ = ("source", "sha")

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()


_ACQUIRE = _Script(ACQUIRE_LUA)
_SETTLE = _Script(SETTLE_LUA)


class RedisLimiter:
    """Sliding-window rpm/tpm shared by every replica through one Redis (see ``limits.base``)."""

    __slots__ = ("_redis", "_prefix", "_clock", "_window", "_owns_client")

    def __init__(
        self,
        redis_client: aioredis.Redis,
        *,
        prefix: str = "modelyard:rl:",
        clock: Callable[[], float] | None = None,
        window: Window | None = None,
        owns_client: bool = False,
    ) -> None:
        self._redis = redis_client
        self._prefix = prefix
        self._clock = clock  # None: Redis server TIME (production); a clock: tests
        self._window = window or Window()
        self._owns_client = owns_client

    @classmethod
    def from_url(cls, url: str, *, timeout_s: float = 1.0, max_connections: int = 64, **kw: Any) -> RedisLimiter:
        """A limiter that owns its client. Short timeouts and one immediate retry: the limiter is on
        every request's path, and an unreachable Redis must become a fast ``LimiterUnavailableError``
        (redis-py's default retries with backoff for seconds). A blocking pool: a burst beyond
        ``max_connections`` waits (up to ``timeout_s``) for a connection instead of failing."""
        return cls(redis_client(url, timeout_s=timeout_s, max_connections=max_connections), owns_client=True, **kw)

    def _head(self) -> list[Any]:
        w = self._window
        now = "" if self._clock is None else repr(float(self._clock()))
        return [now, repr(float(w.bucket_s)), w.n, w.ttl_ms]

    async def acquire(self, scopes: Sequence[tuple[str, Limit]], estimated_tokens: int) -> tuple[Decision, Reservation | None]:
        check_args(scopes, estimated_tokens)
        keys = [self._prefix + name for name, _ in scopes]
        args = self._head() + [estimated_tokens]
        for _, limit in scopes:
            args += [-1 if limit.rpm is None else limit.rpm, -1 if limit.tpm is None else limit.tpm]
        reply = await self._run(_ACQUIRE, keys, args)
        allowed, now, bucket = int(reply[0]), float(_s(reply[1])), int(reply[2])
        usage = [_buckets(flat) for flat in reply[3 : 3 + len(scopes)]]
        decision = decide(scopes, usage, estimated_tokens, now, self._window)
        if decision.allowed != bool(allowed):  # the script and decide() apply the same test
            raise LimiterUnavailableError(f"rate limiter: script and decision disagree ({allowed=}, {decision})")
        if not allowed:
            return decision, None
        return decision, Reservation(tuple(name for name, _ in scopes), bucket, estimated_tokens)

    async def settle(self, reservation: Reservation, actual_tokens: int) -> None:
        """Refund an over-estimate from the charged bucket (if still counted); charge an
        under-estimate to the current bucket."""
        check_args((), actual_tokens)
        if reservation.settled:
            return
        reservation.settled = True
        delta = actual_tokens - reservation.estimated_tokens
        if delta == 0 or not reservation.scopes:
            return
        keys = [self._prefix + name for name in reservation.scopes]
        args = self._head() + [str(reservation.bucket), max(0, -delta), max(0, delta)]
        await self._run(_SETTLE, keys, args)

    async def aclose(self) -> None:
        if self._owns_client:
            await self._redis.aclose()

    async def _run(self, script: _Script, keys: list[str], args: list[Any]) -> Any:
        try:
            try:
                return await self._redis.evalsha(script.sha, len(keys), *keys, *args)
            except NoScriptError:  # first use on this server, or after SCRIPT FLUSH / a restart
                await self._redis.script_load(script.source)
                return await self._redis.evalsha(script.sha, len(keys), *keys, *args)
        except RedisError as exc:
            raise LimiterUnavailableError(f"rate limiter store unavailable: {exc}") from exc


def redis_client(url: str, *, timeout_s: float = 1.0, max_connections: int = 64) -> aioredis.Redis:
    """A client for the request path: short timeouts, one immediate retry, a blocking pool (see
    ``RedisLimiter.from_url``). Shared by the limiter and the budget counters."""
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=timeout_s,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 1),
    )
    return aioredis.Redis.from_pool(pool)


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _buckets(flat: Sequence[Any]) -> list[Bucket]:
    by_idx: dict[int, list[int]] = {}
    for i in range(0, len(flat), 2):
        name = _s(flat[i])
        slot = by_idx.setdefault(int(name[1:]), [0, 0])
        slot[0 if name[0] == "r" else 1] += int(flat[i + 1])
    return [(idx, r, t) for idx, (r, t) in sorted(by_idx.items())]
