"""Dependencies dying under load (issue 10 §5): an engine process SIGKILLed, PostgreSQL terminating
the gateway's connections, Redis restarted, the spool's disk full. Each time: every request is
answered or refused cleanly (an OpenAI error with Retry-After), and once things recover,
``count(spend rows) == count(requests)`` with every row's status the status the client saw.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from decimal import Decimal
from pathlib import Path

import asyncpg
import httpx
import pytest

from modelyard.engines.procs import pid_alive

from .services import missing
from .support import ProcessPool, deployment, model_cfg, wait_until

MSG = [{"role": "user", "content": "hi"}]
MASTER = "sk-master-deps-0123"


class Load:
    """``n`` clients posting back to back in threads until stopped; every status kept."""

    def __init__(self, url: str, model: str, *, n: int = 6, headers: dict[str, str] | None = None) -> None:
        self.url, self.model, self.headers = url, model, headers or {}
        self.statuses: Counter[int] = Counter()
        self.refusals: list[httpx.Response] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(n)]

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as c:
            while not self._stop.is_set():
                r = c.post("/v1/chat/completions", json={"model": self.model, "messages": MSG}, headers=self.headers)
                with self._lock:
                    self.statuses[r.status_code] += 1
                    if r.status_code != 200:
                        self.refusals.append(r)

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(60)

    def total(self) -> int:
        return sum(self.statuses.values())

    def assert_clean(self, allowed: set[int]) -> None:
        assert set(self.statuses) <= {200} | allowed, self.statuses
        for r in self.refusals:
            body = r.json()
            assert set(body) == {"error"} and body["error"]["message"], r.text
            if r.status_code in (429, 503):
                assert int(r.headers["retry-after"]) >= 1, r.headers


def spend_rows(gw, headers: dict[str, str] | None = None, **params: str) -> list[dict]:  # noqa: ANN001
    rows, cursor = [], None
    while True:
        page = gw.http.get("/spend/logs", params={**params, "limit": 1000, **({"cursor": cursor} if cursor else {})},
                           headers=headers or {}).json()
        rows += page["data"]
        cursor = page["next_cursor"]
        if not cursor:
            return rows


def spend_statuses(gw, model: str, headers: dict[str, str] | None = None) -> Counter[int]:  # noqa: ANN001
    return Counter(r["status"] for r in spend_rows(gw, headers, model=model))


def test_engine_sigkilled_mid_load(procs: ProcessPool, tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "modelyard.testing.mock_engine", "--port", "{port}", "--mode", "ok"]
    gw = procs.gateway({
        "memory": {"data_dir": str(tmp_path / "home")},
        "spend": {"flush_interval_s": 0.05},
        "models": [{"name": "e", "deployments": [{"kind": "process", "command": cmd, "restart_backoff_s": 0.1,
                                                   "preload": True, "health_timeout_s": 20}]}],
    })
    engine = lambda: next(m for m in gw.http.get("/admin/models").json()["data"] if m["name"] == "e")  # noqa: E731
    wait_until(lambda: engine()["state"] == "active", 20, "the engine preloaded")
    pids = []
    with Load(gw.url, "e") as load:
        for _ in range(2):
            time.sleep(0.7)
            pid = engine()["engine"]["pid"]
            pids.append(pid)
            os.kill(pid, signal.SIGKILL)
            wait_until(lambda p=pid: (engine().get("engine") or {}).get("pid") not in (None, p)
                       and engine()["state"] == "active", 10, "the engine restarted")
        time.sleep(0.5)
    load.assert_clean(allowed={503})
    assert load.statuses[200] > 0 and load.statuses[503] == 0, load.statuses  # restarts are retried, not refused
    assert all(not pid_alive(p) for p in pids)
    wait_until(lambda: spend_statuses(gw, "e") == load.statuses, 10, "one spend row per request")


def test_postgres_terminating_the_gateways_connections_mid_load(procs: ProcessPool, pg_database: str, tmp_path: Path) -> None:
    mock = procs.mock()
    gw = procs.gateway({
        "memory": {"data_dir": str(tmp_path / "home")},
        "database": {"url": pg_database},
        "auth": {"master_key": MASTER, "refresh_interval_s": 0.2},
        "spend": {"flush_interval_s": 0.05},
        "models": [model_cfg("m", deployment(mock, "up"))],
    })
    auth = {"authorization": f"Bearer {MASTER}"}
    key = gw.http.post("/key/generate", json={"key_alias": "k"}, headers=auth).json()["key"]
    dsn = pg_database.replace("postgresql+asyncpg://", "postgresql://")

    async def terminate() -> int:
        conn = await asyncpg.connect(dsn)
        try:
            return len(await conn.fetch(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid()"))
        finally:
            await conn.close()

    killed = 0
    with Load(gw.url, "m", headers={"authorization": f"Bearer {key}"}) as load:
        for _ in range(4):
            time.sleep(0.4)
            killed += asyncio.run(terminate())
    assert killed >= 2, "the gateway held no connection to terminate"
    load.assert_clean(allowed=set())
    wait_until(lambda: spend_statuses(gw, "m", auth) == load.statuses, 15, "one spend row per request")


# --- Redis restarted ---------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _redis(port: int, workdir: Path) -> subprocess.Popen[bytes]:
    binary = shutil.which("redis-server")
    if binary is None:
        missing("redis-server is not installed: cannot start a private Redis to restart")
    log = workdir / f"redis-{port}-{time.monotonic_ns()}.log"
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(workdir), "--logfile", str(log)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    wait_until(lambda: log.exists() and "Ready to accept connections" in log.read_text(errors="replace"), 10,
               "redis-server ready")
    return proc


@pytest.mark.parametrize("fail_open", [True, False], ids=["fail-open", "fail-closed"])
def test_redis_restarted_mid_load(procs: ProcessPool, tmp_path: Path, fail_open: bool) -> None:
    port = _free_port()
    redis = _redis(port, tmp_path)
    try:
        mock = procs.mock()
        price, budget = 1.0, 40.0  # each request costs what its tokens cost; the key may spend 40
        gw = procs.gateway({
            "memory": {"data_dir": str(tmp_path / "home")},
            "auth": {"master_key": MASTER},
            "limits": {"redis_url": f"redis://127.0.0.1:{port}/0", "fail_open": fail_open},
            "spend": {"flush_interval_s": 0.05},
            "models": [model_cfg("m", deployment(mock, "up"), rpm=10**6, tpm=10**9,
                                 price={"input_per_1k": price, "output_per_1k": price})],
        })
        auth = {"authorization": f"Bearer {MASTER}"}
        made = gw.http.post("/key/generate", json={"max_budget": budget, "budget_duration": "1d", "rpm_limit": 10**6},
                            headers=auth).json()
        n_clients = 4
        with Load(gw.url, "m", n=n_clients, headers={"authorization": f"Bearer {made['key']}"}) as load:
            time.sleep(0.5)
            redis.send_signal(signal.SIGTERM)
            redis.wait(10)
            time.sleep(0.5)  # Redis away: requests go on (fail open) or are refused 503 (fail closed)
            redis = _redis(port, tmp_path)  # back, empty: counters are rebuilt from the spend rows
            wait_until(lambda: load.statuses.get(429, 0) > 0, 30, "the budget to be enforced again")
        load.assert_clean(allowed={429, 503})
        if fail_open:
            assert load.statuses[503] == 0, load.statuses
        else:
            assert load.statuses[503] > 0, load.statuses
            assert all(r.json()["error"]["code"] == "rate_limiter_unavailable" for r in load.refusals if r.status_code == 503)
        assert all(r.json()["error"]["code"] == "budget_exceeded" for r in load.refusals if r.status_code == 429)
        def answered() -> list[dict]:
            return [r for r in spend_rows(gw, auth, key_hash=made["token"]) if r["status"] == 200]

        rows = wait_until(lambda: (d := answered()) and len(d) == load.statuses[200] and d, 15,
                          "one spend row per answered request")
        spent = sum(Decimal(r["cost"]) for r in rows)
        one = max(Decimal(r["cost"]) for r in rows)
        # past the budget by at most what was in flight when the counter was rebuilt (and during the
        # outage when failing open: nothing can be counted while Redis is away)
        assert spent >= Decimal(str(budget)), spent
        in_flight = n_clients * one
        if not fail_open:
            assert spent <= Decimal(str(budget)) + in_flight + one, (spent, in_flight)
    finally:
        redis.send_signal(signal.SIGTERM)
        redis.wait(10)


# --- the spool's disk full ---------------------------------------------------------------------


def test_spool_disk_full_while_the_database_is_locked(procs: ProcessPool, shared_mock, tmp_path: Path) -> None:  # noqa: ANN001
    spool_dir = tmp_path / "small-disk"
    spool_dir.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(spool_dir)], capture_output=True, text=True)
    if r.returncode != 0:
        missing(f"cannot mount a 64 KiB tmpfs for the spool (needs root): {r.stderr.strip()}")
    try:
        db = tmp_path / "db" / "modelyard.db"
        gw = procs.gateway({
            "memory": {"data_dir": str(spool_dir)},
            "database": {"url": f"sqlite+aiosqlite:///{db}"},
            "spend": {"flush_interval_s": 0.05, "max_buffer_rows": 200},
            "models": [model_cfg("m", deployment(shared_mock, "up"))],
        })
        wait_until(lambda: db.exists(), 10, "the database")
        lock = sqlite3.connect(db, isolation_level=None, timeout=10)
        lock.execute("BEGIN EXCLUSIVE")
        try:
            with Load(gw.url, "m", n=8) as load:
                wait_until(lambda: load.statuses.get(503, 0) > 20, 60, "refusals once disk and database are both full")
        finally:
            lock.execute("COMMIT")
            lock.close()
        load.assert_clean(allowed={503})
        assert all(r.json()["error"]["code"] == "spend_backlogged" for r in load.refusals)
        wait_until(lambda: spend_statuses(gw, "m").get(200, 0) == load.statuses[200], 30, "every answered request's row")
        assert gw.metric("modelyard_spend_rows_dropped_total") == 0
        gw.stop()
    finally:
        subprocess.run(["umount", "-l", str(spool_dir)], check=False)
