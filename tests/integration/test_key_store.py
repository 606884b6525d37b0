"""KeyStore and KeyRing against REAL databases: SQLite in tmp_path (always) and PostgreSQL.

PostgreSQL: MODELYARD_TEST_PG (default postgresql://postgres@127.0.0.1:5432/test) is the admin
connection; each test gets a fresh temporary database (created, then dropped WITH (FORCE)), so
nothing is left behind. Where PostgreSQL is unreachable its tests skip, saying why, unless
CI=true: there they fail.

"Replicas" are separate ``Database`` objects (own engine, own pool) on one database, as two
gateway processes would be.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
import time
import uuid
from pathlib import Path

import pytest
from sqlalchemy import event, text

from modelyard.accounting.store import SpendStore
from modelyard.auth.keys import KEY_PREFIX, VirtualKey, new_key, split_key
from modelyard.auth.ring import KeyRing
from modelyard.auth.store import KeyStore, KeyStoreError
from modelyard.db import Database, migrations
from modelyard.testing.clock import ManualClock

UTC = dt.timezone.utc
T0 = dt.datetime(2025, 3, 1, tzinfo=UTC)
SLOW = 3600.0  # a refresh interval that never fires during a test: refreshes are explicit




@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'keys.db'}"
    _, u = request.getfixturevalue("pg_db")
    return u


@pytest.fixture
async def replicas(url):
    """A factory of started Databases on ``url``; all closed at teardown."""
    made: list[Database] = []

    async def make() -> Database:
        db = Database(url)
        await db.start()
        made.append(db)
        return db

    yield make
    for db in made:
        await db.aclose()


@pytest.fixture
async def store(replicas):
    return KeyStore(await replicas())


@contextlib.asynccontextmanager
async def outage(url: str, dbs: list[Database], request):
    """Make the database unreachable for ``dbs`` (really: their next query fails), then restore it.

    SQLite: the file is moved away and the pools emptied, so the next connection opens a new,
    empty file (``no such table``). PostgreSQL: the database refuses connections and its backends
    are terminated (as a restart or failover would)."""
    if url.startswith("sqlite"):
        path = Path(url.split("///", 1)[1])
        for db in dbs:
            await db.engine.dispose()
        moved = [(p, p.with_name(p.name + ".away")) for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")) if p.exists()]
        for src, dst in moved:
            src.rename(dst)
        try:
            yield
        finally:
            for db in dbs:
                await db.engine.dispose()
            for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
                p.unlink(missing_ok=True)
            for src, dst in moved:
                dst.rename(src)
        return
    name, _ = request.getfixturevalue("pg_db")
    admin = request.getfixturevalue("pg_admin")
    await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
    await admin.fetchval("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = $1", name)
    try:
        yield
    finally:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')


def count_queries(db: Database) -> list[str]:
    """Every statement ``db`` sends that touches virtual_keys (appended as it runs)."""
    seen: list[str] = []

    @event.listens_for(db.engine.sync_engine, "before_cursor_execute")
    def _count(_conn, _cursor, statement, _params, _context, _many):  # noqa: ANN001
        if "virtual_keys" in statement:
            seen.append(statement)

    return seen


def key(now: dt.datetime = T0, **kw) -> tuple[str, VirtualKey]:
    return new_key(now=now, **kw)


# --- migrations ------------------------------------------------------------------------------


async def test_migrations_create_the_table_once_and_share_the_database(url):
    a = Database(url)
    await a.start()
    assert a.applied == [m.version for m in migrations.MIGRATIONS]
    assert a.applied[:3] == [1, 2, 3]
    b = Database(url)
    await b.start()
    assert b.applied == []
    _, k = key()
    await KeyStore(a).create(k)
    assert await KeyStore(b).get(k.id) == k
    assert await SpendStore(b).count() == 0  # one database for keys and spend
    await a.aclose()
    await b.aclose()


async def test_upgrade_from_a_v1_database_applies_only_v2(url, monkeypatch):
    with monkeypatch.context() as m:
        m.setattr(migrations, "MIGRATIONS", migrations.MIGRATIONS[:1])
        old = Database(url)
        await old.start()
        assert old.applied == [1]
        await old.aclose()
    new = Database(url)
    await new.start()
    assert new.applied == [m.version for m in migrations.MIGRATIONS[1:]]
    _, k = key()
    await KeyStore(new).create(k)
    assert [x.id for x in await KeyStore(new).list()] == [k.id]
    await new.aclose()


async def test_upgrade_from_a_v2_database_keeps_its_keys_without_priority(url, monkeypatch):
    """Keys written before v3 (no priority columns) read back with no priority and no header
    right; keys written after keep theirs."""
    with monkeypatch.context() as m:
        m.setattr(migrations, "MIGRATIONS", migrations.MIGRATIONS[:2])
        old = Database(url)
        await old.start()
        assert old.applied == [1, 2]
        _, before = key(alias="before")
        row = {c: v for c, v in _v2_params(before).items()}
        async with old.engine.begin() as conn:  # as a v2 store wrote it: the v2 columns only
            cols = ", ".join(row)
            await conn.execute(text(f"INSERT INTO virtual_keys ({cols}) VALUES ({', '.join(':' + c for c in row)})"), row)
        await old.aclose()
    new = Database(url)
    await new.start()
    assert 3 in new.applied and 1 not in new.applied and 2 not in new.applied
    store = KeyStore(new)
    got = await store.get(before.id)
    assert got == before and got.priority is None and got.allow_priority_header is False
    _, after = key(alias="after", priority="low", allow_priority_header=True)
    await store.create(after)
    got = await store.get(after.id)
    assert (got.priority, got.allow_priority_header) == ("low", True) and got == after
    await new.aclose()


def _v2_params(k: VirtualKey) -> dict:
    from modelyard.auth.store import _params  # noqa: PLC0415 - the store's own encoding, minus v3's columns

    p = _params(k, k.updated_us)
    del p["priority"], p["allow_priority_header"]
    return p


# --- the store -------------------------------------------------------------------------------


async def test_round_trip_preserves_every_field(store):
    _, k = key(
        dt.datetime(2025, 1, 31, 23, 59, 59, 999999, tzinfo=UTC), alias="ci", team_id="team-a", models=["chat", "ëmbed"],
        rpm_limit=60, tpm_limit=2**40, max_budget="1.234567891", budget_duration="1mo", duration="1mo",
        metadata={"owner": "ops", "note": "ünïcode"}, priority="high", allow_priority_header=True,
    )  # fmt: skip
    await store.create(k)
    got = await store.get(k.id)
    assert got == k
    assert (got.priority, got.allow_priority_header) == ("high", True)
    assert got.expires_at == dt.datetime(2025, 2, 28, 23, 59, 59, 999999, tzinfo=UTC) and got.created_at.tzinfo is not None
    _, bare = key()
    await store.create(bare)
    assert await store.get(bare.id) == bare  # every optional field None / empty
    assert await store.get("0123456789ab") is None


async def test_the_secret_never_reaches_the_database(store, url):
    plaintext, k = key()
    await store.create(k)
    async with store.db.engine.connect() as conn:
        row = (await conn.execute(text("SELECT * FROM virtual_keys"))).one()
    dumped = repr(tuple(row))
    assert split_key(plaintext)[1] not in dumped and plaintext not in dumped and k.digest.hex() in dumped


async def test_list_is_newest_first_and_hides_revoked_unless_asked(store):
    made = [key(T0 + dt.timedelta(seconds=i))[1] for i in range(5)]
    for k in made:
        await store.create(k)
    assert [k.id for k in await store.list()] == [k.id for k in reversed(made)]
    assert await store.revoke([made[1].id, made[3].id], now=T0 + dt.timedelta(hours=1)) == [made[1].id, made[3].id]
    assert [k.id for k in await store.list()] == [made[4].id, made[2].id, made[0].id]
    everything = await store.list(include_revoked=True)
    assert [k.id for k in everything] == [k.id for k in reversed(made)]
    assert {k.id for k in everything if k.revoked_at is not None} == {made[1].id, made[3].id}


async def test_revoke_reports_only_what_it_revoked(store):
    a, b = key()[1], key()[1]
    await store.create(a)
    await store.create(b)
    when = T0 + dt.timedelta(days=1)
    assert await store.revoke([b.id, "ffffffffffff", a.id, b.id], now=when) == [b.id, a.id]
    got = await store.get(a.id)
    assert got.revoked_at == when and got.updated_us > a.updated_us
    assert dataclasses.replace(got, revoked_at=None, updated_us=a.updated_us) == a  # nothing else changed
    # already revoked: left out, and the first revocation time is kept
    assert await store.revoke([a.id], now=when + dt.timedelta(days=1)) == []
    assert (await store.get(a.id)).revoked_at == when
    assert await store.revoke([], now=when) == []


async def test_revoke_many_ids_in_chunks(store):
    real = [key()[1] for _ in range(3)]
    for k in real:
        await store.create(k)
    ids = [f"{i:012x}" for i in range(1200)]
    ids[7], ids[600], ids[1199] = (k.id for k in real)
    assert await store.revoke(ids, now=T0) == [k.id for k in real]


async def test_changed_since_and_strictly_increasing_updated_us(store):
    made = [key(T0)[1] for _ in range(4)]  # one microsecond for all of them
    for k in made:
        await store.create(k)
    got = await store.changed_since(0)
    assert [k.id for k in got] == [k.id for k in made]
    stamps = [k.updated_us for k in got]
    assert stamps == sorted(set(stamps)) and len(set(stamps)) == 4  # distinct, increasing
    assert [k.id for k in await store.changed_since(stamps[1])] == [made[2].id, made[3].id]
    assert await store.changed_since(stamps[-1]) == []
    # a revocation timestamped in the past still moves updated_us forward
    assert await store.revoke([made[0].id], now=T0 - dt.timedelta(days=1)) == [made[0].id]
    changed = await store.changed_since(stamps[-1])
    assert [k.id for k in changed] == [made[0].id] and changed[0].updated_us > stamps[-1]


async def test_errors_are_translated_without_key_material(store):
    _, k = key()
    await store.create(k)
    with pytest.raises(KeyStoreError) as info:
        await store.create(k)  # the same id again
    assert info.value.code == "key_store_unavailable" and info.value.status == 503
    assert "IntegrityError" in info.value.message
    assert k.digest.hex() not in info.value.message and k.salt.hex() not in info.value.message
    async with store.db.engine.begin() as conn:
        await conn.execute(text("DROP TABLE virtual_keys"))
    for call in (store.get(k.id), store.list(), store.changed_since(0), store.revoke([k.id], now=T0)):
        with pytest.raises(KeyStoreError, match="key store .* failed: (ProgrammingError|OperationalError)"):
            await call


async def test_store_on_a_database_not_started():
    s = KeyStore(Database("sqlite+aiosqlite:///unused.db"))
    with pytest.raises(KeyStoreError, match="not started"):
        await s.get("0123456789ab")


async def test_a_corrupt_row_is_skipped_not_fatal(store, caplog):
    good, bad = key()[1], key()[1]
    await store.create(good)
    await store.create(bad)
    async with store.db.engine.begin() as conn:
        await conn.execute(text("UPDATE virtual_keys SET models = 'not json' WHERE id = :i"), {"i": bad.id})
    with caplog.at_level(logging.ERROR, logger="modelyard.auth"):
        assert [k.id for k in await store.list()] == [good.id]
    assert f"virtual key {bad.id}: corrupt row skipped" in caplog.text


async def test_a_row_with_an_unknown_priority_is_skipped(store, caplog):
    good, bad = key(priority="high")[1], key(priority="low")[1]
    await store.create(good)
    await store.create(bad)
    async with store.db.engine.begin() as conn:
        await conn.execute(text("UPDATE virtual_keys SET priority = 'urgent' WHERE id = :i"), {"i": bad.id})
    with caplog.at_level(logging.ERROR, logger="modelyard.auth"):
        assert [k.id for k in await store.list()] == [good.id]
    assert f"virtual key {bad.id}: corrupt row skipped" in caplog.text


# --- two replicas: rings ---------------------------------------------------------------------


async def test_a_key_made_on_one_replica_reaches_the_other(replicas):
    store_a, store_b = KeyStore(await replicas()), KeyStore(await replicas())
    ring_a, ring_b = KeyRing(store_a, refresh_interval_s=SLOW), KeyRing(store_b, refresh_interval_s=SLOW)
    old_plain, old = key()
    await store_a.create(old)
    await ring_a.start()
    await ring_b.start()
    assert ring_b.loaded and ring_b.find(old_plain) == old

    plain, k = key()
    await store_a.create(k)
    ring_a.put(k)
    assert ring_a.find(plain) == k  # at once on the replica that made it
    assert ring_b.find(plain) is None  # the other has not polled yet
    await ring_b.refresh()
    assert ring_b.find(plain).id == k.id
    assert ring_b.find(plain[:-1] + ("0" if plain[-1] != "0" else "1")) is None  # wrong secret
    await ring_a.aclose()
    await ring_b.aclose()


async def test_find_fresh_finds_a_new_key_immediately(replicas):
    store_a, store_b = KeyStore(await replicas()), KeyStore(await replicas())
    clock = ManualClock()
    ring_b = KeyRing(store_b, refresh_interval_s=SLOW, clock=clock)
    await ring_b.start()
    plain, k = key()
    await store_a.create(k)
    clock.advance(1.0)
    assert ring_b.find(plain) is None
    got = await ring_b.find_fresh(plain)
    assert got is not None and got.id == k.id
    await ring_b.aclose()


async def test_find_fresh_right_after_a_refresh_still_finds_a_new_key(replicas):
    """The miss comes within miss_refresh_min_s of a refresh that began before the key existed:
    find_fresh waits out the interval and refreshes again instead of answering "unknown"."""
    store_a, store_b = KeyStore(await replicas()), KeyStore(await replicas())
    ring_b = KeyRing(store_b, refresh_interval_s=SLOW, miss_refresh_min_s=0.25)  # the real clock
    await ring_b.start()
    plain, k = key()
    await store_a.create(k)
    queries = count_queries(store_b.db)
    t0 = time.monotonic()
    got = await ring_b.find_fresh(plain)
    assert got is not None and got.id == k.id
    assert len(queries) == 1 and time.monotonic() - t0 < 5
    await ring_b.aclose()


async def test_find_fresh_when_timers_wake_early(replicas):
    """Event loops may end a sleep slightly early (uvloop's timers have 1 ms resolution): the wait
    for the next allowed refresh must not spin until its attempts run out (it did: 401s for a
    valid key made on another replica, seen through two gateway processes)."""
    store_a, store_b = KeyStore(await replicas()), KeyStore(await replicas())
    clock = ManualClock()

    async def early_sleep(delay: float) -> None:
        clock.advance(max(0.0, delay - 0.0009))

    ring_b = KeyRing(store_b, refresh_interval_s=SLOW, clock=clock, miss_refresh_min_s=0.25, sleep=early_sleep)
    await ring_b.start()
    clock.advance(0.05)  # the miss comes 50 ms after the last refresh began
    plain, k = key()
    await store_a.create(k)
    found = await asyncio.gather(*(ring_b.find_fresh(plain) for _ in range(15)))
    assert all(f is not None and f.id == k.id for f in found)
    await ring_b.aclose()


async def test_background_refresh_picks_up_creates_and_revocations(replicas):
    store_a, store_b = KeyStore(await replicas()), KeyStore(await replicas())
    ring_b = KeyRing(store_b, refresh_interval_s=0.05)
    await ring_b.start()
    plain, k = key()
    await store_a.create(k)
    for _ in range(200):
        if ring_b.find(plain) is not None:
            break
        await asyncio.sleep(0.025)
    assert ring_b.find(plain) is not None and ring_b.find(plain).revoked_at is None
    assert await store_a.revoke([k.id], now=T0 + dt.timedelta(days=1)) == [k.id]
    for _ in range(200):
        if ring_b.find(plain).revoked_at is not None:
            break
        await asyncio.sleep(0.025)
    assert ring_b.find(plain).revoked_at == T0 + dt.timedelta(days=1)  # kept, marked revoked
    await ring_b.aclose()


async def test_revocation_is_final_in_the_ring(replicas):
    store = KeyStore(await replicas())
    ring = KeyRing(store, refresh_interval_s=SLOW)
    plain, k = key()
    await store.create(k)
    await ring.start()
    await store.revoke([k.id], now=T0)
    ring.put(await store.get(k.id))
    ring.put(k)  # a stale, unrevoked copy arriving late (an old read, a slow local put)
    assert ring.find(plain).revoked_at == T0
    await ring.refresh()
    assert ring.get(k.id).revoked_at == T0 and [x.id for x in ring.keys()] == [k.id]
    await ring.aclose()


async def test_garbage_keys_do_not_hammer_the_database(replicas):
    store_a, store_b = KeyStore(await replicas()), KeyStore(await replicas())
    clock = ManualClock()
    ring = KeyRing(store_b, refresh_interval_s=SLOW, clock=clock, miss_refresh_min_s=0.25)
    known_plain, known = key()
    await store_a.create(known)
    await ring.start()
    queries = count_queries(store_b.db)

    def garbage() -> str:
        return KEY_PREFIX + uuid.uuid4().hex[:12] + uuid.uuid4().hex + uuid.uuid4().hex[:16]

    # Malformed keys and wrong secrets for a known id never query.
    for bad in ("", "sk-my-short", "Bearer x", KEY_PREFIX + "Z" * 60, known_plain[:-1] + "x"):
        assert await ring.find_fresh(bad) is None
    assert await ring.find_fresh(KEY_PREFIX + known.id + "0" * 48) is None
    assert queries == []

    # Just after the load: within miss_refresh_min_s, misses do not query.
    results = await asyncio.gather(*(ring.find_fresh(garbage()) for _ in range(500)))
    assert results == [None] * 500 and queries == []

    # Later: 500 concurrent misses share ONE refresh; sequential ones right after add none.
    clock.advance(0.3)
    results = await asyncio.gather(*(ring.find_fresh(garbage()) for _ in range(500)))
    assert results == [None] * 500 and len(queries) == 1
    for _ in range(100):
        assert await ring.find_fresh(garbage()) is None
    assert len(queries) == 1
    clock.advance(0.3)
    for _ in range(100):
        assert await ring.find_fresh(garbage()) is None
    assert len(queries) == 2  # one per miss_refresh_min_s, however many misses
    assert ring.find(known_plain) == known
    await ring.aclose()


async def test_the_ring_serves_its_last_view_while_the_database_is_away(url, replicas, request, caplog):
    db_a, db_b = await replicas(), await replicas()
    store_a, store_b = KeyStore(db_a), KeyStore(db_b)
    clock = ManualClock()
    ring = KeyRing(store_b, refresh_interval_s=0.02, clock=clock, miss_refresh_min_s=0.0, log_every_s=60.0)
    plain, k = key()
    await store_a.create(k)
    await ring.start()
    with caplog.at_level(logging.WARNING, logger="modelyard.auth"):
        async with outage(url, [db_a, db_b], request):
            with pytest.raises(KeyStoreError):
                await ring.refresh()
            await asyncio.sleep(0.3)  # the background loop fails many times meanwhile (every 0.02 s)
            assert ring.find(plain) == k and await ring.find_fresh(plain) == k  # still served
            assert await ring.find_fresh(KEY_PREFIX + "a" * 60) is None  # a miss tries, fails, answers None
            clock.advance(60.0)  # the next failure may log again
            await asyncio.sleep(0.1)
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "key ring" in r.getMessage()]
        assert len(warnings) == 2  # rate-limited: one line per log_every_s, not one per failure
        assert "(1 consecutive failures; serving the last view of 1 keys)" in warnings[0]
        later = int(warnings[1].split("(")[-1].split()[0])
        assert later >= 5  # the loop kept trying through the outage
    # Back: the loop resumes and a key made meanwhile arrives.
    plain2, k2 = key()
    await store_a.create(k2)
    for _ in range(200):
        if ring.find(plain2) is not None:
            break
        await asyncio.sleep(0.025)
    assert ring.find(plain2) is not None
    await ring.aclose()


async def test_a_ring_started_while_the_database_is_away_loads_when_it_returns(url, replicas, request):
    db = await replicas()
    plain, k = key()
    await KeyStore(db).create(k)
    ring = KeyRing(KeyStore(db), refresh_interval_s=0.02)
    async with outage(url, [db], request):
        with pytest.raises(KeyStoreError):
            await ring.start()
        assert not ring.loaded and ring.find(plain) is None
    for _ in range(200):
        if ring.loaded:
            break
        await asyncio.sleep(0.025)
    assert ring.loaded and ring.find(plain) == k
    await ring.aclose()
