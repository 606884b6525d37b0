"""The simulator's inputs for the scenario: its models, a GPU type with measured move bandwidths,
and the four policies' starting points (dedicated, packed by the planner, tiered, tiered-prewarm).

Where the defaults come from:

- host→GPU 52.4 GB/s: ``bench/results/gpu_swap-h100-2026-11-27.txt``, run 1, 4130 MiB,
  "flat host→active 82.67 ms" (modelyard's own swap path on an H100, PCIe gen 5).
- disk→GPU 1.40 GB/s: the same file, 4130 MiB "disk→active flat 3099 ms" (that machine's disk:
  its raw file read was 3752 ms, so it is the disk, not modelyard, that sets this figure).
- ``--bandwidths scenario`` uses ``../shared/WORKLOAD.md``'s figures instead: PCIe 32 GB/s,
  NVMe→GPU 7 GB/s.
- GPU memory, price and tokens/s: ``planning/catalogue.py`` (examples; A100-40GB is the scenario's
  $3.20/h, 15,000 tokens/s), less the planner's 15 % overhead fraction.
- prefill: assumed ``PREFILL_FACTOR`` × the decode throughput (prompt tokens are processed in
  parallel, compute-bound; decode is memory-bound), an assumption, not a measurement.
- host RAM per GPU for parked models: assumed 2 × the GPU's memory (a cloud GPU VM's RAM).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

from modelyard.errors import ConfigError

from .catalogue import CATALOGUE, lookup_gpu
from .scenario import SCENARIO9, ScenarioModel, planner_spec
from .simulate import PolicySetup, SimGpu, SimModel

GB = 10**9
MIB = 2**20
OVERHEAD_FRACTION = 0.15  # the planner example's
PREFILL_FACTOR = 8.0  # assumption, see the module docstring
HOST_RAM_FACTOR = 2.0  # assumption
BANDWIDTHS: Mapping[str, tuple[float, float, str]] = MappingProxyType({
    # name: (host→GPU B/s, disk→GPU B/s, source)
    "measured": (4130 * MIB / 0.08267, 4130 * MIB / 3.09907,
                 "bench/results/gpu_swap-h100-2026-11-27.txt (H100, 4130 MiB: host→active 82.67 ms, disk→active 3099 ms)"),
    "scenario": (32 * GB, 7 * GB, "../shared/WORKLOAD.md (PCIe 32 GB/s, NVMe→GPU 7 GB/s)"),
})


def scenario_models(models: Sequence[ScenarioModel] = SCENARIO9) -> tuple[SimModel, ...]:
    """The scenario's models: a replica costs its GPU memory figure (weights; the KV reserve is
    in the 15 % overhead, as the planner example has it); parked on host it costs the same bytes."""
    return tuple(SimModel(m.name, int(m.gpu_memory_gb * GB), int(m.gpu_memory_gb * GB), max(1, m.min_replicas))
                 for m in models)


def sim_gpu(gpu_type: str, bandwidths: str = "measured") -> SimGpu:
    profile = lookup_gpu(gpu_type)
    if profile is None:
        raise ConfigError(f"--gpu-type: unknown GPU type {gpu_type!r} (catalogue: {', '.join(CATALOGUE)})")
    if bandwidths not in BANDWIDTHS:
        raise ConfigError(f"--bandwidths: {bandwidths!r} is not one of {', '.join(BANDWIDTHS)}")
    h2g, d2g, _ = BANDWIDTHS[bandwidths]
    mem = int(profile.memory_gb * GB)
    return SimGpu(profile.gpu_type, int(mem * (1 - OVERHEAD_FRACTION)), int(mem * HOST_RAM_FACTOR),
                  profile.throughput_tokens_per_sec, profile.throughput_tokens_per_sec * PREFILL_FACTOR,
                  profile.cost_per_hour, h2g, d2g)


def dedicated(models: Sequence[SimModel], gpu: SimGpu) -> PolicySetup:
    """One GPU per replica (min_replicas, at least one): the "before" of the scenario."""
    placement: list[tuple[str, ...]] = []
    unplaceable: list[str] = []
    for m in models:
        if m.active_bytes > gpu.usable_bytes:
            unplaceable.append(m.name)
            continue
        placement.extend((m.name,) for _ in range(max(1, m.min_replicas)))
    return PolicySetup("dedicated", len(placement), tuple(placement), unplaceable=tuple(unplaceable),
                       notes=("one GPU per replica",))


def packed_from_bins(bins: Sequence[Sequence[str]], unplaceable: Sequence[str], note: str = "") -> PolicySetup:
    """Static packing: each bin is a GPU holding exactly these model replicas."""
    return PolicySetup("packed", len(bins), tuple(tuple(b) for b in bins), unplaceable=tuple(unplaceable),
                       notes=(note,) if note else ())


def packed(models: Sequence[ScenarioModel], gpu_type: str, time_limit_s: float = 10.0) -> tuple[PolicySetup, dict[str, Any]]:
    """The planner's plan for these models on ``gpu_type``: (setup, the plan as a dict)."""
    from .planner import solve
    from .spec import parse_spec, to_problem

    spec = planner_spec(tuple(models))
    problem = to_problem(parse_spec(spec, source="<scenario9>"), source="<scenario9>", gpu_override=(gpu_type,))
    result = solve(problem, time_limit_s=time_limit_s)
    names = [u.name for u in result.unplaceable]
    note = (f"planner plan: {result.gpu_count} x {gpu_type}, ${result.cost_per_month:,.0f}/month at the "
            f"catalogue price")
    return packed_from_bins([b.models for b in result.bins], names, note), result.as_dict()


def tiered(models: Sequence[SimModel], gpu: SimGpu, gpus: int, *, prewarm: bool = False) -> PolicySetup:
    """N GPUs, models loaded and evicted by the memory manager's policy; starts empty (cold)."""
    unplaceable = tuple(m.name for m in models if m.active_bytes > gpu.usable_bytes)
    name = "tiered-prewarm" if prewarm else "tiered"
    notes = ("LRU eviction by memory.policy.plan; host tier per GPU",)
    if prewarm:
        notes += ("keep-alive: idle models demoted to host (plan_demote); pre-warm: models with recent "
                  "traffic loaded where room can be made without evicting a recently used model",)
    return PolicySetup(name, gpus, None, unplaceable=unplaceable, prewarm=prewarm, notes=notes)
