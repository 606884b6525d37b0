"""The planner's input: a capacity spec in the scenario's own terms, validated with field paths.

A spec is YAML (or the same dict)::

    overhead_fraction: 0.15          # of each GPU's memory, reserved (CUDA context, fragmentation)
    gpus:                             # or `gpu:` with one entry; a bare catalogue name is enough
      - {gpu_type: A100-40GB, memory_gb: 40, cost_per_hour: 3.20, throughput_tokens_per_sec: 15000}
    models:
      - {name: llama-3-8b-chat, gpu_memory_gb: 16, min_replicas: 2, peak_requests_per_sec: 20,
         tokens_per_request: 256,
         kv: {layers: 32, kv_heads: 8, head_dim: 128, dtype_bytes: 2, context: 4096, concurrency: 32},
         isolation: shared}           # shared | mig | exclusive

Every number is checked (no negative, zero or missing value where one is needed); errors name the
field path (``models[2].peak_requests_per_sec: ...``), as the serving config's do. The pydantic
models here are the file format; ``to_problem`` turns them into the plain frozen values the pure
solvers take (bytes, tokens/s), with GPU types filled from the catalogue.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from modelyard.config.loader import config_error, format_validation_error, parse_yaml
from modelyard.errors import ConfigError

from .catalogue import CATALOGUE, GpuProfile, lookup_gpu

GB = 10**9  # the scenario's "GB" (and NVIDIA's MIG profile names) are decimal gigabytes

Isolation = Literal["shared", "mig", "exclusive"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class KvShapeIn(_Strict):
    """The KV cache of one replica. With ``artifact``, the shape fields may be left out: the
    artifact's metadata (GGUF header, or config.json) gives them."""

    layers: int | None = Field(default=None, gt=0)
    kv_heads: int | None = Field(default=None, gt=0)
    head_dim: int | None = Field(default=None, gt=0)
    dtype_bytes: float = Field(default=2, gt=0)
    context: int | None = Field(default=None, gt=0, description="tokens of one sequence the cache is sized for")
    concurrency: int = Field(default=1, gt=0, description="sequences one replica holds at once")

    def missing(self) -> list[str]:
        return [k for k in ("layers", "kv_heads", "head_dim", "context") if getattr(self, k) is None]


class ModelIn(_Strict):
    name: str = Field(min_length=1)
    gpu_memory_gb: float | None = Field(default=None, gt=0, description="weights (plus anything fixed) in GB")
    artifact: str | None = Field(default=None, description="NAME[@VERSION] in the artifact store: sizes from its metadata")
    min_replicas: int = Field(default=1, ge=0)
    max_replicas: int | None = Field(default=None, gt=0)
    peak_requests_per_sec: float = Field(default=0.0, ge=0)
    tokens_per_request: float = Field(default=0.0, ge=0)
    kv: KvShapeIn | None = None
    kv_gb: float | None = Field(default=None, ge=0, description="KV reserve per replica in GB, instead of a shape")
    overhead_gb: float = Field(default=0.0, ge=0, description="per-replica runtime overhead (activations, graphs)")
    isolation: Isolation = "shared"

    @model_validator(mode="after")
    def _one_size(self) -> ModelIn:
        if self.gpu_memory_gb is None and self.artifact is None:
            raise ValueError("one of gpu_memory_gb or artifact is required")
        if self.kv is not None and self.kv_gb is not None:
            raise ValueError("give kv (a shape) or kv_gb, not both")
        if self.kv is not None and self.artifact is None and self.kv.missing():
            raise ValueError(f"kv: {', '.join(self.kv.missing())} required (or an artifact whose metadata gives them)")
        if self.max_replicas is not None and self.max_replicas < max(1, self.min_replicas):
            raise ValueError(f"max_replicas ({self.max_replicas}) is below min_replicas ({self.min_replicas})")
        return self


class GpuIn(_Strict):
    gpu_type: str = Field(min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _bare_name(cls, data: Any) -> Any:
        return {"gpu_type": data} if isinstance(data, str) else data  # `gpus: [A100-40GB, L4]`

    memory_gb: float | None = Field(default=None, gt=0)
    cost_per_hour: float | None = Field(default=None, ge=0)
    throughput_tokens_per_sec: float | None = Field(default=None, gt=0)
    count: int | None = Field(default=None, ge=0, description="how many are available (default: unbounded)")


class SpecIn(_Strict):
    models: list[ModelIn] = Field(min_length=1)
    gpus: list[GpuIn] | None = None
    gpu: GpuIn | None = None
    overhead_fraction: float = Field(default=0.15, ge=0, lt=1)
    hours_per_month: float = Field(default=730.0, gt=0)

    @model_validator(mode="after")
    def _names(self) -> SpecIn:
        seen: set[str] = set()
        for i, m in enumerate(self.models):
            if m.name in seen:
                raise ValueError(f"models[{i}].name: duplicate model name {m.name!r}")
            seen.add(m.name)
        if self.gpus is not None and self.gpu is not None:
            raise ValueError("gpus: give `gpus` (a list) or `gpu` (one), not both")
        types = [g.gpu_type for g in self.gpu_types()]
        for t in set(types):
            if types.count(t) > 1:
                raise ValueError(f"gpus: GPU type {t!r} listed twice")
        return self

    def gpu_types(self) -> list[GpuIn]:
        if self.gpus is not None:
            return list(self.gpus)
        return [self.gpu] if self.gpu is not None else []


# --- the solver's plain values -----------------------------------------------------------------


@dataclass(frozen=True)
class KvShape:
    layers: int
    kv_heads: int
    head_dim: int
    dtype_bytes: float
    context: int
    concurrency: int

    @property
    def bytes(self) -> int:
        """2 (K and V) × layers × kv_heads × head_dim × dtype_bytes × context × concurrency."""
        return int(2 * self.layers * self.kv_heads * self.head_dim * self.dtype_bytes * self.context * self.concurrency)


@dataclass(frozen=True)
class ArtifactFacts:
    """What an artifact's metadata says about a model's size and shape (fields None when unknown)."""

    weights_bytes: int
    shape: dict[str, int | None]


@dataclass(frozen=True)
class ModelReq:
    """One model as the solvers see it. ``demand_tps``: peak tokens/s the model's replicas must serve."""

    name: str
    weights_bytes: int
    kv_bytes: int
    overhead_bytes: int
    min_replicas: int
    max_replicas: int | None
    demand_tps: float
    isolation: Isolation = "shared"

    @property
    def replica_bytes(self) -> int:
        return self.weights_bytes + self.kv_bytes + self.overhead_bytes


@dataclass(frozen=True)
class GpuType:
    """A GPU type as the solvers see it; ``usable_bytes`` is memory less the reserved overhead fraction."""

    gpu_type: str
    memory_bytes: int
    usable_bytes: int
    cost_per_hour: float
    throughput_tps: float
    count: int | None
    profile: GpuProfile | None  # the catalogue entry (MIG profiles), when the type is in it


@dataclass(frozen=True)
class Problem:
    models: tuple[ModelReq, ...]
    gpus: tuple[GpuType, ...]
    overhead_fraction: float
    hours_per_month: float


def _gpu(g: GpuIn, overhead: float, where: str, problems: list[str]) -> GpuType | None:
    profile = lookup_gpu(g.gpu_type)
    memory_gb = g.memory_gb if g.memory_gb is not None else (profile.memory_gb if profile else None)
    cost = g.cost_per_hour if g.cost_per_hour is not None else (profile.cost_per_hour if profile else None)
    tps = g.throughput_tokens_per_sec if g.throughput_tokens_per_sec is not None else (
        profile.throughput_tokens_per_sec if profile else None)
    if profile is None and None in (memory_gb, cost, tps):
        missing = [n for n, v in (("memory_gb", memory_gb), ("cost_per_hour", cost),
                                  ("throughput_tokens_per_sec", tps)) if v is None]
        problems.append(f"{where}.gpu_type: unknown GPU type {g.gpu_type!r} (catalogue: {', '.join(CATALOGUE)}); "
                        f"give {', '.join(missing)} to use it anyway")
        return None
    assert memory_gb is not None and cost is not None and tps is not None
    mem = int(memory_gb * GB)
    return GpuType(g.gpu_type, mem, int(mem * (1 - overhead)), float(cost), float(tps), g.count,
                   profile if profile is not None and math.isclose(profile.memory_gb, memory_gb) else None)


def to_problem(spec: SpecIn, *, source: str = "<spec>", artifact_facts: Mapping[str, ArtifactFacts] | None = None,
               gpu_override: Sequence[str] = ()) -> Problem:
    """The solvers' values; raises ConfigError naming every problem. ``artifact_facts`` maps an
    ``artifact`` reference to what its metadata says (weights bytes, KV shape fields)."""
    problems: list[str] = []
    gpus_in = [GpuIn(gpu_type=t) for t in gpu_override] if gpu_override else spec.gpu_types()
    if not gpus_in:
        problems.append("gpus: required (a list of GPU types, or `gpu:` with one, or --gpu TYPE)")
    gpus = [g for i, gi in enumerate(gpus_in)
            if (g := _gpu(gi, spec.overhead_fraction, "--gpu" if gpu_override else f"gpus[{i}]", problems)) is not None]
    models: list[ModelReq] = []
    for i, m in enumerate(spec.models):
        weights = int(m.gpu_memory_gb * GB) if m.gpu_memory_gb is not None else None
        shape: dict[str, Any] = m.kv.model_dump() if m.kv is not None else {}
        if m.artifact is not None:
            facts = (artifact_facts or {}).get(m.artifact)
            if facts is None:
                problems.append(f"models[{i}].artifact: {m.artifact!r} is not in the artifact store")
                continue
            weights = weights if weights is not None else facts.weights_bytes
            if m.kv_gb is None:  # the artifact's dimensions, the spec's own values first
                shape = {**{k: v for k, v in facts.shape.items() if v is not None},
                         **{k: v for k, v in shape.items() if v is not None}}
        assert weights is not None
        kv = 0
        if m.kv_gb is not None:
            kv = int(m.kv_gb * GB)
        elif shape:
            need = [k for k in ("layers", "kv_heads", "head_dim", "context") if shape.get(k) is None]
            if need:
                problems.append(f"models[{i}].kv: {', '.join(need)} unknown (not in the spec, nor in {m.artifact}'s metadata)")
                continue
            kv = KvShape(shape["layers"], shape["kv_heads"], shape["head_dim"], shape.get("dtype_bytes", 2),
                         shape["context"], shape.get("concurrency", 1)).bytes
        models.append(ModelReq(m.name, weights, kv, int(m.overhead_gb * GB), m.min_replicas, m.max_replicas,
                               m.peak_requests_per_sec * m.tokens_per_request, m.isolation))
    if problems:
        raise config_error(source, problems)
    return Problem(tuple(models), tuple(gpus), spec.overhead_fraction, spec.hours_per_month)


def parse_spec(data: Any, *, source: str = "<spec>") -> SpecIn:
    try:
        return SpecIn.model_validate(data)
    except ValidationError as exc:
        raise config_error(source, format_validation_error(exc, None)) from None


def load_spec(path: str | Path) -> SpecIn:
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read the spec: {exc.strerror or exc}") from None
    data = parse_yaml(raw, str(p))
    if not isinstance(data, Mapping):
        raise ConfigError(f"{p}: a spec is a mapping with `models:` and `gpus:`")
    return parse_spec(data, source=str(p))
