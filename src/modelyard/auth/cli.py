"""``modelyard keys``: create, list and revoke virtual keys directly in the configured database.

For an operator on the host (bootstrap, scripts, an emergency revocation while the gateway is down):
no HTTP and no master key, the database's own access control applies. Running servers pick the
change up within ``auth.refresh_interval_s``.

Exit codes: 0 done; 2 bad input (a click usage error naming the option, or an invalid config);
1 the database failed or a key to revoke does not exist.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click
import orjson

from modelyard.clitools import fail, settings_or_defaults
from modelyard.config.schema import Settings
from modelyard.db import Database, DatabaseError, database_url
from modelyard.errors import ConfigError

from .keys import ID_HEX, KEY_PREFIX, PRIORITIES, KeyFieldError, VirtualKey, new_key, split_key
from .store import KeyStore

T = TypeVar("T")
UTC = dt.timezone.utc

# new_key's KeyFieldError.param (LiteLLM names) → the option that carried it.
_OPTIONS = {
    "key_alias": "--alias",
    "team_id": "--team",
    "models": "--model",
    "rpm_limit": "--rpm",
    "tpm_limit": "--tpm",
    "max_budget": "--max-budget",
    "budget_duration": "--budget-duration",
    "duration": "--duration",
    "priority": "--priority",
    "allow_priority_header": "--allow-priority-header",
}





def _with_store(config: str | Settings | None, fn: Callable[[KeyStore], Awaitable[T]]) -> T:
    """Open the configured database (migrations first), run ``fn(store)``, close; exit 1 on failure."""
    url = database_url(config if isinstance(config, Settings) else settings_or_defaults(config))
    try:
        db = Database(url)
    except ConfigError as exc:
        fail(exc.message, 2)

    async def run() -> T:
        try:
            await db.start()
            return await fn(KeyStore(db))
        finally:
            await db.aclose()

    try:
        return asyncio.run(run())
    except DatabaseError as exc:  # KeyStoreError included
        fail(f"{exc.message} (database: {db.url.render_as_string(hide_password=True)})", 1)
    except (ImportError, OSError) as exc:  # e.g. PostgreSQL URL without asyncpg installed, unwritable dir
        fail(f"cannot open the database: {exc.__class__.__name__}: {exc}", 1)


def _config_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--config", "config_path", type=click.Path(dir_okay=False),
        help="config YAML whose database.url to use (default: SQLite in $MODELYARD_HOME/modelyard.db)",
    )(fn)  # fmt: skip


@click.group("keys", context_settings={"help_option_names": ["-h", "--help"]})
def keys() -> None:
    """Create, list and revoke virtual keys (in the configured database)."""


@keys.command("create")
@_config_option
@click.option("--alias", default=None, help="a name for the key (LiteLLM key_alias)")
@click.option("--team", default=None, help="team id (spend is reported per team)")
@click.option("--model", "models", multiple=True, help="a model the key may use (repeat; none: every model)")
@click.option("--rpm", type=int, default=None, help="requests per minute for this key")
@click.option("--tpm", type=int, default=None, help="tokens per minute for this key")
@click.option("--max-budget", default=None, help="spend limit in currency units, e.g. 10 or 2.50")
@click.option("--budget-duration", default=None, help="budget period: 30s, 5m, 1h, 30d, 1mo (none: never resets)")
@click.option("--duration", default=None, help="key lifetime, e.g. 90d (none: never expires)")
@click.option(
    "--priority", type=click.Choice(PRIORITIES), default=None,
    help="admission priority of the key's requests (none: the routing rules decide)",
)  # fmt: skip
@click.option(
    "--allow-priority-header", is_flag=True, default=False,
    help="let the key's requests choose their priority with the x-priority header",
)  # fmt: skip
def create(
    config_path: str | None,
    alias: str | None,
    team: str | None,
    models: tuple[str, ...],
    rpm: int | None,
    tpm: int | None,
    max_budget: str | None,
    budget_duration: str | None,
    duration: str | None,
    priority: str | None,
    allow_priority_header: bool,
) -> None:
    """Create a key and print it, alone on stdout; it is never shown again."""
    try:
        plaintext, key = new_key(
            now=dt.datetime.now(UTC), alias=alias, team_id=team, models=models, rpm_limit=rpm, tpm_limit=tpm,
            max_budget=max_budget, budget_duration=budget_duration, duration=duration, priority=priority,
            allow_priority_header=allow_priority_header,
        )  # fmt: skip
    except KeyFieldError as exc:
        option = _OPTIONS.get(exc.param, exc.param)
        raise click.BadParameter(str(exc).removeprefix(f"{exc.param}: "), param_hint=f"'{option}'") from None
    settings = settings_or_defaults(config_path)
    _with_store(settings, lambda store: store.create(key))
    click.echo(plaintext)
    click.echo(f"created {key.display()}; store it now: the key is not shown again", err=True)
    if not settings.auth.master_key and not os.environ.get("MODELYARD_MASTER_KEY"):
        click.echo(
            "note: a server checks keys only when it has a master key (auth.master_key or $MODELYARD_MASTER_KEY); "
            "without one it serves everyone on loopback",
            err=True,
        )


def _status(k: VirtualKey, now: dt.datetime) -> str:
    if k.revoked_at is not None:
        return "revoked"
    if k.expires_at is not None and k.expires_at <= now:
        return "expired"
    return "active"


def _when(t: dt.datetime | None) -> str:
    return t.strftime("%Y-%m-%d %H:%M") if t is not None else "-"


@keys.command("list")
@_config_option
@click.option("--all", "include_revoked", is_flag=True, help="include revoked keys")
@click.option("--json", "as_json", is_flag=True, help="one JSON array (LiteLLM /key/info fields)")
def list_(config_path: str | None, include_revoked: bool, as_json: bool) -> None:
    """List keys, newest first (ids only: secrets are never stored)."""
    found = _with_store(config_path, lambda store: store.list(include_revoked=include_revoked))
    if as_json:
        click.echo(orjson.dumps([k.to_info() for k in found], option=orjson.OPT_INDENT_2).decode())
        return
    if not found:
        click.echo("no keys" + ("" if include_revoked else " (--all shows revoked ones)"))
        return
    now = dt.datetime.now(UTC)
    headers = ("id", "alias", "team", "models", "rpm", "tpm", "budget", "period", "priority", "created", "expires",
               "status")
    rows = [
        (
            k.id, k.alias or "-", k.team_id or "-", ",".join(k.models) or "*",
            "-" if k.rpm_limit is None else str(k.rpm_limit), "-" if k.tpm_limit is None else str(k.tpm_limit),
            "-" if k.max_budget is None else f"{k.max_budget.normalize():f}", k.budget_duration or "-",
            (k.priority or "-") + ("+header" if k.allow_priority_header else ""),
            _when(k.created_at), _when(k.expires_at), _status(k, now),
        )
        for k in found
    ]  # fmt: skip
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    for r in (headers, *rows):
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def _key_id(text: str) -> str | None:
    """A full key, ``sk-my-<id>`` / ``sk-my-<id>…`` (as displayed) or a bare id → the id."""
    parts = split_key(text)
    if parts is not None:
        return parts[0]
    bare = text.removeprefix(KEY_PREFIX).removesuffix("…")
    if len(bare) == ID_HEX and all(c in "0123456789abcdef" for c in bare):
        return bare
    return None


@keys.command("revoke")
@_config_option
@click.argument("keys_or_ids", metavar="KEY_OR_ID...", nargs=-1, required=True)
def revoke(config_path: str | None, keys_or_ids: tuple[str, ...]) -> None:
    """Revoke keys, given as the key itself or its 12-hex-digit id (as `keys list` shows it)."""
    ids = []
    for text in keys_or_ids:
        key_id = _key_id(text)
        if key_id is None:
            shown = text if len(text) <= 24 else text[:20] + "…"
            raise click.BadParameter(f"{shown!r} is neither a key nor a 12-hex-digit key id", param_hint="'KEY_OR_ID'")
        ids.append(key_id)

    async def run(store: KeyStore) -> tuple[list[str], list[str]]:
        done = await store.revoke(ids, now=dt.datetime.now(UTC))
        unknown = [i for i in dict.fromkeys(ids) if i not in done and await store.get(i) is None]
        return done, unknown

    done, unknown = _with_store(config_path, run)
    for i in done:
        click.echo(f"revoked {i}")
    for i in dict.fromkeys(ids):
        if i not in done and i not in unknown:
            click.echo(f"{i} was already revoked", err=True)
    if unknown:
        fail("no such key: " + ", ".join(unknown), 1)
