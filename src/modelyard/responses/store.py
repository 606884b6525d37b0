"""Stored responses in modelyard's database (table ``responses``, migration v6).

The owner of every stored response row. Tenancy is enforced here, in the query: a key reads,
continues, deletes or cancels only its own responses (``key_id``); the master key (``key_id`` of
``ANY``) reads every one; without keys every caller is the same anonymous one (``None``). A
response of another key is *not found*, never "forbidden": its existence is not disclosed.

State changes are conditional updates (``WHERE status IN (...)``), so a cancel that races the
runner's completion has exactly one winner, also across replicas sharing the database.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import BigInteger, Column, Integer, MetaData, String, Table, Text, delete, insert, select, update
from sqlalchemy.exc import SQLAlchemyError

from modelyard.db import Database, DatabaseError

ANY = object()  # the master key's view: every key's responses
PENDING = ("queued", "in_progress")

_md = MetaData()
responses = Table(
    "responses", _md,
    Column("id", String, primary_key=True),
    Column("key_id", String),
    Column("model", String),
    Column("status", String),
    Column("background", Integer),
    Column("created_us", BigInteger),
    Column("updated_us", BigInteger),
    Column("expires_us", BigInteger),
    Column("previous_id", String),
    Column("body", Text),
    Column("context", Text),
    Column("input_items", Text),
    Column("request", Text),
)
_t = responses


class ResponseStoreError(DatabaseError):
    code = "response_store_unavailable"


@dataclass(frozen=True, slots=True)
class Stored:
    id: str
    key_id: str | None
    status: str
    background: bool
    body: dict[str, Any]
    context: list[dict[str, Any]] | None
    input_items: list[dict[str, Any]] | None
    request: dict[str, Any] | None


def _owned(query: Any, key_id: Any) -> Any:
    if key_id is ANY:
        return query
    return query.where(_t.c.key_id.is_(None) if key_id is None else _t.c.key_id == key_id)


def _loads(v: str | None) -> Any:
    return orjson.loads(v) if v else None


class ResponseStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def _run(self, what: str, fn: Any) -> Any:
        try:
            async with self._db.engine.begin() as conn:
                return await fn(conn)
        except SQLAlchemyError as exc:
            raise ResponseStoreError(f"response store: {what} failed ({exc.__class__.__name__})") from exc

    async def put(self, *, id: str, key_id: str | None, model: str, status: str, background: bool, now_us: int,
                  expires_us: int, previous_id: str | None, body: dict[str, Any],
                  context: list[dict[str, Any]] | None, input_items: list[dict[str, Any]] | None,
                  request: dict[str, Any] | None) -> None:
        values = dict(id=id, key_id=key_id, model=model, status=status, background=int(background),
                      created_us=now_us, updated_us=now_us, expires_us=expires_us, previous_id=previous_id,
                      body=orjson.dumps(body).decode(),
                      context=orjson.dumps(context).decode() if context is not None else None,
                      input_items=orjson.dumps(input_items).decode() if input_items is not None else None,
                      request=orjson.dumps(request).decode() if request is not None else None)

        async def fn(conn: Any) -> None:
            await conn.execute(insert(_t).values(**values))
        await self._run("insert", fn)

    async def get(self, id: str, key_id: Any, *, now_us: int) -> Stored | None:
        async def fn(conn: Any) -> Any:
            q = _owned(select(_t).where(_t.c.id == id, _t.c.expires_us > now_us), key_id)
            return (await conn.execute(q)).first()
        row = await self._run("read", fn)
        if row is None:
            return None
        return Stored(row.id, row.key_id, row.status, bool(row.background), orjson.loads(row.body),
                      _loads(row.context), _loads(row.input_items), _loads(row.request))

    async def finish(self, id: str, *, status: str, body: dict[str, Any], context: list[dict[str, Any]] | None,
                     now_us: int, only_from: tuple[str, ...] = PENDING) -> bool:
        """Set the final state unless the row has left ``only_from`` (cancelled, deleted): True if it won."""
        values: dict[str, Any] = dict(status=status, body=orjson.dumps(body).decode(), updated_us=now_us)
        if context is not None:
            values["context"] = orjson.dumps(context).decode()

        async def fn(conn: Any) -> int:
            res = await conn.execute(update(_t).where(_t.c.id == id, _t.c.status.in_(only_from)).values(**values))
            return res.rowcount
        return bool(await self._run("update", fn))

    async def cancel(self, id: str, key_id: Any, body: dict[str, Any], *, now_us: int) -> bool:
        async def fn(conn: Any) -> int:
            q = _owned(update(_t).where(_t.c.id == id, _t.c.status.in_(PENDING), _t.c.background == 1), key_id)
            res = await conn.execute(q.values(status="cancelled", body=orjson.dumps(body).decode(), updated_us=now_us))
            return res.rowcount
        return bool(await self._run("cancel", fn))

    async def delete(self, id: str, key_id: Any) -> bool:
        async def fn(conn: Any) -> int:
            return (await conn.execute(_owned(delete(_t).where(_t.c.id == id), key_id))).rowcount
        return bool(await self._run("delete", fn))

    async def pending(self, limit: int = 1000) -> list[Stored]:
        """Background responses that were queued or running (at a restart: to run again)."""
        async def fn(conn: Any) -> Any:
            q = select(_t).where(_t.c.background == 1, _t.c.status.in_(PENDING)).order_by(_t.c.created_us).limit(limit)
            return (await conn.execute(q)).all()
        rows = await self._run("scan", fn)
        return [Stored(r.id, r.key_id, r.status, True, orjson.loads(r.body), _loads(r.context),
                       _loads(r.input_items), _loads(r.request)) for r in rows]

    async def purge(self, now_us: int) -> int:
        """Delete every response past its retention; returns how many."""
        async def fn(conn: Any) -> int:
            return (await conn.execute(delete(_t).where(_t.c.expires_us <= now_us))).rowcount
        return int(await self._run("purge", fn))
