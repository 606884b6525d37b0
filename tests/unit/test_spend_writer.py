"""SpendWriter against a fake store: batching, spooling while the database is down, ordered
exactly-once replay, flush on close. Time is a ManualClock; flushes are driven by hand."""

from __future__ import annotations

import asyncio
import datetime as dt
import inspect
import json
from decimal import Decimal

import pytest

from modelyard.accounting.store import SpendRow
from modelyard.accounting.writer import SpendWriter
from modelyard.testing.clock import ManualClock

T0 = dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc)


def row(i: int) -> SpendRow:
    return SpendRow(
        request_id=f"r{i:06d}", ts=T0 + dt.timedelta(seconds=i), key_hash="k", team=None, model="m",
        deployment="m/0", prompt_tokens=i, completion_tokens=1, cost=Decimal("0.000000001") * i,
        priced=True, latency_ms=1.5, status=200,
    )


class FakeStore:
    """Keeps rows in a dict keyed by request_id (like ON CONFLICT DO NOTHING); can fail or hang."""

    def __init__(self) -> None:
        self.rows: dict[str, SpendRow] = {}
        self.order: list[str] = []  # request_ids in the order they were first stored
        self.batches: list[int] = []
        self.attempts = 0
        self.down = False
        self.hang: asyncio.Event | None = None

    async def insert_many(self, rows):
        self.attempts += 1
        if self.hang is not None:
            await self.hang.wait()
        if self.down:
            raise ConnectionError("database is down")
        self.batches.append(len(rows))
        for r in rows:
            if r.request_id not in self.rows:
                self.rows[r.request_id] = r
                self.order.append(r.request_id)


@pytest.fixture
def clock():
    return ManualClock()


def make(store, tmp_path, clock, **kw):
    kw.setdefault("max_batch", 3)
    kw.setdefault("flush_interval_s", 1.0)
    return SpendWriter(store, spool_path=tmp_path / "spool.jsonl", clock=clock, **kw)


def spool_ids(tmp_path):
    p = tmp_path / "spool.jsonl"
    return [json.loads(line)["request_id"] for line in p.read_text().splitlines()] if p.exists() else []


def test_write_is_synchronous_and_touches_no_io(tmp_path, clock):
    assert not inspect.iscoroutinefunction(SpendWriter.write)
    store = FakeStore()
    w = make(store, tmp_path, clock)
    for i in range(10):  # no event loop running here at all
        assert w.write(row(i)) is True
    assert w.stats()["buffered"] == 10
    assert store.attempts == 0 and not (tmp_path / "spool.jsonl").exists()


async def test_write_never_waits_on_a_hung_database(tmp_path, clock):
    store = FakeStore()
    store.hang = asyncio.Event()
    w = make(store, tmp_path, clock, max_batch=2, insert_timeout_s=60)
    await w.start()
    w.write(row(0))
    w.write(row(1))  # wakes the flusher, which then hangs inside insert_many
    try:
        for _ in range(1000):
            if store.attempts:
                break
            await asyncio.sleep(0.001)
        assert store.attempts == 1
        for i in range(2, 1002):
            w.write(row(i))  # returns at once although the flusher is stuck
        assert w.buffered == 1002  # 1,000 in the FIFO and the 2 the stuck flusher holds: all still owed
        assert w.health().backlog_rows == 1002
    finally:
        store.hang.set()
        await w.aclose()
    assert len(store.rows) == 1002 and w.written == 1002


async def test_rows_are_batched(tmp_path, clock):
    store = FakeStore()
    w = make(store, tmp_path, clock, max_batch=3)
    for i in range(7):
        w.write(row(i))
    await w.flush()
    assert store.batches == [3, 3, 1]
    assert store.order == [row(i).request_id for i in range(7)]
    assert w.stats() == {"buffered": 0, "buffered_bytes": 0, "spooled": 0, "spool_bytes": 0, "written": 7,
                         "failures": 0, "dropped": 0, "spilled": 0, "corrupt": 0}


async def test_failure_spools_then_recovery_replays_in_order_exactly_once(tmp_path, clock):
    store = FakeStore()
    w = make(store, tmp_path, clock, max_batch=3, flush_interval_s=1.0)
    for i in range(3):
        w.write(row(i))
    await w.flush()  # stored
    store.down = True
    for i in range(3, 8):
        w.write(row(i))
    await w.flush()
    assert w.failures == 1  # first batch failed; the rest went straight to the spool (backoff)
    assert spool_ids(tmp_path) == [row(i).request_id for i in range(3, 8)]
    assert w.stats()["spooled"] == 5

    # still inside the backoff window: no database attempt at all, rows go to the spool
    attempts = store.attempts
    w.write(row(8))
    await w.flush()
    assert store.attempts == attempts and w.stats()["spooled"] == 6

    # backoff passed but still down: one attempt (the replay), fails, backoff doubles
    clock.advance(1.0)
    w.write(row(9))
    await w.flush()
    assert store.attempts == attempts + 1 and w.failures == 2 and w.stats()["spooled"] == 7

    store.down = False
    clock.advance(1.9)  # backoff is now 2 s
    w.write(row(10))
    await w.flush()
    assert store.attempts == attempts + 1  # not yet due
    clock.advance(0.2)
    w.write(row(11))
    await w.flush()
    assert store.order == [row(i).request_id for i in range(12)]  # oldest first, each exactly once
    assert w.stats()["spooled"] == 0 and spool_ids(tmp_path) == []
    assert w.written == 12 and len(store.rows) == 12


async def test_partial_replay_keeps_only_unstored_rows(tmp_path, clock):
    store = FakeStore()
    w = make(store, tmp_path, clock, max_batch=2)
    store.down = True
    for i in range(5):
        w.write(row(i))
    await w.flush()
    assert w.stats()["spooled"] == 5
    store.down = False
    real = store.insert_many
    calls = 0

    async def fail_second(rows):
        nonlocal calls
        calls += 1
        if calls == 2:
            raise TimeoutError("slow")
        await real(rows)

    store.insert_many = fail_second
    clock.advance(10)
    await w.flush()
    assert store.order == ["r000000", "r000001"]
    assert spool_ids(tmp_path) == ["r000002", "r000003", "r000004"] and w.stats()["spooled"] == 3
    store.insert_many = real
    clock.advance(10)
    await w.flush()
    assert store.order == [row(i).request_id for i in range(5)] and w.written == 5


async def test_slow_insert_times_out_and_spools(tmp_path, clock):
    store = FakeStore()
    store.hang = asyncio.Event()  # never set: the database never answers
    w = make(store, tmp_path, clock, insert_timeout_s=0.01)
    w.write(row(0))
    await w.flush()
    assert w.failures == 1 and spool_ids(tmp_path) == ["r000000"]
    store.hang = None
    clock.advance(5)
    await w.flush()
    assert list(store.rows) == ["r000000"] and w.stats()["spooled"] == 0


async def test_aclose_flushes_everything_to_db(tmp_path, clock):
    store = FakeStore()
    w = make(store, tmp_path, clock, flush_interval_s=3600)
    await w.start()
    for i in range(10):
        w.write(row(i))
    await w.aclose()
    assert len(store.rows) == 10 and w.stats()["buffered"] == 0
    assert w.write(row(99)) is False and w.dropped == 1


async def test_aclose_with_database_down_spools_and_next_writer_replays(tmp_path, clock):
    store = FakeStore()
    store.down = True
    w = make(store, tmp_path, clock, flush_interval_s=3600)
    await w.start()
    for i in range(4):
        w.write(row(i))
    await w.aclose()
    assert spool_ids(tmp_path) == [row(i).request_id for i in range(4)] and not store.rows

    store.down = False
    w2 = make(store, tmp_path, clock)  # a restarted process, same spool
    w2.write(row(4))
    await w2.flush()
    assert store.order == [row(i).request_id for i in range(5)]


async def test_torn_last_spool_line_is_cut(tmp_path, clock):
    p = tmp_path / "spool.jsonl"
    p.write_bytes(json.dumps(row(0).to_json()).encode() + b"\n" + b'{"request_id": "r0000')  # crash mid-append
    store = FakeStore()
    w = make(store, tmp_path, clock)
    w.write(row(1))
    await w.flush()
    assert store.order == ["r000000", "r000001"] and w.corrupt == 1


async def test_background_task_flushes_on_interval(tmp_path, clock):
    store = FakeStore()
    w = make(store, tmp_path, clock, flush_interval_s=0.01, max_batch=1000)
    await w.start()
    w.write(row(0))
    for _ in range(500):
        if store.rows:
            break
        await asyncio.sleep(0.01)
    assert list(store.rows) == ["r000000"]
    await w.aclose()
