"""v7: the Batch API — ``files``, ``batches``, ``batch_items``; ``spend_rows.batch_id``.

- ``files``: uploaded and produced files (their bytes live under ``<data_dir>/files/``): owner
  (``key_id``; NULL without keys), purpose, name, size, times (integer µs since the epoch).
- ``batches``: one row per batch — its state, OpenAI's timestamps, the request counts and token
  usage, the output/error file ids, ``metadata`` and ``errors`` (JSON text).
- ``batch_items``: one row per input line (``line`` from 1), written when the batch is validated:
  the request body to run (NULL for a line that was invalid), ``state`` (pending | done | failed)
  and the output line (``result``, JSON text). An item's result and state are committed together,
  so a restarted gateway resumes at the first item without a result and no item runs twice.
  ``(batch_id, custom_id)`` is unique: duplicate custom ids are refused at validation, and the
  index makes that a database guarantee.
- ``spend_rows.batch_id``: the batch a spend row was spent for (NULL: an interactive request).
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Index, Integer, MetaData, PrimaryKeyConstraint, String, Table, Text, UniqueConstraint
from sqlalchemy.engine import Connection
from sqlalchemy.sql import text

NAME = "batches"


def upgrade(conn: Connection) -> None:
    md = MetaData()
    files = Table(
        "files", md,
        Column("id", String, primary_key=True),
        Column("key_id", String, nullable=True),
        Column("purpose", String, nullable=False),
        Column("filename", String, nullable=False),
        Column("bytes", BigInteger, nullable=False),
        Column("created_us", BigInteger, nullable=False),
        Column("expires_us", BigInteger, nullable=True),
    )
    Index("ix_files_owner", files.c.key_id, files.c.created_us)
    batches = Table(
        "batches", md,
        Column("id", String, primary_key=True),
        Column("key_id", String, nullable=True),
        Column("endpoint", String, nullable=False),
        Column("input_file_id", String, nullable=False),
        Column("completion_window", String, nullable=False),
        Column("status", String, nullable=False),
        Column("model", String, nullable=True),
        Column("created_us", BigInteger, nullable=False),
        Column("expires_us", BigInteger, nullable=False),
        Column("in_progress_us", BigInteger, nullable=True),
        Column("finalizing_us", BigInteger, nullable=True),
        Column("completed_us", BigInteger, nullable=True),
        Column("failed_us", BigInteger, nullable=True),
        Column("expired_us", BigInteger, nullable=True),
        Column("cancelling_us", BigInteger, nullable=True),
        Column("cancelled_us", BigInteger, nullable=True),
        Column("output_file_id", String, nullable=True),
        Column("error_file_id", String, nullable=True),
        Column("total", Integer, nullable=False, server_default="0"),
        Column("completed", Integer, nullable=False, server_default="0"),
        Column("failed", Integer, nullable=False, server_default="0"),
        Column("input_tokens", BigInteger, nullable=False, server_default="0"),
        Column("output_tokens", BigInteger, nullable=False, server_default="0"),
        Column("metadata", Text, nullable=True),
        Column("errors", Text, nullable=True),
    )
    Index("ix_batches_owner", batches.c.key_id, batches.c.created_us)
    Index("ix_batches_status", batches.c.status)
    items = Table(
        "batch_items", md,
        Column("batch_id", String, nullable=False),
        Column("line", Integer, nullable=False),
        Column("custom_id", String, nullable=True),
        Column("model", String, nullable=True),
        Column("state", String, nullable=False),  # pending | done | failed
        Column("request", Text, nullable=True),
        Column("result", Text, nullable=True),
        PrimaryKeyConstraint("batch_id", "line"),
        UniqueConstraint("batch_id", "custom_id", name="uq_batch_items_custom_id"),
    )
    Index("ix_batch_items_state", items.c.batch_id, items.c.state, items.c.line)
    md.create_all(conn)
    conn.execute(text("ALTER TABLE spend_rows ADD COLUMN batch_id VARCHAR"))
