"""Building and closing every service a request may touch (the app's lifespan calls these).

Kept apart from ``api.app`` so that the ASGI edge stays thin: the app dispatches and renders
errors; what exists per process (router, proxy, limiter, budgets, spend writer, recorder, local
models) is assembled here, once, with the clocks injected.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

from modelyard.accounting.recorder import Recorder, WallClock, utc_now
from modelyard.accounting.store import SpendStore
from modelyard.accounting.tier_events import TierEventWriter
from modelyard.accounting.writer import SpendWriter
from modelyard.observability.autoscale_metrics import AutoscaleMetrics
from modelyard.scaling.local import LocalAutoscaler, Scaled
from modelyard.api.auth import Gate
from modelyard.api.cascading import Cascades, calibrations
from modelyard.api.proxy import Proxy
from modelyard.batch import batch_price, build_batches
from modelyard.api.responses import ResponsesService
from modelyard.responses.store import ResponseStore
from modelyard.auth.ring import KeyRing
from modelyard.auth.store import KeyStore
from modelyard.backends.base import Backend
from modelyard.backends.httpclient import HTTPPool
from modelyard.backends.local_models import LocalModels, build_local_models, data_dir, has_local
from modelyard.backends.openai import OpenAIBackend
from modelyard.backends.ray_backend import RayServe, ray_services
from modelyard.config.schema import Deployment, LocalDeployment, ProcessDeployment, Settings
from modelyard.db import Database, database_url
from modelyard.errors import ModelyardError
from modelyard.limits.base import Limiter
from modelyard.limits.budget import Budgets, MemoryBudgets, RedisBudgets
from modelyard.limits.guard import RateGuard
from modelyard.limits.memory import MemoryLimiter
from modelyard.memory.manager import MemoryManager
from modelyard.observability.logging import AccessLog
from modelyard.observability.loop_lag import GcPauses, LoopLagMonitor
from modelyard.observability.metrics import Metrics
from modelyard.observability.engine_metrics import register_engines
from modelyard.observability.spend_metrics import register_spend
from modelyard.registry.artifacts import ArtifactStore
from modelyard.routing.auto import AutoRouter
from modelyard.routing.breaker import Clock
from modelyard.routing.train import load_task_model
from modelyard.routing.router import Router

log = logging.getLogger("modelyard")


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
    recorder: Recorder
    local: LocalModels | None = None
    spend: SpendWriter | None = None
    tier_events: TierEventWriter | None = None  # the memory manager's tier changes → tier_events
    autoscaler: LocalAutoscaler | None = None  # replicas of autoscaled local/process models (scaling/local.py)
    ray: RayServe | None = None  # `serve --ray`: local models as Ray Serve deployments (backends/ray_backend.py)
    spend_store: SpendStore | None = None
    db: Database | None = None
    keys: KeyStore | None = None
    ring: KeyRing | None = None
    budgets: Budgets | None = None
    redis: Any = None  # the redis client shared by limiter and budgets (owned)
    draining: bool = False
    loop_lag: LoopLagMonitor | None = None
    gc_pauses: GcPauses | None = None
    responses: ResponsesService | None = None  # /v1/responses (api/responses.py)
    batches: Any = None  # the Batch API: batch.service.BatchService (None: batch.enabled off)

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
        if self.tier_events is not None:
            await self.tier_events.start()
        if self.ring is not None:
            try:
                await self.ring.start()
            except ModelyardError as exc:
                log.error("virtual keys not loaded at start (retrying in the background): %s", exc.message)
        if self.local is not None:
            await self.local.start()  # engines' imports (begun at build), then preloads and keep-alive
        if self.ray is not None:
            await self.ray.start()  # connect, deploy; returns once min_replicas are warm
        if self.autoscaler is not None:
            await self.autoscaler.start()  # after the manager: its first tick may pre-warm
        if self.responses is not None:
            await self.responses.start()  # last: resumed background responses need every model
        if self.batches is not None:
            await self.batches.start()  # after every model: it resumes batches in progress

    async def aclose(self) -> None:
        if self.batches is not None:
            await self.batches.aclose()  # first: running items stay pending, resumed at the next start
        if self.responses is not None:
            await self.responses.aclose()  # first: its background runs stay pending, resumed at the next start
        if self.autoscaler is not None:
            await self.autoscaler.aclose()
        if self.local is not None:
            await self.local.aclose()
        if self.ray is not None:
            await self.ray.aclose()
        if self.spend is not None:
            await self.spend.aclose()  # every accepted row: to the database, or to the spool
        if self.tier_events is not None:
            await self.tier_events.aclose()  # after the models' unloads: those are recorded too
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


def build_services(
    settings: Settings, *, access_log: AccessLog | None = None, clock: Clock = time.monotonic, wall_clock: WallClock = utc_now,
) -> Services:
    metrics = Metrics()
    pool = HTTPPool()
    ray = ray_services(settings)  # None unless `serve --ray`
    in_process = has_local(settings) and (ray is None or ray.needs_local)
    local = build_local_models(settings, metrics.registry, pool=pool) if in_process else None
    if local is not None:  # managed engines' restarts on /metrics (observability/engine_metrics.py)
        register_engines(metrics.registry, local.manager.snapshot)

    def backend_for(d: Deployment) -> Backend:
        if ray is not None and id(d) in ray.backends:
            return ray.backends[id(d)]
        if isinstance(d, (LocalDeployment, ProcessDeployment)):
            assert local is not None
            return local.backends[id(d)]
        if d.kind == "provider":  # LiteLLM is imported here, and only here (never for OpenAI upstreams)
            from modelyard.backends.provider import ProviderBackend, check_provider, load_sdk

            sdk = load_sdk(f"deployment {d.name!r}")
            check_provider(sdk, d, f"deployment {d.name!r}")
            return ProviderBackend(d, sdk)
        return OpenAIBackend(d.api_base, d.api_key, pool)

    master_key = settings.auth.master_key or os.environ.get("MODELYARD_MASTER_KEY") or None
    db = spend_store = spend = keys = ring = None
    home = data_dir(settings)
    if settings.spend.enabled or master_key:
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
    tier_events = None
    if local is not None and spend_store is not None and db is not None:
        names: dict[str, str] = {}
        for public, key in local.keys.items():
            names.setdefault(key, public)
        tier_events = TierEventWriter(db, wall_clock=wall_clock, names=names)
        local.manager.tier_event = tier_events.record
    autoscaler = _autoscaler(settings, local, db, clock, wall_clock, metrics.registry)
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
    auto = None
    if settings.routing.auto is not None:
        ac = settings.routing.auto
        store = local.store if local is not None else ArtifactStore(home / "artifacts")  # the models' own store
        task_model = load_task_model(store, ac.classifier) if ac.classifier else None
        auto = AutoRouter(ac, router, task_model=task_model)
    proxy = Proxy(router, metrics, clock, guard=guard, default_completion_tokens=lim.default_completion_tokens,
                  routing=settings.routing, auto=auto)
    proxy.cascades = Cascades(proxy, router, metrics, calibration=calibrations(settings.models, home), auto=auto)
    gate = Gate(master_key, ring, budgets, on_budget_exceeded=metrics.budget_exceeded.inc)
    access_log = access_log or AccessLog(enabled=settings.server.access_log)
    recorder = Recorder(metrics=metrics, spend=spend, charge=gate.charge, access_log=access_log, wall_clock=wall_clock,
                        batch_price=batch_price(settings))
    services = Services(
        settings=settings,
        metrics=metrics,
        pool=pool,
        router=router,
        proxy=proxy,
        access_log=access_log,
        clock=clock,
        gate=gate,
        guard=guard,
        local=local,
        spend=spend,
        tier_events=tier_events,
        autoscaler=autoscaler,
        ray=ray,
        spend_store=spend_store,
        db=db,
        keys=keys,
        ring=ring,
        budgets=budgets,
        redis=redis,
        loop_lag=LoopLagMonitor(metrics.registry),
        gc_pauses=GcPauses(metrics.registry),
        recorder=recorder,
        responses=ResponsesService(proxy, ResponseStore(db) if db is not None else None, recorder, settings.responses,
                                   clock=clock, wall_clock=wall_clock, ring=ring, router=router),
    )
    services.batches = build_batches(services, wall_clock=wall_clock)
    return services


async def _no_spend(key_id: str, since: dt.datetime) -> int:
    return 0


def _autoscaler(settings: Settings, local: LocalModels | None, db: Database | None, clock: Clock,
                wall_clock: WallClock, registry: Any) -> LocalAutoscaler | None:
    """The one-machine autoscaler for models with ``autoscale`` and local/process deployments."""
    if local is None:
        return None
    scaled = [Scaled(m.name, m.autoscale, tuple(m.key(i) for i, d in enumerate(m.deployments)
                                                 if isinstance(d, (LocalDeployment, ProcessDeployment))))
              for m in settings.models if m.autoscale is not None]
    scaled = [s for s in scaled if s.keys]
    if not scaled:
        return None

    async def refresh() -> Any:
        from modelyard.scaling.forecast import load_forecast

        assert db is not None
        return await load_forecast(db, wall_clock())

    return LocalAutoscaler(scaled, local.manager, clock=clock, wall_clock=wall_clock,
                           refresh_forecast=refresh if db is not None else None, metrics=AutoscaleMetrics(registry))
