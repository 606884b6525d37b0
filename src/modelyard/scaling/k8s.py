"""Kubernetes manifests from the config, pure: ``Settings`` + ``RenderOptions`` → a list of manifest dicts.

Per model deployment of ``kind: process``: the engine runs as its own Deployment (the preset's or
the given command, placeholders filled, listening on all interfaces) behind a Service. Its replicas
follow the model's ``autoscale`` policy (``scaling/policy.py``):

* no policy: a fixed single replica;
* ``min_replicas >= 1`` and no ``prewarm``: an ``autoscaling/v2`` HorizontalPodAutoscaler on the
  external metric ``modelyard_pending_requests{model=...}`` (served by the prometheus-adapter rule
  in docs/design/kubernetes.md), target ``AverageValue = target_ongoing_requests``, the delays as
  ``behavior`` stabilization windows;
* ``min_replicas == 0`` or a ``prewarm`` window: a KEDA ``ScaledObject`` (a prometheus trigger on
  the gateway's own in-flight + queue-depth gauges, one cron trigger per window).

The gateway gets a ConfigMap holding the same config, in which each process deployment became a
``kind: openai`` deployment pointing at its engine Service, plus its Deployment, Service and
PodDisruptionBudget. Nothing here reads files, the clock or the environment.
"""

from __future__ import annotations

import math
import re
import sys
from dataclasses import dataclass, field
from typing import Any

from modelyard.config.cron import Cron
from modelyard.config.loader import ENV_PREFIX
from modelyard.config.scaling import AutoscaleConfig, Prewarm
from modelyard.config.schema import ModelConfig, ProcessDeployment, Settings
from modelyard.engines.spec import LOOPBACK, ProcessSpec, fill, preset
from modelyard.errors import ConfigError
from modelyard.memory.devices import parse_bytes

PENDING_METRIC = "modelyard_pending_requests"  # the adapter's name for in-flight + queued, per model
IN_FLIGHT = "modelyard_in_flight_requests"
QUEUE_DEPTH = "modelyard_queue_depth"
ENGINE_PORT = 8000
CONFIG_PATH = "/etc/modelyard/config.yaml"
MODELS_MOUNT = "/models"
DEFAULT_ENGINE_IMAGES = {
    "vllm": "vllm/vllm-openai:latest",
    "llamacpp-server": "ghcr.io/ggml-org/llama.cpp:server",
    "tgi": "ghcr.io/huggingface/text-generation-inference:latest",
}
# Where an image keeps the binary its preset names (the llama.cpp image does not put /app on PATH).
_BINARIES = {"llamacpp-server": {"llama-server": "/app/llama-server"}}
_MIG = re.compile(r"^(?:mig-)?(\d+g\.\d+gb(?:\+me)?)$", re.IGNORECASE)
_LABEL_VALUE = re.compile(r"^(?:[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
_MAX_WINDOW_S = 3600  # HPA behavior: stabilizationWindowSeconds is at most one hour
_DAY_MIN = 24 * 60


@dataclass(frozen=True)
class RenderOptions:
    namespace: str = "default"
    image: str = "modelyard:latest"  # the gateway's image
    engine_images: dict[str, str] = field(default_factory=dict)  # preset (or "*") → image; else the defaults
    prometheus_url: str = "http://prometheus-server.monitoring.svc:80"
    gateway_replicas: int = 2
    gateway_port: int = 8400
    secret: str = "modelyard-secrets"  # os.environ/NAME references become keys of this Secret
    models_pvc: str = "modelyard-models"  # holds artifacts at /models/<artifact>


@dataclass(frozen=True)
class _Engine:
    """One process deployment as it is rendered."""

    index: int  # model index
    model: ModelConfig
    d: ProcessDeployment
    slug: str

    @property
    def where(self) -> str:
        return f"models[{self.index}]"

    def url(self, ns: str) -> str:
        return f"http://{self.slug}.{ns}.svc:{ENGINE_PORT}/v1"


# --- names ------------------------------------------------------------------------------------


def slug(text: str, prefix: str = "engine-") -> str:
    """A DNS-1035 label (Service names): lowercase, ``-`` for anything else, at most 63 characters."""
    s = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return (prefix + s)[:63].rstrip("-")


def _labels(component: str, instance: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": f"modelyard-{component}", "app.kubernetes.io/instance": instance,
            "app.kubernetes.io/part-of": "modelyard"}


def _meta(name: str, ns: str, labels: dict[str, str], **extra: Any) -> dict[str, Any]:
    return {"name": name, "namespace": ns, "labels": labels, **extra}


def _engines(settings: Settings) -> list[_Engine]:
    out: list[_Engine] = []
    seen: dict[str, str] = {}
    for i, m in enumerate(settings.models):
        for j, d in enumerate(m.deployments):
            if not isinstance(d, ProcessDeployment):
                continue
            s = slug(m.key(j))
            where = f"models[{i}].deployments[{j}]"
            if s in seen:
                raise ConfigError(f"{where}.name: its Kubernetes name {s!r} is also {seen[s]}'s; rename one")
            seen[s] = where
            out.append(_Engine(i, m, d, s))
    return out


# --- cron windows -------------------------------------------------------------------------------


def cron_end(p: Prewarm, where: str) -> str:
    """The cron that fires ``duration_s`` after ``p.cron`` does (KEDA's ``end``), for a start with a
    fixed minute and hour; ConfigError (naming ``where``) when no cron can say it."""
    c = Cron.parse(p.cron)
    fields = p.cron.split()
    if len(c.minutes) != 1 or len(c.hours) != 1:
        raise ConfigError(f"{where}: KEDA needs an end cron; {p.cron!r} has no single minute and hour, "
                          "so 'start + duration_s' is not a cron (give one window per start time)")
    dur = math.ceil(p.duration_s / 60)  # KEDA's crons have minute resolution
    start = next(iter(c.hours)) * 60 + next(iter(c.minutes))
    days, end = divmod(start + dur, _DAY_MIN)
    starts = sorted(c.weekdays) if not c.any_weekday and c.any_day and fields[3] == "*" else None
    gap = _DAY_MIN * (min(((b - a) % 7) or 7 for a, b in zip(starts, starts[1:] + starts[:1], strict=True))
                      if starts else 1)
    if dur >= gap:
        raise ConfigError(f"{where}: duration_s {p.duration_s:g} is not shorter than the time to the next start "
                          f"of {p.cron!r} ({gap // 60} h): the windows overlap, KEDA cannot end one")
    dow = fields[4]
    if days:
        if not (c.any_day and fields[3] == "*"):
            raise ConfigError(f"{where}: the window of {p.cron!r} ends on another day; with a day of month or "
                              "month set, that end is not a cron (use day of week only, or end before midnight)")
        if not c.any_weekday:
            dow = ",".join(str(x) for x in sorted({(w + days) % 7 for w in c.weekdays}))
    return f"{end % 60} {end // 60} {fields[2]} {fields[3]} {dow}"


# --- autoscaling ---------------------------------------------------------------------------------


def _window(v: float, where: str) -> int:
    s = math.ceil(v)
    if s > _MAX_WINDOW_S:
        raise ConfigError(f"{where}: {v:g} s; Kubernetes' stabilizationWindowSeconds is at most {_MAX_WINDOW_S}")
    return s


def behavior(a: AutoscaleConfig, where: str) -> dict[str, Any]:
    return {"scaleUp": {"stabilizationWindowSeconds": _window(a.upscale_delay_s, f"{where}.upscale_delay_s")},
            "scaleDown": {"stabilizationWindowSeconds": _window(a.downscale_delay_s, f"{where}.downscale_delay_s")}}


def uses_keda(a: AutoscaleConfig) -> bool:
    return a.min_replicas == 0 or bool(a.prewarm)


def _quantity(x: float) -> str:
    return f"{x:g}" if x == int(x) else f"{math.ceil(x * 1000)}m"


def pending_query(model: str) -> str:
    """PromQL: requests in flight plus waiting for ``model``, over all gateway replicas (0 when none)."""
    m = model.replace("\\", "\\\\").replace('"', '\\"')
    return (f'(sum({IN_FLIGHT}{{model="{m}"}}) or vector(0)) + '
            f'(sum({QUEUE_DEPTH}{{model="{m}"}}) or vector(0))')


def _hpa(e: _Engine, a: AutoscaleConfig, o: RenderOptions) -> dict[str, Any]:
    where = f"{e.where}.autoscale"
    if not _LABEL_VALUE.match(e.model.name):
        raise ConfigError(f"{e.where}.name: {e.model.name!r} is not a Kubernetes label value, so an HPA cannot "
                          "select its metric; set autoscale.min_replicas to 0 (KEDA queries by name) or rename it")
    return {
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
        "metadata": _meta(e.slug, o.namespace, _labels("engine", e.slug)),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": e.slug},
            "minReplicas": a.min_replicas, "maxReplicas": a.max_replicas,
            "metrics": [{"type": "External", "external": {
                "metric": {"name": PENDING_METRIC, "selector": {"matchLabels": {"model": e.model.name}}},
                "target": {"type": "AverageValue", "averageValue": _quantity(a.target_ongoing_requests)}}}],
            "behavior": behavior(a, where),
        },
    }


def _scaled_object(e: _Engine, a: AutoscaleConfig, o: RenderOptions) -> dict[str, Any]:
    where = f"{e.where}.autoscale"
    triggers: list[dict[str, Any]] = [{"type": "prometheus", "name": "pending", "metadata": {
        "serverAddress": o.prometheus_url, "query": pending_query(e.model.name),
        "threshold": f"{a.target_ongoing_requests:g}"}}]
    for j, p in enumerate(a.prewarm):
        triggers.append({"type": "cron", "name": f"prewarm-{j}", "metadata": {
            "timezone": a.timezone, "start": p.cron, "end": cron_end(p, f"{where}.prewarm[{j}]"),
            "desiredReplicas": str(p.replicas)}})
    spec: dict[str, Any] = {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": e.slug},
        "minReplicaCount": a.min_replicas, "maxReplicaCount": a.max_replicas, "pollingInterval": 15,
        "advanced": {"horizontalPodAutoscalerConfig": {"behavior": behavior(a, where)}},
        "triggers": triggers,
    }
    if a.scale_to_zero_after_s is not None:
        spec["cooldownPeriod"] = math.ceil(a.scale_to_zero_after_s)
    return {"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject",
            "metadata": _meta(e.slug, o.namespace, _labels("engine", e.slug)), "spec": spec}


# --- engines --------------------------------------------------------------------------------------


def gpu_resources(gpu: str | None) -> dict[str, int]:
    """``nvidia.com/mig-<profile>`` for a MIG profile (the GPU operator's mixed strategy), one whole
    ``nvidia.com/gpu`` for an index or UUID (the device plugin picks the device), none for None."""
    if gpu is None or gpu == "":
        return {}
    m = _MIG.match(gpu.strip())
    if m:
        return {f"nvidia.com/mig-{m.group(1).lower()}": 1}
    return {"nvidia.com/gpu": 1}


def _quantity_bytes(n: int) -> str:
    for unit, size in (("Gi", 1 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)):
        if n % size == 0:
            return f"{n // size}{unit}"
    return str(n)


def _spec(e: _Engine) -> ProcessSpec:
    d = e.d
    fields: dict[str, Any] = {"name": d.upstream_name(e.model.name), "health_path": d.health_path,
                              "health_timeout_s": d.health_timeout_s, "env": dict(d.env)}
    if d.preset:
        return preset(d.preset, **fields, **({"command": d.command} if d.command else {}))
    return ProcessSpec(command=list(d.command or []), **fields)


def _argv(e: _Engine, spec: ProcessSpec) -> list[str]:
    d = e.d
    model_path = d.model_path or (f"{MODELS_MOUNT}/{d.artifact}" if d.artifact else "")
    vals = {"port": str(ENGINE_PORT), "host": "0.0.0.0", "model_path": model_path, "gpu": "",
            "name": spec.name, "n_ctx": str(d.n_ctx), "n_parallel": str(d.n_parallel)}
    # In a pod the engine must listen on the pod's address, not loopback (the presets say 127.0.0.1).
    argv = ["0.0.0.0" if a == LOOPBACK else fill(a, vals) for a in spec.command]
    if argv[0] == sys.executable:
        argv[0] = "python"
    return [_BINARIES.get(d.preset or "", {}).get(argv[0], argv[0]), *argv[1:]]


def _env(env: dict[str, str], secret: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for k, v in sorted(env.items()):
        if v.startswith(ENV_PREFIX):
            out.append({"name": k, "valueFrom": {"secretKeyRef": {"name": secret, "key": v[len(ENV_PREFIX):]}}})
        else:
            out.append({"name": k, "value": v})
    return out


def _image(e: _Engine, o: RenderOptions) -> str:
    key = e.d.preset or "command"
    if key in o.engine_images:
        return o.engine_images[key]
    if "*" in o.engine_images:
        return o.engine_images["*"]
    if e.d.preset == "xllamacpp":
        return o.image  # the xllamacpp server is part of modelyard
    if key in DEFAULT_ENGINE_IMAGES:
        return DEFAULT_ENGINE_IMAGES[key]
    raise ConfigError(f"{e.where}: a process deployment with its own command needs an image "
                      "(--engine-image command=IMAGE)")


def _http_probe(path: str, port: str, period: int, failures: int, **extra: int) -> dict[str, Any]:
    return {"httpGet": {"path": path, "port": port}, "periodSeconds": period, "failureThreshold": failures, **extra}


def _engine_deployment(e: _Engine, o: RenderOptions) -> dict[str, Any]:
    d, spec = e.d, _spec(e)
    labels = _labels("engine", e.slug)
    resources: dict[str, Any] = {}
    limits: dict[str, Any] = dict(gpu_resources(d.gpu))
    requests: dict[str, Any] = dict(limits)
    if d.memory:
        try:
            mem = parse_bytes(d.memory)
        except ValueError as exc:
            raise ConfigError(f"{e.where}.memory: {exc}") from None
        if mem:
            # The declared device memory is also asked of the node's RAM: the weights pass through
            # it while loading, and vLLM's sleep mode parks them there.
            requests["memory"] = _quantity_bytes(mem)
    if requests:
        resources["requests"] = requests
    if limits:
        resources["limits"] = limits
    container: dict[str, Any] = {
        "name": "engine", "image": _image(e, o), "command": _argv(e, spec),
        "ports": [{"name": "http", "containerPort": ENGINE_PORT}],
        **({"env": _env(spec.env, o.secret)} if spec.env else {}),
        "resources": resources,
        # Model loading: up to health_timeout_s before the kubelet gives up on the pod.
        "startupProbe": _http_probe(spec.health_path, "http", 10, max(1, math.ceil(spec.health_timeout_s / 10))),
        "readinessProbe": _http_probe(spec.health_path, "http", 5, 2, initialDelaySeconds=5),
        "livenessProbe": _http_probe(spec.health_path, "http", 10, 3),
    }
    pod: dict[str, Any] = {"containers": [container],
                           "terminationGracePeriodSeconds": max(1, math.ceil(d.stop_grace_s))}
    if d.artifact:
        container["volumeMounts"] = [{"name": "models", "mountPath": MODELS_MOUNT, "readOnly": True}]
        pod["volumes"] = [{"name": "models", "persistentVolumeClaim": {"claimName": o.models_pvc, "readOnly": True}}]
    dep_spec: dict[str, Any] = {"selector": {"matchLabels": dict(labels)},
                                "template": {"metadata": {"labels": dict(labels)}, "spec": pod}}
    if e.model.autoscale is None:
        dep_spec = {"replicas": 1, **dep_spec}  # autoscaled: the HPA/KEDA owns replicas
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": _meta(e.slug, o.namespace, {**labels, "modelyard.io/model": slug(e.model.name, "")}),
            "spec": dep_spec}


def _service(name: str, ns: str, labels: dict[str, str], port: int) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": _meta(name, ns, dict(labels)),
            "spec": {"selector": dict(labels), "ports": [{"name": "http", "port": port, "targetPort": "http"}]}}


# --- the gateway ----------------------------------------------------------------------------------


def gateway_config(settings: Settings, engines: list[_Engine], o: RenderOptions) -> dict[str, Any]:
    """The gateway's config in the cluster: process deployments → openai ones at their Services;
    ``autoscale`` dropped (Kubernetes scales the engines); listening on all interfaces."""
    data = settings.model_dump(mode="json", exclude_defaults=True)
    by_key = {(e.index, e.d.name): e for e in engines}
    for i, m in enumerate(data.get("models", [])):
        m.pop("autoscale", None)
        model = settings.models[i]
        for j, d in enumerate(m.get("deployments", [])):
            e = by_key.get((i, model.deployments[j].name))
            if e is None:
                continue
            keep = {k: d[k] for k in ("name", "weight", "timeout_s", "max_concurrency", "rpm", "tpm") if k in d}
            m["deployments"][j] = {"kind": "openai", "api_base": e.url(o.namespace),
                                   "model": e.d.upstream_name(model.name), **keep}
    data["server"] = {**data.get("server", {}), "host": "0.0.0.0", "port": o.gateway_port}
    return data


def _gateway(settings: Settings, config_yaml: str, o: RenderOptions) -> list[dict[str, Any]]:
    ns, name, labels = o.namespace, "modelyard", _labels("gateway", "modelyard")
    port = str(o.gateway_port)
    srv = settings.server
    container: dict[str, Any] = {
        "name": "gateway", "image": o.image,
        "args": ["serve", "--config", CONFIG_PATH, "--host", "0.0.0.0", "--port", port, "--log-level", "info"],
        "ports": [{"name": "http", "containerPort": o.gateway_port}],
        "env": [{"name": "MODELYARD_HOME", "value": "/data"}],
        "envFrom": [{"secretRef": {"name": o.secret, "optional": True}}],
        "readinessProbe": _http_probe("/health/readiness", "http", 5, 2),
        "livenessProbe": _http_probe("/health/liveness", "http", 10, 3),
        "volumeMounts": [{"name": "config", "mountPath": "/etc/modelyard", "readOnly": True},
                         {"name": "data", "mountPath": "/data"}],
    }
    pod = {"containers": [container],
           "terminationGracePeriodSeconds": math.ceil(srv.graceful_timeout_s + srv.shutdown_delay_s) + 5,
           "volumes": [{"name": "config", "configMap": {"name": name}}, {"name": "data", "emptyDir": {}}]}
    annotations = {"prometheus.io/scrape": "true", "prometheus.io/port": port, "prometheus.io/path": "/metrics"}
    return [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(name, ns, dict(labels)),
         "data": {"config.yaml": config_yaml}},
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": _meta(name, ns, dict(labels)),
         "spec": {"replicas": o.gateway_replicas, "selector": {"matchLabels": dict(labels)},
                  "template": {"metadata": {"labels": dict(labels), "annotations": annotations}, "spec": pod}}},
        _service(name, ns, labels, o.gateway_port),
        {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": _meta(name, ns, dict(labels)),
         "spec": {"maxUnavailable": 1, "selector": {"matchLabels": dict(labels)}}},
    ]


def render(settings: Settings, options: RenderOptions | None = None, *,
           dump: Any = None) -> list[dict[str, Any]]:
    """Every manifest, gateway first. ``dump`` turns the gateway config dict into YAML text
    (default: ``yaml.safe_dump``)."""
    import yaml

    o = options or RenderOptions()
    engines = _engines(settings)
    out: list[dict[str, Any]] = []
    for e in engines:
        out.append(_engine_deployment(e, o))
        out.append(_service(e.slug, o.namespace, _labels("engine", e.slug), ENGINE_PORT))
        a = e.model.autoscale
        if a is not None:
            out.append(_scaled_object(e, a, o) if uses_keda(a) else _hpa(e, a, o))
    text = (dump or (lambda x: yaml.safe_dump(x, sort_keys=False)))(gateway_config(settings, engines, o))
    return _gateway(settings, text, o) + out
