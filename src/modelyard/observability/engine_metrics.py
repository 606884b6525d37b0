"""Prometheus view of managed engine processes: restarts and liveness per model, read at scrape
time from the memory manager's snapshot (the supervisor owns the counts; nothing is copied).

``modelyard_engine_restarts_total`` is the supervisor's own restart count: it goes back to 0 when
a new supervisor replaces the old one (PromQL's ``increase`` handles that as a counter reset).
Models served in-process have no engine process and no series.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

SnapshotFn = Callable[[], list[dict[str, Any]]]


class EngineCollector:
    def __init__(self, snapshot: SnapshotFn) -> None:
        self._snapshot = snapshot

    def describe(self) -> Iterator[Metric]:
        return iter(())  # unchecked collector: described by collect() at scrape time

    def collect(self) -> Iterator[Metric]:
        restarts = CounterMetricFamily("modelyard_engine_restarts", "Restarts of a model's managed engine process",
                                       labels=["model"])
        up = GaugeMetricFamily("modelyard_engine_up", "1 while a model's managed engine process is running",
                               labels=["model"])
        for m in self._snapshot():
            e = m.get("engine")
            if not isinstance(e, dict) or "restarts" not in e:
                continue
            restarts.add_metric([m["name"]], int(e.get("restarts") or 0))
            up.add_metric([m["name"]], 1 if e.get("pid") else 0)
        yield restarts
        yield up


def register_engines(registry: CollectorRegistry, snapshot: SnapshotFn) -> EngineCollector:
    c = EngineCollector(snapshot)
    registry.register(c)
    return c
