"""The ASGI application: builds every service in its lifespan, dispatches by exact path, and is
the one place that turns errors into OpenAI-shaped JSON (no traceback ever reaches a client).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from modelyard.accounting.recorder import Finished
from modelyard.api.http import Receive, Request, Scope, Send
from modelyard.api.services import Services, build_services
from modelyard.api.sse import error_event
from modelyard.config.schema import Settings
from modelyard.errors import (
    MethodNotAllowedError,
    ModelyardError,
    NotFoundError,
    ShuttingDownError,
    SpendBackloggedError,
    internal_error_body,
)
from modelyard.observability.logging import AccessLog
from modelyard.routing.breaker import Clock

log = logging.getLogger("modelyard")

Handler = Callable[[Request], Awaitable[None]]


class ModelyardApp:
    """ASGI 3 application. ``services`` exists between lifespan startup and shutdown."""

    def __init__(self, settings: Settings, *, access_log: AccessLog | None = None, clock: Clock = time.monotonic) -> None:
        self.settings = settings
        self._access_log = access_log
        self._clock = clock
        self.services: Services | None = None
        self._routes: dict[str, dict[str, Handler]] = {}
        self._prefix_routes: list[tuple[str, dict[str, Handler]]] = []
        self._max_body = settings.server.max_body_bytes

    def route(self, path: str, method: str, handler: Handler) -> None:
        self._routes.setdefault(path, {})[method] = handler

    def prefix_route(self, prefix: str, method: str, handler: Handler) -> None:
        for p, methods in self._prefix_routes:
            if p == prefix:
                methods[method] = handler
                return
        self._prefix_routes.append((prefix, {method: handler}))

    @property
    def max_body(self) -> int:
        return self._max_body

    async def startup(self) -> Services:
        if self.services is None:
            self.services = build_services(self.settings, access_log=self._access_log, clock=self._clock)
            await self.services.start()
        return self.services

    async def shutdown(self) -> None:
        if self.services is not None:
            await self.services.aclose()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:  # noqa: BLE001 - reported to the server, which exits
                    log.exception("startup failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    def _find(self, path: str) -> dict[str, Handler] | None:
        methods = self._routes.get(path)
        if methods is None:
            for prefix, m in self._prefix_routes:
                if path.startswith(prefix) and len(path) > len(prefix):
                    return m
        return methods

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        services = self.services
        assert services is not None, "the server must run the lifespan (uvicorn lifespan='on')"
        req = Request(scope, receive, send, services.clock())
        task = asyncio.current_task()
        try:
            path = req.path
            gate = services.gate
            if path.startswith("/v1/"):
                if services.draining:
                    raise ShuttingDownError("the server is shutting down; retry the request (on another replica)",
                                            retry_after_s=1.0, headers={"connection": "close"})
                spend = services.spend
                if spend is not None and spend.saturated and req.method == "POST":
                    raise SpendBackloggedError(
                        "the gateway cannot record spend fast enough right now (database and spool behind); "
                        "retry the request", retry_after_s=spend.retry_after_s())
                if gate.enabled:  # without keys every caller is the same anonymous one (principal None)
                    req.principal = await gate.client(req)
            elif path.startswith(("/admin/", "/spend/")):
                req.principal = await gate.admin(req)
            elif path.startswith("/key/"):
                req.principal = await gate.self_or_admin(req)
            methods = self._find(path)
            if methods is None:
                raise NotFoundError(f"Unknown path {req.path!r}", code="unknown_url")
            handler = methods.get(req.method)
            if handler is None:
                allow = ", ".join(sorted(methods))
                raise MethodNotAllowedError(
                    f"method {req.method} is not allowed on {req.path}; allowed: {allow}", headers={"allow": allow}
                )
            await handler(req)
        except ModelyardError as exc:
            if not req.started:
                await req.respond_error(exc)
        except asyncio.CancelledError:
            if task is None:
                raise
            task.uncancel()
            if req.disconnected:
                req.status = 499  # client closed the request (nginx's convention)
            else:
                # Not the client: the server's shutdown grace period ran out. Answer anyway.
                await self._cancelled_by_shutdown(req)
        except Exception:  # noqa: BLE001 - the one place that turns a bug into a clean 500
            log.exception("unhandled error on %s %s (request %s)", req.method, req.path, req.request_id)
            if not req.started:
                await req.respond(500, internal_error_body())
            req.status = 500
        finally:
            if req.watcher is not None:
                req.watcher.cancel()
            self._record(req, services)

    async def _cancelled_by_shutdown(self, req: Request) -> None:
        exc = ShuttingDownError("the server is shutting down; retry the request", retry_after_s=1.0)
        try:
            if not req.started:
                await req.respond_error(exc)
            elif not req.finished:
                req.status = exc.status
                await req.end_stream(error_event(exc))
        except (OSError, RuntimeError):  # the connection is already gone: nothing left to tell
            pass

    def _record(self, req: Request, services: Services) -> None:
        principal = req.principal
        finished = Finished(
            request_id=req.request_id, method=req.method, path=req.path, endpoint=req.endpoint, status=req.status,
            elapsed_s=services.clock() - req.t0, model=req.model,
            key_id=principal.key_id if principal is not None else None,
            team=principal.team if principal is not None else None,
        )
        tally = req.outcome
        services.recorder.record(finished, tally.end(req.status) if tally is not None else None, principal)
