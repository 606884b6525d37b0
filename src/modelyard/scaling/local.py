"""Autoscaling on one machine: the pure decision (``policy.decide``) applied to the memory manager.

A model's **replicas** here are its local / process deployments (``chat``, ``chat/1``, ...: a second
in-process instance, or a second engine process on its own port) that are resident on the active
tier. Desired N → the first N of them are loaded (the memory manager finds the room, under its
budgets, or refuses: the reason says so); the others are demoted when idle (host if the engine can
park there, else disk). So scale to zero is the memory manager's own demotion, cron pre-warm is a
load before the window, and ``max_replicas`` is bounded by the deployments declared.

The controller owns each model's ``ScaleState`` and nothing else; it reads the admission queue (in
flight + waiting) and the manager's snapshot, and acts only through the manager's public API.
Clocks are injected; ``tick()`` is one pass (tests call it directly).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from modelyard.config.scaling import AutoscaleConfig
from modelyard.errors import InvalidRequestError, ModelyardError

from .policy import Decision, Observation, ScaleState, decide

log = logging.getLogger("modelyard.scaling")


@dataclass(frozen=True)
class Scaled:
    """One autoscaled model: its policy and the manager keys of its replica deployments, in order."""

    name: str
    policy: AutoscaleConfig
    keys: tuple[str, ...]


def cause_of(reason: str) -> str:
    """A bounded label for metrics from a decision's reason."""
    for word in ("prewarm", "predicted", "idle", "load", "from zero"):
        if word in reason:
            return {"predicted": "predictive", "from zero": "load"}.get(word, word)
    return "min_max"


class LocalAutoscaler:
    def __init__(
        self,
        models: Sequence[Scaled],
        manager: Any,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.timezone.utc),
        forecast: Callable[[str, dt.datetime], float | None] | None = None,
        refresh_forecast: Callable[[], Awaitable[Callable[[str, dt.datetime], float | None]]] | None = None,
        refresh_every_s: float = 3600.0,
        metrics: Any = None,
        interval_s: float = 1.0,
    ) -> None:
        self._models = list(models)
        self._manager = manager
        self._clock = clock
        self._wall = wall_clock
        self._forecast = forecast
        self._refresh = refresh_forecast  # reads the spend history again (predictive models only)
        self._refresh_every = refresh_every_s
        self._refreshed_at: float | None = None
        self._metrics = metrics
        self._interval = interval_s
        self._state: dict[str, ScaleState] = {}
        self._last_seen: dict[str, float] = {}  # model → monotonic time some request was ongoing
        self._retry: dict[str, tuple[float, float]] = {}  # key → (no load attempt before, backoff): failed loads
        self.last: dict[str, Decision] = {}
        self._task: asyncio.Task[None] | None = None

    def actual(self, snap: Mapping[str, Mapping[str, Any]], m: Scaled) -> int:
        return sum(1 for k in m.keys if snap.get(k, {}).get("tier") == "active")

    @staticmethod
    def ongoing(snap: Mapping[str, Mapping[str, Any]], m: Scaled) -> float:
        """Requests in flight on, or waiting for, the model's replicas (the manager counts both)."""
        return float(sum(snap[k].get("in_flight", 0) + snap[k].get("waiting", 0) for k in m.keys if k in snap))

    def _idle_s(self, m: Scaled, snap: Mapping[str, Mapping[str, Any]], now: float, ongoing: float) -> float:
        if ongoing > 0:
            self._last_seen[m.name] = now
        used = [snap[k]["last_used"] for k in m.keys if snap.get(k, {}).get("last_used") is not None]
        idle = min(used) if used else math.inf
        if m.name in self._last_seen:
            idle = min(idle, now - self._last_seen[m.name])
        return idle

    async def tick(self) -> list[Decision]:
        snap = {row["name"]: row for row in self._manager.snapshot()}
        now, wall = self._clock(), self._wall()
        out: list[Decision] = []
        acted = False
        for m in self._models:
            ongoing = self.ongoing(snap, m)
            actual = self.actual(snap, m)
            state = self._state.get(m.name, ScaleState(actual))
            if state.replicas != actual and state.pending is None:
                state = ScaleState(actual, None, now, state.reason)  # someone else moved it (keep-alive, admin)
            predicted = self._forecast(m.name, wall) if (self._forecast and m.policy.predictive) else None
            obs = Observation(ongoing, self._idle_s(m, snap, now, ongoing), predicted)
            d = decide(m.policy, state, obs, now=now, wall=wall)
            desired = min(d.desired, len(m.keys))
            if desired != actual:
                await self._apply(m, snap, actual, desired, d.reason)
                acted = True
            self._state[m.name] = d.state
            self.last[m.name] = d
            out.append(d)
        if self._metrics is not None:  # what the moves left: one more snapshot only if something moved
            after = {row["name"]: row for row in self._manager.snapshot()} if acted else snap
            for m, d in zip(self._models, out, strict=True):
                desired = min(d.desired, len(m.keys))
                self._metrics.observe(m.name, desired, self.actual(after, m), cause_of(d.reason),
                                      changed=desired != self.actual(snap, m))
        return out

    async def _apply(self, m: Scaled, snap: Mapping[str, Mapping[str, Any]], actual: int, desired: int, why: str) -> None:
        if desired > actual:
            now = self._clock()
            todo = [k for k in m.keys if snap.get(k, {}).get("tier") != "active"
                    and self._retry.get(k, (0.0, 0.0))[0] <= now][: desired - actual]
            for k in todo:
                log.info("autoscale %s: loading %s (%s)", m.name, k, why)
                try:
                    await self._manager.load(k)
                except ModelyardError as exc:  # no room, or the load failed: back off (5 s doubling to 5 min)
                    backoff = min(300.0, 2 * self._retry.get(k, (0.0, 2.5))[1])
                    self._retry[k] = (self._clock() + backoff, backoff)
                    log.warning("autoscale %s: could not load %s (next try in %.0f s): %s", m.name, k, backoff, exc.message)
                    return
                self._retry.pop(k, None)
        else:
            idle = [k for k in reversed(m.keys) if snap.get(k, {}).get("tier") == "active"
                    and not snap.get(k, {}).get("in_flight")][: actual - desired]
            for k in idle:
                log.info("autoscale %s: demoting %s (%s)", m.name, k, why)
                try:
                    try:
                        await self._manager.demote(k, "host")
                    except InvalidRequestError:  # the engine cannot park weights on the host tier
                        await self._manager.demote(k, "disk")
                except ModelyardError as exc:  # busy now, or no room on the host tier: the next tick retries
                    log.info("autoscale %s: %s stays: %s", m.name, k, exc.message)

    def status(self) -> list[dict[str, Any]]:
        """What ``/admin/autoscale`` shows: desired vs actual per model and the reason of the last decision."""
        snap = {row["name"]: row for row in self._manager.snapshot()}
        rows = []
        for m in self._models:
            d = self.last.get(m.name)
            desired = None if d is None else min(d.desired, len(m.keys))
            rows.append({"model": m.name, "actual": self.actual(snap, m), "desired": desired,
                         "target": None if d is None else d.target, "reason": None if d is None else d.reason,
                         "replica_deployments": list(m.keys), "min_replicas": m.policy.min_replicas,
                         "max_replicas": min(m.policy.max_replicas, len(m.keys))})
        return rows

    async def start(self) -> None:
        if self._task is None and self._models:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="modelyard-autoscaler")

    async def refresh(self) -> None:
        """Rebuild the hour-of-week forecast from the spend rows (when some model is predictive)."""
        if self._refresh is None or not any(m.policy.predictive for m in self._models):
            return
        self._refreshed_at = self._clock()
        try:
            self._forecast = await self._refresh()
        except ModelyardError as exc:  # the database away: keep the last forecast
            log.warning("autoscale: forecast not refreshed: %s", exc.message)

    async def _run(self) -> None:
        while True:
            try:
                if self._refreshed_at is None or self._clock() - self._refreshed_at >= self._refresh_every:
                    await self.refresh()
                await self.tick()
            except Exception:  # a bug here must not stop scaling for good
                log.exception("autoscaler tick failed")
            await asyncio.sleep(self._interval)

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
