"""Carrying one OpenAI request through admission and the router to a deployment and back.

Non-streaming replies are passed on byte for byte (only ``usage`` is read out of them). Streams
are relayed event by event; a failure after the first byte went out ends the stream with an SSE
error event, never with a silently cut connection.

``forward`` returns the request's outcome (``accounting.outcome.Outcome``); while it runs, the
request's ``Tally`` (``req.outcome``) holds every hop that answered, so that the app can record a
request that failed or was cancelled half-way as well. Before admission, ``model: "auto"`` is
resolved to a model (``routing.auto``), a session's pin is looked up (``routing.affinity``) and the
request's priority decided (``routing.priority``); a cascade's hops run in ``api.cascading``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import orjson

from modelyard.accounting.outcome import Hop, Outcome, Tally
from modelyard.api.auth import Principal
from modelyard.api.http import Request
from modelyard.api.sse import DONE, SSERelay, error_event
from modelyard.backends.base import CallOptions
from modelyard.config.routing import RoutingConfig
from modelyard.errors import ModelyardError, PermissionDeniedError, UpstreamError
from modelyard.limits.base import Limit
from modelyard.limits.guard import RateGuard, estimate_tokens
from modelyard.observability.metrics import Metrics
from modelyard.routing.affinity import SessionTable, session_of
from modelyard.routing.auto import AutoRouter
from modelyard.routing.breaker import Clock
from modelyard.routing.priority import NORMAL, request_priority
from modelyard.routing.router import DeploymentSlot, ModelGroup, Routed, Router

_SSE = b"text/event-stream"


class BodyFor:
    """The request body to send to one deployment.

    The client's bytes go out untouched when the deployment's upstream model name equals the
    requested one and nothing needs adding; otherwise the body is re-encoded once per distinct
    upstream model (orjson, a few µs), every field the gateway does not use preserved as it came.
    """

    __slots__ = ("_data", "_raw", "_public", "_extra", "_cache")

    def __init__(self, data: dict[str, Any], raw: bytes, extra: dict[str, Any] | None = None) -> None:
        self._data = data
        self._raw = raw
        self._public = data.get("model")
        self._extra = extra
        self._cache: dict[str, bytes] = {}

    def __call__(self, dep: DeploymentSlot) -> bytes:
        name = dep.upstream_model
        if name == self._public and not self._extra:
            return self._raw
        body = self._cache.get(name)
        if body is None:
            data = {**self._data, "model": name}
            if self._extra:
                data.update(self._extra)
            body = self._cache[name] = orjson.dumps(data)
        return body


class Proxy:
    def __init__(
        self,
        router: Router,
        metrics: Metrics,
        clock: Clock,
        *,
        guard: RateGuard | None = None,
        default_completion_tokens: int = 256,
        routing: RoutingConfig | None = None,
        auto: AutoRouter | None = None,
    ) -> None:
        self._router = router
        self._metrics = metrics
        self._clock = clock
        self._guard = guard
        self._default_completion = default_completion_tokens
        self._routing = routing or RoutingConfig()
        self.auto = auto
        self.cascades: Any = None  # api.cascading.Cascades (it calls back into this proxy), set by build_services
        self._sessions = SessionTable(self._routing.affinity, clock)
        self._session_header = self._routing.affinity.header.lower().encode()
        self._priority_header = self._routing.priority.header.lower().encode()

    @property
    def sessions(self) -> SessionTable:
        return self._sessions

    async def forward(
        self, req: Request, path: str, model: str, data: dict[str, Any], raw: bytes, *, stream: bool,
        priority: int | None = None,
    ) -> Outcome:
        """Carry one request; ``priority`` (an internal caller's: a batch item) replaces the decided one."""
        tally = req.outcome = Tally(model=model, stream=stream)
        auto = self.auto
        session = session_of(self._routing.affinity, req.header(self._session_header), data)
        pin = self._sessions.get(session) if session is not None else None
        is_auto = auto is not None and model == auto.name
        if is_auto:
            req.model = tally.model = auto.name
            self._check_allowed(req.principal, model, auto.name)
            group, route = await auto.route(data, path, req.request_id, pinned=pin.model if pin is not None else None)
            tally.route = route
            req.extra_headers.append((b"x-modelyard-route", route.encode()))
        else:
            group = self._router.resolve(model)
            req.model = tally.model = group.name
            self._check_allowed(req.principal, model, group.name)
        if pin is not None and pin.model != group.name:
            pin = None  # an explicit other model wins over the pin; auto chose afresh (the pinned one is gone)
        principal = req.principal
        # a bad or forbidden x-priority: 400/403 here
        req.priority = self._priority(req, principal, len(raw)) if priority is None else priority
        guard = self._guard
        reservation = None
        tokens = 0
        if guard is not None and (principal is not None or group.limit is not None or group.limited):
            scopes = _scopes(principal, group)
            if scopes or group.limited:
                tokens = estimate_tokens(data, len(raw), self._default_completion)
            if scopes:
                decision, reservation = await guard.admit(scopes, tokens, model=group.name)
                if decision is not None:
                    req.extra_headers.extend((k.encode(), v.encode()) for k, v in decision.headers.items())
        try:
            req.watch_disconnect()
            if group.cascade is not None:
                await self.cascades.run(req, group, path, data, raw, stream=stream, tokens=tokens)
            else:
                prefer = pin.deployment if pin is not None else None
                async with self.admitted(req, group):
                    if stream:
                        await self.stream(req, group, path, data, raw, tokens, prefer)
                    else:
                        await self.unary(req, group, path, data, raw, tokens, prefer)
                if session is not None:
                    self._pin(req, session, pin, tally)
        finally:
            if reservation is not None and guard is not None:
                await guard.settle(reservation, tally.tokens)
        return tally.end(req.status)

    # --- pieces --------------------------------------------------------------------------------
    def _check_allowed(self, principal: Principal | None, asked: str, name: str) -> None:
        if principal is not None and not principal.allows(asked, name):
            raise PermissionDeniedError(
                f"this API key may not use model {asked!r}", param="model", code="model_not_allowed"
            )

    @contextlib.asynccontextmanager
    async def admitted(self, req: Request, group: ModelGroup) -> AsyncIterator[None]:
        """A slot of ``group``'s admission, at the request's priority, for the block's duration."""
        await group.admission.acquire(req.priority)
        try:
            yield
        finally:
            group.admission.release()

    def _priority(self, req: Request, principal: Principal | None, body_bytes: int) -> int:
        cfg = self._routing.priority
        if not cfg.enabled:
            return NORMAL  # without reading the header
        level, _why = request_priority(
            cfg,
            key_priority=principal.priority if principal is not None else None,
            header=req.header(self._priority_header),
            header_allowed=principal is None or principal.may_set_priority,
            endpoint=req.endpoint,
            prompt_tokens=body_bytes // 4,  # the same ~4 bytes a token as the rate limiter's estimate
        )
        return level

    def _pin(self, req: Request, session: str, pin: Any, tally: Tally) -> None:
        answered = tally.hops[-1] if tally.hops else None
        if answered is None:
            return
        if pin is not None and pin.deployment != answered.deployment:
            req.extra_headers.append((b"x-modelyard-session", f"moved; from={pin.deployment}; to={answered.deployment}".encode()))
        self._sessions.put(session, answered.model, answered.deployment)

    def call_options(self, req: Request, group: ModelGroup, dep: DeploymentSlot) -> CallOptions:
        """A load or restart may take what is left of the queue TTL, counted from the request's arrival."""
        return CallOptions(dep.timeout_s, req.request_id, max(0.0, req.t0 + group.ready_wait_s - self._clock()))

    def hop_of(self, routed: Routed[Any], usage: dict[str, Any] | None, status: int, note: str | None = None) -> Hop:
        """The hop a routed call made, its usage counted into the deployment's token metrics."""
        dep = routed.deployment
        p, c = _tokens(usage)
        if p:
            dep.series.tokens_in.inc(p)
        if c:
            dep.series.tokens_out.inc(c)
        return Hop(routed.group.name, dep.name, routed.group.price, p, c, status, routed.hops, routed.retries, note)

    def route_headers(self, req: Request, routed: Routed[Any]) -> None:
        req.extra_headers.append((b"x-modelyard-model", routed.group.name.encode()))
        req.extra_headers.append((b"x-modelyard-fallbacks", str(routed.hops).encode()))

    async def call(self, req: Request, group: ModelGroup, path: str, body_for: BodyFor, tokens: int,
                   prefer: str | None = None) -> tuple[Routed[Any], Any, dict[str, Any] | None]:
        """One non-streaming call through the router: (routed, reply, usage)."""

        async def op(dep: DeploymentSlot):  # noqa: ANN202 - a coroutine for the router
            reply = await dep.backend.call(path, body_for(dep), self.call_options(req, group, dep))
            return reply, _usage_of(reply.body)

        routed = await self._router.run(group, op, tokens=tokens, used=_used, prefer=prefer)
        reply, usage = routed.result
        return routed, reply, usage

    async def unary(self, req: Request, group: ModelGroup, path: str, data: dict[str, Any], raw: bytes, tokens: int,
                    prefer: str | None, *, extra: dict[str, Any] | None = None) -> None:
        routed, reply, usage = await self.call(req, group, path, BodyFor(data, raw, extra), tokens, prefer)
        req.outcome.add(self.hop_of(routed, usage, reply.status))
        self.route_headers(req, routed)
        await req.respond(reply.status, reply.body, content_type=reply.content_type)

    async def stream(self, req: Request, group: ModelGroup, path: str, data: dict[str, Any], raw: bytes, tokens: int,
                     prefer: str | None, *, extra: dict[str, Any] | None = None) -> None:
        opts = data.get("stream_options")
        # The Responses API always ends its stream with the usage (and has no include_usage).
        client_wants_usage = (isinstance(opts, dict) and opts.get("include_usage") is True) or path == "/responses"
        if not client_wants_usage:
            extra = {**(extra or {}), "stream_options": {**(opts or {}), "include_usage": True}}
        body_for = BodyFor(data, raw, extra)

        def op(dep: DeploymentSlot):  # noqa: ANN202
            return dep.backend.open_stream(path, body_for(dep), self.call_options(req, group, dep))

        routed = await self._router.run(group, op, hold=True, tokens=tokens, prefer=prefer)
        upstream = routed.result
        self.route_headers(req, routed)
        relay = SSERelay(strip_usage=not client_wants_usage)
        ok: bool | None = None
        status = 200
        try:
            await req.start_stream(200, _SSE)
            ttft_seen = False
            async for chunk in upstream.chunks():
                out = relay.feed(chunk)
                if out:
                    if not ttft_seen and relay.first_content:
                        ttft_seen = True
                        self._metrics.ttft.labels(req.model).observe(self._clock() - req.t0)
                    await req.stream_chunk(out)
            tail = relay.flush()
            if not relay.saw_done:
                tail += DONE  # some servers end without [DONE]; the SDK is happy either way
            ok = True
            await req.end_stream(tail)
        except UpstreamError as exc:
            ok = False
            status = req.status = exc.status
            await req.end_stream(error_event(exc))
        except ModelyardError as exc:  # pragma: no cover - defensive: any known error ends the stream cleanly
            ok = False
            await req.end_stream(error_event(exc))
        finally:
            if ok is not True:
                upstream.close()
            usage = relay.usage
            if usage is None and relay.content_events:
                usage = {"completion_tokens": relay.content_events}  # counted: the upstream sent no usage
            hop = self.hop_of(routed, usage, status)
            req.outcome.add(hop)
            await routed.close(ok=ok, tokens=hop.prompt_tokens + hop.completion_tokens)


def _scopes(principal: Principal | None, group: ModelGroup) -> list[tuple[str, Limit]]:
    scopes = []
    key = principal.key if principal is not None else None
    if key is not None and (key.rpm_limit is not None or key.tpm_limit is not None):
        scopes.append((f"key:{key.id}", Limit(key.rpm_limit, key.tpm_limit)))
    if group.limit is not None:
        scopes.append((f"model:{group.name}", group.limit))
    return scopes


def _tokens(usage: dict[str, Any] | None) -> tuple[int, int]:
    if not usage:
        return 0, 0
    p, c = usage.get("prompt_tokens"), usage.get("completion_tokens")
    if p is None and c is None:  # the Responses API's names (an upstream that speaks it natively)
        p, c = usage.get("input_tokens"), usage.get("output_tokens")
    return (p if isinstance(p, int) and p > 0 else 0), (c if isinstance(c, int) and c > 0 else 0)


def _used(result: tuple[Any, dict[str, Any] | None]) -> int:
    p, c = _tokens(result[1])
    return p + c


def _usage_of(body: bytes) -> dict[str, Any] | None:
    if b'"usage"' not in body:
        return None
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    usage = obj.get("usage") if isinstance(obj, dict) else None
    return usage if isinstance(usage, dict) else None
