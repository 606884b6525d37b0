"""The exact planner: an integer programme solved by HiGHS (``scipy.optimize.milp``).

For each GPU type ``t`` there are ``U_t`` candidate GPUs ("slots"), ``U_t`` bounded by what the
FFD plan costs (an optimal plan never spends more, so never uses more than ``C_ffd / c_t`` GPUs of
type t) and by ``count``. Per slot ``j``:

- ``y_j`` ∈ {0,1}: the GPU is bought; on MIG-capable types it is either whole (``w_j``) or
  partitioned into exactly one valid layout (``u_jL``): ``y_j = w_j + Σ_L u_jL``;
- ``x_mj`` ∈ {0,1}: a replica of shared/exclusive model m on the whole GPU;
  ``z_mj`` ≥ 0: the tokens/s that replica serves (``z_mj ≤ T_t x_mj``, ``Σ_m z_mj ≤ T_t w_j``);
- ``s_mjp`` ∈ {0,1}: a replica of MIG model m on a slice of profile p of GPU j
  (``Σ_m s_mjp ≤ Σ_L n_Lp u_jL``, one slice per model per GPU).

Constraints: bytes per whole GPU ≤ usable memory; an exclusive replica alone
(``Σ_{m'≠m} x_m'j ≤ K(1 − x_mj)``); per model, served tokens/s ≥ demand, replicas within
[min, max]; slots of a type used in order (symmetry breaking). Objective: GPU cost per hour, then
(by small weights) fewer GPUs, then fewer replicas. The search stops at ``time_limit_s`` with the
best plan found and HiGHS's optimality gap; if it found none, the FFD plan is returned, marked so.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from collections.abc import Callable, Iterator

from .placement import Bin, Placement, Slice, mig_slices, needed_replicas
from .spec import GpuType, ModelReq, Problem


class _Vars:
    """Column bookkeeping: each variable gets an index, a cost, bounds and integrality."""

    def __init__(self) -> None:
        self.cost: list[float] = []
        self.ub: list[float] = []
        self.integer: list[int] = []

    def add(self, cost: float, ub: float, integer: bool) -> int:
        self.cost.append(cost)
        self.ub.append(ub)
        self.integer.append(1 if integer else 0)
        return len(self.cost) - 1


class _Rows:
    def __init__(self) -> None:
        self.r: list[int] = []
        self.c: list[int] = []
        self.v: list[float] = []
        self.lb: list[float] = []
        self.ub: list[float] = []

    def add(self, terms: list[tuple[int, float]], lb: float, ub: float) -> None:
        i = len(self.lb)
        for c, v in terms:
            self.r.append(i)
            self.c.append(c)
            self.v.append(v)
        self.lb.append(lb)
        self.ub.append(ub)


def _slots(models: list[ModelReq], problem: Problem, greedy: Placement) -> dict[str, int]:
    complete = not greedy.note
    total_items = sum(len(b.models) for b in greedy.bins) + len(models)
    out: dict[str, int] = {}
    for g in problem.gpus:
        u = total_items
        if complete and g.cost_per_hour > 0:
            u = min(u, math.floor(greedy.cost_per_hour / g.cost_per_hour + 1e-9))
        if g.count is not None:
            u = min(u, g.count)
        out[g.gpu_type] = max(0, u)
    return out


def exact(models: list[ModelReq], problem: Problem, greedy: Placement, *, time_limit_s: float = 10.0,
          clock: Callable[[], float] = time.perf_counter, improve_with_lns: bool = True) -> Placement:
    """The optimum, or — when HiGHS does not prove it within half the time limit — the best plan
    found, improved by large-neighbourhood search (``lns.py``) for the other half, with its gap."""
    t0 = clock()
    deadline = t0 + time_limit_s
    ilp_limit = time_limit_s / 2 if improve_with_lns else time_limit_s
    if not models:
        return Placement("exact", (), 0.0, optimal=True, gap=0.0)
    import numpy as np
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import coo_matrix

    ov = problem.overhead_fraction
    slots = _slots(models, problem, greedy)
    max_cost = max((g.cost_per_hour for g in problem.gpus), default=1.0) or 1.0
    eps_gpu, eps_rep = 1e-4 * max_cost, 1e-6 * max_cost
    V, R = _Vars(), _Rows()
    whole_models = [m for m in models if m.isolation != "mig"]
    mig_models = [m for m in models if m.isolation == "mig"]
    K = len(models)
    # per model: the columns that serve it (tokens/s coefficient) and that count as its replicas
    serve: dict[str, list[tuple[int, float]]] = {m.name: [] for m in models}
    reps: dict[str, list[tuple[int, float]]] = {m.name: [] for m in models}
    slot_info: list[tuple[GpuType, int, int | None, dict, dict, dict]] = []  # gpu, y, w, x, z, s
    for g in problem.gpus:
        fits_whole = [m for m in whole_models if m.replica_bytes <= g.usable_bytes]
        profiles = [(p, cap, tps) for p, cap, tps in mig_slices(g, ov)]
        fits_mig = {m.name: [(p, cap, tps) for p, cap, tps in profiles if cap >= m.replica_bytes] for m in mig_models}
        fits_mig = {k: v for k, v in fits_mig.items() if v}
        layouts = g.profile.layouts() if (g.profile is not None and fits_mig) else ()
        if not fits_whole and not fits_mig:
            continue
        prev_y: int | None = None
        for _j in range(slots[g.gpu_type]):
            y = V.add(g.cost_per_hour + eps_gpu, 1, True)
            w = V.add(0.0, 1, True) if layouts else y
            if layouts:
                us = [V.add(0.0, 1, True) for _ in layouts]
                R.add([(y, 1.0), (w, -1.0)] + [(u, -1.0) for u in us], 0, 0)
            x: dict[str, int] = {}
            z: dict[str, int] = {}
            for m in fits_whole:
                x[m.name] = V.add(eps_rep, 1, True)
                reps[m.name].append((x[m.name], 1.0))
                if m.demand_tps > 0:
                    big_m = min(g.throughput_tps, m.demand_tps)  # a replica never serves more than its model needs
                    z[m.name] = V.add(0.0, big_m, False)
                    R.add([(z[m.name], 1.0), (x[m.name], -big_m)], -math.inf, 0)
                    serve[m.name].append((z[m.name], 1.0))
                if m.replica_bytes == 0:
                    R.add([(x[m.name], 1.0), (w, -1.0)], -math.inf, 0)
            if x:
                R.add([(x[m.name], float(m.replica_bytes)) for m in fits_whole] + [(w, -float(g.usable_bytes))], -math.inf, 0)
            if z:
                R.add([(c, 1.0) for c in z.values()] + [(w, -g.throughput_tps)], -math.inf, 0)
            for m in fits_whole:
                if m.isolation == "exclusive":
                    R.add([(x[o.name], 1.0) for o in fits_whole if o is not m] + [(x[m.name], float(K))], -math.inf, K)
            s: dict[tuple[str, str], int] = {}
            if layouts:
                for name, options in fits_mig.items():
                    mine = []
                    for p, _cap, tps in options:
                        col = V.add(eps_rep, 1, True)
                        s[(name, p.name)] = col
                        mine.append((col, 1.0))
                        reps[name].append((col, 1.0))
                        serve[name].append((col, tps))
                    R.add(mine, -math.inf, 1)  # replicas of one model on different GPUs
                for p, _cap, _tps in profiles:
                    cols = [(s[(n, p.name)], 1.0) for n in fits_mig if (n, p.name) in s]
                    if cols:
                        R.add(cols + [(u, -float(lay.count(p.name))) for u, lay in zip(us, layouts, strict=True)], -math.inf, 0)
            if prev_y is not None:
                R.add([(prev_y, 1.0), (y, -1.0)], 0, math.inf)
            prev_y = y
            slot_info.append((g, y, w if layouts else None, x, z, s))
    # a valid cut that tightens the LP bound: the GPUs bought serve at least the total demand
    total = sum(m.demand_tps for m in models)
    if total > 0:
        R.add([(y, g.throughput_tps) for g, y, *_ in slot_info], total, math.inf)
    for m in models:
        if m.demand_tps > 0:
            if not serve[m.name]:
                return _fallback(greedy, t0, clock, "no GPU slot can serve " + m.name)
            R.add(serve[m.name], m.demand_tps, math.inf)
        lo = needed_replicas(m, math.inf) if m.demand_tps <= 0 else max(m.min_replicas, 1)
        R.add(reps[m.name], lo, m.max_replicas if m.max_replicas is not None else math.inf)
    n = len(V.cost)
    A = coo_matrix((R.v, (R.r, R.c)), shape=(len(R.lb), n)).tocsr()
    with _native_stdout_to_stderr():
        res = milp(np.array(V.cost), constraints=LinearConstraint(A, np.array(R.lb), np.array(R.ub)),
                   integrality=np.array(V.integer), bounds=Bounds(np.zeros(n), np.array(V.ub)),
                   options={"time_limit": max(0.1, ilp_limit - (clock() - t0)), "mip_rel_gap": 1e-6, "disp": False})
    if res.x is None:
        return _fallback(greedy, t0, clock, f"HiGHS found no plan in {time_limit_s:g} s ({res.message})")
    sol = res.x
    served: dict[str, float] = {}  # a MIG model's tokens/s over all its slices
    for g, _y, _w, _x, _z, s in slot_info:
        tps_of = {p.name: tps for p, _c, tps in mig_slices(g, ov)}
        for (name, p), col in s.items():
            if sol[col] > 0.5:
                served[name] = served.get(name, 0.0) + tps_of[p]
    bins: list[Bin] = []
    for g, y, _w, x, z, s in slot_info:
        if sol[y] < 0.5:
            continue
        names = [name for name, col in x.items() if sol[col] > 0.5]
        used = sum(m.replica_bytes for m in whole_models if m.name in names)
        load = sum(sol[col] for name, col in z.items() if name in names)
        mig_used = [(name, p) for (name, p), col in s.items() if sol[col] > 0.5]
        if mig_used:
            bins.append(_mig_bin(g, mig_used, models, problem, served))
        else:
            names.sort()
            shares = tuple(float(sol[z[n]]) if n in z else 0.0 for n in names)
            bins.append(Bin(g.gpu_type, tuple(names), used, g.usable_bytes, load, g.throughput_tps, shares=shares))
    cost = sum(_price(problem, b.gpu_type) for b in bins)
    optimal = res.status == 0
    if optimal:
        return Placement("exact", tuple(bins), cost, optimal=True, gap=0.0, seconds=clock() - t0)
    # stopped by the time limit: the better of HiGHS's incumbent and the FFD plan, with the gap to
    # HiGHS's lower bound on the optimum
    bound = max(float(getattr(res, "mip_dual_bound", 0.0) or 0.0), _simple_bound(models, problem))
    chosen, source = (tuple(bins), "HiGHS") if cost <= greedy.cost_per_hour + 1e-9 else (greedy.bins, "FFD")
    best = Placement("exact", chosen, min(cost, greedy.cost_per_hour), optimal=False)
    moves = 0
    if improve_with_lns:
        from .lns import improve

        best, moves = improve(best, problem, deadline=deadline, clock=clock, solve_exact=exact)
    gap = max(0.0, (best.cost_per_hour - bound) / best.cost_per_hour) if best.cost_per_hour > 0 else 0.0
    how = f"{source}, then {moves} neighbourhood moves" if improve_with_lns else source
    return Placement("exact", best.bins, best.cost_per_hour, optimal=gap <= 1e-6, gap=gap, seconds=clock() - t0,
                     note=f"time limit {time_limit_s:g} s: best plan found ({how}), within {gap:.1%} of optimal")


def _simple_bound(models: list[ModelReq], problem: Problem) -> float:
    """A lower bound on any plan's cost that needs no search (for when HiGHS stopped before it had
    one): the GPUs bought must serve the total demand and hold every required replica's bytes, at
    best at the cheapest price per token/s and per usable byte."""
    gpus = [g for g in problem.gpus if g.throughput_tps > 0 and g.usable_bytes > 0]
    if not gpus:
        return 0.0
    demand = sum(m.demand_tps for m in models)
    nbytes = sum(max(m.min_replicas, 1 if m.demand_tps > 0 else 0) * m.replica_bytes for m in models)
    return max(demand * min(g.cost_per_hour / g.throughput_tps for g in gpus),
               nbytes * min(g.cost_per_hour / g.usable_bytes for g in gpus))


@contextlib.contextmanager
def _native_stdout_to_stderr() -> Iterator[None]:
    """HiGHS's C++ core prints some diagnostics to file descriptor 1 even with ``disp: False``;
    ``modelyard plan --json`` owns stdout, so fd 1 points at stderr while the solver runs."""
    try:
        sys.stdout.flush()
        saved = os.dup(1)
    except (OSError, ValueError):  # no real stdout (captured, closed): nothing to protect
        yield
        return
    try:
        os.dup2(2, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def _price(problem: Problem, gpu_type: str) -> float:
    return next(g.cost_per_hour for g in problem.gpus if g.gpu_type == gpu_type)


def _mig_bin(g: GpuType, used: list[tuple[str, str]], models: list[ModelReq], problem: Problem,
             served: dict[str, float]) -> Bin:
    """A partitioned GPU: recover the layout that holds the chosen slices (the smallest one that does);
    each MIG model's demand is split over its slices in proportion to their tokens/s (``served``: its total)."""
    assert g.profile is not None
    need: dict[str, int] = {}
    for _, p in used:
        need[p] = need.get(p, 0) + 1
    layout = min((lay for lay in g.profile.layouts() if all(lay.count(p) >= k for p, k in need.items())),
                 key=lambda lay: (len(lay), lay))
    info = {p.name: (cap, tps) for p, cap, tps in mig_slices(g, problem.overhead_fraction)}
    free = list(layout)
    slices: list[Slice] = []
    by_name = {m.name: m for m in models}
    for name, p in sorted(used):
        free.remove(p)
        slices.append(Slice(p, info[p][0], name))
    slices += [Slice(p, info[p][0], None) for p in free]
    share = {n: by_name[n].demand_tps * info[p][1] / served[n] if served.get(n) else 0.0 for n, p in used}
    names = sorted(n for n, _ in used)
    return Bin(g.gpu_type, tuple(names), sum(by_name[n].replica_bytes for n in names), g.memory_bytes,
               sum(share.values()), g.throughput_tps, layout, tuple(slices), shares=tuple(share[n] for n in names))


def _fallback(greedy: Placement, t0: float, clock: Callable[[], float], why: str) -> Placement:
    return Placement("exact", greedy.bins, greedy.cost_per_hour, optimal=False, gap=None, seconds=clock() - t0,
                     note=f"{why}; the FFD plan stands in")
