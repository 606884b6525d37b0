"""Circuit breaker per deployment: closed → open → half-open → closed.

Open after ``allowed_fails`` failures within a sliding ``window_s``; an open deployment gets no
traffic; after ``cooldown_s`` exactly one probe is let through (half-open); the probe's success
closes the breaker, its failure re-opens it for another cooldown. The clock is injected, so tests
drive time by hand and never sleep.

Every admission returns a ``Ticket`` that the caller hands back with the outcome. Only the probe's
ticket can close, re-open or free a half-open breaker: a request admitted before the breaker
tripped (a long stream, say) that ends later says nothing about the deployment *now*, so its
outcome is ignored once the breaker has left the closed state.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from enum import IntEnum

from modelyard.config.schema import BreakerConfig

Clock = Callable[[], float]


class BreakerState(IntEnum):
    closed = 0
    half_open = 1
    open = 2


class Ticket:
    """Proof of one admission; the probe's ticket is unique, closed-state tickets are shared."""

    __slots__ = ("probe",)

    def __init__(self, probe: bool) -> None:
        self.probe = probe

    def __repr__(self) -> str:
        return "Ticket(probe)" if self.probe else "Ticket(closed)"


CLOSED_TICKET = Ticket(probe=False)


class CircuitBreaker:
    """Owns one deployment's breaker state; every decision is made inside (no check-then-act)."""

    __slots__ = ("_cfg", "_clock", "_fails", "_state", "_opened_at", "_probe", "on_change")

    def __init__(self, cfg: BreakerConfig, clock: Clock, on_change: Callable[[BreakerState], None] | None = None) -> None:
        self._cfg = cfg
        self._clock = clock
        self._fails: deque[float] = deque()
        self._state = BreakerState.closed
        self._opened_at = 0.0
        self._probe: Ticket | None = None  # the half-open probe in flight
        self.on_change = on_change

    @property
    def state(self) -> BreakerState:
        return self._state

    def available(self) -> bool:
        """Whether ``try_acquire`` would admit a request now (no state change)."""
        if self._state is BreakerState.closed:
            return True
        if self._state is BreakerState.open:
            return self._clock() - self._opened_at >= self._cfg.cooldown_s
        return self._probe is None

    def retry_after_s(self) -> float:
        """Seconds until this breaker would next admit a probe (0 when it admits now)."""
        if self._state is BreakerState.open:
            return max(0.0, self._opened_at + self._cfg.cooldown_s - self._clock())
        return 0.0

    def try_acquire(self) -> Ticket | None:
        """Admit one request (None: refused), turning an expired open breaker into half-open and
        handing out its one probe ticket."""
        state = self._state
        if state is BreakerState.closed:
            return CLOSED_TICKET
        if state is BreakerState.open:
            if self._clock() - self._opened_at < self._cfg.cooldown_s:
                return None
            self._set(BreakerState.half_open)
        if self._probe is not None:
            return None
        self._probe = Ticket(probe=True)
        return self._probe

    def record_success(self, ticket: Ticket) -> None:
        if ticket is self._probe:
            self._probe = None
            self._fails.clear()
            self._set(BreakerState.closed)

    def record_failure(self, ticket: Ticket) -> None:
        now = self._clock()
        if self._state is BreakerState.closed:
            fails = self._fails
            fails.append(now)
            horizon = now - self._cfg.window_s
            while fails and fails[0] < horizon:
                fails.popleft()
            if len(fails) >= self._cfg.allowed_fails:
                self._trip(now)
        elif ticket is self._probe:
            self._probe = None
            self._trip(now)

    def record_abandoned(self, ticket: Ticket) -> None:
        """The request ended with no verdict (cancelled by its client): free the probe slot if it
        was the probe."""
        if ticket is self._probe:
            self._probe = None

    def _trip(self, now: float) -> None:
        self._opened_at = now
        self._fails.clear()
        self._set(BreakerState.open)

    def _set(self, state: BreakerState) -> None:
        if state is not self._state:
            self._state = state
            if self.on_change is not None:
                self.on_change(state)


class SupervisedBreaker:
    """The breaker of a deployment whose health has an owner already: a local model (the memory
    manager) or a managed engine process (its supervisor). A crash, a restart or a load is not an
    upstream failure: the owner knows when the engine is back, and requests wait for it (bounded
    by the queue TTL) instead of being refused for a cooldown. Always closed; same interface."""

    __slots__ = ("on_change",)

    def __init__(self) -> None:
        self.on_change = None

    @property
    def state(self) -> BreakerState:
        return BreakerState.closed

    def available(self) -> bool:
        return True

    def retry_after_s(self) -> float:
        return 0.0

    def try_acquire(self) -> Ticket:
        return CLOSED_TICKET

    def record_success(self, ticket: Ticket) -> None:
        pass

    def record_failure(self, ticket: Ticket) -> None:
        pass

    def record_abandoned(self, ticket: Ticket) -> None:
        pass
