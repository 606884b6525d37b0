"""Typed configuration: the pydantic models of modelyard's native YAML.

Validation errors are turned into messages that name the field path
(``models[2].deployments[0].api_base: not a URL``) by ``config.loader``. Every model forbids
unknown keys so that a typo is an error, not a silently ignored setting.
"""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Literal, Union
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator, model_validator

from modelyard.config.responses import ResponsesConfig
from modelyard.config.batch import BatchAPIConfig
from modelyard.config.routing import CascadeConfig, RoutingConfig
from modelyard.config.scaling import AutoscaleConfig

PositiveFloat = Annotated[float, Field(gt=0)]
PositiveInt = Annotated[int, Field(gt=0)]
NonNegFloat = Annotated[float, Field(ge=0)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Strategy(str, Enum):
    weighted = "weighted"  # weighted shuffle (default)
    round_robin = "round_robin"
    least_busy = "least_busy"  # fewest requests in flight
    lowest_latency = "lowest_latency"  # EWMA of observed latency


class BreakerConfig(_Strict):
    """Circuit breaker per deployment: open after ``allowed_fails`` failures within ``window_s``;
    after ``cooldown_s`` let one probe through (half-open); its success closes the breaker."""

    allowed_fails: Annotated[int, Field(ge=1)] = 3
    window_s: PositiveFloat = 60.0
    cooldown_s: PositiveFloat = 30.0


class QueueConfig(_Strict):
    """Admission per public model: at most ``max_concurrency`` in flight (None: the sum of the
    deployments' caps, unlimited if any is uncapped), at most ``size`` waiting, each for at most
    ``ttl_s``; past ``size`` → 429, past ``ttl_s`` → 503, both with Retry-After."""

    max_concurrency: Annotated[int, Field(ge=1)] | None = None
    size: Annotated[int, Field(ge=0)] = 256
    ttl_s: PositiveFloat = 30.0


class RetryConfig(_Strict):
    """Retries inside one model group for retryable failures (connect errors, timeouts, 408, 429,
    5xx), with exponential backoff ``backoff_base_s * 2**(attempt-1)`` capped at ``max_s``, full jitter."""

    num_retries: Annotated[int, Field(ge=0, le=20)] = 2
    backoff_base_s: NonNegFloat = 0.05
    backoff_max_s: NonNegFloat = 2.0


class Price(_Strict):
    """Price in currency units per 1,000 tokens (used by cost tracking)."""

    input_per_1k: NonNegFloat = 0.0
    output_per_1k: NonNegFloat = 0.0


class _DeploymentBase(_Strict):
    weight: PositiveFloat = 1.0
    timeout_s: PositiveFloat | None = None  # None → router.timeout_s
    max_concurrency: Annotated[int, Field(ge=1)] | None = None  # None → uncapped
    rpm: Annotated[int, Field(ge=1)] | None = None  # at its limit the router skips this deployment
    tpm: Annotated[int, Field(ge=1)] | None = None
    name: str | None = None  # label in metrics/logs; default "<public model>/<index>"

    def upstream_name(self, public: str) -> str:
        """The model name this deployment is asked for (a body naming another is re-encoded)."""
        return public


class OpenAIDeployment(_DeploymentBase):
    """Any OpenAI-compatible HTTP upstream."""

    kind: Literal["openai"] = "openai"
    api_base: str
    model: str = Field(min_length=1, description="model name sent to the upstream")
    api_key: str | None = None
    # Whether the upstream returns token logprobs (None: assumed). A cascade tier scored by logprobs,
    # or a judge, on a model with a deployment that says false is a config error at load.
    logprobs: bool | None = None
    # The upstream speaks OpenAI's Responses API itself: /v1/responses requests for a model whose
    # deployments all say so are passed through (it stores them), not translated onto chat completions.
    responses_api: bool = False

    @field_validator("api_base")
    @classmethod
    def _url(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("not a URL (expected http(s)://host[:port][/path])")
        try:
            _ = parts.port  # raises ValueError on a bad port
        except ValueError as exc:
            raise ValueError("not a URL (bad port)") from exc
        return v.rstrip("/")

    def upstream_name(self, public: str) -> str:
        return self.model


class BatchConfig(_Strict):
    """Dynamic batching of embedding/classification requests (as in Triton)."""

    max_batch_size: Annotated[int, Field(ge=1, le=4096)] = 32
    max_queue_delay_us: Annotated[int, Field(ge=0, le=1_000_000)] = 2000


class LocalDeployment(_DeploymentBase):
    """A model served in this process from the artifact store, under the memory manager."""

    kind: Literal["local"]
    artifact: str = Field(min_length=1, description="model name in the artifact store")
    version: str | None = None  # None: the latest imported version
    digest: str | None = None  # pin: loading refuses any other content ("sha256:<hex>")
    n_ctx: Annotated[int, Field(ge=64)] = 2048  # llama.cpp: context shared by the slots
    n_parallel: Annotated[int, Field(ge=1, le=64)] = 2  # llama.cpp: parallel slots
    n_threads: Annotated[int, Field(ge=1)] | None = None
    pinned: bool = False  # never leaves the active tier
    preload: bool = False  # load at start instead of on first request
    keep_alive_s: float | None = 300.0  # idle time before demotion; 0: unload at once; None/<0: forever
    warmup_requests: Annotated[int, Field(ge=0, le=100)] = 1
    batch: BatchConfig = BatchConfig()


class ProcessDeployment(_DeploymentBase):
    """An engine process (vLLM, llama.cpp server, TGI, ...) that modelyard starts and stops on
    demand, under the memory manager; requests are forwarded to it over loopback HTTP."""

    kind: Literal["process"]
    preset: Literal["vllm", "llamacpp-server", "tgi", "xllamacpp"] | None = None
    command: list[str] | None = None  # placeholders {port} {host} {model_path} {gpu}; required without a preset
    artifact: str | None = None  # model in the artifact store → {model_path}
    model_path: str | None = None  # or a path given directly
    model: str | None = None  # model name sent to the engine; default: the public name
    health_path: str = "/health"
    health_timeout_s: PositiveFloat = 120.0
    env: dict[str, str] = Field(default_factory=dict)
    memory: int | str = 0  # declared device memory ("8GiB"); 0: the process tree's RSS measured after start
    sleep_path: str | None = None  # e.g. vLLM "/sleep?level=1": the host tier (weights kept in CPU RAM)
    wake_path: str | None = None
    gpu: str | None = None  # GPU index or MIG UUID → CUDA_VISIBLE_DEVICES
    share: Literal["exclusive", "mps", "time-slice"] = "time-slice"
    stop_grace_s: NonNegFloat = 10.0
    max_restarts: Annotated[int, Field(ge=0, le=100)] = 5
    restart_backoff_s: NonNegFloat = 1.0
    n_ctx: Annotated[int, Field(ge=64)] = 2048  # {n_ctx} in the command (llama.cpp presets)
    n_parallel: Annotated[int, Field(ge=1, le=64)] = 2  # {n_parallel}
    pinned: bool = False
    preload: bool = False
    keep_alive_s: float | None = 300.0  # idle → asleep (host tier, if the engine sleeps) or stopped

    @model_validator(mode="after")
    def _command_or_preset(self) -> "ProcessDeployment":
        if not self.command and not self.preset:
            raise ValueError("give a command or a preset")
        if self.artifact and self.model_path:
            raise ValueError("give artifact or model_path, not both")
        return self

    def upstream_name(self, public: str) -> str:
        return self.model or public


# Set by the provider backend itself, or owned by modelyard (retries, timeouts): not in ``params``.
PROVIDER_RESERVED_PARAMS = frozenset({
    "model", "messages", "input", "stream", "stream_options", "api_key", "api_base", "base_url", "timeout",
    "request_timeout", "stream_timeout", "num_retries", "max_retries", "custom_llm_provider", "fallbacks",
})


class ProviderDeployment(_DeploymentBase):
    """A provider that does not speak the OpenAI API (Anthropic, Bedrock, Vertex AI, Cohere, ...),
    called through the LiteLLM SDK as a library (the ``providers`` extra; backends/provider.py)."""

    kind: Literal["provider"]
    model: str = Field(description="<provider>/<model> as LiteLLM names it, e.g. anthropic/claude-3-5-sonnet-20240620")
    api_key: str | None = None  # None: the provider's own variable (ANTHROPIC_API_KEY, ...), read by LiteLLM
    api_base: str | None = None  # None: the provider's public endpoint
    params: dict[str, object] = Field(default_factory=dict)  # passed to LiteLLM as is (aws_region_name, ...)
    # Most such providers (Anthropic, Bedrock's Claude, Cohere) return no token logprobs: say true
    # for one that does, to score a cascade tier by them.
    logprobs: bool | None = False

    @field_validator("model")
    @classmethod
    def _provider_model(cls, v: str) -> str:
        provider, _, name = v.partition("/")
        if not provider or not name:
            raise ValueError("expected <provider>/<model> (e.g. anthropic/claude-3-5-sonnet-20240620)")
        return v

    @field_validator("api_base")
    @classmethod
    def _base_url(cls, v: str | None) -> str | None:
        if v is not None and (urlsplit(v).scheme not in ("http", "https") or not urlsplit(v).hostname):
            raise ValueError("not a URL (expected http(s)://host[:port][/path])")
        return v.rstrip("/") if v is not None else None

    @field_validator("params")
    @classmethod
    def _params(cls, v: dict[str, object]) -> dict[str, object]:
        bad = sorted(k for k in v if k in PROVIDER_RESERVED_PARAMS)
        if bad:
            raise ValueError(f"{', '.join(map(repr, bad))}: set by modelyard (use the deployment's own fields, "
                             "router.timeout_s and router.retry)")
        return v

    @model_validator(mode="after")
    def _sdk_installed(self) -> "ProviderDeployment":
        import importlib.util

        if importlib.util.find_spec("litellm") is None:
            raise ValueError("kind 'provider' calls the provider through the LiteLLM SDK, which is not installed: "
                             "pip install 'modelyard[providers]'")
        return self

    def upstream_name(self, public: str) -> str:
        return self.model


def _deployment_kind(v: object) -> str:
    if isinstance(v, dict):
        kind = v.get("kind", "openai")
        return kind if isinstance(kind, str) else "openai"
    return getattr(v, "kind", "openai")


DEPLOYMENT_KINDS = ("openai", "local", "process", "provider")
Deployment = Annotated[
    Union[
        Annotated[OpenAIDeployment, Tag("openai")],
        Annotated[LocalDeployment, Tag("local")],
        Annotated[ProcessDeployment, Tag("process")],
        Annotated[ProviderDeployment, Tag("provider")],
    ],
    Discriminator(_deployment_kind, custom_error_type="invalid_kind",
                  custom_error_message="must be one of: openai, local, process, provider"),
]


class ModelConfig(_Strict):
    """A public model name and the deployments behind it (or, for a cascade, the models it asks)."""

    name: str = Field(min_length=1)
    aliases: list[str] = Field(default_factory=list)
    deployments: list[Deployment] = Field(default_factory=list)
    cascade: CascadeConfig | None = None
    fallbacks: list[str] = Field(default_factory=list)
    strategy: Strategy | None = None  # None → router.strategy
    retry: RetryConfig | None = None
    breaker: BreakerConfig | None = None
    queue: QueueConfig | None = None
    price: Price | None = None
    owned_by: str = "modelyard"
    rpm: Annotated[int, Field(ge=1)] | None = None  # requests per minute for the model, all keys together
    tpm: Annotated[int, Field(ge=1)] | None = None  # tokens per minute (estimate at admission, settled with usage)
    autoscale: AutoscaleConfig | None = None  # replicas on its own traffic (scaling/policy.py)
    batch_discount: Annotated[float, Field(ge=0, le=1)] = 0.5  # Batch API items pay (1 - this) of the price

    @model_validator(mode="after")
    def _deployment_keys(self) -> "ModelConfig":
        if self.cascade is None and not self.deployments:
            raise ValueError("give deployments (at least one) or a cascade")
        if self.cascade is not None and self.deployments:
            raise ValueError("a cascade has no deployments of its own (its tiers are models)")
        # One identity per deployment, computed here once and used by the router, the memory
        # manager, metrics, spend rows and /admin/models: its name, else the model's name for the
        # first deployment and "<model>/<index>" for the others.
        named = [d if d.name else d.model_copy(update={"name": self.name if i == 0 else f"{self.name}/{i}"})
                 for i, d in enumerate(self.deployments)]
        object.__setattr__(self, "deployments", named)
        return self

    def key(self, i: int) -> str:
        """The identity of deployment ``i``."""
        name = self.deployments[i].name
        assert name is not None
        return name


class RouterConfig(_Strict):
    strategy: Strategy = Strategy.weighted
    timeout_s: PositiveFloat = 600.0
    retry: RetryConfig = RetryConfig()
    breaker: BreakerConfig = BreakerConfig()
    queue: QueueConfig = QueueConfig()
    latency_ewma_alpha: Annotated[float, Field(gt=0, le=1)] = 0.3


class ServerConfig(_Strict):
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8400
    max_body_bytes: Annotated[int, Field(ge=1)] = 10 * 1024 * 1024
    graceful_timeout_s: NonNegFloat = 30.0
    # After SIGTERM new /v1 requests get 503 + Retry-After (readiness 503) while in-flight ones go
    # on, and for at least this long, so a load balancer moves traffic away before the port closes.
    shutdown_delay_s: NonNegFloat = 0.0
    access_log: bool = True


class MemoryConfig(_Strict):
    """Budgets of the tiers local models live in (sizes in bytes, or "2GiB", "512MB", "auto")."""

    active: int | str = "auto"  # the execution device (the CPU on a machine without GPU)
    host: int | str = "auto"  # weights parked in CPU RAM
    data_dir: str | None = None  # artifact store etc.; None: $MODELYARD_HOME or ~/.modelyard


class DatabaseConfig(_Strict):
    """The database of virtual keys and spend rows."""

    url: str | None = None  # None: SQLite (WAL) at <data_dir>/modelyard.db; or postgresql+asyncpg://user@host/db


class SpendConfig(_Strict):
    """One spend row per request, written off the request path (batched; spooled when the
    database is unreachable, replayed when it returns)."""

    enabled: bool = True
    flush_interval_s: PositiveFloat = 0.5  # also about the most a SIGKILL can lose
    # The in-memory backlog's bound: past it rows spill to the disk spool; at twice it new
    # requests are refused (503 + Retry-After) until the backlog shrinks.
    max_buffer_rows: PositiveInt = 20_000
    max_buffer_bytes: PositiveInt = 16 << 20
    # /health/readiness reports the writer "stuck" when rows wait and none moved for this long.
    stuck_after_s: PositiveFloat = 30.0


class AuthConfig(_Strict):
    """API keys. With a master key (here or in $MODELYARD_MASTER_KEY) every /v1/* request needs
    ``Authorization: Bearer <key>`` (the master key or a virtual key made with it)."""

    master_key: str | None = Field(default=None, min_length=8)
    # Serve on a non-loopback address without any key (refused unless set: anyone could use it).
    allow_unauthenticated: bool = False
    # How often keys created or revoked by another replica (or the CLI) are picked up.
    refresh_interval_s: PositiveFloat = 2.0


class LimitsConfig(_Strict):
    """Rate-limit and budget counters: in this process (default) or in Redis, shared by replicas."""

    redis_url: str | None = None  # redis://[:password@]host:port/db
    redis_prefix: str = "modelyard:"
    # Redis unreachable: admit without limits (True, logged and counted) or answer 503 (False).
    fail_open: bool = True
    # Tokens charged for a request that gives no max_tokens, until its real usage settles it.
    default_completion_tokens: Annotated[int, Field(ge=0)] = 256


class RegistryConfig(_Strict):
    """The shared artifact registry: an S3-compatible bucket (S3, MinIO, Ceph) nodes push to and pull from.

    Credentials may be ``os.environ/NAME`` references; unset, boto3's own chain applies
    (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, profiles, instance roles)."""

    url: str | None = None  # s3://bucket/prefix; None: no remote
    endpoint_url: str | None = None  # e.g. http://minio:9000; None: AWS (or $AWS_ENDPOINT_URL)
    region: str = "us-east-1"
    access_key_id: str | None = None
    secret_access_key: str | None = None
    pull_on_first_use: bool = True  # a local deployment whose artifact is missing locally is pulled at start

    @field_validator("url")
    @classmethod
    def _s3_url(cls, v: str | None) -> str | None:
        if v is not None and (not v.startswith("s3://") or not urlsplit(v).netloc):
            raise ValueError("must be s3://bucket[/prefix]")
        return v


class RayConfig(_Strict):
    """Cluster mode (``serve --ray``): local models as Ray Serve deployments (backends/ray_backend.py)."""

    address: str | None = None  # "auto" (join or start a local Ray) or a Ray address; None: in-process
    num_cpus: NonNegFloat = 0.5  # per replica
    num_gpus: NonNegFloat = 0.0  # per replica; fractional: replicas share a GPU
    look_back_period_s: PositiveFloat | None = None  # Ray's load window (modelyard's default: 15 s)
    metrics_interval_s: PositiveFloat | None = None


class Settings(_Strict):
    """The whole configuration."""

    server: ServerConfig = ServerConfig()
    memory: MemoryConfig = MemoryConfig()
    database: DatabaseConfig = DatabaseConfig()
    spend: SpendConfig = SpendConfig()
    auth: AuthConfig = AuthConfig()
    limits: LimitsConfig = LimitsConfig()
    router: RouterConfig = RouterConfig()
    routing: RoutingConfig = RoutingConfig()
    registry: RegistryConfig = RegistryConfig()
    ray: RayConfig = RayConfig()
    responses: ResponsesConfig = ResponsesConfig()
    batch: BatchAPIConfig = BatchAPIConfig()  # the Batch API (config/batch.py)
    models: list[ModelConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _names(self) -> "Settings":
        # Collect every problem (one per line) rather than stopping at the first, so that the
        # loader can report them all at once.
        problems: list[str] = []
        seen: dict[str, str] = {}
        for i, m in enumerate(self.models):
            for name in (m.name, *m.aliases):
                if name in seen:
                    problems.append(f"models[{i}]: name {name!r} already used by {seen[name]}")
                    continue
                seen[name] = f"models[{i}]"
        for i, m in enumerate(self.models):
            for j, fb in enumerate(m.fallbacks):
                if fb not in seen:
                    problems.append(f"models[{i}].fallbacks[{j}]: unknown model {fb!r}")
                elif fb in (m.name, *m.aliases):
                    problems.append(f"models[{i}].fallbacks[{j}]: a model cannot fall back to itself")
        keys: dict[str, str] = {}
        for i, m in enumerate(self.models):
            if seen.get(m.name) != f"models[{i}]":
                continue  # its keys clash because its name does: that problem is already listed
            for j, d in enumerate(m.deployments):
                where = f"models[{i}].deployments[{j}]"
                if d.name in keys:
                    problems.append(f"{where}.name: deployment {d.name!r} already used by {keys[d.name]}")
                keys.setdefault(d.name or "", where)
        problems += _routing_problems(self, seen)
        if problems:
            raise ValueError("\n".join(problems))
        return self


def _routing_problems(s: "Settings", seen: dict[str, str]) -> list[str]:
    """Routes and cascade tiers that name no model, cascades that reach themselves."""
    problems: list[str] = []
    by_name = {n: m for m in s.models for n in (m.name, *m.aliases)}
    auto = s.routing.auto
    if auto is not None:
        if auto.name in seen:
            problems.append(f"routing.auto.name: {auto.name!r} is already a model ({seen[auto.name]})")
        for task, route in auto.tasks.items():
            for field, target in (("model", route.model), ("overflow", route.overflow)):
                if target is not None and target not in by_name:
                    problems.append(f"routing.auto.tasks.{task}.{field}: unknown model {target!r}")
        if auto.classifier is not None and auto.embedder not in by_name:
            problems.append(f"routing.auto.embedder: unknown model {auto.embedder!r} (the classifier embeds with it)")
    for i, m in enumerate(s.models):
        if m.cascade is None:
            continue
        for j, tier in enumerate(m.cascade.tiers):
            where = f"models[{i}].cascade.tiers[{j}]"
            for field, target in (("model", tier.model), ("judge", tier.judge)):
                if target is None:
                    continue
                if target not in by_name:
                    problems.append(f"{where}.{field}: unknown model {target!r}")
                elif _reaches(by_name, target, m.name):
                    problems.append(f"{where}.{field}: {target!r} leads back to cascade {m.name!r} (a cycle)")
            last = j == len(m.cascade.tiers) - 1
            if last and (tier.threshold is not None or tier.thresholds):
                problems.append(f"{where}: the last tier always answers; a threshold there means nothing")
            elif not last and tier.confidence != "judge":
                problems += _no_logprobs(by_name, tier.model, f"{where}.model", tier.confidence)
            if tier.judge is not None:
                problems += _no_logprobs(by_name, tier.judge, f"{where}.judge", "judge")
    return problems


def _no_logprobs(by_name: dict[str, "ModelConfig"], name: str, where: str, why: str) -> list[str]:
    """A tier scored by token logprobs (or a judge, read by its answer's logprobs) must be able to give them."""
    target = by_name.get(name)
    if target is None:
        return []  # reported as an unknown model
    if target.cascade is not None:
        return [f"{where}: {name!r} is a cascade, whose answers carry no usable token logprobs ({why}); "
                "use confidence: judge"]
    return [f"{where}: {name!r} cannot give token logprobs ({why}): its deployment "
            f"{d.name or i} says logprobs: false; use confidence: judge with a model that can"
            for i, d in enumerate(target.deployments) if getattr(d, "logprobs", None) is False]


def _reaches(by_name: dict[str, "ModelConfig"], start: str, target: str) -> bool:
    """Whether model ``start`` (through cascade tiers and judges) leads to model ``target``."""
    stack, seen = [start], set()
    while stack:
        m = by_name.get(stack.pop())
        if m is None or m.name in seen:
            continue
        if m.name == target:
            return True
        seen.add(m.name)
        if m.cascade is not None:
            stack += [t.model for t in m.cascade.tiers] + [t.judge for t in m.cascade.tiers if t.judge]
    return False
