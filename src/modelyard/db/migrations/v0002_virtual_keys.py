"""v2: the virtual_keys table (``auth.store.KeyStore``).

Frozen, like v1: the table as it was at this version. Salt and digest are hex text and models and
metadata JSON text, so that one definition means the same in SQLite and PostgreSQL; times are
integer microseconds since the epoch and the budget integer nano-units, as in ``spend_rows``.
``updated_us`` is indexed: every replica polls ``WHERE updated_us >= …`` every few seconds.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Index, MetaData, String, Table, Text
from sqlalchemy.engine import Connection

NAME = "virtual_keys"


def upgrade(conn: Connection) -> None:
    md = MetaData()
    t = Table(
        "virtual_keys",
        md,
        Column("id", String, primary_key=True),  # 12 hex digits, the key's public half
        Column("salt", String, nullable=False),  # hex
        Column("digest", String, nullable=False),  # hex of sha256(salt + secret)
        Column("alias", String, nullable=True),
        Column("team_id", String, nullable=True),
        Column("models", Text, nullable=False),  # JSON list; [] = every model
        Column("rpm_limit", BigInteger, nullable=True),
        Column("tpm_limit", BigInteger, nullable=True),
        Column("max_budget_nano", BigInteger, nullable=True),  # currency units * 1e9
        Column("budget_duration", String, nullable=True),
        Column("created_us", BigInteger, nullable=False),
        Column("expires_us", BigInteger, nullable=True),
        Column("revoked_us", BigInteger, nullable=True),
        Column("updated_us", BigInteger, nullable=False),
        Column("metadata", Text, nullable=False),  # JSON object of strings
    )
    Index("ix_virtual_keys_updated", t.c.updated_us)
    Index("ix_virtual_keys_created", t.c.created_us, t.c.id)
    md.create_all(conn)
