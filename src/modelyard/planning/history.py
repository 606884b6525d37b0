"""Reading what ``modelyard analyze`` needs from the database (SQLite or PostgreSQL): the spend rows
of a window, streamed in (model, time) order, and the tier-event counts, aggregated in SQL.

The spend scan reads four narrow columns through ``ix_spend_model_ts`` (model, ts_us, request_id)
and streams them in partitions (a server-side cursor on PostgreSQL), folding each partition into
``analyze.Fold`` as it arrives: 14 days of nine models (a few hundred thousand rows) never sit in
memory as row objects. Foreign database errors become ``DatabaseError``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from modelyard.accounting.store import spend_rows
from modelyard.accounting.tier_events import TierEvent, insert_events, tier_events
from modelyard.db import Database, DatabaseError
from modelyard.epoch import to_us

from .analyze import Fold

PARTITION = 20_000


async def fold_spend(db: Database, fold: Fold) -> Fold:
    """Stream the window's spend rows into ``fold`` (all hops and statuses: each row is one request a
    model served or tried to)."""
    t = spend_rows
    q = (select(t.c.model, t.c.ts_us, t.c.latency_ms, t.c.prompt_tokens + t.c.completion_tokens)
         .where(t.c.ts_us >= fold.since_us, t.c.ts_us < fold.until_us)
         .order_by(t.c.model, t.c.ts_us, t.c.request_id))
    add = fold.add
    try:
        async with db.engine.connect() as conn:
            result = await conn.stream(q.execution_options(yield_per=PARTITION))
            async for part in result.partitions(PARTITION):
                for model, ts_us, latency_ms, tokens in part:
                    add(model, int(ts_us), float(latency_ms), int(tokens))
    except (SQLAlchemyError, OSError) as exc:
        raise DatabaseError(f"spend rows query failed: {exc.__class__.__name__}: {exc}") from exc
    return fold


async def tier_event_counts(db: Database, since: dt.datetime, until: dt.datetime) -> dict[str, dict[str, int]]:
    """``{model: {"<from>→<to> <reason>": count}}`` over ``[since, until)``."""
    t = tier_events
    q = (select(t.c.model, t.c.from_tier, t.c.to_tier, t.c.reason, func.count())
         .where(t.c.ts_us >= to_us(since), t.c.ts_us < to_us(until))
         .group_by(t.c.model, t.c.from_tier, t.c.to_tier, t.c.reason))
    out: dict[str, dict[str, int]] = {}
    try:
        async with db.engine.connect() as conn:
            for model, src, dst, reason, n in (await conn.execute(q)).all():
                out.setdefault(model, {})[f"{src}→{dst} {reason}"] = int(n)
    except (SQLAlchemyError, OSError) as exc:
        raise DatabaseError(f"tier events query failed: {exc.__class__.__name__}: {exc}") from exc
    return out


async def load_tier_events(db: Database, events: Sequence[TierEvent], batch: int = 5000) -> None:
    for i in range(0, len(events), batch):
        await insert_events(db, list(events[i:i + batch]))
