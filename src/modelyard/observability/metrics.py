"""Prometheus metric definitions (definitions only; the router and the routes record into them).

One registry per app instance (no process-global registry), so several apps can live in one test
process. Every series is labelled by public model, and by deployment where one applies.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

UNKNOWN_MODEL = "(unknown)"  # label for requests naming no configured model: bounded cardinality


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "modelyard_requests", "Client requests by public model, endpoint and HTTP status",
            ["model", "endpoint", "status"], registry=r,
        )
        self.request_latency = Histogram(
            "modelyard_request_duration_seconds", "Client request latency (to the last byte)",
            ["model", "endpoint"], buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.ttft = Histogram(
            "modelyard_time_to_first_token_seconds", "Streams: time from request to the first content event",
            ["model"], buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.tokens = Counter(
            "modelyard_tokens", "Tokens by public model, deployment and direction (in=prompt, out=completion)",
            ["model", "deployment", "direction"], registry=r,
        )
        self.in_flight = Gauge("modelyard_in_flight_requests", "Admitted requests in flight", ["model"], registry=r)
        self.queue_depth = Gauge("modelyard_queue_depth", "Requests waiting for a slot", ["model"], registry=r)
        self.queue_depth_by_priority = Gauge(
            "modelyard_queue_depth_by_priority", "Requests waiting for a slot, by priority (high, normal, low)",
            ["model", "priority"], registry=r,
        )
        self.cascade_answers = Counter(
            "modelyard_cascade_answers", "Cascade requests by the tier model that answered", ["model", "answered_by"],
            registry=r,
        )
        self.cascade_confidence = Histogram(
            "modelyard_cascade_confidence", "Confidence of a cascade tier's answer (mean/min token logprob, or P(yes))",
            ["model", "tier_model"], buckets=(-5, -3, -2, -1.5, -1, -0.75, -0.5, -0.25, -0.1, 0, 0.25, 0.5, 0.75, 0.9, 1),
            registry=r,
        )
        self.upstream_requests = Counter(
            "modelyard_upstream_requests", "Attempts sent to a deployment, by outcome",
            ["model", "deployment", "outcome"], registry=r,
        )
        self.upstream_latency = Histogram(
            "modelyard_upstream_duration_seconds", "Deployment latency (to the full body, or to the stream head)",
            ["model", "deployment"], buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.retries = Counter("modelyard_retries", "Retries inside a model group", ["model", "deployment"], registry=r)
        self.fallbacks = Counter(
            "modelyard_fallbacks", "Fallback hops from a model to another", ["model", "to_model"], registry=r,
        )
        self.breaker_state = Gauge(
            "modelyard_breaker_state", "Circuit breaker state: 0 closed, 1 half-open, 2 open",
            ["model", "deployment"], registry=r,
        )
        self.rate_limited = Counter(
            "modelyard_rate_limited", "Requests refused (or deployments skipped) at an rpm/tpm limit",
            ["model", "scope"], registry=r,  # scope: key | model | deployment
        )
        self.budget_exceeded = Counter(
            "modelyard_budget_exceeded", "Requests refused because their key's budget is spent", registry=r,
        )
        self.limiter_unavailable = Counter(
            "modelyard_limiter_unavailable", "Limit checks the limiter's store (Redis) could not answer", registry=r,
        )

        self._request_series: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    # Resolving a labelled child costs about a microsecond (a lock and a dict lookup); the hot
    # path uses children resolved once and cached here or on the deployment.
    def request_series(self, model: str, endpoint: str, status: int) -> tuple[Any, Any]:
        """(requests counter, latency histogram) children for one label set."""
        key = (model, endpoint, status)
        series = self._request_series.get(key)
        if series is None:
            series = self._request_series[key] = (
                self.requests.labels(model, endpoint, str(status)),
                self.request_latency.labels(model, endpoint),
            )
        return series

    def deployment_series(self, model: str, deployment: str) -> "DeploymentSeries":
        return DeploymentSeries(
            ok=self.upstream_requests.labels(model, deployment, "ok"),
            latency=self.upstream_latency.labels(model, deployment),
            tokens_in=self.tokens.labels(model, deployment, "in"),
            tokens_out=self.tokens.labels(model, deployment, "out"),
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


@dataclass(frozen=True)
class DeploymentSeries:
    """The per-deployment children touched on every successful request."""

    ok: Any
    latency: Any
    tokens_in: Any
    tokens_out: Any
