"""The ring of recent routing outcomes, fed by the recorder (auto routes and cascade hops only)."""

from __future__ import annotations

import datetime as dt

import pytest

from modelyard.accounting.outcome import Hop, Outcome
from modelyard.accounting.recorder import Finished, Recorder
from modelyard.config.schema import Price
from modelyard.observability.metrics import Metrics
from modelyard.observability.recent import RecentOutcomes

T0 = dt.datetime(2026, 12, 3, 12, 0, tzinfo=dt.UTC)
P = Price(input_per_1k=0.1, output_per_1k=0.2)


def fin(rid: str, model: str = "auto") -> Finished:
    return Finished(rid, "POST", "/v1/chat/completions", "chat.completions", 200, 0.125, model)


def test_the_recorder_keeps_routes_and_multi_hop_outcomes_only() -> None:
    rec = Recorder(metrics=Metrics(), wall_clock=lambda: T0)
    routed = Outcome("auto", 200, hops=(Hop("coder", "coder", P, 5, 3),), route="task=code; by=rules; model=coder")
    cascade = Outcome("cascade", 200, hops=(Hop("chat", "chat", P, 5, 3, note="conf=-0.9 escalate"), Hop("coder", "coder", P, 5, 4)))
    plain = Outcome("chat", 200, hops=(Hop("chat", "chat", P, 5, 3),))
    rec.record(fin("r1"), routed)
    rec.record(fin("r2", "chat"), plain)
    rec.record(fin("r3", "cascade"), cascade)
    rec.record(fin("r4", "chat"), None)
    got = rec.recent.items()
    assert [g["request_id"] for g in got] == ["r3", "r1"]  # newest first; plain and hop-less ones left out
    assert got[0]["answered_by"] == "coder" and [h["note"] for h in got[0]["hops"]] == ["conf=-0.9 escalate", None]
    assert got[1]["route"] == "task=code; by=rules; model=coder" and got[1]["latency_ms"] == 125.0
    assert got[1]["ts"] == T0.isoformat() and rec.recent.seen == 2


def test_the_ring_is_bounded_and_limit_applies() -> None:
    ring = RecentOutcomes(capacity=3)
    o = Outcome("auto", 200, hops=(Hop("chat", "chat", P),), route="task=chat")
    for i in range(5):
        ring.add(T0, f"r{i}", o, 0.01)
    assert [x["request_id"] for x in ring.items()] == ["r4", "r3", "r2"]
    assert [x["request_id"] for x in ring.items(limit=1)] == ["r4"]
    assert ring.seen == 5 and ring.capacity == 3
    with pytest.raises(ValueError):
        RecentOutcomes(capacity=0)
