"""Load-balancing strategies: pure choices among the deployments that may take a request now.

Each strategy is ``pick(candidates, rng) -> candidate``; candidates are never empty. The router
filters out open breakers and deployments at their concurrency cap before calling it.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Protocol

from modelyard.config.schema import Strategy


class Candidate(Protocol):
    weight: float
    in_flight: int
    latency_ewma_s: float  # 0.0 until the first observation


class Picker(Protocol):
    def pick(self, candidates: Sequence[Candidate], rng: random.Random) -> Candidate: ...


class WeightedShuffle:
    """Random choice proportional to weight (LiteLLM's simple-shuffle)."""

    def pick(self, candidates: Sequence[Candidate], rng: random.Random) -> Candidate:
        if len(candidates) == 1:
            return candidates[0]
        total = 0.0
        for c in candidates:
            total += c.weight
        x = rng.random() * total
        for c in candidates:
            x -= c.weight
            if x < 0:
                return c
        return candidates[-1]


class RoundRobin:
    """Each deployment in turn; the counter is the only state and belongs to this group."""

    def __init__(self) -> None:
        self._next = 0

    def pick(self, candidates: Sequence[Candidate], rng: random.Random) -> Candidate:
        c = candidates[self._next % len(candidates)]
        self._next += 1
        return c


def _least(candidates: Sequence[Candidate], rng: random.Random, key: str) -> Candidate:
    best: list[Candidate] = []
    best_v = float("inf")
    for c in candidates:
        v = getattr(c, key)
        if v < best_v:
            best_v, best = v, [c]
        elif v == best_v:
            best.append(c)
    return best[0] if len(best) == 1 else rng.choice(best)


class LeastBusy:
    """Fewest requests in flight; ties broken at random."""

    def pick(self, candidates: Sequence[Candidate], rng: random.Random) -> Candidate:
        return _least(candidates, rng, "in_flight")


class LowestLatency:
    """Lowest EWMA latency; an unmeasured deployment (0.0) is tried first so every one gets measured."""

    def pick(self, candidates: Sequence[Candidate], rng: random.Random) -> Candidate:
        return _least(candidates, rng, "latency_ewma_s")


def make_picker(strategy: Strategy) -> Picker:
    if strategy is Strategy.round_robin:
        return RoundRobin()
    if strategy is Strategy.least_busy:
        return LeastBusy()
    if strategy is Strategy.lowest_latency:
        return LowestLatency()
    return WeightedShuffle()
