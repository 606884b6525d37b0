"""v8: ``spend_daily`` — the spend rows summed per UTC day × model × deployment × key × team.

``/spend/report`` answers the whole days of a range from here and only the partial days at its
edges from ``spend_rows`` (``accounting/store.py``), so a 30-day report no longer aggregates every row.

Kept up to date by a trigger on ``spend_rows``, in the transaction that inserts the rows, whatever
inserts them (the writer's sinks, ``insert_many``, a bulk load). A trigger sees only the rows that
were actually inserted: a replayed row skipped by ``INSERT OR IGNORE`` / ``ON CONFLICT
(request_id) DO NOTHING`` fires nothing, so a row counted once in ``spend_rows`` is counted once here.

- SQLite: a row trigger, one upsert per inserted row (SQLite has no statement triggers).
- PostgreSQL: a statement trigger over the transition table of the inserted rows: one aggregated
  upsert per statement (one per writer batch), its groups in key order so that two writers that
  touch the same groups lock them in the same order (no deadlock).

``key_hash`` / ``team`` are NOT NULL here with ``''`` standing for NULL (a unique key treats NULLs
as distinct, so an upsert could never match them); a key id or team is never empty (keys.py
refuses an empty team_id), and the report maps ``''`` back to NULL. ``day`` is ``ts_us / 86400e6``
(integer division), the same expression the report groups raw rows by. Rows are never deleted
from ``spend_rows``; a future retention job must subtract here too.

The backfill sums the existing rows in SQL, after the trigger exists and under a table lock
(PostgreSQL) or the migration's ``BEGIN IMMEDIATE`` (SQLite), so no row is missed or counted twice.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, MetaData, PrimaryKeyConstraint, String, Table
from sqlalchemy.engine import Connection

NAME = "spend_daily"

KEYS = ("day", "model", "deployment", "key_hash", "team")
SUMS = ("requests", "errors", "prompt_tokens", "completion_tokens", "cost_nano", "unpriced")
_UPDATE = ", ".join(f"{c} = spend_daily.{c} + excluded.{c}" for c in SUMS)
_COLS = ", ".join(KEYS + SUMS)


def _grouped(source: str) -> str:
    """Sum ``source``'s rows into spend_daily's shape (the backfill and the PostgreSQL trigger)."""
    return (
        f"SELECT ts_us / 86400000000, model, deployment, COALESCE(key_hash, ''), COALESCE(team, ''), "
        "COUNT(*), SUM(CASE WHEN status >= 400 THEN 1 ELSE 0 END), SUM(prompt_tokens), SUM(completion_tokens), "
        f"SUM(cost_nano), SUM(CASE WHEN priced THEN 0 ELSE 1 END) FROM {source} "
        "GROUP BY 1, 2, 3, 4, 5"
    )


def upgrade(conn: Connection) -> None:
    md = MetaData()
    Table(
        "spend_daily", md,
        Column("day", BigInteger, nullable=False),  # UTC day number: ts_us // 86400e6
        Column("model", String, nullable=False),
        Column("deployment", String, nullable=False),
        Column("key_hash", String, nullable=False),  # '' = NULL
        Column("team", String, nullable=False),  # '' = NULL
        Column("requests", BigInteger, nullable=False),
        Column("errors", BigInteger, nullable=False),  # status >= 400 (successes = requests - errors)
        Column("prompt_tokens", BigInteger, nullable=False),
        Column("completion_tokens", BigInteger, nullable=False),
        Column("cost_nano", BigInteger, nullable=False),
        Column("unpriced", BigInteger, nullable=False),
        PrimaryKeyConstraint(*KEYS, name="pk_spend_daily"),
        **({"sqlite_with_rowid": False} if conn.dialect.name == "sqlite" else {}),
    )
    md.create_all(conn)
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql("LOCK TABLE spend_rows IN SHARE ROW EXCLUSIVE MODE")
        conn.exec_driver_sql(
            "CREATE FUNCTION modelyard_spend_daily_add() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            f"INSERT INTO spend_daily ({_COLS}) {_grouped('modelyard_new_spend')} ORDER BY 1, 2, 3, 4, 5 "
            f"ON CONFLICT (day, model, deployment, key_hash, team) DO UPDATE SET {_UPDATE}; "
            "RETURN NULL; END $$"
        )
        conn.exec_driver_sql(
            "CREATE TRIGGER spend_daily_add AFTER INSERT ON spend_rows REFERENCING NEW TABLE AS modelyard_new_spend "
            "FOR EACH STATEMENT EXECUTE PROCEDURE modelyard_spend_daily_add()"
        )
    else:
        conn.exec_driver_sql(
            "CREATE TRIGGER spend_daily_add AFTER INSERT ON spend_rows BEGIN "
            f"INSERT INTO spend_daily ({_COLS}) VALUES (NEW.ts_us / 86400000000, NEW.model, NEW.deployment, "
            "COALESCE(NEW.key_hash, ''), COALESCE(NEW.team, ''), 1, NEW.status >= 400, NEW.prompt_tokens, "
            "NEW.completion_tokens, NEW.cost_nano, NOT NEW.priced) "
            f"ON CONFLICT (day, model, deployment, key_hash, team) DO UPDATE SET {_UPDATE}; END"
        )
    conn.exec_driver_sql(f"INSERT INTO spend_daily ({_COLS}) {_grouped('spend_rows')}")
