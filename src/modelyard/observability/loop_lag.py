"""Event-loop lag and GC pauses: the two usual suspects of a tail-latency stall, in /metrics.

``LoopLagMonitor`` sleeps ``interval_s`` at a time and records how late it woke up: any callback
that holds the loop (a blocking write, a long loop over rows, a GC pass) shows up as lag, whoever
caused it. ``GcPauses`` times every collection through ``gc.callbacks`` (a few hundred ns per
collection when nothing is slow). Both are created in the app's lifespan and removed at shutdown.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Histogram

_LAG_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class LoopLagMonitor:
    def __init__(self, registry: CollectorRegistry, *, interval_s: float = 0.05,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.histogram = Histogram("modelyard_event_loop_lag_seconds",
                                   "How late the event loop ran a timer that was due (sampled every 50 ms)",
                                   buckets=_LAG_BUCKETS, registry=registry)
        self._interval = interval_s
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        self.max_lag_s = 0.0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="modelyard-loop-lag")

    async def _run(self) -> None:
        interval, clock, observe = self._interval, self._clock, self.histogram.observe
        while True:
            t = clock()
            await asyncio.sleep(interval)
            lag = max(0.0, clock() - t - interval)
            observe(lag)
            if lag > self.max_lag_s:
                self.max_lag_s = lag

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None


class GcPauses:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.histogram = Histogram("modelyard_gc_pause_seconds", "Duration of the interpreter's garbage collections",
                                   ["generation"], buckets=_LAG_BUCKETS, registry=registry)
        self._children = [self.histogram.labels(str(g)) for g in range(3)]
        self._t0 = 0.0
        self._installed = False

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._t0 = time.perf_counter()
        else:
            self._children[info.get("generation", 2)].observe(time.perf_counter() - self._t0)

    def start(self) -> None:
        if not self._installed:
            gc.callbacks.append(self._callback)
            self._installed = True

    def stop(self) -> None:
        if self._installed:
            gc.callbacks.remove(self._callback)
            self._installed = False
