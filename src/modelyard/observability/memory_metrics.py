"""Prometheus metrics of the memory manager (definitions only; ``memory/manager.py`` records).

Registered into the registry it is given (the app's one registry), never a process-global one.
Labels are plain strings (tier and state values), so this module does not depend on ``memory/``.
Cardinality is bounded by the number of configured local models.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

TIER_VALUE = {"disk": 0, "host": 1, "active": 2}

# Loads span milliseconds (host → active of a small model) to minutes (a big model from disk).
_TRANSITION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class MemoryMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = self.registry = registry
        self.model_tier = Gauge(
            "modelyard_model_tier", "Tier a local model lives in: 0 disk, 1 host, 2 active", ["model"], registry=r,
        )
        self.model_state = Gauge(
            "modelyard_model_state", "1 for the residency state a local model is in, 0 for the others",
            ["model", "state"], registry=r,
        )
        self.transitions = Counter(
            "modelyard_model_transitions", "Completed tier moves of local models (loads and demotions)",
            ["model", "src", "dst"], registry=r,
        )
        self.transition_seconds = Histogram(
            "modelyard_model_transition_seconds", "Duration of tier moves (load time for dst=active)",
            ["model", "src", "dst"], buckets=_TRANSITION_BUCKETS, registry=r,
        )
        self.load_failures = Counter(
            "modelyard_model_load_failures", "Loads (or warm-ups) of a local model that failed", ["model"], registry=r,
        )
        self.memory_bytes = Gauge("modelyard_memory_bytes", "Bytes accounted to each tier", ["tier"], registry=r)
        self.memory_budget_bytes = Gauge(
            "modelyard_memory_budget_bytes", "Budget of each tier in bytes", ["tier"], registry=r,
        )
        self.model_in_flight = Gauge(
            "modelyard_model_in_flight", "Requests holding a lease on a local model", ["model"], registry=r,
        )

    def set_budgets(self, active: int, host: int) -> None:
        self.memory_budget_bytes.labels("active").set(active)
        self.memory_budget_bytes.labels("host").set(host)

    def set_usage(self, active: int, host: int) -> None:
        self.memory_bytes.labels("active").set(active)
        self.memory_bytes.labels("host").set(host)

    def set_state(self, model: str, state: str, previous: str | None) -> None:
        if previous is not None and previous != state:
            self.model_state.labels(model, previous).set(0)
        self.model_state.labels(model, state).set(1)

    def set_tier(self, model: str, tier: str) -> None:
        self.model_tier.labels(model).set(TIER_VALUE[tier])

    def transition(self, model: str, src: str, dst: str, seconds: float) -> None:
        self.transitions.labels(model, src, dst).inc()
        self.transition_seconds.labels(model, src, dst).observe(seconds)

    def in_flight(self, model: str) -> Any:
        """The model's in-flight gauge child (resolved once, kept by the caller: hot path)."""
        return self.model_in_flight.labels(model)
