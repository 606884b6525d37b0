"""Turning one finished request into its records: metrics, budget charge, spend rows, access log.

The one place a request's bookkeeping happens (the app calls ``record`` once per request, in the
``finally`` of its dispatch, so a failed or cancelled request is recorded too). Every hop of an
outcome is priced with its own model's price and gets its own spend row, linked by the request id:
the row of the hop that answered carries the request id itself, an earlier hop (a cascade tier that
escalated) ``<request id>#<hop>``; so a request's cost includes its escalations and ``requests``
in a report still counts each request once (``hop`` 0 … n-1, the answer's row is the last).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from modelyard.accounting.outcome import Outcome
from modelyard.accounting.pricing import cost as price_of
from modelyard.accounting.pricing import NANO, to_nano
from modelyard.accounting.store import SpendRow
from modelyard.observability.metrics import UNKNOWN_MODEL
from modelyard.observability.recent import RecentOutcomes

WallClock = Callable[[], dt.datetime]


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True, slots=True)
class Finished:
    """What the HTTP layer knows about a request once it is over."""

    request_id: str
    method: str
    path: str
    endpoint: str
    status: int
    elapsed_s: float
    model: str | None  # the public model label (None: the request never named a valid one)
    key_id: str | None = None
    team: str | None = None
    batch_id: str | None = None  # an item of this batch (Batch API): its rows are marked and discounted


class Recorder:
    def __init__(
        self,
        *,
        metrics: Any,  # observability.metrics.Metrics
        spend: Any = None,  # accounting.writer.SpendWriter (or None: spend tracking off)
        charge: Callable[[Any, int], None] | None = None,  # (principal, nano-units) → the budgets
        access_log: Any = None,  # observability.logging.AccessLog
        wall_clock: WallClock = utc_now,
        batch_price: Callable[[str], Decimal] | None = None,  # model → the share of its price a batch item pays
    ) -> None:
        self._metrics = metrics
        self._spend = spend
        self._charge = charge
        self._log = access_log if access_log is not None and access_log.enabled else None
        self._now = wall_clock
        self._batch_price = batch_price
        self.recent = RecentOutcomes()  # the last auto-routing decisions and cascade hops (/admin/routing)

    def record(self, f: Finished, outcome: Outcome | None, principal: Any = None) -> Decimal:
        """Record one request; returns its total cost (every hop)."""
        model = f.model or UNKNOWN_MODEL
        endpoint = f.endpoint if f.status != 404 or f.model else "other"
        count, latency = self._metrics.request_series(model, endpoint, f.status)
        count.inc()
        latency.observe(f.elapsed_s)
        total = Decimal(0)
        if self._spend is not None and f.model is not None:
            total = self._spend_rows(f, outcome, principal)
        if self._log is not None:
            self._log.write(_log_line(f, outcome))
        if RecentOutcomes.qualifies(outcome):
            self.recent.add(self._now(), f.request_id, outcome, f.elapsed_s)
        return total

    def _spend_rows(self, f: Finished, outcome: Outcome | None, principal: Any) -> Decimal:
        ts = self._now()
        latency_ms = round(f.elapsed_s * 1000, 3)
        hops = outcome.hops if outcome is not None else ()
        stream = outcome.stream if outcome is not None else False
        assert f.model is not None
        if not hops:  # refused or failed before any model answered: a row without cost
            self._spend.write(SpendRow(
                request_id=f.request_id, ts=ts, key_hash=f.key_id, team=f.team, model=f.model, deployment="",
                prompt_tokens=0, completion_tokens=0, cost=Decimal(0).quantize(Decimal("0.000000001")), priced=False,
                latency_ms=latency_ms, status=f.status, fallbacks=0, stream=stream, batch_id=f.batch_id))
            return Decimal(0)
        total = Decimal(0)
        last = len(hops) - 1
        for i, hop in enumerate(hops):
            c, priced = price_of(hop.price, hop.prompt_tokens, hop.completion_tokens)
            if f.batch_id is not None and self._batch_price is not None:
                c = (c * self._batch_price(hop.model)).quantize(NANO)
            total += c
            self._spend.write(SpendRow(
                request_id=f.request_id if i == last else f"{f.request_id}#{i}", ts=ts, key_hash=f.key_id,
                team=f.team, model=hop.model, deployment=hop.deployment or "", prompt_tokens=hop.prompt_tokens,
                completion_tokens=hop.completion_tokens, cost=c, priced=priced, latency_ms=latency_ms,
                status=hop.status if i < last else f.status, fallbacks=hop.fallbacks, stream=stream, hop=i,
                batch_id=f.batch_id))
        if total and self._charge is not None:
            self._charge(principal, to_nano(total))
        return total


def _log_line(f: Finished, outcome: Outcome | None) -> dict[str, Any]:
    line: dict[str, Any] = {
        "request_id": f.request_id,
        "method": f.method,
        "path": f.path,
        "model": f.model,
        "deployment": outcome.deployment if outcome is not None else None,
        "status": f.status,
        "latency_ms": round(f.elapsed_s * 1000, 3),
        "prompt_tokens": outcome.prompt_tokens if outcome is not None and outcome.hops else None,
        "completion_tokens": outcome.completion_tokens if outcome is not None and outcome.hops else None,
        "fallbacks": outcome.fallbacks if outcome is not None else 0,
    }
    if outcome is not None:
        if outcome.route is not None:
            line["route"] = outcome.route
        if len(outcome.hops) > 1:
            line["hops"] = [f"{h.model}:{h.note or h.status}" for h in outcome.hops]
    return line
