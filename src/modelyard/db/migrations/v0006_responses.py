"""v6: ``responses`` — stored Responses API objects (``responses.store.ResponseStore``).

One row per stored response: its public object (``body``, JSON text), the chat messages a
``previous_response_id`` continues from (``context``: the earlier turns, this turn's input and its
output), the create request of a background response (``request``, so that a restarted gateway can
run it again), the owning key (``key_id``; NULL without keys) and the retention deadline
(``expires_us``). Times are integer microseconds since the epoch, like the other tables.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Index, Integer, MetaData, String, Table, Text
from sqlalchemy.engine import Connection

NAME = "responses"


def upgrade(conn: Connection) -> None:
    md = MetaData()
    t = Table(
        "responses",
        md,
        Column("id", String, primary_key=True),
        Column("key_id", String, nullable=True),
        Column("model", String, nullable=False),
        Column("status", String, nullable=False),  # queued | in_progress | completed | incomplete | failed | cancelled
        Column("background", Integer, nullable=False),  # 0/1
        Column("created_us", BigInteger, nullable=False),
        Column("updated_us", BigInteger, nullable=False),
        Column("expires_us", BigInteger, nullable=False),
        Column("previous_id", String, nullable=True),
        Column("body", Text, nullable=False),  # the Response object (JSON)
        Column("context", Text, nullable=True),  # chat messages to continue from (JSON list)
        Column("input_items", Text, nullable=True),  # this turn's input items (JSON list)
        Column("request", Text, nullable=True),  # a background response's create body (JSON)
    )
    Index("ix_responses_pending", t.c.background, t.c.status)
    Index("ix_responses_expires", t.c.expires_us)
    md.create_all(conn)
