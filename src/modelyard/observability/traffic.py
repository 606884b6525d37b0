"""Live traffic per model, computed from the app's own Prometheus counters (``/admin/traffic``).

The counters only grow; a rate needs two readings. ``TrafficSampler`` keeps a short, bounded
history of readings (one per ``min_interval_s`` at most, the last ``keep_s`` seconds) taken when
someone asks, and answers with the change over the last ``window_s``: requests per second, error
rate, tokens per second, and p50/p99 of latency and time to first token interpolated from the
histogram buckets' deltas (as PromQL's ``histogram_quantile`` does). In-flight and queue depth are
gauges, reported as they are now. No background task: an idle dashboard costs nothing, and the
clock is injected (tests advance it).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from modelyard.observability.metrics import UNKNOWN_MODEL

Clock = Callable[[], float]


@dataclass
class _Hist:
    buckets: dict[float, float] = field(default_factory=dict)  # upper bound → cumulative count
    count: float = 0.0

    def add(self, le: float, value: float) -> None:
        self.buckets[le] = self.buckets.get(le, 0.0) + value


@dataclass
class _Model:
    requests: float = 0.0
    errors: float = 0.0  # status >= 400
    tokens_in: float = 0.0
    tokens_out: float = 0.0
    latency: _Hist = field(default_factory=_Hist)
    ttft: _Hist = field(default_factory=_Hist)


Reading = dict[str, _Model]


def quantile(q: float, buckets: dict[float, float]) -> float | None:
    """The ``q`` quantile of cumulative histogram ``buckets`` (upper bound → count), linearly
    interpolated inside its bucket; None without observations. Beyond the last finite bound: that bound."""
    items = sorted(buckets.items())
    if not items or items[-1][1] <= 0:
        return None
    total = items[-1][1]
    rank = q * total
    lower, below = 0.0, 0.0
    for bound, cum in items:
        if cum >= rank and cum > below:
            if math.isinf(bound):
                return lower
            return lower + (bound - lower) * (rank - below) / (cum - below)
        lower, below = (bound if not math.isinf(bound) else lower), cum
    return lower


def _samples(metric: Any) -> Iterable[Any]:
    for family in metric.collect():
        yield from family.samples


def read(metrics: Any) -> tuple[Reading, dict[str, dict[str, float]]]:
    """(cumulative counters per model, current gauges per model) from an ``observability.metrics.Metrics``."""
    models: Reading = {}

    def m(name: str) -> _Model:
        x = models.get(name)
        if x is None:
            x = models[name] = _Model()
        return x

    for s in _samples(metrics.requests):
        if s.name.endswith("_total") and s.labels["model"] != UNKNOWN_MODEL:  # admin, UI, health calls
            x = m(s.labels["model"])
            x.requests += s.value
            status = s.labels.get("status", "")
            if status.isdigit() and int(status) >= 400:
                x.errors += s.value
    for s in _samples(metrics.request_latency):
        if s.labels["model"] != UNKNOWN_MODEL and s.name.endswith("_bucket"):
            m(s.labels["model"]).latency.add(float(s.labels["le"]), s.value)
    for s in _samples(metrics.ttft):
        if s.labels["model"] != UNKNOWN_MODEL and s.name.endswith("_bucket"):
            m(s.labels["model"]).ttft.add(float(s.labels["le"]), s.value)
    for s in _samples(metrics.tokens):
        if s.labels["model"] != UNKNOWN_MODEL and s.name.endswith("_total"):
            x = m(s.labels["model"])
            if s.labels.get("direction") == "in":
                x.tokens_in += s.value
            else:
                x.tokens_out += s.value
    gauges: dict[str, dict[str, float]] = {}
    for key, metric in (("in_flight", metrics.in_flight), ("queue_depth", metrics.queue_depth)):
        for s in _samples(metric):
            gauges.setdefault(s.labels["model"], {})[key] = s.value
    return models, gauges


def _delta(new: dict[float, float], old: dict[float, float]) -> dict[float, float]:
    return {le: v - old.get(le, 0.0) for le, v in new.items()}


class TrafficSampler:
    """Owned by the app's UI routes (one per app); ``sample()`` is called per ``/admin/traffic``."""

    def __init__(self, metrics: Any, *, clock: Clock, window_s: float = 10.0, keep_s: float = 60.0,
                 min_interval_s: float = 0.25) -> None:
        if window_s <= 0 or keep_s < window_s:
            raise ValueError("need 0 < window_s <= keep_s")
        self._metrics = metrics
        self._clock = clock
        self.window_s = window_s
        self._keep_s = keep_s
        self._min_interval_s = min_interval_s
        self._history: deque[tuple[float, Reading]] = deque()

    def _base(self, now: float) -> tuple[float, Reading] | None:
        """The newest reading at least ``window_s`` old, else the oldest one there is."""
        base = None
        for t, r in self._history:
            if now - t >= self.window_s:
                base = (t, r)
            else:
                break
        if base is None and self._history and self._history[0][0] < now:
            base = self._history[0]
        return base

    def sample(self, names: Iterable[str] = ()) -> dict[str, Any]:
        now = self._clock()
        current, gauges = read(self._metrics)
        base = self._base(now)
        if not self._history or now - self._history[-1][0] >= self._min_interval_s:
            self._history.append((now, current))
        while self._history and now - self._history[0][0] > self._keep_s:
            self._history.popleft()
        span = now - base[0] if base is not None else 0.0
        old = base[1] if base is not None else {}
        rows = []
        for name in sorted(set(current) | set(gauges) | set(names)):
            cur = current.get(name, _Model())
            prev = old.get(name, _Model())
            g = gauges.get(name, {})
            row: dict[str, Any] = {
                "model": name,
                "requests_total": int(cur.requests),
                "errors_total": int(cur.errors),
                "in_flight": int(g.get("in_flight", 0)),
                "queue_depth": int(g.get("queue_depth", 0)),
                "rps": None, "error_rate": None, "tokens_in_per_s": None, "tokens_out_per_s": None,
                "p50_latency_s": None, "p99_latency_s": None, "p50_ttft_s": None, "p99_ttft_s": None,
            }
            if span > 0:
                n = cur.requests - prev.requests
                lat = _delta(cur.latency.buckets, prev.latency.buckets)
                ttft = _delta(cur.ttft.buckets, prev.ttft.buckets)
                row.update(
                    rps=n / span,
                    error_rate=(cur.errors - prev.errors) / n if n > 0 else 0.0,
                    tokens_in_per_s=(cur.tokens_in - prev.tokens_in) / span,
                    tokens_out_per_s=(cur.tokens_out - prev.tokens_out) / span,
                    p50_latency_s=quantile(0.5, lat), p99_latency_s=quantile(0.99, lat),
                    p50_ttft_s=quantile(0.5, ttft), p99_ttft_s=quantile(0.99, ttft),
                )
            rows.append(row)
        return {"object": "list", "window_s": round(span, 3), "data": rows}
