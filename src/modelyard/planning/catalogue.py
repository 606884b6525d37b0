"""A built-in catalogue of common GPUs and their MIG profiles. **Prices and throughputs are examples**
(list-price ballparks and one token rate per GPU, for a 7-8B model) — put your own in the spec.

MIG (A100, H100, H200): a GPU has 7 compute slices and 8 memory slices. A profile ``Ng.Mgb`` takes
N compute slices and a fixed run of memory slices, and may start only at certain memory slices
(NVIDIA's placement rules, as ``nvidia-smi mig -lgipp`` lists them and mig-parted's defaults use):

=========  ======  =============  ==========
profile    memory  starts         at most
=========  ======  =============  ==========
1g.small   1/8     0 1 2 3 4 5 6  7
1g.large   2/8     0 2 4 6        4
2g         2/8     0 2 4          3
3g         4/8     0 4            2
4g         4/8     0              1
7g         8/8     0              1
=========  ======  =============  ==========

A *layout* is a set of placements that do not overlap and use at most 7 compute slices. Only
maximal layouts are offered to the planner (adding a slice to a layout never hurts). Usable memory
of a slice is assumed to be 95% of its nominal size (nvidia-smi shows e.g. 4.75 GiB for a 1g.5gb
instance; the rest holds the instance's own structures); a slice serves ``N/7`` of the GPU's tokens/s.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from types import MappingProxyType

MIG_USABLE_FRACTION = 0.95
MEMORY_SLICES = 8
COMPUTE_SLICES = 7


@dataclass(frozen=True)
class MigProfile:
    name: str  # e.g. "3g.20gb"
    compute: int  # compute slices of 7
    memory_slices: int  # memory slices of 8
    memory_gb: float  # nominal
    starts: tuple[int, ...]

    @property
    def usable_gb(self) -> float:
        return self.memory_gb * MIG_USABLE_FRACTION


@dataclass(frozen=True)
class GpuProfile:
    gpu_type: str
    memory_gb: float
    cost_per_hour: float  # example list price, USD
    throughput_tokens_per_sec: float  # example
    mig: tuple[MigProfile, ...] = ()

    def layouts(self) -> tuple[tuple[str, ...], ...]:
        """Every maximal valid MIG layout, as sorted tuples of profile names (empty without MIG)."""
        return _layouts(self.mig)


def _mig(small: float, large: float, half: float, full: float) -> tuple[MigProfile, ...]:
    def n(g: int, mem: float) -> str:
        return f"{g}g.{mem:g}gb"

    return (
        MigProfile(n(1, small), 1, 1, small, (0, 1, 2, 3, 4, 5, 6)),
        MigProfile(n(1, large), 1, 2, large, (0, 2, 4, 6)),
        MigProfile(n(2, large), 2, 2, large, (0, 2, 4)),
        MigProfile(n(3, half), 3, 4, half, (0, 4)),
        MigProfile(n(4, half), 4, 4, half, (0,)),
        MigProfile(n(7, full), 7, 8, full, (0,)),
    )


CATALOGUE: Mapping[str, GpuProfile] = MappingProxyType({
    g.gpu_type: g
    for g in (
        GpuProfile("A100-40GB", 40, 3.20, 15_000, _mig(5, 10, 20, 40)),  # price and rate: the scenario's
        GpuProfile("A100-80GB", 80, 4.10, 16_500, _mig(10, 20, 40, 80)),
        GpuProfile("H100-80GB", 80, 6.90, 30_000, _mig(10, 20, 40, 80)),
        GpuProfile("H200", 141, 10.60, 36_000, _mig(18, 35, 71, 141)),
        GpuProfile("L40S", 48, 1.90, 12_000),
        GpuProfile("L4", 24, 0.80, 5_000),
        GpuProfile("A10G", 24, 1.00, 5_500),
    )
})


def lookup_gpu(name: str) -> GpuProfile | None:
    """The catalogue entry for a GPU type, case- and dash-insensitive (``a100-40gb``, ``A100_40GB``)."""
    def key(s: str) -> str:
        return s.lower().replace("_", "-").replace(" ", "-")

    want = key(name)
    for g in CATALOGUE.values():
        if key(g.gpu_type) == want:
            return g
    return None


@cache
def _layouts(profiles: tuple[MigProfile, ...]) -> tuple[tuple[str, ...], ...]:
    if not profiles:
        return ()
    placements = sorted(((p, s) for p in profiles for s in p.starts), key=lambda ps: (ps[1], -ps[0].memory_slices))
    found: set[tuple[str, ...]] = set()

    def fits(used: int, compute: int, p: MigProfile, s: int) -> bool:
        mask = ((1 << p.memory_slices) - 1) << s
        return not used & mask and compute + p.compute <= COMPUTE_SLICES and s + p.memory_slices <= MEMORY_SLICES

    def walk(i: int, used: int, compute: int, chosen: list[str]) -> None:
        if i == len(placements):
            # maximal: no placement at all can still be added
            if chosen and not any(fits(used, compute, p, s) for p, s in placements):
                found.add(tuple(sorted(chosen)))
            return
        p, s = placements[i]
        if fits(used, compute, p, s):
            chosen.append(p.name)
            walk(i + 1, used | (((1 << p.memory_slices) - 1) << s), compute + p.compute, chosen)
            chosen.pop()
        walk(i + 1, used, compute, chosen)

    walk(0, 0, 0, [])
    return tuple(sorted(found))
