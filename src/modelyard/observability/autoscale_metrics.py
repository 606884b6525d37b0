"""Prometheus metrics of the autoscaler (definitions only; ``scaling/local.py`` records).

Cardinality: the autoscaled models × a handful of causes (load, prewarm, predictive, idle, min_max).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class AutoscaleMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.desired = Gauge("modelyard_autoscale_desired_replicas", "Replicas the autoscaling policy wants now",
                             ["model"], registry=r)
        self.actual = Gauge("modelyard_autoscale_actual_replicas", "Replicas resident on the active tier now",
                            ["model"], registry=r)
        self.cause = Gauge("modelyard_autoscale_cause", "1 for the cause of the last decision, 0 for the others",
                           ["model", "cause"], registry=r)
        self.changes = Counter("modelyard_autoscale_changes", "Scaling actions taken, by cause", ["model", "cause"],
                               registry=r)

    def observe(self, model: str, desired: int, actual: int, cause: str, *, changed: bool) -> None:
        self.desired.labels(model).set(desired)
        self.actual.labels(model).set(actual)
        for c in ("load", "prewarm", "predictive", "idle", "min_max"):
            self.cause.labels(model, c).set(1.0 if c == cause else 0.0)
        if changed:
            self.changes.labels(model, cause).inc()
