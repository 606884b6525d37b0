"""Moves the memory manager's tier changes to the ``tier_events`` table without blocking it.

``TierEventWriter.record(deployment, from_tier, to_tier, nbytes, reason)`` is the manager's
``tier_event`` hook: synchronous, O(1), no I/O — it stamps the event with the injected wall clock
and appends it to a bounded FIFO. A background task inserts the FIFO in batches every
``flush_interval_s`` (as ``SpendWriter`` does for spend rows). A failed insert keeps the batch for
the next attempt; past ``max_buffer`` events the oldest are dropped and counted (tier changes are a
few per minute, so the bound is only reached when the database is away for a long time).
``aclose()`` makes a last attempt. ``modelyard analyze`` reads the table.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import BigInteger, Column, Integer, MetaData, String, Table, insert
from sqlalchemy.exc import SQLAlchemyError

from modelyard.db import Database, DatabaseError
from modelyard.epoch import to_us

log = logging.getLogger("modelyard.accounting")

_md = MetaData()
tier_events = Table(
    "tier_events",
    _md,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("ts_us", BigInteger),
    Column("model", String),
    Column("deployment", String),
    Column("from_tier", String),
    Column("to_tier", String),
    Column("bytes", BigInteger),
    Column("reason", String),
)


@dataclass(frozen=True, slots=True)
class TierEvent:
    ts_us: int
    model: str
    deployment: str
    from_tier: str
    to_tier: str
    bytes: int
    reason: str

    def params(self) -> dict[str, Any]:
        return {"ts_us": self.ts_us, "model": self.model, "deployment": self.deployment, "from_tier": self.from_tier,
                "to_tier": self.to_tier, "bytes": int(self.bytes), "reason": self.reason}


async def insert_events(db: Database, events: list[TierEvent]) -> None:
    """One transaction; raises ``DatabaseError`` (the database's own errors wrapped)."""
    if not events:
        return
    try:
        async with db.engine.begin() as conn:
            await conn.execute(insert(tier_events), [e.params() for e in events])
    except (SQLAlchemyError, OSError) as exc:
        raise DatabaseError(f"tier event insert failed: {exc.__class__.__name__}: {exc}") from exc


class TierEventWriter:
    def __init__(
        self,
        db: Database,
        *,
        wall_clock: Callable[[], dt.datetime],
        names: Mapping[str, str] | None = None,  # deployment key → public model name
        flush_interval_s: float = 1.0,
        max_buffer: int = 10_000,
    ) -> None:
        self._db = db
        self._wall_clock = wall_clock
        self._names = dict(names or {})
        self._interval = flush_interval_s
        self._buf: deque[TierEvent] = deque(maxlen=max_buffer)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.written = 0
        self.dropped = 0
        self.failures = 0

    # --- the manager's side: never blocks ----------------------------------------------------

    def record(self, deployment: str, from_tier: str, to_tier: str, nbytes: int, reason: str) -> None:
        if self._closed:
            self.dropped += 1
            return
        if len(self._buf) == self._buf.maxlen:
            self.dropped += 1  # the deque drops the oldest
        model = self._names.get(deployment, deployment)
        self._buf.append(TierEvent(to_us(self._wall_clock()), model, deployment, from_tier, to_tier, nbytes, reason))

    @property
    def pending(self) -> int:
        return len(self._buf)

    # --- the background side ----------------------------------------------------------------

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="modelyard-tier-events")

    async def flush(self) -> int:
        """Insert what is buffered; on failure the events go back to the front of the FIFO."""
        batch = list(self._buf)
        if not batch:
            return 0
        self._buf.clear()
        try:
            await insert_events(self._db, batch)
        except DatabaseError as exc:
            self.failures += 1
            room = (self._buf.maxlen or len(batch)) - len(self._buf)
            kept = batch[-room:] if room > 0 else []
            self.dropped += len(batch) - len(kept)
            self._buf.extendleft(reversed(kept))
            log.warning("tier events not written (%d kept for the next attempt): %s", len(kept), exc.message)
            return 0
        self.written += len(batch)
        return len(batch)

    async def _loop(self) -> None:
        while not self._closed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._interval)
            self._wake.clear()
            try:
                await self.flush()
            except Exception:  # keep flushing: one bad batch must not stop the record
                log.exception("tier event flush failed")

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._wake.set()
        if self._task is not None:
            await self._task  # it flushes once more, then ends (never cancelled mid-insert)
        await self.flush()
