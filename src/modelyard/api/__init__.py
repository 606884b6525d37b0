"""The HTTP edge: parse, validate, hand to a service, map the result."""

from __future__ import annotations

import time

from modelyard.config.schema import Settings
from modelyard.observability.logging import AccessLog
from modelyard.routing.breaker import Clock


def create_app(settings: Settings, *, access_log: AccessLog | None = None, clock: Clock = time.monotonic):  # noqa: ANN201
    """Build the ASGI app with every route registered (services are built in its lifespan)."""
    from modelyard.api import admin_routes, key_routes, openai_routes, openapi_doc, ops_routes, responses_routes, ui_routes
    from modelyard.api.app import ModelyardApp
    from modelyard.api import batch_routes

    app = ModelyardApp(settings, access_log=access_log, clock=clock)
    openai_routes.register(app)
    batch_routes.register(app)  # /v1/files, /v1/batches
    responses_routes.register(app)
    ops_routes.register(app)
    admin_routes.register(app)
    key_routes.register(app)
    openapi_doc.register(app)
    ui_routes.register(app)  # /ui, /admin/traffic, /admin/routing
    return app
