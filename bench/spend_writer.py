"""Does the spend writer keep up with the gateway? Rows/s of the writer, and the gateway under load.

    .venv/bin/python bench/spend_writer.py [--rows 40000] [--load-s 10] [--stall-s 2] [--concurrency 64] [--baseline-rev REV]
                                           [--pg postgresql+asyncpg://postgres@127.0.0.1/test | --no-pg]

Three parts, all in one run (compare within it, never across machines):

1. **Insert capacity, idle loop**: ``--rows`` rows in batches of 2,000 through the pre-issue path
   (SQLAlchemy ``executemany``: aiosqlite on SQLite, asyncpg on PostgreSQL) and through the
   writer's own path (``accounting/sinks.py``: a dedicated sqlite3 connection with multi-row
   inserts; asyncpg COPY into a staging table).
2. **The real gateway**: ``modelyard serve`` (spend on, SQLite, then PostgreSQL) in front of the
   mock upstream under ``bench/loadgen.py`` at ``--concurrency`` for ``--load-s`` s: answered
   req/s, rows stored during the load, the writer's backlog (``/metrics``) and the gateway's RSS
   sampled every 0.25 s, and after the load: rows stored == requests answered.
3. **Writer capacity at the gateway's peak** (inside part 2): ``--stall-s`` s into the load the
   bench locks the spend table (SQLite: ``BEGIN EXCLUSIVE`` from another connection; PostgreSQL:
   ``LOCK TABLE … IN EXCLUSIVE MODE``) for ``--stall-s`` s, so a backlog builds while the gateway
   keeps answering; after the release the writer drains it *while the load goes on*. Rows stored
   per second during that catch-up are what the writer sustains beside a gateway at full load:
   the figure held against the gateway's req/s (target ≥ 1.5×).

``--baseline-rev REV`` runs part 2 once more with the gateway of an earlier commit (a temporary
``git worktree``), e.g. the commit before the writer was rewritten, for a before/after in one run.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import subprocess
import sqlite3
import sys
import tempfile
import threading
import time
import uuid
from decimal import Decimal
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from gateway import Child, chat_body, machine_info, run_loadgen, scrape  # noqa: E402

from modelyard.accounting.store import SpendRow, SpendStore  # noqa: E402

BATCH = 2000
TARGET_HEADROOM = 1.5


def make_rows(n: int) -> list[SpendRow]:
    now = dt.datetime.now(dt.timezone.utc)
    return [SpendRow(request_id=uuid.uuid4().hex, ts=now, key_hash="0123456789abcdef", team="search", model="bench-model",
                     deployment="bench-model/0", prompt_tokens=12, completion_tokens=34, cost=Decimal("0.000123456"),
                     priced=True, latency_ms=0.42, status=200) for _ in range(n)]


async def _store(url: str, fast: bool) -> SpendStore:
    s = SpendStore(url)
    await s.start()
    if not fast:
        s._fast = False  # the pre-issue path: SQLAlchemy executemany through the read engine
    return s


async def capacity_idle(url: str, fast: bool, n: int) -> float:
    s = await _store(url, fast)
    rows = make_rows(n)
    t = time.perf_counter()
    for i in range(0, n, BATCH):
        await s.insert_many(rows[i : i + BATCH])
    rate = n / (time.perf_counter() - t)
    await s.aclose()
    return rate


def _metrics(url: str) -> dict[str, float]:
    out: dict[str, float] = {"requests": 0.0}
    for name, labels, value in scrape(url, timeout=5):
        if name.startswith("modelyard_spend_"):
            out[name] = value
        elif name == "modelyard_requests_total" and 'model="bench-model"' in labels:
            out["requests"] += value
    return out


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _count_rows(db: str, pg: str | None) -> int:
    if pg is None:
        with sqlite3.connect(db) as c:
            return c.execute("select count(*) from spend_rows").fetchone()[0]

    async def count() -> int:
        import asyncpg

        conn = await asyncpg.connect(pg.replace("+asyncpg", ""))
        try:
            return await conn.fetchval("select count(*) from spend_rows")
        finally:
            await conn.close()

    return asyncio.run(count())


def _reset_pg(pg: str) -> None:
    async def drop() -> None:
        import asyncpg

        conn = await asyncpg.connect(pg.replace("+asyncpg", ""))
        try:
            await conn.execute("drop table if exists spend_rows, virtual_keys, modelyard_migrations cascade")
        finally:
            await conn.close()

    asyncio.run(drop())


class TableLock:
    """Hold the spend table locked from another connection for a while (the database "stalls")."""

    def __init__(self, db: str, pg: str | None) -> None:
        self.db, self.pg = db, pg

    def hold(self, seconds: float) -> None:
        if self.pg is None:
            c = sqlite3.connect(self.db, timeout=30, isolation_level=None)
            c.execute("BEGIN EXCLUSIVE")
            time.sleep(seconds)
            c.execute("COMMIT")
            c.close()
            return

        async def lock() -> None:
            import asyncpg

            conn = await asyncpg.connect(self.pg.replace("+asyncpg", ""))
            try:
                async with conn.transaction():
                    await conn.execute("LOCK TABLE spend_rows IN EXCLUSIVE MODE")
                    await asyncio.sleep(seconds)
            finally:
                await conn.close()

        asyncio.run(lock())


def _catch_up(samples: list[dict], released_t: float) -> float | None:
    """Rows/s stored from the lock's release until the backlog is back to its steady size."""
    after = [s for s in samples if s["t"] >= released_t]
    if len(after) < 2:
        return None
    start = after[0]
    peak = max(s["backlog"] + s["spool"] for s in after)
    for s in after[1:]:
        if s["backlog"] + s["spool"] <= max(4000, peak * 0.1):
            return (s["written"] - start["written"]) / (s["t"] - start["t"]) if s["t"] > start["t"] else None
    return None


def gateway_run(args: argparse.Namespace, pg: str | None, workdir: Path, *, src: Path | None = None,
                label: str = "") -> dict:
    name = ("postgresql" if pg else "sqlite") + (f"@{label}" if label else "")
    home = workdir / f"home-{name}"
    if pg:
        _reset_pg(pg)
    children: list[Child] = []
    env_src = {"PYTHONPATH": str(src)} if src else None
    try:
        mock = Child(f"mock-{name}", [sys.executable, "-m", "modelyard.testing.mock_upstream", "--host", "127.0.0.1",
                                      "--port", "0"], workdir)
        children.append(mock)
        mock_url = mock.wait_for(r"MOCK_LISTENING (http://\S+)", 30).group(1)
        cfg = workdir / f"{name}.yaml"
        cfg.write_text(
            "server: {host: 127.0.0.1, access_log: true}\n"
            f"memory: {{data_dir: '{home}'}}\n"
            + (f"database: {{url: '{pg}'}}\n" if pg else "")
            + "models:\n  - name: bench-model\n"
            f"    deployments: [{{api_base: '{mock_url}/v1', model: bench-model}}]\n")
        gw = Child(f"gateway-{name}", [sys.executable, "-m", "modelyard", "serve", "--config", str(cfg), "--port", "0"],
                   workdir, env=env_src)
        children.append(gw)
        url = gw.wait_for(r"modelyard listening on (http://\S+)", 60).group(1)
        samples: list[dict] = []
        done = threading.Event()
        t0 = time.monotonic()

        def sample() -> None:
            while not done.wait(0.25):
                m = _metrics(url)
                samples.append({"t": round(time.monotonic() - t0, 3), "rss_mb": _rss_mb(gw.pid),
                                "backlog": m.get("modelyard_spend_backlog_rows", 0),
                                "spool": m.get("modelyard_spend_spool_rows", 0),
                                "written": m.get("modelyard_spend_rows_written_total", 0), "requests": m["requests"]})

        stall: dict[str, float] = {}

        def stall_db() -> None:
            time.sleep(args.stall_s + 0.5)
            stall["locked_t"] = time.monotonic() - t0
            TableLock(str(home / "modelyard.db"), pg).hold(args.stall_s)
            stall["released_t"] = time.monotonic() - t0

        threads = [threading.Thread(target=sample, daemon=True)]
        if args.stall_s > 0:
            threads.append(threading.Thread(target=stall_db, daemon=True))
        rss0 = _rss_mb(gw.pid)
        for t in threads:
            t.start()
        res = run_loadgen({"mode": "throughput", "url": url, "path": "/v1/chat/completions", "body": chat_body("bench-model"),
                           "concurrency": args.concurrency, "duration": args.load_s, "warmup_s": 0.5},
                          timeout=args.load_s + 60)
        done.set()
        for t in threads:
            t.join()
        at_end = _metrics(url)
        rows_at_end = _count_rows(str(home / "modelyard.db"), pg)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            m = _metrics(url)
            if m.get("modelyard_spend_backlog_rows", 0) == 0 and m.get("modelyard_spend_spool_rows", 0) == 0:
                if m.get("modelyard_spend_rows_written_total", -1) >= m["requests"] or src is not None:
                    break
            time.sleep(0.1)
        drained = _metrics(url)
        rows = _count_rows(str(home / "modelyard.db"), pg)
        load = [s for s in samples if s["requests"] > 0]
        first, last = (load[0], load[-1]) if len(load) > 1 else (None, None)
        span = (last["t"] - first["t"]) if first else 0
        return {
            "db": name, "rps": res["rps"], "errors": res["errors"]["total"],
            "rows_per_s_during_load": (last["written"] - first["written"]) / span if span else 0.0,
            "catch_up_rows_per_s": _catch_up(samples, stall["released_t"]) if "released_t" in stall else None,
            "stall": stall,
            "backlog_max": max((s["backlog"] for s in samples), default=0),
            "spool_max": max((s["spool"] for s in samples), default=0),
            "unwritten_at_end_of_load": at_end["requests"] - at_end.get("modelyard_spend_rows_written_total", 0),
            "requests": drained["requests"], "rows_in_db": rows, "rows_in_db_at_end_of_load": rows_at_end,
            "requests_at_end_of_load": at_end["requests"],
            "rss_mb": {"start": rss0, "max": max((s["rss_mb"] for s in samples), default=rss0),
                       "end": samples[-1]["rss_mb"] if samples else rss0},
            "samples": samples,
        }
    finally:
        for c in reversed(children):
            c.stop()


def baseline_tree(rev: str, work: Path) -> Path:
    tree = work / "baseline"
    subprocess.run(["git", "-C", str(HERE.parent), "worktree", "add", "--detach", str(tree), rev], check=True,
                   capture_output=True)
    return tree


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=40_000)
    ap.add_argument("--load-s", type=float, default=10.0)
    ap.add_argument("--stall-s", type=float, default=2.0, help="seconds the table is locked mid-load (0: no stall)")
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--baseline-rev", default=None, help="also run the gateway of this git revision")
    ap.add_argument("--pg", default="postgresql+asyncpg://postgres@127.0.0.1/test")
    ap.add_argument("--no-pg", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    pg = None if args.no_pg else args.pg
    work = Path(tempfile.mkdtemp(prefix="modelyard-spend-bench-"))
    out: dict = {"machine": machine_info(), "capacity": {}, "gateway": []}
    dbs = [("sqlite", f"sqlite+aiosqlite:///{work}/cap.db")] + ([("postgresql", pg)] if pg else [])
    for name, url in dbs:
        if name == "postgresql":
            _reset_pg(url)
        for fast in (False, True):
            path = "writer path" if fast else "SQLAlchemy executemany"
            idle = asyncio.run(capacity_idle(url, fast, args.rows))
            out["capacity"][f"{name} / {path}"] = idle
            print(f"{name:10} {path}: {idle:9,.0f} rows/s", file=sys.stderr)
    tree = baseline_tree(args.baseline_rev, work) if args.baseline_rev else None
    try:
        for db in [None] + ([pg] if pg else []):
            if tree is not None:
                out["gateway"].append(gateway_run(args, db, work, src=tree / "src", label=args.baseline_rev))
            out["gateway"].append(gateway_run(args, db, work))
    finally:
        if tree is not None:
            subprocess.run(["git", "-C", str(HERE.parent), "worktree", "remove", "--force", str(tree)], check=False)

    m = out["machine"]
    print(f"\nmachine: {m['nproc']} cores, {m['cpu_model']}, Python {m['python']}, load {m['loadavg_at_start']}")
    print("\n| insert path (idle loop, batches of 2,000) | rows/s |\n|---|---|")
    for k, v in out["capacity"].items():
        print(f"| {k} | {v:,.0f} |")
    print(f"\n| gateway (c={args.concurrency}, {args.load_s:g} s, table locked {args.stall_s:g} s mid-load) | req/s | "
          "rows stored by the end of the load | rows/s during load | catch-up rows/s after the lock | headroom (catch-up / req/s) | backlog max | spool max | "
          "rows == requests | RSS start/max/end MB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    ok = True
    for g in out["gateway"]:
        cu = g["catch_up_rows_per_s"]
        head = cu / g["rps"] if cu and g["rps"] else None
        g["headroom"] = head
        exact = g["rows_in_db"] == g["requests"]
        if "@" not in g["db"]:
            ok = ok and exact and g["errors"] == 0 and (head is None or head >= TARGET_HEADROOM)
        r = g["rss_mb"]
        share = g["rows_in_db_at_end_of_load"] / g["requests_at_end_of_load"] if g["requests_at_end_of_load"] else 0
        print(f"| {g['db']} | {g['rps']:,.0f} | {g['rows_in_db_at_end_of_load']:,} of {g['requests_at_end_of_load']:,.0f} "
              f"({share:.0%}) | {g['rows_per_s_during_load']:,.0f} | "
              f"{'-' if cu is None else f'{cu:,.0f}'} | {'-' if head is None else f'{head:.2f}x'} (target >= {TARGET_HEADROOM}) | "
              f"{g['backlog_max']:,.0f} | {g['spool_max']:,.0f} | {g['rows_in_db']:,} == {g['requests']:,.0f}: {exact} | "
              f"{r['start']:.0f}/{r['max']:.0f}/{r['end']:.0f} |")
    if args.json:
        print(json.dumps(out))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
