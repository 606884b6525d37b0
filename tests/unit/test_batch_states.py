"""A batch's states: the move table, and the store applying it on a real SQLite database — conditional
moves (one winner), an item's result committed once with its counts, tenancy in the queries, retention."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelyard.batch import states
from modelyard.batch.store import ANY, BatchStore, FileRow, Result
from modelyard.db import Database, sqlite_url


def test_the_move_table() -> None:
    assert states.TERMINAL == {states.COMPLETED, states.FAILED, states.EXPIRED, states.CANCELLED}
    assert set(states.OPEN) == {states.VALIDATING, states.IN_PROGRESS, states.FINALIZING, states.CANCELLING}
    assert states.sources(states.CANCELLING) == (states.VALIDATING, states.IN_PROGRESS)
    assert states.sources(states.COMPLETED) == (states.FINALIZING,)
    assert not states.can_move(states.COMPLETED, states.CANCELLING)
    assert not states.can_move(states.VALIDATING, states.COMPLETED)  # only through in_progress and finalizing
    for src, dsts in states.MOVES.items():
        for dst in dsts:
            assert src in states.sources(dst) and dst in states.STAMP


@pytest.fixture
async def store(tmp_path: Path):  # noqa: ANN201
    db = Database(sqlite_url(tmp_path / "t.db"))
    await db.start()
    yield BatchStore(db)
    await db.aclose()


def batch(bid: str, key: str | None = "k1", created: int = 1) -> dict:
    return {"id": bid, "key_id": key, "endpoint": "/v1/embeddings", "input_file_id": "file-1", "completion_window": "24h",
            "status": states.VALIDATING, "created_us": created, "expires_us": 10**15, "total": 0, "completed": 0,
            "failed": 0, "input_tokens": 0, "output_tokens": 0, "metadata": {"a": "b"}}


def rows(n: int) -> list[dict]:
    return [{"line": i, "custom_id": f"c{i}", "model": "m", "state": "pending", "request": "{}", "result": None}
            for i in range(1, n + 1)]


async def test_validated_batch_runs_and_each_result_counts_once(store: BatchStore) -> None:
    await store.add_batch(batch("b1"))
    assert await store.start("b1", rows=rows(3), failed=0, model="m", now_us=5)
    assert not await store.start("b1", rows=rows(3), failed=0, model="m", now_us=6)  # already started: no second set
    b = await store.get_batch("b1")
    assert (b["status"], b["total"], b["in_progress_us"], b["metadata"]) == ("in_progress", 3, 5, {"a": "b"})
    r1 = Result("b1", 1, True, {"x": 1}, 3, 4)
    await store.commit([r1, Result("b1", 2, False, {"x": 2})])
    await store.commit([r1])  # the same item again (a re-run after a restart): skipped
    b = await store.get_batch("b1")
    assert (b["completed"], b["failed"], b["input_tokens"], b["output_tokens"]) == (1, 1, 3, 4)
    assert [p.line for p in await store.pending("b1", after_line=0, limit=10)] == [3]
    assert [(ln, st) for ln, st, _, _ in await store.results("b1", after_line=0, limit=10)] == [
        (1, "done"), (2, "failed"), (3, "pending")]


async def test_moves_are_conditional_so_a_cancel_and_a_completion_have_one_winner(store: BatchStore) -> None:
    await store.add_batch(batch("b1"))
    await store.start("b1", rows=rows(1), failed=0, model="m", now_us=5)
    assert await store.move("b1", states.CANCELLING, now_us=7)
    assert not await store.move("b1", states.FINALIZING, now_us=8)  # the runner lost the race
    assert not await store.move("b1", states.CANCELLING, now_us=9)  # not twice either
    assert await store.finish("b1", states.CANCELLED, now_us=10, new_files=[])
    b = await store.get_batch("b1")
    assert (b["status"], b["cancelling_us"], b["cancelled_us"], b["finalizing_us"]) == ("cancelled", 7, 10, None)
    assert not await store.move("b1", states.CANCELLING, now_us=11)  # finished: never again


async def test_a_batch_that_never_validated_fails_with_its_errors(store: BatchStore) -> None:
    await store.add_batch(batch("b1"))
    errs = [{"code": "duplicate_custom_id", "line": 2, "param": "custom_id", "message": "m"}]
    assert await store.move("b1", states.FAILED, now_us=3, errors=errs)
    b = await store.get_batch("b1")
    assert b["status"] == "failed" and b["errors"] == errs and b["failed_us"] == 3
    assert not await store.start("b1", rows=rows(1), failed=0, model=None, now_us=4)


async def test_a_key_sees_only_its_own(store: BatchStore) -> None:
    await store.add_batch(batch("b1", "k1", 1))
    await store.add_batch(batch("b2", "k2", 2))
    await store.add_batch(batch("b3", None, 3))
    assert await store.get_batch("b1", "k2") is None and (await store.get_batch("b1", "k1"))["id"] == "b1"
    assert await store.get_batch("b3", "k1") is None and await store.get_batch("b3", None) is not None
    assert [b["id"] for b in (await store.list_batches(ANY, limit=10, after=None))[0]] == ["b3", "b2", "b1"]
    assert [b["id"] for b in (await store.list_batches("k2", limit=10, after=None))[0]] == ["b2"]
    page, more = await store.list_batches(ANY, limit=1, after="b3")
    assert [b["id"] for b in page] == ["b2"] and more
    assert not await store.move("b1", states.CANCELLING, now_us=5, owner="k2")  # another key's: not found
    f = FileRow("file-1", "k1", "batch", "in.jsonl", 10, 1, None)
    await store.add_file(f)
    assert await store.get_file("file-1", "k2", now_us=2) is None
    assert await store.get_file("file-1", "k1", now_us=2) == f
    assert not await store.delete_file("file-1", "k2") and await store.delete_file("file-1", "k1")


async def test_retention_purges_old_batches_and_expired_files(store: BatchStore) -> None:
    await store.add_batch(batch("old"))
    await store.add_batch(batch("running"))
    await store.move("old", states.FAILED, now_us=100, errors=[])
    await store.add_file(FileRow("file-a", None, "batch_output", "o.jsonl", 1, 1, 500))
    await store.add_file(FileRow("file-b", None, "batch", "i.jsonl", 1, 1, None))
    assert await store.get_file("file-a", None, now_us=600) is None  # expired: gone from reads at once
    assert await store.purge(now_us=600, finished_before_us=200) == ["file-a"]
    assert await store.get_batch("old") is None and await store.get_batch("running") is not None
    assert await store.get_file("file-b", None, now_us=600) is not None
