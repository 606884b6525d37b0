"""Unit tests of admission control (modelyard.routing.admission): cap, FIFO queue, TTL, cancel."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st

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


# --- priorities and aging (issue 11 §2) ---------------------------------------------------------

LOW, NORMAL, HIGH = 0, 1, 2


class FakeClock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


async def enqueue(adm: Admission, order: list[str], name: str, priority: int) -> asyncio.Task[None]:
    async def waiter() -> None:
        await adm.acquire(priority)
        order.append(name)

    t = asyncio.create_task(waiter())
    await settle()  # enqueued in a known order
    return t


async def drain(adm: Admission, tasks: list[asyncio.Task[None]]) -> None:
    for _ in tasks:
        adm.release()
        await settle()
    await asyncio.gather(*tasks)
    adm.release()
    assert adm.in_flight == 0 and adm.queued == 0 and adm.depths() == (0, 0, 0)


async def test_higher_priority_is_served_first() -> None:
    adm, _ = make(cap=1, size=10, clock=FakeClock())
    await adm.acquire()
    order: list[str] = []
    tasks = [await enqueue(adm, order, n, p) for n, p in (("low", LOW), ("normal", NORMAL), ("high", HIGH))]
    assert adm.depths() == (1, 1, 1) and adm.queued == 3
    await drain(adm, tasks)
    assert order == ["high", "normal", "low"]


async def test_fifo_within_a_level_interleaved_with_others() -> None:
    clock = FakeClock()
    adm, _ = make(cap=1, size=20, clock=clock)
    await adm.acquire()
    order: list[str] = []
    tasks = []
    for i in range(4):
        for name, p in (("l", LOW), ("h", HIGH), ("n", NORMAL)):
            tasks.append(await enqueue(adm, order, f"{name}{i}", p))
            clock.t += 0.01  # well under aging_s: no waiter ages past another level
    await drain(adm, tasks)
    assert order == ["h0", "h1", "h2", "h3", "n0", "n1", "n2", "n3", "l0", "l1", "l2", "l3"]


async def test_a_newcomer_with_a_free_slot_and_nobody_waiting_takes_it_whatever_its_priority() -> None:
    adm, _ = make(cap=2, clock=FakeClock())
    await adm.acquire(LOW)
    await adm.acquire(HIGH)
    assert adm.in_flight == 2 and adm.queued == 0
    adm.release()
    adm.release()


async def test_low_ages_past_high_after_two_aging_periods() -> None:
    clock = FakeClock(0.0)
    adm, _ = make(cap=1, size=10, aging_s=2.0, clock=clock)
    await adm.acquire()
    order: list[str] = []
    tasks = [await enqueue(adm, order, "low", LOW)]  # effective priority 0 + waited/2
    clock.t = 3.9
    tasks.append(await enqueue(adm, order, "high@3.9", HIGH))  # low is at 1.95 < 2: high goes first
    clock.t = 4.1
    tasks.append(await enqueue(adm, order, "high@4.1", HIGH))  # low is at 2.05 > 2: low goes first
    await drain(adm, tasks)
    assert order == ["high@3.9", "low", "high@4.1"]


async def test_low_ages_past_normal_after_one_aging_period() -> None:
    clock = FakeClock(0.0)
    adm, _ = make(cap=1, size=10, aging_s=0.5, clock=clock)
    await adm.acquire()
    order: list[str] = []
    tasks = [await enqueue(adm, order, "low", LOW)]
    clock.t = 0.4
    tasks.append(await enqueue(adm, order, "normal@0.4", NORMAL))
    clock.t = 0.6
    tasks.append(await enqueue(adm, order, "normal@0.6", NORMAL))
    tasks.append(await enqueue(adm, order, "high@0.6", HIGH))  # 0.6 - 2*0.5 = -0.4 < 0: before low
    await drain(adm, tasks)
    assert order == ["high@0.6", "normal@0.4", "low", "normal@0.6"]


async def test_low_never_starves_under_a_stream_of_high() -> None:
    """Each release admits one waiter while a new high arrives every 0.1 s: the low one waiting
    since t=0 is served once it has waited 2·aging_s (here 1 s), not never."""
    clock = FakeClock(0.0)
    adm, _ = make(cap=1, size=100, aging_s=0.5, clock=clock)
    await adm.acquire()
    order: list[str] = []
    tasks = [await enqueue(adm, order, "low", LOW)]
    for i in range(30):
        clock.t = 0.1 * (i + 1) - 0.05
        tasks.append(await enqueue(adm, order, f"h{i}", HIGH))
        adm.release()  # one slot per 0.1 s: exactly as fast as the highs arrive
        await settle()
        if "low" in order:
            break
    assert "low" in order
    # served when the head high's virtual arrival (arrival - 1.0) passed the low's (0.0): after ~1 s
    assert 0.9 <= clock.t <= 1.2
    rest = [t for t in tasks if not t.done()]
    await drain(adm, rest)


async def test_strict_priority_without_aging() -> None:
    clock = FakeClock(0.0)
    adm, _ = make(cap=1, size=10, aging_s=None, clock=clock)
    await adm.acquire()
    order: list[str] = []
    tasks = [await enqueue(adm, order, "low", LOW)]
    clock.t = 10**6
    tasks.append(await enqueue(adm, order, "normal", NORMAL))
    await drain(adm, tasks)
    assert order == ["normal", "low"]


def test_bad_aging_and_priority_are_refused() -> None:
    with pytest.raises(ValueError, match="aging_s"):
        make(aging_s=0)


async def test_priority_out_of_range_is_a_value_error_when_queued() -> None:
    adm, _ = make(cap=1)
    await adm.acquire()
    with pytest.raises(ValueError, match="priority"):
        await adm.acquire(3)
    with pytest.raises(ValueError, match="priority"):
        await adm.acquire(-1)
    assert adm.queued == 0
    adm.release()


@pytest.mark.parametrize("level", [LOW, NORMAL, HIGH])
async def test_cancelled_waiter_in_each_level_leaves_and_leaks_nothing(level: int) -> None:
    adm, _ = make(cap=1, size=10, clock=FakeClock())
    await adm.acquire()
    order: list[str] = []
    tasks = [await enqueue(adm, order, f"{n}", p) for n, p in (("low", LOW), ("normal", NORMAL), ("high", HIGH))]
    victim = tasks.pop(level)  # the waiter at `level` (tasks are low, normal, high)
    victim.cancel()
    await settle()
    assert victim.cancelled()
    assert adm.queued == 2 and adm.depths()[level] == 0 and sum(adm.depths()) == 2
    await drain(adm, tasks)
    assert order == [n for n in ("high", "normal", "low") if n != ("low", "normal", "high")[level]]


@pytest.mark.parametrize("level", [LOW, NORMAL, HIGH])
async def test_waiter_cancelled_in_the_instant_it_was_handed_a_slot_in_each_level(level: int) -> None:
    adm, _ = make(cap=1, size=10, clock=FakeClock())
    await adm.acquire()
    a = asyncio.create_task(adm.acquire(level))
    await settle()
    b = asyncio.create_task(adm.acquire(LOW))  # behind `a` whatever a's level (FIFO among equals)
    await settle()
    adm.release()  # the slot is handed to `a` ...
    a.cancel()  # ... which is cancelled before it runs
    await settle()
    assert a.cancelled()
    await b  # the slot `a` gave back went to `b`
    assert adm.in_flight == 1
    adm.release()
    assert adm.in_flight == 0 and adm.queued == 0 and adm.depths() == (0, 0, 0)


async def test_cancelled_but_not_yet_run_waiter_is_skipped_at_the_head() -> None:
    """The task is cancelled (its future too) and the release comes before its handler runs: the
    slot goes to the next waiter, and the late handler counts nothing twice."""
    adm, _ = make(cap=1, size=10, clock=FakeClock())
    await adm.acquire()
    a = asyncio.create_task(adm.acquire(HIGH))
    b = asyncio.create_task(adm.acquire(LOW))
    await settle()
    a.cancel()
    adm.release()  # a's future is cancelled already: skipped, b is granted
    await settle()
    assert a.cancelled() and b.done()
    assert adm.in_flight == 1 and adm.queued == 0 and adm.depths() == (0, 0, 0)
    adm.release()
    assert adm.in_flight == 0


async def test_full_queue_counts_every_level_and_frees_a_place_at_once_on_cancel() -> None:
    adm, _ = make(cap=1, size=3, clock=FakeClock())
    await adm.acquire()
    order: list[str] = []
    tasks = [await enqueue(adm, order, n, p) for n, p in (("low", LOW), ("normal", NORMAL), ("high", HIGH))]
    with pytest.raises(QueueFullError):
        await adm.acquire(HIGH)  # a high request is refused too: the queue bounds memory, not order
    tasks[0].cancel()  # the low waiter gives up ...
    await settle()
    tasks.pop(0)
    tasks.append(await enqueue(adm, order, "high2", HIGH))  # ... and its place is free at once
    assert adm.queued == 3 and adm.depths() == (0, 1, 2)
    await drain(adm, tasks)
    assert order == ["high", "high2", "normal"]


async def test_ttl_in_a_priority_queue_is_503_and_leaves_the_others() -> None:
    adm, seen = make(cap=1, size=4, ttl=0.05, clock=FakeClock())
    await adm.acquire()
    with pytest.raises(QueueTimeoutError) as ei:
        await adm.acquire(LOW)  # nobody releases: the 0.05 s deadline passes
    assert ei.value.status == 503
    assert adm.queued == 0 and adm.depths() == (0, 0, 0) and seen[-1] == (1, 0)
    adm.release()
    assert adm.in_flight == 0


async def test_depth_per_level_is_reported() -> None:
    depths: list[tuple[int, int]] = []
    adm, _ = make(cap=1, size=10, clock=FakeClock(), on_depth=lambda lvl, d: depths.append((lvl, d)))
    await adm.acquire()
    assert depths == []  # the uncontended path reports nothing per level
    order: list[str] = []
    tasks = [await enqueue(adm, order, n, p) for n, p in (("h", HIGH), ("l", LOW), ("h2", HIGH))]
    assert depths == [(HIGH, 1), (LOW, 1), (HIGH, 2)]
    await drain(adm, tasks)
    assert depths[3:] == [(HIGH, 1), (HIGH, 0), (LOW, 0)]


async def test_many_cancellations_behind_a_live_head_are_compacted() -> None:
    adm, _ = make(cap=1, size=1000, clock=FakeClock())
    await adm.acquire()
    order: list[str] = []
    first = await enqueue(adm, order, "first", LOW)
    gone = [asyncio.create_task(adm.acquire(LOW)) for _ in range(300)]
    await settle()
    last = await enqueue(adm, order, "last", LOW)
    for t in gone:
        t.cancel()
    await settle()
    assert adm.queued == 2
    assert len(adm._fifos[LOW]) < 100  # noqa: SLF001 - the dead entries did not pile up
    await drain(adm, [first, last])
    assert order == ["first", "last"]


PRIO_OPS = st.lists(
    st.tuples(st.sampled_from(["acquire", "release", "cancel", "tick"]), st.integers(min_value=0, max_value=30),
              st.sampled_from([LOW, NORMAL, HIGH])),
    max_size=60,
)  # fmt: skip


_AGED = [("acquire", 0, LOW), ("acquire", 0, LOW), ("tick", 5, LOW), ("acquire", 0, HIGH), ("release", 0, LOW),
         ("release", 0, LOW)]  # the low waiter aged past the high one
_TIE = [("acquire", 0, LOW), ("acquire", 0, LOW), ("tick", 4, LOW), ("acquire", 0, HIGH), ("release", 0, LOW),
        ("release", 0, LOW)]  # equal virtual arrivals: the higher level first


@settings(max_examples=150, deadline=None)
@given(cap=st.integers(min_value=1, max_value=3), size=st.integers(min_value=0, max_value=6), ops=PRIO_OPS)
@example(cap=1, size=5, ops=_AGED)
@example(cap=1, size=5, ops=_TIE)
def test_random_priority_sequences_grant_in_virtual_arrival_order(cap: int, size: int, ops) -> None:
    """Against a model: every grant goes to the live waiter with the smallest arrival − level·aging
    (ties: the higher level, then the earlier arrival), the cap holds, and everything ends at zero."""

    async def scenario() -> None:
        clock = FakeClock(0.0)
        adm = Admission("m", max_concurrency=cap, queue_size=size, ttl_s=3600.0, aging_s=2.0, clock=clock)
        waiting: dict[int, tuple[float, int, int]] = {}  # waiter id → its sort key
        granted: list[int] = []
        tasks: dict[int, asyncio.Task[None]] = {}
        holding = 0

        async def waiter(i: int, level: int) -> None:
            await adm.acquire(level)
            granted.append(i)

        for n, (op, k, level) in enumerate(ops):
            if op == "acquire":
                queued_before = adm.queued
                immediate = adm.in_flight < cap and queued_before == 0
                tasks[n] = asyncio.create_task(waiter(n, level))
                await settle(2)
                if immediate:
                    assert granted[-1:] == [n]
                    holding += 1
                elif tasks[n].done():
                    assert isinstance(tasks[n].exception(), QueueFullError) and queued_before >= size
                else:
                    waiting[n] = (clock.t - level * 2.0, -level, n)
            elif op == "release" and holding:
                expected = min(waiting, key=waiting.__getitem__) if waiting else None
                before = len(granted)
                adm.release()
                await settle(2)
                if expected is None:
                    holding -= 1
                else:
                    assert granted[before:] == [expected]
                    del waiting[expected]
            elif op == "cancel" and waiting:
                victim = sorted(waiting)[k % len(waiting)]
                tasks[victim].cancel()
                await settle(2)
                del waiting[victim]
            elif op == "tick":
                clock.t += float(k % 6)  # whole seconds: ties with 2 · aging_s steps happen
            assert adm.in_flight <= cap and adm.queued == len(waiting) == sum(adm.depths())
        for t in tasks.values():
            t.cancel()
        await asyncio.gather(*tasks.values(), return_exceptions=True)
        for _ in range(holding):
            adm.release()
        assert adm.in_flight == 0 and adm.queued == 0

    asyncio.run(scenario())
