"""``modelyard spend``: reports over the spend rows in the configured database.

``modelyard spend report`` reads the same database the gateway writes (``database.url``, else
SQLite at ``<data_dir>/modelyard.db``) and prints ``SpendStore.report`` as a table, or as JSON
with ``--json`` (money as decimal strings, never floats). Exit status: 0 on success, 2 for a bad
config or bad arguments, 1 when the database cannot be opened or queried; every failure is one
``error: ...`` line on stderr, never a traceback, and never the database password.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import click

from modelyard.accounting.pricing import NANO
from modelyard.accounting.store import GROUPS, ReportRow, SpendStore
from modelyard.clitools import fail, settings_or_defaults
from modelyard.db import Database, DatabaseError, database_url
from modelyard.errors import ConfigError

UTC = dt.timezone.utc
DEFAULT_DAYS = 30
UNPRICED_NOTE = "unpriced: no price is configured for the model, so these requests count as 0 in cost"


@dataclass(frozen=True)
class Totals:
    requests: int
    errors: int
    error_rate: float
    prompt_tokens: int
    completion_tokens: int
    cost: Decimal
    cost_per_success: Decimal | None
    unpriced: int


def totals(rows: Sequence[ReportRow]) -> Totals:
    """The sums over every group (the ratios recomputed from the sums, not averaged)."""
    requests = sum(r.requests for r in rows)
    errors = sum(r.errors for r in rows)
    cost = sum((r.cost for r in rows), Decimal(0))
    ok = requests - errors
    return Totals(
        requests=requests,
        errors=errors,
        error_rate=errors / requests if requests else 0.0,
        prompt_tokens=sum(r.prompt_tokens for r in rows),
        completion_tokens=sum(r.completion_tokens for r in rows),
        cost=cost,
        cost_per_success=(cost / ok).quantize(NANO) if ok else None,
        unpriced=sum(r.unpriced for r in rows),
    )





def _when(_ctx: click.Context, _param: click.Parameter, value: str | None) -> dt.datetime | None:
    """An ISO 8601 date or datetime; without a zone it is UTC."""
    if value is None:
        return None
    try:
        ts = dt.datetime.fromisoformat(value.strip())
    except ValueError:
        example = "e.g. 2025-03-01 or 2025-03-01T12:00:00Z"
        raise click.BadParameter(f"{value!r} is not an ISO 8601 date or datetime ({example})") from None
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


def _groups(_ctx: click.Context, _param: click.Parameter, value: str) -> tuple[str, ...]:
    names = tuple(g.strip() for g in value.split(",") if g.strip())
    if not names:
        raise click.BadParameter("name at least one of " + ", ".join(GROUPS))
    for g in names:
        if g not in GROUPS:
            raise click.BadParameter(f"cannot group by {g!r}: one of " + ", ".join(GROUPS))
    if len(set(names)) != len(names):
        raise click.BadParameter("a group is named twice")
    return names


def window(
    since: dt.datetime | None, until: dt.datetime | None, days: int | None, now: dt.datetime
) -> tuple[dt.datetime, dt.datetime]:
    """``[since, until)``: ``--until`` defaults to now, ``--since`` to ``--days`` (30) before it."""
    if since is not None and days is not None:
        raise click.UsageError("--since and --days are exclusive")
    end = until or now
    start = since or end - dt.timedelta(days=DEFAULT_DAYS if days is None else days)
    if start >= end:
        raise click.UsageError(f"the window is empty: --since {start.isoformat()} is not before --until {end.isoformat()}")
    return start, end


async def fetch(url: str, since: dt.datetime, until: dt.datetime, group_by: Sequence[str], timeout_s: float) -> list[ReportRow]:
    """Open the database (applying pending migrations, as the gateway does), run the report, close."""
    db = Database(url, pool_size=1, name="modelyard-spend-report")
    store = SpendStore(db)
    try:
        await asyncio.wait_for(store.start(), timeout_s)
        return await store.report(since, until, group_by)
    finally:
        await db.aclose()


# --- output ------------------------------------------------------------------------------------


def _dec(value: Decimal | None) -> str | None:
    """Fixed-point, never exponent notation: ``0.000000003``, not ``3E-9``."""
    return None if value is None else format(value, "f")


def as_json(rows: Sequence[ReportRow], since: dt.datetime, until: dt.datetime, group_by: Sequence[str]) -> dict[str, Any]:
    t = totals(rows)
    return {
        "since": since.isoformat(),
        "until": until.isoformat(),
        "group_by": list(group_by),
        "rows": [
            {
                "group": dict(r.group),
                "requests": r.requests,
                "errors": r.errors,
                "error_rate": r.error_rate,
                "prompt_tokens": r.prompt_tokens,
                "completion_tokens": r.completion_tokens,
                "cost": _dec(r.cost),
                "cost_per_success": _dec(r.cost_per_success),
                "unpriced": r.unpriced,
            }
            for r in rows
        ],
        "totals": {
            "requests": t.requests,
            "errors": t.errors,
            "error_rate": t.error_rate,
            "prompt_tokens": t.prompt_tokens,
            "completion_tokens": t.completion_tokens,
            "cost": _dec(t.cost),
            "cost_per_success": _dec(t.cost_per_success),
            "unpriced": t.unpriced,
        },
    }


def money(value: Decimal | None) -> str:
    """``0.001000000`` → ``0.001``, ``12.5`` → ``12.50``: exact, without the nano-unit padding."""
    if value is None:
        return "—"
    text = format(value.normalize(), "f")
    whole, _, frac = text.partition(".")
    return f"{whole}.{frac.ljust(2, '0')}"


def _render(rows: Sequence[ReportRow], since: dt.datetime, until: dt.datetime, group_by: Sequence[str]) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    console = Console()
    warn = "⚠" if console.encoding.lower().startswith("utf") else "!"
    table = Table(
        title=f"spend {_stamp(since)} → {_stamp(until)}, by {', '.join(group_by)}",
        box=box.SIMPLE_HEAVY if warn == "⚠" else box.ASCII,
        show_footer=False,
    )
    for g in group_by:
        table.add_column(g, overflow="fold")
    for name in ("requests", "errors", "error rate", "prompt tokens", "completion tokens", "cost", "cost / success"):
        table.add_column(name, justify="right", no_wrap=True)
    table.add_column("unpriced", no_wrap=True)

    def cells(r: ReportRow | Totals) -> list[str]:
        return [
            f"{r.requests:,}",
            f"{r.errors:,}",
            f"{r.error_rate * 100:.1f}%",
            f"{r.prompt_tokens:,}",
            f"{r.completion_tokens:,}",
            money(r.cost),
            money(r.cost_per_success),
            f"{warn} {r.unpriced:,} unpriced" if r.unpriced else "",
        ]

    for r in rows:
        keys = ["(none)" if r.group.get(g) is None else str(r.group[g]) for g in group_by]
        table.add_row(*keys, *cells(r))
    t = totals(rows)
    table.add_section()
    table.add_row("total", *[""] * (len(group_by) - 1), *cells(t), style="bold")
    if not console.is_terminal:  # a pipe or a file: as wide as the table, so that no number is cut
        wide = console.options.update_width(100_000)
        console = Console(width=max(80, console.measure(table, options=wide).maximum))
    console.print(table)
    if not rows:
        console.print("no spend rows in this window")
    if t.unpriced:
        console.print(f"{warn} {t.unpriced:,} {UNPRICED_NOTE}.")


# --- commands ----------------------------------------------------------------------------------


@click.group("spend", context_settings={"help_option_names": ["-h", "--help"]})
def spend() -> None:
    """Spend: what the routed requests cost, from the spend rows in the database."""


@spend.command("report")
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="native or LiteLLM config YAML (its database.url; default: SQLite in $MODELYARD_HOME)")
@click.option("--since", callback=_when, help="start, inclusive (ISO 8601; UTC when no zone is given)")
@click.option("--until", callback=_when, help="end, exclusive (ISO 8601; default: now)")
@click.option("--days", type=click.IntRange(min=1), default=None,
              help=f"the last N days before --until (default {DEFAULT_DAYS}; exclusive with --since)")
@click.option("--group-by", "group_by", default="model", show_default=True, callback=_groups,
              help="comma-separated: " + ", ".join(GROUPS))
@click.option("--json", "json_out", is_flag=True, help="print JSON (money as decimal strings) instead of a table")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=0, min_open=True), default=15.0, show_default=True,
              help="seconds to wait for the database")
def report(
    config_path: str | None,
    since: dt.datetime | None,
    until: dt.datetime | None,
    days: int | None,
    group_by: tuple[str, ...],
    json_out: bool,
    timeout_s: float,
) -> None:
    """Requests, errors, tokens and cost per group over a time window, with a total."""
    start, end = window(since, until, days, dt.datetime.now(UTC))
    url = database_url(settings_or_defaults(config_path))
    try:
        shown = Database(url).url.render_as_string(hide_password=True)  # validates the URL; no connection yet
    except ConfigError as exc:
        fail(exc.message, 2)
    try:
        rows = asyncio.run(fetch(url, start, end, group_by, timeout_s))
    except DatabaseError as exc:
        fail(f"cannot read spend from {shown}: {_one_line(exc.message)}", 1)
    except TimeoutError:  # asyncio.wait_for's (the driver's own timeouts are DatabaseErrors)
        fail(f"cannot read spend from {shown}: no answer within {timeout_s:g} s", 1)
    except Exception as exc:  # noqa: BLE001 - a driver error the store does not wrap: still one line, no traceback
        fail(f"cannot read spend from {shown}: {exc.__class__.__name__}: {_one_line(str(exc))}", 1)
    if json_out:
        click.echo(json.dumps(as_json(rows, start, end, group_by), indent=2))
    else:
        _render(rows, start, end, group_by)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _stamp(ts: dt.datetime) -> str:
    return ts.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
