"""A generated history of the scenario's nine models, loaded into a real database: spend rows drawn
from ``scenario.arrivals`` (seeded Poisson, scaled down) and the tier events a keep-alive policy
would have caused on that traffic. What ``modelyard analyze`` is tested on.

    python -m modelyard.planning.gen_history --config modelyard.yaml --days 14 [--scale 0.001] [--end 2026-03-02T00:00:00Z]

The latency of a generated request is a simple service model (a fixed overhead, prefill per prompt
token, decode per completion token), so busy fractions are what that model implies. Tier events:
a model is loaded (disk/host → active) at a request that finds it off the active tier, demoted to
the host tier ``keep_alive_s`` after its last request and evicted to disk an hour after that.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal

import click

from modelyard.accounting.store import SpendRow, SpendStore
from modelyard.accounting.tier_events import TierEvent
from modelyard.epoch import to_us

from .scenario import SCENARIO9, ScenarioModel, arrivals

UTC = dt.timezone.utc
DEFAULT_SCALE = 0.001  # 14 days ≈ 250k rows
KEEP_ALIVE_S = 300.0
HOST_TTL_S = 3600.0
BATCH = 10_000


def latency_ms(m: ScenarioModel, prompt: int, completion: int) -> float:
    if m.kind in ("embedding", "classifier"):
        return 4.0 + 0.02 * prompt
    return 60.0 + 0.1 * prompt + 25.0 * completion  # ~40 tokens/s decode


@dataclass
class _Residency:
    tier: str = "disk"
    last_s: float | None = None


@dataclass
class Generated:
    start: dt.datetime
    end: dt.datetime
    counts: Counter[str] = field(default_factory=Counter)
    events: list[TierEvent] = field(default_factory=list)


def generate(start: dt.datetime, days: float, *, scale: float = DEFAULT_SCALE, seed: int = 0,
             keep_alive_s: float = KEEP_ALIVE_S) -> tuple[Generated, Iterator[SpendRow]]:
    """(summary filled as the rows are consumed, the rows in time order)."""
    seconds = days * 86400
    gen = Generated(start, start + dt.timedelta(seconds=seconds))
    res = {m.name: _Residency() for m in SCENARIO9}

    def event(m: ScenarioModel, at_s: float, src: str, dst: str, reason: str) -> None:
        ts = to_us(start) + int(at_s * 1e6)
        gen.events.append(TierEvent(ts, m.name, f"{m.name}/0", src, dst, int(m.gpu_memory_gb * 1e9), reason))

    def settle(m: ScenarioModel, now_s: float) -> None:
        r = res[m.name]
        if r.last_s is None:
            return
        if r.tier == "active" and now_s - r.last_s > keep_alive_s:
            event(m, r.last_s + keep_alive_s, "active", "host", "idle")
            r.tier = "host"
        if r.tier == "host" and now_s - r.last_s > keep_alive_s + HOST_TTL_S:
            event(m, r.last_s + keep_alive_s + HOST_TTL_S, "host", "disk", "eviction")
            r.tier = "disk"

    def rows() -> Iterator[SpendRow]:
        for i, (off, m, p, c) in enumerate(arrivals(SCENARIO9, start=start, seconds=seconds, scale=scale, seed=seed)):
            settle(m, off)
            r = res[m.name]
            if r.tier != "active":
                event(m, off, r.tier, "active", "load")
                r.tier = "active"
            r.last_s = off
            gen.counts[m.name] += 1
            cost = Decimal(str(m.price_per_1k_tokens)) * (p + c) / 1000
            yield SpendRow(request_id=f"gen-{seed}-{i:09d}", ts=start + dt.timedelta(seconds=off), key_hash=None,
                           team=None, model=m.name, deployment=f"{m.name}/0", prompt_tokens=p, completion_tokens=c,
                           cost=cost.quantize(Decimal("0.000000001")), priced=True, latency_ms=latency_ms(m, p, c),
                           status=200)
        for m in SCENARIO9:
            settle(m, seconds)

    return gen, rows()


async def load(url: str, start: dt.datetime, days: float, *, scale: float = DEFAULT_SCALE, seed: int = 0) -> Generated:
    """Generate and insert (batches of BATCH rows through the spend store's fast path)."""
    from .history import load_tier_events

    store = SpendStore(url)
    await store.start()
    try:
        gen, rows = generate(start, days, scale=scale, seed=seed)
        batch: list[SpendRow] = []
        for r in rows:
            batch.append(r)
            if len(batch) >= BATCH:
                await store.insert_many(batch)
                batch = []
        await store.insert_many(batch)
        await load_tier_events(store.db, gen.events)
    finally:
        await store.aclose()
    return gen


def _end(_ctx: click.Context, _param: click.Parameter, value: str | None) -> dt.datetime | None:
    if value is None:
        return None
    try:
        ts = dt.datetime.fromisoformat(value.strip())
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an ISO 8601 datetime") from None
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


@click.command("gen-history", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="config YAML (its database.url)")
@click.option("--days", type=click.FloatRange(min=0, min_open=True), default=14.0, show_default=True)
@click.option("--scale", type=click.FloatRange(min=0, min_open=True), default=DEFAULT_SCALE, show_default=True,
              help="multiplies every model's request rate")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--end", callback=_end, help="end of the history (ISO 8601, UTC; default: now, to the hour)")
def main(config_path: str | None, days: float, scale: float, seed: int, end: dt.datetime | None) -> None:
    """Load a generated history of the scenario's nine models into the configured database."""
    from modelyard.clitools import fail, settings_or_defaults
    from modelyard.db import DatabaseError, database_url

    stop = end or dt.datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    url = database_url(settings_or_defaults(config_path))
    try:
        gen = asyncio.run(load(url, stop - dt.timedelta(days=days), days, scale=scale, seed=seed))
    except DatabaseError as exc:
        fail(f"cannot write the history: {exc.message}", 1)
    click.echo(json.dumps({"start": gen.start.isoformat(), "end": gen.end.isoformat(), "rows": sum(gen.counts.values()),
                           "tier_events": len(gen.events), "per_model": dict(sorted(gen.counts.items()))}, indent=2))


if __name__ == "__main__":
    main()
