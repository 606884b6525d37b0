"""Operational routes: Prometheus metrics and health probes."""

from __future__ import annotations

from modelyard.api.app import ModelyardApp
from modelyard.api.http import Request
from modelyard.routing.breaker import BreakerState


def register(app: ModelyardApp) -> None:
    async def metrics(req: Request) -> None:
        assert app.services is not None
        m = app.services.metrics
        await req.respond(200, m.render(), content_type=m.content_type.encode())

    async def liveness(req: Request) -> None:
        await req.respond_json(200, {"status": "ok"})

    async def readiness(req: Request) -> None:
        """Ready unless draining or the spend backlog is full. The spend writer's state is reported
        (ok | spooling | stuck | saturated); a database that is away only degrades it (rows spool).
        Models whose every deployment has an open breaker are listed as unavailable but do not fail
        the probe: one broken upstream must not take the gateway (and every other model) out of the
        load balancer."""
        s = app.services
        assert s is not None
        models = {
            g.name: sum(1 for d in g.deployments if d.breaker.state is not BreakerState.open) for g in s.router.groups()
        }
        unavailable = sorted(name for name, n in models.items() if n == 0)
        spend = s.spend.health() if s.spend is not None else None
        saturated = spend is not None and spend.state == "saturated"
        ready = not s.draining and not saturated  # saturated: /v1 requests are refused anyway
        if s.draining:
            status = "draining"
        elif saturated:
            status = "spend_backlogged"
        else:
            status = "degraded" if unavailable or (spend is not None and spend.state != "ok") else "ready"
        body: dict[str, object] = {"status": status, "models": models}
        if unavailable:
            body["unavailable"] = unavailable
        if spend is not None:
            body["spend"] = spend.as_dict()
        await req.respond_json(200 if ready else 503, body)

    app.route("/metrics", "GET", metrics)
    app.route("/health/liveness", "GET", liveness)
    app.route("/health/readiness", "GET", readiness)
    app.route("/health", "GET", liveness)


