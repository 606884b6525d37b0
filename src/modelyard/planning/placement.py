"""What a plan is made of: GPUs (``Bin``), MIG slices, a solver's ``Placement``, and the two facts
both solvers share (a type's MIG slices, the replicas a model needs). Values only."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .catalogue import COMPUTE_SLICES, MigProfile
from .spec import GB, GpuType, ModelReq


@dataclass(frozen=True)
class Slice:
    profile: str
    usable_bytes: int
    model: str | None


@dataclass(frozen=True)
class Bin:
    """One GPU of the plan. ``models`` names a model once per replica it holds (at most once here)."""

    gpu_type: str
    models: tuple[str, ...]
    used_bytes: int
    capacity_bytes: int
    load_tps: float = 0.0  # tokens/s the plan sends to this GPU at peak
    throughput_tps: float = 0.0
    mig_layout: tuple[str, ...] | None = None
    slices: tuple[Slice, ...] = ()
    overflow: bool = False  # only the scenario's FFD produces these: more bytes than capacity
    shares: tuple[float, ...] = ()  # tokens/s each of ``models`` is sent here at peak (same order)

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"gpu_type": self.gpu_type, "models": list(self.models), "used_bytes": self.used_bytes,
                             "capacity_bytes": self.capacity_bytes, "load_tokens_per_sec": round(self.load_tps, 1),
                             "throughput_tokens_per_sec": self.throughput_tps}
        if self.mig_layout is not None:
            d["mig_layout"] = list(self.mig_layout)
            d["slices"] = [{"profile": s.profile, "usable_bytes": s.usable_bytes, "model": s.model} for s in self.slices]
        if self.overflow:
            d["overflow"] = True
        return d


@dataclass(frozen=True)
class Unplaceable:
    name: str
    reason: str


@dataclass(frozen=True)
class Placement:
    """A solver's answer: GPUs and their cost."""

    solver: str
    bins: tuple[Bin, ...]
    cost_per_hour: float
    optimal: bool
    gap: float | None = None  # relative optimality gap when the time limit ended the search
    seconds: float = 0.0
    note: str = ""

    @property
    def gpu_count(self) -> int:
        return len(self.bins)



def mig_slices(g: GpuType, overhead: float) -> list[tuple[MigProfile, int, float]]:
    """(profile, usable bytes, tokens/s) of each MIG profile of ``g`` (none without MIG)."""
    if g.profile is None:
        return []
    return [(p, int(p.usable_gb * GB * (1 - overhead)), g.throughput_tps * p.compute / COMPUTE_SLICES)
            for p in g.profile.mig]


def needed_replicas(m: ModelReq, tps: float) -> int:
    """Replicas a model needs where each serves at most ``tps`` tokens/s."""
    need = math.ceil(m.demand_tps / tps - 1e-9) if m.demand_tps > 0 else 0
    return max(m.min_replicas, need, 1 if m.demand_tps > 0 else 0)
