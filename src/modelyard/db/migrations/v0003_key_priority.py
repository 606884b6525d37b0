"""v3: ``virtual_keys.priority`` and ``virtual_keys.allow_priority_header`` (issue 11 §2).

``priority``: ``high``/``normal``/``low`` or NULL (the routing rules decide, as for every key made
before this version). ``allow_priority_header``: 0/1 — an INTEGER on both databases, so that one
statement and one parameter type serve SQLite and PostgreSQL alike (asyncpg refuses a Python bool
for an INTEGER column and an int for a BOOLEAN one). Both are added with constants as defaults: no
table rebuild on SQLite, a metadata-only change on PostgreSQL 11+; existing keys keep their
behaviour (no priority, header not allowed).
"""

from __future__ import annotations

from sqlalchemy.engine import Connection
from sqlalchemy.sql import text

NAME = "key_priority"


def upgrade(conn: Connection) -> None:
    conn.execute(text("ALTER TABLE virtual_keys ADD COLUMN priority VARCHAR(16)"))
    conn.execute(text("ALTER TABLE virtual_keys ADD COLUMN allow_priority_header INTEGER NOT NULL DEFAULT 0"))
