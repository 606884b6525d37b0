"""Admin API for local models: residency (load, demote, unload) and pins.

Every path here needs the master key (``api.auth.Gate.admin``, applied by the app to ``/admin/`` and
``/spend/`` before routing); without a master key configured, only loopback clients.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

from modelyard.api.app import ModelyardApp
from modelyard.api.http import Request
from modelyard.errors import InvalidRequestError, NotFoundError
from modelyard.memory.devices import gpu_memory_stats




def _time(q: dict[str, str], name: str) -> dt.datetime | None:
    v = q.get(name)
    if v is None:
        return None
    try:
        t = dt.datetime.fromisoformat(v)
    except ValueError:
        raise InvalidRequestError(f"{name}: expected an ISO 8601 date or time, got {v!r}", param=name) from None
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


def _int(q: dict[str, str], name: str, default: int) -> int:
    v = q.get(name)
    if v is None:
        return default
    if not v.isdigit():
        raise InvalidRequestError(f"{name}: expected a positive integer, got {v!r}", param=name)
    return int(v)
_ACTIONS = ("load", "demote", "unload", "pin", "unpin")


def register(app: ModelyardApp) -> None:
    def manager():  # noqa: ANN202
        s = app.services
        assert s is not None
        if s.memory is None:
            raise NotFoundError("no local models are configured", code="no_local_models")
        return s.memory

    async def list_models(req: Request) -> None:
        req.endpoint = "admin"
        mm = manager()
        usage = mm.usage()
        budgets = mm.budgets
        await req.respond_json(
            200,
            {
                "object": "list",
                "data": mm.snapshot(),
                "memory": {
                    tier.value: {"used_bytes": usage.get(tier, 0), "budget_bytes": getattr(budgets, tier.value)}
                    for tier in usage
                },
                "gpu": gpu_memory_stats(),  # allocated vs reserved (fragmentation); null without a GPU
            },
        )

    async def act(req: Request) -> None:
        """POST /admin/models/{name}/{action}; demote takes {"to": "host" | "disk"}."""
        req.endpoint = "admin"
        rest = req.path[len("/admin/models/"):]
        name, _, action = rest.rpartition("/")
        if not name or action not in _ACTIONS:
            raise NotFoundError(f"unknown admin action; use /admin/models/<model>/({'|'.join(_ACTIONS)})")
        mm = manager()
        key = app.services.local_keys.get(name, name) if app.services else name
        if action == "demote":
            from modelyard.memory.policy import Tier

            data, _ = await req.json_object(app.max_body) if req.header(b"content-length") not in (None, b"0") else ({}, b"")
            to = data.get("to", "host")
            if to not in ("host", "disk"):
                raise InvalidRequestError("to: expected 'host' or 'disk'", param="to")
            await mm.demote(key, Tier(to))
        else:
            await getattr(mm, action)(key)
        snap = next((m for m in mm.snapshot() if m["name"] == key), None)
        await req.respond_json(200, {"ok": True, "model": snap})

    def spend_store():  # noqa: ANN202
        s = app.services
        assert s is not None
        if s.spend_store is None:
            raise NotFoundError("spend tracking is disabled (spend.enabled: false)", code="spend_disabled")
        return s.spend_store

    async def spend_logs(req: Request) -> None:
        """GET /spend/logs?key_hash=&model=&team=&since=&until=&limit=&cursor= (newest first)."""
        req.endpoint = "spend"
        q = req.query()
        rows, cursor = await spend_store().logs(
            key_hash=q.get("key_hash"), model=q.get("model"), team=q.get("team"),
            since=_time(q, "since"), until=_time(q, "until"), limit=_int(q, "limit", 100), cursor=q.get("cursor"),
        )
        await req.respond_json(200, {"object": "list", "data": [r.to_json() for r in rows], "next_cursor": cursor})

    async def spend_report(req: Request) -> None:
        """GET /spend/report?since=&until=&group_by=model,day&limit= (default: the last 30 days by model;
        limit: only the top N groups by cost, highest first)."""
        req.endpoint = "spend"
        q = req.query()
        until = _time(q, "until") or dt.datetime.now(dt.UTC)
        since = _time(q, "since") or until - dt.timedelta(days=30)
        group_by = tuple(g for g in q.get("group_by", "model").split(",") if g)
        limit = _int(q, "limit", 0) if "limit" in q else None
        rows = await spend_store().report(since, until, group_by, limit)
        data = [
            {**dataclasses.asdict(r), "cost": str(r.cost),
             "cost_per_success": None if r.cost_per_success is None else str(r.cost_per_success)}
            for r in rows
        ]
        await req.respond_json(200, {"object": "list", "since": since.isoformat(), "until": until.isoformat(),
                                     "group_by": list(group_by), "data": data})

    app.route("/spend/logs", "GET", spend_logs)
    app.route("/spend/report", "GET", spend_report)
    async def autoscale(req: Request) -> None:
        req.endpoint = "admin"
        s = app.services
        assert s is not None
        rows = s.autoscaler.status() if s.autoscaler is not None else []
        await req.respond_json(200, {"object": "list", "data": rows})

    app.route("/admin/models", "GET", list_models)
    app.route("/admin/autoscale", "GET", autoscale)
    app.prefix_route("/admin/models/", "POST", act)
