"""Unit tests of the memory manager (modelyard.memory.manager) with fake engines.

The fake engines implement the Engine protocol with a configurable footprint, a load/warm-up delay
held by a ``threading.Event``, failure injection and counters; time is an injected clock; the
keep-alive reaper is driven by calling ``reap_idle()``. The budget invariant is checked through
the ``on_transition`` hook after every transition, including under random concurrent workloads.
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections import Counter
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from modelyard.errors import (
    InsufficientMemoryError,
    InvalidRequestError,
    ModelLoadError,
    ModelNotFoundError,
    ModelUnavailableError,
)
from modelyard.memory.manager import MemoryManager, ModelSpec, ModelState
from modelyard.memory.policy import Budgets, Tier
from modelyard.observability.memory_metrics import MemoryMetrics
from modelyard.runtime.base import Capability, Footprint, LoadOptions
from modelyard.testing.clock import ManualClock as FakeClock

MAIN_THREAD = threading.get_ident()


class FakeModel:
    """One fake model: its configuration and counters across every engine its factory creates."""

    def __init__(self, name: str, weights: int = 100, kv: int = 0, overhead: int = 0, *, host: bool = True,
                 clock: FakeClock | None = None, load_s: float = 0.0) -> None:
        self.name = name
        self.footprint = Footprint(weights, kv, overhead)
        self.supports_host = host
        self.load_gate: threading.Event | None = None
        self.warmup_gate: threading.Event | None = None
        self.fail_loads = 0  # the next N loads raise
        self.fail_warmups = 0
        self.load_error: Exception = ModelLoadError("corrupt GGUF header")
        self.counts: Counter[str] = Counter()
        self.events: list[str] = []
        self.threads: set[int] = set()
        self.engines: list[FakeEngine] = []
        self.violations: list[str] = []
        self.clock, self.load_s = clock, load_s
        self._lock = threading.Lock()

    def factory(self) -> FakeEngine:
        e = FakeEngine(self)
        self.engines.append(e)
        return e

    def record(self, event: str) -> None:
        with self._lock:
            self.counts[event] += 1
            self.events.append(event)
            self.threads.add(threading.get_ident())

    def spec(self, **kw: Any) -> ModelSpec:
        return ModelSpec(self.name, self.factory, f"/models/{self.name}.gguf", **kw)


class FakeEngine:
    capabilities = frozenset({Capability.chat})

    def __init__(self, model: FakeModel) -> None:
        self.m = model
        self.supports_host_tier = model.supports_host
        self.where = "disk"
        self.busy = 0  # requests using it (set by the tests' lease bodies)

    def load(self, artifact_path: str, opts: LoadOptions) -> Footprint:
        m = self.m
        m.record("load")
        assert self.where == "disk"
        if m.load_gate is not None:
            assert m.load_gate.wait(10)
        if m.clock is not None:
            m.clock.advance(m.load_s)
        if m.fail_loads:
            m.fail_loads -= 1
            raise m.load_error
        self.where = "active"
        return m.footprint

    def _check_idle(self, what: str) -> None:
        if self.busy:
            self.m.violations.append(f"{what} with {self.busy} request(s) in flight")

    def to_host(self) -> None:
        self.m.record("to_host")
        self._check_idle("to_host")
        assert self.where == "active"
        self.where = "host"

    def to_active(self) -> None:
        self.m.record("to_active")
        assert self.where == "host"
        self.where = "active"

    def unload(self) -> None:
        self.m.record("unload")
        self._check_idle("unload")
        self.where = "disk"

    def warmup(self) -> None:
        self.m.record("warmup")
        assert self.where == "active"
        if self.m.warmup_gate is not None:
            assert self.m.warmup_gate.wait(10)
        if self.m.fail_warmups:
            self.m.fail_warmups -= 1
            raise RuntimeError("warm-up produced NaN")


class Harness:
    def __init__(self, budgets: Budgets, *models: FakeModel, metrics: MemoryMetrics | None = None,
                 **specs: dict[str, Any]) -> None:
        self.clock = FakeClock()
        self.transitions: list[tuple[str, Tier, Tier, dict[Tier, int]]] = []
        self.violations: list[str] = []
        self.mm = MemoryManager(budgets, clock=self.clock, metrics=metrics, on_transition=self.hook, reap_interval_s=None)
        self.models = {m.name: m for m in models}
        for m in models:
            self.mm.register(m.spec(**specs.get(m.name, {})))

    def hook(self, name: str, src: Tier, dst: Tier, usage: dict[Tier, int]) -> None:
        b = self.mm.budgets
        if usage[Tier.active] > b.active or usage[Tier.host] > b.host:
            self.violations.append(f"{name} {src}->{dst}: {usage}")
        if src is Tier.active and dst is not Tier.active:
            row = next(r for r in self.mm.snapshot() if r["name"] == name)
            if row["in_flight"]:
                self.violations.append(f"{name} demoted with {row['in_flight']} in flight")
        self.transitions.append((name, src, dst, dict(usage)))

    def moves(self) -> list[tuple[str, str, str]]:
        return [(n, s.value, d.value) for n, s, d, _ in self.transitions]

    def row(self, name: str) -> dict[str, Any]:
        return next(r for r in self.mm.snapshot() if r["name"] == name)

    async def use(self, name: str) -> FakeEngine:
        self.clock.advance(1)
        async with self.mm.lease(name) as engine:
            return engine  # type: ignore[return-value]


async def wait_for(cond: Any, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.001)


# --- single flight, warm-up, executor ------------------------------------------------------------


async def test_ten_concurrent_leases_share_one_load() -> None:
    a = FakeModel("a")
    a.load_gate = threading.Event()
    h = Harness(Budgets(1000, 0), a)
    entered: list[FakeEngine] = []

    async def client() -> None:
        async with h.mm.lease("a") as e:
            entered.append(e)  # type: ignore[arg-type]
            await asyncio.sleep(0)

    tasks = [asyncio.create_task(client()) for _ in range(10)]
    await wait_for(lambda: a.counts["load"] == 1)
    await asyncio.sleep(0.01)
    assert not any(t.done() for t in tasks) and h.mm.state("a") is ModelState.loading
    a.load_gate.set()
    await asyncio.gather(*tasks)
    assert a.counts["load"] == 1 and len(entered) == 10 and len(set(map(id, entered))) == 1
    assert h.row("a")["loads"] == 1 and h.row("a")["in_flight"] == 0
    await h.mm.aclose()


async def test_warmup_runs_before_the_first_lease_returns() -> None:
    a = FakeModel("a")
    a.warmup_gate = threading.Event()
    h = Harness(Budgets(1000, 0), a, a={"warmup_requests": 3})
    task = asyncio.create_task(h.use("a"))
    await wait_for(lambda: h.mm.state("a") is ModelState.warming)
    await asyncio.sleep(0.01)
    assert not task.done()  # leases wait while the model warms up
    a.warmup_gate.set()
    await task
    assert a.events == ["load", "warmup", "warmup", "warmup"]
    assert h.row("a")["warmups"] == 3 and h.mm.state("a") is ModelState.active
    await h.use("a")
    assert a.counts["warmup"] == 3  # only after a load
    await h.mm.aclose()


async def test_every_engine_call_runs_off_the_event_loop() -> None:
    a, b = FakeModel("a"), FakeModel("b")
    h = Harness(Budgets(100, 100), a, b)
    for name in "abab":
        await h.use(name)
    await h.mm.unload("a")
    await h.mm.aclose()
    assert a.counts["to_host"] and a.counts["to_active"] and a.counts["unload"]
    assert MAIN_THREAD not in a.threads | b.threads


async def test_fast_path_lease_does_not_wait_for_another_models_load() -> None:
    a, b = FakeModel("a"), FakeModel("b")
    h = Harness(Budgets(1000, 0), a, b)
    await h.use("a")
    b.load_gate = threading.Event()
    loading = asyncio.create_task(h.use("b"))
    await wait_for(lambda: b.counts["load"] == 1)  # b's load holds the residency lock
    async with asyncio.timeout(1):
        await h.use("a")
    b.load_gate.set()
    await loading
    await h.mm.aclose()


async def test_cancelled_waiter_does_not_cancel_the_shared_load() -> None:
    a = FakeModel("a")
    a.load_gate = threading.Event()
    h = Harness(Budgets(1000, 0), a)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await h.use("a")
    other = asyncio.create_task(h.use("a"))
    a.load_gate.set()
    await other
    assert a.counts["load"] == 1 and h.mm.state("a") is ModelState.active
    await h.mm.aclose()


# --- eviction ---------------------------------------------------------------------------------


async def test_lru_eviction_under_a_budget_of_two_models() -> None:
    a, b, c = FakeModel("a", host=False), FakeModel("b", host=False), FakeModel("c", host=False)
    h = Harness(Budgets(200, 0), a, b, c)
    await h.use("a")
    await h.use("b")
    await h.use("a")  # b is now the least recently used
    await h.use("c")
    assert (h.mm.tier("a"), h.mm.tier("b"), h.mm.tier("c")) == (Tier.active, Tier.disk, Tier.active)
    assert h.moves()[-2:] == [("b", "active", "disk"), ("c", "disk", "active")]
    await h.use("b")  # now a is LRU
    assert h.mm.tier("a") is Tier.disk and h.violations == []
    await h.mm.aclose()


async def test_eviction_parks_on_host_and_comes_back_with_to_active() -> None:
    a, b, c = FakeModel("a"), FakeModel("b"), FakeModel("c")
    h = Harness(Budgets(200, 100), a, b, c)
    for name in "abac":
        await h.use(name)
    assert h.mm.tier("b") is Tier.host and h.mm.usage() == {Tier.active: 200, Tier.host: 100}
    await h.use("b")  # host → active: no second load
    assert b.counts["load"] == 1 and b.counts["to_host"] == 1 and b.counts["to_active"] == 1
    assert h.row("b")["loads"] == 2 and h.row("b")["demotions"] == 1
    # the host was full of b while a made room, so a (LRU) went to disk
    assert h.mm.tier("a") is Tier.disk and h.violations == []
    await h.mm.aclose()


async def test_measured_footprint_larger_than_estimate_demotes_more() -> None:
    a, b = FakeModel("a"), FakeModel("b")
    c = FakeModel("c", weights=120, kv=30)
    h = Harness(Budgets(300, 0), a, b, c, c={"estimated_bytes": 50})
    await h.use("a")
    await h.use("b")
    await h.use("c")  # 50 reserved fits next to a and b; 150 measured does not → a (LRU) goes
    assert h.mm.tier("a") is Tier.disk and h.mm.tier("b") is Tier.active
    assert h.mm.usage()[Tier.active] == 250 and h.row("c")["bytes"]["active"] == 150
    assert h.violations == []
    await h.mm.aclose()


async def test_in_flight_model_is_never_demoted_the_other_waits() -> None:
    a, b = FakeModel("a"), FakeModel("b")
    h = Harness(Budgets(100, 0), a, b, b={"estimated_bytes": 100})
    async with h.mm.lease("a") as ea:
        ea.busy += 1  # type: ignore[attr-defined]
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await h.use("b")
        assert h.mm.tier("a") is Tier.active and b.counts["load"] == 0
        with pytest.raises(ModelUnavailableError) as exc:
            await h.mm.demote("a", Tier.disk)
        assert exc.value.status == 409 and "in flight" in exc.value.message
        waiter = asyncio.create_task(h.use("b"))
        await asyncio.sleep(0.02)
        assert not waiter.done()
        ea.busy -= 1  # type: ignore[attr-defined]
    await asyncio.wait_for(waiter, 5)
    assert h.mm.tier("a") is Tier.disk and h.mm.tier("b") is Tier.active
    assert a.violations == [] and h.violations == []
    await h.mm.quiesce()
    await h.mm.aclose()


async def test_unknown_size_loads_then_waits_for_room_and_loads_again() -> None:
    """No estimate: the first load reserves nothing; its measured size does not fit next to a
    model in flight, so it is unloaded and retried (size now known) once the request ends."""
    a, b = FakeModel("a"), FakeModel("b")
    h = Harness(Budgets(100, 0), a, b)
    async with h.mm.lease("a"):
        waiter = asyncio.create_task(h.use("b"))
        await wait_for(lambda: b.counts["unload"] == 1)
        assert not waiter.done() and h.mm.usage()[Tier.active] == 100
    await asyncio.wait_for(waiter, 5)
    assert b.counts["load"] == 2 and h.mm.tier("a") is Tier.disk and h.violations == []
    await h.mm.aclose()


async def test_pinned_model_never_moves() -> None:
    p, b = FakeModel("p"), FakeModel("b")
    h = Harness(Budgets(150, 100), p, b, p={"pinned": True, "keep_alive_s": 1})
    await h.mm.start()
    assert h.mm.tier("p") is Tier.active
    with pytest.raises(InsufficientMemoryError) as exc:
        await h.use("b")
    assert "pinned" in exc.value.message and "p (100 B)" in exc.value.message
    for op in (h.mm.unload("p"), h.mm.demote("p", Tier.host)):
        with pytest.raises(ModelUnavailableError, match="pinned"):
            await op
    h.clock.advance(1000)
    assert await h.mm.reap_idle() == []
    assert h.mm.tier("p") is Tier.active and p.counts["load"] == 1 and h.row("b")["error"]
    await h.mm.unpin("p")
    await h.use("b")
    assert h.mm.tier("p") is Tier.host
    await h.mm.aclose()


async def test_too_large_model_fails_at_once_and_others_keep_serving() -> None:
    a, big = FakeModel("a"), FakeModel("big", weights=500)
    h = Harness(Budgets(300, 0), a, big, big={"estimated_bytes": 400})
    await h.use("a")
    with pytest.raises(InsufficientMemoryError) as exc:
        await h.use("big")
    assert "400 bytes" in exc.value.message and "active budget" in exc.value.message
    assert big.counts["load"] == 0
    await h.use("a")
    assert h.mm.tier("a") is Tier.active and h.mm.usage()[Tier.active] == 100
    await h.mm.aclose()


async def test_measured_too_large_is_unloaded_and_remembered() -> None:
    a, big = FakeModel("a"), FakeModel("big", weights=250, kv=100)
    h = Harness(Budgets(300, 0), a, big)
    await h.use("a")
    with pytest.raises(InsufficientMemoryError, match="350 bytes"):
        await h.use("big")
    assert big.counts == Counter({"load": 1, "unload": 1}) and h.mm.tier("big") is Tier.disk
    with pytest.raises(InsufficientMemoryError):
        await h.use("big")
    assert big.counts["load"] == 1  # the measured footprint is known now: refused before loading
    await h.use("a")
    assert h.mm.usage()[Tier.active] == 100 and h.violations == []
    await h.mm.aclose()


# --- failures ---------------------------------------------------------------------------------


async def test_failed_load_reaches_every_waiter_then_the_next_lease_retries() -> None:
    a, b = FakeModel("a"), FakeModel("b")
    h = Harness(Budgets(1000, 0), a, b)
    await h.use("b")
    a.fail_loads, a.load_gate = 1, threading.Event()
    tasks = [asyncio.create_task(h.use("a")) for _ in range(5)]
    await wait_for(lambda: a.counts["load"] == 1)
    a.load_gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, ModelLoadError) and "corrupt GGUF header" in r.message for r in results)
    assert a.counts["load"] == 1
    row = h.row("a")
    assert row["state"] == "failed" and "corrupt GGUF header" in row["error"] and row["load_failures"] == 1
    assert h.mm.usage()[Tier.active] == 100
    await h.use("b")  # the others keep serving
    await h.use("a")  # retried
    row = h.row("a")
    assert row["state"] == "active" and row["loads"] == 1 and "corrupt" in row["error"]
    await h.mm.aclose()


async def test_foreign_load_exception_becomes_model_load_error() -> None:
    a = FakeModel("a")
    a.fail_loads, a.load_error = 1, OSError("No such file")
    h = Harness(Budgets(1000, 0), a)
    with pytest.raises(ModelLoadError, match="OSError: No such file") as exc:
        await h.use("a")
    assert isinstance(exc.value.__cause__, OSError)
    await h.mm.aclose()


async def test_failed_warmup_unloads_and_reports() -> None:
    a = FakeModel("a")
    a.fail_warmups = 1
    h = Harness(Budgets(1000, 0), a)
    with pytest.raises(ModelLoadError, match="warm-up failed: RuntimeError: warm-up produced NaN"):
        await h.use("a")
    assert a.counts["unload"] == 1 and h.mm.usage()[Tier.active] == 0 and h.mm.state("a") is ModelState.failed
    await h.use("a")
    await h.mm.aclose()


async def test_failed_host_to_active_falls_back_to_disk_and_reloads() -> None:
    a, b = FakeModel("a"), FakeModel("b")
    h = Harness(Budgets(100, 100), a, b)
    await h.use("a")
    await h.use("b")  # a → host
    assert h.mm.tier("a") is Tier.host

    def broken() -> None:
        raise RuntimeError("CUDA error: out of memory")

    a.engines[-1].to_active = broken  # type: ignore[method-assign]
    with pytest.raises(ModelLoadError, match="host → active failed: RuntimeError: CUDA error"):
        await h.use("a")
    assert h.mm.state("a") is ModelState.failed and h.mm.usage() == {Tier.active: 0, Tier.host: 0}
    await h.use("a")  # from disk, with a fresh engine
    assert a.counts["load"] == 2 and len(a.engines) == 2 and h.violations == []
    await h.mm.aclose()


async def test_failed_to_host_during_eviction_sends_the_victim_to_disk() -> None:
    a, b = FakeModel("a"), FakeModel("b")
    h = Harness(Budgets(100, 100), a, b)
    await h.use("a")

    def broken() -> None:
        raise RuntimeError("pinned memory exhausted")

    a.engines[-1].to_host = broken  # type: ignore[method-assign]
    await h.use("b")
    assert h.mm.tier("a") is Tier.disk and h.mm.tier("b") is Tier.active
    assert "active → host failed" in h.row("a")["error"] and a.counts["unload"] == 1
    await h.mm.aclose()


async def test_explicit_demote_refused_when_host_cannot_make_room() -> None:
    a = FakeModel("a", weights=200)
    h = Harness(Budgets(1000, 100), a)
    await h.mm.load("a")
    with pytest.raises(InsufficientMemoryError, match="host budget"):
        await h.mm.demote("a", Tier.host)
    assert h.mm.tier("a") is Tier.active
    await h.mm.aclose()


async def test_abandoned_activation_does_not_load_later() -> None:
    a, b = FakeModel("a"), FakeModel("b")
    h = Harness(Budgets(100, 0), a, b, b={"estimated_bytes": 100})
    async with h.mm.lease("a"):
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.02):
                await h.use("b")
    await h.mm.quiesce()
    assert b.counts["load"] == 0 and h.mm.tier("a") is Tier.active
    await h.mm.aclose()


async def test_accounting_beyond_a_budget_is_an_internal_error() -> None:
    from modelyard.memory.manager import MemoryAccountingError

    a, b = FakeModel("a"), FakeModel("b")
    h = Harness(Budgets(1000, 0), a, b)
    await h.mm.load("a")
    h.mm._models["a"].host_bytes = 5000  # simulate a bookkeeping bug (host bytes of an active model)
    with pytest.raises(MemoryAccountingError, match="exceeds a budget"):
        await h.mm.load("b")


# --- keep-alive -------------------------------------------------------------------------------


async def test_keep_alive_zero_unloads_as_soon_as_idle() -> None:
    a = FakeModel("a")
    h = Harness(Budgets(1000, 1000), a, a={"keep_alive_s": 0})
    async with h.mm.lease("a"):
        async with h.mm.lease("a"):
            pass
        await h.mm.quiesce()
        assert h.mm.tier("a") is Tier.active  # one request still in flight
    await h.mm.quiesce()
    assert h.mm.tier("a") is Tier.disk and a.counts["unload"] == 1 and a.counts["to_host"] == 0
    await h.mm.aclose()


@pytest.mark.parametrize(("can_host", "dst"), [(True, Tier.host), (False, Tier.disk)])
async def test_keep_alive_demotes_after_the_idle_time(can_host: bool, dst: Tier) -> None:
    a = FakeModel("a", host=can_host)
    h = Harness(Budgets(1000, 1000), a, a={"keep_alive_s": 10})
    await h.use("a")
    h.clock.advance(10)
    assert await h.mm.reap_idle() == []
    h.clock.advance(0.5)
    assert await h.mm.reap_idle() == ["a"]
    assert h.mm.tier("a") is dst
    await h.mm.aclose()


async def test_keep_alive_falls_back_to_disk_when_host_is_full() -> None:
    a = FakeModel("a")
    h = Harness(Budgets(1000, 50), a, a={"keep_alive_s": 1})
    await h.use("a")
    h.clock.advance(2)
    await h.mm.reap_idle()
    assert h.mm.tier("a") is Tier.disk
    await h.mm.aclose()


@pytest.mark.parametrize("keep_alive", [None, -1.0])
async def test_keep_alive_forever(keep_alive: float | None) -> None:
    a = FakeModel("a")
    h = Harness(Budgets(1000, 1000), a, a={"keep_alive_s": keep_alive})
    await h.use("a")
    h.clock.advance(1e9)
    assert await h.mm.reap_idle() == []
    assert h.mm.tier("a") is Tier.active
    await h.mm.aclose()


async def test_background_reaper_uses_the_injected_sleep() -> None:
    a = FakeModel("a")
    clock, ticks, slept = FakeClock(), asyncio.Queue[None](), []

    async def sleep(s: float) -> None:
        slept.append(s)
        await ticks.get()

    mm = MemoryManager(Budgets(1000, 1000), clock=clock, reap_interval_s=5.0, sleep=sleep)
    mm.register(a.spec(keep_alive_s=10, preload=True))
    await mm.start()
    assert mm.tier("a") is Tier.active  # preloaded
    clock.advance(11)
    ticks.put_nowait(None)
    await wait_for(lambda: len(slept) == 2)  # one reap ran between the two sleeps
    assert mm.tier("a") is Tier.host and slept == [5.0, 5.0]
    await mm.aclose()


# --- admin, views, lifecycle --------------------------------------------------------------------


async def test_start_preloads_pinned_and_preload_models_in_order() -> None:
    order: list[str] = []
    models = [FakeModel(n) for n in "abcd"]
    for m in models:
        original = m.factory
        m.factory = (lambda o=original, n=m.name: (order.append(n), o())[1])  # type: ignore[method-assign]
    h = Harness(Budgets(1000, 0), *models, b={"preload": True}, d={"pinned": True}, a={"preload": True})
    await h.mm.start()
    assert order == ["a", "b", "d"] and h.mm.tier("c") is Tier.disk
    await h.mm.aclose()


async def test_start_records_a_failed_preload_and_goes_on() -> None:
    a, b = FakeModel("a"), FakeModel("b")
    a.fail_loads = 1
    h = Harness(Budgets(1000, 0), a, b, a={"preload": True}, b={"preload": True})
    await h.mm.start()
    assert h.mm.state("a") is ModelState.failed and h.mm.state("b") is ModelState.active
    await h.mm.aclose()


async def test_admin_operations() -> None:
    a, b = FakeModel("a"), FakeModel("b", host=False)
    h = Harness(Budgets(1000, 1000), a, b)
    await h.mm.load("a")
    assert h.mm.tier("a") is Tier.active and h.row("a")["in_flight"] == 0
    await h.mm.demote("a", Tier.host)
    assert h.mm.tier("a") is Tier.host and h.mm.usage() == {Tier.active: 0, Tier.host: 100}
    await h.mm.demote("a", "host")  # already there: no-op (plain strings accepted, as from an admin route)
    with pytest.raises(InvalidRequestError, match="unknown tier"):
        await h.mm.demote("a", "gpu")
    await h.mm.unload("a")
    assert h.mm.tier("a") is Tier.disk and h.mm.usage() == {Tier.active: 0, Tier.host: 0}
    with pytest.raises(InvalidRequestError, match="on disk"):
        await h.mm.demote("a", Tier.host)
    with pytest.raises(InvalidRequestError):
        await h.mm.demote("a", Tier.active)
    await h.mm.load("b")
    with pytest.raises(InvalidRequestError, match="cannot park"):
        await h.mm.demote("b", Tier.host)
    with pytest.raises(ModelNotFoundError):
        h.mm.lease("nope")
    with pytest.raises(ValueError):
        h.mm.register(a.spec())
    await h.mm.pin("a")
    assert h.mm.tier("a") is Tier.active and h.row("a")["pinned"]
    assert h.moves() == [("a", "disk", "active"), ("a", "active", "host"), ("a", "host", "disk"),
                         ("b", "disk", "active"), ("a", "disk", "active")]
    await h.mm.aclose()


async def test_failed_pin_leaves_the_model_unpinned() -> None:
    a = FakeModel("a")
    a.fail_loads = 1
    h = Harness(Budgets(1000, 0), a)
    with pytest.raises(ModelLoadError):
        await h.mm.pin("a")
    assert not h.row("a")["pinned"]
    await h.mm.aclose()


async def test_snapshot_fields() -> None:
    h = Harness(Budgets(1000, 0), FakeModel("a", weights=100, kv=20, overhead=5, load_s=2.0), a={"keep_alive_s": 60})
    h.models["a"].clock = h.clock  # the load takes 2 s of injected time
    assert h.row("a")["last_used"] is None and h.row("a")["average_load_s"] is None
    async with h.mm.lease("a"):
        row = h.row("a")
        assert row["in_flight"] == 1 and row["state"] == "active"
    h.clock.advance(7)
    row = h.row("a")
    assert row == {
        "name": "a", "tier": "active", "state": "active",
        "bytes": {"weights": 100, "kv_cache": 20, "overhead": 5, "active": 125, "host": 100},
        "accounted": {"active": 125, "host": 0},
        "last_used": 7.0, "in_flight": 0, "loads": 1, "demotions": 0, "warmups": 1, "load_failures": 0,
        "average_load_s": 2.0, "pinned": False, "keep_alive_s": 60, "error": None, "engine": None,
    }
    await h.mm.aclose()


async def test_metrics_follow_the_transitions() -> None:
    reg = CollectorRegistry()
    a, b = FakeModel("a"), FakeModel("b")
    h = Harness(Budgets(100, 100), a, b, metrics=MemoryMetrics(reg))

    def val(name: str, **labels: str) -> float | None:
        return reg.get_sample_value(name, labels)

    assert val("modelyard_memory_budget_bytes", tier="active") == 100
    async with h.mm.lease("a"):
        assert val("modelyard_model_in_flight", model="a") == 1
        assert val("modelyard_model_tier", model="a") == 2
        assert val("modelyard_model_state", model="a", state="active") == 1
        assert val("modelyard_model_state", model="a", state="loading") == 0
        assert val("modelyard_memory_bytes", tier="active") == 100
    await h.use("b")
    assert val("modelyard_model_tier", model="a") == 1
    assert val("modelyard_model_transitions_total", model="a", src="active", dst="host") == 1
    assert val("modelyard_model_transition_seconds_count", model="b", src="disk", dst="active") == 1
    assert val("modelyard_memory_bytes", tier="host") == 100
    assert val("modelyard_model_in_flight", model="a") == 0
    await h.mm.aclose()


async def test_aclose_unloads_everything_and_refuses_new_leases() -> None:
    models = [FakeModel(n) for n in "abc"]
    h = Harness(Budgets(200, 100), *models)
    for n in "abc":
        await h.use(n)
    await h.mm.aclose()
    assert all(m.counts["unload"] == 1 for m in models)
    assert h.mm.usage() == {Tier.active: 0, Tier.host: 0}
    assert {r["tier"] for r in h.mm.snapshot()} == {"disk"}
    with pytest.raises(ModelUnavailableError, match="shutting down"):
        await h.use("a")
    await h.mm.aclose()  # idempotent


# --- random concurrent workloads ------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
async def test_random_concurrent_workload_keeps_every_invariant(seed: int) -> None:
    rnd = random.Random(seed)
    models = [
        FakeModel("m0", 100), FakeModel("m1", 80, kv=40), FakeModel("m2", 60, host=False),
        FakeModel("m3", 150, overhead=20), FakeModel("m4", 40), FakeModel("big", 400),
    ]
    specs: dict[str, dict[str, Any]] = {
        "m0": {"keep_alive_s": 0}, "m1": {"keep_alive_s": 5, "estimated_bytes": 60},
        "m2": {"keep_alive_s": None}, "m3": {"pinned": seed % 2 == 0}, "m4": {"warmup_requests": 2},
    }
    h = Harness(Budgets(300, 150), *models, **specs)
    await h.mm.start()
    outcomes: Counter[str] = Counter()

    async def client(i: int) -> None:
        for _ in range(5):
            await asyncio.sleep(rnd.random() * 0.01)
            name = rnd.choice([m.name for m in models])
            if rnd.random() < 0.03:
                h.models[name].fail_loads += 1
            try:
                async with asyncio.timeout(0.5):
                    async with h.mm.lease(name) as engine:
                        engine.busy += 1  # type: ignore[attr-defined]
                        try:
                            assert engine.where == "active"  # type: ignore[attr-defined]
                            assert h.mm.state(name) is ModelState.active
                            await asyncio.sleep(rnd.random() * 0.005)
                        finally:
                            engine.busy -= 1  # type: ignore[attr-defined]
                outcomes["ok"] += 1
            except (ModelLoadError, InsufficientMemoryError, TimeoutError) as exc:
                outcomes[type(exc).__name__] += 1

    async def admin() -> None:
        for _ in range(30):
            await asyncio.sleep(rnd.random() * 0.005)
            h.clock.advance(rnd.random() * 3)
            name = rnd.choice([m.name for m in models])
            op = rnd.choice(["reap", "unload", "host", "load"])
            try:
                if op == "reap":
                    await h.mm.reap_idle()
                elif op == "unload":
                    await h.mm.unload(name)
                elif op == "host":
                    await h.mm.demote(name, Tier.host)
                else:
                    async with asyncio.timeout(0.5):
                        await h.mm.load(name)
            except (ModelUnavailableError, InvalidRequestError, TimeoutError):
                outcomes[f"admin-{op}-refused"] += 1

    await asyncio.gather(*(client(i) for i in range(25)), admin())
    await h.mm.quiesce()
    u = h.mm.usage()
    assert h.violations == [], h.violations[:5]
    assert all(m.violations == [] for m in models)
    assert u[Tier.active] <= 300 and u[Tier.host] <= 150
    assert sum(r["in_flight"] for r in h.mm.snapshot()) == 0
    assert outcomes["ok"] > 40 and outcomes["InsufficientMemoryError"] > 0 and len(h.transitions) > 8, outcomes
    # the accounting matches the engines' own idea of where they are
    for r in h.mm.snapshot():
        live = [e for e in h.models[r["name"]].engines if e.where != "disk"]
        assert len(live) == (0 if r["tier"] == "disk" else 1), (r, [e.where for e in live])
        if live:
            assert live[0].where == r["tier"]
    if seed % 2 == 0:
        assert h.mm.tier("m3") is Tier.active
    await h.mm.aclose()
    assert all(e.where == "disk" for m in models for e in m.engines)
