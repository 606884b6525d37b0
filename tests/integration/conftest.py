"""Fixtures that run the real thing: mock upstream processes and the gateway, on free loopback ports.

- ``procs`` / ``module_procs``: a ``ProcessPool`` (function / module scope); teardown stops every
  process it started and asserts that each one exited on SIGTERM.
- ``shared_mock``: one plain mock upstream per test module; ``mock`` is the same process reset
  (behaviour ``ok``, counters zeroed) for the test using it.
- ``gateway(config_dict, env=None)``: writes the YAML and starts ``modelyard serve`` on it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .support import Gateway, MockUpstream, ProcessPool


@pytest.fixture(scope="module")
def module_procs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcessPool]:
    pool = ProcessPool(tmp_path_factory.mktemp("module-procs"))
    yield pool
    pool.close()


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[ProcessPool]:
    pool = ProcessPool(tmp_path)
    yield pool
    pool.close()


@pytest.fixture(scope="module")
def shared_mock(module_procs: ProcessPool) -> MockUpstream:
    return module_procs.mock()


@pytest.fixture
def mock(shared_mock: MockUpstream) -> MockUpstream:
    shared_mock.reset("ok")
    return shared_mock


@pytest.fixture
def gateway(procs: ProcessPool):  # noqa: ANN201 - a factory
    def start(config: dict | str, *, env: dict[str, str] | None = None) -> Gateway:
        return procs.gateway(config, env=env)

    return start


@pytest.fixture
def redis_url() -> str:
    from .services import REDIS_URL, require_redis

    require_redis(REDIS_URL)
    return REDIS_URL


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix of this test's own in the real Redis, deleted afterwards."""
    import uuid

    from .services import redis_cleanup

    p = f"modelyard:test:{uuid.uuid4().hex}:"
    yield p
    redis_cleanup(redis_url, p)


@pytest.fixture
async def pg_admin():  # noqa: ANN201
    """An admin connection to PostgreSQL; skip (or, with CI=true, fail) when there is none."""
    import asyncio

    import asyncpg

    from .services import PG_ADMIN, missing

    try:
        conn = await asyncpg.connect(PG_ADMIN, timeout=3)
    except (OSError, asyncpg.PostgresError, asyncio.TimeoutError) as exc:
        missing(f"PostgreSQL not reachable at {PG_ADMIN} ({exc.__class__.__name__}: {exc}); set MODELYARD_TEST_PG")
    yield conn
    await conn.close()


@pytest.fixture
async def pg_db(pg_admin):  # noqa: ANN001, ANN201
    """A fresh temporary database of this test's own: (name, SQLAlchemy URL), dropped afterwards."""
    import uuid

    from .services import PG_ADMIN

    name = f"modelyard_it_{uuid.uuid4().hex[:12]}"
    await pg_admin.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN.replace("postgresql://", "postgresql+asyncpg://", 1).rsplit("/", 1)[0]
    try:
        yield name, f"{base}/{name}"
    finally:
        await pg_admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')  # a test may have closed it
        await pg_admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_database() -> Iterator[str]:
    """A fresh PostgreSQL database of this test's own (SQLAlchemy URL), dropped afterwards."""
    import uuid

    from .services import pg_create_database, pg_drop_database

    name = f"modelyard_it_{uuid.uuid4().hex[:12]}"
    url = pg_create_database(name)
    yield url
    pg_drop_database(name)
