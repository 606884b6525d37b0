"""A discrete-event simulation of many models on N GPUs (issue 12 §3): the engine.

Pure and deterministic: it takes a trace (columns of arrival times, model indices and token
counts), the models, one GPU type and a policy setup, and returns figures. It reads no clock (time
is the trace's simulated seconds), draws no random numbers and performs no I/O.

**Event model.** Arrivals come in time order from the trace; timer events (the keep-alive and
pre-warm tick of ``tiered-prewarm``) sit in a heap and are merged in: before each arrival every
timer due at or before it runs. Completions need no events: under the service model below a
request's start and end are known when it is queued.

**Service model: one FIFO server per GPU.** A GPU serves its requests one after the other at its
*batched* throughput: a request occupies it for ``fixed_s + (prompt + completion) / tokens_per_s``
(the aggregate rate a batching engine reaches, so queueing reflects how full the GPU is), starting
when the GPU is free. A load (swap) occupies the GPU's queue too: ``bytes / bandwidth`` (host→GPU
from the GPU's host RAM, disk→GPU otherwise) or the model's measured ``load_s``. Then::

    TTFT    = queueing (incl. loads ahead in the queue) + own load wait + fixed_s + prompt / prefill_tps
    latency = queueing + own load wait + service time

Because a GPU serves in order, every request queued before a load has finished when the load
starts, so no model is ever evicted under a request; ``in_flight`` is therefore 0 in the snapshots
given to the memory manager's policy, and pinning is what keeps a model in place.

**Tiered policies** use ``memory.policy.plan`` / ``plan_demote`` — the memory manager's own pure
policy code — for every eviction: each GPU is an active tier (its usable memory) with a host tier
(``host_bytes`` of CPU RAM per GPU); ``last_used`` is the simulated time of the model's last request
on that GPU.
"""

from __future__ import annotations

import heapq
import math
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from modelyard.memory.policy import Budgets, Plan, Resident, Tier, plan, plan_demote

POLICIES = ("dedicated", "packed", "tiered", "tiered-prewarm")


@dataclass(frozen=True)
class SimModel:
    name: str
    active_bytes: int  # what one replica costs on a GPU
    host_bytes: int  # what it costs parked in host RAM
    min_replicas: int = 1
    fixed_s: float = 0.0  # per-request time on the GPU beyond tokens (measured per model in validation)
    tokens_per_s: float | None = None  # None: the GPU's throughput
    prefill_tps: float | None = None  # None: the GPU's prefill rate
    load_s: float | None = None  # disk→GPU time measured for this model; None: bytes / disk bandwidth
    can_host: bool = True
    pinned: bool = False


@dataclass(frozen=True)
class SimGpu:
    gpu_type: str
    usable_bytes: int  # memory less the reserved overhead: the active tier's budget
    host_bytes: int  # host RAM per GPU for parked models: the host tier's budget
    throughput_tps: float
    prefill_tps: float
    cost_per_hour: float
    host_to_gpu_bps: float  # bytes/s
    disk_to_gpu_bps: float


@dataclass(frozen=True)
class Trace:
    """Columnar arrivals, sorted by ``ts`` (seconds from the trace's start)."""

    models: tuple[str, ...]  # index → name
    ts: array  # 'd'
    model: array  # 'i', indices into models
    prompt: array  # 'i'
    completion: array  # 'i'

    def __len__(self) -> int:
        return len(self.ts)

    @property
    def duration_s(self) -> float:
        return self.ts[-1] if len(self.ts) else 0.0


@dataclass(frozen=True)
class SimConfig:
    slo_ttft_s: float = 0.5
    bucket_s: float = 900.0  # the "GPUs over the day" series
    hours_per_month: float = 730.0
    keep_alive_s: float = 600.0  # tiered-prewarm: idle models go to host after this (the default config's)
    tick_s: float = 60.0  # tiered-prewarm: how often keep-alive and pre-warm run
    prewarm_top: int = 0  # tiered-prewarm: models kept loaded by recent volume (0: as many as fit)
    replicate_backlog_s: float = 1.0  # tiered: load another copy when the best GPU is this far behind,
    replicate_idle_s: float = 60.0  # evicting only models idle this long for it
    duration_s: float | None = None  # defaults to the trace's last arrival


@dataclass(frozen=True)
class PolicySetup:
    """What a policy starts from. ``placement``: static models per GPU (dedicated, packed), or
    None (tiered: the memory manager decides). ``initial``: models active per GPU at t=0 (tiered)."""

    name: str
    gpus: int
    placement: tuple[tuple[str, ...], ...] | None = None
    initial: tuple[tuple[str, ...], ...] = ()
    unplaceable: tuple[str, ...] = ()
    prewarm: bool = False
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class SimResult:
    policy: str
    gpu_type: str
    gpus: int
    duration_s: float
    gpu_hours: float
    cost_per_month: float
    requests: int
    unserved: int  # unplaceable models or no room anywhere: counted as SLO misses
    ttft_p50_s: float
    ttft_p99_s: float
    latency_p50_s: float
    latency_p99_s: float
    slo_attainment: float  # fraction of all requests with TTFT within the SLO
    swaps: int  # loads onto a GPU (request-path and pre-warm)
    request_loads: int  # requests that waited for their own model's load
    evictions: int  # demotions from a GPU's active tier
    utilisation: float  # busy GPU-seconds / provisioned GPU-seconds
    busy_gpus: tuple[float, ...]  # per bucket: GPU-equivalents of work (busy seconds / bucket seconds)
    bucket_s: float
    per_model: dict[str, dict[str, float]] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, object]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["busy_gpus"] = [round(x, 4) for x in self.busy_gpus]
        d["notes"] = list(self.notes)
        return d


class _Slot:
    """One model's residency on one GPU (mutable simulation state; the run owns it)."""

    __slots__ = ("last_used", "model", "tier")

    def __init__(self, model: int, tier: Tier, last_used: float) -> None:
        self.model, self.tier, self.last_used = model, tier, last_used


class _Run:
    """The state of one simulation run: GPUs' queues and residency, counters, outputs."""

    def __init__(self, trace: Trace, models: Sequence[SimModel], gpu: SimGpu, setup: PolicySetup, cfg: SimConfig) -> None:
        by_name = {m.name: m for m in models}
        missing = [n for n in trace.models if n not in by_name]
        if missing:
            raise ValueError(f"trace models without a SimModel: {', '.join(missing)}")
        self.trace, self.gpu, self.setup, self.cfg = trace, gpu, setup, cfg
        self.models = [by_name[n] for n in trace.models]
        self.index = {n: i for i, n in enumerate(trace.models)}
        self.duration = cfg.duration_s if cfg.duration_s is not None else trace.duration_s
        self.free = [0.0] * setup.gpus
        self.busy = [0.0] * (int(self.duration // cfg.bucket_s) + 1)
        self.busy_total = 0.0
        self.swaps = self.request_loads = self.evictions = 0
        self.budgets = Budgets(gpu.usable_bytes, gpu.host_bytes)
        self.slots: list[dict[int, _Slot]] = [{} for _ in range(setup.gpus)]
        self.active_on: list[list[int]] = [[] for _ in self.models]  # model → GPUs where it is active
        self.inv_tps = [1.0 / (m.tokens_per_s or gpu.throughput_tps) for m in self.models]
        self.inv_prefill = [1.0 / (m.prefill_tps or gpu.prefill_tps) for m in self.models]
        self.fixed = [m.fixed_s for m in self.models]

    # --- effects on the simulated state -------------------------------------------------------

    def occupy(self, g: int, t: float, seconds: float) -> float:
        """Queue ``seconds`` of work on GPU ``g`` at ``t``; returns when it starts."""
        start = self.free[g] if self.free[g] > t else t
        self.free[g] = start + seconds
        self.busy_total += seconds
        b = int(start // self.cfg.bucket_s)
        if b < len(self.busy):
            self.busy[b] += seconds
        return start

    def load_seconds(self, g: int, mi: int) -> float:
        m = self.models[mi]
        slot = self.slots[g].get(mi)
        if slot is not None and slot.tier is Tier.host:
            return m.active_bytes / self.gpu.host_to_gpu_bps
        return m.load_s if m.load_s is not None else m.active_bytes / self.gpu.disk_to_gpu_bps

    def active_used(self, g: int) -> int:
        return sum(self.models[s.model].active_bytes for s in self.slots[g].values() if s.tier is Tier.active)

    def residents(self, g: int) -> list[Resident]:
        return [Resident(self.models[s.model].name, s.tier, self.models[s.model].active_bytes,
                         self.models[s.model].host_bytes, s.last_used, 0, self.models[s.model].pinned,
                         self.models[s.model].can_host)
                for s in self.slots[g].values() if s.tier is not Tier.disk]

    def apply(self, g: int, p: Plan) -> None:
        """Carry out a policy plan's demotions on GPU ``g`` (demotions take no GPU time: the host
        copy is kept, bench/results/gpu_swap-h100-2026-11-27.txt 'active→host (kept host copy)' 3.6 ms)."""
        for d in p.demotions:
            mi = self.index[d.name]
            slot = self.slots[g][mi]
            if d.src is Tier.active:
                self.active_on[mi].remove(g)
                self.evictions += 1
            if d.dst is Tier.disk:
                del self.slots[g][mi]
            else:
                slot.tier = d.dst

    def make_active(self, g: int, mi: int, t: float) -> None:
        slot = self.slots[g].get(mi)
        if slot is None:
            self.slots[g][mi] = _Slot(mi, Tier.active, t)
        else:
            slot.tier, slot.last_used = Tier.active, t
        self.active_on[mi].append(g)

    def try_load(self, mi: int, t: float, candidates: Sequence[int], may_evict_used_after: float | None = None) -> int | None:
        """Load model ``mi`` on the candidate GPU where it would be ready first, as the memory
        policy allows; returns the GPU (its queue holds the load) or None when no plan is feasible."""
        m = self.models[mi]
        best: tuple[tuple[bool, float, int], int, Plan] | None = None
        for g in candidates:
            p = plan(m.name, m.active_bytes, self.residents(g), self.budgets)
            if not p.feasible:
                continue
            if may_evict_used_after is not None and any(
                    d.src is Tier.active and self.slots[g][self.index[d.name]].last_used > may_evict_used_after
                    for d in p.demotions):
                continue
            # no eviction first, then ready soonest, then the emptiest GPU (spreads cold loads)
            key = (bool(p.demotions), max(self.free[g], t) + self.load_seconds(g, mi), self.active_used(g))
            if best is None or key < best[0]:
                best = (key, g, p)
        if best is None:
            return None
        _, g, p = best
        seconds = self.load_seconds(g, mi)
        self.apply(g, p)
        self.make_active(g, mi, t)
        self.occupy(g, t, seconds)
        self.swaps += 1
        return g


def _pick(free: list[float], gpus: list[int]) -> int:
    g = gpus[0]
    for h in gpus[1:]:
        if free[h] < free[g]:
            g = h
    return g


def simulate(trace: Trace, models: Sequence[SimModel], gpu: SimGpu, setup: PolicySetup,
             cfg: SimConfig | None = None) -> SimResult:
    """Run one policy over the trace."""
    cfg = cfg or SimConfig()
    run = _Run(trace, models, gpu, setup, cfg)
    n = len(trace)
    ttft = np.full(n, math.inf)
    latency = np.full(n, math.inf)
    ts, mod, prompt, completion = trace.ts, trace.model, trace.prompt, trace.completion
    free, fixed, inv_tps, inv_prefill = run.free, run.fixed, run.inv_tps, run.inv_prefill
    tiered = setup.placement is None
    if not tiered:
        assert setup.placement is not None
        for g, names in enumerate(setup.placement):
            for name in names:
                if name in run.index:
                    run.make_active(g, run.index[name], 0.0)
    else:
        for g, names in enumerate(setup.initial):
            for name in names:
                run.make_active(g, run.index[name], 0.0)
    active_on = run.active_on
    all_gpus = list(range(setup.gpus))
    heap: list[tuple[float, int]] = []
    recent = [0] * len(run.models)  # arrivals per model since the last tick
    rate = [0.0] * len(run.models)  # EWMA of arrivals per tick
    if setup.prewarm:
        heapq.heappush(heap, (cfg.tick_s, 0))
    next_timer = heap[0][0] if heap else math.inf
    bucket_s, busy, nb = cfg.bucket_s, run.busy, len(run.busy)
    busy_total = 0.0
    backlog = cfg.replicate_backlog_s
    for i in range(n):
        t = ts[i]
        while t >= next_timer:
            now, _ = heapq.heappop(heap)
            _tick(run, now, recent, rate)
            heapq.heappush(heap, (now + cfg.tick_s, 0))
            next_timer = heap[0][0]
        mi = mod[i]
        recent[mi] += 1
        gs = active_on[mi]
        loaded = False
        if gs:
            g = gs[0] if len(gs) == 1 else _pick(free, gs)
            if tiered and free[g] - t > backlog:
                others = [h for h in all_gpus if h not in gs]
                h = run.try_load(mi, t, others, may_evict_used_after=t - cfg.replicate_idle_s) if others else None
                if h is not None and free[h] < free[g]:
                    g, loaded = h, True
        elif tiered:
            got = run.try_load(mi, t, all_gpus)
            if got is None:
                continue  # no room anywhere (pinned models): unserved
            g, loaded = got, True
        else:
            continue  # unplaceable under a static placement: unserved
        if loaded:
            run.request_loads += 1
        p = prompt[i]
        svc = fixed[mi] + (p + completion[i]) * inv_tps[mi]
        f = free[g]
        start = f if f > t else t
        free[g] = start + svc
        busy_total += svc
        b = int(start // bucket_s)
        if b < nb:
            busy[b] += svc
        wait = start - t
        ttft[i] = wait + fixed[mi] + p * inv_prefill[mi]
        latency[i] = wait + svc
        if tiered:
            run.slots[g][mi].last_used = t
    run.busy_total += busy_total
    return _result(run, ttft, latency)


def _tick(run: _Run, now: float, recent: list[int], rate: list[float]) -> None:
    """tiered-prewarm's timer: keep-alive (idle models to host, via ``plan_demote``), then pre-warm
    (models with recent traffic that are loaded nowhere are loaded where the policy can make room
    without evicting anything used within the last tick)."""
    cfg = run.cfg
    for k in range(len(rate)):
        rate[k] = 0.5 * rate[k] + 0.5 * recent[k]
        recent[k] = 0
    for g, slots in enumerate(run.slots):
        idle = [s for s in slots.values() if s.tier is Tier.active and now - s.last_used > cfg.keep_alive_s
                and run.free[g] <= now]
        for s in sorted(idle, key=lambda s: s.last_used):
            p = plan_demote(run.models[s.model].name, run.residents(g), run.budgets)
            if p.feasible:
                run.apply(g, p)
    order = sorted((k for k in range(len(rate)) if rate[k] > 0 and not run.active_on[k]), key=lambda k: -rate[k])
    if cfg.prewarm_top:
        order = order[:cfg.prewarm_top]
    for k in order:
        run.try_load(k, now, range(len(run.slots)), may_evict_used_after=now - cfg.tick_s)


def _pct(x: np.ndarray, q: float) -> float:
    if x.size == 0:
        return math.nan
    v = float(np.percentile(x, q))
    return v


def _result(run: _Run, ttft: np.ndarray, latency: np.ndarray) -> SimResult:
    setup, cfg, gpu = run.setup, run.cfg, run.gpu
    served = np.isfinite(ttft)
    n = ttft.size
    hours = run.duration / 3600.0
    per_model: dict[str, dict[str, float]] = {}
    mod = np.frombuffer(run.trace.model, dtype=np.int32) if n else np.zeros(0, dtype=np.int32)
    for k, m in enumerate(run.models):
        sel = mod == k
        cnt = int(sel.sum())
        if not cnt:
            continue
        tk = ttft[sel]
        ok = tk[np.isfinite(tk)]
        per_model[m.name] = {"requests": cnt, "unserved": cnt - int(ok.size),
                             "ttft_p50_s": _pct(ok, 50), "ttft_p99_s": _pct(ok, 99),
                             "slo_attainment": float((tk <= cfg.slo_ttft_s).sum()) / cnt}
    notes = list(setup.notes)
    if setup.unplaceable:
        notes.append(f"unplaceable (every request counted as an SLO miss): {', '.join(setup.unplaceable)}")
    gpu_seconds = setup.gpus * run.duration
    return SimResult(
        policy=setup.name, gpu_type=gpu.gpu_type, gpus=setup.gpus, duration_s=run.duration,
        gpu_hours=setup.gpus * hours, cost_per_month=setup.gpus * gpu.cost_per_hour * cfg.hours_per_month,
        requests=n, unserved=int(n - served.sum()),
        ttft_p50_s=_pct(ttft[served], 50), ttft_p99_s=_pct(ttft[served], 99),
        latency_p50_s=_pct(latency[served], 50), latency_p99_s=_pct(latency[served], 99),
        slo_attainment=float((ttft <= cfg.slo_ttft_s).sum()) / n if n else math.nan,
        swaps=run.swaps, request_loads=run.request_loads, evictions=run.evictions,
        utilisation=run.busy_total / gpu_seconds if gpu_seconds > 0 else 0.0,
        busy_gpus=tuple(b / cfg.bucket_s for b in run.busy), bucket_s=cfg.bucket_s,
        per_model=per_model, notes=tuple(notes),
    )
