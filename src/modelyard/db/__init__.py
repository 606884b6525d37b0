"""modelyard's one database (virtual keys, spend rows): SQLite (WAL) by default, PostgreSQL by URL.

``Database`` owns the SQLAlchemy async engine and applies the versioned migrations at start; the
stores that use it (``accounting.store.SpendStore``, ``auth.store.KeyStore``) share one instance,
so one pool and one migration run serve them all.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from modelyard.errors import ConfigError, ModelyardError

from . import migrations

if TYPE_CHECKING:
    from modelyard.config.schema import Settings


class DatabaseError(ModelyardError):
    """The database failed or is unreachable."""

    status = 503
    type = "server_error"
    code = "database_unavailable"


def sqlite_url(path: Path | str) -> str:
    return f"sqlite+aiosqlite:///{path}"


def database_url(settings: Settings) -> str:
    """The configured database: ``database.url``, else SQLite at ``<data_dir>/modelyard.db``."""
    from modelyard.backends.local_models import data_dir  # heavy: only when a database is opened

    return settings.database.url or sqlite_url(data_dir(settings) / "modelyard.db")


def _wal(cur: Any, busy_ms: int) -> None:
    """``PRAGMA journal_mode = WAL``, retried: switching a new file to WAL takes an exclusive lock
    and answers "database is locked" at once, without the busy handler, when another connection
    (a second replica starting at the same moment) holds it."""
    deadline = time.monotonic() + busy_ms / 1000
    while True:
        try:
            cur.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


class Database:
    """``Database("sqlite+aiosqlite:///var/modelyard.db")`` or ``Database("postgresql+asyncpg://…")``.

    Lifecycle: ``await start()`` (engine + migrations; may be retried after a failure), use
    ``engine``, ``await aclose()``.
    """

    def __init__(self, url: str, *, busy_timeout_ms: int = 5000, pool_size: int = 5, name: str = "modelyard") -> None:
        try:
            self.url = make_url(url)
        except ArgumentError as exc:
            raise ConfigError(f"database url: {exc}") from exc
        self.dialect = self.url.get_backend_name()
        if self.dialect not in ("sqlite", "postgresql"):
            raise ConfigError(f"database url: unsupported database {self.dialect!r} (sqlite or postgresql)")
        self._busy_timeout_ms = busy_timeout_ms
        self._pool_size = pool_size
        self._name = name
        self._engine: AsyncEngine | None = None
        self.applied: list[int] = []  # migration versions the last start() applied

    @property
    def engine(self) -> AsyncEngine:
        if self._engine is None:
            raise DatabaseError("database not started")
        return self._engine

    async def start(self) -> None:
        """Build the engine and apply pending migrations (idempotent; safe in several processes)."""
        if self._engine is None:
            self._engine = self._build_engine()
        try:
            self.applied = await migrations.apply(self._engine)
        except (SQLAlchemyError, OSError) as exc:
            raise DatabaseError(f"database migrations failed: {exc.__class__.__name__}: {exc}") from exc

    def _build_engine(self) -> AsyncEngine:
        if self.dialect == "sqlite":
            db = self.url.database
            if db and db != ":memory:":
                Path(db).parent.mkdir(parents=True, exist_ok=True)
            engine = create_async_engine(self.url, pool_size=self._pool_size)
            busy = int(self._busy_timeout_ms)

            @event.listens_for(engine.sync_engine, "connect")
            def _pragmas(dbapi_conn: Any, _record: Any) -> None:
                cur = dbapi_conn.cursor()
                cur.execute(f"PRAGMA busy_timeout = {busy}")  # first: WAL itself may need the lock
                _wal(cur, busy)  # readers never block the writer
                cur.execute("PRAGMA synchronous = NORMAL")  # durable at checkpoints; safe with WAL
                cur.close()

            return engine
        return create_async_engine(
            self.url,
            pool_size=self._pool_size,
            pool_pre_ping=True,  # a restarted server leaves dead pooled connections behind
            connect_args={"server_settings": {"application_name": self._name}},
        )

    async def aclose(self) -> None:
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None
