"""The spend writer's fast path into the database: one dedicated connection, rows as plain tuples.

Why not the SQLAlchemy engine that serves the reads (see docs/design/spend.md, "Writer throughput"):

* **SQLite** through aiosqlite + SQLAlchemy's ``executemany`` steps the statement once per row in
  aiosqlite's thread. Each step releases the GIL and must take it back from the event loop; a busy
  loop holds it for its whole switch interval (5 ms), so under load every row waited for a GIL
  hand-off: ~850 rows/s while the gateway answered ~2,000 req/s. Here one stdlib ``sqlite3``
  connection in a thread of its own inserts a whole batch with multi-row ``INSERT OR IGNORE``
  statements of a few fixed sizes (500, 50, 5 and 1 rows): a few GIL releases per batch, and
  the database work runs in parallel with the loop.
* **PostgreSQL**: one asyncpg connection of its own, ``COPY`` into a temporary staging table and
  one ``INSERT … SELECT … ON CONFLICT DO NOTHING`` per batch (COPY cannot skip duplicates itself);
  no SQLAlchemy parameter processing on the event loop.

Both return how many rows were new (a replayed batch that was stored before counts 0), so the
writer's ``written`` stat is exact. Failures become ``SpendStoreError``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import sqlite3
import time
from collections.abc import Sequence
from typing import Any

from modelyard.epoch import to_us

from .pricing import to_nano
from .store import SpendRow, SpendStoreError

COLUMNS = (
    "request_id", "ts_us", "key_hash", "team", "model", "deployment", "prompt_tokens", "completion_tokens",
    "cost_nano", "priced", "latency_ms", "status", "fallbacks", "stream", "hop", "batch_id",
)


def as_tuple(r: SpendRow) -> tuple[Any, ...]:
    return (
        r.request_id, to_us(r.ts), r.key_hash, r.team, r.model, r.deployment, int(r.prompt_tokens),
        int(r.completion_tokens), to_nano(r.cost), bool(r.priced), float(r.latency_ms), int(r.status),
        int(r.fallbacks), bool(r.stream), int(r.hop), r.batch_id,
    )


class SqliteSink:
    """Inserts through one ``sqlite3`` connection that lives in (and is used only by) its own thread."""

    def __init__(self, path: str, *, busy_timeout_ms: int = 5000, chunk_rows: int = 500) -> None:
        self._path = path
        self._busy_timeout_ms = busy_timeout_ms
        # Statements for these row counts only: a statement per batch length would fill sqlite3's
        # statement cache with prepared statements of up to 14k variables each (the soak's RSS
        # grew ~80 MB that way before settling).
        self._sizes = sorted({chunk_rows, max(1, chunk_rows // 10), max(1, chunk_rows // 100), 1}, reverse=True)
        self._thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="modelyard-spend-sqlite")
        self._conn: sqlite3.Connection | None = None
        self._stmts: dict[int, str] = {}

    async def insert(self, rows: Sequence[SpendRow]) -> int:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._thread, self._insert_sync, rows)
        except (sqlite3.Error, OSError) as exc:
            raise SpendStoreError(f"spend insert failed: {exc.__class__.__name__}: {exc}") from exc

    def _connect(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = sqlite3.connect(self._path, isolation_level=None, timeout=self._busy_timeout_ms / 1000)
            conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_ms)}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            self._conn = conn
        return self._conn

    def _stmt(self, n: int) -> str:
        s = self._stmts.get(n)
        if s is None:
            one = "(" + ",".join("?" * len(COLUMNS)) + ")"
            s = self._stmts[n] = f"INSERT OR IGNORE INTO spend_rows ({','.join(COLUMNS)}) VALUES " + ",".join([one] * n)
        return s

    def _insert_sync(self, rows: Sequence[SpendRow]) -> int:
        conn = self._connect()
        new = 0  # the statements' own rowcount: total_changes would also count spend_daily's trigger upserts
        conn.execute("BEGIN IMMEDIATE")
        try:
            i = 0
            for size in self._sizes:  # greedy: few distinct statements, however long the batch
                while len(rows) - i >= size:
                    flat: list[Any] = []
                    for k, r in enumerate(rows[i : i + size], 1):
                        flat.extend(as_tuple(r))
                        if k % 100 == 0:
                            time.sleep(0)  # let the event loop have the GIL: it waits up to 5 ms otherwise
                    new += conn.execute(self._stmt(size), flat).rowcount
                    i += size
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return new

    async def aclose(self) -> None:
        def close() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        await asyncio.get_running_loop().run_in_executor(self._thread, close)
        self._thread.shutdown(wait=True)


class PostgresCopySink:
    """Inserts through one asyncpg connection of its own: COPY into a staging table, then upsert."""

    _STAGE = "modelyard_spend_stage"

    def __init__(self, dsn: str, *, connect_timeout_s: float = 5.0) -> None:
        self._dsn = dsn
        self._timeout = connect_timeout_s
        self._conn: Any = None
        self._insert_sql = (
            f"INSERT INTO spend_rows ({','.join(COLUMNS)}) SELECT {','.join(COLUMNS)} FROM {self._STAGE} "
            "ON CONFLICT (request_id) DO NOTHING"
        )

    async def _connect(self) -> Any:
        if self._conn is None or self._conn.is_closed():
            import asyncpg

            conn = await asyncpg.connect(self._dsn, timeout=self._timeout,
                                         server_settings={"application_name": "modelyard-spend-writer"})
            try:
                await conn.execute(
                    f"CREATE TEMP TABLE IF NOT EXISTS {self._STAGE} (LIKE spend_rows INCLUDING DEFAULTS) "
                    "ON COMMIT DELETE ROWS")
            except BaseException:
                await conn.close()
                raise
            self._conn = conn
        return self._conn

    async def insert(self, rows: Sequence[SpendRow]) -> int:
        try:
            conn = await self._connect()
            records = [as_tuple(r) for r in rows]
            async with conn.transaction():
                await conn.copy_records_to_table(self._STAGE, records=records, columns=COLUMNS)
                status = await conn.execute(self._insert_sql)
        except asyncio.CancelledError:
            await self._drop()  # a COPY cut in the middle leaves the connection unusable
            raise
        except Exception as exc:  # noqa: BLE001 - asyncpg's errors, OSError, timeouts: all "the database failed"
            await self._drop()
            raise SpendStoreError(f"spend insert failed: {exc.__class__.__name__}: {exc}") from exc
        return int(status.rsplit(" ", 1)[-1])  # "INSERT 0 <n>"

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.terminate()

    async def aclose(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                await asyncio.wait_for(conn.close(), 5.0)
            except Exception:  # noqa: BLE001 - closing a dead connection
                conn.terminate()
