"""First-fit-decreasing, corrected: the scenario's greedy heuristic with the constraints it ignored.

Each model goes to its cheapest GPU type that can hold a replica (by price per hour, then memory);
it gets as many replicas as that type's tokens/s require (at least ``min_replicas``), and the
replicas, largest first, go to the first GPU with room for their bytes *and* their share of the
traffic and no replica of the same model. ``exclusive`` replicas open a GPU of their own; ``mig``
replicas take the smallest MIG slice that holds them and serves their share, on GPUs partitioned
into the layout with the most slices of that profile. Fast and usually good; never better than the
exact plan, which is why both are reported.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from .placement import Bin, Placement, Slice, mig_slices, needed_replicas
from .spec import GpuType, ModelReq, Problem


@dataclass
class _Open:
    gpu: GpuType
    names: list[str] = field(default_factory=list)
    shares: list[float] = field(default_factory=list)
    used: int = 0
    load: float = 0.0
    exclusive: bool = False
    layout: tuple[str, ...] | None = None
    slices: list[list] = field(default_factory=list)  # [profile name, usable bytes, tps, model | None]

    def freeze(self) -> Bin:
        if self.layout is not None:
            return Bin(self.gpu.gpu_type, tuple(self.names), self.used, self.gpu.memory_bytes, self.load,
                       self.gpu.throughput_tps, self.layout, tuple(Slice(p, cap, m) for p, cap, _, m in self.slices),
                       shares=tuple(self.shares))
        return Bin(self.gpu.gpu_type, tuple(self.names), self.used, self.gpu.usable_bytes, self.load, self.gpu.throughput_tps,
                   shares=tuple(self.shares))


def _fits_whole(m: ModelReq, g: GpuType) -> bool:
    return m.isolation != "mig" and m.replica_bytes <= g.usable_bytes


def _mig_choice(m: ModelReq, g: GpuType, overhead: float) -> tuple[str, int, float, int] | None:
    """(profile, usable bytes, tps, replicas) of the smallest slice that holds ``m`` within max_replicas."""
    for p, cap, tps in sorted(mig_slices(g, overhead), key=lambda s: (s[1], s[2])):
        r = needed_replicas(m, tps)
        if cap >= m.replica_bytes and (m.max_replicas is None or r <= m.max_replicas):
            return p.name, cap, tps, r
    return None


def ffd(models: list[ModelReq], problem: Problem) -> Placement:
    """The cheapest of one FFD pass per preferred GPU type (each model on the preferred type where it
    fits, else on the cheapest type that holds it) and one by price per token/s."""
    t0 = time.perf_counter()
    by_price = sorted(problem.gpus, key=lambda g: (g.cost_per_hour, g.memory_bytes))
    orders = [by_price, sorted(problem.gpus, key=lambda g: (g.cost_per_hour / g.throughput_tps, g.cost_per_hour))]
    orders += [[g] + [o for o in by_price if o is not g] for g in problem.gpus]
    tries = [_ffd_pass(models, problem, order) for order in orders]
    best = min(tries, key=lambda p: (bool(p.note), p.cost_per_hour, p.gpu_count))
    return Placement("ffd", best.bins, best.cost_per_hour, optimal=False, seconds=time.perf_counter() - t0, note=best.note)


def _ffd_pass(models: list[ModelReq], problem: Problem, by_price: list[GpuType]) -> Placement:
    t0 = time.perf_counter()
    items: list[tuple[ModelReq, GpuType, float, tuple[str, int, float, int] | None]] = []
    failed: list[str] = []
    for m in models:
        for g in by_price:
            if m.isolation == "mig":
                choice = _mig_choice(m, g, problem.overhead_fraction)
                if choice is not None:
                    items += [(m, g, m.demand_tps / choice[3], choice)] * choice[3]
                    break
            elif _fits_whole(m, g):
                r = needed_replicas(m, g.throughput_tps)
                if m.max_replicas is None or r <= m.max_replicas:
                    items += [(m, g, m.demand_tps / r if r else 0.0, None)] * r
                    break
        else:
            failed.append(m.name)
    items.sort(key=lambda it: (-it[0].replica_bytes, it[0].name))
    bins: list[_Open] = []
    used_of: dict[str, int] = {}

    def can_open(g: GpuType) -> bool:
        return g.count is None or used_of.get(g.gpu_type, 0) < g.count

    def open_bin(g: GpuType, **kw) -> _Open:
        used_of[g.gpu_type] = used_of.get(g.gpu_type, 0) + 1
        b = _Open(g, **kw)
        bins.append(b)
        return b

    for m, g, load, mig in items:
        if mig is not None:
            if not _place_mig(m, g, load, mig, bins, can_open, open_bin, problem):
                failed.append(m.name)
            continue
        target = None
        if m.isolation != "exclusive":
            for b in bins:
                if (b.gpu is g and b.layout is None and not b.exclusive and m.name not in b.names
                        and b.used + m.replica_bytes <= g.usable_bytes and b.load + load <= g.throughput_tps + 1e-6):
                    target = b
                    break
        if target is None:
            if not can_open(g):
                failed.append(m.name)
                continue
            target = open_bin(g, exclusive=m.isolation == "exclusive")
        target.names.append(m.name)
        target.shares.append(load)
        target.used += m.replica_bytes
        target.load += load
    frozen = tuple(b.freeze() for b in bins)
    note = f"could not place (GPU count limits): {', '.join(sorted(set(failed)))}" if failed else ""
    return Placement("ffd", frozen, sum(b.gpu.cost_per_hour for b in bins), optimal=False,
                     seconds=time.perf_counter() - t0, note=note)


def _place_mig(m: ModelReq, g: GpuType, load: float, mig: tuple[str, int, float, int], bins: list[_Open],
               can_open, open_bin, problem: Problem) -> bool:  # noqa: ANN001 - the two closures of ffd
    profile, cap, _tps, _r = mig
    for b in bins:
        if b.gpu is g and b.layout is not None and m.name not in b.names:
            for s in b.slices:
                if s[3] is None and s[1] >= m.replica_bytes and s[2] >= load - 1e-6:
                    s[3] = m.name
                    b.names.append(m.name)
                    b.shares.append(load)
                    b.used += m.replica_bytes
                    b.load += load
                    return True
    if not can_open(g):
        return False
    assert g.profile is not None
    layout = max(g.profile.layouts(), key=lambda lay: (lay.count(profile), len(lay)))
    info = {p.name: (c, t) for p, c, t in mig_slices(g, problem.overhead_fraction)}
    b = open_bin(g, layout=layout, slices=[[p, info[p][0], info[p][1], None] for p in layout])
    for s in b.slices:
        if s[0] == profile:
            s[3] = m.name
            break
    b.names.append(m.name)
    b.shares.append(load)
    b.used += m.replica_bytes
    b.load += load
    return True
