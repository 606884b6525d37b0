"""Admin API for local models: residency (load, demote, unload) and pins.

Until API keys land (issue 5) these routes answer only clients on the loopback interface.
"""

from __future__ import annotations

from modelyard.api.app import ModelyardApp
from modelyard.api.http import Request
from modelyard.errors import InvalidRequestError, NotFoundError, PermissionDeniedError
from modelyard.memory.devices import gpu_memory_stats

_LOOPBACK = ("127.0.0.1", "::1", "localhost")
_ACTIONS = ("load", "demote", "unload", "pin", "unpin")


def register(app: ModelyardApp) -> None:
    def manager():  # noqa: ANN202
        s = app.services
        assert s is not None
        if s.memory is None:
            raise NotFoundError("no local models are configured", code="no_local_models")
        return s.memory

    def only_loopback(req: Request) -> None:
        client = req.scope.get("client")
        if not client or client[0] not in _LOOPBACK:
            raise PermissionDeniedError("the admin API answers loopback clients only (until API keys exist)")

    async def list_models(req: Request) -> None:
        req.endpoint = "admin"
        only_loopback(req)
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
        only_loopback(req)
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

    app.route("/admin/models", "GET", list_models)
    app.prefix_route("/admin/models/", "POST", act)
