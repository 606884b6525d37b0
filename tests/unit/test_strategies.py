"""Unit tests of the load-balancing strategies (modelyard.routing.strategies)."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

import pytest
from hypothesis import given, strategies as st

from modelyard.config.schema import Strategy
from modelyard.routing.strategies import (
    LeastBusy,
    LowestLatency,
    RoundRobin,
    WeightedShuffle,
    make_picker,
)


@dataclass(eq=False)
class C:
    name: str
    weight: float = 1.0
    in_flight: int = 0
    latency_ewma_s: float = 0.0


def names(picks: list[C]) -> list[str]:
    return [c.name for c in picks]


# --- weighted shuffle ---------------------------------------------------------------------------


def test_weighted_follows_weights_3_to_1() -> None:
    a, b = C("a", weight=3.0), C("b", weight=1.0)
    rng = random.Random(1234)
    p = WeightedShuffle()
    n = 4000
    counts = Counter(p.pick([a, b], rng).name for _ in range(n))
    # expected 3000 / 1000; sd = sqrt(4000*.75*.25) ≈ 27; allow ~4 sd
    assert abs(counts["a"] - 3000) < 110, counts
    assert counts["a"] + counts["b"] == n


def test_weighted_three_way_proportions() -> None:
    cs = [C("a", weight=1.0), C("b", weight=2.0), C("c", weight=5.0)]
    rng = random.Random(7)
    p = WeightedShuffle()
    n = 8000
    counts = Counter(p.pick(cs, rng).name for _ in range(n))
    for c in cs:
        expected = n * c.weight / 8.0
        assert abs(counts[c.name] - expected) < 0.05 * n, counts


def test_weighted_order_of_candidates_does_not_matter() -> None:
    a, b = C("a", weight=1.0), C("b", weight=4.0)
    n = 5000
    r1, r2 = random.Random(3), random.Random(3)
    c1 = Counter(WeightedShuffle().pick([a, b], r1).name for _ in range(n))
    c2 = Counter(WeightedShuffle().pick([b, a], r2).name for _ in range(n))
    for counts in (c1, c2):
        assert abs(counts["b"] - 4000) < 150, counts


def test_weighted_single_candidate_consumes_no_randomness() -> None:
    rng = random.Random(5)
    state = rng.getstate()
    only = C("only")
    assert WeightedShuffle().pick([only], rng) is only
    assert rng.getstate() == state


def test_weighted_is_reproducible_with_a_seed() -> None:
    cs = [C("a", 1), C("b", 2), C("c", 3)]
    s1 = [WeightedShuffle().pick(cs, r).name for r in [random.Random(9)] for _ in range(50)]
    s2 = [WeightedShuffle().pick(cs, r).name for r in [random.Random(9)] for _ in range(50)]
    assert s1 == s2
    assert len(set(s1)) == 3


class _FixedRandom(random.Random):
    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:  # noqa: D102
        return self.value


@given(weights=st.lists(st.floats(min_value=0.001, max_value=1000), min_size=2, max_size=8),
       x=st.floats(min_value=0.0, max_value=0.9999999))
def test_weighted_always_returns_a_candidate_in_the_matching_slice(weights: list[float], x: float) -> None:
    cs = [C(str(i), weight=w) for i, w in enumerate(weights)]
    picked = WeightedShuffle().pick(cs, _FixedRandom(x))
    assert picked in cs
    total = sum(weights)
    lo = 0.0
    for c in cs:
        hi = lo + c.weight
        if c is picked:
            # rounding may shift the boundary by an ulp; the pick is the slice x*total falls in
            assert lo - 1e-6 * total <= x * total <= hi + 1e-6 * total
        lo = hi


# --- round robin --------------------------------------------------------------------------------


def test_round_robin_cycles() -> None:
    cs = [C("a"), C("b"), C("c")]
    p = RoundRobin()
    rng = random.Random(0)
    assert names([p.pick(cs, rng) for _ in range(7)]) == ["a", "b", "c", "a", "b", "c", "a"]


def test_round_robin_ignores_weights_and_randomness() -> None:
    cs = [C("a", weight=100), C("b", weight=1)]
    p = RoundRobin()
    picks = [p.pick(cs, random.Random(i)) for i in range(6)]
    assert names(picks) == ["a", "b"] * 3


def test_round_robin_pickers_are_independent() -> None:
    cs = [C("a"), C("b")]
    p1, p2 = RoundRobin(), RoundRobin()
    rng = random.Random(0)
    assert p1.pick(cs, rng).name == "a"
    assert p1.pick(cs, rng).name == "b"
    assert p2.pick(cs, rng).name == "a"


def test_round_robin_with_a_shrinking_candidate_list_stays_in_range() -> None:
    p = RoundRobin()
    rng = random.Random(0)
    full = [C("a"), C("b"), C("c")]
    for _ in range(5):
        p.pick(full, rng)
    one = [C("x")]
    assert p.pick(one, rng).name == "x"


# --- least busy ---------------------------------------------------------------------------------


def test_least_busy_picks_minimum_in_flight() -> None:
    cs = [C("a", in_flight=3), C("b", in_flight=1), C("c", in_flight=2)]
    p = LeastBusy()
    for seed in range(20):
        assert p.pick(cs, random.Random(seed)).name == "b"


def test_least_busy_breaks_ties_at_random_among_the_minimum_only() -> None:
    cs = [C("a", in_flight=0), C("b", in_flight=5), C("c", in_flight=0)]
    rng = random.Random(11)
    counts = Counter(LeastBusy().pick(cs, rng).name for _ in range(1000))
    assert set(counts) == {"a", "c"}
    assert counts["a"] > 350 and counts["c"] > 350


@given(st.lists(st.integers(min_value=0, max_value=20), min_size=1, max_size=10), st.integers(0, 1000))
def test_least_busy_property(loads: list[int], seed: int) -> None:
    cs = [C(str(i), in_flight=n) for i, n in enumerate(loads)]
    assert LeastBusy().pick(cs, random.Random(seed)).in_flight == min(loads)


# --- lowest latency -----------------------------------------------------------------------------


def test_lowest_latency_picks_minimum_ewma() -> None:
    cs = [C("a", latency_ewma_s=0.5), C("b", latency_ewma_s=0.2), C("c", latency_ewma_s=0.9)]
    for seed in range(20):
        assert LowestLatency().pick(cs, random.Random(seed)).name == "b"


def test_lowest_latency_explores_unmeasured_first() -> None:
    cs = [C("fast", latency_ewma_s=0.001), C("new", latency_ewma_s=0.0), C("slow", latency_ewma_s=2.0)]
    for seed in range(20):
        assert LowestLatency().pick(cs, random.Random(seed)).name == "new"


def test_lowest_latency_spreads_over_several_unmeasured() -> None:
    cs = [C("m", latency_ewma_s=0.1), C("u1"), C("u2")]
    rng = random.Random(2)
    counts = Counter(LowestLatency().pick(cs, rng).name for _ in range(400))
    assert set(counts) == {"u1", "u2"}


# --- factory ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("strategy", "cls"),
    [
        (Strategy.weighted, WeightedShuffle),
        (Strategy.round_robin, RoundRobin),
        (Strategy.least_busy, LeastBusy),
        (Strategy.lowest_latency, LowestLatency),
    ],
)
def test_make_picker(strategy: Strategy, cls: type) -> None:
    assert isinstance(make_picker(strategy), cls)


def test_make_picker_gives_each_group_its_own_round_robin() -> None:
    assert make_picker(Strategy.round_robin) is not make_picker(Strategy.round_robin)
