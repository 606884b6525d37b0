"""The shared limiter: every gateway replica decides against the same counters in Redis.

One Lua script checks every scope and charges all or none, so replicas never race (no
read-modify-write from Python). Time is Redis's own ``TIME`` (replicas with skewed clocks agree);
tests pass a clock instead.

Each scope is one hash ``<prefix><scope>``: fields ``r<bucket>`` (requests) and ``t<bucket>``
(tokens), plus running totals of the counted buckets, ``R0`` and ``T0``, and ``O0``, the oldest
bucket that may still be present. An admission that fits therefore reads three fields per scope
and the script answers with the totals only (the common case, as in ``MemoryLimiter``); buckets
that leave the window are subtracted and deleted as the window moves past them (one a second),
and the key expires about two windows after its last charge. Only a refusal, or a request that
charges no tokens, needs the bucket lists: then the script returns them and the Decision
(which limit, retry-after, headers) is built by the same pure ``decide`` the in-memory limiter
uses. The totals are recounted from the buckets whenever ``O0`` is missing (first touch, a hash
written before totals existed) or the scope was idle for more than a window. The totals' names
end in a digit on purpose: a script of an earlier version reads them as stale buckets and deletes
them, after which this one recounts, so replicas of both versions can share one Redis.

Commands go through ``limits.resp.RespClient`` (pipelined, hiredis-parsed; redis-py's asyncio
client cost ~180 µs of CPU per EVALSHA, see ``docs/design/limits.md``).

Not for Redis Cluster as is: a multi-key script needs all its keys in one slot.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from modelyard.limits.base import (
    Bucket,
    Decision,
    Limit,
    LimiterUnavailableError,
    Reservation,
    Window,
    allowed_headers,
    check_args,
    decide,
)
from modelyard.limits.resp import NoScriptError, RespClient, RespError, Script

log = logging.getLogger("modelyard.limits")

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
# Returns {allowed, now (string), bucket, compact, ...}: compact = 1 (admitted and charging tokens):
# the totals r, t of each key before the charge; compact = 0: each key's {field, value, ...} counted
# buckets before the charge.
ACQUIRE_LUA = (
    _NOW
    + """
local est = tonumber(ARGV[5])
local oldest = cur - n
local allowed = 1
local totals, dirty = {}, {}
for i, key in ipairs(KEYS) do
  local rpm = tonumber(ARGV[4 + 2 * i])
  local tpm = tonumber(ARGV[5 + 2 * i])
  local meta = redis.call('HMGET', key, 'R0', 'T0', 'O0')
  local r, t, o = tonumber(meta[1]), tonumber(meta[2]), tonumber(meta[3])
  if r == nil or t == nil or o == nil or oldest - o > n then
    r, t = 0, 0
    local flat = redis.call('HGETALL', key)
    local stale = {}
    for j = 1, #flat, 2 do
      local f = flat[j]
      local kind = string.sub(f, 1, 1)
      if kind == 'r' or kind == 't' then
        if tonumber(string.sub(f, 2)) < oldest then
          stale[#stale + 1] = f
        elseif kind == 'r' then
          r = r + tonumber(flat[j + 1])
        else
          t = t + tonumber(flat[j + 1])
        end
      end
    end
    if #stale > 0 then redis.call('HDEL', key, unpack(stale)) end
    dirty[i] = #flat > 0
  elseif o < oldest then
    for b = o, oldest - 1 do
      local v = redis.call('HMGET', key, 'r' .. b, 't' .. b)
      if v[1] or v[2] then
        r = r - tonumber(v[1] or '0')
        t = t - tonumber(v[2] or '0')
        redis.call('HDEL', key, 'r' .. b, 't' .. b)
      end
    end
    dirty[i] = true
  end
  if (rpm >= 0 and r + 1 > rpm) or (tpm >= 0 and t + est > tpm) then allowed = 0 end
  totals[i] = {r, t}
end
local reply = {allowed, string.format('%.6f', now), cur, 0}
if allowed == 1 and est > 0 then
  reply[4] = 1
  for i = 1, #KEYS do
    reply[3 + 2 * i] = totals[i][1]
    reply[4 + 2 * i] = totals[i][2]
  end
else
  for i, key in ipairs(KEYS) do
    local flat = redis.call('HGETALL', key)
    local keep = {}
    for j = 1, #flat, 2 do
      local kind = string.sub(flat[j], 1, 1)
      if (kind == 'r' or kind == 't') and tonumber(string.sub(flat[j], 2)) >= oldest then
        keep[#keep + 1] = flat[j]
        keep[#keep + 1] = tonumber(flat[j + 1])
      end
    end
    reply[4 + i] = keep
  end
end
for i, key in ipairs(KEYS) do
  if allowed == 1 then
    redis.call('HINCRBY', key, 'r' .. cur, 1)
    if est > 0 then redis.call('HINCRBY', key, 't' .. cur, est) end
    redis.call('HSET', key, 'R0', totals[i][1] + 1, 'T0', totals[i][2] + est, 'O0', oldest)
    redis.call('PEXPIRE', key, ttl_ms)
  elseif dirty[i] then
    redis.call('HSET', key, 'R0', totals[i][1], 'T0', totals[i][2], 'O0', oldest)
  end
end
return reply
"""
)

# Several settles in one call. ARGV: bucket_s, n, ttl_ms, then per settle: now ('' = server TIME),
# its number of keys (taken from KEYS in order), charged bucket, refund (>= 0), overage (>= 0).
SETTLE_LUA = """
local bucket_s = tonumber(ARGV[1])
local n = tonumber(ARGV[2])
local ttl_ms = ARGV[3]
local server_now
local k = 0
for i = 4, #ARGV, 5 do
  local now
  if ARGV[i] ~= '' then
    now = tonumber(ARGV[i])
  else
    if server_now == nil then
      local t = redis.call('TIME')
      server_now = tonumber(t[1]) + tonumber(t[2]) / 1000000
    end
    now = server_now
  end
  local cur = math.floor(now / bucket_s)
  local charged = tonumber(ARGV[i + 2])
  local refund = tonumber(ARGV[i + 3])
  local over = tonumber(ARGV[i + 4])
  local field = 't' .. ARGV[i + 2]
  for j = k + 1, k + tonumber(ARGV[i + 1]) do
    local key = KEYS[j]
    if refund > 0 and charged >= cur - n then
      local v = tonumber(redis.call('HGET', key, field) or '0')
      local d = math.min(v, refund)
      if d > 0 then
        if d == v then
          redis.call('HDEL', key, field)
        else
          redis.call('HINCRBY', key, field, -d)
        end
        redis.call('HINCRBY', key, 'T0', -d)
      end
    end
    if over > 0 then
      redis.call('HINCRBY', key, 't' .. cur, over)
      redis.call('HINCRBY', key, 'T0', over)
      redis.call('PEXPIRE', key, ttl_ms)
    end
  end
  k = k + tonumber(ARGV[i + 1])
end
return (#ARGV - 3) / 5
"""

_ACQUIRE = Script(ACQUIRE_LUA)
_SETTLE = Script(SETTLE_LUA)
_MAX_BATCH = 128  # settles per SETTLE call: a longer script would hold up Redis for other clients


class _Batch:
    """Settles queued for one SETTLE call: their keys and their five arguments each."""

    __slots__ = ("keys", "args", "count", "retried")

    def __init__(self) -> None:
        self.keys: list[str] = []
        self.args: list[Any] = []
        self.count = 0
        self.retried = False

    def command(self, consts: tuple[Any, ...]) -> tuple[Any, ...]:
        return (b"EVALSHA", _SETTLE.sha, len(self.keys), *self.keys, *consts, *self.args)


class RedisLimiter:
    """Sliding-window rpm/tpm shared by every replica through one Redis (see ``limits.base``).

    Settles are not a round trip each: ``settle`` queues its correction and returns, and the queue
    goes to Redis as one script call, ahead of (in the same write, on the same connection as) this
    limiter's next ``acquire``, or after ``settle_delay_s`` (2 ms) when no acquire comes first. A
    settle is therefore applied in Redis at most ``settle_delay_s`` plus a round trip after it was
    made, and before the next acquire of this limiter is decided (a batch the timer sent earlier
    is, with several connections, ahead of it in time but not on the same connection). At c=1
    this saves a third of the limiter's CPU and of Redis's (one write and one wake-up per request
    instead of two); under load, where commands share writes anyway, it is even
    (``bench/redis_limiter.py``, ``docs/design/limits.md``). A batch that fails is not lost
    silently: the next ``settle`` raises ``LimiterUnavailableError`` saying how many settles were
    not applied (``RateGuard`` counts and logs it), and ``aclose`` logs any that are left.
    ``flush()`` sends the queue now and waits until Redis has answered.
    """

    __slots__ = (
        "_redis", "_prefix", "_clock", "_window", "_owns_client", "_consts", "_settle_delay_s",
        "_batch", "_timer", "_inflight", "_failed", "_failure", "_reload",
    )

    def __init__(
        self,
        redis_client: RespClient,
        *,
        prefix: str = "modelyard:rl:",
        clock: Callable[[], float] | None = None,
        window: Window | None = None,
        owns_client: bool = False,
        settle_delay_s: float = 0.002,
    ) -> None:
        self._redis = redis_client
        self._prefix = prefix
        self._clock = clock  # None: Redis server TIME (production); a clock: tests
        self._window = w = window or Window()
        self._owns_client = owns_client
        self._consts = (repr(float(w.bucket_s)), w.n, w.ttl_ms)
        self._settle_delay_s = settle_delay_s
        self._batch = _Batch()
        self._timer: asyncio.TimerHandle | None = None
        self._inflight: set[asyncio.Future[Any]] = set()  # settle batches sent, not yet answered
        self._failed = 0  # settles not applied since the last report, and why
        self._failure: BaseException | None = None
        # Load both scripts before the next call: at first use (so that a settle batch never meets
        # NOSCRIPT while the acquire written behind it runs), and after a NOSCRIPT (SCRIPT FLUSH, a
        # restart: both are gone, so the acquire meets it too and is retried behind the batch).
        self._reload = True

    @classmethod
    def from_url(
        cls, url: str, *, timeout_s: float = 1.0, connections: int = 2, max_connections: int | None = None, **kw: Any
    ) -> RedisLimiter:
        """A limiter that owns its client (``max_connections`` is the old name of ``connections``).
        A short timeout: the limiter is on every request's path, and an unreachable Redis must
        become a fast ``LimiterUnavailableError``."""
        client = redis_client(url, timeout_s=timeout_s, connections=max_connections or connections)
        return cls(client, owns_client=True, **kw)

    def _now(self) -> str:
        return "" if self._clock is None else repr(float(self._clock()))

    async def acquire(self, scopes: Sequence[tuple[str, Limit]], estimated_tokens: int) -> tuple[Decision, Reservation | None]:
        check_args(scopes, estimated_tokens)
        prefix = self._prefix
        keys = [prefix + name for name, _ in scopes]
        args: list[Any] = [self._now(), *self._consts, estimated_tokens]
        for _, limit in scopes:
            args.append(-1 if limit.rpm is None else limit.rpm)
            args.append(-1 if limit.tpm is None else limit.tpm)
        reply = await self._acquire(keys, args)
        allowed, now, bucket = reply[0] == 1, float(reply[1]), reply[2]
        n = len(scopes)
        if reply[3] == 1:  # admitted, charging tokens: the totals are all the headers need
            totals = [(reply[4 + 2 * i], reply[5 + 2 * i]) for i in range(n)]
            for (_, limit), (r, t) in zip(scopes, totals, strict=True):
                if (limit.rpm is not None and r + 1 > limit.rpm) or (limit.tpm is not None and t + estimated_tokens > limit.tpm):
                    raise LimiterUnavailableError(f"rate limiter: script admitted over a limit ({scopes}, {totals})")
            decision = Decision(True, 0.0, None, allowed_headers(scopes, totals, estimated_tokens, now, self._window))
        else:
            usage = [_buckets(flat) for flat in reply[4 : 4 + n]]
            decision = decide(scopes, usage, estimated_tokens, now, self._window)
            if decision.allowed != allowed:  # the script and decide() apply the same test
                raise LimiterUnavailableError(f"rate limiter: script and decision disagree ({allowed=}, {decision})")
        if not allowed:
            return decision, None
        return decision, Reservation(tuple(name for name, _ in scopes), bucket, estimated_tokens)

    async def settle(self, reservation: Reservation, actual_tokens: int) -> None:
        """Queue the correction: refund an over-estimate from the charged bucket (if still
        counted), charge an under-estimate to the current bucket (see the class docstring for when
        it reaches Redis). Raises ``LimiterUnavailableError`` for earlier settles that failed."""
        check_args((), actual_tokens)
        if not reservation.settled:
            reservation.settled = True
            delta = actual_tokens - reservation.estimated_tokens
            if delta != 0 and reservation.scopes:
                batch = self._batch
                for name in reservation.scopes:
                    batch.keys.append(self._prefix + name)
                batch.args += (self._now(), len(reservation.scopes), reservation.bucket, max(0, -delta), max(0, delta))
                batch.count += 1
                if batch.count >= _MAX_BATCH and not self._reload:
                    self._send_batch()
                elif self._timer is None:
                    self._timer = asyncio.get_running_loop().call_later(self._settle_delay_s, self._on_timer)
        self._report()

    async def flush(self) -> None:
        """Send the queued settles now and wait until Redis has answered every batch sent so far;
        raises ``LimiterUnavailableError`` if any settle could not be applied since the last report."""
        while self._batch.count or self._inflight:  # a batch that met NOSCRIPT is queued again, once
            if self._batch.count:
                if self._reload:
                    await self._load_scripts()
                self._send_batch()
            waiting = list(self._inflight)
            await asyncio.gather(*waiting, return_exceptions=True)
            self._inflight.difference_update(waiting)
        self._report()

    async def aclose(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        try:
            await self.flush()
        except LimiterUnavailableError as exc:
            log.warning("%s (at shutdown)", exc.message)
        if self._owns_client:
            await self._redis.aclose()

    # --- Redis --------------------------------------------------------------------------------------
    async def _acquire(self, keys: list[str], args: list[Any]) -> Any:
        """EVALSHA of the acquire script, with the queued settles written just before it."""
        for attempt in (1, 2):
            if self._reload:
                await self._load_scripts()
            command = (b"EVALSHA", _ACQUIRE.sha, len(keys), *keys, *args)
            fut = self._send_batch(command) if self._batch.count else self._redis.send_many((command,))[0]
            try:
                return await fut
            except NoScriptError as exc:  # first use on this server, or after SCRIPT FLUSH / a restart
                if attempt == 2:
                    raise LimiterUnavailableError(f"rate limiter store unavailable: {exc}") from exc
                self._reload = True
            except RespError as exc:
                raise LimiterUnavailableError(f"rate limiter store unavailable: {exc}") from exc
        raise AssertionError("unreachable")

    async def _load_scripts(self) -> None:
        try:
            await self._redis.execute_many([(b"SCRIPT", b"LOAD", s.source) for s in (_ACQUIRE, _SETTLE)])
        except RespError as exc:
            raise LimiterUnavailableError(f"rate limiter store unavailable: {exc}") from exc
        self._reload = False

    def _send_batch(self, then: tuple[Any, ...] | None = None) -> asyncio.Future[Any]:
        """Write the queued settles (not empty) and ``then`` behind them, in one write on one
        connection; the future is ``then``'s (or the batch's)."""
        batch, self._batch = self._batch, _Batch()
        futures = self._redis.send_many((batch.command(self._consts),) if then is None else (batch.command(self._consts), then))
        sent = futures[0]
        self._inflight.add(sent)
        sent.add_done_callback(partial(self._batch_done, batch))
        return futures[-1]

    def _batch_done(self, batch: _Batch, fut: asyncio.Future[Any]) -> None:
        self._inflight.discard(fut)
        exc = fut.exception() if not fut.cancelled() else RespError("cancelled")
        if exc is None:
            return
        if isinstance(exc, NoScriptError) and not batch.retried:
            # Back to the front of the queue: the next acquire (or the timer) loads the scripts and
            # sends it first. This callback runs before the acquire that shared its write resumes.
            batch.retried = True
            pending, self._batch = self._batch, batch
            batch.keys += pending.keys
            batch.args += pending.args
            batch.count += pending.count
            self._reload = True
            if self._timer is None:
                self._timer = asyncio.get_running_loop().call_later(self._settle_delay_s, self._on_timer)
            return
        self._note_failure(batch.count, exc)

    def _note_failure(self, count: int, exc: BaseException) -> None:
        self._failed += count
        self._failure = exc

    def _report(self) -> None:
        if self._failed:
            failed, exc = self._failed, self._failure
            self._failed, self._failure = 0, None
            raise LimiterUnavailableError(f"rate limiter store unavailable: {failed} settle(s) not applied: {exc}") from exc

    def _on_timer(self) -> None:
        self._timer = None
        if not self._batch.count:
            return
        if not self._reload:
            self._send_batch()
            return
        task = asyncio.get_running_loop().create_task(self._reload_then_send())
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    async def _reload_then_send(self) -> None:
        try:
            await self._load_scripts()
        except LimiterUnavailableError as exc:  # the queue is dropped, not retried forever
            batch, self._batch = self._batch, _Batch()
            self._note_failure(batch.count, exc.__cause__ or exc)
            return
        if self._batch.count:
            self._send_batch()


def redis_client(url: str, *, timeout_s: float = 1.0, connections: int = 2) -> RespClient:
    """The client for the request path, shared by the limiter and the budget counters: a few
    pipelined connections and a short timeout (``limits.resp``). Raises ``ValueError`` for a URL it
    cannot use (it never repeats the URL: it may hold a password)."""
    return RespClient.from_url(url, timeout_s=timeout_s, connections=connections)


def _buckets(flat: Sequence[Any]) -> list[Bucket]:
    by_idx: dict[int, list[int]] = {}
    for i in range(0, len(flat), 2):
        name = flat[i]
        slot = by_idx.setdefault(int(name[1:]), [0, 0])
        slot[0 if name[:1] == b"r" else 1] += int(flat[i + 1])
    return [(idx, r, t) for idx, (r, t) in sorted(by_idx.items())]
