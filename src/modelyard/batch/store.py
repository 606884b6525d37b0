"""Files, batches and batch items in modelyard's database (tables of migration v7).

The owner of every row of ``files``, ``batches`` and ``batch_items``. Tenancy is enforced here, in
the query: a key reads, lists, cancels and deletes only its own (``key_id``); the master key
(``ANY``) sees every one; without keys every caller is the same anonymous one (``None``). Another
key's object is *not found*, never "forbidden": its existence is not disclosed.

Every state move is a conditional update (``batch/states.py``); an item's result, its state and the
batch's counts change in one transaction (``commit``), which is what makes a restart resume without
running an item twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import (
    BigInteger, Column, Integer, MetaData, String, Table, Text, and_, delete, func, insert, or_, select, update,
)
from sqlalchemy.exc import SQLAlchemyError

from modelyard.batch import states
from modelyard.db import Database, DatabaseError

ANY = object()  # the master key's view

_md = MetaData()
files = Table(
    "files", _md,
    Column("id", String, primary_key=True), Column("key_id", String), Column("purpose", String),
    Column("filename", String), Column("bytes", BigInteger), Column("created_us", BigInteger),
    Column("expires_us", BigInteger),
)
_US_COLS = ("created_us", "expires_us", *states.STAMP.values())
batches = Table(
    "batches", _md,
    Column("id", String, primary_key=True), Column("key_id", String), Column("endpoint", String),
    Column("input_file_id", String), Column("completion_window", String), Column("status", String),
    Column("model", String), *(Column(c, BigInteger) for c in _US_COLS),
    Column("output_file_id", String), Column("error_file_id", String),
    Column("total", Integer), Column("completed", Integer), Column("failed", Integer),
    Column("input_tokens", BigInteger), Column("output_tokens", BigInteger),
    Column("metadata", Text), Column("errors", Text),
)
items = Table(
    "batch_items", _md,
    Column("batch_id", String, primary_key=True), Column("line", Integer, primary_key=True),
    Column("custom_id", String), Column("model", String), Column("state", String),
    Column("request", Text), Column("result", Text),
)
_f, _b, _i = files, batches, items
PENDING, DONE, FAILED = "pending", "done", "failed"


class BatchStoreError(DatabaseError):
    code = "batch_store_unavailable"


@dataclass(frozen=True, slots=True)
class FileRow:
    id: str
    key_id: str | None
    purpose: str
    filename: str
    bytes: int
    created_us: int
    expires_us: int | None


@dataclass(frozen=True, slots=True)
class Pending:
    line: int
    custom_id: str | None
    model: str | None
    request: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Result:
    """One item's outcome, committed with its state: ``ok`` → completed, else failed."""

    batch_id: str
    line: int
    ok: bool
    result: dict[str, Any]
    input_tokens: int = 0
    output_tokens: int = 0


def _owned(q: Any, table: Table, owner: Any) -> Any:
    if owner is ANY:
        return q
    return q.where(table.c.key_id.is_(None) if owner is None else table.c.key_id == owner)


def _file(r: Any) -> FileRow:
    return FileRow(r.id, r.key_id, r.purpose, r.filename, int(r.bytes), int(r.created_us),
                   int(r.expires_us) if r.expires_us is not None else None)


def batch_dict(r: Any) -> dict[str, Any]:
    d = dict(r._mapping)
    d["metadata"] = orjson.loads(d["metadata"]) if d.get("metadata") else None
    d["errors"] = orjson.loads(d["errors"]) if d.get("errors") else None
    return d


class BatchStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def _run(self, what: str, fn: Any) -> Any:
        try:
            async with self.db.engine.begin() as conn:
                return await fn(conn)
        except SQLAlchemyError as exc:
            raise BatchStoreError(f"batch store: {what} failed ({exc.__class__.__name__}: {str(exc)[:200]})") from exc

    # --- files ---------------------------------------------------------------------------------
    async def add_file(self, f: FileRow) -> None:
        async def fn(conn: Any) -> None:
            await conn.execute(insert(_f).values(id=f.id, key_id=f.key_id, purpose=f.purpose, filename=f.filename,
                                                 bytes=f.bytes, created_us=f.created_us, expires_us=f.expires_us))
        await self._run("file insert", fn)

    async def get_file(self, file_id: str, owner: Any, *, now_us: int) -> FileRow | None:
        async def fn(conn: Any) -> Any:
            q = select(_f).where(_f.c.id == file_id, or_(_f.c.expires_us.is_(None), _f.c.expires_us > now_us))
            return (await conn.execute(_owned(q, _f, owner))).first()
        row = await self._run("file read", fn)
        return _file(row) if row is not None else None

    async def list_files(self, owner: Any, *, now_us: int, purpose: str | None, limit: int, after: str | None,
                         ascending: bool) -> tuple[list[FileRow], bool]:
        async def fn(conn: Any) -> Any:
            q = select(_f).where(or_(_f.c.expires_us.is_(None), _f.c.expires_us > now_us))
            if purpose is not None:
                q = q.where(_f.c.purpose == purpose)
            q = _owned(q, _f, owner)
            if after is not None:
                cur = (await conn.execute(select(_f.c.created_us).where(_f.c.id == after))).first()
                if cur is not None:
                    key = (_f.c.created_us, _f.c.id)
                    q = q.where(_after(key, (cur.created_us, after), ascending))
            order = (_f.c.created_us.asc(), _f.c.id.asc()) if ascending else (_f.c.created_us.desc(), _f.c.id.desc())
            return (await conn.execute(q.order_by(*order).limit(limit + 1))).all()
        rows = await self._run("file list", fn)
        return [_file(r) for r in rows[:limit]], len(rows) > limit

    async def delete_file(self, file_id: str, owner: Any) -> bool:
        async def fn(conn: Any) -> int:
            return (await conn.execute(_owned(delete(_f).where(_f.c.id == file_id), _f, owner))).rowcount
        return bool(await self._run("file delete", fn))

    async def file_exists(self, file_id: str) -> bool:
        async def fn(conn: Any) -> Any:
            return (await conn.execute(select(_f.c.id).where(_f.c.id == file_id))).first()
        return await self._run("file read", fn) is not None

    # --- batches -------------------------------------------------------------------------------
    async def add_batch(self, values: dict[str, Any]) -> None:
        v = dict(values)
        v["metadata"] = orjson.dumps(v["metadata"]).decode() if v.get("metadata") is not None else None

        async def fn(conn: Any) -> None:
            await conn.execute(insert(_b).values(**v))
        await self._run("batch insert", fn)

    async def get_batch(self, batch_id: str, owner: Any = ANY) -> dict[str, Any] | None:
        async def fn(conn: Any) -> Any:
            return (await conn.execute(_owned(select(_b).where(_b.c.id == batch_id), _b, owner))).first()
        row = await self._run("batch read", fn)
        return batch_dict(row) if row is not None else None

    async def list_batches(self, owner: Any, *, limit: int, after: str | None) -> tuple[list[dict[str, Any]], bool]:
        async def fn(conn: Any) -> Any:
            q = _owned(select(_b), _b, owner)
            if after is not None:
                cur = (await conn.execute(select(_b.c.created_us).where(_b.c.id == after))).first()
                if cur is not None:
                    q = q.where(_after((_b.c.created_us, _b.c.id), (cur.created_us, after), False))
            return (await conn.execute(q.order_by(_b.c.created_us.desc(), _b.c.id.desc()).limit(limit + 1))).all()
        rows = await self._run("batch list", fn)
        return [batch_dict(r) for r in rows[:limit]], len(rows) > limit

    async def move(self, batch_id: str, dst: str, *, now_us: int, owner: Any = ANY, **values: Any) -> bool:
        """Move a batch to ``dst`` if it is in one of ``dst``'s source states: True if this call won."""
        async def fn(conn: Any) -> int:
            return await self._move(conn, batch_id, dst, now_us, owner, values)
        return bool(await self._run("batch update", fn))

    @staticmethod
    async def _move(conn: Any, batch_id: str, dst: str, now_us: int, owner: Any, values: dict[str, Any]) -> int:
        v = dict(values)
        if "errors" in v:
            v["errors"] = orjson.dumps(v["errors"]).decode() if v["errors"] is not None else None
        stamp = states.STAMP.get(dst)
        if stamp is not None:
            v[stamp] = now_us
        q = update(_b).where(_b.c.id == batch_id, _b.c.status.in_(states.sources(dst)))
        return (await conn.execute(_owned(q, _b, owner).values(status=dst, **v))).rowcount

    async def open_batches(self) -> list[dict[str, Any]]:
        async def fn(conn: Any) -> Any:
            q = select(_b).where(_b.c.status.in_(states.OPEN)).order_by(_b.c.created_us, _b.c.id)
            return (await conn.execute(q)).all()
        return [batch_dict(r) for r in await self._run("batch scan", fn)]

    async def start(self, batch_id: str, *, rows: Sequence[dict[str, Any]], failed: int, model: str | None,
                    now_us: int) -> bool:
        """Validated: every line's item written and the batch in_progress, in one transaction."""
        async def fn(conn: Any) -> int:
            won = await self._move(conn, batch_id, states.IN_PROGRESS, now_us, ANY,
                                   {"total": len(rows), "failed": failed, "model": model})
            if won:
                for i in range(0, len(rows), 500):
                    await conn.execute(insert(_i), [{"batch_id": batch_id, **r} for r in rows[i:i + 500]])
            return won
        return bool(await self._run("batch start", fn))

    # --- items ---------------------------------------------------------------------------------
    async def pending(self, batch_id: str, *, after_line: int, limit: int) -> list[Pending]:
        async def fn(conn: Any) -> Any:
            q = (select(_i.c.line, _i.c.custom_id, _i.c.model, _i.c.request)
                 .where(_i.c.batch_id == batch_id, _i.c.state == PENDING, _i.c.line > after_line)
                 .order_by(_i.c.line).limit(limit))
            return (await conn.execute(q)).all()
        rows = await self._run("item scan", fn)
        return [Pending(r.line, r.custom_id, r.model, orjson.loads(r.request)) for r in rows]

    async def commit(self, results: Sequence[Result]) -> None:
        """Each result with its item's state, and the batches' counts, in ONE transaction. An item
        that already has a result (a re-run after a restart, a batch finished meanwhile) is skipped."""
        async def fn(conn: Any) -> None:
            counts: dict[str, list[int]] = {}
            for r in results:
                q = (update(_i).where(_i.c.batch_id == r.batch_id, _i.c.line == r.line, _i.c.state == PENDING)
                     .values(state=DONE if r.ok else FAILED, result=orjson.dumps(r.result).decode()))
                if (await conn.execute(q)).rowcount:
                    c = counts.setdefault(r.batch_id, [0, 0, 0, 0])
                    c[0 if r.ok else 1] += 1
                    c[2] += r.input_tokens
                    c[3] += r.output_tokens
            for bid, (ok, bad, tin, tout) in counts.items():
                await conn.execute(update(_b).where(_b.c.id == bid).values(
                    completed=_b.c.completed + ok, failed=_b.c.failed + bad,
                    input_tokens=_b.c.input_tokens + tin, output_tokens=_b.c.output_tokens + tout))
        await self._run("item commit", fn)

    async def results(self, batch_id: str, *, after_line: int, limit: int) -> list[tuple[int, str, str | None, Any]]:
        """(line, state, custom_id, result) in line order — pending items with ``result`` None."""
        async def fn(conn: Any) -> Any:
            q = (select(_i.c.line, _i.c.state, _i.c.custom_id, _i.c.result)
                 .where(_i.c.batch_id == batch_id, _i.c.line > after_line).order_by(_i.c.line).limit(limit))
            return (await conn.execute(q)).all()
        rows = await self._run("item read", fn)
        return [(r.line, r.state, r.custom_id, orjson.loads(r.result) if r.result else None) for r in rows]

    async def finish(self, batch_id: str, dst: str, *, now_us: int, new_files: Sequence[FileRow],
                     expired_failures: int = 0, **values: Any) -> bool:
        """The final move, with the output/error files' rows, in one transaction."""
        async def fn(conn: Any) -> int:
            v = dict(values)
            if expired_failures:
                v["failed"] = _b.c.failed + expired_failures
            won = await self._move(conn, batch_id, dst, now_us, ANY, v)
            if won:
                for f in new_files:
                    await conn.execute(delete(_f).where(_f.c.id == f.id))  # a finalization cut short wrote it
                    await conn.execute(insert(_f).values(id=f.id, key_id=f.key_id, purpose=f.purpose,
                                                         filename=f.filename, bytes=f.bytes, created_us=f.created_us,
                                                         expires_us=f.expires_us))
            return won
        return bool(await self._run("batch finish", fn))

    # --- retention -----------------------------------------------------------------------------
    async def purge(self, *, now_us: int, finished_before_us: int) -> list[str]:
        """Delete expired files and batches finished before ``finished_before_us`` (with their items);
        returns the deleted files' ids (their bytes are the caller's to remove)."""
        ends = [_b.c[c] for c in ("completed_us", "failed_us", "expired_us", "cancelled_us")]

        async def fn(conn: Any) -> list[str]:
            old = select(_b.c.id).where(_b.c.status.in_(states.TERMINAL),
                                        func.coalesce(*ends) < finished_before_us)
            ids = [r.id for r in (await conn.execute(old)).all()]
            if ids:
                await conn.execute(delete(_i).where(_i.c.batch_id.in_(ids)))
                await conn.execute(delete(_b).where(_b.c.id.in_(ids)))
            gone = [r.id for r in (await conn.execute(select(_f.c.id).where(
                _f.c.expires_us.is_not(None), _f.c.expires_us <= now_us))).all()]
            if gone:
                await conn.execute(delete(_f).where(_f.c.id.in_(gone)))
            return gone
        return await self._run("purge", fn)


def _after(key: tuple[Any, Any], cursor: tuple[int, str], ascending: bool) -> Any:
    (ts, ident), (cts, cid) = key, cursor
    if ascending:
        return or_(ts > cts, and_(ts == cts, ident > cid))
    return or_(ts < cts, and_(ts == cts, ident < cid))
