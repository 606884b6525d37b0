"""The ASGI application: builds every service in its lifespan, dispatches by exact path, and is
the one place that turns errors into OpenAI-shaped JSON (no traceback ever reaches a client).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from modelyard.api.http import Receive, Request, Scope, Send
from modelyard.api.proxy import Proxy
from modelyard.backends.httpclient import HTTPPool
from modelyard.backends.openai import OpenAIBackend
from modelyard.accounting.pricing import cost as price_of
from modelyard.accounting.pricing import to_nano
from modelyard.api.auth import Gate
from modelyard.auth.ring import KeyRing
from modelyard.auth.store import KeyStore
from modelyard.limits.base import Limiter
from modelyard.limits.budget import Budgets, MemoryBudgets, RedisBudgets
from modelyard.limits.guard import RateGuard
from modelyard.limits.memory import MemoryLimiter
from modelyard.accounting.store import SpendRow, SpendStore
from modelyard.accounting.writer import SpendWriter
from modelyard.backends.base import Backend
from modelyard.backends.local_models import LocalModels, build_local_models, data_dir, has_local
from modelyard.db import Database, database_url
from modelyard.config.schema import Deployment, LocalDeployment, ProcessDeployment, Settings
from modelyard.memory.manager import MemoryManager
from modelyard.api.sse import error_event
from modelyard.errors import (
    MethodNotAllowedError,
    ModelyardError,
    NotFoundError,
    ShuttingDownError,
    SpendBackloggedError,
    internal_error_body,
)
from modelyard.observability.logging import AccessLog
from modelyard.observability.metrics import UNKNOWN_MODEL, Metrics
from modelyard.observability.loop_lag import GcPauses, LoopLagMonitor
from modelyard.observability.spend_metrics import register_spend
from modelyard.routing.breaker import Clock
from modelyard.routing.router import Router

log = logging.getLogger("modelyard")

Handler = Callable[[Request], Awaitable[None]]


@dataclass
class Services:
    """Everything a request may touch; built in the lifespan, closed at shutdown."""

    settings: Settings
    metrics: Metrics
    pool: HTTPPool
    router: Router
    proxy: Proxy
    access_log: AccessLog
    clock: Clock
    gate: Gate
    guard: RateGuard
    local: LocalModels | None = None
    spend: SpendWriter | None = None
    spend_store: SpendStore | None = None
    db: Database | None = None
    keys: KeyStore | None = None
    ring: KeyRing | None = None
    budgets: Budgets | None = None
    redis: Any = None  # the redis client shared by limiter and budgets (owned)
    draining: bool = False
    loop_lag: LoopLagMonitor | None = None
    gc_pauses: GcPauses | None = None

    @property
    def memory(self) -> MemoryManager | None:
        return self.local.manager if self.local is not None else None

    @property
    def local_keys(self) -> dict[str, str]:
        return self.local.keys if self.local is not None else {}

    async def start(self) -> None:
        self.access_log.start()
        if self.loop_lag is not None:
            self.loop_lag.start()
        if self.gc_pauses is not None:
            self.gc_pauses.start()
        if self.db is not None:
            try:
                await self.db.start()  # versioned migrations, under a lock
            except ModelyardError as exc:  # the writer spools and the key ring retries until it answers
                log.error("database unavailable at start: %s", exc.message)
        if self.spend is not None:
            await self.spend.start()
        if self.ring is not None:
            try:
                await self.ring.start()
            except ModelyardError as exc:
                log.error("virtual keys not loaded at start (retrying in the background): %s", exc.message)
        if self.local is not None:
            await self.local.start()  # engines' imports (begun at build), then preloads and keep-alive

    async def aclose(self) -> None:
        if self.local is not None:
            await self.local.aclose()
        if self.spend is not None:
            await self.spend.aclose()  # every accepted row: to the database, or to the spool
        if self.ring is not None:
            await self.ring.aclose()
        if self.budgets is not None:
            await self.budgets.aclose()
        await self.guard.limiter.aclose()
        if self.redis is not None:
            await self.redis.aclose()
        if self.db is not None:
            await self.db.aclose()
        await self.pool.aclose()
        await self.access_log.aclose()
        if self.loop_lag is not None:
            await self.loop_lag.aclose()
        if self.gc_pauses is not None:
            self.gc_pauses.stop()


def build_services(settings: Settings, *, access_log: AccessLog | None = None, clock: Clock = time.monotonic) -> Services:
    metrics = Metrics()
    pool = HTTPPool()
    local = build_local_models(settings, metrics.registry, pool=pool) if has_local(settings) else None

    def backend_for(d: Deployment) -> Backend:
        if isinstance(d, (LocalDeployment, ProcessDeployment)):
            assert local is not None
            return local.backends[id(d)]
        return OpenAIBackend(d.api_base, d.api_key, pool)

    master_key = settings.auth.master_key or os.environ.get("MODELYARD_MASTER_KEY") or None
    db = spend_store = spend = keys = ring = None
    if settings.spend.enabled or master_key:
        home = data_dir(settings)
        home.mkdir(parents=True, exist_ok=True)
        db = Database(database_url(settings))
        if settings.spend.enabled:
            spend_store = SpendStore(db)
            sc = settings.spend
            spend = SpendWriter(spend_store, spool_path=home / "spend.spool", flush_interval_s=sc.flush_interval_s,
                                max_buffer_rows=sc.max_buffer_rows, max_buffer_bytes=sc.max_buffer_bytes,
                                stuck_after_s=sc.stuck_after_s)
            register_spend(metrics.registry, spend.stats)
        if master_key:
            keys = KeyStore(db)
            ring = KeyRing(keys, refresh_interval_s=settings.auth.refresh_interval_s)
    seed = spend_store.spent_nano if spend_store is not None else _no_spend
    lim = settings.limits
    redis = None
    if lim.redis_url:
        from modelyard.limits.redis import RedisLimiter, redis_client

        redis = redis_client(lim.redis_url)
        limiter: Limiter = RedisLimiter(redis, prefix=lim.redis_prefix + "rl:")
        budgets: Budgets = RedisBudgets(redis, seed, prefix=lim.redis_prefix + "budget:", fail_open=lim.fail_open)
    else:
        limiter, budgets = MemoryLimiter(), MemoryBudgets(seed)
    guard = RateGuard(limiter, fail_open=lim.fail_open, metrics=metrics)
    router = Router(settings, backend_for, metrics, clock=clock, guard=guard)
    return Services(
        settings=settings,
        metrics=metrics,
        pool=pool,
        router=router,
        proxy=Proxy(router, metrics, clock, guard=guard, default_completion_tokens=lim.default_completion_tokens),
        access_log=access_log or AccessLog(enabled=settings.server.access_log),
        clock=clock,
        gate=Gate(master_key, ring, budgets, on_budget_exceeded=metrics.budget_exceeded.inc),
        guard=guard,
        local=local,
        spend=spend,
        spend_store=spend_store,
        db=db,
        keys=keys,
        ring=ring,
        budgets=budgets,
        redis=redis,
        loop_lag=LoopLagMonitor(metrics.registry),
        gc_pauses=GcPauses(metrics.registry),
    )


async def _no_spend(key_id: str, since: dt.datetime) -> int:
    return 0


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
        elapsed = services.clock() - req.t0
        model = req.model or UNKNOWN_MODEL
        m = services.metrics
        endpoint = req.endpoint if req.status != 404 or req.model else "other"
        count, latency = m.request_series(model, endpoint, req.status)
        count.inc()
        latency.observe(elapsed)
        if services.spend is not None and req.model is not None:
            p, c = req.prompt_tokens or 0, req.completion_tokens or 0
            cost, priced = price_of(req.price, p, c)
            principal = req.principal
            if cost:
                services.gate.charge(principal, to_nano(cost))
            services.spend.write(
                SpendRow(
                    request_id=req.request_id, ts=dt.datetime.now(dt.UTC),
                    key_hash=principal.key_id if principal is not None else None,
                    team=principal.team if principal is not None else None,
                    model=req.model, deployment=req.deployment or "", prompt_tokens=p, completion_tokens=c,
                    cost=cost, priced=priced, latency_ms=round(elapsed * 1000, 3), status=req.status,
                    fallbacks=req.fallbacks, stream=req.stream,
                )
            )
        if services.access_log.enabled:
            services.access_log.write(
                {
                    "request_id": req.request_id,
                    "method": req.method,
                    "path": req.path,
                    "model": req.model,
                    "deployment": req.deployment,
                    "status": req.status,
                    "latency_ms": round(elapsed * 1000, 3),
                    "prompt_tokens": req.prompt_tokens,
                    "completion_tokens": req.completion_tokens,
                    "fallbacks": req.fallbacks,
                }
            )

