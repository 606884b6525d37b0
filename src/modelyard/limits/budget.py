"""Budget counters: what each virtual key has spent in its current budget period.

The request path asks ``spent(key, now)`` before it routes (a dict lookup in-process, one GET with
Redis) and never queries the database per request. A counter starts from the spend store's sum for
the period (``seed``: one query per key, per period, per replica, single-flight) and is then kept
in step by ``add`` as each response's cost becomes known — the same moment its spend row is
accepted by the writer, so counter and store agree up to the rows still in the writer's buffer.

* ``MemoryBudgets``: one process. Several replicas without Redis each count their own traffic on
  top of the store's sum at seeding time; cross-replica budgets need ``RedisBudgets``.
* ``RedisBudgets``: one counter per (key, period) in Redis, ``INCRBY`` in nano-units (exact
  integers, no float drift), seeded with ``SET NX`` from the store when absent (first use, expiry,
  a Redis restart). An ``add`` on an absent counter is dropped, since the next seed reads the row
  from the store instead (missing at most the rows not yet flushed, one flush interval). Commands
  go through ``limits.resp.RespClient``, the limiter's client: ``add`` writes its command and
  returns (no task per request); its errors are logged, never raised into the request.

A budget is checked before a request and charged after it, so concurrent requests in flight when
the budget runs out may overshoot it by their own cost; the next request is refused.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

from modelyard.auth.keys import VirtualKey, parse_duration, period_bounds
from modelyard.db import DatabaseError
from modelyard.epoch import to_us
from modelyard.limits.base import LimiterUnavailableError

if TYPE_CHECKING:
    from modelyard.limits.resp import RespClient, Script

log = logging.getLogger("modelyard.budget")

Seed = Callable[[str, dt.datetime], Awaitable[int]]  # (key id, period start) → nano-units spent since
_FOREVER = dt.datetime(9999, 1, 1, tzinfo=dt.timezone.utc)


def period_of(key: VirtualKey, now: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    """The key's budget period containing ``now``; a budget without a duration never resets."""
    if key.budget_duration is None:
        return key.created_at, _FOREVER
    return period_bounds(key.created_at, parse_duration(key.budget_duration), now)



class Budgets(Protocol):
    async def spent(self, key: VirtualKey, now: dt.datetime) -> int:
        """Nano-units the key has spent in its period containing ``now``."""
        ...

    def add(self, key: VirtualKey, cost_nano: int, now: dt.datetime) -> None:
        """Charge a finished request's cost (never awaits: called where the spend row is written)."""
        ...

    async def aclose(self) -> None: ...


class _Seeder:
    """Single-flight seeding from the store; a store that fails seeds 0 (logged, rate-limited)."""

    def __init__(self, seed: Seed, clock: Callable[[], float] = time.monotonic) -> None:
        self._seed = seed
        self._clock = clock  # only paces the warning (one per 10 s)
        self._inflight: dict[tuple[str, int], asyncio.Future[int]] = {}
        self._last_warn = float("-inf")

    async def __call__(self, key_id: str, start: dt.datetime) -> int:
        k = (key_id, to_us(start))
        fut = self._inflight.get(k)
        if fut is not None:
            return await asyncio.shield(fut)
        fut = asyncio.get_running_loop().create_future()
        self._inflight[k] = fut
        try:
            value = await self._seed(key_id, start)
        except DatabaseError as exc:
            now = self._clock()
            if now - self._last_warn > 10.0:
                self._last_warn = now
                log.warning("budget seed from the spend store failed (%s); counting from 0 this period", exc.message)
            value = 0
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # retrieved: no "never retrieved" warning when nobody else waits
            raise
        finally:
            del self._inflight[k]
        fut.set_result(value)
        return value


class MemoryBudgets:
    """In-process counters (one replica)."""

    def __init__(self, seed: Seed) -> None:
        self._seeder = _Seeder(seed)
        # key id → [period start µs, nano-units spent, seeded?]
        self._counters: dict[str, list[Any]] = {}

    async def spent(self, key: VirtualKey, now: dt.datetime) -> int:
        start, _ = period_of(key, now)
        start_us = to_us(start)
        c = self._counters.get(key.id)
        if c is not None and c[0] == start_us and c[2]:
            return c[1]
        seeded = await self._seeder(key.id, start)
        c = self._counters.get(key.id)
        if c is None or c[0] != start_us:
            c = self._counters[key.id] = [start_us, 0, False]
        if not c[2]:  # adds that came in while seeding are kept on top of the store's sum
            c[1] += seeded
            c[2] = True
        return c[1]

    def add(self, key: VirtualKey, cost_nano: int, now: dt.datetime) -> None:
        if cost_nano <= 0:
            return
        start_us = to_us(period_of(key, now)[0])
        c = self._counters.get(key.id)
        if c is None or c[0] != start_us:
            c = self._counters[key.id] = [start_us, 0, False]
        c[1] += cost_nano

    async def aclose(self) -> None:
        self._counters.clear()


# KEYS[1] = counter; ARGV[1] = nano-units. Charge only a counter that exists (seeded).
_INCR_IF_EXISTS = """
if redis.call('EXISTS', KEYS[1]) == 1 then return redis.call('INCRBY', KEYS[1], ARGV[1]) end
return nil
"""


class RedisBudgets:
    """Counters shared by every replica through Redis (``limits.resp`` needs ``hiredis``, an
    optional dependency, hence its imports inside the methods)."""

    def __init__(self, client: RespClient, seed: Seed, *, prefix: str = "modelyard:budget:", fail_open: bool = True,
                 clock: Callable[[], float] = time.monotonic) -> None:
        from modelyard.limits.resp import Script

        self._redis = client
        self._clock = clock  # only paces the warning (one per 10 s)
        self._seeder = _Seeder(seed, clock)
        self._prefix = prefix
        self._fail_open = fail_open
        self._pending: set[asyncio.Future[Any]] = set()  # adds sent (or reloading), not yet answered
        self._incr: Script = Script(_INCR_IF_EXISTS)
        self._last_warn = float("-inf")

    def _name(self, key: VirtualKey, start: dt.datetime) -> str:
        return f"{self._prefix}{key.id}:{to_us(start)}"

    def _ttl_s(self, start: dt.datetime, end: dt.datetime) -> int:
        if end >= _FOREVER:
            return 40 * 86_400  # re-seeded from the store after it expires
        return max(60, int((end - start).total_seconds()) + 86_400)

    async def spent(self, key: VirtualKey, now: dt.datetime) -> int:
        from modelyard.limits.resp import RespError

        start, end = period_of(key, now)
        name = self._name(key, start)
        try:
            value = await self._redis.execute(b"GET", name)
            if value is not None:
                return int(value)
            seeded = await self._seeder(key.id, start)
            # Another replica may seed (or add) between the two: GET returns whatever won.
            _, value = await self._redis.execute_many(
                [(b"SET", name, seeded, b"NX", b"EX", self._ttl_s(start, end)), (b"GET", name)]
            )
            return int(value) if value is not None else seeded
        except RespError as exc:
            self._warn(exc)
            if not self._fail_open:
                raise LimiterUnavailableError(f"budget counters unavailable: {exc.__class__.__name__}") from exc
            return 0

    def add(self, key: VirtualKey, cost_nano: int, now: dt.datetime) -> None:
        if cost_nano <= 0:
            return
        name = self._name(key, period_of(key, now)[0])
        incr = self._incr
        fut = self._redis.send_many([(b"EVALSHA", incr.sha, 1, name, cost_nano)])[0]
        self._pending.add(fut)
        fut.add_done_callback(partial(self._added, name, cost_nano))

    def _added(self, name: str, cost_nano: int, fut: asyncio.Future[Any]) -> None:
        from modelyard.limits.resp import NoScriptError

        self._pending.discard(fut)
        if fut.cancelled():
            return
        exc = fut.exception()
        if exc is None:
            return
        if isinstance(exc, NoScriptError):  # first use on this server, SCRIPT FLUSH, a restart
            task = asyncio.get_running_loop().create_task(self._add_loading(name, cost_nano))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)
        else:  # the row is in the store; the next seed after expiry counts it
            self._warn(exc)

    async def _add_loading(self, name: str, cost_nano: int) -> None:
        from modelyard.limits.resp import RespError

        try:
            await self._redis.run_script(self._incr, [name], [cost_nano])
        except RespError as exc:
            self._warn(exc)

    def _warn(self, exc: Exception) -> None:
        now = self._clock()
        if now - self._last_warn > 10.0:
            self._last_warn = now
            log.warning("budget counters in Redis unavailable: %s: %s", exc.__class__.__name__, exc)

    async def aclose(self) -> None:
        """Wait for the adds still in flight (the client is closed by its owner, after this)."""
        while self._pending:
            waiting = list(self._pending)
            await asyncio.gather(*waiting, return_exceptions=True)
            self._pending.difference_update(waiting)  # a NOSCRIPT retry may have added a task
