"""v5: ``tier_events`` — every tier change the memory manager makes (loads, demotions, evictions, unloads).

One row per completed move, written off the request path by ``accounting.tier_events.TierEventWriter``
and read by ``modelyard analyze``. Timestamps are integer microseconds since the epoch (UTC), like
``spend_rows``; ``ix_tier_events_ts`` serves the analyzer's window scan.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Index, Integer, MetaData, String, Table
from sqlalchemy.engine import Connection

NAME = "tier_events"


def upgrade(conn: Connection) -> None:
    md = MetaData()
    t = Table(
        "tier_events",
        md,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("ts_us", BigInteger, nullable=False),
        Column("model", String, nullable=False),  # the public model name (the key when unknown)
        Column("deployment", String, nullable=False),  # the manager's key of the deployment
        Column("from_tier", String, nullable=False),  # active | host | disk
        Column("to_tier", String, nullable=False),
        Column("bytes", BigInteger, nullable=False),  # the model's bytes on the tier it left or reached
        Column("reason", String, nullable=False),  # load | eviction | idle | demote | unload | shutdown | ...
    )
    Index("ix_tier_events_ts", t.c.ts_us)
    md.create_all(conn)
