"""Carrying one OpenAI request through admission and the router to a deployment and back.

Non-streaming replies are passed on byte for byte (only ``usage`` is read out of them). Streams
are relayed event by event; a failure after the first byte went out ends the stream with an SSE
error event, never with a silently cut connection.
"""

from __future__ import annotations

from typing import Any

import orjson

from modelyard.api.http import Request
from modelyard.api.sse import DONE, SSERelay, error_event
from modelyard.backends.base import CallOptions
from modelyard.api.auth import Principal
from modelyard.errors import ModelyardError, PermissionDeniedError, UpstreamError
from modelyard.limits.base import Limit, Reservation
from modelyard.limits.guard import RateGuard, estimate_tokens
from modelyard.observability.metrics import Metrics
from modelyard.routing.breaker import Clock
from modelyard.routing.router import DeploymentSlot, ModelGroup, Router

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
    ) -> None:
        self._router = router
        self._metrics = metrics
        self._clock = clock
        self._guard = guard
        self._default_completion = default_completion_tokens

    async def forward(self, req: Request, path: str, model: str, data: dict[str, Any], raw: bytes, *, stream: bool) -> None:
        group = self._router.resolve(model)
        req.model = group.name
        principal = req.principal
        if principal is not None and not principal.allows(model, group.name):
            raise PermissionDeniedError(
                f"this API key may not use model {model!r}", param="model", code="model_not_allowed"
            )
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
            await group.admission.acquire()
            try:
                req.stream = stream
                if stream:
                    await self._stream(req, group, path, data, raw, tokens)
                else:
                    await self._unary(req, group, path, BodyFor(data, raw), tokens)
            finally:
                group.admission.release()
        finally:
            await self._settle(reservation, req)

    def _route_headers(self, req: Request, answered: ModelGroup, hops: int) -> None:
        req.fallbacks = hops
        req.price = answered.price
        answered_name = answered.name
        req.extra_headers.append((b"x-modelyard-model", answered_name.encode()))
        req.extra_headers.append((b"x-modelyard-fallbacks", str(hops).encode()))

    async def _unary(self, req: Request, group: ModelGroup, path: str, body_for: BodyFor, tokens: int) -> None:
        rid = req.request_id
        ready_by = req.t0 + group.ready_wait_s  # a load or restart may take what is left of the queue TTL
        clock = self._clock

        def op(dep: DeploymentSlot):  # noqa: ANN202 - a coroutine for the router
            return dep.backend.call(path, body_for(dep), CallOptions(dep.timeout_s, rid, max(0.0, ready_by - clock())))

        routed = await self._router.run(group, op, tokens=tokens)
        reply = routed.result
        req.deployment = routed.deployment.name
        self._route_headers(req, routed.group, routed.hops)
        self._count_usage(req, routed.deployment, _usage_of(reply.body))
        try:
            await req.respond(reply.status, reply.body, content_type=reply.content_type)
        finally:
            if routed.reservation is not None:
                await self._settle(routed.reservation, req)

    async def _stream(
        self, req: Request, group: ModelGroup, path: str, data: dict[str, Any], raw: bytes, tokens: int
    ) -> None:
        opts = data.get("stream_options")
        client_wants_usage = isinstance(opts, dict) and opts.get("include_usage") is True
        extra = None if client_wants_usage else {"stream_options": {**(opts or {}), "include_usage": True}}
        body_for = BodyFor(data, raw, extra)
        rid = req.request_id
        ready_by = req.t0 + group.ready_wait_s
        clock = self._clock

        def op(dep: DeploymentSlot):  # noqa: ANN202
            return dep.backend.open_stream(path, body_for(dep), CallOptions(dep.timeout_s, rid, max(0.0, ready_by - clock())))

        routed = await self._router.run(group, op, hold=True, tokens=tokens)
        upstream = routed.result
        req.deployment = routed.deployment.name
        self._route_headers(req, routed.group, routed.hops)
        relay = SSERelay(strip_usage=not client_wants_usage)
        ok: bool | None = None
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
            req.status = exc.status
            await req.end_stream(error_event(exc))
        except ModelyardError as exc:  # pragma: no cover - defensive: any known error ends the stream cleanly
            ok = False
            await req.end_stream(error_event(exc))
        finally:
            if ok is not True:
                upstream.close()
            routed.finish(ok=ok)
            usage = relay.usage
            if usage is None and relay.content_events:
                usage = {"completion_tokens": relay.content_events}  # counted: the upstream sent no usage
            self._count_usage(req, routed.deployment, usage)
            if routed.reservation is not None:
                await self._settle(routed.reservation, req)

    async def _settle(self, reservation: Reservation | None, req: Request) -> None:
        """Replace a rate-limit charge's token estimate by the request's real usage (0 if none)."""
        if reservation is not None and self._guard is not None:
            await self._guard.settle(reservation, (req.prompt_tokens or 0) + (req.completion_tokens or 0))

    def _count_usage(self, req: Request, dep: DeploymentSlot, usage: dict[str, Any] | None) -> None:
        if not usage:
            return
        p, c = usage.get("prompt_tokens"), usage.get("completion_tokens")
        if isinstance(p, int) and p > 0:
            req.prompt_tokens = p
            dep.series.tokens_in.inc(p)
        if isinstance(c, int) and c > 0:
            req.completion_tokens = c
            dep.series.tokens_out.inc(c)


def _scopes(principal: Principal | None, group: ModelGroup) -> list[tuple[str, Limit]]:
    scopes = []
    key = principal.key if principal is not None else None
    if key is not None and (key.rpm_limit is not None or key.tpm_limit is not None):
        scopes.append((f"key:{key.id}", Limit(key.rpm_limit, key.tpm_limit)))
    if group.limit is not None:
        scopes.append((f"model:{group.name}", group.limit))
    return scopes


def _usage_of(body: bytes) -> dict[str, Any] | None:
    if b'"usage"' not in body:
        return None
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    usage = obj.get("usage") if isinstance(obj, dict) else None
    return usage if isinstance(usage, dict) else None
