"""The spend store: one row per response, in SQLite (default) or PostgreSQL, through SQLAlchemy 2 async.

One schema and one code path for both: timestamps are integer microseconds since the epoch (UTC) and
money is integer nano-units, so comparisons, keyset cursors, sums and day buckets are exact and
portable (no SQLite text datetimes, no float sums). Dialect differences are confined to the
``INSERT … ON CONFLICT DO NOTHING`` constructor, the connection setup (SQLite: WAL + busy timeout)
and the migration lock (see ``modelyard.db``).

The store is the I/O boundary (principle 3): the request path never calls it; ``SpendWriter`` does,
off the request path. Foreign database errors become ``SpendStoreError`` here.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    and_,
    bindparam,
    case,
    func,
    select,
    tuple_,
    union_all,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from modelyard.db import Database, DatabaseError
from modelyard.epoch import EPOCH, from_us, to_us
from modelyard.errors import InvalidRequestError

from .pricing import NANO, from_nano, to_nano

UTC = dt.timezone.utc
DAY_US = 86_400_000_000
MAX_LOGS_LIMIT = 1000
MAX_REPORT_LIMIT = 100_000


class SpendStoreError(DatabaseError):
    """The spend database failed or is unreachable (the writer spools; admin reads answer 503)."""

    status = 503
    type = "server_error"
    code = "spend_store_unavailable"


@dataclass(frozen=True, slots=True)
class SpendRow:
    request_id: str
    ts: dt.datetime  # UTC, timezone-aware
    key_hash: str | None
    team: str | None
    model: str
    deployment: str
    prompt_tokens: int
    completion_tokens: int
    cost: Decimal
    priced: bool
    latency_ms: float
    status: int
    fallbacks: int = 0
    stream: bool = False
    hop: int = 0  # a request's hops (cascade tiers) share its id: "<id>#<hop>", the answer's row is "<id>"
    batch_id: str | None = None  # spent for an item of this batch (Batch API); None: interactive

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["ts"] = self.ts.isoformat()
        d["cost"] = str(self.cost)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SpendRow:
        d = dict(d)
        d["ts"] = dt.datetime.fromisoformat(d["ts"])
        d["cost"] = Decimal(d["cost"])
        return cls(**d)


@dataclass(frozen=True, slots=True)
class ReportRow:
    group: dict[str, Any]  # {"model": "m"} / {"day": "2025-01-31"} / several keys
    requests: int
    errors: int  # status >= 400
    error_rate: float
    prompt_tokens: int
    completion_tokens: int
    cost: Decimal
    cost_per_success: Decimal | None  # total cost / responses with status < 400; None without one
    unpriced: int


_md = MetaData()
# The current shape of the table (the migrations create it; this only describes it for queries).
spend_rows = Table(
    "spend_rows",
    _md,
    Column("request_id", String, primary_key=True),
    Column("ts_us", BigInteger),
    Column("key_hash", String),
    Column("team", String),
    Column("model", String),
    Column("deployment", String),
    Column("prompt_tokens", BigInteger),
    Column("completion_tokens", BigInteger),
    Column("cost_nano", BigInteger),
    Column("priced", Boolean),
    Column("latency_ms", Float),
    Column("status", Integer),
    Column("fallbacks", Integer),
    Column("stream", Boolean),
    Column("hop", Integer),
    Column("batch_id", String),
)
_t = spend_rows
GROUPS: dict[str, Any] = {
    "model": _t.c.model,
    "key_hash": _t.c.key_hash,
    "team": _t.c.team,
    "deployment": _t.c.deployment,
    "day": (_t.c.ts_us // DAY_US),  # integer division: the UTC day number, in both dialects
}
# Whole days of a report come from this rollup (migration v0008: a trigger keeps it, '' = NULL).
spend_daily = Table(
    "spend_daily", _md,
    *(Column(c, BigInteger if c == "day" else String) for c in ("day", "model", "deployment", "key_hash", "team")),
    *(Column(c, BigInteger) for c in ("requests", "errors", "prompt_tokens", "completion_tokens", "cost_nano", "unpriced")),
)
_d = spend_daily
DAILY_GROUPS: dict[str, Any] = {
    "model": _d.c.model,
    "key_hash": func.nullif(_d.c.key_hash, ""),
    "team": func.nullif(_d.c.team, ""),
    "deployment": _d.c.deployment,
    "day": _d.c.day,
}
SUMS = ("requests", "errors", "prompt_tokens", "completion_tokens", "cost_nano", "unpriced")


def _raw_report(group_by: Sequence[str], lo_us: int, hi_us: int) -> Any:
    keys = [GROUPS[g].label(f"g_{i}") for i, g in enumerate(group_by)]
    return (
        select(
            *keys,
            func.count().label("requests"),
            func.sum(case((_t.c.status >= 400, 1), else_=0)).label("errors"),
            func.sum(_t.c.prompt_tokens).label("prompt_tokens"),
            func.sum(_t.c.completion_tokens).label("completion_tokens"),
            func.sum(_t.c.cost_nano).label("cost_nano"),
            func.sum(case((_t.c.priced.is_(False), 1), else_=0)).label("unpriced"),
        )
        .where(_t.c.ts_us >= lo_us, _t.c.ts_us < hi_us)
        .group_by(*keys)
    )


def report_query(group_by: Sequence[str], since_us: int, until_us: int, limit: int | None = None) -> Any:
    """The report's SQL: the whole UTC days of ``[since, until)`` from ``spend_daily``, the partial
    days at its edges from ``spend_rows``, summed again per group (one statement, so the database
    orders the groups exactly as the raw query would). Columns g_0.., then SUMS."""
    d0, d1 = -(-since_us // DAY_US), until_us // DAY_US  # the first whole day, the end of the last
    if since_us < 0 or d0 >= d1:  # no whole day (or before 1970, where SQL's division truncates)
        q = _raw_report(group_by, since_us, until_us)
    else:
        keys = [DAILY_GROUPS[g].label(f"g_{i}") for i, g in enumerate(group_by)]
        parts = [select(*keys, *(func.sum(_d.c[c]).label(c) for c in SUMS))
                 .where(_d.c.day >= d0, _d.c.day < d1).group_by(*keys)]
        if since_us < d0 * DAY_US:
            parts.append(_raw_report(group_by, since_us, d0 * DAY_US))
        if d1 * DAY_US < until_us:
            parts.append(_raw_report(group_by, d1 * DAY_US, until_us))
        u = union_all(*parts).subquery()
        gs = [u.c[f"g_{i}"] for i in range(len(group_by))]
        q = select(*gs, *(func.sum(u.c[c]).label(c) for c in SUMS)).group_by(*gs)
    cols = q.selected_columns
    gs = [cols[f"g_{i}"] for i in range(len(group_by))]
    if limit is not None:  # the top N by cost
        return q.order_by(cols.cost_nano.desc(), *gs).limit(limit)
    return q.order_by(*gs)


def _params(r: SpendRow) -> dict[str, Any]:
    return {
        "request_id": r.request_id,
        "ts_us": to_us(r.ts),
        "key_hash": r.key_hash,
        "team": r.team,
        "model": r.model,
        "deployment": r.deployment,
        "prompt_tokens": int(r.prompt_tokens),
        "completion_tokens": int(r.completion_tokens),
        "cost_nano": to_nano(r.cost),
        "priced": bool(r.priced),
        "latency_ms": float(r.latency_ms),
        "status": int(r.status),
        "fallbacks": int(r.fallbacks),
        "stream": bool(r.stream),
        "hop": int(r.hop),
        "batch_id": r.batch_id,
    }


def _row(m: Any) -> SpendRow:
    return SpendRow(
        request_id=m.request_id,
        ts=from_us(m.ts_us),
        key_hash=m.key_hash,
        team=m.team,
        model=m.model,
        deployment=m.deployment,
        prompt_tokens=int(m.prompt_tokens),
        completion_tokens=int(m.completion_tokens),
        cost=from_nano(m.cost_nano),
        priced=bool(m.priced),
        latency_ms=float(m.latency_ms),
        status=int(m.status),
        fallbacks=int(m.fallbacks),
        stream=bool(m.stream),
        hop=int(m.hop or 0),
        batch_id=m.batch_id,
    )


def encode_cursor(ts_us: int, request_id: str) -> str:
    return base64.urlsafe_b64encode(f"{ts_us}:{request_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        ts, _, rid = raw.partition(":")
        return int(ts), rid
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise InvalidRequestError("invalid cursor", param="cursor", code="invalid_cursor") from exc


class SpendStore:
    """Spend rows in modelyard's database: ``SpendStore(Database(url))`` (shared with the key store)
    or ``SpendStore("sqlite+aiosqlite:///var/spend.db")`` (a database of its own, closed with it).

    Lifecycle: ``await start()`` (the database's engine + migrations), queries, ``await aclose()``.
    """

    def __init__(self, db: Database | str, *, busy_timeout_ms: int = 5000, pool_size: int = 5) -> None:
        self._owns_db = isinstance(db, str)
        self.db = Database(db, busy_timeout_ms=busy_timeout_ms, pool_size=pool_size) if isinstance(db, str) else db
        self.dialect = self.db.dialect
        insert_ = sqlite.insert if self.dialect == "sqlite" else postgresql.insert
        self._insert = insert_(_t).on_conflict_do_nothing(index_elements=["request_id"])
        self._busy_timeout_ms = busy_timeout_ms
        self._fast: Any = None  # accounting.sinks.SqliteSink | PostgresCopySink, or False: none

    @property
    def engine(self) -> AsyncEngine:
        try:
            return self.db.engine
        except DatabaseError:
            raise SpendStoreError("spend store not started") from None

    @property
    def applied(self) -> list[int]:
        return self.db.applied

    async def start(self) -> None:
        try:
            await self.db.start()
        except DatabaseError as exc:
            raise SpendStoreError(exc.message) from exc

    async def aclose(self) -> None:
        fast, self._fast = self._fast, None
        if fast:
            await fast.aclose()
        if self._owns_db:
            await self.db.aclose()

    # --- writes ------------------------------------------------------------------------------

    async def insert_many(self, rows: Sequence[SpendRow]) -> int:
        """Insert a batch in one transaction; rows whose request_id exists are skipped. Returns the
        number of new rows. The writer's path: a dedicated connection (``accounting/sinks.py``)."""
        if not rows:
            return 0
        sink = self._sink()
        if sink is not None:
            return await sink.insert(rows)
        params = [_params(r) for r in rows]
        try:
            async with self.engine.begin() as conn:
                result = await conn.execute(self._insert, params)
        except (SQLAlchemyError, OSError) as exc:
            raise SpendStoreError(f"spend insert failed: {exc.__class__.__name__}: {exc}") from exc
        n = result.rowcount
        return n if isinstance(n, int) and n >= 0 else len(rows)

    def _sink(self) -> Any:
        """The fast insert path, built on first use (None: an in-memory SQLite, which only the
        SQLAlchemy engine's own connection can see)."""
        if self._fast is None:
            from . import sinks

            if self.dialect == "sqlite":
                path = self.db.url.database
                if not path or path == ":memory:" or path.startswith("file:"):
                    self._fast = False
                else:
                    self._fast = sinks.SqliteSink(path, busy_timeout_ms=self._busy_timeout_ms)
            else:
                dsn = self.db.url.set(drivername="postgresql").render_as_string(hide_password=False)
                self._fast = sinks.PostgresCopySink(dsn)
        return self._fast or None

    # --- reads -------------------------------------------------------------------------------

    async def spent_nano(self, key_hash: str, since: dt.datetime) -> int:
        """A key's total cost (nano-units) since ``since``: the budget counters' seed (ix_spend_key_ts)."""
        q = select(func.coalesce(func.sum(_t.c.cost_nano), 0)).where(_t.c.key_hash == key_hash, _t.c.ts_us >= to_us(since))
        try:
            async with self.engine.connect() as conn:
                return int((await conn.execute(q)).scalar_one())
        except (SQLAlchemyError, OSError) as exc:
            raise SpendStoreError(f"spend query failed: {exc.__class__.__name__}") from exc

    async def count(self) -> int:
        async with self.engine.connect() as conn:
            return int((await conn.execute(select(func.count()).select_from(_t))).scalar_one())

    async def logs(
        self,
        key_hash: str | None = None,
        model: str | None = None,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
        limit: int = 100,
        cursor: str | None = None,
        *,
        team: str | None = None,
    ) -> tuple[list[SpendRow], str | None]:
        """Newest first; ``since`` inclusive, ``until`` exclusive. ``next_cursor`` is None on the last page."""
        if not 1 <= limit <= MAX_LOGS_LIMIT:
            raise InvalidRequestError(f"limit must be 1..{MAX_LOGS_LIMIT}", param="limit")
        conds = []
        if key_hash is not None:
            conds.append(_t.c.key_hash == key_hash)
        if model is not None:
            conds.append(_t.c.model == model)
        if team is not None:
            conds.append(_t.c.team == team)
        if since is not None:
            conds.append(_t.c.ts_us >= to_us(since))
        if until is not None:
            conds.append(_t.c.ts_us < to_us(until))
        if cursor is not None:
            c_ts, c_rid = decode_cursor(cursor)
            conds.append(
                tuple_(_t.c.ts_us, _t.c.request_id)
                < tuple_(bindparam("c_ts", c_ts, type_=BigInteger), bindparam("c_rid", c_rid, type_=String))
            )
        q = select(_t).where(and_(True, *conds)).order_by(_t.c.ts_us.desc(), _t.c.request_id.desc()).limit(limit + 1)
        try:
            async with self.engine.connect() as conn:
                found = (await conn.execute(q)).all()
        except (SQLAlchemyError, OSError) as exc:
            raise SpendStoreError(f"spend logs query failed: {exc}") from exc
        page = found[:limit]
        nxt = encode_cursor(page[-1].ts_us, page[-1].request_id) if len(found) > limit else None
        return [_row(m) for m in page], nxt

    async def report(
        self,
        since: dt.datetime,
        until: dt.datetime,
        group_by: Sequence[str] = ("model",),
        limit: int | None = None,
    ) -> list[ReportRow]:
        """Aggregates per group over ``[since, until)``, ordered by the group keys (with ``limit``:
        the ``limit`` groups of highest cost, highest first). Whole days come from the daily rollup."""
        if limit is not None and not 1 <= limit <= MAX_REPORT_LIMIT:
            raise InvalidRequestError(f"limit must be 1..{MAX_REPORT_LIMIT}", param="limit")
        if not group_by:
            raise InvalidRequestError("group_by must name at least one of " + ", ".join(GROUPS), param="group_by")
        for g in group_by:
            if g not in GROUPS:
                raise InvalidRequestError(f"cannot group by {g!r}: one of " + ", ".join(GROUPS), param="group_by")
        q = report_query(group_by, to_us(since), to_us(until), limit)
        try:
            async with self.engine.connect() as conn:
                result = (await conn.execute(q)).all()
        except (SQLAlchemyError, OSError) as exc:
            raise SpendStoreError(f"spend report query failed: {exc}") from exc
        out = []
        for r in result:
            group: dict[str, Any] = {}
            for i, g in enumerate(group_by):
                v = r[i]
                group[g] = (EPOCH + dt.timedelta(days=int(v))).date().isoformat() if g == "day" else v
            requests, errs = int(r.requests), int(r.errors)
            total = from_nano(int(r.cost_nano))
            ok = requests - errs
            out.append(
                ReportRow(
                    group=group,
                    requests=requests,
                    errors=errs,
                    error_rate=errs / requests if requests else 0.0,
                    prompt_tokens=int(r.prompt_tokens),
                    completion_tokens=int(r.completion_tokens),
                    cost=total,
                    cost_per_success=(total / ok).quantize(NANO) if ok else None,
                    unpriced=int(r.unpriced),
                )
            )
        return out
