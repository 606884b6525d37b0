"""The operator UI's Spend page at 1M spend rows: the time to load its data, SQLite and PostgreSQL.

    .venv/bin/python bench/ui_spend.py [--rows 1000000] [--pg postgresql+asyncpg://postgres@127.0.0.1:5432/test]
                                       [--no-pg] [--repeat 3] [--no-raw]

The page asks four aggregates at once — GET /spend/report?group_by=model|team|key_hash|day over
the selected range — each one GROUP BY in SQL (accounting/store.py ``report``), never one request
per row. This runs the real app (create_app + its lifespan, the master key on) on a spend database
of --rows synthetic rows (bench/spend_report.py's generator: 30 days, 20 models, 2,000 keys, 50
teams), and times through the app's ASGI interface: each of the four requests alone, and the
page's four together (concurrently, as the browser sends them), for a 30-day and a 1-day range.

Reports read whole days from the daily rollup ``spend_daily`` (migration v0008, kept by a trigger,
so the bulk load fills it too) and the partial days at a range's edges from ``spend_rows``. Unless
--no-raw, the same requests are then timed with the rollup off (every row aggregated, as before
v0008: ``report_query`` swapped for the raw query) — before/after on the same data.
Quick check: --rows 50000 --repeat 1.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from spend_report import T0, load_pg, load_sqlite  # noqa: E402

from modelyard.accounting import store as store_mod  # noqa: E402
from modelyard.accounting.store import SpendStore  # noqa: E402
from modelyard.api import create_app  # noqa: E402
from modelyard.config.loader import settings_from_dict  # noqa: E402
from modelyard.observability.logging import AccessLog  # noqa: E402

KEY = "sk-bench-ui"
GROUPS = ("model", "team", "key_hash", "day")


async def page(client: httpx.AsyncClient, since: dt.datetime, until: dt.datetime, groups=GROUPS,
               limit: bool = False) -> tuple[int, int]:
    """The page's requests; ``limit``: by key only the top 20 (as app.js asks since v0008)."""
    q = {"since": since.isoformat(), "until": until.isoformat()}
    rs = await asyncio.gather(*(client.get("/spend/report", params={
        **q, "group_by": g, **({"limit": 20} if limit and g == "key_hash" else {})}) for g in groups))
    for r in rs:
        assert r.status_code == 200, r.text
    return sum(len(r.json()["data"]) for r in rs), sum(len(r.content) for r in rs)


async def timed(label: str, fn, repeat: int) -> None:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        rows, size = await fn()
        times.append(time.perf_counter() - t)
    print(f"  {label:<40} first {times[0] * 1000:8.1f} ms   best {min(times) * 1000:8.1f} ms   "
          f"({rows:,} groups, {size / 1024:,.0f} KiB JSON)")


def raw_query(group_by, since_us, until_us, limit=None):  # noqa: ANN001, ANN201 - the report before v0008
    q = store_mod._raw_report(group_by, since_us, until_us)
    gs = [q.selected_columns[f"g_{i}"] for i in range(len(group_by))]
    return q.order_by(q.selected_columns.cost_nano.desc(), *gs).limit(limit) if limit else q.order_by(*gs)


async def bench(name: str, url: str, loader, n: int, repeat: int, home: Path, raw: bool) -> None:
    store = SpendStore(url)
    await store.start()
    t = time.perf_counter()
    await loader(store, n)
    async with store.engine.connect() as conn:
        daily = (await conn.exec_driver_sql("SELECT COUNT(*) FROM spend_daily")).scalar_one()
    print(f"{name}: {n:,} spend rows loaded in {time.perf_counter() - t:.1f} s (count={await store.count():,}, "
          f"spend_daily rows={daily:,})")
    await store.aclose()
    settings = settings_from_dict({"models": [], "auth": {"master_key": KEY}, "database": {"url": url},
                                   "memory": {"data_dir": str(home)}}).settings
    app = create_app(settings, access_log=AccessLog(enabled=False))
    await app.startup()
    try:
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 9))
        async with httpx.AsyncClient(transport=transport, base_url="http://bench", timeout=120,
                                     headers={"authorization": f"Bearer {KEY}"}) as c:
            d30 = (T0, T0 + dt.timedelta(days=30))
            d1 = (T0 + dt.timedelta(days=29), T0 + dt.timedelta(days=30))
            mid = (T0 + dt.timedelta(hours=12), T0 + dt.timedelta(days=29, hours=12))  # partial days at both ends
            for mode in ("rollup", "raw") if raw else ("rollup",):
                print(f" {mode}:" if mode == "rollup" else " raw (no rollup, as before v0008):")
                saved = store_mod.report_query
                if mode == "raw":
                    store_mod.report_query = raw_query
                try:
                    for g in GROUPS:
                        await timed(f"/spend/report group_by={g}, 30 days", lambda g=g: page(c, *d30, (g,)), repeat)
                    await timed("the Spend page's 4 requests, 30 days", lambda: page(c, *d30), repeat)
                    await timed("the page, 30 days, by key limit=20", lambda: page(c, *d30, limit=True), repeat)
                    await timed("the page, 29 days from/to noon, limit=20", lambda: page(c, *mid, limit=True), repeat)
                    await timed("the Spend page's 4 requests, 1 day", lambda: page(c, *d1), repeat)
                finally:
                    store_mod.report_query = saved
    finally:
        await app.shutdown()


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--pg", default="postgresql+asyncpg://postgres@127.0.0.1:5432/test")
    ap.add_argument("--no-pg", action="store_true")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-raw", action="store_true", help="skip timing the raw (pre-rollup) query")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        await bench("SQLite", f"sqlite+aiosqlite:///{Path(d) / 'spend.db'}", load_sqlite, a.rows, a.repeat, Path(d), not a.no_raw)
        if a.no_pg:
            return
        import asyncpg

        admin_dsn = a.pg.replace("postgresql+asyncpg://", "postgresql://", 1)
        try:
            admin = await asyncpg.connect(admin_dsn, timeout=3)
        except (OSError, asyncpg.PostgresError, asyncio.TimeoutError) as exc:
            print(f"PostgreSQL: skipped, {admin_dsn} unreachable ({exc})")
            return
        db = f"modelyard_ui_bench_{uuid.uuid4().hex[:8]}"
        await admin.execute(f'CREATE DATABASE "{db}"')
        try:
            await bench("PostgreSQL", a.pg.rsplit("/", 1)[0] + "/" + db, load_pg, a.rows, a.repeat, Path(d), not a.no_raw)
        finally:
            await admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
            await admin.close()


if __name__ == "__main__":
    asyncio.run(main())
