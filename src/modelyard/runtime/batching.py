"""``DynamicBatcher``: merge concurrent requests into model-sized batches (as Triton's dynamic batcher).

One batcher per model (and per kind of call): a batch never mixes models because a batcher has one
``run_batch``. Callers ``await batcher.submit(items)`` and get their own results back, in order.

How a batch forms: when the first request arrives, the worker waits until ``max_batch_size`` items
are queued or ``max_queue_delay_us`` has passed since the *oldest* queued request arrived, then
takes items from the queue in arrival order up to ``max_batch_size``. A request larger than that is
split over several batches and its results are delivered together. While a batch runs (in
``executor``: ``run_batch`` is blocking), new requests queue up, so under load batches fill up
without waiting at all. Batches of one batcher run one at a time (the model's cores are busy).

Failure semantics: if ``run_batch`` raises (or returns the wrong number of results), every caller
with items in that batch gets the exception, and a split caller's queued remainder is dropped. A
caller cancelled before its items were taken loses them from the queue; items already running are
computed and their results discarded. ``aclose()`` refuses new requests, finishes the queued ones
and stops the worker.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import Any, Generic, TypeVar

from modelyard.errors import ModelUnavailableError

T = TypeVar("T")
R = TypeVar("R")
log = logging.getLogger("modelyard.batching")


class _Request:
    __slots__ = ("items", "future", "enqueued", "taken", "done", "results")

    def __init__(self, items: list[Any], future: asyncio.Future[list[Any]], enqueued: float) -> None:
        self.items = items
        self.future = future
        self.enqueued = enqueued
        self.taken = 0  # items handed to batches so far
        self.done = 0  # results received so far
        self.results: list[Any] = [None] * len(items)


class DynamicBatcher(Generic[T, R]):
    def __init__(
        self,
        run_batch: Callable[[list[T]], list[R]],
        *,
        max_batch_size: int,
        max_queue_delay_us: int,
        executor: Executor | None = None,
        name: str = "batcher",
    ) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        if max_queue_delay_us < 0:
            raise ValueError("max_queue_delay_us must be >= 0")
        self._run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_queue_delay_s = max_queue_delay_us / 1e6
        self._executor = executor
        self.name = name
        self._pending: collections.deque[_Request] = collections.deque()
        self._pending_items = 0
        self._wakeup: asyncio.Event | None = None
        self._worker: asyncio.Task[None] | None = None
        self._closed = False
        # statistics
        self.batches = 0
        self.items = 0
        self.largest_batch = 0

    # --- callers -----------------------------------------------------------------------------------
    async def submit(self, items: Sequence[T]) -> list[R]:
        """Results for ``items``, in order, computed in one or more (shared) batches."""
        if self._closed:
            raise ModelUnavailableError(f"batcher {self.name!r} is closed")
        if not items:
            return []
        loop = asyncio.get_running_loop()
        if self._wakeup is None:
            self._wakeup = asyncio.Event()
        req = _Request(list(items), loop.create_future(), loop.time())
        self._pending.append(req)
        self._pending_items += len(req.items)
        self._wakeup.set()
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._work(), name=f"batcher:{self.name}")
        try:
            return await req.future
        except asyncio.CancelledError:
            self._unqueue(req)
            raise

    @property
    def queued_items(self) -> int:
        return self._pending_items

    def stats(self) -> dict[str, Any]:
        return {"batches": self.batches, "items": self.items, "largest_batch": self.largest_batch,
                "mean_batch": self.items / self.batches if self.batches else 0.0, "queued_items": self._pending_items}

    async def aclose(self) -> None:
        """Refuse new requests, finish the queued ones, stop the worker."""
        self._closed = True
        if self._wakeup is not None:
            self._wakeup.set()
        worker = self._worker
        if worker is not None and not worker.done():
            await asyncio.shield(worker)

    # --- the worker --------------------------------------------------------------------------------
    async def _work(self) -> None:
        try:
            while True:
                if not self._pending:
                    if self._closed:
                        return
                    assert self._wakeup is not None
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    continue
                await self._gather()
                if self._pending:
                    await self._execute(*self._take())
        except BaseException as exc:  # a bug or a cancelled worker: nobody may wait forever
            while self._pending:
                self._fail(self._pending[0], exc if isinstance(exc, Exception) else
                           ModelUnavailableError(f"batcher {self.name!r} stopped"))
            if not isinstance(exc, asyncio.CancelledError):
                log.exception("batcher %r failed", self.name)
            raise

    async def _gather(self) -> None:
        """Wait until a full batch is queued or the oldest request has waited the delay."""
        loop = asyncio.get_running_loop()
        assert self._wakeup is not None
        deadline = self._pending[0].enqueued + self.max_queue_delay_s
        while self._pending and self._pending_items < self.max_batch_size and not self._closed:
            timeout = deadline - loop.time()
            if timeout <= 0:
                return
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), timeout)
            except TimeoutError:
                return

    def _take(self) -> tuple[list[Any], list[tuple[_Request, int, int, int]]]:
        batch: list[Any] = []
        parts: list[tuple[_Request, int, int, int]] = []  # (request, batch offset, request offset, count)
        while self._pending and len(batch) < self.max_batch_size:
            req = self._pending[0]
            n = min(self.max_batch_size - len(batch), len(req.items) - req.taken)
            parts.append((req, len(batch), req.taken, n))
            batch.extend(req.items[req.taken : req.taken + n])
            req.taken += n
            self._pending_items -= n
            if req.taken == len(req.items):
                self._pending.popleft()
        return batch, parts

    async def _execute(self, batch: list[Any], parts: list[tuple[_Request, int, int, int]]) -> None:
        loop = asyncio.get_running_loop()
        self.batches += 1
        self.items += len(batch)
        self.largest_batch = max(self.largest_batch, len(batch))
        try:
            results = await loop.run_in_executor(self._executor, self._run_batch, batch)
            if not isinstance(results, Sequence) or len(results) != len(batch):
                got = len(results) if isinstance(results, Sequence) else type(results).__name__
                raise RuntimeError(f"batcher {self.name!r}: run_batch returned {got} results for {len(batch)} items")
        except Exception as exc:
            for req, *_ in parts:
                self._fail(req, exc)
            return
        except BaseException as exc:  # cancelled while the batch ran: its callers must hear of it
            for req, *_ in parts:
                self._fail(req, ModelUnavailableError(f"batcher {self.name!r} stopped"))
            raise exc
        for req, b0, r0, n in parts:
            if req.future.done():  # cancelled meanwhile, or failed in another batch
                continue
            req.results[r0 : r0 + n] = results[b0 : b0 + n]
            req.done += n
            if req.done == len(req.items):
                req.future.set_result(req.results)

    def _unqueue(self, req: _Request) -> None:
        """Drop what is still queued of ``req`` (cancelled or failed)."""
        try:
            self._pending.remove(req)
        except ValueError:
            return
        self._pending_items -= len(req.items) - req.taken

    def _fail(self, req: _Request, exc: BaseException) -> None:
        self._unqueue(req)
        if not req.future.done():
            req.future.set_exception(exc)
