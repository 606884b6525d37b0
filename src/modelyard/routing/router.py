"""The router: public name → model group → deployment, with retries, breakers and fallbacks.

The router owns every deployment's runtime state (in-flight count, latency EWMA, breaker). The
route handlers give it an operation ``op(deployment) -> result`` and it decides where the
operation runs, how often it is retried and where it falls back to. Decisions (which deployment,
whether to retry) happen inside the router between two awaits, so no read gates a mutation.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from modelyard.backends.base import Backend
from modelyard.config.routing import CascadeConfig
from modelyard.config.schema import Deployment, LocalDeployment, ModelConfig, Price, ProcessDeployment, RetryConfig, Settings
from modelyard.errors import (
    EngineRestartingError,
    ModelNotFoundError,
    ModelyardError,
    NoDeploymentAvailableError,
    RateLimitedError,
    UpstreamConnectError,
    UpstreamError,
    UpstreamStatusError,
    UpstreamTimeoutError,
)
from modelyard.limits.base import Limit, Reservation
from modelyard.limits.guard import RateGuard
from modelyard.observability.metrics import DeploymentSeries, Metrics
from modelyard.routing.admission import Admission
from modelyard.routing.priority import NAMES
from modelyard.routing.breaker import BreakerState, CircuitBreaker, Clock, SupervisedBreaker, Ticket
from modelyard.routing.strategies import Picker, make_picker

T = TypeVar("T")
BackendFactory = Callable[[Deployment], Backend]
Sleep = Callable[[float], Awaitable[None]]


@dataclass(eq=False)
class DeploymentSlot:
    """Runtime state of one deployment, owned by the router."""

    name: str
    model: str  # public model name
    upstream_model: str
    backend: Backend
    breaker: CircuitBreaker | SupervisedBreaker  # supervised: local models and managed engines
    weight: float
    timeout_s: float
    max_concurrency: int | None
    series: DeploymentSeries
    limit: Limit | None = None  # its rpm/tpm: at the limit the router skips it
    in_flight: int = 0
    latency_ewma_s: float = 0.0

    def has_room(self) -> bool:
        return self.max_concurrency is None or self.in_flight < self.max_concurrency


@dataclass(eq=False)
class ModelGroup:
    name: str
    cfg: ModelConfig
    deployments: list[DeploymentSlot]
    picker: Picker
    retry: RetryConfig
    admission: Admission
    fallbacks: list[str]
    price: Price | None
    created: int
    limit: Limit | None = None  # the model's rpm/tpm, all callers together
    limited: bool = False  # some deployment has its own rpm/tpm (requests need a token estimate)
    ready_wait_s: float = 30.0  # how long a request may wait for a model to load or restart (queue TTL)

    @property
    def cascade(self) -> CascadeConfig | None:
        """A cascade has no deployments: its tiers are other models (the proxy runs the hops)."""
        return self.cfg.cascade

    def available(self) -> bool:
        """Some deployment could take a request now (breaker not open, below its cap)."""
        return any(d.has_room() and d.breaker.available() for d in self.deployments)


@dataclass(eq=False)
class Routed(Generic[T]):
    """The outcome of ``Router.run``: the result, who produced it and how."""

    result: T
    deployment: DeploymentSlot
    group: ModelGroup  # the group that answered (differs from the requested one after a fallback)
    hops: int  # fallback hops taken
    retries: int
    _router: "Router"
    _ticket: Ticket
    _t0: float
    _held: bool = field(default=False)
    _reservation: Reservation | None = None  # the deployment's rate-limit charge (held requests)

    def finish(self, *, ok: bool | None) -> None:
        """End a held request (streams): free its in-flight slot and record its verdict
        (None: abandoned by the client, no verdict on the deployment)."""
        if self._held:
            self._held = False
            self._router._finish(self.deployment, self._ticket, ok=ok, started=self._t0)

    async def close(self, *, ok: bool | None, tokens: int) -> None:
        """``finish``, then settle the deployment's rate-limit charge with the tokens really used."""
        self.finish(ok=ok)
        reservation, self._reservation = self._reservation, None
        await self._router._settle(reservation, tokens)


class Router:
    def __init__(
        self,
        settings: Settings,
        backend_factory: BackendFactory,
        metrics: Metrics,
        *,
        clock: Clock = time.monotonic,
        rng: random.Random | None = None,
        sleep: Sleep = asyncio.sleep,
        guard: RateGuard | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._metrics = metrics
        self._guard = guard
        self._clock = clock
        self._rng = rng or random.Random()
        self._sleep = sleep
        self._alpha = settings.router.latency_ewma_alpha
        self._groups: dict[str, ModelGroup] = {}
        self._by_name: dict[str, ModelGroup] = {}
        created = self.created = int(wall_clock())
        for m in settings.models:
            group = self._build_group(settings, m, backend_factory, created)
            self._groups[m.name] = group
            for name in (m.name, *m.aliases):
                self._by_name[name] = group

    def _build_group(self, settings: Settings, m: ModelConfig, factory: BackendFactory, created: int) -> ModelGroup:
        r = settings.router
        slots = []
        for i, d in enumerate(m.deployments):
            name = m.key(i)
            gauge = self._metrics.breaker_state.labels(m.name, name)
            gauge.set(0)
            supervised = isinstance(d, (LocalDeployment, ProcessDeployment))
            slots.append(
                DeploymentSlot(
                    name=name,
                    model=m.name,
                    upstream_model=d.upstream_name(m.name),
                    backend=factory(d),
                    breaker=SupervisedBreaker() if supervised else CircuitBreaker(
                        m.breaker or r.breaker, self._clock, on_change=lambda s, g=gauge: g.set(int(s))),
                    weight=d.weight,
                    timeout_s=d.timeout_s or r.timeout_s,
                    max_concurrency=d.max_concurrency,
                    series=self._metrics.deployment_series(m.name, name),
                    limit=Limit(d.rpm, d.tpm) if d.rpm is not None or d.tpm is not None else None,
                )
            )
        q = m.queue or r.queue
        cap = q.max_concurrency
        if cap is None and slots and all(s.max_concurrency is not None for s in slots):
            cap = sum(s.max_concurrency or 0 for s in slots)
        in_flight_g = self._metrics.in_flight.labels(m.name)
        queue_g = self._metrics.queue_depth.labels(m.name)
        level_g = [self._metrics.queue_depth_by_priority.labels(m.name, NAMES[level]) for level in sorted(NAMES)]

        def on_change(in_flight: int, queued: int) -> None:
            in_flight_g.set(in_flight)
            queue_g.set(queued)

        def on_depth(level: int, depth: int) -> None:
            level_g[level].set(depth)

        return ModelGroup(
            name=m.name,
            cfg=m,
            deployments=slots,
            picker=make_picker(m.strategy or r.strategy),
            retry=m.retry or r.retry,
            admission=Admission(
                m.name, max_concurrency=cap, queue_size=q.size, ttl_s=q.ttl_s, on_change=on_change,
                aging_s=settings.routing.priority.aging_s, on_depth=on_depth, clock=self._clock,
            ),
            fallbacks=list(m.fallbacks),
            price=m.price,
            created=created,
            limit=Limit(m.rpm, m.tpm) if m.rpm is not None or m.tpm is not None else None,
            limited=any(d.limit is not None for d in slots),
            ready_wait_s=q.ttl_s,
        )

    # --- lookup --------------------------------------------------------------------------------
    def resolve(self, name: str) -> ModelGroup:
        group = self._by_name.get(name)
        if group is None:
            raise ModelNotFoundError(f"The model {name!r} does not exist", param="model")
        return group

    def groups(self) -> Sequence[ModelGroup]:
        return list(self._groups.values())

    def public_names(self) -> list[tuple[str, ModelGroup]]:
        return list(self._by_name.items())

    def deployments(self) -> list[DeploymentSlot]:
        return [d for g in self._groups.values() for d in g.deployments]

    # --- the path ------------------------------------------------------------------------------
    def _choose(
        self, group: ModelGroup, tried: set[DeploymentSlot], limited: set[DeploymentSlot], prefer: str | None = None
    ) -> tuple[DeploymentSlot, Ticket] | None:
        fresh = [d for d in group.deployments if d not in tried and d not in limited and d.has_room() and d.breaker.available()]
        if not fresh:  # every healthy deployment was tried: a retry may go to one of them again
            fresh = [d for d in group.deployments if d not in limited and d.has_room() and d.breaker.available()]
            if not fresh:
                return None
        if group.cfg.autoscale is not None and len(fresh) > 1 and all(hasattr(d.backend, "resident") for d in fresh):
            # an autoscaled model: its replicas that the autoscaler keeps resident take the traffic; a
            # request never loads a further replica on its own (the autoscaler adds replicas on load)
            warm = [d for d in fresh if d.backend.resident()]  # type: ignore[attr-defined]
            fresh = warm or fresh[:1]
        pinned = [d for d in fresh if d.name == prefer] if prefer is not None and not tried else ()
        if pinned:  # session affinity: the deployment of the conversation's earlier turns
            dep = pinned[0]
        else:
            dep = fresh[0] if len(fresh) == 1 else group.picker.pick(fresh, self._rng)  # type: ignore[assignment]
        ticket = dep.breaker.try_acquire()
        return (dep, ticket) if ticket is not None else None

    def _backoff_s(self, retry: RetryConfig, attempt: int) -> float:
        cap = min(retry.backoff_max_s, retry.backoff_base_s * (2 ** (attempt - 1)))
        return self._rng.uniform(0, cap)  # full jitter

    async def _within_limit(self, dep: DeploymentSlot, ticket: Ticket, tokens: int) -> tuple[bool, Reservation | None, float]:
        """Charge the deployment's own rpm/tpm; refused → the ticket is given back unused."""
        assert dep.limit is not None and self._guard is not None
        try:
            decision, reservation = await self._guard.check(((f"deployment:{dep.name}", dep.limit),), tokens)
        except BaseException:
            dep.breaker.record_abandoned(ticket)
            raise
        if decision is not None and not decision.allowed:
            dep.breaker.record_abandoned(ticket)
            self._metrics.rate_limited.labels(dep.model, "deployment").inc()
            return False, None, decision.retry_after_s
        return True, reservation, 0.0

    async def run(
        self,
        group: ModelGroup,
        op: Callable[[DeploymentSlot], Awaitable[T]],
        *,
        hold: bool = False,
        tokens: int = 0,
        used: Callable[[T], int] | None = None,
        prefer: str | None = None,
    ) -> Routed[T]:
        """Run ``op`` on a deployment of ``group`` (or of its fallbacks) until one succeeds.

        With ``hold=True`` the deployment's in-flight slot stays taken after ``op`` returns (a
        stream still flowing) until the caller calls ``Routed.finish``. ``tokens`` is the request's
        estimate, charged to a deployment's tpm; a deployment at its rpm/tpm is skipped (not an
        attempt), and when every one is, the answer is 429 with the earliest ``Retry-After``. The
        router settles that charge itself: with ``used(result)`` (the tokens really used) when ``op``
        returns, or at ``Routed.close`` for a held request. ``prefer``: a deployment key taken first
        when it is available (session affinity).
        """
        last: ModelyardError | None = None
        limit_wait: float | None = None
        m = self._metrics
        chain = [group]
        for fb in group.fallbacks:
            target = self._by_name.get(fb)
            if target is not None and target not in chain:
                chain.append(target)
        retries = 0
        for hops, g in enumerate(chain):
            if hops:
                m.fallbacks.labels(group.name, g.name).inc()
            tried: set[DeploymentSlot] = set()
            limited: set[DeploymentSlot] = set()
            attempt = 0
            restart_retried = False  # one retry after an engine died under the request, beyond num_retries
            while attempt <= g.retry.num_retries + restart_retried:
                chosen = self._choose(g, tried, limited, prefer if hops == 0 else None)
                if chosen is None:
                    break
                dep, ticket = chosen
                reservation = None
                if dep.limit is not None and self._guard is not None:
                    within, reservation, wait = await self._within_limit(dep, ticket, tokens)
                    if not within:
                        limited.add(dep)
                        limit_wait = wait if limit_wait is None else min(limit_wait, wait)
                        continue
                attempt += 1
                if attempt > 1:
                    retries += 1
                    m.retries.labels(g.name, dep.name).inc()
                    # an engine restarting under its supervisor: no backoff, the lease waits for it
                    delay = 0.0 if isinstance(last, EngineRestartingError) else self._backoff_s(g.retry, attempt - 1)
                    if delay > 0:
                        try:
                            await self._sleep(delay)
                        except BaseException:
                            dep.breaker.record_abandoned(ticket)
                            raise
                tried.add(dep)
                dep.in_flight += 1
                t0 = self._clock()
                try:
                    result = await op(dep)
                except UpstreamError as exc:
                    dep.in_flight -= 1
                    m.upstream_requests.labels(g.name, dep.name, _outcome(exc)).inc()
                    await self._settle(reservation, 0)
                    if not exc.retryable:
                        dep.breaker.record_success(ticket)  # it answered: the client's request was at fault
                        raise
                    dep.breaker.record_failure(ticket)
                    last = exc
                    if isinstance(exc, EngineRestartingError) and exc.retry_once and not restart_retried:
                        restart_retried = True  # one more attempt: the restart is not the request's failure
                    continue
                except BaseException:
                    dep.in_flight -= 1
                    dep.breaker.record_abandoned(ticket)
                    m.upstream_requests.labels(g.name, dep.name, "cancelled").inc()
                    await self._settle(reservation, 0)
                    raise
                if hold:
                    return Routed(result, dep, g, hops, retries, self, ticket, t0, True, reservation)
                self._finish(dep, ticket, ok=True, started=t0)
                await self._settle(reservation, used(result) if used is not None else 0)
                return Routed(result, dep, g, hops, retries, self, ticket, t0)
        if last is not None:
            raise last
        if limit_wait is not None:
            raise RateLimitedError(
                f"every deployment of model {group.name!r}" + (" and its fallbacks" if len(chain) > 1 else "")
                + " is at its rate limit (or unavailable)",
                retry_after_s=limit_wait,
            )
        raise NoDeploymentAvailableError(
            f"no deployment of model {group.name!r}"
            + (" or its fallbacks" if len(chain) > 1 else "")
            + " is available (circuit open or at capacity)",
            retry_after_s=self._retry_after(chain),
        )

    async def _settle(self, reservation: Reservation | None, tokens: int) -> None:
        if reservation is not None and self._guard is not None:
            await self._guard.settle(reservation, tokens)

    def _finish(self, dep: DeploymentSlot, ticket: Ticket, *, ok: bool | None, started: float) -> None:
        dep.in_flight -= 1
        elapsed = self._clock() - started
        m = self._metrics
        if ok is None:
            dep.breaker.record_abandoned(ticket)
            m.upstream_requests.labels(dep.model, dep.name, "cancelled").inc()
        elif ok:
            dep.breaker.record_success(ticket)
            dep.latency_ewma_s = elapsed if dep.latency_ewma_s == 0.0 else (
                self._alpha * elapsed + (1 - self._alpha) * dep.latency_ewma_s
            )
            dep.series.ok.inc()
            dep.series.latency.observe(elapsed)
        else:
            dep.breaker.record_failure(ticket)
            m.upstream_requests.labels(dep.model, dep.name, "stream_error").inc()

    def _retry_after(self, chain: Sequence[ModelGroup]) -> float:
        waits = [
            d.breaker.retry_after_s()
            for g in chain
            for d in g.deployments
            if d.breaker.state is BreakerState.open
        ]
        return min(waits) if waits else 1.0


def _outcome(exc: UpstreamError) -> str:
    if isinstance(exc, UpstreamStatusError):
        return str(exc.upstream_status)
    if isinstance(exc, UpstreamTimeoutError):
        return "timeout"
    if isinstance(exc, UpstreamConnectError):
        return "connect_error"
    return "error"
