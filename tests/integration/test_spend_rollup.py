"""The daily spend rollup (migration v0008, ``spend_daily``) against REAL SQLite and PostgreSQL.

A report answered from the rollup (whole days) plus spend_rows (the partial days at the edges)
must equal the report over spend_rows alone, for random rows, random ranges (starting and ending
mid-day, on midnights, inside one day) and rows replayed twice. PostgreSQL as in
test_spend_store.py: skipped when unreachable, a failure under CI=true.
"""

from __future__ import annotations

import datetime as dt
import random
from collections import defaultdict
from decimal import Decimal

import pytest
from sqlalchemy import select, text

from modelyard.accounting.store import (
    DAY_US,
    SpendRow,
    SpendStore,
    _raw_report,
    spend_daily,
)
from modelyard.db import migrations
from modelyard.epoch import to_us
from modelyard.errors import InvalidRequestError

from .support import MockUpstream, ProcessPool, deployment, model_cfg

UTC = dt.timezone.utc
T0 = dt.datetime(2025, 3, 1, tzinfo=UTC)
GROUPINGS = [("model",), ("key_hash",), ("team",), ("deployment",), ("day",), ("team", "model"),
             ("day", "key_hash", "deployment"), ("key_hash", "team", "model", "deployment", "day")]


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path):  # noqa: ANN001, ANN201
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'spend.db'}"
    return request.getfixturevalue("pg_db")[1]


def random_rows(rnd: random.Random, n: int, start: int = 0) -> list[SpendRow]:
    rows = []
    for i in range(start, start + n):
        m = rnd.randrange(4)
        key = rnd.choice((None, "ka", "kb", "kc", "kd"))
        rows.append(SpendRow(
            request_id=f"r{i:06d}", ts=T0 + dt.timedelta(microseconds=rnd.randrange(5 * DAY_US)),
            key_hash=key, team=None if key is None else rnd.choice((None, "t1", "t2")), model=f"m{m}",
            deployment=f"m{m}/{rnd.randrange(2)}", prompt_tokens=rnd.randrange(1, 500), completion_tokens=rnd.randrange(300),
            cost=Decimal(rnd.randrange(0, 10**7)) / 10**9, priced=rnd.random() > 0.1, latency_ms=1.0,
            status=rnd.choice((200, 200, 200, 429, 500)),
        ))
    return rows


def expected(rows: list[SpendRow], since: dt.datetime, until: dt.datetime, group_by: tuple[str, ...]) -> dict:
    """The report computed in Python from the distinct rows (the first of a request_id wins, as in SQL)."""
    seen: dict[str, SpendRow] = {}
    for r in rows:
        seen.setdefault(r.request_id, r)
    out: dict[tuple, list[int]] = defaultdict(lambda: [0] * 6)
    for r in seen.values():
        if not since <= r.ts < until:
            continue
        g = tuple((r.ts.date().isoformat() if k == "day" else getattr(r, k)) for k in group_by)
        acc = out[g]
        for j, v in enumerate((1, r.status >= 400, r.prompt_tokens, r.completion_tokens, int(r.cost * 10**9), not r.priced)):
            acc[j] += int(v)
    return dict(out)


def as_dict(report) -> dict:  # noqa: ANN001
    return {tuple(r.group.values()): [r.requests, r.errors, r.prompt_tokens, r.completion_tokens,
                                      int(r.cost * 10**9), r.unpriced] for r in report}


async def raw_report(store: SpendStore, since: dt.datetime, until: dt.datetime, group_by: tuple[str, ...]) -> list:
    """The pre-rollup query (spend_rows only), rows as (g_0.., sums), in its SQL order."""
    q = _raw_report(group_by, to_us(since), to_us(until))
    q = q.order_by(*(q.selected_columns[f"g_{i}"] for i in range(len(group_by))))
    async with store.engine.connect() as conn:
        return [tuple(r) for r in (await conn.execute(q)).all()]


def ranges(rnd: random.Random) -> list[tuple[dt.datetime, dt.datetime]]:
    day = dt.timedelta(days=1)
    fixed = [(T0, T0 + 5 * day), (T0 - day, T0 + 9 * day), (T0 + day, T0 + 3 * day),  # midnights
             (T0 + dt.timedelta(hours=7), T0 + 3 * day + dt.timedelta(hours=5)),  # mid-day both ends
             (T0 + dt.timedelta(hours=3), T0 + dt.timedelta(hours=20)),  # inside one day
             (T0 + dt.timedelta(hours=20), T0 + day + dt.timedelta(hours=2)),  # across one midnight, no whole day
             (T0 + day, T0 + 2 * day + dt.timedelta(microseconds=1)), (T0 + 2 * day, T0 + 2 * day)]
    rand = []
    for _ in range(12):
        a, b = sorted(rnd.randrange(-DAY_US, 6 * DAY_US) for _ in range(2))
        rand.append((T0 + dt.timedelta(microseconds=a), T0 + dt.timedelta(microseconds=b)))
    return fixed + rand


async def check_equal(store: SpendStore, rows: list[SpendRow], rnd: random.Random) -> None:
    for since, until in ranges(rnd):
        for group_by in GROUPINGS:
            got = await store.report(since, until, group_by)
            raw = await raw_report(store, since, until, group_by)
            assert [tuple(r.group.values()) for r in got] == [
                tuple(EPOCH_DAY(v) if g == "day" else v for g, v in zip(group_by, r, strict=False)) for r in raw
            ], (since, until, group_by)  # the same groups in the same (database) order
            assert as_dict(got) == expected(rows, since, until, group_by), (since, until, group_by)
            assert as_dict(got) == {tuple(EPOCH_DAY(v) if g == "day" else v for g, v in zip(group_by, r, strict=False)):
                                    [int(x) for x in r[len(group_by):]] for r in raw}


def EPOCH_DAY(v: int) -> str:  # noqa: N802
    return (dt.date(1970, 1, 1) + dt.timedelta(days=int(v))).isoformat()


async def rollup_total(store: SpendStore) -> int:
    async with store.engine.connect() as conn:
        return int((await conn.execute(select(text("COALESCE(SUM(requests), 0)")).select_from(spend_daily))).scalar_one())


async def test_rollup_report_equals_raw_with_replays(url) -> None:  # noqa: ANN001
    rnd = random.Random(20261203)
    store = SpendStore(url)
    await store.start()
    try:
        rows = random_rows(rnd, 3000)
        new = 0
        for i in range(0, len(rows), 700):  # the writer's path (accounting/sinks.py)
            new += await store.insert_many(rows[i : i + 700])
        replay = rows[500:1900] + random_rows(rnd, 200, start=3000)  # a spool replay: stored rows + new ones
        replay += replay[-50:]  # the same request twice in one batch
        new += await store.insert_many(replay)
        assert await store.insert_many(rows[:300]) == 0  # a batch stored before: nothing new, nothing counted
        everything = rows + replay
        assert new == await store.count() == await rollup_total(store) == 3200
        await check_equal(store, everything, rnd)
    finally:
        await store.aclose()


async def test_migration_backfills_existing_rows(url, monkeypatch) -> None:  # noqa: ANN001
    rnd = random.Random(7)
    rows = random_rows(rnd, 1500)
    monkeypatch.setattr(migrations, "MIGRATIONS", migrations.MIGRATIONS[:7])  # a database from before v8
    old = SpendStore(url)
    await old.start()
    assert 8 not in old.applied
    assert await old.insert_many(rows) == 1500
    await old.aclose()
    monkeypatch.undo()
    store = SpendStore(url)
    await store.start()
    try:
        assert store.applied == [8]
        assert await rollup_total(store) == 1500  # backfilled in SQL by the migration
        more = random_rows(rnd, 400, start=1500)
        assert await store.insert_many(more + rows[:100]) == 400  # then kept by the trigger
        assert await rollup_total(store) == 1900
        await check_equal(store, rows + more, rnd)
    finally:
        await store.aclose()


async def test_limit_is_the_top_n_by_cost(url) -> None:  # noqa: ANN001
    rnd = random.Random(3)
    store = SpendStore(url)
    await store.start()
    try:
        await store.insert_many(random_rows(rnd, 800))
        since, until = T0 + dt.timedelta(hours=5), T0 + dt.timedelta(days=4, hours=1)
        full = await store.report(since, until, ("key_hash",))
        top = await store.report(since, until, ("key_hash",), limit=3)
        by_cost = sorted(full, key=lambda r: r.cost, reverse=True)
        assert len(top) == 3 and [r.cost for r in top] == [r.cost for r in by_cost[:3]]
        assert top[0].cost > top[-1].cost and all(r in full for r in top)
        assert await store.report(since, until, ("key_hash",), limit=1000) == sorted(full, key=lambda r: r.cost, reverse=True)
        with pytest.raises(InvalidRequestError):
            await store.report(since, until, ("key_hash",), limit=0)
    finally:
        await store.aclose()


def test_report_limit_over_http(procs: ProcessPool, shared_mock: MockUpstream, tmp_path) -> None:  # noqa: ANN001
    import asyncio

    home = tmp_path / "home"
    home.mkdir()
    rows = random_rows(random.Random(11), 600)

    async def seed() -> None:
        s = SpendStore(f"sqlite+aiosqlite:///{home / 'modelyard.db'}")
        await s.start()
        await s.insert_many(rows)
        await s.aclose()

    asyncio.run(seed())
    gw = procs.gateway({"memory": {"data_dir": str(home)}, "models": [model_cfg("m", deployment(shared_mock, "up"))]})
    q = {"group_by": "key_hash", "since": T0.isoformat(), "until": (T0 + dt.timedelta(days=5)).isoformat()}
    full = gw.http.get("/spend/report", params=q).json()["data"]
    assert [g["group"]["key_hash"] for g in full] == [None, "ka", "kb", "kc", "kd"]  # by key, unchanged
    assert sum(g["requests"] for g in full) == 600
    top = gw.http.get("/spend/report", params={**q, "limit": 2}).json()["data"]
    assert top == sorted(full, key=lambda g: Decimal(g["cost"]), reverse=True)[:2]
    for bad in ("0", "x", "-1"):
        r = gw.http.get("/spend/report", params={**q, "limit": bad})
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert err["param"] == "limit" and err["type"] == "invalid_request_error" and set(err) == {
            "message", "type", "param", "code"}

