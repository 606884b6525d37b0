"""The spend writer under more rows than the database takes, for real: the gateway's SQLite spend
table is locked by another connection while load runs. The backlog in memory stays within its
bound (rows spill to the spool, then requests are refused with 503 + Retry-After), and once the
lock is released every answered request has exactly one row."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path

import httpx
import pytest

from .support import MockUpstream, ProcessPool, deployment, model_cfg, wait_until

BOUND = 300


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.parametrize("spool_ok", [True, False], ids=["spool-takes-the-overflow", "spool-unwritable-refuses"])
def test_locked_database_keeps_backlog_bounded_and_loses_nothing(procs: ProcessPool, shared_mock: MockUpstream,
                                                                  tmp_path: Path, spool_ok: bool) -> None:
    home = tmp_path / "home"
    if not spool_ok:
        (home / "spend.spool").mkdir(parents=True)  # a directory where the spool file goes: every append fails
    gw = procs.gateway({
        "memory": {"data_dir": str(home)},
        "spend": {"flush_interval_s": 0.05, "max_buffer_rows": BOUND},
        "models": [model_cfg("m", deployment(shared_mock, "up-m"))],
    })
    db = home / "modelyard.db"
    wait_until(lambda: db.exists(), 10, "the database file")
    lock = sqlite3.connect(db, isolation_level=None, timeout=10)
    lock.execute("BEGIN EXCLUSIVE")  # every insert now waits, then fails: the database "is slow"
    samples: list[tuple[float, float]] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.05):
            samples.append((gw.metric("modelyard_spend_backlog_rows") or 0.0, gw.metric("modelyard_spend_spool_rows") or 0.0))

    sampler = threading.Thread(target=sample, daemon=True)
    rss0 = _rss_kb(gw.pid)
    sampler.start()
    statuses: dict[int, int] = {}
    retry_after: set[str] = set()

    async def load() -> None:
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        async with httpx.AsyncClient(base_url=gw.url, timeout=30) as c:
            async def one() -> None:
                for _ in range(100):
                    r = await c.post("/v1/chat/completions", json=body)
                    statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                    if r.status_code == 503:
                        assert r.json()["error"]["code"] == "spend_backlogged"
                        retry_after.add(r.headers["retry-after"])

            await asyncio.gather(*(one() for _ in range(16)))

    try:
        asyncio.run(load())
    finally:
        lock.execute("COMMIT")
        lock.close()
        stop.set()
        sampler.join()
    answered = statuses.get(200, 0)
    assert set(statuses) <= {200, 503}, statuses
    assert answered + statuses.get(503, 0) == 1600
    backlog_max = max(b for b, _ in samples)
    assert backlog_max <= 2 * BOUND + 16, (backlog_max, BOUND)  # the bound, plus rows of requests in flight
    assert _rss_kb(gw.pid) - rss0 < 64 * 1024
    if spool_ok:
        assert max(s for _, s in samples) > 0, "rows past the bound must have gone to the spool"
    else:  # neither database nor disk: the gateway refuses rather than serve what it cannot account for
        assert statuses.get(503, 0) > 0 and answered > 0, statuses
        assert retry_after and all(int(v) >= 1 for v in retry_after)

    def rows() -> int:
        with sqlite3.connect(db, timeout=10) as c:
            return c.execute("select count(*), count(distinct request_id) from spend_rows").fetchone()

    wait_until(lambda: rows()[0] == answered, 30, f"{answered} spend rows after the lock is released")
    total, distinct = rows()
    assert total == distinct == answered
    time.sleep(0.3)
    assert rows()[0] == answered  # and no more: nothing counted twice
    assert gw.metric("modelyard_spend_rows_dropped_total") == 0
    assert gw.http.get("/health/readiness").json()["spend"]["state"] == "ok"
