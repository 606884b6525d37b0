"""``RestartPolicy``: crash-loop protection for one managed model (see docs/design/engines.md).

Owned by whoever creates the model's ``ProcessEngine``s (one per load) and handed to each, so the
count survives the engine objects.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

from modelyard.engines.spec import ProcessSpec
from modelyard.errors import ModelLoadError

Clock = Callable[[], float]


class RestartPolicy:
    """Crash-loop protection for one model, shared by all its ProcessEngines (one per load).

    Every failure (a load that did not get ready, an exit or failed health of a ready process)
    is recorded with its time; failures older than ``window_s`` are forgotten. With ``n`` recent
    failures the next start waits ``backoff_s * 2**(n-1)`` (capped) after the last one: a start
    asked for earlier fails fast with ``retry_after_s`` rather than sleeping, because the memory
    manager runs loads under its residency lock and a sleeping load would stall every model. After
    ``max_restarts`` recent failures the model **stays down**: every load raises, saying why,
    until ``reset()`` (an operator's explicit load).
    """

    def __init__(self, *, max_restarts: int = 5, backoff_s: float = 1.0, backoff_cap_s: float = 60.0,
                 window_s: float = 600.0, clock: Clock = time.monotonic) -> None:
        if max_restarts < 1:
            raise ValueError("max_restarts must be >= 1")
        self.max_restarts, self.backoff_s, self.backoff_cap_s, self.window_s = max_restarts, backoff_s, backoff_cap_s, window_s
        self._clock = clock
        self._lock = threading.Lock()
        self._failures: deque[float] = deque()
        self.starts = 0
        self.last_reason: str | None = None
        self.gave_up: str | None = None  # set once the model stays down

    @classmethod
    def for_spec(cls, spec: ProcessSpec, clock: Clock = time.monotonic) -> RestartPolicy:
        return cls(max_restarts=spec.max_restarts, backoff_s=spec.restart_backoff_s,
                   backoff_cap_s=spec.restart_backoff_cap_s, window_s=spec.restart_window_s, clock=clock)

    @property
    def restarts(self) -> int:
        """Starts after the first one."""
        return max(0, self.starts - 1)

    def recent_failures(self) -> int:
        with self._lock:
            return len(self._prune())

    def delay_s(self) -> float:
        """Seconds to wait before the next start may begin (0: now)."""
        with self._lock:
            recent = self._prune()
            if not recent:
                return 0.0
            wait = min(self.backoff_cap_s, self.backoff_s * 2 ** (len(recent) - 1))
            return max(0.0, recent[-1] + wait - self._clock())

    def check(self, name: str) -> None:
        """Raise ``ModelLoadError`` if ``name`` must not start now (backing off, or given up)."""
        if self.gave_up is not None:
            raise ModelLoadError(self.gave_up)
        wait = self.delay_s()
        if wait > 0:
            n = self.recent_failures()
            raise ModelLoadError(
                f"engine {name!r} is restarting after {n} failure(s); next start in {wait:.1f}s "
                f"(last failure: {self.last_reason})", retry_after_s=wait)

    def started(self) -> None:
        with self._lock:
            self.starts += 1

    def failed(self, name: str, reason: str) -> bool:
        """Record a failure; True if the model now stays down."""
        with self._lock:
            self._failures.append(self._clock())
            self.last_reason = reason
            n = len(self._prune())
            if n >= self.max_restarts and self.gave_up is None:
                self.gave_up = (
                    f"engine {name!r} stays down: it failed {n} times within {self.window_s:g}s "
                    f"(max_restarts={self.max_restarts}); last failure: {reason}. Fix the cause, then load it "
                    "again explicitly (the restart policy is reset by an operator's load)")
            return self.gave_up is not None

    def reset(self) -> None:
        with self._lock:
            self._failures.clear()
            self.gave_up = self.last_reason = None

    def _prune(self) -> deque[float]:
        horizon = self._clock() - self.window_s
        while self._failures and self._failures[0] < horizon:
            self._failures.popleft()
        return self._failures
