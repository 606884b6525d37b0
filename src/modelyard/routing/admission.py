"""Admission control per public model: a concurrency cap and a bounded FIFO queue with a TTL.

A request either takes a slot at once, waits in the queue (at most ``ttl_s``), or is refused:
``QueueFullError`` (429) when the queue is full, ``QueueTimeoutError`` (503) when its TTL ran out;
both carry ``Retry-After``. A waiter that is cancelled (client gone) leaves the queue and never
leaks a slot, even when it is cancelled in the instant it was handed one.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

from modelyard.errors import QueueFullError, QueueTimeoutError


class Admission:
    __slots__ = ("name", "max_concurrency", "queue_size", "ttl_s", "in_flight", "_waiters", "_on_change", "retry_hint")

    def __init__(
        self,
        name: str,
        *,
        max_concurrency: int | None,
        queue_size: int,
        ttl_s: float,
        on_change: Callable[[int, int], None] | None = None,
        retry_hint: Callable[[], float] | None = None,
    ) -> None:
        self.name = name
        self.max_concurrency = max_concurrency  # None: unlimited, the queue is never used
        self.queue_size = queue_size
        self.ttl_s = ttl_s
        self.in_flight = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._on_change = on_change  # (in_flight, queued) → metrics
        self.retry_hint = retry_hint  # seconds a client should wait; default 1 s

    @property
    def queued(self) -> int:
        return len(self._waiters)

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change(self.in_flight, len(self._waiters))

    def _retry_after(self) -> float:
        return self.retry_hint() if self.retry_hint is not None else 1.0

    async def acquire(self) -> None:
        cap = self.max_concurrency
        if cap is None or (self.in_flight < cap and not self._waiters):
            self.in_flight += 1
            self._changed()
            return
        if len(self._waiters) >= self.queue_size:
            raise QueueFullError(
                f"model {self.name!r} is at capacity ({cap} in flight, {self.queue_size} queued); retry later",
                retry_after_s=self._retry_after(),
            )
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        self._changed()
        try:
            async with asyncio.timeout(self.ttl_s):
                await fut
        except TimeoutError:
            if fut.done() and not fut.cancelled():
                return  # the slot arrived together with the deadline: keep it
            self._remove(fut)
            raise QueueTimeoutError(
                f"model {self.name!r}: request waited {self.ttl_s:g}s in the queue without a free slot",
                retry_after_s=self._retry_after(),
            ) from None
        except BaseException:
            if fut.done() and not fut.cancelled():
                self.release()  # handed a slot but cancelled before using it
            else:
                self._remove(fut)
            raise

    def _remove(self, fut: asyncio.Future[None]) -> None:
        try:
            self._waiters.remove(fut)
        except ValueError:
            pass
        self._changed()

    def release(self) -> None:
        self.in_flight -= 1
        cap = self.max_concurrency
        while self._waiters and (cap is None or self.in_flight < cap):
            fut = self._waiters.popleft()
            if not fut.done():
                self.in_flight += 1
                fut.set_result(None)
        self._changed()
