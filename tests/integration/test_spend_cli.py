"""``modelyard spend report`` as an operator runs it: a subprocess over a real database.

Known rows go in through ``SpendStore`` (SQLite at ``$MODELYARD_HOME/modelyard.db``, the gateway's
default, or PostgreSQL named by ``--config``); the JSON must give back exactly their sums, and the
table must show the same numbers. PostgreSQL: MODELYARD_TEST_PG (default
postgresql://postgres@127.0.0.1:5432/test); unreachable → skip, saying why, unless CI=true (fail).
The PostgreSQL test writes into that shared database, so its rows carry a unique request_id
prefix and model names, sit in a window nobody else uses, and are deleted at the end.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import yaml

from modelyard.accounting.store import SpendRow, SpendStore
from modelyard.db import Database, sqlite_url

PG_ADMIN = os.environ.get("MODELYARD_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
UTC = dt.timezone.utc
DAY1 = dt.datetime(2025, 3, 1, tzinfo=UTC)
WINDOW = ["--since", "2025-03-01", "--until", "2025-03-03"]  # two UTC days


def spend_row(rid: str, ts: dt.datetime, model: str, status: int, pt: int, ct: int, cost: str, priced: bool,
              key: str | None = "kh-1") -> SpendRow:
    return SpendRow(request_id=rid, ts=ts, key_hash=key, team=None, model=model, deployment=f"{model}/0",
                    prompt_tokens=pt, completion_tokens=ct, cost=Decimal(cost), priced=priced, latency_ms=10.0,
                    status=status)


def known_rows(prefix: str, m: str, t0: dt.datetime) -> list[SpendRow]:
    """alpha: priced, one error; beta: unpriced (one 429); gamma: day 2; plus two rows outside the window."""
    h = dt.timedelta(hours=1)
    return [
        spend_row(f"{prefix}1", t0 + h, f"{m}alpha", 200, 100, 50, "0.010000000", True),
        spend_row(f"{prefix}2", t0 + 2 * h, f"{m}alpha", 200, 200, 20, "0.002500000", True, key="kh-2"),
        spend_row(f"{prefix}3", t0 + 3 * h, f"{m}alpha", 500, 10, 0, "0", True),
        spend_row(f"{prefix}4", t0 + 4 * h, f"{m}beta", 200, 1000, 100, "0", False),
        spend_row(f"{prefix}5", t0 + 5 * h, f"{m}beta", 429, 0, 0, "0", False, key=None),
        spend_row(f"{prefix}6", t0 + 30 * h, f"{m}gamma", 200, 7, 3, "0.000000003", True),
        spend_row(f"{prefix}7", t0 - dt.timedelta(microseconds=1), f"{m}alpha", 200, 1, 1, "5", True),  # before since
        spend_row(f"{prefix}8", t0 + 48 * h, f"{m}alpha", 200, 1, 1, "5", True),  # == until: excluded
    ]


def expected_by_model(m: str) -> list[dict[str, Any]]:
    return [
        {"group": {"model": f"{m}alpha"}, "requests": 3, "errors": 1, "error_rate": 1 / 3, "prompt_tokens": 310,
         "completion_tokens": 70, "cost": "0.012500000", "cost_per_success": "0.006250000", "unpriced": 0},
        {"group": {"model": f"{m}beta"}, "requests": 2, "errors": 1, "error_rate": 0.5, "prompt_tokens": 1000,
         "completion_tokens": 100, "cost": "0.000000000", "cost_per_success": "0.000000000", "unpriced": 2},
        {"group": {"model": f"{m}gamma"}, "requests": 1, "errors": 0, "error_rate": 0.0, "prompt_tokens": 7,
         "completion_tokens": 3, "cost": "0.000000003", "cost_per_success": "0.000000003", "unpriced": 0},
    ]


EXPECTED_TOTALS = {"requests": 6, "errors": 2, "error_rate": 2 / 6, "prompt_tokens": 1317, "completion_tokens": 173,
                   "unpriced": 2}


async def insert(url: str, rows: Sequence[SpendRow]) -> None:
    db = Database(url)
    store = SpendStore(db)
    try:
        await store.start()
        await store.insert_many(rows)
    finally:
        await db.aclose()


def run_report(home: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MODELYARD_HOME": str(home), "PYTHONIOENCODING": "utf-8"}
    env.pop("COLUMNS", None)
    return subprocess.run([sys.executable, "-m", "modelyard", "spend", "report", *args],
                          capture_output=True, text=True, timeout=timeout, env=env)


def table_line(stdout: str, first: str) -> list[str]:
    lines = [line.split() for line in stdout.splitlines() if line.split()[:1] == [first]]
    assert len(lines) == 1, (first, stdout)
    return lines[0]


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def sqlite_rows(home: Path) -> list[SpendRow]:
    rows = known_rows("req-", "", DAY1)
    asyncio.run(insert(sqlite_url(home / "modelyard.db"), rows))
    return rows


# --- SQLite (the default database) ---------------------------------------------------------------


def test_json_gives_back_exactly_what_was_inserted(home: Path, sqlite_rows: list[SpendRow]) -> None:
    res = run_report(home, *WINDOW, "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["rows"] == expected_by_model("")
    assert out["totals"] == {**EXPECTED_TOTALS, "cost": "0.012500003", "cost_per_success": "0.003125001"}
    assert (out["since"], out["until"], out["group_by"]) == ("2025-03-01T00:00:00+00:00", "2025-03-03T00:00:00+00:00", ["model"])
    # the sums are those of the rows inside the window, computed independently here
    inside = [r for r in sqlite_rows if DAY1 <= r.ts < DAY1 + dt.timedelta(days=2)]
    assert Decimal(out["totals"]["cost"]) == sum((r.cost for r in inside), Decimal(0))
    assert out["totals"]["requests"] == len(inside)
    assert out["totals"]["unpriced"] == sum(not r.priced for r in inside)


def test_table_shows_the_same_numbers_and_flags_unpriced(home: Path, sqlite_rows: list[SpendRow]) -> None:
    res = run_report(home, *WINDOW)
    assert res.returncode == 0, res.stderr
    assert table_line(res.stdout, "alpha") == ["alpha", "3", "1", "33.3%", "310", "70", "0.0125", "0.00625"]
    assert table_line(res.stdout, "beta") == ["beta", "2", "1", "50.0%", "1,000", "100", "0.00", "0.00", "⚠", "2", "unpriced"]
    assert table_line(res.stdout, "gamma") == ["gamma", "1", "0", "0.0%", "7", "3", "0.000000003", "0.000000003"]
    assert table_line(res.stdout, "total") == [
        "total", "6", "2", "33.3%", "1,317", "173", "0.012500003", "0.003125001", "⚠", "2", "unpriced"
    ]
    assert "⚠ 2 unpriced: no price is configured for the model, so these requests count as 0 in cost." in res.stdout
    assert "\x1b[" not in res.stdout  # no colour codes into a pipe


def test_group_by_day_and_key(home: Path, sqlite_rows: list[SpendRow]) -> None:
    res = run_report(home, *WINDOW, "--group-by", "day,key_hash", "--json")
    assert res.returncode == 0, res.stderr
    got = {(r["group"]["day"], r["group"]["key_hash"]): (r["requests"], r["cost"]) for r in json.loads(res.stdout)["rows"]}
    assert got == {
        ("2025-03-01", None): (1, "0.000000000"),
        ("2025-03-01", "kh-1"): (3, "0.010000000"),
        ("2025-03-01", "kh-2"): (1, "0.002500000"),
        ("2025-03-02", "kh-1"): (1, "0.000000003"),
    }
    table = run_report(home, *WINDOW, "--group-by", "day,key_hash")
    assert table.returncode == 0, table.stderr
    assert table_line(table.stdout, "2025-03-02") == ["2025-03-02", "kh-1", "1", "0", "0.0%", "7", "3", "0.000000003", "0.000000003"]
    assert "(none)" in table.stdout  # the request without a key


def test_default_window_is_the_last_30_days(home: Path) -> None:
    now = dt.datetime.now(UTC)
    rows = [
        spend_row("recent", now - dt.timedelta(hours=1), "m", 200, 1, 1, "1", True),
        spend_row("old", now - dt.timedelta(days=31), "m", 200, 1, 1, "2", True),
        spend_row("older", now - dt.timedelta(days=40), "m", 200, 1, 1, "4", True),
    ]
    asyncio.run(insert(sqlite_url(home / "modelyard.db"), rows))
    assert json.loads(run_report(home, "--json").stdout)["totals"]["cost"] == "1.000000000"
    assert json.loads(run_report(home, "--days", "35", "--json").stdout)["totals"]["cost"] == "3.000000000"


def test_empty_database_reports_zero(home: Path) -> None:
    res = run_report(home, *WINDOW, "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["rows"] == []
    table = run_report(home, *WINDOW)
    assert table.returncode == 0 and "no spend rows in this window" in table.stdout


# --- bad input and an unreachable database ---------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--since", "yesterday"], "'yesterday' is not an ISO 8601 date or datetime"),
        (["--until", "2025-13-01"], "'2025-13-01' is not an ISO 8601 date or datetime"),
        (["--since", "2025-03-01", "--days", "3"], "--since and --days are exclusive"),
        (["--days", "0"], "Invalid value for '--days'"),
        (["--group-by", "model,region"], "cannot group by 'region': one of model, key_hash, team, deployment, day"),
        (["--group-by", ","], "name at least one of model, key_hash, team, deployment, day"),
        (["--group-by", "model,model"], "a group is named twice"),
        (["--since", "2025-03-02", "--until", "2025-03-01"], "the window is empty"),
        (["--config", "/nonexistent/modelyard.yaml"], "error: /nonexistent/modelyard.yaml: file not found"),
        (["--bogus"], "No such option"),
    ],
)
def test_bad_arguments_exit_2(home: Path, args: list[str], message: str) -> None:
    res = run_report(home, *args)
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert message in res.stderr
    assert "Traceback" not in res.stderr and res.stdout == ""


def test_bad_config_exits_2(home: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("databse: {}\n")
    res = run_report(home, "--config", str(cfg))
    assert res.returncode == 2 and "databse: unknown field (did you mean 'database'?)" in res.stderr
    cfg.write_text(yaml.safe_dump({"database": {"url": "mysql://u@h/db"}}))
    res = run_report(home, "--config", str(cfg))
    assert res.returncode == 2 and "error: database url: unsupported database 'mysql'" in res.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_database_exits_1_with_one_line(home: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    port = free_port()
    cfg.write_text(yaml.safe_dump({"database": {"url": f"postgresql+asyncpg://spender:hunter2-secret@127.0.0.1:{port}/x"}}))
    res = run_report(home, "--config", str(cfg))
    assert res.returncode == 1, (res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: cannot read spend from postgresql+asyncpg://spender:***@127.0.0.1:{port}/x: ")
    assert "hunter2-secret" not in res.stderr and res.stdout == ""


def test_silent_database_times_out(home: Path, tmp_path: Path) -> None:
    with socket.socket() as listener:  # accepts connections (the kernel's backlog) and never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        cfg = tmp_path / "c.yaml"
        cfg.write_text(yaml.safe_dump({"database": {"url": f"postgresql+asyncpg://u@127.0.0.1:{port}/x?ssl=disable"}}))
        res = run_report(home, "--config", str(cfg), "--timeout", "1", timeout=30)
    assert res.returncode == 1, (res.stdout, res.stderr)
    assert res.stderr.strip() == f"error: cannot read spend from postgresql+asyncpg://u@127.0.0.1:{port}/x?ssl=disable: no answer within 1 s"


# --- PostgreSQL ----------------------------------------------------------------------------------


@pytest.fixture
def pg_url() -> str:
    async def probe() -> None:
        conn = await asyncpg.connect(PG_ADMIN, timeout=3)
        await conn.close()

    try:
        asyncio.run(probe())
    except (OSError, asyncpg.PostgresError, asyncio.TimeoutError) as exc:
        reason = f"PostgreSQL not reachable at {PG_ADMIN} ({exc.__class__.__name__}: {exc}); set MODELYARD_TEST_PG"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason} — CI=true requires PostgreSQL")
        pytest.skip(reason)
    return PG_ADMIN.replace("postgresql://", "postgresql+asyncpg://", 1)


@pytest.fixture
def pg_rows(pg_url: str) -> Iterator[tuple[str, dt.datetime]]:
    """Known rows under a unique prefix, in a random two-day window of 1990; deleted afterwards."""
    tag = uuid.uuid4().hex[:12]
    prefix = f"spendcli-{tag}-"
    t0 = dt.datetime(1990, 1, 1, tzinfo=UTC) + dt.timedelta(days=2 * (int(tag, 16) % 180))
    asyncio.run(insert(pg_url, known_rows(prefix, prefix, t0)))  # one transaction: all rows or none
    try:
        yield prefix, t0
    finally:
        async def delete() -> None:
            conn = await asyncpg.connect(PG_ADMIN, timeout=5)
            try:
                await conn.execute("DELETE FROM spend_rows WHERE request_id LIKE $1", prefix + "%")
                assert await conn.fetchval("SELECT count(*) FROM spend_rows WHERE request_id LIKE $1", prefix + "%") == 0
            finally:
                await conn.close()

        asyncio.run(delete())


def test_postgresql_database_from_config(home: Path, tmp_path: Path, pg_url: str, pg_rows: tuple[str, dt.datetime]) -> None:
    prefix, t0 = pg_rows
    cfg = tmp_path / "pg.yaml"
    cfg.write_text(yaml.safe_dump({"database": {"url": pg_url}}))
    window = ["--since", t0.isoformat(), "--until", (t0 + dt.timedelta(days=2)).isoformat()]
    res = run_report(home, "--config", str(cfg), *window, "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["rows"] == expected_by_model(prefix)  # nothing else lives in this window
    assert out["totals"] == {**EXPECTED_TOTALS, "cost": "0.012500003", "cost_per_success": "0.003125001"}
    table = run_report(home, "--config", str(cfg), *window)
    assert table.returncode == 0, table.stderr
    assert table_line(table.stdout, f"{prefix}beta")[1:] == ["2", "1", "50.0%", "1,000", "100", "0.00", "0.00", "⚠", "2", "unpriced"]
    assert table_line(table.stdout, "total")[1:4] == ["6", "2", "33.3%"]
    assert not (home / "modelyard.db").exists()  # the configured database, not the default SQLite
