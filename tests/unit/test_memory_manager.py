"""Unit tests of the memory manager (modelyard.memory.manager) with fake engines.

The fake engines implement the Engine protocol with a configurable footprint, a load/warm-up delay
held by a ``threading.Event``, failure injection and counters; time is an injected clock; the
keep-alive reaper is driven by calling ``reap_idle()``. The budget invariant is checked through
the ``on_transition`` hook after every transition, including under random concurrent workloads.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter

import pytest

from modelyard.errors import (
    InsufficientMemoryError,
    ModelLoadError,
    ModelUnavailableError,
)
from modelyard.memory.manager import ModelState
from modelyard.memory.policy import Budgets, Tier



from memory_fakes import FakeModel, FakeEngine, Harness, wait_for, MAIN_THREAD  # the fakes and harness these tests share


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
