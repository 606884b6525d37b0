"""Several gateway replicas and real shared services: Redis for limits and budgets, PostgreSQL for
keys and spend — including PostgreSQL going away under load.
"""

from __future__ import annotations

import asyncio
import signal
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import httpx

from .support import Gateway, ProcessPool, deployment, model_cfg, wait_until
from .tcp_relay import TcpRelay

MASTER = "sk-master-shared-0123"
MSG = [{"role": "user", "content": "hi"}]


async def _blast(urls: list[str], n_each: int, headers: dict[str, str], model: str) -> list[int]:
    """``n_each`` concurrent chat requests to each gateway; every status (none may be lost)."""
    async with httpx.AsyncClient(timeout=30) as c:
        async def one(url: str) -> int:
            r = await c.post(f"{url}/v1/chat/completions", json={"model": model, "messages": MSG}, headers=headers)
            return r.status_code

        return list(await asyncio.gather(*(one(u) for u in urls for _ in range(n_each))))


def _two(procs: ProcessPool, config: dict[str, Any]) -> tuple[Gateway, Gateway]:
    return procs.gateway(config), procs.gateway(config)


def test_two_gateways_sharing_redis_enforce_one_rpm_limit(procs: ProcessPool, redis_url: str, redis_prefix: str, tmp_path) -> None:  # noqa: ANN001
    mock = procs.mock()
    config = {
        "memory": {"data_dir": str(tmp_path / "home")},
        "auth": {"master_key": MASTER, "refresh_interval_s": 0.5},
        "limits": {"redis_url": redis_url, "redis_prefix": redis_prefix, "fail_open": False},
        "router": {"retry": {"num_retries": 0}},
        "models": [model_cfg("m", deployment(mock, "up"), rpm=20), model_cfg("k", deployment(mock, "up-k"))],
    }
    g1, g2 = _two(procs, config)
    auth = {"authorization": f"Bearer {MASTER}"}

    # a model's rpm: 2 x 30 concurrent requests, exactly 20 admitted, every one answered
    statuses = asyncio.run(_blast([g1.url, g2.url], 30, auth, "m"))
    assert len(statuses) == 60
    assert statuses.count(200) == 20 and statuses.count(429) == 40, statuses
    assert mock.stats()["requests"] == 20

    # a key's rpm: the key is made on one replica and used on both (one database, one Redis)
    r = g1.http.post("/key/generate", json={"rpm_limit": 10}, headers=auth)
    key = r.json()["key"]
    statuses = asyncio.run(_blast([g1.url, g2.url], 15, {"authorization": f"Bearer {key}"}, "k"))
    assert statuses.count(200) == 10 and statuses.count(429) == 20, statuses


def test_budget_shared_by_replicas_through_redis(procs: ProcessPool, redis_url: str, redis_prefix: str, tmp_path) -> None:  # noqa: ANN001
    mock = procs.mock()
    config = {
        "memory": {"data_dir": str(tmp_path / "home")},
        "auth": {"master_key": MASTER},
        "limits": {"redis_url": redis_url, "redis_prefix": redis_prefix},
        "spend": {"flush_interval_s": 0.1},
        "models": [model_cfg("p", deployment(mock, "up-p"), price={"input_per_1k": 100.0, "output_per_1k": 100.0})],
    }
    g1, g2 = _two(procs, config)
    auth = {"authorization": f"Bearer {MASTER}"}
    body = g1.http.post("/key/generate", json={"max_budget": 6, "budget_duration": "1d"}, headers=auth).json()
    headers = {"authorization": f"Bearer {body['key']}"}
    served = 0
    for i in range(100):  # alternate replicas until the budget is spent
        gw = (g1, g2)[i % 2]
        r = gw.http.post("/v1/chat/completions", json={"model": "p", "messages": MSG}, headers=headers)
        if r.status_code == 429:
            assert r.json()["error"]["code"] == "budget_exceeded"
            break
        assert r.status_code == 200, r.text
        served += 1
    else:
        raise AssertionError("the budget was never enforced")
    # the other replica refuses too: the counter is shared
    for gw in (g1, g2):
        r = gw.http.post("/v1/chat/completions", json={"model": "p", "messages": MSG}, headers=headers)
        assert r.status_code == 429 and r.json()["error"]["code"] == "budget_exceeded"
    rows = wait_until(
        lambda: (lambda d: d if len(d) == served else None)(
            g1.http.get("/spend/logs", params={"key_hash": body["token"]}, headers=auth).json()["data"]
        ),
        5, "the key's spend rows",
    )
    costs = [Decimal(x["cost"]) for x in rows]
    assert sum(costs) >= 6 and sum(costs) - max(costs) < 6  # stopped at the first request past the budget


def test_database_unreachable_mid_load_loses_no_request_and_no_row(procs: ProcessPool, pg_database: str, tmp_path) -> None:  # noqa: ANN001
    u = urlsplit(pg_database)
    relay = TcpRelay((u.hostname or "127.0.0.1", u.port or 5432))
    try:
        via_relay = pg_database.replace(f"{u.hostname}:{u.port}", f"127.0.0.1:{relay.port}")
        mock = procs.mock()
        config = {
            "memory": {"data_dir": str(tmp_path / "home")},
            "database": {"url": via_relay},
            "auth": {"master_key": MASTER, "refresh_interval_s": 0.3},
            "spend": {"flush_interval_s": 0.1},
            "models": [model_cfg("m", deployment(mock, "up"))],
        }
        gw = procs.gateway(config)
        auth = {"authorization": f"Bearer {MASTER}"}
        key = gw.http.post("/key/generate", json={"key_alias": "survivor"}, headers=auth).json()["key"]
        as_key = {"authorization": f"Bearer {key}"}

        def traffic(n: int) -> list[int]:
            return [
                gw.http.post("/v1/chat/completions", json={"model": "m", "messages": MSG}, headers=h).status_code
                for i in range(n)
                for h in ((auth, as_key)[i % 2],)
            ]

        assert traffic(20) == [200] * 20
        relay.cut()  # PostgreSQL unreachable: connections reset, new ones refused
        assert traffic(40) == [200] * 40  # the master key and the cached virtual key still work
        try:
            wait_until(lambda: (tmp_path / "home" / "spend.spool").exists(), 10, "rows to be spooled")
        except AssertionError:
            print("\n".join(x for x in gw.stderr_text().splitlines() if not x.startswith("{"))[-4000:])
            raise
        relay.restore()
        assert traffic(20) == [200] * 20

        async def count() -> int:
            conn = await asyncpg.connect(pg_database.replace("postgresql+asyncpg://", "postgresql://"))
            try:
                return int(await conn.fetchval("SELECT count(*) FROM spend_rows WHERE model = 'm'"))
            finally:
                await conn.close()

        wait_until(lambda: asyncio.run(count()) == 80, 30, "every row, spooled ones included, in PostgreSQL", interval=0.3)
        gw.signal(signal.SIGTERM)
        assert gw.wait(30) == 0, gw.describe()
        assert asyncio.run(count()) == 80
    finally:
        relay.close()
