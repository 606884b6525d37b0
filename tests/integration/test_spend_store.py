"""SpendStore and SpendWriter against REAL databases: SQLite in tmp_path (always) and PostgreSQL.

PostgreSQL: MODELYARD_TEST_PG (default postgresql://postgres@127.0.0.1:5432/test) is the admin
connection; each test gets a fresh temporary database (created, then dropped WITH (FORCE)). Where
PostgreSQL is unreachable its tests skip, saying why, unless CI=true: there they fail.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import sqlite3
from decimal import Decimal

import pytest

from modelyard.accounting.store import SpendRow, SpendStore, SpendStoreError
from modelyard.accounting.writer import SpendWriter
from modelyard.db.migrations import MIGRATIONS
from modelyard.testing.clock import ManualClock

UTC = dt.timezone.utc
T0 = dt.datetime(2025, 3, 1, tzinfo=UTC)





@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'spend.db'}"
    _, u = request.getfixturevalue("pg_db")
    return u


@pytest.fixture
async def store(url):
    s = SpendStore(url)
    await s.start()
    yield s
    await s.aclose()


def row(i: int, *, ts=None, key="k1", team="t1", model="m1", status=200, cost="0.001", priced=True, pt=10, ct=5) -> SpendRow:
    return SpendRow(
        request_id=f"req-{i:07d}", ts=ts or T0 + dt.timedelta(seconds=i), key_hash=key, team=team, model=model,
        deployment=f"{model}/0", prompt_tokens=pt, completion_tokens=ct, cost=Decimal(cost), priced=priced,
        latency_ms=12.5, status=status, fallbacks=i % 2, stream=bool(i % 3 == 0),
    )


# --- migrations ------------------------------------------------------------------------------


async def test_migrations_applied_once_and_idempotent(url):
    a = SpendStore(url)
    await a.start()
    assert a.applied == [m.version for m in MIGRATIONS] == [1, 2, 3, 4, 5, 6, 7, 8]
    await a.start()  # the same store again
    assert a.applied == []
    b = SpendStore(url)  # another process
    await b.start()
    assert b.applied == []
    await a.insert_many([row(1)])
    assert await b.count() == 1
    await a.aclose()
    await b.aclose()


async def test_concurrent_starts_apply_each_migration_once(url):
    stores = [SpendStore(url) for _ in range(4)]
    await asyncio.gather(*(s.start() for s in stores))
    assert sorted(v for s in stores for v in s.applied) == [m.version for m in MIGRATIONS]
    for s in stores:
        assert await s.count() == 0
        await s.aclose()


# --- writes and reads ------------------------------------------------------------------------


async def test_round_trip_preserves_every_field(store):
    r = row(3, cost="1.234567891", priced=False, status=502)
    await store.insert_many([r])
    got, nxt = await store.logs()
    assert got == [r] and nxt is None


async def test_insert_many_is_idempotent_on_request_id(store):
    await store.insert_many([row(i) for i in range(10)])
    await store.insert_many([row(i) for i in range(5, 15)])  # half overlap
    await store.insert_many([row(0, model="other")])  # a replay never overwrites
    assert await store.count() == 15
    got, _ = await store.logs(model="other")
    assert got == []


async def test_logs_keyset_pagination_no_duplicates_or_misses(store):
    same_ts = T0 + dt.timedelta(hours=1)
    rows = [row(i, key="k1" if i % 3 else "k2", model="m1" if i % 2 else "m2") for i in range(95)]
    rows += [row(100 + i, ts=same_ts, key="k1") for i in range(12)]  # ties on ts: request_id breaks them
    await store.insert_many(rows)

    seen, cursor, pages = [], None, 0
    while True:
        page, cursor = await store.logs(limit=10, cursor=cursor)
        seen += page
        pages += 1
        if cursor is None:
            break
    assert pages == 11
    ids = [r.request_id for r in seen]
    assert len(ids) == len(set(ids)) == len(rows)
    expect = sorted(rows, key=lambda r: (r.ts, r.request_id), reverse=True)
    assert seen == expect

    # filters, across pages
    seen, cursor = [], None
    while True:
        page, cursor = await store.logs(key_hash="k1", model="m1", limit=7, cursor=cursor)
        seen += page
        if cursor is None:
            break
    assert [r.request_id for r in seen] == [r.request_id for r in expect if r.key_hash == "k1" and r.model == "m1"]

    since, until = T0 + dt.timedelta(seconds=10), T0 + dt.timedelta(seconds=20)
    page, cursor = await store.logs(since=since, until=until, limit=100)
    assert [r.request_id for r in page] == [f"req-{i:07d}" for i in range(19, 9, -1)] and cursor is None


async def test_report_numbers_are_exact(store):
    d0, d1 = T0, T0 + dt.timedelta(days=1)
    rows = [
        row(1, ts=d0, model="a", key="k1", team="x", status=200, cost="0.001", pt=100, ct=10),
        row(2, ts=d0 + dt.timedelta(hours=1), model="a", key="k1", team="x", status=500, cost="0", pt=100, ct=0),
        row(3, ts=d0 + dt.timedelta(hours=2), model="a", key="k2", team="y", status=200, cost="0.002", pt=200, ct=20),
        row(4, ts=d1, model="b", key="k2", team="y", status=200, cost="0", priced=False, pt=50, ct=5),
        row(5, ts=d1 + dt.timedelta(hours=3), model="b", key=None, team=None, status=429, cost="0", priced=False, pt=7, ct=0),
        row(6, ts=T0 + dt.timedelta(days=5), model="a", status=200, cost="9"),  # outside the window
    ]
    await store.insert_many(rows)
    since, until = T0, T0 + dt.timedelta(days=2)

    by_model = await store.report(since, until, group_by=("model",))
    assert [r.group for r in by_model] == [{"model": "a"}, {"model": "b"}]
    a, b = by_model
    assert (a.requests, a.errors, a.prompt_tokens, a.completion_tokens, a.unpriced) == (3, 1, 400, 30, 0)
    assert a.error_rate == pytest.approx(1 / 3)
    assert a.cost == Decimal("0.003") and a.cost_per_success == Decimal("0.0015")
    assert (b.requests, b.errors, b.unpriced, b.cost, b.cost_per_success) == (2, 1, 2, Decimal(0), Decimal(0))

    by_day = await store.report(since, until, group_by=("day",))
    assert [(r.group["day"], r.requests, r.cost) for r in by_day] == [
        ("2025-03-01", 3, Decimal("0.003")),
        ("2025-03-02", 2, Decimal(0)),
    ]

    by_key = {r.group["key_hash"]: r for r in await store.report(since, until, group_by=("key_hash",))}
    assert {k: v.requests for k, v in by_key.items()} == {None: 1, "k1": 2, "k2": 2}
    assert by_key[None].cost_per_success is None and by_key[None].error_rate == 1.0

    by_team_model = await store.report(since, until, group_by=("team", "model"))
    assert {(tuple(r.group.values()), r.requests) for r in by_team_model} == {
        ((None, "b"), 1), (("x", "a"), 2), (("y", "a"), 1), (("y", "b"), 1)
    }
    assert await store.report(T0 + dt.timedelta(days=10), T0 + dt.timedelta(days=11)) == []


async def test_bad_inputs_are_client_errors(store):
    from modelyard.errors import InvalidRequestError

    with pytest.raises(InvalidRequestError):
        await store.report(T0, T0, group_by=("nope",))
    with pytest.raises(InvalidRequestError):
        await store.logs(cursor="!!!not-a-cursor")
    with pytest.raises(InvalidRequestError):
        await store.logs(limit=0)


# --- the writer against a real database that goes away ---------------------------------------


async def _load_with_outage(store, writer, clock, outage, recover):
    """Write 3 rounds of rows; the database is away during the second; return the ids written."""
    n = 0
    for _i in range(40):
        writer.write(row(n := n + 1))
    await writer.flush()
    assert writer.stats()["spooled"] == 0 and await store.count() == 40

    await outage()
    for _ in range(3):
        for _i in range(25):
            writer.write(row(n := n + 1))
        await writer.flush()
    assert writer.failures >= 1 and writer.stats()["spooled"] == 75

    await recover()
    clock.advance(60)
    for _i in range(10):
        writer.write(row(n := n + 1))
    await writer.aclose()
    return n


async def test_sqlite_locked_database_spools_then_replays(tmp_path):
    path = tmp_path / "spend.db"
    store = SpendStore(f"sqlite+aiosqlite:///{path}", busy_timeout_ms=50)
    await store.start()
    clock = ManualClock()
    writer = SpendWriter(store, spool_path=tmp_path / "spool.jsonl", clock=clock, max_batch=20)
    blocker = sqlite3.connect(path, isolation_level=None)

    async def outage():
        blocker.execute("BEGIN EXCLUSIVE")  # another writer holds the file: inserts fail after busy_timeout

    async def recover():
        blocker.execute("ROLLBACK")

    try:
        n = await _load_with_outage(store, writer, clock, outage, recover)
    finally:
        blocker.close()
    assert await store.count() == n == writer.written == 125
    assert writer.stats()["spooled"] == 0 and (tmp_path / "spool.jsonl").read_bytes() == b""
    page, _ = await store.logs(limit=1000)
    assert [r.request_id for r in reversed(page)] == [f"req-{i:07d}" for i in range(1, 126)]
    await store.aclose()


async def test_postgres_going_away_spools_then_replays(pg_db, pg_admin, tmp_path):
    name, url = pg_db
    store = SpendStore(url)
    await store.start()
    clock = ManualClock()
    writer = SpendWriter(store, spool_path=tmp_path / "spool.jsonl", clock=clock, max_batch=20, insert_timeout_s=10)

    async def outage():
        await pg_admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        killed = await pg_admin.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = $1", name
        )
        assert killed >= 1  # the store's pooled connection

    async def recover():
        await pg_admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')

    n = await _load_with_outage(store, writer, clock, outage, recover)
    assert await store.count() == n == writer.written == 125
    assert writer.stats()["spooled"] == 0
    await store.aclose()


async def test_store_errors_are_translated(tmp_path, pg_db, pg_admin):
    name, url = pg_db
    store = SpendStore(url)
    await store.start()
    await pg_admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
    await pg_admin.fetchval("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = $1", name)
    with pytest.raises(SpendStoreError):
        await store.insert_many([row(1)])
    await store.aclose()
