"""v1: the spend_rows table and the indexes that keep logs and reports fast at millions of rows.

Frozen: a migration describes the schema as it was at its version, so it defines its own tables
instead of importing the store's current ones. Change the schema with a new ``v000N_*.py``.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Column, Float, Index, Integer, MetaData, String, Table
from sqlalchemy.engine import Connection

NAME = "spend_rows"


def upgrade(conn: Connection) -> None:
    md = MetaData()
    t = Table(
        "spend_rows",
        md,
        Column("request_id", String, primary_key=True),
        Column("ts_us", BigInteger, nullable=False),  # UTC, microseconds since the epoch
        Column("key_hash", String, nullable=True),
        Column("team", String, nullable=True),
        Column("model", String, nullable=False),
        Column("deployment", String, nullable=False),
        Column("prompt_tokens", BigInteger, nullable=False),
        Column("completion_tokens", BigInteger, nullable=False),
        Column("cost_nano", BigInteger, nullable=False),  # currency units * 1e9
        Column("priced", Boolean, nullable=False),
        Column("latency_ms", Float, nullable=False),
        Column("status", Integer, nullable=False),
        Column("fallbacks", Integer, nullable=False),
        Column("stream", Boolean, nullable=False),
    )
    # request_id closes every index: keyset pages order by (ts, request_id) and then read no sort.
    Index("ix_spend_ts", t.c.ts_us, t.c.request_id)
    Index("ix_spend_key_ts", t.c.key_hash, t.c.ts_us, t.c.request_id)
    Index("ix_spend_model_ts", t.c.model, t.c.ts_us, t.c.request_id)
    Index("ix_spend_team_ts", t.c.team, t.c.ts_us, t.c.request_id)
    md.create_all(conn)
