"""Where models live: the pure eviction decision of the memory manager.

``plan`` answers one question — "what must move so that ``target`` fits on the active tier?" —
from a snapshot of the residents and the budgets. It reads nothing else, logs nothing, never looks
at a clock and never mutates its inputs (llama-swap's ``EvictionFor``: "Pure decision; must not
log"). ``memory/manager.py`` owns the state and applies the plan.

Tiers: **active** (the execution device), **host** (weights parked in CPU RAM; only engines that
support it), **disk** (not loaded). A resident costs ``active_bytes`` on the active tier and
``host_bytes`` on the host tier.

Invariants of every plan (checked by ``tests/unit/test_memory_policy.py`` over random states):

1. Never moved: the target, a pinned model, a model with requests in flight (``in_flight > 0``;
   the manager also counts requests *waiting* for that model here).
2. Active victims are taken least-recently-used first (ties broken by name): no demoted active
   model was used more recently than an evictable active model that stays.
3. A demoted active model goes to host when it ``can_host``, fits the host budget at all, and room
   can be made there by sending *older* host models (never a more recently used one: the host tier
   keeps the models most likely to be needed next) host → disk, LRU first; otherwise to disk.
4. ``demotions`` are ordered so that applying them one by one, in order, keeps **every**
   intermediate state within both budgets (host → disk moves come before the active → host moves
   they make room for). That is why the target's own host bytes still count while the demotions
   run: they are freed only when the target itself leaves host, after the plan has been applied.
5. ``feasible`` ⇒ after the demotions, the other active residents plus ``target_active_bytes`` fit
   the active budget, and the host tier fits its budget (the target's host bytes freed).
6. Not feasible ⇒ ``reason`` names the budget, the bytes needed and what blocks (the target being
   larger than the budget, pinned models, models with requests in flight);
   ``blocked_by_in_flight`` is True exactly when evicting the in-flight models as well would make
   room, i.e. when waiting for requests to end can help.

Precondition: the residents are within budgets (the manager's own invariant). A target that is
already active is planned as if it were replaced by ``target_active_bytes`` (the manager re-plans
with the measured footprint after a load).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum


class Tier(str, Enum):
    active = "active"
    host = "host"
    disk = "disk"


@dataclass(frozen=True)
class Budgets:
    """Bytes each tier may hold."""

    active: int
    host: int


@dataclass(frozen=True)
class Resident:
    """One model as the planner sees it (a snapshot; the manager builds these under its lock)."""

    name: str
    tier: Tier
    active_bytes: int  # what it costs on the active tier (counted while tier is active)
    host_bytes: int  # what it costs parked on host (counted while tier is host)
    last_used: float
    in_flight: int
    pinned: bool
    can_host: bool


@dataclass(frozen=True)
class Demotion:
    name: str
    src: Tier
    dst: Tier


@dataclass(frozen=True)
class Plan:
    demotions: tuple[Demotion, ...]
    feasible: bool
    reason: str | None
    blocked_by_in_flight: bool  # True when waiting for in-flight requests to end could make it feasible


def fmt_bytes(n: int) -> str:
    """Human-readable size for reasons and logs (binary units)."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover - loop always returns


def tier_usage(residents: Iterable[Resident]) -> dict[Tier, int]:
    """Bytes used per tier by these residents."""
    used = {Tier.active: 0, Tier.host: 0}
    for r in residents:
        if r.tier is Tier.active:
            used[Tier.active] += r.active_bytes
        elif r.tier is Tier.host:
            used[Tier.host] += r.host_bytes
    return used


def _lru_key(r: Resident) -> tuple[float, str]:
    return (r.last_used, r.name)


def _movable(r: Resident, target: str) -> bool:
    return r.name != target and not r.pinned and r.in_flight == 0


def _names(rs: Sequence[Resident]) -> str:
    return ", ".join(f"{r.name} ({fmt_bytes(r.active_bytes if r.tier is Tier.active else r.host_bytes)})" for r in rs)


def plan(target: str, target_active_bytes: int, residents: Sequence[Resident], budgets: Budgets) -> Plan:
    """Make room on the active tier for ``target`` (on disk, on host, active, or not a resident)."""
    others_active = [r for r in residents if r.tier is Tier.active and r.name != target]
    used_active = sum(r.active_bytes for r in others_active)
    free_needed = used_active + target_active_bytes - budgets.active

    if free_needed <= 0:
        return Plan((), True, None, False)

    if target_active_bytes > budgets.active:
        return Plan(
            (), False,
            f"model {target!r} needs {fmt_bytes(target_active_bytes)} ({target_active_bytes} bytes) on the active "
            f"tier, more than the whole active budget of {fmt_bytes(budgets.active)} ({budgets.active} bytes)",
            False,
        )

    evictable = sorted((r for r in others_active if _movable(r, target)), key=_lru_key)
    if sum(r.active_bytes for r in evictable) < free_needed:
        pinned = [r for r in others_active if r.pinned]
        busy = [r for r in others_active if not r.pinned and r.in_flight > 0]
        pinned_bytes = sum(r.active_bytes for r in pinned)
        blocked_by_in_flight = bool(busy) and pinned_bytes + target_active_bytes <= budgets.active
        blockers = []
        if pinned:
            blockers.append(f"pinned models: {_names(pinned)}")
        if busy:
            blockers.append(f"models with requests in flight: {_names(busy)}")
        free_best = budgets.active - (used_active - sum(r.active_bytes for r in evictable))
        return Plan(
            (), False,
            f"cannot make room for model {target!r} on the active tier: it needs {fmt_bytes(target_active_bytes)} "
            f"({target_active_bytes} bytes), the active budget is {fmt_bytes(budgets.active)} and at most "
            f"{fmt_bytes(max(free_best, 0))} can be freed; held by " + "; ".join(blockers),
            blocked_by_in_flight,
        )

    victims: list[Resident] = []
    freed = 0
    for r in evictable:
        if freed >= free_needed:
            break
        victims.append(r)
        freed += r.active_bytes

    host_residents = [r for r in residents if r.tier is Tier.host]
    used_host = sum(r.host_bytes for r in host_residents)  # the target's host bytes included: see invariant 4
    gone: set[str] = set()  # host residents planned host → disk
    to_disk_first: list[Demotion] = []
    to_host: list[Demotion] = []
    to_disk: list[Demotion] = []
    # Place the most recently used victims first, so an older victim never pushes out a newer one
    # and no model is moved twice.
    for v in sorted(victims, key=_lru_key, reverse=True):
        placed = False
        if v.can_host and v.host_bytes <= budgets.host:
            over = used_host + v.host_bytes - budgets.host
            drop: list[Resident] = []
            if over > 0:
                older = sorted(
                    (h for h in host_residents
                     if h.name not in gone and _movable(h, target) and _lru_key(h) < _lru_key(v)),
                    key=_lru_key,
                )
                got = 0
                for h in older:
                    if got >= over:
                        break
                    drop.append(h)
                    got += h.host_bytes
                if got < over:
                    drop = []
            if over <= 0 or drop:
                for h in drop:
                    gone.add(h.name)
                    used_host -= h.host_bytes
                    to_disk_first.append(Demotion(h.name, Tier.host, Tier.disk))
                used_host += v.host_bytes
                to_host.append(Demotion(v.name, Tier.active, Tier.host))
                placed = True
        if not placed:
            to_disk.append(Demotion(v.name, Tier.active, Tier.disk))
    return Plan(tuple(to_disk_first + to_host + to_disk), True, None, False)


def plan_demote(name: str, residents: Sequence[Resident], budgets: Budgets) -> Plan:
    """Move active ``name`` to host (an explicit request or the keep-alive reaper), making room on
    host by sending LRU host models to disk. Not feasible when it cannot go to host at all; the
    caller then unloads it to disk instead (or refuses)."""
    me = next((r for r in residents if r.name == name), None)
    if me is None or me.tier is not Tier.active:
        where = "not loaded" if me is None else f"on the {me.tier.value} tier"
        return Plan((), False, f"model {name!r} is {where}, not active", False)
    if me.pinned:
        return Plan((), False, f"model {name!r} is pinned to the active tier", False)
    if me.in_flight > 0:
        return Plan((), False, f"model {name!r} has {me.in_flight} request(s) in flight", True)
    if not me.can_host:
        return Plan((), False, f"model {name!r}: its engine cannot park weights on the host tier", False)
    if me.host_bytes > budgets.host:
        return Plan(
            (), False,
            f"model {name!r} needs {fmt_bytes(me.host_bytes)} ({me.host_bytes} bytes) on the host tier, more than "
            f"the whole host budget of {fmt_bytes(budgets.host)} ({budgets.host} bytes)",
            False,
        )
    hosts = [r for r in residents if r.tier is Tier.host]
    over = sum(r.host_bytes for r in hosts) + me.host_bytes - budgets.host
    drops: list[Demotion] = []
    if over > 0:
        movable = sorted((r for r in hosts if _movable(r, name)), key=_lru_key)
        got = 0
        for r in movable:
            if got >= over:
                break
            drops.append(Demotion(r.name, Tier.host, Tier.disk))
            got += r.host_bytes
        if got < over:
            stuck = [r for r in hosts if not _movable(r, name)]
            return Plan(
                (), False,
                f"cannot make room for model {name!r} on the host tier: it needs {fmt_bytes(me.host_bytes)} "
                f"({me.host_bytes} bytes), the host budget is {fmt_bytes(budgets.host)}; held by "
                f"{_names(stuck) or 'nothing movable'}",
                any(r.in_flight > 0 and not r.pinned for r in stuck),
            )
    return Plan((*drops, Demotion(name, Tier.active, Tier.host)), True, None, False)
