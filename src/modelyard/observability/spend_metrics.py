"""Prometheus view of the spend writer: its backlog, its spool and its counters, read at scrape
time from the writer's own stats (one owner: the writer; nothing is copied per request)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

StatsFn = Callable[[], dict[str, int]]

_GAUGES = (
    ("modelyard_spend_backlog_rows", "Spend rows waiting in memory for the database", "buffered"),
    ("modelyard_spend_backlog_bytes", "Estimated bytes of the spend rows waiting in memory", "buffered_bytes"),
    ("modelyard_spend_spool_rows", "Spend rows in the disk spool, waiting for the database", "spooled"),
    ("modelyard_spend_spool_bytes", "Size of the spend spool file in bytes", "spool_bytes"),
)
_COUNTERS = (
    ("modelyard_spend_rows_written", "Spend rows the database stored", "written"),
    ("modelyard_spend_rows_dropped", "Spend rows lost (neither database nor spool took them)", "dropped"),
    ("modelyard_spend_rows_spilled", "Spend rows moved to the spool because the in-memory backlog was full", "spilled"),
    ("modelyard_spend_write_failures", "Failed or timed-out spend inserts", "failures"),
)


class SpendCollector:
    def __init__(self, stats: StatsFn) -> None:
        self._stats = stats

    def describe(self) -> Iterator[Metric]:
        return iter(())  # unchecked collector: described by collect() at scrape time

    def collect(self) -> Iterator[Metric]:
        s = self._stats()
        for name, doc, key in _GAUGES:
            g = GaugeMetricFamily(name, doc)
            g.add_metric([], s.get(key, 0))
            yield g
        for name, doc, key in _COUNTERS:
            c = CounterMetricFamily(name, doc)
            c.add_metric([], s.get(key, 0))
            yield c


def register_spend(registry: CollectorRegistry, stats: StatsFn) -> SpendCollector:
    c = SpendCollector(stats)
    registry.register(c)
    return c
