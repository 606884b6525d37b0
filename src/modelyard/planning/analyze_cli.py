"""``modelyard analyze``: per-model-hour load, idle windows, tier / keep-alive / pin / pre-warm
recommendations and the consolidation report, from the spend rows and tier events in the
configured database (``database.url``, else SQLite at ``<data_dir>/modelyard.db``).

Exit status: 0 on success; 2 for bad arguments, a bad config or spec, or a history that cannot
support the analysis (empty, shorter than a day: the message says what is there and what is
needed); 1 when the database cannot be read. Every failure is one ``error: ...`` line.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
from pathlib import Path
from types import MappingProxyType
from typing import Any

import click

from modelyard.clitools import fail, settings_or_defaults
from modelyard.db import Database, DatabaseError, database_url
from modelyard.errors import ConfigError, ModelyardError

from .analyze import Analysis, Fold, HistoryError, analyze

UTC = dt.timezone.utc
_UNITS = MappingProxyType({"d": 86400, "h": 3600, "m": 60})


def parse_since(value: str, until: dt.datetime) -> dt.datetime:
    """``14d``, ``36h``, ``90m`` before ``until``, or an ISO 8601 date/datetime (UTC without a zone)."""
    v = value.strip()
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([dhm])", v)
    if m:
        seconds = float(m.group(1)) * _UNITS[m.group(2)]
        if seconds <= 0:
            raise ValueError(f"--since {value!r}: the window must be longer than zero")
        return until - dt.timedelta(seconds=seconds)
    try:
        ts = dt.datetime.fromisoformat(v)
    except ValueError:
        raise ValueError(f"--since {value!r}: expected a duration (14d, 36h, 90m) or an ISO 8601 date") from None
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


def parse_until(value: str | None, now: dt.datetime) -> dt.datetime:
    if value is None:
        return now
    try:
        ts = dt.datetime.fromisoformat(value.strip())
    except ValueError:
        raise ValueError(f"--until {value!r}: expected an ISO 8601 date or datetime") from None
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


def read_spec(path: str) -> dict[str, Any]:
    """The spec as a plain dict (validated; raises ConfigError naming the problem)."""
    from .spec import load_spec

    return load_spec(path).model_dump(exclude_none=True)


async def fetch(url: str, since: dt.datetime, until: dt.datetime, timeout_s: float) -> tuple[Fold, dict[str, dict[str, int]]]:
    from .history import fold_spend, tier_event_counts

    db = Database(url, pool_size=1, name="modelyard-analyze")
    try:
        await asyncio.wait_for(db.start(), timeout_s)
        fold = await fold_spend(db, Fold(since, until))
        events = await tier_event_counts(db, since, until)
    finally:
        await db.aclose()
    return fold, events


def run(url: str, since: dt.datetime, until: dt.datetime, spec: dict[str, Any] | None, *, timeout_s: float = 15.0,
        time_limit_s: float = 2.0) -> Analysis:
    """Read and analyze (raises HistoryError, ConfigError, DatabaseError, TimeoutError)."""
    from .planner import solve

    if since >= until:
        raise HistoryError(f"the window is empty: --since {since.isoformat()} is not before --until {until.isoformat()}")
    fold, events = asyncio.run(fetch(url, since, until, timeout_s))
    return analyze(fold, events, spec=spec, solve=solve if spec is not None else None, time_limit_s=time_limit_s)


@click.command("analyze", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="native or LiteLLM config YAML (its database.url; default: SQLite in $MODELYARD_HOME)")
@click.option("--since", default="14d", show_default=True, help="window start: 14d, 36h, 90m before --until, or ISO 8601")
@click.option("--until", default=None, help="window end, exclusive (ISO 8601, UTC without a zone; default: now)")
@click.option("--spec", "spec_path", type=click.Path(dir_okay=False),
              help="planner spec YAML (model sizes, GPU types): enables the consolidation report")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), help="write analyze.md, analyze.json, load.png, "
              "gpus_per_hour.png here")
@click.option("--json", "json_out", is_flag=True, help="print the JSON document instead of the markdown")
@click.option("--time-limit", "time_limit_s", type=click.FloatRange(min=0, min_open=True), default=2.0, show_default=True,
              help="seconds the planner may take per plan")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=0, min_open=True), default=15.0, show_default=True,
              help="seconds to wait for the database")
def analyze_command(config_path: str | None, since: str, until: str | None, spec_path: str | None, out_dir: str | None,
                    json_out: bool, time_limit_s: float, timeout_s: float) -> None:
    """Hourly load per model, idle windows, tier recommendations and the consolidation report."""
    from . import report

    try:
        end = parse_until(until, dt.datetime.now(UTC))
        start = parse_since(since, end)
    except ValueError as exc:
        fail(str(exc), 2)
    url = database_url(settings_or_defaults(config_path))
    try:
        shown = Database(url).url.render_as_string(hide_password=True)
        spec = read_spec(spec_path) if spec_path else None
    except ConfigError as exc:
        fail(" ".join(exc.message.split()), 2)
    try:
        result = run(url, start, end, spec, timeout_s=timeout_s, time_limit_s=time_limit_s)
    except HistoryError as exc:
        fail(f"{exc.message} (database {shown})", 2)
    except ConfigError as exc:
        fail(" ".join(exc.message.split()), 2)
    except DatabaseError as exc:
        fail(f"cannot read {shown}: {' '.join(exc.message.split())}", 1)
    except TimeoutError:
        fail(f"cannot read {shown}: no answer within {timeout_s:g} s", 1)
    except ModelyardError as exc:
        fail(" ".join(exc.message.split()), 1)
    if out_dir:
        try:
            paths = report.write_all(result, Path(out_dir))
        except OSError as exc:
            fail(f"cannot write to {out_dir}: {exc.strerror or exc}", 1)
        click.echo("wrote " + ", ".join(str(p) for p in paths), err=True)
    if json_out:
        click.echo(json.dumps(report.as_json(result), indent=2))
    elif not out_dir:
        click.echo(report.markdown(result), nl=False)
