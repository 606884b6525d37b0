"""The ``ray`` backend: local models served as Ray Serve deployments, called through handles.

``modelyard serve --ray [auto|ADDRESS]`` (or ``ray.address`` in the config): every model with a
``local`` deployment becomes a Ray Serve application of its own (``scaling/ray_serve.py``:
options rendered from the model's ``autoscale`` policy; ``ModelReplica`` loads and warms the
engine before the replica takes traffic), deployed without an HTTP route. The gateway stays the
ingress — same API, keys, limits, spend — and calls each deployment through its
``DeploymentHandle`` (no extra HTTP hop): ``handle.call.remote`` for a complete answer,
``handle.options(stream=True).stream.remote`` for SSE.

Ray's errors are translated at this boundary into modelyard's, so the router's retries, breakers
and fallbacks apply: a replica that died or went away → ``UpstreamConnectError`` (retryable: the
handle picks another replica); Ray's queue full (``BackPressureError``) → 429 with Retry-After; no
replica assigned within what is left of the queue TTL (a model scaling up from zero) →
``ModelNotReadyError`` (503, Retry-After); the call's deadline → ``UpstreamTimeoutError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelyard.backends.base import CallOptions, UpstreamReply
from modelyard.config.schema import LocalDeployment, ProcessDeployment, Settings
from modelyard.errors import (
    ModelNotReadyError,
    UpstreamConnectError,
    UpstreamError,
    UpstreamStatusError,
    UpstreamTimeoutError,
)
from modelyard.scaling.ray_serve import ModelReplica, Reply, deployment_name, deployment_options

log = logging.getLogger("modelyard")

SCALE_FROM_ZERO_RETRY_S = 5.0


def connect(address: str) -> bool:
    """Join the Ray cluster at ``address`` (``auto``: a running local one, else start one).
    True when this process started the cluster (and so owns it)."""
    import ray

    if ray.is_initialized():
        return False
    kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "ignore_reinit_error": True}
    if address != "auto":
        ray.init(address=address, **kw)
        return False
    try:
        ray.init(address="auto", **kw)
        return False
    except ConnectionError:
        ray.init(**kw)
        return True


@dataclass
class _App:
    name: str
    options: dict[str, Any]
    args: tuple[Any, ...]
    handle: Any = None


@dataclass
class RayServe:
    """The Ray Serve applications of one gateway and their backends (``id(deployment)`` → backend)."""

    address: str
    apps: dict[str, _App] = field(default_factory=dict)
    backends: dict[int, RayBackend] = field(default_factory=dict)
    owns_cluster: bool = False
    needs_local: bool = False  # managed-process deployments stay under the in-process memory manager

    async def start(self) -> None:
        """Connect and deploy every application (blocking Ray calls, off the event loop). Serve
        returns once each application is running: its ``min_replicas`` replicas loaded and warm."""
        await asyncio.to_thread(self._deploy)

    def _deploy(self) -> None:
        from ray import serve

        self.owns_cluster = connect(self.address)
        for app in self.apps.values():
            dep = serve.deployment(ModelReplica, **app.options)
            app.handle = serve.run(dep.bind(*app.args), name=app.name, route_prefix=None)
            log.info("ray serve: %s deployed (%s)", app.name, app.options.get("autoscaling_config") or "1 replica")

    def handle(self, name: str) -> Any:
        app = self.apps[name]
        if app.handle is None:
            raise UpstreamConnectError(f"ray deployment {name!r} is not deployed yet")
        return app.handle

    async def aclose(self) -> None:
        """Leave shared clusters' applications running (other gateways call them); a cluster this
        process started goes with it."""
        if self.owns_cluster:
            import ray
            from ray import serve

            def stop() -> None:
                with contextlib.suppress(Exception):
                    serve.shutdown()
                ray.shutdown()

            await asyncio.to_thread(stop)


def ray_services(settings: Settings) -> RayServe | None:
    """What ``build_services`` calls: the Ray side of the gateway when ``ray.address`` is set
    (``serve --ray`` sets it)."""
    rc = settings.ray
    if rc.address is None:
        return None
    from modelyard.backends.local_models import data_dir

    tuning = {k: v for k, v in rc.model_dump(exclude={"address"}).items() if v is not None}
    return build_ray_backends(settings, rc.address, data_dir(settings) / "artifacts", **tuning)


def build_ray_backends(settings: Settings, address: str, store_root: Path, **tuning: float) -> RayServe:
    """One Ray Serve application per local deployment of ``settings`` (``tuning``: the keyword
    arguments of ``deployment_options``); nothing is deployed until ``RayServe.start``."""
    rs = RayServe(address, needs_local=any(isinstance(d, ProcessDeployment) for m in settings.models for d in m.deployments))
    memory = settings.memory.model_dump(mode="json")
    for m in settings.models:
        queue = m.queue or settings.router.queue
        for i, d in enumerate(m.deployments):
            if not isinstance(d, LocalDeployment):
                continue
            key = m.key(i)
            opts = deployment_options(m, queue=queue, **tuning)
            opts["name"] = name = deployment_name(key)
            single = m.model_copy(update={"deployments": [d]}).model_dump(mode="json")
            rs.apps[name] = _App(name, opts, (single, memory, str(store_root)))
            rs.backends[id(d)] = RayBackend(rs, name, m.name)
    return rs


class RayBackend:
    """One local deployment served by a Ray Serve application."""

    def __init__(self, serve: RayServe, app: str, model: str) -> None:
        self._serve = serve
        self._app = app
        self._model = model
        self.label = f"ray:{app}"

    async def call(self, path: str, body: bytes, opts: CallOptions) -> UpstreamReply:
        resp = self._serve.handle(self._app).call.remote(path, body, opts.timeout_s, opts.ready_wait_s, opts.request_id)
        try:
            async with asyncio.timeout(opts.timeout_s):
                await self._assigned(resp, opts)
                out = await resp
        except BaseException as exc:
            resp.cancel()
            raise self._translate(exc, opts) from exc
        ok = _ok(out)
        return UpstreamReply(ok[1], ok[2], ok[3])

    async def open_stream(self, path: str, body: bytes, opts: CallOptions) -> RayStream:
        handle = self._serve.handle(self._app).options(stream=True)
        gen = handle.stream.remote(path, body, opts.timeout_s, opts.ready_wait_s, opts.request_id)
        try:
            async with asyncio.timeout(opts.timeout_s):
                await self._assigned(gen, opts)
                head = await gen.__anext__()
        except BaseException as exc:
            gen.cancel()
            raise self._translate(exc, opts) from exc
        ok = _ok(head)
        return RayStream(gen, ok[1], ok[2], opts.timeout_s, self._translate_mid)

    async def aclose(self) -> None:
        pass

    async def _assigned(self, resp: Any, opts: CallOptions) -> None:
        """Wait for Ray to give the request a replica (a model at zero replicas is starting one),
        at most what is left of the queue TTL."""
        if opts.ready_wait_s is None:
            return
        try:
            async with asyncio.timeout(max(0.001, opts.ready_wait_s)):
                await resp._fetch_future_result_async()  # resolves once a replica has the request (cached)
        except TimeoutError:
            raise ModelNotReadyError(
                f"model {self._model!r}: no Ray replica within {opts.ready_wait_s:g}s (scaling up)",
                retry_after_s=SCALE_FROM_ZERO_RETRY_S) from None

    def _translate(self, exc: BaseException, opts: CallOptions) -> BaseException:
        if isinstance(exc, (UpstreamError, asyncio.CancelledError)):
            return exc
        if isinstance(exc, TimeoutError):
            return UpstreamTimeoutError(f"ray deployment {self._app!r} did not answer within {opts.timeout_s:g}s")
        return _ray_error(self._app, exc)

    def _translate_mid(self, exc: BaseException) -> BaseException:
        if isinstance(exc, (UpstreamError, asyncio.CancelledError)):
            return exc
        return UpstreamError(f"ray deployment {self._app!r} failed mid-stream: {_describe(exc)}")


def _ray_error(app: str, exc: BaseException) -> BaseException:
    from ray import exceptions as rex
    from ray.serve import exceptions as sex

    if isinstance(exc, sex.BackPressureError):
        body = (b'{"error": {"message": "ray deployment queue is full", "type": "rate_limit_error", '
                b'"param": null, "code": "queue_full"}}')
        return UpstreamStatusError(429, body, retry_after="1")
    if isinstance(exc, (rex.RayActorError, sex.ReplicaUnavailableError, sex.DeploymentUnavailableError,
                        rex.ActorUnavailableError, rex.RaySystemError)):
        return UpstreamConnectError(f"ray deployment {app!r}: replica unavailable ({_describe(exc)})")
    if isinstance(exc, Exception):
        return UpstreamError(f"ray deployment {app!r} failed: {_describe(exc)}")
    return exc


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def _ok(reply: Reply) -> Reply:
    if reply[0] == "ok":
        return reply
    _, status, body, retry_after, _kind = reply
    raise UpstreamStatusError(status, body, retry_after=retry_after)


class RayStream:
    """The rest of a replica's stream generator, as SSE bytes."""

    def __init__(self, gen: Any, status: int, content_type: bytes, idle_s: float, translate: Any) -> None:
        self._gen = gen
        self.status = status
        self.content_type = content_type
        self._idle = idle_s
        self._translate = translate

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            while True:
                try:
                    async with asyncio.timeout(self._idle):
                        item = await self._gen.__anext__()
                except StopAsyncIteration:
                    return
                except TimeoutError as exc:
                    raise UpstreamTimeoutError(f"ray deployment produced nothing for {self._idle:g}s") from exc
                except BaseException as exc:
                    raise self._translate(exc) from exc
                if isinstance(item, tuple):
                    _ok(item)  # an error tuple: raises (UpstreamStatusError is an UpstreamError)
                    continue
                yield item
        finally:
            self.close()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._gen.cancel()
