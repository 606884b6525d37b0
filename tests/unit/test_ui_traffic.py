"""/admin/traffic's numbers: rates and quantiles from the app's own Prometheus counters, over a
window of readings taken on demand (clock injected: no sleeping)."""

from __future__ import annotations

import pytest

from modelyard.observability.metrics import UNKNOWN_MODEL, Metrics
from modelyard.observability.traffic import TrafficSampler, quantile


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def hit(m: Metrics, model: str, status: int, seconds: float, n: int = 1) -> None:
    count, latency = m.request_series(model, "chat.completions", status)
    for _ in range(n):
        count.inc()
        latency.observe(seconds)


def row(out: dict, model: str) -> dict:
    return next(r for r in out["data"] if r["model"] == model)


def test_rates_error_rate_and_quantiles_over_the_window() -> None:
    m, clock = Metrics(), Clock()
    s = TrafficSampler(m, clock=clock, window_s=10)
    hit(m, "chat", 200, 0.02, n=5)  # before the first reading: in the total, not in the rate
    first = row(s.sample(["chat", "coder"]), "chat")
    assert first["rps"] is None and first["requests_total"] == 5
    clock.t += 10
    hit(m, "chat", 200, 0.03, n=18)
    hit(m, "chat", 500, 3.0, n=2)
    m.ttft.labels("chat").observe(0.2)
    m.tokens.labels("chat", "chat", "out").inc(40)
    m.queue_depth.labels("chat").set(3)
    out = s.sample(["chat", "coder"])
    r = row(out, "chat")
    assert out["window_s"] == 10
    assert r["rps"] == pytest.approx(2.0) and r["error_rate"] == pytest.approx(0.1)
    assert 0.025 < r["p50_latency_s"] <= 0.05  # inside the (0.025, 0.05] bucket
    assert 2.5 < r["p99_latency_s"] <= 5  # the two slow ones are the top 10 %
    assert 0.1 < r["p50_ttft_s"] <= 0.25 and r["tokens_out_per_s"] == pytest.approx(4.0)
    assert r["queue_depth"] == 3 and r["requests_total"] == 25 and r["errors_total"] == 2
    idle = row(out, "coder")  # a configured model without traffic is listed, at zero
    assert idle["rps"] == 0 and idle["p50_latency_s"] is None


def test_the_window_slides_and_history_stays_bounded() -> None:
    m, clock = Metrics(), Clock()
    s = TrafficSampler(m, clock=clock, window_s=10, keep_s=30)
    s.sample()
    hit(m, "chat", 200, 0.01, n=100)  # a burst, then silence
    for _ in range(30):
        clock.t += 1
        s.sample()
    r = row(s.sample(), "chat")
    assert r["rps"] == 0 and r["requests_total"] == 100  # the burst has left the window
    assert len(s._history) <= 31


def test_unknown_model_traffic_is_left_out() -> None:
    m, clock = Metrics(), Clock()
    s = TrafficSampler(m, clock=clock)
    hit(m, UNKNOWN_MODEL, 404, 0.001, n=3)  # admin, UI and health requests carry no model
    assert all(r["model"] != UNKNOWN_MODEL for r in s.sample()["data"])


def test_quantile_interpolates_like_histogram_quantile() -> None:
    inf = float("inf")
    assert quantile(0.5, {1.0: 0, 2.0: 10, inf: 10}) == pytest.approx(1.5)
    assert quantile(0.5, {1.0: 10, 2.0: 10, inf: 10}) == pytest.approx(0.5)
    assert quantile(0.99, {1.0: 0, 2.0: 0, inf: 4}) == 2.0  # beyond the last bound: that bound
    assert quantile(0.5, {1.0: 0, inf: 0}) is None
    with pytest.raises(ValueError):
        TrafficSampler(Metrics(), clock=Clock(), window_s=20, keep_s=10)
