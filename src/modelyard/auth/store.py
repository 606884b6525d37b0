"""The virtual-key table: create, read, revoke, and "what changed since" for the replicas' caches.

The request path never calls this store: it reads ``auth.ring.KeyRing``, which loads every key once
and then polls ``changed_since``. So the store's only performance duty is a cheap poll, which the
index on ``updated_us`` gives.

``updated_us`` orders changes. Within one store it is strictly increasing per write
(``max(now_us, previous + 1)``), so two writes in the same microsecond stay distinguishable. Across
processes and hosts nothing orders it: two replicas can write the same value, a clock can lag, and a
transaction can commit after one with a larger value was already read. The ring therefore re-reads
an overlap (``>= last seen - overlap``) and de-duplicates by id; see ``auth.ring``.

Errors: foreign database errors become ``KeyStoreError`` whose message names the operation and the
exception's class only; SQLAlchemy's own message would quote the statement's parameters (salts and
digests — not secrets, the secret is never sent to the database, but not for logs either).
"""

from __future__ import annotations

import builtins
import datetime as dt
import logging
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import orjson
from sqlalchemy import BigInteger, Column, Integer, MetaData, String, Table, Text, insert, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from modelyard.db import Database, DatabaseError

from modelyard.epoch import from_us, to_us

from .keys import PRIORITIES, VirtualKey

log = logging.getLogger("modelyard.auth")

_NANO = Decimal("0.000000001")
_CHUNK = 500  # ids per IN (...) list: far below SQLite's and asyncpg's parameter limits


class KeyStoreError(DatabaseError):
    """The key database failed or is unreachable (admin calls answer 503; the ring keeps its view)."""

    status = 503
    type = "server_error"
    code = "key_store_unavailable"


_md = MetaData()
# The current shape of the table (the migrations create it; this only describes it for queries).
virtual_keys = Table(
    "virtual_keys",
    _md,
    Column("id", String, primary_key=True),
    Column("salt", String),
    Column("digest", String),
    Column("alias", String),
    Column("team_id", String),
    Column("models", Text),
    Column("rpm_limit", BigInteger),
    Column("tpm_limit", BigInteger),
    Column("max_budget_nano", BigInteger),
    Column("budget_duration", String),
    Column("created_us", BigInteger),
    Column("expires_us", BigInteger),
    Column("revoked_us", BigInteger),
    Column("updated_us", BigInteger),
    Column("metadata", Text),
    Column("priority", String),  # v3: high/normal/low or NULL (the rules decide)
    Column("allow_priority_header", Integer),  # v3: 0/1
)
_t = virtual_keys


def _params(k: VirtualKey, updated_us: int) -> dict[str, Any]:
    return {
        "id": k.id,
        "salt": k.salt.hex(),
        "digest": k.digest.hex(),
        "alias": k.alias,
        "team_id": k.team_id,
        "models": orjson.dumps(list(k.models)).decode(),
        "rpm_limit": k.rpm_limit,
        "tpm_limit": k.tpm_limit,
        "max_budget_nano": int(k.max_budget.scaleb(9).to_integral_value()) if k.max_budget is not None else None,
        "budget_duration": k.budget_duration,
        "created_us": to_us(k.created_at),
        "expires_us": to_us(k.expires_at) if k.expires_at is not None else None,
        "revoked_us": to_us(k.revoked_at) if k.revoked_at is not None else None,
        "updated_us": updated_us,
        "metadata": orjson.dumps(k.metadata, option=orjson.OPT_SORT_KEYS).decode(),
        "priority": k.priority,
        "allow_priority_header": 1 if k.allow_priority_header else 0,
    }


def _key(m: Any) -> VirtualKey:
    """A row as a VirtualKey; ``ValueError`` (or ``TypeError``) when the row is corrupt."""
    models = orjson.loads(m.models)
    metadata = orjson.loads(m.metadata)
    if not isinstance(models, list) or not all(isinstance(x, str) for x in models):
        raise ValueError("models is not a list of strings")
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise ValueError("metadata is not an object of strings")
    if m.priority is not None and m.priority not in PRIORITIES:
        raise ValueError("priority is not one of high, normal, low")
    return VirtualKey(
        id=m.id,
        salt=bytes.fromhex(m.salt),
        digest=bytes.fromhex(m.digest),
        alias=m.alias,
        team_id=m.team_id,
        models=tuple(models),
        rpm_limit=int(m.rpm_limit) if m.rpm_limit is not None else None,
        tpm_limit=int(m.tpm_limit) if m.tpm_limit is not None else None,
        max_budget=(Decimal(int(m.max_budget_nano)) * _NANO).quantize(_NANO) if m.max_budget_nano is not None else None,
        budget_duration=m.budget_duration,
        created_at=from_us(m.created_us),
        expires_at=from_us(m.expires_us) if m.expires_us is not None else None,
        revoked_at=from_us(m.revoked_us) if m.revoked_us is not None else None,
        updated_us=int(m.updated_us),
        metadata=metadata,
        priority=m.priority,
        allow_priority_header=bool(m.allow_priority_header),
    )


def _keys(rows: Sequence[Any]) -> list[VirtualKey]:
    """Decode rows, skipping (and logging) a corrupt one: one bad row must not hide every other key."""
    out = []
    for m in rows:
        try:
            out.append(_key(m))
        except (ValueError, TypeError) as exc:
            log.error("virtual key %s: corrupt row skipped (%s)", m.id, exc.__class__.__name__)
    return out


def _failed(op: str, exc: BaseException) -> KeyStoreError:
    orig = getattr(exc, "orig", None)
    cause = exc.__class__.__name__ + (f" ({orig.__class__.__name__})" if orig is not None else "")
    return KeyStoreError(f"key store {op} failed: {cause}")


class KeyStore:
    """Virtual keys in modelyard's database: ``KeyStore(db)`` shares the ``Database`` (and its pool)
    with the spend store. Its owner calls ``db.start()`` (the migrations) before using it."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._last_us = 0  # the last updated_us this store wrote: writes stay strictly increasing

    @property
    def engine(self) -> AsyncEngine:
        try:
            return self.db.engine
        except DatabaseError:
            raise KeyStoreError("key store not started (the database is not started)") from None

    def _next_us(self, now_us: int) -> int:
        # No await between the read and the write of _last_us: atomic under asyncio.
        self._last_us = max(now_us, self._last_us + 1)
        return self._last_us

    # --- writes ------------------------------------------------------------------------------

    async def create(self, key: VirtualKey) -> None:
        """Insert a new key (its ``updated_us`` may be raised by a few µs to stay increasing)."""
        params = _params(key, self._next_us(key.updated_us))
        try:
            async with self.engine.begin() as conn:
                await conn.execute(insert(_t), params)
        except (SQLAlchemyError, OSError) as exc:
            raise _failed("create", exc) from exc

    async def revoke(self, key_ids: Sequence[str], *, now: dt.datetime) -> list[str]:
        """Revoke these keys; return those revoked by this call, in the order given (unknown and
        already revoked ids are left out: revocation is final and keeps its first time)."""
        ids = list(dict.fromkeys(i for i in key_ids if isinstance(i, str)))
        if not ids:
            return []
        revoked_us = to_us(now)
        updated_us = self._next_us(revoked_us)
        done: set[str] = set()
        try:
            async with self.engine.begin() as conn:
                for i in range(0, len(ids), _CHUNK):
                    q = (
                        update(_t)
                        .where(_t.c.id.in_(ids[i : i + _CHUNK]), _t.c.revoked_us.is_(None))
                        .values(revoked_us=revoked_us, updated_us=updated_us)
                        .returning(_t.c.id)
                    )
                    done.update((await conn.execute(q)).scalars())
        except (SQLAlchemyError, OSError) as exc:
            raise _failed("revoke", exc) from exc
        return [i for i in ids if i in done]

    # --- reads -------------------------------------------------------------------------------

    async def _select(self, op: str, q: Any) -> list[VirtualKey]:
        try:
            async with self.engine.connect() as conn:
                rows = (await conn.execute(q)).all()
        except (SQLAlchemyError, OSError) as exc:
            raise _failed(op, exc) from exc
        return _keys(rows)

    async def get(self, key_id: str) -> VirtualKey | None:
        found = await self._select("get", select(_t).where(_t.c.id == key_id))
        return found[0] if found else None

    async def list(self, *, include_revoked: bool = False) -> builtins.list[VirtualKey]:
        """Every key, newest first (revoked ones only with ``include_revoked``)."""
        q = select(_t).order_by(_t.c.created_us.desc(), _t.c.id.desc())
        if not include_revoked:
            q = q.where(_t.c.revoked_us.is_(None))
        return await self._select("list", q)

    async def changed_since(self, updated_us: int) -> builtins.list[VirtualKey]:
        """Keys created or revoked with ``updated_us > updated_us`` (oldest change first)."""
        q = select(_t).where(_t.c.updated_us > int(updated_us)).order_by(_t.c.updated_us, _t.c.id)
        return await self._select("changed_since", q)
