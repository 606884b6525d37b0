"""Recovery of supervised deployments (local models, managed engines): no circuit breaker, one
retry after an engine died under the request, restart backoffs waited out by the memory manager,
bounded lease waits with a real estimate in Retry-After, and a restart right after a crash."""

from __future__ import annotations

import asyncio

import pytest

from modelyard.config.schema import ModelConfig, ProcessDeployment
from modelyard.errors import EngineRestartingError, ModelNotReadyError
from modelyard.memory.policy import Budgets, Tier
from modelyard.memory.records import ModelRecord, ModelSpec, ModelState
from modelyard.routing.breaker import BreakerState, SupervisedBreaker

from memory_fakes import FakeModel, Harness, wait_for
from test_router import OK, Env, model


def managed(name: str, deps: list[str]) -> ModelConfig:
    return ModelConfig(name=name, deployments=[ProcessDeployment(kind="process", command=["engine"], name=d) for d in deps])


def restarting(first: bool = True) -> EngineRestartingError:
    return EngineRestartingError("engine 'p' went down during the request", retry_after_s=0.4, retry_once=first)


# --- the router ---------------------------------------------------------------------------------

async def test_a_managed_deployment_has_no_breaker_to_open() -> None:
    env = Env(managed("m", ["p"]), retries=0, allowed_fails=1)
    slot = env.slot("p")
    assert isinstance(slot.breaker, SupervisedBreaker)
    for _ in range(5):
        env["p"].script.append(restarting(first=False))
        with pytest.raises(EngineRestartingError):
            await env.run("m")
    assert slot.breaker.state is BreakerState.closed
    routed = await env.run("m")  # still routed to: the supervisor says when it is back, not a count
    assert routed.deployment is slot


async def test_a_remote_deployment_still_opens_its_breaker() -> None:
    env = Env(model("r", ["a"]), retries=0, allowed_fails=1)
    env["a"].script.append(restarting(first=False))
    with pytest.raises(EngineRestartingError):
        await env.run("r")
    assert env.slot("a").breaker.state is BreakerState.open


async def test_engine_died_under_the_request_is_retried_once_even_with_no_retries_and_without_backoff() -> None:
    env = Env(managed("m", ["p"]), retries=0)
    env["p"].script.extend([restarting(), OK])
    routed = await env.run("m")
    assert routed.retries == 1 and env["p"].calls == 2
    assert env.sleeps == []  # the lease waits for the restart; no backoff on top


async def test_a_request_that_sees_a_second_engine_die_is_not_retried_again() -> None:
    env = Env(managed("m", ["p"]), retries=0)
    env["p"].script.extend([restarting(), restarting(first=False), OK])
    with pytest.raises(EngineRestartingError) as info:
        await env.run("m")
    assert env["p"].calls == 2
    assert info.value.status == 503 and info.value.headers["retry-after"] == "1"


async def test_the_restart_retry_does_not_eat_the_requests_own_retries() -> None:
    env = Env(managed("m", ["p"]), retries=1)
    env["p"].script.extend([restarting(), restarting(first=False), OK])
    routed = await env.run("m")
    assert env["p"].calls == 3 and routed.retries == 2


# --- the memory manager -------------------------------------------------------------------------

async def test_a_restart_backoff_is_waited_out_not_failed() -> None:
    delays = [0.05]
    fm = FakeModel("p")
    h = Harness(Budgets(1000, 0), fm, p={"start_delay": lambda: delays.pop() if delays else 0.0})
    task = asyncio.ensure_future(h.use("p"))
    await wait_for(lambda: h.mm.state("p") is ModelState.restarting)
    assert fm.counts["load"] == 0
    await task
    assert h.mm.state("p") is ModelState.active and fm.counts["load"] == 1
    assert h.row("p")["load_failures"] == 0 and h.row("p")["error"] is None
    await h.mm.aclose()


async def test_a_lease_that_waits_too_long_says_when_the_model_will_be_back() -> None:
    fm = FakeModel("p", load_s=2.0)
    h = Harness(Budgets(1000, 0), fm, p={"start_delay": lambda: 0.0})
    fm.clock = h.clock
    await h.use("p")  # one load of 2 s (injected clock): the manager now knows how long a load takes
    delay = [30.0]
    h.mm._get("p").spec.start_delay = lambda: delay[0]
    await h.mm.unload("p")
    with pytest.raises(ModelNotReadyError) as info:
        async with h.mm.lease("p", wait_s=0.02):
            pass
    err = info.value
    assert err.status == 503 and err.code == "model_not_ready" and "restarting" in err.message
    assert err.retry_after_s == pytest.approx(32.0, abs=0.5)  # the backoff left, plus one load
    assert err.headers["retry-after"] == "32"
    assert h.mm.state("p") is ModelState.restarting
    await h.mm.aclose()  # wakes the activation waiting out the backoff: shutdown is not delayed


async def test_invalidate_restarts_the_model_without_waiting_for_a_request() -> None:
    fm = FakeModel("p")
    h = Harness(Budgets(1000, 0), fm)
    engine = await h.use("p")
    assert await h.mm.invalidate("p", engine, "exit code 3") is True
    await wait_for(lambda: h.mm.state("p") is ModelState.active)
    assert fm.counts["load"] == 2 and h.mm.tier("p") is Tier.active
    assert await h.mm.invalidate("p", engine, "late report of the same death") is False  # a new engine now
    await h.mm.aclose()


async def test_invalidate_without_restart_leaves_it_on_disk() -> None:
    fm = FakeModel("p")
    h = Harness(Budgets(1000, 0), fm)
    engine = await h.use("p")
    await h.mm.invalidate("p", engine, "exit", restart=False)
    await h.mm.quiesce()
    assert h.mm.tier("p") is Tier.disk and fm.counts["load"] == 1
    await h.mm.aclose()


def test_ready_estimates() -> None:
    m = ModelRecord(spec=ModelSpec("p", lambda: None, ""), pinned=False)  # type: ignore[arg-type, return-value]
    assert m.ready_in_s(0.0) is None  # never loaded: no basis
    m.loads, m.load_seconds = 2, 3.0  # 1.5 s a load
    assert m.ready_in_s(0.0) == 1.5
    m.state, m.move_started = ModelState.loading, 10.0
    assert m.ready_in_s(11.0) == pytest.approx(0.5)
    assert m.ready_in_s(20.0) == 0.0
    m.state, m.start_at = ModelState.restarting, 15.0
    assert m.ready_in_s(12.0) == pytest.approx(4.5)
    m.state = ModelState.active
    assert m.ready_in_s(99.0) == 0.0
