"""Building the local side of the app: artifact store, memory manager, engines, local backends.

Called once from the app's lifespan. A local deployment whose artifact is missing or pinned to
another digest does not stop the server: its model is registered with a loader that fails with
the artifact's error, so requests for it get a clear 503 while every other model serves.

**Prepared at start.** Each in-process engine's ``prepare(path, options)`` (its heavy imports —
torch, transformers, scikit-learn, xllamacpp — and the first-time code paths; ~5 s for the
embedded default on this machine) starts on a worker thread as soon as the models are registered,
while the rest of the start-up proceeds, and ``LocalModels.start`` waits for it before the memory
manager preloads anything — so the server says it is listening only once no request will pay for
an import. Before, the first request to ``text-embedding`` after ``serve`` took 10.4 s. A prepare
that fails is logged and ignored: the model's load reports the real error.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from typing import Any

from modelyard.backends.httpclient import HTTPPool
from modelyard.backends.local import LocalBackend
from modelyard.backends.process import ProcessBackend
from modelyard.config.schema import LocalDeployment, ProcessDeployment, Settings
from modelyard.engines.placement import GpuPlacer
from modelyard.engines.spec import ProcessSpec, preset
from modelyard.engines.supervisor import ProcessEngine, RestartPolicy
from modelyard.errors import ArtifactError, ModelLoadError
from modelyard.memory.devices import detect_budgets, gpu_free_bytes, parse_bytes
from modelyard.memory.manager import MemoryManager, ModelSpec
from modelyard.observability.memory_metrics import MemoryMetrics
from modelyard.registry.artifacts import ArtifactStore, Manifest
from modelyard.registry.remote import RemoteStore, ensure_local, remote_for
from modelyard.runtime.base import Capability, Engine, Footprint, LoadOptions

log = logging.getLogger("modelyard")

Preparation = tuple[str, Callable[[], Engine], str, LoadOptions]  # (model key, factory, artifact path, options)


@dataclass
class PrepareReport:
    """What preparing the engines at start did: seconds per model, and the failures."""

    seconds: dict[str, float] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    total_s: float = 0.0


def prepare_engines(jobs: list[Preparation]) -> PrepareReport:
    """Run each engine's ``prepare`` once per (engine type, artifact), in order (blocking: run it
    on a worker thread). Engines without one are skipped; failures are recorded, not raised."""
    report = PrepareReport()
    done: set[tuple[str, str]] = set()
    t0 = time.perf_counter()
    for key, factory, path, opts in jobs:
        try:
            engine = factory()
            prep = getattr(engine, "prepare", None)
            if prep is None or (type(engine).__name__, path) in done:
                continue
            done.add((type(engine).__name__, path))
            t = time.perf_counter()
            prep(path, opts)
            report.seconds[key] = time.perf_counter() - t
        except Exception as exc:  # noqa: BLE001 - the model's load will report the real error
            report.errors[key] = f"{type(exc).__name__}: {exc}"
    report.total_s = time.perf_counter() - t0
    return report


@dataclass
class LocalModels:
    manager: MemoryManager
    store: ArtifactStore
    executor: concurrent.futures.ThreadPoolExecutor
    backends: dict[int, LocalBackend | ProcessBackend] = field(default_factory=dict)  # id(deployment) → backend
    keys: dict[str, str] = field(default_factory=dict)  # public model name → manager key (first local deployment)
    preparing: concurrent.futures.Future[PrepareReport] | None = None
    prepared: PrepareReport | None = None

    async def start(self) -> None:
        """Wait for the engines' preparation (started at build), then start the memory manager
        (preloads, keep-alive)."""
        if self.preparing is not None:
            self.prepared = await asyncio.wrap_future(self.preparing)
            for key, err in self.prepared.errors.items():
                log.warning("preparing model %r at start failed (its load will say why): %s", key, err)
        await self.manager.start()

    async def aclose(self) -> None:
        for b in self.backends.values():
            await b.aclose()
        await self.manager.aclose()
        self.executor.shutdown(wait=False, cancel_futures=True)


def data_dir(settings: Settings, environ: dict[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    if settings.memory.data_dir:
        return Path(settings.memory.data_dir).expanduser()
    return Path(env.get("MODELYARD_HOME") or "~/.modelyard").expanduser()


def has_local(settings: Settings) -> bool:
    """Whether any deployment lives under the memory manager (in-process or a managed process)."""
    return any(isinstance(d, (LocalDeployment, ProcessDeployment)) for m in settings.models for d in m.deployments)


def build_local_models(
    settings: Settings, metrics_registry: object, *, pool: HTTPPool | None = None, store: ArtifactStore | None = None
) -> LocalModels:
    budgets = detect_budgets({"active": settings.memory.active, "host": settings.memory.host})
    device = "cuda" if gpu_free_bytes() is not None else "cpu"  # the active tier: the GPU where there is one
    manager = MemoryManager(budgets, metrics=MemoryMetrics(metrics_registry))  # type: ignore[arg-type]
    store = store or ArtifactStore(data_dir(settings) / "artifacts")
    # Each generation holds a worker for its whole length: size the pool above every llama.cpp
    # slot, plus room for loads and embedding/classification batches.
    slots = sum(d.n_parallel for m in settings.models for d in m.deployments if isinstance(d, LocalDeployment))
    workers = max(8, slots + 4)
    executor = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="modelyard-infer")
    local = LocalModels(manager, store, executor)
    # Pull on first use: an artifact missing here is fetched from the team's registry at start,
    # before the server listens (the same moment a missing artifact is noticed without one).
    try:
        remote = remote_for(store, settings.registry, first_use=True)
    except ArtifactError as exc:  # e.g. boto3 not installed: serve what is local, say why
        log.warning("artifact registry unusable, pull on first use is off: %s", exc.message)
        remote = None
    jobs: list[Preparation] = []
    placer = GpuPlacer()
    for m in settings.models:
        for i, d in enumerate(m.deployments):
            if isinstance(d, ProcessDeployment):
                key = m.key(i)
                _register_process(local, store, placer, key, m.name, d, pool or HTTPPool(), data_dir(settings), remote)
        resolved = {i: _resolve(store, d, remote) for i, d in enumerate(m.deployments) if isinstance(d, LocalDeployment)}
        mismatch = _replica_mismatch(m.name, resolved)
        for i, d in enumerate(m.deployments):
            if not isinstance(d, LocalDeployment):
                continue
            key = m.key(i)
            found = resolved[i]
            if isinstance(found, Manifest) and d.artifact in mismatch:
                found = mismatch[d.artifact]
            factory, path, caps, size = _engine_for(store, key, found)
            # One core left for the gateway itself: compute threads on every core collapse as soon
            # as anything else runs (measured: llama.cpp 55 → 5.5 tok/s on 2 cores).
            opts = LoadOptions(device=device, n_ctx=d.n_ctx, n_parallel=d.n_parallel,
                               n_threads=d.n_threads or max(1, (os.cpu_count() or 2) - 1))
            if path:
                jobs.append((key, factory, path, opts))
            manager.register(
                ModelSpec(
                    name=key,
                    engine_factory=factory,
                    artifact_path=path,
                    load_options=opts,
                    pinned=d.pinned,
                    keep_alive_s=d.keep_alive_s,
                    warmup_requests=d.warmup_requests,
                    preload=d.preload,
                    estimated_bytes=size,
                )
            )
            local.backends[id(d)] = LocalBackend(
                key=key, model=m.name, manager=manager, capabilities=caps, executor=executor, batch=d.batch
            )
            local.keys.setdefault(m.name, key)
            for alias in m.aliases:
                local.keys.setdefault(alias, key)
    if jobs:
        local.preparing = executor.submit(prepare_engines, jobs)
    return local


def _register_process(
    local: LocalModels, store: ArtifactStore, placer: GpuPlacer, key: str, public: str, d: ProcessDeployment,
    pool: HTTPPool, home: Path, remote: RemoteStore | None = None,
) -> None:
    """A managed engine process: a ProcessEngine per start, one restart policy for its life."""
    model_path = d.model_path or ""
    problem: str | None = None
    if d.artifact:
        found = _resolve(store, LocalDeployment(kind="local", artifact=d.artifact), remote)
        if isinstance(found, str):
            problem = found
        else:
            model_path = str(store.path(found))
    fields: dict[str, Any] = {
        "name": key, "health_path": d.health_path, "health_timeout_s": d.health_timeout_s, "env": dict(d.env),
        "declared_memory_bytes": parse_bytes(d.memory) if d.memory else 0, "model_path": model_path,
        "gpu": d.gpu, "share": d.share, "stop_grace_s": d.stop_grace_s, "max_restarts": max(1, d.max_restarts),
        "restart_backoff_s": d.restart_backoff_s, "log_dir": str(home / "logs"),
    }
    if d.sleep_path:
        fields.update(sleep_path=d.sleep_path, wake_path=d.wake_path)
    spec = preset(d.preset, **fields, **({"command": d.command} if d.command else {})) if d.preset else ProcessSpec(
        command=list(d.command or []), **fields
    )
    policy = RestartPolicy.for_spec(spec)
    loop = asyncio.get_running_loop()
    manager = local.manager

    def on_down(engine: Any, reason: str) -> None:  # called from the engine's watcher thread
        loop.call_soon_threadsafe(lambda: loop.create_task(manager.invalidate(key, engine, reason)))

    def factory() -> Engine:
        if problem is not None:
            return _Unloadable(key, problem)  # type: ignore[return-value]
        return ProcessEngine(spec, restart_policy=policy, placer=placer, on_down=on_down)  # type: ignore[return-value]

    manager.register(
        ModelSpec(
            name=key, engine_factory=factory, artifact_path=model_path, pinned=d.pinned, preload=d.preload,
            keep_alive_s=d.keep_alive_s, warmup_requests=0,  # ProcessEngine.load already warms the engine up
            load_options=LoadOptions(n_ctx=d.n_ctx, n_parallel=d.n_parallel),
            estimated_bytes=spec.declared_memory_bytes or None,
            start_delay=lambda: 0.0 if policy.gave_up else policy.delay_s(),  # a crash's restart backoff
        )
    )
    local.backends[id(d)] = ProcessBackend(key=key, manager=local.manager, pool=pool)  # type: ignore[assignment]
    local.keys.setdefault(public, key)


def _resolve(store: ArtifactStore, d: LocalDeployment, remote: RemoteStore | None = None) -> Manifest | str:
    """The manifest a deployment loads (pulled from ``remote`` when missing here), or why it cannot."""
    try:
        manifest = ensure_local(store, remote, d.artifact, d.version, d.digest)
    except ArtifactError as exc:
        return exc.message
    return manifest


def _replica_mismatch(model: str, resolved: dict[int, Manifest | str]) -> dict[str, str]:
    """Replicas of one model that name the same artifact must load the same content: for each
    artifact whose replicas resolve to different digests, the reason none of them may load."""
    by_artifact: dict[str, dict[str, str]] = {}  # artifact → digest → "name@version"
    for found in resolved.values():
        if isinstance(found, Manifest):
            by_artifact.setdefault(found.name, {})[found.digest] = found.ref
    return {
        name: f"replicas of model {model!r} resolve artifact {name!r} to different content: "
        + ", ".join(f"{ref} ({digest})" for digest, ref in sorted(digests.items()))
        + "; pin one version or digest for all of them"
        for name, digests in by_artifact.items()
        if len(digests) > 1
    }


def _engine_for(
    store: ArtifactStore, key: str, found: Manifest | str
) -> tuple[Callable[[], Engine], str, frozenset[Capability], int | None]:
    """The engine factory, artifact path, capabilities and size estimate for one deployment."""
    if isinstance(found, str):
        return (lambda: _Unloadable(key, found)), "", frozenset(Capability), None  # type: ignore[return-value]
    manifest = found
    path = str(store.path(manifest))
    size = manifest.size
    if manifest.engine == "llamacpp":
        from modelyard.runtime.llamacpp import LlamaCppEngine

        headers: dict = {}  # the GGUF header, read once (at prepare) for every engine of this deployment
        return (lambda: LlamaCppEngine(key, header_cache=headers)), path, LlamaCppEngine.capabilities, size
    if manifest.engine == "sentence-transformers":
        from modelyard.runtime.sentence import SentenceEngine

        return (lambda: SentenceEngine(key)), path, SentenceEngine.capabilities, size
    if manifest.engine == "sklearn" and "classifier" in manifest.extra:
        from modelyard.runtime.sklearn_models import IntentEngine

        encoder = _encoder_path(store, manifest)
        return (lambda: IntentEngine(key, encoder_path=encoder)), path, IntentEngine.capabilities, size
    if manifest.engine == "sklearn":
        from modelyard.runtime.sklearn_models import ProfanityModerationEngine

        return (lambda: ProfanityModerationEngine(key)), path, ProfanityModerationEngine.capabilities, size
    message = f"artifact {manifest.ref} has engine {manifest.engine!r}, which modelyard cannot run in-process"
    return (lambda: _Unloadable(key, message)), path, frozenset(Capability), None  # type: ignore[return-value]


def _encoder_path(store: ArtifactStore, manifest: Manifest) -> str | None:
    name = manifest.extra.get("encoder")
    if not name:
        return None
    try:
        return str(store.path(store.get(name)))
    except ArtifactError:
        return None  # the engine's load says the encoder is missing


class _Unloadable:
    """Stands in for a model whose artifact cannot be used: every load fails with the reason."""

    capabilities = frozenset(Capability)
    supports_host_tier = False

    def __init__(self, key: str, reason: str) -> None:
        self._key = key
        self._reason = reason

    def load(self, artifact_path: str, opts: LoadOptions) -> Footprint:
        raise ModelLoadError(f"model {self._key!r} cannot load: {self._reason}")

    def to_host(self) -> None:  # pragma: no cover - never loaded
        pass

    def to_active(self) -> None:  # pragma: no cover
        pass

    def unload(self) -> None:
        pass

    def warmup(self) -> None:  # pragma: no cover
        pass
