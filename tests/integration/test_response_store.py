"""The stored-responses table on real SQLite and PostgreSQL: tenancy, conditional state changes, retention."""

from __future__ import annotations

from typing import Any

import pytest

from modelyard.db import Database, sqlite_url
from modelyard.responses.store import ANY, ResponseStore


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    if request.param == "sqlite":
        return sqlite_url(tmp_path / "r.db")
    return request.getfixturevalue("pg_database")


@pytest.fixture
async def store(url: str):  # noqa: ANN201
    db = Database(url)
    await db.start()
    try:
        yield ResponseStore(db)
    finally:
        await db.aclose()


async def _put(store: ResponseStore, rid: str, key: str | None, *, status: str = "completed", background: bool = False,
               now: int = 1_000, ttl: int = 10_000) -> None:
    await store.put(id=rid, key_id=key, model="m", status=status, background=background, now_us=now,
                    expires_us=now + ttl, previous_id=None, body={"id": rid, "status": status},
                    context=[{"role": "user", "content": rid}], input_items=[], request={"model": "m", "input": rid})


async def test_a_key_sees_only_its_own_and_the_master_every_one(store: ResponseStore) -> None:
    await _put(store, "resp_a", "key-a")
    await _put(store, "resp_open", None)
    assert (await store.get("resp_a", "key-a", now_us=2_000)).context == [{"role": "user", "content": "resp_a"}]
    assert await store.get("resp_a", "key-b", now_us=2_000) is None
    assert await store.get("resp_a", None, now_us=2_000) is None
    assert (await store.get("resp_a", ANY, now_us=2_000)) is not None
    assert (await store.get("resp_open", None, now_us=2_000)) is not None
    assert not await store.delete("resp_a", "key-b")
    assert await store.delete("resp_a", "key-a")
    assert await store.get("resp_a", ANY, now_us=2_000) is None


async def test_cancel_and_finish_have_one_winner(store: ResponseStore) -> None:
    await _put(store, "resp_bg", "k", status="queued", background=True)
    assert [r.id for r in await store.pending()] == ["resp_bg"]
    assert await store.cancel("resp_bg", "k", {"id": "resp_bg", "status": "cancelled"}, now_us=3_000)
    # the runner's completion arrives after the cancel: it loses
    assert not await store.finish("resp_bg", status="completed", body={"status": "completed"}, context=None,
                                  now_us=3_001)
    row = await store.get("resp_bg", "k", now_us=3_002)
    assert row.status == "cancelled" and row.body["status"] == "cancelled"
    assert await store.pending() == []
    assert not await store.cancel("resp_bg", "k", {}, now_us=3_003)  # already final


async def test_retention_purges_expired_rows_and_hides_them_before(store: ResponseStore) -> None:
    await _put(store, "resp_old", "k", now=0, ttl=100)
    await _put(store, "resp_new", "k", now=0, ttl=10_000)
    assert await store.get("resp_old", "k", now_us=150) is None  # expired: not found even before the purge
    assert await store.purge(150) == 1
    assert await store.get("resp_new", "k", now_us=150) is not None
