"""PURE: how many batch items of one model may start now. Reads its arguments only — no clock (``now``
is passed in), no logging, no I/O — like ``memory/policy.plan``.

Batch items are the lowest priority and run only on capacity that interactive traffic leaves free:

1. **Interactive load pauses the batch**: any interactive request waiting in the model's admission
   queue, or ``pause_at_in_flight`` or more interactive requests in flight, and no new item starts
   (items already running finish: they are short, and cancelling them would waste their work).
   For a local model the load of *every* local model counts when ``share_device`` is on: they share
   the machine's cores (or GPU), so a chat burst must pause an embeddings batch too.
2. **Hysteresis**: after interactive load the batch resumes only once the model has been quiet for
   ``resume_after_s``, so a batch does not jump into every gap between two interactive requests
   of a busy conversation.
3. **Memory**: a model that is not on the active tier is loaded for a batch only when the memory
   budget has room for it without evicting anything (``MemoryManager.would_evict``, i.e.
   ``memory/policy.plan`` has no demotion). While it loads, one item at a time. An upstream
   (OpenAI-compatible) model has no memory question.
4. **Back-off**: after an overload or rate-limit refusal the model is held until ``hold_until``.
5. **Ramp**: once resumed, the batch starts with one item and doubles every ``ramp_s`` of quiet up
   to ``concurrency``: an interactive request that arrives in a short gap meets one or two batch
   items on the cores, not the full ``concurrency`` (which the gaps between a busy model's requests
   would otherwise fill); a long idle spell reaches full concurrency in ``ramp_s × log2`` seconds.

Admission's aging (routing/admission.py) would eventually let a LOW waiter overtake interactive
ones; rule 1 is why batch items almost never wait there: they enter admission only when nothing
interactive waits.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum


class Residency(str, Enum):
    remote = "remote"  # an upstream over HTTP: no memory question
    active = "active"  # a local model on the active tier (or loading there)
    cold_fits = "cold_fits"  # not active; loading it evicts nothing
    cold_evicts = "cold_evicts"  # not active; loading it would evict another model (or cannot fit)


@dataclass(frozen=True, slots=True)
class Load:
    interactive_waiting: int
    interactive_in_flight: int
    batch_running: int  # this model's batch items started and not yet committed
    residency: Residency


@dataclass(frozen=True, slots=True)
class Knobs:
    concurrency: int
    pause_at_in_flight: int = 1
    resume_after_s: float = 0.5
    ramp_s: float = 0.5  # 0: no ramp (full concurrency as soon as the model is quiet)


@dataclass(frozen=True, slots=True)
class Decision:
    slots: int  # items that may start now (0: none)
    busy: bool  # interactive load was seen: the caller remembers ``now`` as the model's last busy time
    reason: str  # idle | interactive | settling | cold | backoff | full


@dataclass(frozen=True, slots=True)
class Counters:
    """One model group's admission counters, and what of them is this runner's own items."""

    in_flight: int  # Admission.in_flight (interactive and batch together)
    queued: int  # Admission.queued
    low_queued: int  # Admission.depths()[LOW]
    ours_in_flight: int  # batch items of this group inside the proxy right now


def interactive(groups: Iterable[Counters]) -> tuple[int, int]:
    """(waiting, in flight) of interactive requests over ``groups``: each group's counters less its batch items
    (a batch item that waits counts at the low level, so at most ``low_queued`` of the waiters are ours)."""
    waiting = in_flight = 0
    for g in groups:
        waiting += max(0, g.queued - min(g.ours_in_flight, g.low_queued))
        in_flight += max(0, g.in_flight - g.ours_in_flight)
    return waiting, in_flight


def decide(load: Load, knobs: Knobs, *, now: float, last_busy: float | None, hold_until: float | None = None) -> Decision:
    if load.interactive_waiting > 0 or load.interactive_in_flight >= knobs.pause_at_in_flight:
        return Decision(0, True, "interactive")
    if hold_until is not None and now < hold_until:
        return Decision(0, False, "backoff")
    if last_busy is not None and now - last_busy < knobs.resume_after_s:
        return Decision(0, False, "settling")
    if load.residency is Residency.cold_evicts:
        return Decision(0, False, "cold")
    limit = 1 if load.residency is Residency.cold_fits else knobs.concurrency
    if last_busy is not None and knobs.ramp_s > 0 and limit > 1:
        doublings = (now - last_busy - knobs.resume_after_s) / knobs.ramp_s
        if doublings < 16:
            limit = min(limit, 2 ** max(0, int(doublings)))
    room = limit - load.batch_running
    if room <= 0:
        return Decision(0, False, "full")
    return Decision(room, False, "idle")
