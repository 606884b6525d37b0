"""The in-process limiter: one process, one event loop, the owner of its counters.

Every decision is made inside one synchronous call (no ``await`` between check and charge), so
concurrent requests on the loop cannot both take the last slot. For several gateway replicas use
``RedisLimiter``: per-process limits would multiply by the number of replicas.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from modelyard.limits.base import Bucket, Decision, Limit, Reservation, Window, check_args, decide

Clock = Callable[[], float]


class MemoryLimiter:
    """Sliding-window rpm/tpm over per-second buckets (see ``limits.base``); the clock must not go back."""

    __slots__ = ("_clock", "_window", "_scopes", "_swept")

    def __init__(self, clock: Clock = time.monotonic, *, window: Window | None = None) -> None:
        self._clock = clock
        self._window = window or Window()
        # scope → {bucket index: [requests, tokens]}, indices ascending (insertion order, clock monotonic)
        self._scopes: dict[str, dict[int, list[int]]] = {}
        self._swept = self._window.bucket(clock())

    async def acquire(self, scopes: Sequence[tuple[str, Limit]], estimated_tokens: int) -> tuple[Decision, Reservation | None]:
        return self.acquire_now(scopes, estimated_tokens)

    def acquire_now(self, scopes: Sequence[tuple[str, Limit]], estimated_tokens: int) -> tuple[Decision, Reservation | None]:
        """``acquire`` without the coroutine: the whole check-and-charge in one synchronous step."""
        check_args(scopes, estimated_tokens)
        now = self._clock()
        window = self._window
        cur = window.bucket(now)
        oldest = cur - window.n
        self._sweep(cur)
        states = [self._scopes.setdefault(name, {}) for name, _ in scopes]
        usage: list[list[Bucket]] = []
        for state in states:
            for idx in [i for i in state if i < oldest]:
                del state[idx]
            usage.append([(idx, r, t) for idx, (r, t) in state.items()])
        decision = decide(scopes, usage, estimated_tokens, now, window)
        if not decision.allowed:
            return decision, None
        for state in states:
            slot = state.get(cur)
            if slot is None:
                state[cur] = [1, estimated_tokens]
            else:
                slot[0] += 1
                slot[1] += estimated_tokens
        return decision, Reservation(tuple(name for name, _ in scopes), cur, estimated_tokens)

    async def settle(self, reservation: Reservation, actual_tokens: int) -> None:
        self.settle_now(reservation, actual_tokens)

    def settle_now(self, reservation: Reservation, actual_tokens: int) -> None:
        """Refund an over-estimate from the bucket it was charged to (if still counted); charge an
        under-estimate to the current bucket (the tokens became known now)."""
        check_args((), actual_tokens)
        if reservation.settled:
            return
        reservation.settled = True
        delta = actual_tokens - reservation.estimated_tokens
        if delta == 0:
            return
        cur = self._window.bucket(self._clock())
        for name in reservation.scopes:
            state = self._scopes.setdefault(name, {})
            if delta < 0:
                slot = state.get(reservation.bucket)
                if slot is not None and reservation.bucket >= cur - self._window.n:
                    slot[1] -= min(slot[1], -delta)
            else:
                slot = state.get(cur)
                if slot is None:
                    state[cur] = [0, delta]
                else:
                    slot[1] += delta

    async def aclose(self) -> None:
        self._scopes.clear()

    def _sweep(self, cur: int) -> None:
        """Once a window, forget scopes with nothing left in it (keys come and go)."""
        if cur - self._swept < self._window.n:
            return
        self._swept = cur
        oldest = cur - self._window.n
        for name in [name for name, state in self._scopes.items() if not state or next(reversed(state)) < oldest]:
            del self._scopes[name]
