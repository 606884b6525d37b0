"""SpendWriter under a database slower than the traffic: the FIFO stays bounded (rows spill to the
spool), saturation is reported, nothing is lost, and the counts stay exact."""

from __future__ import annotations

import asyncio
import datetime as dt
import gc
import tracemalloc
from decimal import Decimal

import pytest

from modelyard.accounting.store import SpendRow
from modelyard.accounting.writer import SpendWriter, row_bytes
from modelyard.testing.clock import ManualClock

T0 = dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc)


def row(i: int, key: str | None = "0123456789abcdef") -> SpendRow:
    return SpendRow(
        request_id=f"req-{i:012d}", ts=T0 + dt.timedelta(microseconds=i), key_hash=key, team="search",
        model="chat", deployment="chat/0", prompt_tokens=100 + i, completion_tokens=1000 + i,
        cost=Decimal("0.000000001") * (i + 1), priced=True, latency_ms=1.25 + i, status=200,
    )


class SlowStore:
    """Takes ``delay_s`` per batch (or fails while ``down``); ON CONFLICT DO NOTHING semantics."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.down = False
        self.ids: set[str] = set()
        self.stored = 0

    async def insert_many(self, rows):
        await asyncio.sleep(self.delay_s)
        if self.down:
            raise ConnectionError("database is down")
        new = 0
        for r in rows:
            if r.request_id not in self.ids:
                self.ids.add(r.request_id)
                new += 1
        self.stored += new
        return new


def test_row_size_estimate_matches_measured_memory():
    """The bound is in bytes too: the per-row estimate must be close to what a buffered row holds."""
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    rows = [row(i) for i in range(20_000)]
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    estimate = sum(row_bytes(r) for r in rows)
    assert 0.75 < estimate / held < 1.5, (estimate, held)


async def test_slow_database_keeps_the_buffer_bounded_then_every_row_arrives_once(tmp_path):
    store = SlowStore(delay_s=0.05)  # 2000 rows per 50 ms at most: 40k rows/s
    w = SpendWriter(store, spool_path=tmp_path / "spool", flush_interval_s=0.01, max_batch=500,
                    max_buffer_rows=2_000, max_buffer_bytes=1 << 30)
    await w.start()
    n, peak, refused, i = 20_000, 0, 0, 0
    while i < n:  # far faster than the store takes them
        if w.saturated:  # what the app does: refuse the request (503), the client retries later
            refused += 1
            await asyncio.sleep(0.001)
            continue
        assert w.write(row(i))
        i += 1
        peak = max(peak, w.buffered)
        if i % 100 == 0:
            await asyncio.sleep(0)  # requests interleave with the writer's tasks, as on a busy server
    assert peak <= 2 * 2_000, peak
    assert w.spilled > 0 and w.dropped == 0
    await w.aclose()
    assert store.stored == n and len(store.ids) == n
    assert w.written == n and w.stats()["spooled"] == 0 and w.stats()["buffered"] == 0


async def test_byte_bound_spills_too(tmp_path):
    store = SlowStore(delay_s=0.05)
    cap = 200 * row_bytes(row(0))
    w = SpendWriter(store, spool_path=tmp_path / "spool", flush_interval_s=0.01, max_batch=100,
                    max_buffer_rows=10**9, max_buffer_bytes=cap)
    await w.start()
    i = 0
    while i < 2_000:
        if w.saturated:
            await asyncio.sleep(0.001)
            continue
        w.write(row(i))
        i += 1
        assert w.stats()["buffered_bytes"] <= 2 * cap + row_bytes(row(0))
        if i % 50 == 0:
            await asyncio.sleep(0)
    await w.aclose()
    assert w.spilled > 0 and store.stored == 2_000


async def test_database_and_spool_both_down_saturates_then_recovers_exactly(tmp_path):
    clock = ManualClock()
    store = SlowStore()
    store.down = True
    spool_dir = tmp_path / "ro"
    spool_dir.mkdir()
    spool = spool_dir / "spool"
    spool.mkdir()  # a directory where the spool file should be: every append fails (EISDIR)
    w = SpendWriter(store, spool_path=spool, flush_interval_s=1.0, max_batch=10, max_buffer_rows=50,
                    clock=clock)
    for i in range(100):
        assert w.write(row(i))
    await w.flush()
    assert w.buffered == 100 and w.saturated and w.health().state == "saturated"
    assert "spool write failed" in (w.last_error or "")
    # past four times the bound even in-flight rows are refused, and counted
    for i in range(100, 200):
        w.write(row(i))
    assert w.buffered == 200 and w.write(row(10**6)) is False and w.dropped == 1
    store.down = False
    clock.advance(60)
    await w.flush()
    assert store.stored == 200 and w.buffered == 0 and not w.saturated and w.health().state == "ok"


async def test_health_reports_spooling_then_stuck(tmp_path):
    clock = ManualClock()
    store = SlowStore()
    w = SpendWriter(store, spool_path=tmp_path / "spool", flush_interval_s=1.0, stuck_after_s=30, clock=clock)
    assert w.health().state == "ok"
    store.down = True
    w.write(row(1))
    await w.flush()
    h = w.health()
    assert h.state == "spooling" and h.spooled_rows == 1 and h.spool_bytes > 0 and "down" in h.last_error
    clock.advance(31)  # rows wait, nothing has moved for longer than stuck_after_s
    assert w.health().state == "stuck" and w.health().stalled_s == pytest.approx(31)
    store.down = False
    await w.flush()
    assert w.health().state == "ok" and store.stored == 1


async def test_written_counts_only_new_rows(tmp_path):
    store = SlowStore()
    w = SpendWriter(store, spool_path=tmp_path / "spool")
    for i in range(5):
        w.write(row(i))
    await w.flush()
    for i in range(3, 8):  # 3 and 4 again (a replay after a late commit, say)
        w.write(row(i))
    await w.flush()
    assert w.written == 8 == store.stored


async def test_rows_a_stuck_flush_holds_still_count_toward_saturation(tmp_path):
    """The CI failure of stop 17: while a flush held a batch out of the FIFO (its insert waiting on a
    locked database), the FIFO looked short, the app admitted more requests, and the backlog passed
    twice the bound. Rows in a flush are still owed: they count until the database or spool has them."""
    clock = ManualClock()
    gate, entered = asyncio.Event(), asyncio.Event()

    class Hung(SlowStore):
        async def insert_many(self, rows):
            entered.set()
            await gate.wait()
            return await super().insert_many(rows)

    store = Hung()
    spool = tmp_path / "spool"
    spool.mkdir()  # the spool cannot take the batch either
    w = SpendWriter(store, spool_path=spool, flush_interval_s=1.0, max_batch=1000, max_buffer_rows=50,
                    insert_timeout_s=60, clock=clock)
    for i in range(100):
        w.write(row(i))
    flush = asyncio.create_task(w.flush())
    await asyncio.wait_for(entered.wait(), 10)  # the flusher holds the batch, inside the insert
    assert len(w._buf) == 0  # the whole FIFO is in the flusher's hands ...
    assert w.buffered == 100 and w.saturated and w.health().backlog_rows == 100  # ... and still counted
    gate.set()
    await flush
    assert store.stored == 100 and w.buffered == 0 and not w.saturated
