"""DynamicBatcher with fake run_batch functions: merging, limits, order, splitting, cancellation,
errors, isolation between batchers, close."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from modelyard.errors import ModelUnavailableError
from modelyard.runtime.batching import DynamicBatcher


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    ex = ThreadPoolExecutor(max_workers=2)
    yield ex
    ex.shutdown(wait=True)


class Recorder:
    """run_batch that records every batch; optionally blocks until released, or fails on 'bad'."""

    def __init__(self, *, gate: threading.Event | None = None) -> None:
        self.batches: list[list[object]] = []
        self.gate = gate
        self.started = threading.Event()

    def __call__(self, items: list[object]) -> list[object]:
        self.batches.append(list(items))
        self.started.set()
        if self.gate is not None:
            assert self.gate.wait(5), "test gate never opened"
        if "bad" in items:
            raise ValueError("bad item in batch")
        return [f"r:{x}" for x in items]


def make(rec: Recorder, executor: ThreadPoolExecutor, *, size: int = 32, delay_us: int = 20_000) -> DynamicBatcher:
    return DynamicBatcher(rec, max_batch_size=size, max_queue_delay_us=delay_us, executor=executor, name="t")


async def test_concurrent_requests_merge_into_one_batch(executor: ThreadPoolExecutor) -> None:
    rec = Recorder()
    b = make(rec, executor)
    results = await asyncio.gather(*(b.submit([i]) for i in range(10)))
    assert results == [[f"r:{i}"] for i in range(10)]
    assert rec.batches == [list(range(10))]
    assert b.stats()["batches"] == 1
    await b.aclose()


async def test_batches_never_exceed_max_size_and_keep_arrival_order(executor: ThreadPoolExecutor) -> None:
    rec = Recorder()
    b = make(rec, executor, size=4)
    results = await asyncio.gather(*(b.submit([i, i + 100]) for i in range(5)))
    assert results == [[f"r:{i}", f"r:{i + 100}"] for i in range(5)]
    assert all(len(batch) <= 4 for batch in rec.batches)
    flat = [x for batch in rec.batches for x in batch]
    assert flat == [x for i in range(5) for x in (i, i + 100)]  # FIFO, each request's items in order
    await b.aclose()


async def test_a_large_request_is_split_and_its_results_come_back_together_in_order(executor: ThreadPoolExecutor) -> None:
    rec = Recorder()
    b = make(rec, executor, size=4, delay_us=0)
    results = await b.submit(list(range(10)))
    assert results == [f"r:{i}" for i in range(10)]
    assert [len(x) for x in rec.batches] == [4, 4, 2]
    await b.aclose()


async def test_split_request_shares_batches_with_others(executor: ThreadPoolExecutor) -> None:
    rec = Recorder()
    b = make(rec, executor, size=4)
    a, c = await asyncio.gather(b.submit(["a0", "a1", "a2", "a3", "a4", "a5"]), b.submit(["c0", "c1", "c2"]))
    assert a == [f"r:a{i}" for i in range(6)] and c == [f"r:c{i}" for i in range(3)]
    assert rec.batches == [["a0", "a1", "a2", "a3"], ["a4", "a5", "c0", "c1"], ["c2"]]
    await b.aclose()


async def test_a_lone_request_waits_at_most_the_queue_delay(executor: ThreadPoolExecutor) -> None:
    rec = Recorder()
    b = make(rec, executor, size=8, delay_us=50_000)
    t0 = time.perf_counter()
    assert await b.submit(["x"]) == ["r:x"]
    waited = time.perf_counter() - t0
    assert 0.045 <= waited < 0.5
    t0 = time.perf_counter()  # a full batch goes at once, without the delay
    assert len(await b.submit(list(range(8)))) == 8
    assert time.perf_counter() - t0 < 0.045
    await b.aclose()


async def test_requests_queue_while_a_batch_runs_and_then_go_together(executor: ThreadPoolExecutor) -> None:
    gate = threading.Event()
    rec = Recorder(gate=gate)
    b = make(rec, executor, size=16, delay_us=0)
    first = asyncio.create_task(b.submit(["first"]))
    await asyncio.to_thread(rec.started.wait, 5)
    rest = [asyncio.create_task(b.submit([i])) for i in range(5)]
    await asyncio.sleep(0.02)
    assert b.queued_items == 5
    gate.set()
    assert await first == ["r:first"]
    assert [await t for t in rest] == [[f"r:{i}"] for i in range(5)]
    assert rec.batches == [["first"], [0, 1, 2, 3, 4]]
    await b.aclose()


async def test_a_cancelled_caller_loses_its_queued_items(executor: ThreadPoolExecutor) -> None:
    gate = threading.Event()
    rec = Recorder(gate=gate)
    b = make(rec, executor, size=16, delay_us=0)
    first = asyncio.create_task(b.submit(["first"]))
    await asyncio.to_thread(rec.started.wait, 5)
    doomed = asyncio.create_task(b.submit(["doomed1", "doomed2"]))
    kept = asyncio.create_task(b.submit(["kept"]))
    await asyncio.sleep(0.01)
    doomed.cancel()
    with pytest.raises(asyncio.CancelledError):
        await doomed
    assert b.queued_items == 1
    gate.set()
    assert await first == ["r:first"] and await kept == ["r:kept"]
    assert rec.batches == [["first"], ["kept"]]
    await b.aclose()


async def test_a_caller_cancelled_while_its_batch_runs_does_not_disturb_the_others(executor: ThreadPoolExecutor) -> None:
    gate = threading.Event()
    rec = Recorder(gate=gate)
    b = make(rec, executor, size=16)
    gone = asyncio.create_task(b.submit(["gone"]))
    stays = asyncio.create_task(b.submit(["stays"]))
    await asyncio.to_thread(rec.started.wait, 5)
    gone.cancel()
    await asyncio.sleep(0)
    gate.set()
    assert await stays == ["r:stays"]
    assert gone.cancelled()
    assert await b.submit(["after"]) == ["r:after"]  # the worker is still healthy
    await b.aclose()


async def test_an_exception_fails_every_caller_of_that_batch_only(executor: ThreadPoolExecutor) -> None:
    rec = Recorder()
    b = make(rec, executor, size=2, delay_us=10_000)
    outcomes = await asyncio.gather(b.submit(["ok1"]), b.submit(["bad"]), b.submit(["ok2"]), return_exceptions=True)
    assert isinstance(outcomes[0], ValueError) and isinstance(outcomes[1], ValueError)
    assert outcomes[2] == ["r:ok2"]
    assert rec.batches == [["ok1", "bad"], ["ok2"]]
    assert await b.submit(["later"]) == ["r:later"]
    await b.aclose()


async def test_a_failed_split_request_drops_its_remainder(executor: ThreadPoolExecutor) -> None:
    rec = Recorder()
    b = make(rec, executor, size=2, delay_us=0)
    with pytest.raises(ValueError, match="bad item"):
        await b.submit(["bad", "x1", "x2", "x3"])
    assert rec.batches == [["bad", "x1"]]
    assert b.queued_items == 0
    await b.aclose()


async def test_a_wrong_number_of_results_is_an_error(executor: ThreadPoolExecutor) -> None:
    b = DynamicBatcher(lambda items: items[:-1], max_batch_size=8, max_queue_delay_us=0, executor=executor)
    with pytest.raises(RuntimeError, match="returned 1 results for 2 items"):
        await b.submit([1, 2])
    await b.aclose()


async def test_batchers_never_mix_items(executor: ThreadPoolExecutor) -> None:
    rec_a, rec_b = Recorder(), Recorder()
    a, b = make(rec_a, executor), make(rec_b, executor)
    calls = [(a if i % 2 else b).submit([f"{'a' if i % 2 else 'b'}{i}"]) for i in range(20)]
    results = await asyncio.gather(*calls)
    assert all(r[0].startswith("r:a") == (i % 2 == 1) for i, r in enumerate(results))
    assert all(str(x).startswith("a") for batch in rec_a.batches for x in batch)
    assert all(str(x).startswith("b") for batch in rec_b.batches for x in batch)
    await a.aclose()
    await b.aclose()


async def test_aclose_finishes_queued_work_then_refuses(executor: ThreadPoolExecutor) -> None:
    rec = Recorder()
    b = make(rec, executor, size=4, delay_us=200_000)
    pending = asyncio.create_task(b.submit(["q1", "q2"]))
    await asyncio.sleep(0)
    t0 = time.perf_counter()
    await b.aclose()
    assert await pending == ["r:q1", "r:q2"]
    assert time.perf_counter() - t0 < 0.15  # closing does not wait out the queue delay
    with pytest.raises(ModelUnavailableError):
        await b.submit(["late"])
    await b.aclose()  # idempotent


async def test_empty_requests_and_bad_arguments(executor: ThreadPoolExecutor) -> None:
    rec = Recorder()
    b = make(rec, executor)
    assert await b.submit([]) == []
    assert rec.batches == []
    with pytest.raises(ValueError):
        DynamicBatcher(rec, max_batch_size=0, max_queue_delay_us=0)
    with pytest.raises(ValueError):
        DynamicBatcher(rec, max_batch_size=1, max_queue_delay_us=-1)
    await b.aclose()


async def test_many_concurrent_callers_all_get_their_own_results(executor: ThreadPoolExecutor) -> None:
    b = DynamicBatcher(lambda xs: [x * x for x in xs], max_batch_size=7, max_queue_delay_us=1000, executor=executor)

    async def caller(i: int) -> None:
        for j in range(5):
            items = list(range(i, i + (i + j) % 9 + 1))
            assert await b.submit(items) == [x * x for x in items]

    await asyncio.gather(*(caller(i) for i in range(40)))
    assert b.stats()["largest_batch"] <= 7
    await b.aclose()
