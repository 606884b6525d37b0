"""Typed configuration: the pydantic models of modelyard's native YAML.

Validation errors are turned into messages that name the field path
(``models[2].deployments[0].api_base: not a URL``) by ``config.loader``. Every model forbids
unknown keys so that a typo is an error, not a silently ignored setting.
"""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

PositiveFloat = Annotated[float, Field(gt=0)]
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


class Deployment(_Strict):
    """One place that can serve a public model."""

    kind: Literal["openai"] = "openai"  # local / process / ray arrive with later issues
    api_base: str
    model: str = Field(min_length=1, description="model name sent to the upstream")
    api_key: str | None = None
    weight: PositiveFloat = 1.0
    timeout_s: PositiveFloat | None = None  # None → router.timeout_s
    max_concurrency: Annotated[int, Field(ge=1)] | None = None  # None → uncapped
    rpm: Annotated[int, Field(ge=1)] | None = None  # recorded; enforced by issue 5's limiter
    tpm: Annotated[int, Field(ge=1)] | None = None
    name: str | None = None  # label in metrics/logs; default "<public model>/<index>"

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


class ModelConfig(_Strict):
    """A public model name and the deployments behind it."""

    name: str = Field(min_length=1)
    aliases: list[str] = Field(default_factory=list)
    deployments: list[Deployment] = Field(min_length=1)
    fallbacks: list[str] = Field(default_factory=list)
    strategy: Strategy | None = None  # None → router.strategy
    retry: RetryConfig | None = None
    breaker: BreakerConfig | None = None
    queue: QueueConfig | None = None
    price: Price | None = None
    owned_by: str = "modelyard"


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
    access_log: bool = True


class Settings(_Strict):
    """The whole configuration."""

    server: ServerConfig = ServerConfig()
    router: RouterConfig = RouterConfig()
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
        if problems:
            raise ValueError("\n".join(problems))
        return self

    def model_names(self) -> list[str]:
        return [m.name for m in self.models]
