"""Moves spend rows from the request path to the store, without the request ever waiting on a database.

``write(row)`` is synchronous and O(1): it appends to an in-memory FIFO. A background task (the
*flusher*) sends the FIFO to the store every ``flush_interval_s`` (at once when ``max_batch`` rows
wait), ``max_batch`` rows per ``insert_many``, each under ``insert_timeout_s``.

**Bounded memory.** The FIFO holds at most ``max_buffer_rows`` rows / ``max_buffer_bytes`` bytes
(an estimate per row). Past that bound a second task (the *spiller*) moves the newest rows to the
spool on disk, so a database slower than the traffic costs disk, never unbounded RAM. At twice
the bound the writer is *saturated* (the spool cannot keep up or cannot be written): the app
refuses new requests with 503 + Retry-After rather than serve what it cannot account for. Rows of
requests already in flight are still taken up to four times the bound; past that they are dropped
and counted (``dropped``), which the saturation refusal keeps from happening.
Every bound counts the rows a flush or spill holds out of the FIFO (awaiting the database or the
spool) until they land: the backlog is what is owed, not what happens to sit in the deque.

**The database away.** When an insert raises or times out, that batch goes to the spool (a local
append-only JSON-lines file, fsync'ed per batch, see ``spool.py``), and so does every batch until
the next attempt: attempts pause with exponential backoff (``flush_interval_s`` doubling up to
``retry_max_s``, on the injected clock). The first successful attempt replays the spool oldest
first, chunk by chunk, then sends the FIFO. Replays are idempotent (the store skips a request_id it
has), so a timed-out insert that committed late is harmless, and the store's count of new rows
keeps ``written`` exact. Rows spilled for room reach the database after older FIFO rows may have:
each row carries its own timestamp, and every query orders by it.

**Durability.** ``aclose()`` stores or spools every accepted row. A SIGKILL loses at most the rows
in the FIFO and the batch in flight: one flush interval of traffic, never more than the bound.
Spooled rows survive and are replayed by the next process using the same spool path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from .spool import Spool
from .store import SpendRow

log = logging.getLogger("modelyard.accounting")

# Bytes one buffered row holds (the slotted row, its datetime and Decimal, small ints and the string
# headers), plus the characters of its strings: measured with tracemalloc (tests/unit/test_spend_writer.py).
ROW_BASE_BYTES = 620


def row_bytes(r: SpendRow) -> int:
    return ROW_BASE_BYTES + len(r.request_id) + len(r.model) + len(r.deployment) + len(r.key_hash or "") + len(r.team or "")


class SpendSink(Protocol):
    async def insert_many(self, rows: Sequence[SpendRow]) -> int | None: ...  # new rows (None: all of them)


@dataclass(frozen=True)
class WriterHealth:
    state: str  # ok | spooling (database away, rows go to the spool) | stuck | saturated
    backlog_rows: int
    backlog_bytes: int
    spooled_rows: int
    spool_bytes: int
    stalled_s: float  # seconds since rows last moved (to the database or the spool) while some wait
    last_error: str | None

    def as_dict(self) -> dict[str, Any]:
        return {"state": self.state, "backlog_rows": self.backlog_rows, "backlog_bytes": self.backlog_bytes,
                "spooled_rows": self.spooled_rows, "spool_bytes": self.spool_bytes,
                "stalled_s": round(self.stalled_s, 3), "last_error": self.last_error}


class SpendWriter:
    def __init__(
        self,
        store: SpendSink,
        *,
        spool_path: str | Path,
        flush_interval_s: float = 0.5,
        max_batch: int = 2000,
        insert_timeout_s: float = 5.0,
        retry_max_s: float = 30.0,
        max_buffer_rows: int = 20_000,
        max_buffer_bytes: int = 16 << 20,
        stuck_after_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._spool = Spool(spool_path)
        self._interval = flush_interval_s
        self._max_batch = max_batch
        self._timeout = insert_timeout_s
        self._retry_max = retry_max_s
        self._max_rows = max_buffer_rows
        self._max_bytes = max_buffer_bytes
        self._stuck_after = stuck_after_s
        self._clock = clock
        self._buf: deque[SpendRow] = deque()
        self._sizes: deque[int] = deque()  # row_bytes of each buffered row, in step with _buf
        self._buf_bytes = 0
        # rows out of the FIFO in a flush or a spill that has not yet landed (database, spool or back):
        # still owed, so they count toward the backlog and the saturation bound
        self._held_rows = 0
        self._held_bytes = 0
        self._lock = asyncio.Lock()  # one flush at a time
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._spiller: asyncio.Task[None] | None = None
        self._spill_retry_at = float("-inf")
        self._stop = False
        self._closed = False
        self._opened = False
        self._retry_at = float("-inf")
        self._backoff = 0.0
        self._moved_at = clock()  # the last time rows reached the database or the spool
        self._spool_failing = False
        # stats (read by metrics)
        self.written = 0  # rows the database acknowledged as new
        self.failures = 0  # failed or timed-out insert attempts
        self.dropped = 0  # rows lost: past the hard bound, or write() after aclose()
        self.spilled = 0  # rows moved to the spool for room (not because the database failed)
        self.last_error: str | None = None

    # --- the request path --------------------------------------------------------------------

    def write(self, row: SpendRow) -> bool:
        """Accept a row (never blocks, never touches I/O). False once closed or past the hard bound."""
        if self._closed or self.buffered >= 4 * self._max_rows or self._backlog_bytes >= 4 * self._max_bytes:
            self.dropped += 1
            return False
        size = row_bytes(row)
        self._buf.append(row)
        self._sizes.append(size)
        self._buf_bytes += size
        n = len(self._buf)
        if n >= self._max_batch:
            self._wake.set()
        if (n > self._max_rows or self._buf_bytes > self._max_bytes) and self._spiller is None and self._task is not None:
            if self._clock() >= self._spill_retry_at:
                self._spiller = asyncio.get_running_loop().create_task(self._spill(), name="spend-spiller")
        return True

    @property
    def saturated(self) -> bool:
        """Twice the bound: the app refuses new requests until the backlog shrinks."""
        return self.buffered >= 2 * self._max_rows or self._backlog_bytes >= 2 * self._max_bytes

    @property
    def buffered(self) -> int:
        """Rows accepted and not yet stored or spooled: the FIFO plus a batch in a flush or spill."""
        return len(self._buf) + self._held_rows

    @property
    def _backlog_bytes(self) -> int:
        return self._buf_bytes + self._held_bytes

    @property
    def spooled(self) -> int:
        return self._spool.rows

    @property
    def corrupt(self) -> int:
        return self._spool.corrupt

    def retry_after_s(self) -> float:
        """A client's wait when refused for saturation: about one flush interval, or the database's backoff."""
        return max(self._interval, self._retry_at - self._clock(), 1.0)

    def stats(self) -> dict[str, int]:
        return {
            "buffered": self.buffered,
            "buffered_bytes": self._backlog_bytes,
            "spooled": self._spool.rows,
            "spool_bytes": self._spool.bytes,
            "written": self.written,
            "failures": self.failures,
            "dropped": self.dropped,
            "spilled": self.spilled,
            "corrupt": self._spool.corrupt,
        }

    def health(self) -> WriterHealth:
        pending = bool(self._buf) or self._spool.rows > 0
        stalled = max(0.0, self._clock() - self._moved_at) if pending else 0.0
        if self.saturated:
            state = "saturated"
        elif pending and stalled > self._stuck_after:
            state = "stuck"
        elif self._spool.rows or self._clock() < self._retry_at:
            state = "spooling"
        else:
            state = "ok"
        return WriterHealth(state, self.buffered, self._backlog_bytes, self._spool.rows, self._spool.bytes, stalled,
                            self.last_error)

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        await self._open()
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="spend-writer")

    async def aclose(self) -> None:
        """Stop accepting rows, let a flush in progress finish, then flush everything accepted."""
        if self._closed:
            return
        self._closed = True
        if self._spiller is not None:
            await self._spiller
        if self._task is not None:
            self._stop = True
            self._wake.set()
            await self._task  # not cancelled: a cancelled flush would have rows in hand
            self._task = None
        await self.flush()
        if self._buf:  # neither the database nor the spool took them: say so, loudly
            self.dropped += len(self._buf)
            log.error("spend writer closed with %d rows that neither the database nor the spool took (%s)",
                      len(self._buf), self.last_error)
            self._buf.clear()
            self._sizes.clear()
            self._buf_bytes = 0
        await self._spool.aclose()

    async def _run(self) -> None:
        while not self._stop:
            if len(self._buf) < self._max_batch:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._interval)
            self._wake.clear()
            if self._stop:
                return
            try:
                await self.flush()
            except Exception:  # a bug here must not end the loop and strand every later row
                log.exception("spend writer flush failed")
                await asyncio.sleep(self._interval)

    # --- flushing ----------------------------------------------------------------------------

    async def flush(self) -> None:
        """Send the rows buffered now (the spool first, when the database is due); to the spool
        while the database is away. Rows written during the flush wait for the next one."""
        async with self._lock:
            await self._open()
            todo = len(self._buf)
            if self._spool.rows and self._db_due():
                await self._replay()
            while todo > 0 and self._buf:
                batch, size = self._take(min(todo, self._max_batch))
                todo -= len(batch)
                try:
                    if self._db_due() and await self._insert(batch):
                        continue
                    if not await self._to_spool(batch):
                        self._putback(batch)  # neither database nor disk: keep them, report, retry later
                        return
                finally:
                    self._release(len(batch), size)

    def _take(self, n: int, *, newest: bool = False) -> tuple[list[SpendRow], int]:
        """The oldest (or newest) ``n`` rows and their bytes, held until ``_release``."""
        buf, sizes = self._buf, self._sizes
        n = min(n, len(buf))
        if newest:
            batch = [buf.pop() for _ in range(n)]
            batch.reverse()
            size = sum([sizes.pop() for _ in range(n)])
        else:
            batch = [buf.popleft() for _ in range(n)]
            size = sum([sizes.popleft() for _ in range(n)])
        self._buf_bytes -= size
        self._held_rows += n
        self._held_bytes += size
        return batch, size

    def _release(self, rows: int, size: int) -> None:
        self._held_rows -= rows
        self._held_bytes -= size

    def _putback(self, batch: list[SpendRow], *, tail: bool = False) -> None:
        sizes = [row_bytes(r) for r in batch]
        if tail:
            self._buf.extend(batch)
            self._sizes.extend(sizes)
        else:
            self._buf.extendleft(reversed(batch))
            self._sizes.extendleft(reversed(sizes))
        self._buf_bytes += sum(sizes)

    def _db_due(self) -> bool:
        return self._clock() >= self._retry_at

    async def _insert(self, batch: Sequence[SpendRow]) -> bool:
        try:
            new = await asyncio.wait_for(self._store.insert_many(batch), self._timeout)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure: keep the rows, spool them
            self.failures += 1
            self.last_error = f"{exc.__class__.__name__}: {exc}"
            self._backoff = min(self._retry_max, max(self._interval, self._backoff * 2))
            self._retry_at = self._clock() + self._backoff
            log.warning("spend insert failed (%s); spooling, next attempt in %.1fs", self.last_error, self._backoff)
            return False
        self.written += len(batch) if new is None else new
        self._backoff = 0.0
        self._retry_at = float("-inf")
        self._moved_at = self._clock()
        return True

    # --- the spool ---------------------------------------------------------------------------

    async def _open(self) -> None:
        if not self._opened:
            self._opened = True
            try:
                await self._spool.open()
            except OSError as exc:
                self.last_error = f"spool unreadable: {exc}"
                log.error("spend spool %s unreadable at start: %s", self._spool.path, exc)

    async def _to_spool(self, batch: Sequence[SpendRow]) -> bool:
        try:
            await self._spool.append(batch)
        except OSError as exc:
            self.last_error = f"spool write failed: {exc}"
            if not self._spool_failing:
                log.error("spend spool %s unwritable (%s): %d rows kept in memory", self._spool.path, exc, len(batch))
            self._spool_failing = True
            return False
        self._spool_failing = False
        self._moved_at = self._clock()
        return True

    async def _spill(self) -> None:
        """Move the newest rows past the bound to the spool (down to 3/4 of it), then end."""
        try:
            low_rows, low_bytes = self._max_rows * 3 // 4, self._max_bytes * 3 // 4
            while len(self._buf) > low_rows or self._buf_bytes > low_bytes:
                batch, size = self._take(min(self._max_batch, max(1, len(self._buf) - low_rows)), newest=True)
                try:
                    if not await self._to_spool(batch):
                        self._putback(batch, tail=True)
                        self._spill_retry_at = self._clock() + self._interval
                        return
                finally:
                    self._release(len(batch), size)
                self.spilled += len(batch)
        finally:
            self._spiller = None

    async def _replay(self) -> None:
        """Spool → database, oldest first; stop (keeping exactly the unstored rows) at a failure."""
        offset = 0
        while True:
            rows, end = await self._spool.read(offset, self._max_batch)
            if end == offset:
                break
            if rows and not await self._insert(rows):
                break
            offset = end
        if offset:
            await self._spool.consumed(offset)
