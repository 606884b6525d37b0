"""Versioned schema migrations of modelyard's database (spend rows, virtual keys), applied by ``Database.start()``.

A deliberately small runner instead of Alembic's env.py/script tree: the database holds a few tables, the
migrations must run inside the server's start (async engine, no CLI), and they must be safe when
two processes start at once. Each ``vNNNN_*.py`` module has ``NAME`` and ``upgrade(conn)`` (a sync
SQLAlchemy ``Connection``, run through ``run_sync``; portable Core DDL, so one file serves SQLite
and PostgreSQL). ``modelyard_migrations`` records the versions applied.

Concurrency: the whole check-and-apply runs in ONE transaction that first takes a lock —
``pg_advisory_xact_lock`` on PostgreSQL (DDL is transactional there, so a failed migration leaves
nothing behind), ``BEGIN IMMEDIATE`` (the database file's write lock, waited for under
``busy_timeout``) on SQLite. A second process blocks until the first commits, then sees the
versions recorded and applies nothing.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import NamedTuple

from sqlalchemy import Column, Integer, MetaData, String, Table, insert, select
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql import text

from . import v0001_spend_rows, v0002_virtual_keys, v0003_key_priority, v0004_spend_hop, v0005_tier_events, v0006_responses
from . import v0007_batches, v0008_spend_daily

# A fixed 64-bit key for pg_advisory_xact_lock: "modelyard spend migrations".
ADVISORY_LOCK_KEY = 0x6D79_5370_656E_6431


class Migration(NamedTuple):
    version: int
    name: str
    upgrade: Callable[[Connection], None]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, v0001_spend_rows.NAME, v0001_spend_rows.upgrade),
    Migration(2, v0002_virtual_keys.NAME, v0002_virtual_keys.upgrade),
    Migration(3, v0003_key_priority.NAME, v0003_key_priority.upgrade),
    Migration(4, v0004_spend_hop.NAME, v0004_spend_hop.upgrade),
    Migration(5, v0005_tier_events.NAME, v0005_tier_events.upgrade),
    Migration(6, v0006_responses.NAME, v0006_responses.upgrade),
    Migration(7, v0007_batches.NAME, v0007_batches.upgrade),
    Migration(8, v0008_spend_daily.NAME, v0008_spend_daily.upgrade),
)

_md = MetaData()
_versions = Table(
    "modelyard_migrations",
    _md,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("name", String, nullable=False),
    Column("applied_at", String, nullable=False),
)


def _apply_pending(conn: Connection) -> list[int]:
    _md.create_all(conn, tables=[_versions])  # under the lock: two CREATE TABLE IF NOT EXISTS can race on PG
    done = set(conn.execute(select(_versions.c.version)).scalars())
    applied = []
    for m in MIGRATIONS:
        if m.version in done:
            continue
        m.upgrade(conn)
        now = dt.datetime.now(dt.timezone.utc).isoformat()
        conn.execute(insert(_versions).values(version=m.version, name=m.name, applied_at=now))
        applied.append(m.version)
    return applied


async def apply(engine: AsyncEngine) -> list[int]:
    """Apply every pending migration; return the versions this call applied (``[]`` when up to date)."""
    if engine.dialect.name == "postgresql":
        async with engine.begin() as conn:
            await conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": ADVISORY_LOCK_KEY})
            return await conn.run_sync(_apply_pending)
    # SQLite: drive the transaction by hand so that it starts with BEGIN IMMEDIATE (the driver's own
    # implicit BEGIN is DEFERRED, and two deferred readers upgrading to writers deadlock).
    async with engine.connect() as raw:
        conn: AsyncConnection = await raw.execution_options(isolation_level="AUTOCOMMIT")
        await conn.exec_driver_sql("BEGIN IMMEDIATE")
        try:
            applied = await conn.run_sync(_apply_pending)
        except BaseException:
            await conn.exec_driver_sql("ROLLBACK")
            raise
        await conn.exec_driver_sql("COMMIT")
        return applied


async def current_version(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        versions = await conn.run_sync(lambda c: list(c.execute(select(_versions.c.version)).scalars()))
    return max(versions, default=0)
