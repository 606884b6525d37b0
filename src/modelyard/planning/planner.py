"""Packing models onto GPUs: the scenario's greedy first-fit-decreasing, a corrected FFD, and an
exact integer programme (HiGHS), side by side. Pure: a ``Problem`` in, a ``PlanResult`` out.

What a placement must satisfy (both solvers):

- **memory**: on a whole GPU, the replicas' bytes (weights + KV + per-replica overhead) fit the
  GPU's usable memory (memory × (1 − overhead_fraction)); a MIG slice holds one replica that fits
  the slice's usable memory (see ``catalogue``) × (1 − overhead_fraction);
- **throughput**: a model's peak tokens/s (peak req/s × tokens/request) is served by its replicas;
  co-located models share a whole GPU's tokens/s; a MIG slice gives its model ``g/7`` of them;
- **replicas**: at least ``min_replicas`` (and one if the model has traffic), at most
  ``max_replicas``, replicas of one model on different GPUs;
- **isolation**: ``exclusive`` models are alone on a GPU; ``mig`` models on a MIG slice of their
  own, the GPU partitioned into a valid MIG layout; ``shared`` models share whole GPUs.

Models that cannot be placed on any GPU type (too large, or their traffic beyond ``max_replicas``)
are listed in ``unplaceable`` with the reason and the rest is planned without them: the scenario's
FFD silently opens a 44 GB bin on a 34 GB-usable GPU; here that is a finding, not a bin.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .ffd import ffd
from .ilp import exact
from .placement import Bin, Placement, Unplaceable, mig_slices, needed_replicas
from .spec import GB, GpuType, ModelReq, Problem


@dataclass(frozen=True)
class PlanResult:
    problem: Problem
    exact: Placement
    ffd: Placement
    scenario_ffd: Placement  # the scenario's own bin_pack_models: weights only, one bin per model
    unplaceable: tuple[Unplaceable, ...]
    replicas: dict[str, int] = field(default_factory=dict)

    @property
    def gpu_count(self) -> int:
        return self.exact.gpu_count

    @property
    def cost_per_hour(self) -> float:
        return self.exact.cost_per_hour

    @property
    def cost_per_month(self) -> float:
        return self.exact.cost_per_hour * self.problem.hours_per_month

    @property
    def bins(self) -> tuple[Bin, ...]:
        return self.exact.bins

    @property
    def ffd_gpu_count(self) -> int:
        return self.ffd.gpu_count

    @property
    def ffd_cost_per_hour(self) -> float:
        return self.ffd.cost_per_hour

    def as_dict(self) -> dict[str, Any]:
        hpm = self.problem.hours_per_month

        def solver(p: Placement) -> dict[str, Any]:
            return {"gpu_count": p.gpu_count, "cost_per_hour": round(p.cost_per_hour, 4),
                    "cost_per_month": round(p.cost_per_hour * hpm, 2), "optimal": p.optimal,
                    "gap": p.gap, "seconds": round(p.seconds, 3), "note": p.note,
                    "bins": [b.as_dict() for b in p.bins]}

        return {
            "gpu_count": self.gpu_count,
            "cost_per_hour": round(self.cost_per_hour, 4),
            "cost_per_month": round(self.cost_per_month, 2),
            "hours_per_month": hpm,
            "optimal": self.exact.optimal,
            "gap": self.exact.gap,
            "ffd_gpu_count": self.ffd_gpu_count,
            "ffd_cost_per_hour": round(self.ffd_cost_per_hour, 4),
            "ffd_cost_per_month": round(self.ffd_cost_per_hour * hpm, 2),
            "scenario_ffd_gpu_count": self.scenario_ffd.gpu_count,
            "scenario_ffd_overflowing_bins": sum(b.overflow for b in self.scenario_ffd.bins),
            "overhead_fraction": self.problem.overhead_fraction,
            "bins": [b.as_dict() for b in self.bins],
            "unplaceable": [{"name": u.name, "reason": u.reason} for u in self.unplaceable],
            "models": [{"name": m.name, "weights_bytes": m.weights_bytes, "kv_bytes": m.kv_bytes,
                        "overhead_bytes": m.overhead_bytes, "replica_bytes": m.replica_bytes,
                        "demand_tokens_per_sec": m.demand_tps, "isolation": m.isolation,
                        "replicas": self.replicas.get(m.name, 0)} for m in self.problem.models],
            "solvers": {"exact": solver(self.exact), "ffd": solver(self.ffd), "scenario_ffd": solver(self.scenario_ffd)},
        }


# --- what fits where -------------------------------------------------------------------------


def why_unplaceable(m: ModelReq, problem: Problem) -> str | None:
    """None when some GPU type can hold the model's replicas and serve its traffic; else the reason."""
    reasons: list[str] = []
    for g in problem.gpus:
        if m.isolation == "mig":
            slices = [(p, cap, tps) for p, cap, tps in mig_slices(g, problem.overhead_fraction) if cap >= m.replica_bytes]
            if g.profile is None or not g.profile.mig:
                reasons.append(f"{g.gpu_type} has no MIG")
                continue
            if not slices:
                big = max(mig_slices(g, problem.overhead_fraction), key=lambda s: s[1])
                reasons.append(f"{_gb(m.replica_bytes)} needed, {g.gpu_type}'s largest MIG slice {big[0].name} "
                               f"holds {_gb(big[1])}")
                continue
            cap_tps = max(t for _, _, t in slices)
        else:
            if m.replica_bytes > g.usable_bytes:
                reasons.append(f"{_gb(m.replica_bytes)} needed ({_gb(m.weights_bytes)} weights + {_gb(m.kv_bytes)} KV"
                               f"{' + ' + _gb(m.overhead_bytes) + ' overhead' if m.overhead_bytes else ''}), "
                               f"{g.gpu_type} has {_gb(g.usable_bytes)} usable "
                               f"({_gb(g.memory_bytes)} less {problem.overhead_fraction:.0%} reserved)")
                continue
            cap_tps = g.throughput_tps
        if m.max_replicas is not None and needed_replicas(m, cap_tps) > m.max_replicas:
            reasons.append(f"{m.demand_tps:,.0f} tokens/s at peak needs {needed_replicas(m, cap_tps)} replicas on "
                           f"{g.gpu_type}, max_replicas is {m.max_replicas}")
            continue
        if g.count is not None and g.count < needed_replicas(m, cap_tps) and not _other_type_fits(m, problem, g):
            reasons.append(f"needs {needed_replicas(m, cap_tps)} GPUs of {g.gpu_type}, {g.count} available")
            continue
        return None
    return "; ".join(reasons) if reasons else "no GPU type given"


def _other_type_fits(m: ModelReq, problem: Problem, g: GpuType) -> bool:
    return any(o is not g and m.replica_bytes <= o.usable_bytes for o in problem.gpus)


def _gb(n: float) -> str:
    return f"{n / GB:.1f} GB"


# --- the scenario's FFD, verbatim in spirit ----------------------------------------------------


def scenario_ffd(problem: Problem) -> Placement:
    """The scenario's ``bin_pack_models``: weights only, one item per model (min_replicas, KV and
    throughput ignored), first-fit-decreasing into the first GPU type's usable memory, and a model
    larger than a bin gets a bin of its own anyway (marked ``overflow``)."""
    g = problem.gpus[0]
    bins: list[list[ModelReq]] = []
    for m in sorted(problem.models, key=lambda m: -m.weights_bytes):
        for b in bins:
            if sum(x.weights_bytes for x in b) + m.weights_bytes <= g.usable_bytes:
                b.append(m)
                break
        else:
            bins.append([m])
    out = tuple(Bin(g.gpu_type, tuple(x.name for x in b), sum(x.weights_bytes for x in b), g.usable_bytes,
                    throughput_tps=g.throughput_tps, overflow=sum(x.weights_bytes for x in b) > g.usable_bytes)
                for b in bins)
    return Placement("scenario_ffd", out, len(out) * g.cost_per_hour, optimal=False,
                     note="weights only, one replica each, oversize models get an overflowing bin")


def solve(problem: Problem, *, time_limit_s: float = 10.0, clock: Callable[[], float] = time.perf_counter) -> PlanResult:
    """Plan ``problem`` with both solvers; the exact one stops at ``time_limit_s`` with its best plan
    and gap. Models that fit nowhere are left out and listed."""
    unplaceable: list[Unplaceable] = []
    placeable: list[ModelReq] = []
    for m in problem.models:
        reason = why_unplaceable(m, problem)
        if reason is None:
            placeable.append(m)
        else:
            unplaceable.append(Unplaceable(m.name, reason))
    todo = [m for m in placeable if needed_replicas(m, 1.0) > 0]  # min_replicas 0 and no traffic: nothing to place
    t0 = clock()
    greedy = ffd(todo, problem)
    best = exact(todo, problem, greedy, time_limit_s=max(0.1, time_limit_s - (clock() - t0) - 0.05), clock=clock)
    replicas = {m.name: 0 for m in problem.models}
    for b in best.bins:
        for name in b.models:
            replicas[name] += 1
    return PlanResult(problem, best, greedy, scenario_ffd(problem), tuple(unplaceable), replicas)
