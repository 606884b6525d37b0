"""The request's outcome as a value, and the recorder that turns it into spend rows and charges."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from modelyard.accounting.outcome import Hop, Tally
from modelyard.accounting.recorder import Finished, Recorder
from modelyard.config.schema import Price
from modelyard.observability.metrics import Metrics

T0 = dt.datetime(2026, 12, 3, 12, 0, tzinfo=dt.UTC)
SMALL = Price(input_per_1k=0.1, output_per_1k=0.2)
BIG = Price(input_per_1k=1.0, output_per_1k=2.0)


class Rows:
    def __init__(self) -> None:
        self.rows: list = []

    def write(self, row) -> None:  # noqa: ANN001 - the SpendWriter's one method the recorder uses
        self.rows.append(row)


def recorder() -> tuple[Recorder, Rows, list[tuple[object, int]], Metrics]:
    rows, charges, metrics = Rows(), [], Metrics()
    rec = Recorder(metrics=metrics, spend=rows, charge=lambda p, nano: charges.append((p, nano)), wall_clock=lambda: T0)
    return rec, rows, charges, metrics


def finished(status: int = 200, model: str | None = "cascade") -> Finished:
    return Finished("rid1", "POST", "/v1/chat/completions", "chat.completions", status, 0.25, model, "k1", "team-a")


def test_tally_ends_into_a_frozen_outcome_with_totals() -> None:
    t = Tally(model="cascade")
    t.add(Hop("chat", "chat", SMALL, 10, 5, 200, note="escalated"))
    t.add(Hop("coder", "coder", BIG, 10, 20, 200, fallbacks=1))
    out = t.end(200)
    assert (out.prompt_tokens, out.completion_tokens, out.fallbacks, out.deployment) == (20, 25, 1, "coder")
    assert t.tokens == 45
    assert t.end(499).answered.status == 499  # the client left: the last hop carries what it saw


def test_one_spend_row_per_hop_linked_by_the_request_id_and_one_charge() -> None:
    rec, rows, charges, _ = recorder()
    t = Tally(model="cascade")
    t.add(Hop("chat", "chat", SMALL, 1000, 500, 200, note="escalated"))
    t.add(Hop("coder", "coder", BIG, 1000, 1000, 200))
    total = rec.record(finished(), t.end(200), principal="P")
    assert [r.request_id for r in rows.rows] == ["rid1#0", "rid1"]
    assert [(r.model, r.deployment, r.hop) for r in rows.rows] == [("chat", "chat", 0), ("coder", "coder", 1)]
    # chat: 1.0·0.1 + 0.5·0.2 = 0.2; coder: 1.0·1.0 + 1.0·2.0 = 3.0
    assert [r.cost for r in rows.rows] == [Decimal("0.2"), Decimal("3.0")]
    assert total == Decimal("3.2")
    assert charges == [("P", 3_200_000_000)]
    assert all(r.ts == T0 and r.key_hash == "k1" and r.team == "team-a" for r in rows.rows)


def test_a_refused_request_gets_one_row_without_cost_and_no_charge() -> None:
    rec, rows, charges, metrics = recorder()
    rec.record(finished(429, "chat"), Tally(model="chat").end(429))
    [row] = rows.rows
    assert (row.request_id, row.status, row.cost, row.priced, row.deployment) == ("rid1", 429, 0, False, "")
    assert charges == []
    assert metrics.registry.get_sample_value(
        "modelyard_requests_total", {"model": "chat", "endpoint": "chat.completions", "status": "429"}) == 1


def test_no_spend_row_without_a_model_but_the_request_is_counted() -> None:
    rec, rows, _, metrics = recorder()
    rec.record(finished(400, None), None)
    assert rows.rows == []
    samples = [s for m in metrics.registry.collect() for s in m.samples if s.name == "modelyard_requests_total"]
    assert sum(s.value for s in samples) == 1
