"""Ray Serve as the third scaling target (issue 13): the policy rendered as Ray's options, and the
deployment class that serves one local model inside a Ray replica.

Pure on the gateway's side: ``deployment_options`` turns a model's ``AutoscaleConfig`` (the same
policy ``scaling/policy.py`` decides with) into the keyword arguments of ``serve.deployment`` —
``autoscaling_config``, an explicit ``max_ongoing_requests`` (Ray's default of 5 collapsed to
13 req/s at c=64 when measured here), ``max_queued_requests`` from the model's admission queue, and
``ray_actor_options`` (CPUs, fractional GPUs). Nothing here imports Ray.

``ModelReplica`` runs inside the replica process: it builds the model's engine under a memory
manager of its own (the same ``LocalBackend`` code that serves in-process), loads and warms it in
its (async) constructor — Ray marks a replica ready only once the constructor returns, so a replica
takes traffic only when warm — and answers with plain tuples, so no modelyard exception has to
cross the Ray boundary: ``("ok", status, content_type, body)`` or ``("error", status, body,
retry_after, kind)``.
"""

from __future__ import annotations

import re
from typing import Any

from modelyard.config.scaling import AutoscaleConfig
from modelyard.config.schema import LocalDeployment, ModelConfig, QueueConfig

# Ray's autoscaler looks at the last ``look_back_period_s`` of metrics (default 30 s); modelyard's
# policy reacts to what is ongoing now, so the window is kept short by default.
DEFAULT_LOOK_BACK_S = 15.0  # above Ray's default metrics interval
RAY_METRICS_INTERVAL_S = 10.0

Reply = tuple[Any, ...]


def deployment_name(model: str) -> str:
    """The Ray Serve application/deployment name of a public model (Ray allows [A-Za-z0-9_-.])."""
    return "modelyard-" + re.sub(r"[^A-Za-z0-9_.-]", "_", model)


def autoscaling_config(
    policy: AutoscaleConfig, *, look_back_period_s: float | None = None, metrics_interval_s: float | None = None,
) -> dict[str, Any]:
    """Ray Serve's ``autoscaling_config`` for ``policy``.

    ``min_replicas``/``max_replicas``/``target_ongoing_requests``/``upscale_delay_s``/
    ``downscale_delay_s`` map one to one; ``scale_to_zero_after_s`` becomes Ray's
    ``downscale_to_zero_delay_s`` (the 1 → 0 step only) when ``min_replicas`` is 0. The pre-warm
    windows and the predictive floor have no Ray equivalent and are not rendered (see
    docs/design/ray.md)."""
    cfg: dict[str, Any] = {
        "min_replicas": policy.min_replicas,
        "initial_replicas": policy.min_replicas,
        "max_replicas": policy.max_replicas,
        "target_ongoing_requests": policy.target_ongoing_requests,
        "upscale_delay_s": policy.upscale_delay_s,
        "downscale_delay_s": policy.downscale_delay_s,
        "look_back_period_s": look_back_period_s if look_back_period_s is not None else DEFAULT_LOOK_BACK_S,
    }
    if metrics_interval_s is None and cfg["look_back_period_s"] <= RAY_METRICS_INTERVAL_S:
        metrics_interval_s = cfg["look_back_period_s"] / 4  # Ray wants the window longer than the interval
    if metrics_interval_s is not None:
        cfg["metrics_interval_s"] = metrics_interval_s
    if policy.min_replicas == 0 and policy.scale_to_zero_after_s is not None:
        cfg["downscale_to_zero_delay_s"] = policy.scale_to_zero_after_s
    return cfg


def max_ongoing_requests(model: ModelConfig) -> int:
    """Requests one replica takes at once: the policy's cap, else twice the engine's parallel slots."""
    if model.autoscale is not None:
        return model.autoscale.ongoing_cap
    slots = max((d.n_parallel for d in model.deployments if isinstance(d, LocalDeployment)), default=1)
    return max(2, 2 * slots)


def deployment_options(
    model: ModelConfig, *, queue: QueueConfig, num_cpus: float = 0.5, num_gpus: float = 0.0,
    look_back_period_s: float | None = None, metrics_interval_s: float | None = None,
    health_check_period_s: float = 2.0,
) -> dict[str, Any]:
    """The keyword arguments of ``serve.deployment`` for ``model`` (queue: its admission queue,
    the model's own or the router's)."""
    if num_gpus < 0 or num_cpus < 0:
        raise ValueError("num_cpus and num_gpus must be >= 0")
    actor: dict[str, Any] = {"num_cpus": num_cpus}
    if num_gpus > 0:
        actor["num_gpus"] = num_gpus  # fractional: several replicas share one GPU
    opts: dict[str, Any] = {
        "name": deployment_name(model.name),
        "max_ongoing_requests": max_ongoing_requests(model),
        # Past the gateway's own queue Ray must not hold more: the gateway's admission already
        # bounds waiting by size and TTL (429/503 with Retry-After); -1 would be unbounded.
        "max_queued_requests": max(1, queue.size),
        "ray_actor_options": actor,
        "health_check_period_s": health_check_period_s,
        "graceful_shutdown_timeout_s": 5.0,
    }
    if model.autoscale is not None:
        opts["autoscaling_config"] = autoscaling_config(
            model.autoscale, look_back_period_s=look_back_period_s, metrics_interval_s=metrics_interval_s)
    else:
        opts["num_replicas"] = 1
    return opts


class ModelReplica:
    """One local model inside a Ray Serve replica (the class ``serve.deployment`` wraps).

    ``model``: the ``ModelConfig`` as a dict, with only its local deployment; ``memory``: the
    ``MemoryConfig`` as a dict; ``store_root``: the artifact store directory (shared disk)."""

    async def __init__(self, model: dict[str, Any], memory: dict[str, Any], store_root: str) -> None:  # type: ignore[misc]
        from prometheus_client import CollectorRegistry

        from modelyard.backends.local_models import build_local_models
        from modelyard.config.schema import Settings
        from modelyard.registry.artifacts import ArtifactStore

        m = dict(model)
        # Ray owns the replica's lifetime: the model stays loaded for as long as the replica lives.
        m["deployments"] = [{**d, "pinned": True, "preload": True, "keep_alive_s": None} for d in m["deployments"]]
        settings = Settings.model_validate({"memory": memory, "models": [m], "spend": {"enabled": False}})
        self._local = build_local_models(settings, CollectorRegistry(), store=ArtifactStore(store_root))
        self._key = settings.models[0].key(0)
        self._backend = next(iter(self._local.backends.values()))
        await self._local.start()  # prepare, then load and warm up (warmup_requests) the pinned model
        self._check()

    def _check(self) -> None:
        snap = next(s for s in self._local.manager.snapshot() if s["name"] == self._key)
        if snap.get("tier") != "active":
            raise RuntimeError(f"model {self._key!r} is not loaded: {snap.get('error') or snap.get('state')}")

    def check_health(self) -> None:
        """Ray's health check: unhealthy (and replaced) when the model is not loaded."""
        self._check()

    async def call(self, path: str, body: bytes, timeout_s: float, ready_wait_s: float | None, request_id: str) -> Reply:
        from modelyard.backends.base import CallOptions
        from modelyard.errors import ModelyardError

        try:
            r = await self._backend.call(path, body, CallOptions(timeout_s, request_id, ready_wait_s))
        except ModelyardError as exc:
            return _error(exc)
        return ("ok", r.status, r.content_type, r.body)

    async def stream(self, path: str, body: bytes, timeout_s: float, ready_wait_s: float | None, request_id: str):  # noqa: ANN201
        """An async generator: first ``("ok", status, content_type)`` or an error tuple, then the
        body's byte chunks, and an error tuple if the body breaks."""
        from modelyard.backends.base import CallOptions
        from modelyard.errors import ModelyardError

        try:
            s = await self._backend.open_stream(path, body, CallOptions(timeout_s, request_id, ready_wait_s))
        except ModelyardError as exc:
            yield _error(exc)
            return
        try:
            yield ("ok", s.status, s.content_type)
            async for chunk in s.chunks():
                yield chunk
        except ModelyardError as exc:
            yield _error(exc)
        finally:
            s.close()  # the gateway cancelled (client gone) or the body ended: stop generating

    async def __del__(self) -> None:
        await self._local.aclose()


def _error(exc: Any) -> Reply:
    from modelyard.errors import UpstreamError

    kind = "upstream" if isinstance(exc, UpstreamError) else "client"
    return ("error", exc.status, exc.to_json(), exc.headers.get("retry-after"), kind)
