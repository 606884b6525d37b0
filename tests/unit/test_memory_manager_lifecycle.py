"""Unit tests of the memory manager, continued: keep-alive, admin operations and views, lifecycle,
and random concurrent workloads (fakes in memory_fakes.py)."""

from __future__ import annotations

import asyncio
import random
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
from modelyard.memory.manager import MemoryManager, ModelState
from modelyard.memory.policy import Budgets, Tier
from modelyard.observability.memory_metrics import MemoryMetrics
from modelyard.testing.clock import ManualClock as FakeClock



from memory_fakes import FakeModel, Harness, wait_for  # the fakes and harness these tests share


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
        "last_used": 7.0, "in_flight": 0, "waiting": 0, "loads": 1, "demotions": 0, "warmups": 1, "load_failures": 0,
        "average_load_s": 2.0, "ready_in_s": 0.0, "pinned": False, "keep_alive_s": 60, "error": None, "engine": None,
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
