"""The last N routing outcomes worth looking at: auto-routing decisions and cascade hops.

A bounded ring (``collections.deque(maxlen=N)``) owned by the recorder, which adds an entry for
every finished request whose outcome carries a route (``model: "auto"``) or more than one hop (a
cascade that escalated). ``/admin/routing`` and the operator UI read it. Nothing here touches the
network or a clock of its own: the recorder passes the wall-clock time in. Adding is O(1) and the
ring holds at most ``capacity`` small dicts, so the request path pays ~a microsecond, only for
the requests that qualify.
"""

from __future__ import annotations

import datetime as dt
from collections import deque
from typing import Any

DEFAULT_CAPACITY = 200


class RecentOutcomes:
    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self._ring: deque[dict[str, Any]] = deque(maxlen=capacity)
        self.seen = 0  # qualifying outcomes ever added (the ring keeps the last ``capacity``)

    @property
    def capacity(self) -> int:
        assert self._ring.maxlen is not None
        return self._ring.maxlen

    @staticmethod
    def qualifies(outcome: Any) -> bool:
        """Is this outcome (accounting.outcome.Outcome) a routing decision worth keeping?"""
        return outcome is not None and (outcome.route is not None or len(outcome.hops) > 1)

    def add(self, ts: dt.datetime, request_id: str, outcome: Any, elapsed_s: float) -> None:
        """Keep one outcome (the caller checked ``qualifies``)."""
        self.seen += 1
        self._ring.append({
            "ts": ts.isoformat(),
            "request_id": request_id,
            "model": outcome.model,
            "route": outcome.route,
            "status": outcome.status,
            "latency_ms": round(elapsed_s * 1000, 3),
            "answered_by": outcome.hops[-1].model if outcome.hops else None,
            "hops": [
                {"model": h.model, "deployment": h.deployment, "status": h.status, "note": h.note,
                 "prompt_tokens": h.prompt_tokens, "completion_tokens": h.completion_tokens, "fallbacks": h.fallbacks}
                for h in outcome.hops
            ],
        })

    def items(self, limit: int | None = None) -> list[dict[str, Any]]:
        """Newest first, at most ``limit``."""
        out = list(reversed(self._ring))
        return out if limit is None else out[:limit]
