"""Spend store at 1M rows: bulk load, then time the report and logs queries the /spend endpoints use.

    .venv/bin/python bench/spend_report.py [--rows 1000000] [--pg postgresql+asyncpg://postgres@127.0.0.1:5432/test]
                                           [--no-pg] [--repeat 3]

SQLite goes to a temporary file (deleted at the end). PostgreSQL, when reachable, gets a temporary
database (created and dropped). Rows: 30 days, 20 models, 2,000 keys, 50 teams, ~3 % errors,
~5 % unpriced. Bulk load: executemany in 50k-row transactions (SQLite), COPY (PostgreSQL).
Each query is run --repeat times; the best and the first (cold-ish) are printed.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import random
import tempfile
import time
import uuid
from pathlib import Path

from modelyard.accounting.store import DAY_US, SpendStore
from modelyard.epoch import to_us

T0 = dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc)
COLS = ("request_id", "ts_us", "key_hash", "team", "model", "deployment", "prompt_tokens", "completion_tokens",
        "cost_nano", "priced", "latency_ms", "status", "fallbacks", "stream")


def synth(n: int, seed: int = 7):
    rnd = random.Random(seed)
    t0 = to_us(T0)
    span = 30 * DAY_US
    for i in range(n):
        m = rnd.randrange(20)
        pt, ct = rnd.randrange(1, 2000), rnd.randrange(0, 500)
        priced = m != 19
        status = 200 if rnd.random() > 0.03 else rnd.choice((429, 500, 502))
        yield (f"req-{i:08d}", t0 + rnd.randrange(span), f"key{rnd.randrange(2000):04d}", f"team{rnd.randrange(50)}",
               f"model-{m}", f"model-{m}/0", pt, ct, (pt * 1500 + ct * 2000) if priced else 0, priced,
               rnd.random() * 900, status, 0, rnd.random() < 0.5)


async def load_sqlite(store: SpendStore, n: int) -> None:
    sql = f"INSERT INTO spend_rows ({', '.join(COLS)}) VALUES ({', '.join('?' * len(COLS))})"
    it = synth(n)
    while chunk := [r for _, r in zip(range(50_000), it, strict=False)]:
        async with store.engine.begin() as conn:
            await conn.exec_driver_sql(sql, chunk)
    async with store.engine.begin() as conn:
        await conn.exec_driver_sql("ANALYZE")


async def load_pg(store: SpendStore, n: int) -> None:
    async with store.engine.connect() as conn:
        raw = await conn.get_raw_connection()
        apg = raw.driver_connection
        await apg.copy_records_to_table("spend_rows", records=synth(n), columns=COLS)
        await apg.execute("ANALYZE spend_rows")


async def timed(label: str, fn, repeat: int) -> None:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        out = await fn()
        times.append(time.perf_counter() - t)
    size = len(out[0]) if isinstance(out, tuple) else (1 if isinstance(out, int) else len(out))
    print(f"  {label:<34} first {times[0] * 1000:8.1f} ms   best {min(times) * 1000:8.1f} ms   ({size} rows)")


async def bench(name: str, store: SpendStore, loader, n: int, repeat: int) -> None:
    print(f"{name}: {store.db.url.render_as_string(hide_password=True)}")
    t = time.perf_counter()
    await loader(store, n)
    print(f"  bulk load {n:,} rows                 {time.perf_counter() - t:8.2f} s   (count={await store.count():,})")
    since, until = T0, T0 + dt.timedelta(days=30)
    await timed("report by model, 30 days", lambda: store.report(since, until, ("model",)), repeat)
    await timed("report by key, 30 days", lambda: store.report(since, until, ("key_hash",)), repeat)
    await timed("report by day, 30 days", lambda: store.report(since, until, ("day",)), repeat)
    await timed("report by team+model, 1 day", lambda: store.report(since, since + dt.timedelta(days=1), ("team", "model")), repeat)
    await timed("logs page 1, key filter (100)", lambda: store.logs(key_hash="key0042", limit=100), repeat)
    page, cur = await store.logs(key_hash="key0042", limit=100)
    await timed("logs page 2, key filter (100)", lambda: store.logs(key_hash="key0042", limit=100, cursor=cur), repeat)
    await timed("logs page 1, no filter (100)", lambda: store.logs(limit=100), repeat)
    await timed("budget seed: one key's 30-day spend", lambda: store.spent_nano("key0042", since), repeat)


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--pg", default="postgresql+asyncpg://postgres@127.0.0.1:5432/test")
    ap.add_argument("--no-pg", action="store_true")
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()

    with tempfile.TemporaryDirectory() as d:
        store = SpendStore(f"sqlite+aiosqlite:///{Path(d) / 'spend.db'}")
        await store.start()
        try:
            await bench("SQLite", store, load_sqlite, a.rows, a.repeat)
        finally:
            await store.aclose()

    if a.no_pg:
        return
    import asyncpg

    admin_dsn = a.pg.replace("postgresql+asyncpg://", "postgresql://", 1)
    try:
        admin = await asyncpg.connect(admin_dsn, timeout=3)
    except (OSError, asyncpg.PostgresError, asyncio.TimeoutError) as exc:
        print(f"PostgreSQL: skipped, {admin_dsn} unreachable ({exc})")
        return
    db = f"modelyard_spend_bench_{uuid.uuid4().hex[:8]}"
    await admin.execute(f'CREATE DATABASE "{db}"')
    try:
        store = SpendStore(a.pg.rsplit("/", 1)[0] + "/" + db)
        await store.start()
        try:
            await bench("PostgreSQL", store, load_pg, a.rows, a.repeat)
        finally:
            await store.aclose()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    asyncio.run(main())
