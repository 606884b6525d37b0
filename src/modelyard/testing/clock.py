"""A hand-driven clock for tests of anything that takes an injected clock (breakers, the memory
manager's keep-alive, limiters): time moves only when the test says so, so nothing sleeps."""

from __future__ import annotations


class ManualClock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, dt: float) -> None:
        self.t += dt
