"""The single owner of model residency: which local model is on which tier, and every move.

Decisions come from ``memory/policy.py`` (pure); this module applies them. Design choices, each
for a reason:

* **One asyncio lock for residency** (load, demote, unload, keep-alive): plan and apply happen
  under it, so no plan is made from a stale view and no two moves race (simplest correct choice on
  machines holding a handful of models). Inference leases of an *active* model never touch it: the
  fast path is ``in_flight += 1`` and return.
* **Blocking engine calls run in the executor**, never on the event loop.
* **Single flight**: all leases of a model that is not active await one shared activation task
  (``asyncio.shield``), so N concurrent requests cause one load, and a waiter that gives up
  (``asyncio.timeout``) never cancels the load for the others. A task left with no waiter while it
  waits for room gives up quietly.
* **Accounting before effect**: bytes are reserved on the destination tier before the engine call
  and released from the source after it, so ``usage() <= budgets`` holds at *every* instant, not
  only between moves. A violation raises ``MemoryAccountingError`` at once (a bug, never a user
  error). ``on_transition`` sees every completed tier move.
* **Waiting for in-flight requests**: when only models with requests in flight stand in the way,
  the activation releases the lock and waits for a release (or any move off the active tier), then
  re-plans; the caller's timeout bounds the wait. A permanent obstacle (pinned models, a model
  larger than the budget) raises ``InsufficientMemoryError`` at once.
* **A fresh engine per load**: ``engine_factory()`` is called on every disk → active load; an
  engine whose load raised is dropped (its load cleans up after itself).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from modelyard.errors import (
    ModelNotReadyError,
    InsufficientMemoryError,
    InvalidRequestError,
    ModelNotFoundError,
    ModelUnavailableError,
    ModelyardError,
)
from modelyard.memory.policy import Budgets, Demotion, Resident, Tier, fmt_bytes, plan, plan_demote
from modelyard.memory.records import (
    _TRANSITIONAL,
    snapshot_of,
    MemoryAccountingError,
    ModelRecord,
    ModelSpec,
    ModelState,
    _Lease,
)
from modelyard.observability.memory_metrics import MemoryMetrics
from modelyard.runtime.base import Engine, Footprint
from modelyard.runtime.pages import trim_heap

log = logging.getLogger("modelyard.memory")

Clock = Callable[[], float]
TransitionHook = Callable[[str, Tier, Tier, dict[Tier, int]], None]
TierEventHook = Callable[[str, str, str, int, str], None]  # (key, from, to, bytes, reason): O(1), no I/O


class MemoryManager:
    def __init__(
        self,
        budgets: Budgets,
        *,
        clock: Clock = time.monotonic,
        metrics: MemoryMetrics | None = None,
        executor: concurrent.futures.Executor | None = None,
        on_transition: TransitionHook | None = None,
        tier_event: TierEventHook | None = None,
        reap_interval_s: float | None = 1.0,  # None: no background reaper (call reap_idle yourself)
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> None:
        if budgets.active < 0 or budgets.host < 0:
            raise ValueError(f"budgets must be >= 0, got {budgets}")
        self._budgets = budgets
        self._clock = clock
        self._metrics = metrics
        self._owns_executor = executor is None
        self._executor = executor or concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="modelyard-memory")
        self.on_transition = on_transition  # must not raise: exceptions are logged and ignored
        self.tier_event = tier_event  # the record of every move (accounting/tier_events.py), same contract
        self._reap_interval_s = reap_interval_s
        self._sleep = sleep
        self._models: dict[str, ModelRecord] = {}
        self._lock = asyncio.Lock()
        self._released = asyncio.Event()  # set (and replaced) when room may have appeared
        self._release_armed = False  # someone holds the current event: set it on the next release
        self._reaper: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing = False
        self._closing_ev = asyncio.Event()
        if metrics is not None:
            metrics.set_budgets(budgets.active, budgets.host)
            metrics.set_usage(0, 0)

    # --- registration and lifecycle ----------------------------------------------------------

    @property
    def budgets(self) -> Budgets:
        return self._budgets

    def register(self, spec: ModelSpec) -> None:
        if spec.name in self._models:
            raise ValueError(f"model {spec.name!r} is already registered")
        if spec.warmup_requests < 0:
            raise ValueError(f"model {spec.name!r}: warmup_requests must be >= 0")
        m = ModelRecord(spec=spec, pinned=spec.pinned)
        if self._metrics is not None:
            m.in_flight_gauge = self._metrics.in_flight(spec.name)
            self._metrics.set_state(spec.name, ModelState.disk.value, None)
            self._metrics.set_tier(spec.name, Tier.disk.value)
        self._models[spec.name] = m

    async def start(self) -> None:
        """Preload pinned and ``preload`` models in registration order, then start the reaper.
        A preload that fails is recorded (state ``failed``, ``error``) and logged, not raised: the
        other models still serve, and the next lease retries it."""
        for m in list(self._models.values()):
            if m.pinned or m.spec.preload:
                try:
                    await self.load(m.spec.name)
                except ModelyardError as exc:
                    log.warning("preload of model %r failed: %s", m.spec.name, exc.message)
        if self._reaper is None and self._reap_interval_s is not None:
            self._reaper = asyncio.create_task(self._reap_loop(self._reap_interval_s), name="modelyard-memory-reaper")

    async def aclose(self) -> None:
        """Stop the reaper and unload every model (requests should have drained before this)."""
        if self._closing:
            return
        self._closing = True
        self._closing_ev.set()
        self._wake(force=True)
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        async with self._lock:
            for m in self._models.values():
                if m.tier is not Tier.disk:
                    if m.in_flight:
                        log.warning("unloading model %r with %d request(s) still in flight", m.spec.name, m.in_flight)
                    await self._to_disk(m, "shutdown")
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        if self._owns_executor:
            self._executor.shutdown(wait=False)

    # --- serving --------------------------------------------------------------------------------

    def lease(self, name: str, wait_s: float | None = None) -> contextlib.AbstractAsyncContextManager[Engine]:
        """Ensure ``name`` is active and count one request in flight until the block exits. With
        ``wait_s``, waiting for a load (or a restart) longer than that raises ``ModelNotReadyError``
        (503) whose ``Retry-After`` is the manager's estimate of when the model will serve."""
        return _Lease(self, self._get(name), wait_s)

    def ready_in_s(self, name: str) -> float | None:
        """Seconds until ``name`` should be serving (0: active; None: no basis for a guess)."""
        return self._get(name).ready_in_s(self._clock())

    def _not_ready(self, m: ModelRecord, waited: float) -> ModelNotReadyError:
        return m.not_ready(self._clock(), waited)

    async def load(self, name: str) -> None:
        """Bring ``name`` to the active tier (the same single-flight path as a lease)."""
        await self._acquire(self._get(name), take=False)

    async def demote(self, name: str, to: Tier | str) -> None:
        """Move an active model to host, or any model to disk. A model with requests in flight is
        refused (409), never demoted under them; a pinned one too."""
        m = self._get(name)
        try:
            to = Tier(to)
        except ValueError:
            raise InvalidRequestError(f"unknown tier {to!r}: expected 'host' or 'disk'", param="to") from None
        if to is Tier.active:
            raise InvalidRequestError("demote moves a model to host or disk; use load() for the active tier", param="to")
        async with self._lock:
            if m.tier is Tier.disk or m.tier is to:
                if to is Tier.host and m.tier is Tier.disk:
                    raise InvalidRequestError(f"model {name!r} is on disk; it can only be loaded to the active tier")
                return
            if m.pinned:
                raise ModelUnavailableError(
                    f"model {name!r} is pinned to the active tier; unpin it first", status=409, code="model_pinned")
            busy = m.in_flight + m.waiting
            if busy:
                raise ModelUnavailableError(
                    f"model {name!r} has {busy} request(s) in flight; retry when they have ended",
                    status=409, code="model_busy")
            if to is Tier.disk:
                await self._to_disk(m, "unload")
                return
            if m.engine is None or not m.engine.supports_host_tier:
                raise InvalidRequestError(f"model {name!r}: its engine cannot park weights on the host tier")
            p = plan_demote(name, self._residents(), self._budgets)
            if not p.feasible:
                raise InsufficientMemoryError(p.reason or "no room on the host tier")
            await self._apply(p.demotions, "demote")

    async def unload(self, name: str) -> None:
        await self.demote(name, Tier.disk)

    async def invalidate(self, name: str, engine: Engine, reason: str | None = None, *, restart: bool = True) -> bool:
        """``engine`` died (a managed process exited or stopped answering): take the model to
        disk even with requests in flight — they are failing already — and, with ``restart``,
        start a fresh engine at once (after the engine's restart backoff, ``ModelSpec.start_delay``)
        so that it is back before the next request needs it. False (a no-op) when the model has
        moved on to another engine since."""
        m = self._get(name)
        async with self._lock:
            if m.engine is not engine:
                return False
            await self._to_disk(m, "engine_failed")
            if reason:
                m.error = reason
        if restart and not self._closing:
            self._spawn(self._restart(m))
        return True

    async def _restart(self, m: ModelRecord) -> None:
        try:
            await self._acquire(m, take=False)
        except ModelyardError as exc:  # recorded on the model (state, error) and shown by /admin/models
            log.warning("restart of model %r failed: %s", m.spec.name, exc.message)

    async def pin(self, name: str) -> None:
        """Pin ``name`` to the active tier (loading it now); on failure it is left unpinned."""
        m = self._get(name)
        was = m.pinned
        m.pinned = True
        try:
            await self.load(name)
        except BaseException:
            m.pinned = was
            raise

    async def unpin(self, name: str) -> None:
        self._get(name).pinned = False
        self._wake(force=True)  # a load waiting on room may now evict it

    async def reap_idle(self) -> list[str]:
        """Demote every model idle for longer than its keep-alive (host if it can, else disk).
        The background reaper calls this; tests call it directly after advancing the clock."""
        moved: list[str] = []
        async with self._lock:
            for m in list(self._models.values()):
                if m.expired(self._clock()):
                    await self._demote_idle(m)
                    moved.append(m.spec.name)
        return moved

    async def quiesce(self) -> None:
        """Wait for background residency work (keep-alive-0 unloads, abandoned loads) to finish."""
        while pending := [t for t in self._tasks if not t.done()]:
            await asyncio.gather(*pending, return_exceptions=True)

    # --- views ------------------------------------------------------------------------------

    def usage(self) -> dict[Tier, int]:
        """Bytes accounted per tier, reservations of moves in progress included."""
        active = host = 0
        for m in self._models.values():
            active += m.active_bytes
            host += m.host_bytes
        return {Tier.active: active, Tier.host: host}

    def state(self, name: str) -> ModelState:
        return self._get(name).state

    def tier(self, name: str) -> Tier:
        return self._get(name).tier

    def would_evict(self, name: str) -> bool:
        """Whether making ``name`` active now would move another model (or cannot be done at all);
        False for a model already active or loading. Read-only: ``plan`` on the current residents."""
        m = self._get(name)
        if m.tier is Tier.active:
            return False
        need = m.footprint.active if m.footprint else (m.spec.estimated_bytes or 0)
        p = plan(name, need, self._residents(), self._budgets)
        return not p.feasible or bool(p.demotions)

    def snapshot(self) -> list[dict[str, Any]]:
        now = self._clock()
        return [snapshot_of(m, now) for m in self._models.values()]

    # --- leases -----------------------------------------------------------------------------

    def _get(self, name: str) -> ModelRecord:
        m = self._models.get(name)
        if m is None:
            raise ModelNotFoundError(f"local model {name!r} is not registered with the memory manager")
        return m

    def _take(self, m: ModelRecord) -> None:
        m.in_flight += 1
        m.last_used = self._clock()
        if m.in_flight_gauge is not None:
            m.in_flight_gauge.inc()

    def _release(self, m: ModelRecord) -> None:
        m.in_flight -= 1
        m.last_used = self._clock()
        if m.in_flight_gauge is not None:
            m.in_flight_gauge.dec()
        self._wake()
        if m.in_flight == 0 and m.waiting == 0 and m.spec.keep_alive_s == 0 and not m.pinned and not self._closing:
            self._spawn(self._expire_one(m))

    async def _acquire(self, m: ModelRecord, *, take: bool) -> Engine:
        m.waiting += 1
        try:
            while True:
                if self._closing:
                    raise ModelUnavailableError(f"model {m.spec.name!r}: the memory manager is shutting down")
                if m.state is ModelState.active:
                    if take:
                        self._take(m)  # before waiting -= 1: the model is never seen idle in between
                    assert m.engine is not None
                    return m.engine
                task = m.task
                if task is None or task.done():
                    task = m.task = self._spawn(self._activate(m))
                await asyncio.shield(task)
        finally:
            m.waiting -= 1
            self._wake()

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved, so a failure that no waiter saw is not reported as lost

    def _wake(self, force: bool = False) -> None:
        if self._release_armed or force:
            ev, self._released = self._released, asyncio.Event()
            self._release_armed = False
            ev.set()

    def _wait_event(self) -> asyncio.Event:
        self._release_armed = True
        return self._released

    # --- activation ---------------------------------------------------------------------------

    async def _activate(self, m: ModelRecord) -> None:
        """The shared activation of one model; loops while only in-flight requests block it, or
        while its engine may not start yet (a restart backoff, waited out without the lock)."""
        while True:
            async with self._lock:
                if self._closing:
                    raise ModelUnavailableError(f"model {m.spec.name!r}: the memory manager is shutting down")
                if m.state is ModelState.active or m.waiting == 0:
                    if m.state is ModelState.restarting:
                        self._set_state(m, ModelState.disk)
                    return
                blocked = await self._activate_locked(m)
                if blocked is None:
                    return
            if isinstance(blocked, float):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closing_ev.wait(), blocked)
            else:
                await blocked.wait()

    def _start_delay(self, m: ModelRecord) -> float | None:
        """A restart backoff still running: enter ``restarting`` and say how long (None: start now)."""
        delay = m.spec.start_delay() if m.spec.start_delay is not None else 0.0
        if delay <= 0:
            return None
        m.start_at = self._clock() + delay
        self._set_state(m, ModelState.restarting)
        return delay

    async def _activate_locked(self, m: ModelRecord) -> asyncio.Event | float | None:
        if m.tier is Tier.host:
            assert m.footprint is not None
            if await self._make_room(m, m.footprint.active):
                return self._wait_event()
            await self._host_to_active(m)
            return None
        need = m.footprint.active if m.footprint else (m.spec.estimated_bytes or 0)
        delay = self._start_delay(m)
        if delay is not None:
            return delay
        if await self._make_room(m, need):
            return self._wait_event()
        return await self._load_from_disk(m, need)

    async def _make_room(self, m: ModelRecord, need: int) -> bool:
        """Demote until ``need`` active bytes fit for ``m``. True: blocked by requests in flight."""
        while True:
            p = plan(m.spec.name, need, self._residents(), self._budgets)
            if not p.feasible:
                if p.blocked_by_in_flight:
                    return True
                m.error = p.reason
                raise InsufficientMemoryError(p.reason or "insufficient memory")
            if not p.demotions:
                return False
            await self._apply(p.demotions)

    def _residents(self) -> list[Resident]:
        out = []
        for name, m in self._models.items():
            if m.tier is Tier.disk:
                continue
            fp = m.footprint
            busy = m.in_flight + m.waiting + (1 if m.state in _TRANSITIONAL else 0)
            out.append(Resident(
                name=name, tier=m.tier,
                active_bytes=m.active_bytes if m.tier is Tier.active else (fp.active if fp else 0),
                host_bytes=m.host_bytes if m.tier is Tier.host else (fp.host if fp else 0),
                last_used=m.last_used or 0.0, in_flight=busy, pinned=m.pinned,
                can_host=m.engine is not None and bool(m.engine.supports_host_tier),
            ))
        return out

    async def _apply(self, demotions: tuple[Demotion, ...], why: str = "eviction") -> None:
        """Apply a plan in order, re-checking each victim right before it moves: a lease may have
        taken a planned victim while an earlier move awaited (the caller then re-plans)."""
        for d in demotions:
            v = self._models[d.name]
            expect = ModelState.active if d.src is Tier.active else ModelState.host
            if v.tier is not d.src or v.state is not expect or v.in_flight or v.waiting or v.pinned:
                return
            if d.dst is Tier.host:
                await self._to_host(v, why)
            else:
                await self._to_disk(v, why)

    async def _load_from_disk(self, m: ModelRecord, need: int) -> asyncio.Event | None:
        spec = m.spec
        self._set_state(m, ModelState.loading)
        m.tier, m.active_bytes = Tier.active, need  # reserve before the engine allocates
        self._check()
        t0 = m.move_started = self._clock()
        try:
            engine = m.engine = spec.engine_factory()
            fp = await self._run(engine.load, spec.artifact_path, spec.load_options)
            if not isinstance(fp, Footprint):
                raise TypeError(f"engine.load returned {type(fp).__name__}, not a Footprint")
        except BaseException as exc:
            self._drop(m, failed=exc)
            self._raise_load_error(m, exc)
        m.footprint = fp
        try:  # settle: the measured footprint replaces the reservation
            blocked = await self._make_room(m, fp.active)
        except InsufficientMemoryError:
            await self._discard(m)
            raise
        if blocked:  # the first load under-estimated and requests in flight hold the rest: retry
            await self._discard(m)  # later with the measured size reserved up front
            return self._wait_event()
        m.active_bytes = fp.active
        self._check()
        self._set_state(m, ModelState.warming)  # leases keep waiting: warm-up precedes any request
        try:
            for _ in range(spec.warmup_requests):
                await self._run(engine.warmup)
                m.warmups += 1
        except BaseException as exc:
            await self._discard(m)
            self._note_failure(m, exc, "warm-up")
            self._set_state(m, ModelState.failed)
            self._raise_load_error(m, exc)
        self._activated(m, Tier.disk, t0)
        return None

    async def _host_to_active(self, m: ModelRecord) -> None:
        assert m.engine is not None and m.footprint is not None
        self._set_state(m, ModelState.loading)
        m.active_bytes = m.footprint.active
        self._check()
        t0 = self._clock()
        try:
            await self._run(m.engine.to_active)
        except BaseException as exc:
            m.active_bytes = 0
            await self._to_disk(m)
            self._note_failure(m, exc, "host → active")
            self._set_state(m, ModelState.failed)
            self._raise_load_error(m, exc)
        m.host_bytes = 0
        self._check()
        self._activated(m, Tier.host, t0)

    def _activated(self, m: ModelRecord, src: Tier, t0: float) -> None:
        now = self._clock()
        m.loads += 1
        m.load_seconds += now - t0
        m.last_used = now
        self._set_state(m, ModelState.active)
        self._transition(m, src, Tier.active, now - t0)

    # --- demotions (all under the lock) -------------------------------------------------------

    async def _to_host(self, m: ModelRecord, why: str) -> None:
        assert m.engine is not None and m.footprint is not None
        self._set_state(m, ModelState.demoting)
        m.host_bytes = m.footprint.host  # reserve on host first
        self._check()
        t0 = self._clock()
        try:
            await self._run(m.engine.to_host)
        except Exception as exc:
            m.host_bytes = 0
            self._note_failure(m, exc, "active → host")
            await self._to_disk(m, "demotion_failed")
            self._set_state(m, ModelState.failed)
            return
        m.active_bytes = 0
        self._check()
        await self._run(trim_heap)
        m.demotions += 1
        self._set_state(m, ModelState.host)
        self._transition(m, Tier.active, Tier.host, self._clock() - t0, why)

    async def _to_disk(self, m: ModelRecord, why: str = "load_failed") -> None:
        src = m.tier
        self._set_state(m, ModelState.unloading)
        t0 = self._clock()
        failed: BaseException | None = None
        if m.engine is not None:
            try:
                await self._run(m.engine.unload)
            except Exception as exc:
                failed = exc
        m.engine, m.active_bytes, m.host_bytes = None, 0, 0
        self._check()
        await self._run(trim_heap)  # the freed model back to the OS, not left to fragment the heap
        if failed is not None:
            self._note_failure(m, failed, "unload")
        self._set_state(m, ModelState.failed if failed else ModelState.disk)
        if src is not Tier.disk:
            m.demotions += 1
            self._transition(m, src, Tier.disk, self._clock() - t0, why)

    async def _discard(self, m: ModelRecord) -> None:
        """Undo a load that never became active (no transition: it never arrived)."""
        engine = m.engine
        if engine is not None:
            try:
                await self._run(engine.unload)
            except Exception as exc:
                log.warning("unloading model %r after a failed activation raised: %s", m.spec.name, exc)
        self._drop(m)

    def _drop(self, m: ModelRecord, failed: BaseException | None = None) -> None:
        m.engine, m.tier, m.active_bytes, m.host_bytes = None, Tier.disk, 0, 0
        self._check()
        if failed is not None:
            self._note_failure(m, failed, "load")
        self._set_state(m, ModelState.failed if failed is not None else ModelState.disk)

    async def _demote_idle(self, m: ModelRecord) -> None:
        if m.spec.keep_alive_s != 0 and m.engine is not None and m.engine.supports_host_tier:
            p = plan_demote(m.spec.name, self._residents(), self._budgets)
            if p.feasible:
                await self._apply(p.demotions, "idle")
                return
        await self._to_disk(m, "idle")

    async def _expire_one(self, m: ModelRecord) -> None:
        async with self._lock:
            if not self._closing and m.expired(self._clock()):
                await self._demote_idle(m)

    async def _reap_loop(self, interval: float) -> None:
        while True:
            await self._sleep(interval)
            try:
                await self.reap_idle()
            except Exception:  # keep reaping: one bad engine must not stop keep-alive for all
                log.exception("keep-alive reaper failed")

    # --- bookkeeping ------------------------------------------------------------------------

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _check(self) -> None:
        u = self.usage()
        if self._metrics is not None:
            self._metrics.set_usage(u[Tier.active], u[Tier.host])
        if u[Tier.active] > self._budgets.active or u[Tier.host] > self._budgets.host:
            raise MemoryAccountingError(
                f"memory accounting exceeds a budget: active {fmt_bytes(u[Tier.active])} of "
                f"{fmt_bytes(self._budgets.active)}, host {fmt_bytes(u[Tier.host])} of {fmt_bytes(self._budgets.host)}")

    def _set_state(self, m: ModelRecord, state: ModelState) -> None:
        prev, m.state = m.state, state
        if self._metrics is not None:
            self._metrics.set_state(m.spec.name, state.value, prev.value)

    def _transition(self, m: ModelRecord, src: Tier, dst: Tier, seconds: float, why: str = "load") -> None:
        m.tier = dst
        log.info("model %r: %s → %s in %.3fs", m.spec.name, src.value, dst.value, seconds)
        if self._metrics is not None:
            self._metrics.set_tier(m.spec.name, dst.value)
            self._metrics.transition(m.spec.name, src.value, dst.value, max(0.0, seconds))
        if src is Tier.active:
            self._wake()  # room appeared on the active tier
        if self.on_transition is not None:
            try:
                self.on_transition(m.spec.name, src, dst, self.usage())
            except Exception:
                log.exception("on_transition hook raised")
        if self.tier_event is not None:
            fp, on = m.footprint, (src if dst is Tier.disk else dst)  # the bytes of the tier reached (or left)
            nbytes = 0 if fp is None else fp.active if on is Tier.active else fp.host
            try:
                self.tier_event(m.spec.name, src.value, dst.value, nbytes, why)
            except Exception:
                log.exception("tier_event hook raised")

    def _note_failure(self, m: ModelRecord, exc: BaseException, what: str) -> None:
        if m.note_failure(exc, what) and self._metrics is not None:
            self._metrics.load_failures.labels(m.spec.name).inc()

    def _raise_load_error(self, m: ModelRecord, exc: BaseException) -> None:
        raise m.load_error(exc)
