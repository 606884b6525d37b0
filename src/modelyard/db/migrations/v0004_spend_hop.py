"""v4: ``spend_rows.hop`` — a request asked several models (cascade tiers): one row per hop.

The escalated hops' rows carry ``<request id>#<hop>`` and the answer's row the request id itself,
so the primary key stays and old rows need no rewrite (``hop`` 0, added with a constant default:
no table rebuild on SQLite, a metadata-only change on PostgreSQL 11+).
"""

from __future__ import annotations

from sqlalchemy.engine import Connection
from sqlalchemy.sql import text

NAME = "spend_hop"


def upgrade(conn: Connection) -> None:
    conn.execute(text("ALTER TABLE spend_rows ADD COLUMN hop INTEGER NOT NULL DEFAULT 0"))
