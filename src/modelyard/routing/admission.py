"""Admission control per public model: a concurrency cap and a bounded priority queue with a TTL.

A request either takes a slot at once, waits in the queue (at most ``ttl_s``), or is refused:
``QueueFullError`` (429) when the queue is full, ``QueueTimeoutError`` (503) when its TTL ran out;
both carry ``Retry-After``. A waiter that is cancelled (client gone) leaves the queue and never
leaks a slot, even when it is cancelled in the instant it was handed one.

Order (issue 11 §2): higher ``priority`` first (``routing.priority``: low 0, normal 1, high 2),
FIFO within a level, with aging so that low never starves. A waiter's effective priority is
``level + waited / aging_s``; the free slot goes to the largest. Since every waiter's effective
priority grows at the same rate, that order never changes while they wait: it is ascending
``arrival − level · aging_s`` (its *virtual arrival*), fixed when the waiter enters. So the clock is
read once per queued request, and the next waiter is the best of the heads of one FIFO per level
(FIFO within a level is virtual-arrival order): O(levels) per hand-over, no heap. A low waiter is
overtaken only by high requests arriving less than ``2 · aging_s`` after it (normal ones: less
than ``aging_s``), so its wait is bounded by what was ahead plus that window.

The uncontended path (a free slot, nobody waiting) is what it was: two comparisons and an
increment; no clock, no queue work.

Cancelled and timed-out waiters are removed lazily: counted out at once (``queued``, the 429
check, the metrics), skipped when they reach the head, and the FIFOs compacted when the dead ones
outnumber the living — amortised O(1) instead of an O(n) ``deque.remove``.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable

from modelyard.errors import QueueFullError, QueueTimeoutError
from modelyard.routing.priority import MAX_LEVEL, NORMAL

_N_LEVELS = MAX_LEVEL + 1
_COMPACT_AT = 64  # dead entries tolerated before a compaction is considered


class _Waiter:
    __slots__ = ("vt", "fut", "level", "live")

    def __init__(self, vt: float, fut: asyncio.Future[None], level: int) -> None:
        self.vt = vt  # virtual arrival: arrival − level · aging_s (smaller is served first)
        self.fut = fut
        self.level = level
        self.live = True  # counted in ``queued``; False once granted, cancelled or timed out


class Admission:
    __slots__ = (
        "name", "max_concurrency", "queue_size", "ttl_s", "aging_s", "in_flight", "retry_hint",
        "_fifos", "_depth", "_queued", "_dead", "_on_change", "_on_depth", "_clock",
    )  # fmt: skip

    def __init__(
        self,
        name: str,
        *,
        max_concurrency: int | None,
        queue_size: int,
        ttl_s: float,
        on_change: Callable[[int, int], None] | None = None,
        retry_hint: Callable[[], float] | None = None,
        aging_s: float | None = 2.0,
        on_depth: Callable[[int, int], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if aging_s is not None and aging_s <= 0:
            raise ValueError("aging_s must be positive (None: no aging)")
        self.name = name
        self.max_concurrency = max_concurrency  # None: unlimited, the queue is never used
        self.queue_size = queue_size
        self.ttl_s = ttl_s
        self.aging_s = aging_s  # None: strict priority (low may starve under sustained high load)
        self.in_flight = 0
        self._fifos: tuple[deque[_Waiter], ...] = tuple(deque() for _ in range(_N_LEVELS))  # index: level
        self._depth = [0] * _N_LEVELS  # live waiters per level
        self._queued = 0  # live waiters in all
        self._dead = 0  # entries still in a FIFO whose waiter left
        self._on_change = on_change  # (in_flight, queued) → metrics
        self._on_depth = on_depth  # (level, live waiters at that level) → metrics
        self._clock = clock  # read once per queued request (its virtual arrival); TTLs use the loop's timer
        self.retry_hint = retry_hint  # seconds a client should wait; default 1 s

    @property
    def queued(self) -> int:
        return self._queued

    def depths(self) -> tuple[int, ...]:
        """Live waiters per level, index = level (low, normal, high)."""
        return tuple(self._depth)

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change(self.in_flight, self._queued)

    def _retry_after(self) -> float:
        return self.retry_hint() if self.retry_hint is not None else 1.0

    async def acquire(self, priority: int = NORMAL) -> None:
        """Take a slot: at once if one is free and nobody waits, else in ``priority`` order
        (0 low … 2 high; see the module docstring). Raises 429 / 503 as described there."""
        cap = self.max_concurrency
        if cap is None or (self.in_flight < cap and not self._queued):
            self.in_flight += 1
            self._changed()
            return
        if not 0 <= priority < _N_LEVELS:
            raise ValueError(f"priority must be 0..{MAX_LEVEL}, got {priority!r}")
        if self._queued >= self.queue_size:
            raise QueueFullError(
                f"model {self.name!r} is at capacity ({cap} in flight, {self.queue_size} queued); retry later",
                retry_after_s=self._retry_after(),
            )
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        aging = self.aging_s
        vt = self._clock() - priority * aging if aging is not None else float(-priority)
        w = _Waiter(vt, fut, priority)
        self._fifos[priority].append(w)
        self._queued += 1
        self._level_changed(priority, +1)
        self._changed()
        try:
            async with asyncio.timeout(self.ttl_s):
                await fut
        except TimeoutError:
            if fut.done() and not fut.cancelled():
                return  # the slot arrived together with the deadline: keep it
            self._leave(w)
            raise QueueTimeoutError(
                f"model {self.name!r}: request waited {self.ttl_s:g}s in the queue without a free slot",
                retry_after_s=self._retry_after(),
            ) from None
        except BaseException:
            if fut.done() and not fut.cancelled():
                self.release()  # handed a slot but cancelled before using it
            else:
                self._leave(w)
            raise

    def _level_changed(self, level: int, delta: int) -> None:
        d = self._depth[level] = self._depth[level] + delta
        if self._on_depth is not None:
            self._on_depth(level, d)

    def _leave(self, w: _Waiter) -> None:
        """A waiter gives up (timeout, cancel): counted out now, its entry skipped later."""
        if w.live:
            w.live = False
            self._queued -= 1
            self._dead += 1
            self._level_changed(w.level, -1)
            if self._dead > _COMPACT_AT and self._dead > self._queued:
                self._compact()
        self._changed()

    def _compact(self) -> None:
        for q in self._fifos:
            if q:
                live = [w for w in q if w.live]
                q.clear()
                q.extend(live)
        self._dead = 0

    def _next(self) -> _Waiter | None:
        """Pop the live waiter with the smallest virtual arrival (ties: the higher level)."""
        best: deque[_Waiter] | None = None
        best_vt = 0.0
        for level in range(MAX_LEVEL, -1, -1):
            q = self._fifos[level]
            while q and not q[0].live:
                q.popleft()
                self._dead -= 1
            if q and (best is None or q[0].vt < best_vt):
                best, best_vt = q, q[0].vt
        return best.popleft() if best is not None else None

    def release(self) -> None:
        self.in_flight -= 1
        cap = self.max_concurrency
        while self._queued and (cap is None or self.in_flight < cap):
            w = self._next()
            if w is None:  # pragma: no cover - _queued counts live entries, so one is found
                break
            w.live = False
            self._queued -= 1
            self._level_changed(w.level, -1)
            if not w.fut.done():  # cancelled but not yet run: counted out, not granted
                self.in_flight += 1
                w.fut.set_result(None)
        self._changed()
