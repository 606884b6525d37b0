"""Large-neighbourhood search around the exact solver, for instances HiGHS cannot close in time.

When the whole integer programme stops at its time limit (60 models × 4 GPU types is such a case:
tens of thousands of binaries, a weak LP bound from the splittable throughput), the best plan so
far is improved piece by piece: take a few of its GPUs (the least used one and 1-4 others, drawn
by a seeded RNG), free them, and solve *that* sub-problem exactly — the freed models' replicas,
each with the tokens/s those GPUs served and the replicas it still needs there — with at most what
those GPUs cost. A cheaper answer replaces them. Replicas elsewhere stay on their GPUs, so
"replicas of one model on different GPUs" holds across the seam. Deterministic given the seed.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import replace

from .placement import Bin, Placement
from .spec import GpuType, ModelReq, Problem


def _util(b: Bin) -> float:
    return max(b.load_tps / b.throughput_tps if b.throughput_tps else 0.0,
               b.used_bytes / b.capacity_bytes if b.capacity_bytes else 0.0)


def _sub_problem(chosen: list[Bin], rest: list[Bin], models: dict[str, ModelReq], problem: Problem) -> Problem:
    inside: dict[str, tuple[int, float]] = {}
    for b in chosen:
        for i, n in enumerate(b.models):
            k, tps = inside.get(n, (0, 0.0))
            inside[n] = (k + 1, tps + (b.shares[i] if i < len(b.shares) else 0.0))
    outside: dict[str, int] = {}
    for b in rest:
        for n in b.models:
            outside[n] = outside.get(n, 0) + 1
    subs: list[ModelReq] = []
    for n, (_k, tps) in sorted(inside.items()):
        m = models[n]
        out = outside.get(n, 0)
        need = max(m.min_replicas - out, 1 if tps > 1e-9 else 0)
        top = None if m.max_replicas is None else m.max_replicas - out
        if need == 0 and tps <= 1e-9:
            continue  # a replica no longer needed: dropping it is allowed
        subs.append(replace(m, demand_tps=tps, min_replicas=need, max_replicas=top))
    used_out: dict[str, int] = {}
    for b in rest:
        used_out[b.gpu_type] = used_out.get(b.gpu_type, 0) + 1
    gpus: list[GpuType] = [g if g.count is None else replace(g, count=g.count - used_out.get(g.gpu_type, 0))
                           for g in problem.gpus]
    return Problem(tuple(subs), tuple(gpus), problem.overhead_fraction, problem.hours_per_month)


def improve(plan: Placement, problem: Problem, *, deadline: float, clock: Callable[[], float] = time.perf_counter,
            seed: int = 0, solve_exact: Callable[..., Placement] | None = None) -> tuple[Placement, int]:
    """A plan no worse than ``plan`` (and the number of improving moves), by the deadline."""
    if solve_exact is None:
        from .ilp import exact as solve_exact
    price = {g.gpu_type: g.cost_per_hour for g in problem.gpus}
    models = {m.name: m for m in problem.models}
    bins = list(plan.bins)
    rng = random.Random(seed)
    moves = 0
    while clock() < deadline - 0.05 and len(bins) >= 2:
        k = min(len(bins), rng.choice((2, 3, 3, 4, 5)))
        order = sorted(range(len(bins)), key=lambda i: (_util(bins[i]), i))
        first = order[rng.randrange(min(3, len(order)))]  # one of the least used GPUs
        others = rng.sample([i for i in range(len(bins)) if i != first], k - 1)
        pick = {first, *others}
        chosen = [bins[i] for i in sorted(pick)]
        rest = [b for i, b in enumerate(bins) if i not in pick]
        cost_now = sum(price[b.gpu_type] for b in chosen)
        sub = _sub_problem(chosen, rest, models, problem)
        incumbent = Placement("ffd", tuple(chosen), cost_now, optimal=False)
        budget = min(1.5, deadline - clock())
        if budget <= 0.05:
            break
        got = solve_exact(list(sub.models), sub, incumbent, time_limit_s=budget, improve_with_lns=False)
        if got.cost_per_hour < cost_now - 1e-9 or (abs(got.cost_per_hour - cost_now) <= 1e-9 and got.gpu_count < len(chosen)):
            bins = rest + list(got.bins)
            moves += 1
    cost = sum(price[b.gpu_type] for b in bins)
    return replace(plan, bins=tuple(bins), cost_per_hour=cost), moves
