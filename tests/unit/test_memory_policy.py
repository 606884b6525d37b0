"""Unit tests of the pure residency policy (modelyard.memory.policy).

Readable examples first, then hypothesis properties over random residents and budgets: the plan
never moves pinned, in-flight or target models; applying it (one demotion at a time) stays within
both budgets at every step and ends with the target fitting whenever it says feasible; victims are
least-recently-used first on each tier; infeasible reasons name what blocks.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import given, settings, strategies as st

from modelyard.memory.policy import Budgets, Demotion, Plan, Resident, Tier, plan, plan_demote, tier_usage

A, H, D = Tier.active, Tier.host, Tier.disk


def res(name: str, tier: Tier = A, size: int = 100, *, host: int | None = None, used: float = 0.0,
        in_flight: int = 0, pinned: bool = False, can_host: bool = True) -> Resident:
    return Resident(name, tier, size, size if host is None else host, used, in_flight, pinned, can_host)


def apply(residents: Sequence[Resident], p: Plan, budgets: Budgets | None = None) -> list[Resident]:
    """Apply the demotions in order (checking each intermediate state when budgets are given)."""
    by = {r.name: r for r in residents}
    for d in p.demotions:
        r = by[d.name]
        assert r.tier is d.src, f"{d} but {r.name} is on {r.tier}"
        by[d.name] = Resident(r.name, d.dst, r.active_bytes, r.host_bytes, r.last_used, r.in_flight, r.pinned, r.can_host)
        if budgets is not None:
            u = tier_usage(by.values())
            assert u[A] <= budgets.active and u[H] <= budgets.host, f"after {d}: {u}"
    return list(by.values())


# --- examples ------------------------------------------------------------------------------------


def test_fits_without_moving_anything() -> None:
    p = plan("c", 100, [res("a"), res("b")], Budgets(300, 0))
    assert p == Plan((), True, None, False)


def test_evicts_least_recently_used_first_to_disk_when_no_host_room() -> None:
    rs = [res("a", used=3), res("b", used=1), res("c", used=2)]
    p = plan("t", 100, rs, Budgets(300, 0))
    assert p.feasible and p.demotions == (Demotion("b", A, D),)


def test_evicted_model_parks_on_host_when_it_can() -> None:
    rs = [res("a", used=2), res("b", used=1)]
    p = plan("t", 100, rs, Budgets(200, 100))
    assert p.demotions == (Demotion("b", A, H),)


def test_engine_without_host_tier_goes_to_disk() -> None:
    p = plan("t", 100, [res("a", can_host=False)], Budgets(100, 1000))
    assert p.demotions == (Demotion("a", A, D),)


def test_older_host_model_makes_room_for_a_newer_victim_and_moves_first() -> None:
    rs = [res("old", H, used=1), res("a", used=5)]
    p = plan("t", 100, rs, Budgets(100, 100))
    assert p.demotions == (Demotion("old", H, D), Demotion("a", A, H))


def test_newer_host_model_is_not_pushed_out_by_an_older_victim() -> None:
    rs = [res("new", H, used=9), res("a", used=5)]
    p = plan("t", 100, rs, Budgets(100, 100))
    assert p.demotions == (Demotion("a", A, D),)


def test_several_victims_each_placed_once() -> None:
    rs = [res("a", used=1), res("b", used=2), res("c", used=3)]
    p = plan("t", 150, rs, Budgets(300, 100))
    # needs 150 of 300 with 300 used → evict a and b (LRU); only one fits on host: the newer (b).
    assert set(p.demotions) == {Demotion("a", A, D), Demotion("b", A, H)}


def test_target_on_host_frees_its_host_bytes_only_after_the_demotions() -> None:
    rs = [res("t", H, used=1), res("a", used=2)]
    p = plan("t", 100, rs, Budgets(100, 100))
    # the host is full of the target itself while "a" moves, so "a" goes to disk
    assert p.demotions == (Demotion("a", A, D),)


def test_already_active_target_is_replanned_with_its_measured_size() -> None:
    rs = [res("t", size=50, used=3), res("a", used=1)]
    assert plan("t", 100, rs, Budgets(200, 0)).demotions == ()
    assert plan("t", 150, rs, Budgets(200, 0)).demotions == (Demotion("a", A, D),)


def test_target_larger_than_budget_is_permanent() -> None:
    p = plan("big", 500, [res("a")], Budgets(400, 1000))
    assert not p.feasible and not p.blocked_by_in_flight
    assert "active budget" in (p.reason or "") and "500 bytes" in (p.reason or "") and "400 bytes" in (p.reason or "")


def test_pinned_blocks_permanently_and_is_named() -> None:
    p = plan("t", 100, [res("p", pinned=True)], Budgets(150, 1000))
    assert not p.feasible and not p.blocked_by_in_flight
    assert "pinned" in (p.reason or "") and "p (100 B)" in (p.reason or "")


def test_in_flight_blocks_temporarily_and_is_named() -> None:
    p = plan("t", 100, [res("busy", in_flight=2), res("idle", used=5)], Budgets(150, 1000))
    assert not p.feasible and p.blocked_by_in_flight
    assert "in flight" in (p.reason or "") and "busy" in (p.reason or "")


def test_in_flight_does_not_help_when_pinned_alone_block() -> None:
    rs = [res("p", pinned=True), res("busy", in_flight=1)]
    p = plan("t", 100, rs, Budgets(150, 0))
    assert not p.feasible and not p.blocked_by_in_flight
    assert "pinned" in (p.reason or "") and "in flight" in (p.reason or "")


def test_plan_demote_to_host_making_room_lru() -> None:
    rs = [res("a"), res("h1", H, used=1), res("h2", H, used=2)]
    p = plan_demote("a", rs, Budgets(1000, 200))
    assert p.demotions == (Demotion("h1", H, D), Demotion("a", A, H))


@pytest.mark.parametrize(
    ("r", "budgets", "word", "in_flight"),
    [
        (res("a", pinned=True), Budgets(100, 100), "pinned", False),
        (res("a", in_flight=1), Budgets(100, 100), "in flight", True),
        (res("a", can_host=False), Budgets(100, 100), "cannot park", False),
        (res("a", host=200), Budgets(1000, 100), "host budget", False),
        (res("a", H), Budgets(100, 100), "not active", False),
    ],
)
def test_plan_demote_refusals(r: Resident, budgets: Budgets, word: str, in_flight: bool) -> None:
    p = plan_demote("a", [r], budgets)
    assert not p.feasible and word in (p.reason or "") and p.blocked_by_in_flight is in_flight


def test_plan_demote_unknown_model() -> None:
    assert "not loaded" in (plan_demote("x", [], Budgets(1, 1)).reason or "")


# --- properties ----------------------------------------------------------------------------------

NAMES = [f"m{i}" for i in range(8)]


@st.composite
def states(draw: st.DrawFn, host_max: int = 600) -> tuple[str, int, list[Resident], Budgets]:
    """A random manager state that respects the budgets, and a random target (a small ``host_max``
    crowds the host tier, so victims have to push host models to disk)."""
    budgets = Budgets(draw(st.integers(0, 1000)), draw(st.integers(0, host_max)))
    residents: list[Resident] = []
    used = {A: 0, H: 0}
    for name in draw(st.lists(st.sampled_from(NAMES), unique=True, min_size=2, max_size=8)):
        tier = draw(st.sampled_from([A, H] if host_max > 300 else [A, H, H]))
        active_b = draw(st.integers(0, 300))
        host_b = draw(st.integers(0, active_b))
        cost, cap = (active_b, budgets.active) if tier is A else (host_b, budgets.host)
        if used[tier] + cost > cap:
            continue
        used[tier] += cost
        residents.append(Resident(
            name, tier, active_b, host_b,
            last_used=float(draw(st.integers(0, 20))),  # small range: ties happen
            in_flight=draw(st.sampled_from([0, 0, 0, 1, 3])) if tier is A else 0,
            pinned=draw(st.booleans()) if tier is A and draw(st.integers(0, 4)) == 0 else False,
            can_host=draw(st.booleans()),
        ))
    target = draw(st.sampled_from([*NAMES, "absent"]))
    # mostly a target that fits the budget (the interesting plans), sometimes one that cannot
    need = draw(st.integers(max(0, budgets.active - 300), budgets.active) | st.integers(0, 1200))
    return target, need, residents, budgets


@settings(max_examples=1500, deadline=None)
@given(states() | states(host_max=250))
def test_plan_properties(state: tuple[str, int, list[Resident], Budgets]) -> None:
    target, need, residents, budgets = state
    p = plan(target, need, residents, budgets)
    by = {r.name: r for r in residents}

    # never moved: target, pinned, in flight; each model moved at most once
    moved = [d.name for d in p.demotions]
    assert len(moved) == len(set(moved))
    for d in p.demotions:
        r = by[d.name]
        assert d.name != target and not r.pinned and r.in_flight == 0
        assert (d.src, d.dst) in {(A, H), (A, D), (H, D)}
        if d.dst is H:
            assert r.can_host and r.host_bytes <= budgets.host

    if p.feasible:
        assert p.reason is None and not p.blocked_by_in_flight
        after = apply(residents, p, budgets)  # every intermediate state within budgets
        final = [r for r in after if r.name != target]  # the target leaves host, arrives active
        u = tier_usage(final)
        assert u[A] + need <= budgets.active and u[H] <= budgets.host
    else:
        assert p.demotions == () and p.reason
        if need > budgets.active:
            assert "budget" in p.reason and not p.blocked_by_in_flight
        else:
            others = [r for r in residents if r.tier is A and r.name != target]
            pinned = [r for r in others if r.pinned]
            busy = [r for r in others if r.in_flight and not r.pinned]
            assert pinned or busy
            if pinned:
                assert "pinned" in p.reason and all(r.name in p.reason for r in pinned)
            if busy:
                assert "in flight" in p.reason and all(r.name in p.reason for r in busy)
            # waiting helps exactly when the pinned models alone leave room
            assert p.blocked_by_in_flight == (bool(busy) and sum(r.active_bytes for r in pinned) + need <= budgets.active)

    # LRU on each tier: no demoted model is more recently used than a kept evictable one
    for tier in (A, H):
        evictable = [r for r in residents if r.tier is tier and r.name != target and not r.pinned and r.in_flight == 0]
        demoted = {d.name for d in p.demotions if d.src is tier}
        kept = [r for r in evictable if r.name not in demoted]
        for name in demoted:
            assert all(by[name].last_used <= k.last_used for k in kept), (tier, name, kept)


@settings(max_examples=300, deadline=None)
@given(states())
def test_plan_is_minimal_on_the_active_tier(state: tuple[str, int, list[Resident], Budgets]) -> None:
    """Without the most recently used victim the target would not fit: nothing is evicted for nothing."""
    target, need, residents, budgets = state
    p = plan(target, need, residents, budgets)
    victims = [r for r in residents if r.name in {d.name for d in p.demotions if d.src is A}]
    if not victims:
        return
    newest = max(victims, key=lambda r: (r.last_used, r.name))
    rest = sum(r.active_bytes for r in residents if r.tier is A and r.name != target) - sum(v.active_bytes for v in victims)
    assert rest + newest.active_bytes + need > budgets.active


@settings(max_examples=500, deadline=None)
@given(states(), st.sampled_from(NAMES))
def test_plan_demote_properties(state: tuple[str, int, list[Resident], Budgets], name: str) -> None:
    _, _, residents, budgets = state
    p = plan_demote(name, residents, budgets)
    if p.feasible:
        assert p.demotions[-1] == Demotion(name, A, H)
        for d in p.demotions[:-1]:
            r = next(r for r in residents if r.name == d.name)
            assert (d.src, d.dst) == (H, D) and not r.pinned and r.in_flight == 0
        apply(residents, p, budgets)
    else:
        assert p.demotions == () and p.reason
