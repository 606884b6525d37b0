"""Moves spend rows from the request path to the store, without the request ever waiting on a database.

``write(row)`` is synchronous and O(1): it appends to an in-memory list. A background task flushes
every ``flush_interval_s`` (sooner once ``max_batch`` rows are waiting) in batches of ``max_batch``,
each one ``insert_many`` under ``insert_timeout_s``.

When an insert raises or times out, that batch and every later one go to the *spool*: a local
append-only JSON-lines file, fsync'ed once per batch. Database attempts pause with exponential
backoff (``flush_interval_s`` doubling up to ``retry_max_s``, on the injected clock); the first
successful attempt replays the spool oldest first, batch by batch, before any newer row is sent, so
rows reach the database in the order they were written. Replays are idempotent because the store
ignores a request_id it already has (a timed-out insert that committed late is harmless).

Durability: ``aclose()`` flushes every accepted row (to the database, or to the spool while it is
down). A SIGKILL loses at most the rows accepted since the last flush (one flush interval); rows in
the spool survive and are replayed by the next process using the same spool path. A batch torn by a
crash mid-append is cut off at the last complete line when the spool is opened.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import orjson

from .store import SpendRow

log = logging.getLogger("modelyard.accounting")


class SpendSink(Protocol):
    async def insert_many(self, rows: Sequence[SpendRow]) -> None: ...


class SpendWriter:
    def __init__(
        self,
        store: SpendSink,
        *,
        spool_path: str | Path,
        flush_interval_s: float = 1.0,
        max_batch: int = 1000,
        insert_timeout_s: float = 5.0,
        retry_max_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._spool = Path(spool_path)
        self._interval = flush_interval_s
        self._max_batch = max_batch
        self._timeout = insert_timeout_s
        self._retry_max = retry_max_s
        self._clock = clock
        self._buf: list[SpendRow] = []
        self._lock = asyncio.Lock()  # one flush at a time: the spool's order depends on it
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stop = False
        self._closed = False
        self._opened = False
        self._retry_at = float("-inf")
        self._backoff = 0.0
        # stats (read by metrics)
        self.spooled = 0  # rows in the spool now, waiting for replay
        self.written = 0  # rows the database acknowledged
        self.failures = 0  # failed or timed-out insert attempts
        self.dropped = 0  # rows lost: spool unwritable, or write() after aclose()
        self.corrupt = 0  # spool lines that could not be read back (torn by a crash)
        self.last_error: str | None = None

    # --- the request path --------------------------------------------------------------------

    def write(self, row: SpendRow) -> bool:
        """Accept a row (never blocks, never touches I/O). False once the writer is closed."""
        if self._closed:
            self.dropped += 1
            return False
        self._buf.append(row)
        if len(self._buf) >= self._max_batch:
            self._wake.set()
        return True

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def stats(self) -> dict[str, int]:
        return {
            "buffered": len(self._buf),
            "spooled": self.spooled,
            "written": self.written,
            "failures": self.failures,
            "dropped": self.dropped,
            "corrupt": self.corrupt,
        }

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
        if self._task is not None:
            self._stop = True
            self._wake.set()
            await self._task  # not cancelled: a cancelled flush would have rows in hand
            self._task = None
        await self.flush()

    async def _run(self) -> None:
        while not self._stop:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._interval)
            self._wake.clear()
            if self._stop:
                return
            try:
                await self.flush()
            except Exception:  # a bug here must not end the loop and strand every later row
                log.exception("spend writer flush failed")

    # --- flushing ----------------------------------------------------------------------------

    async def flush(self) -> None:
        """Send what is buffered: spool first (oldest), then new rows; to the spool while the DB is down."""
        async with self._lock:
            await self._open()
            rows, self._buf = self._buf, []
            i = 0
            try:
                if self.spooled and self._db_due():
                    await self._replay()
                while i < len(rows):
                    batch = rows[i : i + self._max_batch]
                    if not (self.spooled == 0 and self._db_due() and await self._insert(batch)):
                        await self._append_spool(batch)
                    i += len(batch)
            except BaseException:
                # cancelled mid-flush: what is not yet stored or spooled goes back, ahead of newer rows
                self._buf[:0] = rows[i:]
                raise

    def _db_due(self) -> bool:
        return self._clock() >= self._retry_at

    async def _insert(self, batch: Sequence[SpendRow]) -> bool:
        try:
            await asyncio.wait_for(self._store.insert_many(batch), self._timeout)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure: keep the rows, spool them
            self.failures += 1
            self.last_error = f"{exc.__class__.__name__}: {exc}"
            self._backoff = min(self._retry_max, max(self._interval, self._backoff * 2))
            self._retry_at = self._clock() + self._backoff
            log.warning("spend insert failed (%s); spooling, next attempt in %.1fs", self.last_error, self._backoff)
            return False
        self.written += len(batch)
        self._backoff = 0.0
        self._retry_at = float("-inf")
        return True

    # --- the spool ---------------------------------------------------------------------------

    async def _open(self) -> None:
        """Once: count the spool left by an earlier process, cutting a torn last line."""
        if self._opened:
            return
        self._opened = True
        self.spooled = await asyncio.to_thread(self._repair_and_count)

    def _repair_and_count(self) -> int:
        try:
            data = self._spool.read_bytes()
        except FileNotFoundError:
            return 0
        keep = data.rfind(b"\n") + 1
        if keep < len(data):
            self.corrupt += 1
            with open(self._spool, "r+b") as f:
                f.truncate(keep)
                f.flush()
                os.fsync(f.fileno())
        return data.count(b"\n", 0, keep)

    async def _append_spool(self, batch: Sequence[SpendRow]) -> None:
        data = b"".join(orjson.dumps(r.to_json()) + b"\n" for r in batch)
        try:
            await asyncio.to_thread(self._append_sync, data)
        except OSError as exc:
            self.dropped += len(batch)
            self.last_error = f"spool write failed: {exc}"
            log.error("spend spool %s unwritable: %d rows lost (%s)", self._spool, len(batch), exc)
            return
        self.spooled += len(batch)

    def _append_sync(self, data: bytes) -> None:
        self._spool.parent.mkdir(parents=True, exist_ok=True)
        with open(self._spool, "ab") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    async def _replay(self) -> None:
        offset = 0
        while True:
            rows, end = await asyncio.to_thread(self._read_chunk, offset)
            if not rows and end == offset:
                break
            if rows and not await self._insert(rows):
                if offset:  # keep exactly the rows not yet stored, so stats and reruns stay exact
                    await asyncio.to_thread(self._keep_tail, offset)
                self.spooled = await asyncio.to_thread(self._count_lines)
                return
            offset = end
        await asyncio.to_thread(self._truncate)
        self.spooled = 0

    def _read_chunk(self, offset: int) -> tuple[list[SpendRow], int]:
        rows: list[SpendRow] = []
        with open(self._spool, "rb") as f:
            f.seek(offset)
            while len(rows) < self._max_batch:
                line = f.readline()
                if not line:
                    break
                try:
                    rows.append(SpendRow.from_json(orjson.loads(line)))
                except (orjson.JSONDecodeError, TypeError, ValueError, KeyError):
                    self.corrupt += 1
            return rows, f.tell()

    def _keep_tail(self, offset: int) -> None:
        tmp = self._spool.with_name(self._spool.name + ".tmp")
        with open(self._spool, "rb") as src, open(tmp, "wb") as dst:
            src.seek(offset)
            while chunk := src.read(1 << 20):
                dst.write(chunk)
            dst.flush()
            os.fsync(dst.fileno())
        os.replace(tmp, self._spool)
        self._fsync_dir()

    def _truncate(self) -> None:
        with contextlib.suppress(FileNotFoundError), open(self._spool, "r+b") as f:
            f.truncate(0)
            f.flush()
            os.fsync(f.fileno())

    def _count_lines(self) -> int:
        try:
            return self._spool.read_bytes().count(b"\n")
        except FileNotFoundError:
            return 0

    def _fsync_dir(self) -> None:
        with contextlib.suppress(OSError):
            fd = os.open(self._spool.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
