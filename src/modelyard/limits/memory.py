"""The in-process limiter: one process, one event loop, the owner of its counters.

Every decision is made inside one synchronous call (no ``await`` between check and charge), so
concurrent requests on the loop cannot both take the last slot. For several gateway replicas use
``RedisLimiter``: per-process limits would multiply by the number of replicas.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from modelyard.limits.base import Bucket, Decision, Limit, Reservation, Window, allowed_headers, check_args, decide

Clock = Callable[[], float]


class _Scope:
    """One scope's buckets ``{index: [requests, tokens]}`` (indices ascending: the clock never goes
    back and charges go to the current bucket) and their running totals."""

    __slots__ = ("buckets", "requests", "tokens")

    def __init__(self) -> None:
        self.buckets: dict[int, list[int]] = {}
        self.requests = 0
        self.tokens = 0

    def expire(self, oldest: int) -> None:
        buckets = self.buckets
        while buckets:
            first = next(iter(buckets))
            if first >= oldest:
                return
            r, t = buckets.pop(first)
            self.requests -= r
            self.tokens -= t

    def add(self, idx: int, requests: int, tokens: int) -> None:
        slot = self.buckets.get(idx)
        if slot is None:
            self.buckets[idx] = [requests, tokens]
        else:
            slot[0] += requests
            slot[1] += tokens
        self.requests += requests
        self.tokens += tokens


class MemoryLimiter:
    """Sliding-window rpm/tpm over per-second buckets (see ``limits.base``); the clock must not go back.

    Each scope keeps running totals next to its buckets, so an admission that fits is a few integer
    comparisons per scope (the common case); only a refusal builds the bucket lists that ``decide``
    needs to say when room comes back.
    """

    __slots__ = ("_clock", "_window", "_scopes", "_swept")

    def __init__(self, clock: Clock = time.monotonic, *, window: Window | None = None) -> None:
        self._clock = clock
        self._window = window or Window()
        self._scopes: dict[str, _Scope] = {}
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
        states = []
        fits = True
        for name, limit in scopes:
            state = self._scopes.get(name)
            if state is None:
                state = self._scopes[name] = _Scope()
            state.expire(oldest)
            states.append(state)
            if (limit.rpm is not None and state.requests + 1 > limit.rpm) or (
                limit.tpm is not None and state.tokens + estimated_tokens > limit.tpm
            ):
                fits = False
        if fits and estimated_tokens > 0:
            decision = Decision(True, 0.0, None, allowed_headers(
                scopes, [(st.requests, st.tokens) for st in states], estimated_tokens, now, window))
        else:
            usage: list[list[Bucket]] = [[(idx, r, t) for idx, (r, t) in st.buckets.items()] for st in states]
            decision = decide(scopes, usage, estimated_tokens, now, window)
        if not decision.allowed:
            return decision, None
        for state in states:
            state.add(cur, 1, estimated_tokens)
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
            state = self._scopes.get(name)
            if state is None:
                state = self._scopes[name] = _Scope()
            if delta < 0:
                slot = state.buckets.get(reservation.bucket)
                if slot is not None and reservation.bucket >= cur - self._window.n:
                    refund = min(slot[1], -delta)
                    slot[1] -= refund
                    state.tokens -= refund
            else:
                state.add(cur, 0, delta)

    async def aclose(self) -> None:
        self._scopes.clear()

    def _sweep(self, cur: int) -> None:
        """Once a window, forget scopes with nothing left in it (keys come and go)."""
        if cur - self._swept < self._window.n:
            return
        self._swept = cur
        oldest = cur - self._window.n
        for name in [n for n, st in self._scopes.items() if not st.buckets or next(reversed(st.buckets)) < oldest]:
            del self._scopes[name]
