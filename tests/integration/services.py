"""The real services some tests need (Redis, PostgreSQL): reach them, or skip saying why — except
under ``CI=true``, where a missing service fails the run (CI machines have both)."""

from __future__ import annotations

import os

import pytest
import redis

REDIS_URL = os.environ.get("MODELYARD_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
PG_ADMIN = os.environ.get("MODELYARD_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


def missing(reason: str) -> None:
    """Skip on a developer machine; fail under CI=true."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true: {reason}", pytrace=False)
    pytest.skip(reason)


def require_redis(url: str) -> None:
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1, retry=None)
        try:
            client.ping()
        finally:
            client.close()
    except (redis.RedisError, OSError) as exc:
        missing(f"Redis not reachable at {url} ({exc}); start redis-server or set MODELYARD_TEST_REDIS_URL")


def redis_cleanup(url: str, prefix: str) -> None:
    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=prefix + "*"))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


async def _pg_admin_exec(*statements: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_ADMIN, timeout=3)
    try:
        for sql in statements:
            await conn.execute(sql)
    finally:
        await conn.close()


def pg_create_database(name: str) -> str:
    """A fresh PostgreSQL database (skip/fail if there is no server): its SQLAlchemy URL."""
    import asyncio

    import asyncpg

    try:
        asyncio.run(_pg_admin_exec(f'CREATE DATABASE "{name}"'))
    except (OSError, asyncpg.PostgresError, asyncio.TimeoutError) as exc:
        missing(f"PostgreSQL not reachable at {PG_ADMIN} ({exc.__class__.__name__}: {exc}); set MODELYARD_TEST_PG")
    base = PG_ADMIN.replace("postgresql://", "postgresql+asyncpg://", 1).rsplit("/", 1)[0]
    return f"{base}/{name}"


def pg_drop_database(name: str) -> None:
    import asyncio

    asyncio.run(_pg_admin_exec(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
