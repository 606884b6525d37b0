"""Unit tests of admission control (modelyard.routing.admission): cap, FIFO queue, TTL, cancel."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from modelyard.errors import OverloadedError, QueueFullError, QueueTimeoutError
from modelyard.routing.admission import Admission


async def settle(n: int = 5) -> None:
    """Let every ready task run (yields to the loop; does not wait for time to pass)."""
    for _ in range(n):
        await asyncio.sleep(0)


def make(cap: int | None = 2, size: int = 4, ttl: float = 5.0, **kw) -> tuple[Admission, list[tuple[int, int]]]:
    seen: list[tuple[int, int]] = []
    adm = Admission("m", max_concurrency=cap, queue_size=size, ttl_s=ttl, on_change=lambda a, b: seen.append((a, b)), **kw)
    return adm, seen


async def test_immediate_admission_under_the_cap() -> None:
    adm, seen = make(cap=3)
    await adm.acquire()
    await adm.acquire()
    await adm.acquire()
    assert adm.in_flight == 3
    assert adm.queued == 0
    assert seen == [(1, 0), (2, 0), (3, 0)]
    adm.release()
    adm.release()
    adm.release()
    assert adm.in_flight == 0
    assert seen[-1] == (0, 0)


async def test_waiter_queues_at_the_cap_and_gets_the_released_slot() -> None:
    adm, seen = make(cap=1)
    await adm.acquire()
    t = asyncio.create_task(adm.acquire())
    await settle()
    assert not t.done()
    assert adm.queued == 1
    assert seen[-1] == (1, 1)
    adm.release()  # hands the slot straight to the waiter
    assert adm.in_flight == 1
    await t
    assert adm.queued == 0
    adm.release()
    assert adm.in_flight == 0


async def test_waiters_are_served_fifo() -> None:
    adm, _ = make(cap=1, size=10)
    await adm.acquire()
    order: list[int] = []

    async def waiter(i: int) -> None:
        await adm.acquire()
        order.append(i)

    tasks = []
    for i in range(5):
        tasks.append(asyncio.create_task(waiter(i)))
        await settle()  # enqueue in a known order
    assert adm.queued == 5
    for _ in range(5):
        adm.release()
        await settle()
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3, 4]
    adm.release()
    assert adm.in_flight == 0


async def test_newcomer_does_not_jump_the_queue() -> None:
    adm, _ = make(cap=1, size=10)
    await adm.acquire()
    first = asyncio.create_task(adm.acquire())
    await settle()
    adm.release()  # slot handed to `first`, which has not run yet
    late = asyncio.create_task(adm.acquire())
    await settle()
    assert first.done()
    assert not late.done()  # in_flight is back at the cap
    assert adm.in_flight == 1
    adm.release()
    await late
    adm.release()
    assert adm.in_flight == 0


async def test_queue_full_is_429_with_retry_after() -> None:
    adm, _ = make(cap=1, size=2, retry_hint=lambda: 7.2)
    await adm.acquire()
    waiters = [asyncio.create_task(adm.acquire()) for _ in range(2)]
    await settle()
    with pytest.raises(QueueFullError) as ei:
        await adm.acquire()
    err = ei.value
    assert isinstance(err, OverloadedError)
    assert err.status == 429
    assert err.headers["retry-after"] == "8"
    assert err.retry_after_s == 7.2
    assert "'m'" in err.message
    assert adm.queued == 2 and adm.in_flight == 1  # the refusal changed nothing
    for w in waiters:
        w.cancel()
    await asyncio.gather(*waiters, return_exceptions=True)
    adm.release()
    assert adm.in_flight == 0 and adm.queued == 0


async def test_queue_size_zero_refuses_at_once() -> None:
    adm, _ = make(cap=1, size=0)
    await adm.acquire()
    with pytest.raises(QueueFullError):
        await adm.acquire()
    adm.release()
    assert adm.in_flight == 0


async def test_queue_timeout_is_503_with_retry_after() -> None:
    adm, seen = make(cap=1, size=4, ttl=0.05)
    await adm.acquire()
    with pytest.raises(QueueTimeoutError) as ei:
        await adm.acquire()  # nobody releases: the 0.05 s deadline passes
    err = ei.value
    assert err.status == 503
    assert err.code == "queue_timeout"
    assert err.headers["retry-after"] == "1"  # default hint: 1 s
    assert adm.queued == 0  # the timed-out waiter left the queue
    assert seen[-1] == (1, 0)
    adm.release()
    assert adm.in_flight == 0


async def test_cancelled_waiter_leaves_the_queue_and_leaks_nothing() -> None:
    adm, _ = make(cap=1, size=4)
    await adm.acquire()
    a = asyncio.create_task(adm.acquire())
    b = asyncio.create_task(adm.acquire())
    await settle()
    assert adm.queued == 2
    a.cancel()
    await settle()
    assert a.cancelled()
    assert adm.queued == 1
    adm.release()
    await b  # `a` is skipped: the slot goes to `b`
    assert adm.in_flight == 1
    adm.release()
    assert adm.in_flight == 0 and adm.queued == 0


async def test_waiter_cancelled_in_the_instant_it_was_handed_a_slot() -> None:
    adm, _ = make(cap=1, size=4)
    await adm.acquire()
    a = asyncio.create_task(adm.acquire())
    b = asyncio.create_task(adm.acquire())
    await settle()
    adm.release()  # the slot is handed to `a` ...
    a.cancel()  # ... which is cancelled before it runs
    await settle()
    assert a.cancelled()
    await b  # the slot `a` gave back went to `b`
    assert adm.in_flight == 1
    adm.release()
    assert adm.in_flight == 0 and adm.queued == 0


async def test_unlimited_never_queues() -> None:
    adm, _ = make(cap=None, size=0)
    for _ in range(1000):
        await adm.acquire()
    assert adm.in_flight == 1000
    assert adm.queued == 0
    for _ in range(1000):
        adm.release()
    assert adm.in_flight == 0


# --- property: random acquire / release / cancel sequences --------------------------------------


OPS = st.lists(
    st.tuples(st.sampled_from(["acquire", "release", "cancel", "settle"]), st.integers(min_value=0, max_value=30)),
    max_size=60,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cap=st.integers(min_value=1, max_value=4), size=st.integers(min_value=0, max_value=5), ops=OPS)
def test_random_sequences_respect_the_cap_and_end_at_zero(cap: int, size: int, ops: list[tuple[str, int]]) -> None:
    async def scenario() -> None:
        adm = Admission("m", max_concurrency=cap, queue_size=size, ttl_s=3600.0)
        peak = 0

        def check(in_flight: int, queued: int) -> None:
            nonlocal peak
            peak = max(peak, in_flight)
            assert 0 <= in_flight <= cap, f"in_flight={in_flight} outside [0, {cap}]"
            assert 0 <= queued <= size

        adm._on_change = check  # noqa: SLF001 - observe every change
        tasks: list[asyncio.Task[None]] = []
        holding = 0  # slots acquired and not yet released, as the callers see them
        refused = 0

        for op, k in ops:
            done = [t for t in tasks if t.done()]
            for t in done:
                tasks.remove(t)
                if t.cancelled():
                    continue
                if isinstance(t.exception(), QueueFullError):
                    refused += 1
                    continue
                assert t.exception() is None
                holding += 1
            if op == "acquire":
                tasks.append(asyncio.create_task(adm.acquire()))
            elif op == "release" and holding:
                holding -= 1
                adm.release()
            elif op == "cancel" and tasks:
                tasks[k % len(tasks)].cancel()
            await settle(2)
            assert adm.in_flight <= cap
        # wind down: cancel every waiter, release every slot held
        for t in tasks:
            t.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        holding += sum(1 for r in results if r is None)  # completed before the cancel landed
        for _ in range(holding):
            adm.release()
        assert adm.in_flight == 0
        assert adm.queued == 0
        assert peak <= cap

    asyncio.run(scenario())
