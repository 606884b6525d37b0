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
from modelyard.errors import ModelyardError, UpstreamError
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
    def __init__(self, router: Router, metrics: Metrics, clock: Clock) -> None:
        self._router = router
        self._metrics = metrics
        self._clock = clock

    async def forward(self, req: Request, path: str, model: str, data: dict[str, Any], raw: bytes, *, stream: bool) -> None:
        group = self._router.resolve(model)
        req.model = group.name
        req.watch_disconnect()
        await group.admission.acquire()
        try:
            req.stream = stream
            if stream:
                await self._stream(req, group, path, data, raw)
            else:
                await self._unary(req, group, path, BodyFor(data, raw))
        finally:
            group.admission.release()

    def _route_headers(self, req: Request, answered: ModelGroup, hops: int) -> None:
        req.fallbacks = hops
        req.price = answered.price
        answered_name = answered.name
        req.extra_headers.append((b"x-modelyard-model", answered_name.encode()))
        req.extra_headers.append((b"x-modelyard-fallbacks", str(hops).encode()))

    async def _unary(self, req: Request, group: ModelGroup, path: str, body_for: BodyFor) -> None:
        rid = req.request_id

        def op(dep: DeploymentSlot):  # noqa: ANN202 - a coroutine for the router
            return dep.backend.call(path, body_for(dep), CallOptions(dep.timeout_s, rid))

        routed = await self._router.run(group, op)
        reply = routed.result
        req.deployment = routed.deployment.name
        self._route_headers(req, routed.group, routed.hops)
        self._count_usage(req, routed.deployment, _usage_of(reply.body))
        await req.respond(reply.status, reply.body, content_type=reply.content_type)

    async def _stream(self, req: Request, group: ModelGroup, path: str, data: dict[str, Any], raw: bytes) -> None:
        opts = data.get("stream_options")
        client_wants_usage = isinstance(opts, dict) and opts.get("include_usage") is True
        extra = None if client_wants_usage else {"stream_options": {**(opts or {}), "include_usage": True}}
        body_for = BodyFor(data, raw, extra)
        rid = req.request_id

        def op(dep: DeploymentSlot):  # noqa: ANN202
            return dep.backend.open_stream(path, body_for(dep), CallOptions(dep.timeout_s, rid))

        routed = await self._router.run(group, op, hold=True)
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


def _usage_of(body: bytes) -> dict[str, Any] | None:
    if b'"usage"' not in body:
        return None
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    usage = obj.get("usage") if isinstance(obj, dict) else None
    return usage if isinstance(usage, dict) else None
