"""A batch's states and the moves between them (OpenAI's statuses), and the timestamp each move sets.

    validating ──► in_progress ──► finalizing ──► completed
        │  │            │  │
        │  └► failed    │  └──► expired        (the completion window ran out; what ran is kept)
        └──────────────►└──► cancelling ──► cancelled   (items running finish; the rest never run)

``failed`` is a batch that never ran: its file did not validate (duplicate custom ids, no request,
too many) or is gone. Items that fail do not fail the batch: they are counted in
``request_counts.failed`` and written to the error file. The store applies every move as a
conditional update (``WHERE status IN (sources)``), so a cancel racing the runner's completion has
exactly one winner, also across replicas sharing the database.
"""

from __future__ import annotations

from typing import Final

VALIDATING: Final = "validating"
IN_PROGRESS: Final = "in_progress"
FINALIZING: Final = "finalizing"
COMPLETED: Final = "completed"
FAILED: Final = "failed"
EXPIRED: Final = "expired"
CANCELLING: Final = "cancelling"
CANCELLED: Final = "cancelled"

MOVES: Final[dict[str, frozenset[str]]] = {
    VALIDATING: frozenset({IN_PROGRESS, FAILED, CANCELLING}),
    IN_PROGRESS: frozenset({FINALIZING, CANCELLING, EXPIRED}),
    FINALIZING: frozenset({COMPLETED}),
    CANCELLING: frozenset({CANCELLED}),
    COMPLETED: frozenset(),
    FAILED: frozenset(),
    EXPIRED: frozenset(),
    CANCELLED: frozenset(),
}
TERMINAL: Final = frozenset(s for s, dst in MOVES.items() if not dst)
OPEN: Final = tuple(s for s in MOVES if s not in TERMINAL)  # the runner's work list
CANCELLABLE: Final = frozenset({VALIDATING, IN_PROGRESS})
# The column that records when a batch entered each state (OpenAI's ``<state>_at``).
STAMP: Final[dict[str, str]] = {
    IN_PROGRESS: "in_progress_us", FINALIZING: "finalizing_us", COMPLETED: "completed_us", FAILED: "failed_us",
    EXPIRED: "expired_us", CANCELLING: "cancelling_us", CANCELLED: "cancelled_us",
}


def sources(dst: str) -> tuple[str, ...]:
    """The states a batch may be in to move to ``dst``."""
    return tuple(s for s, targets in MOVES.items() if dst in targets)


def can_move(src: str, dst: str) -> bool:
    return dst in MOVES.get(src, frozenset())
