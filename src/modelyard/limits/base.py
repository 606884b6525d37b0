"""The limiter protocol, its value types, and the pure decision both implementations share.

A request is admitted only if *every* scope it names (its key, its public model, its deployment, ...)
has room for one more request and for its estimated tokens in the sliding window; admitted, it is
charged to all of them; refused, to none. Tokens are charged with the estimate at ``acquire`` and
corrected with the real usage at ``settle``.

The window: ``window_s`` (60 s) is split into buckets of ``bucket_s`` (1 s). A decision at time
``now`` counts the buckets ``cur - n .. cur`` (``cur = floor(now / bucket_s)``, ``n = window_s /
bucket_s``), which cover between ``window_s`` and ``window_s + bucket_s`` seconds back. Hence:

* never too many: in any interval shorter than ``window_s`` at most ``rpm`` requests are admitted
  (exact; no overshoot) and at most ``tpm`` estimated tokens are charged;
* at most ``bucket_s`` late: a request is refused only if ``rpm`` requests were admitted in the last
  ``window_s + bucket_s`` seconds, i.e. capacity comes back at most ``bucket_s`` after an exact
  sliding log would give it back.

``decide`` is pure: the in-memory limiter calls it on its own state, the Redis limiter on the
snapshot its script returns (the script itself makes the same admit/refuse test atomically).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from modelyard.errors import ModelyardError

# One bucket of a scope: (bucket index, requests, tokens), buckets sorted by index.
Bucket = tuple[int, int, int]


class LimiterUnavailableError(ModelyardError):
    """The limiter's store (Redis) cannot be reached or failed; the caller decides whether to fail
    open (admit without limiting) or closed (refuse with this 503)."""

    status = 503
    type = "server_error"
    code = "rate_limiter_unavailable"

    def __init__(self, message: str, *, retry_after_s: float = 1.0, **kw: Any) -> None:
        super().__init__(message, retry_after_s=retry_after_s, **kw)  # a refusal always says when to retry


@dataclass(frozen=True, slots=True)
class Limit:
    """Requests and tokens per window (a minute); ``None`` means unlimited."""

    rpm: int | None = None
    tpm: int | None = None

    def __post_init__(self) -> None:
        for name in ("rpm", "tpm"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 0):
                raise ValueError(f"Limit.{name} must be a non-negative int or None, got {value!r}")


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    retry_after_s: float  # 0 when allowed; > 0 when refused
    which: str | None  # the limit that refused, e.g. "key:ab12 rpm"; None when allowed
    headers: dict[str, str] = field(default_factory=dict)  # OpenAI's x-ratelimit-* headers


@dataclass(eq=False, slots=True)
class Reservation:
    """What one admitted request was charged: handed back to ``settle`` (once; later calls are no-ops)."""

    scopes: tuple[str, ...]
    bucket: int
    estimated_tokens: int
    settled: bool = False


class Limiter(Protocol):
    async def acquire(self, scopes: Sequence[tuple[str, Limit]], estimated_tokens: int) -> tuple[Decision, Reservation | None]:
        """Admit and charge every scope, or refuse and charge none (the ``Reservation`` is None)."""
        ...

    async def settle(self, reservation: Reservation, actual_tokens: int) -> None:
        """Replace the reservation's token estimate by the real usage."""
        ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Window:
    window_s: float = 60.0
    bucket_s: float = 1.0

    def __post_init__(self) -> None:
        n = self.window_s / self.bucket_s
        if self.bucket_s <= 0 or n < 1 or abs(n - round(n)) > 1e-9:
            raise ValueError(f"window_s ({self.window_s}) must be a positive whole multiple of bucket_s ({self.bucket_s})")

    @property
    def n(self) -> int:
        return round(self.window_s / self.bucket_s)

    def bucket(self, now: float) -> int:
        return math.floor(now / self.bucket_s)

    def oldest(self, now: float) -> int:
        """The oldest bucket index still counted at ``now``."""
        return self.bucket(now) - self.n

    def expiry(self, idx: int) -> float:
        """The time at which bucket ``idx`` stops being counted."""
        return (idx + self.n + 1) * self.bucket_s

    @property
    def ttl_ms(self) -> int:
        """How long a store keeps a scope after its last charge: about two windows."""
        return math.ceil(2 * (self.window_s + self.bucket_s) * 1000)


def check_args(scopes: Sequence[tuple[str, Limit]], tokens: int) -> None:
    if not isinstance(tokens, int) or tokens < 0:
        raise ValueError(f"token counts must be non-negative ints, got {tokens!r}")
    names = [name for name, _ in scopes]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate scopes: {names}")


def decide(
    scopes: Sequence[tuple[str, Limit]],
    usage: Sequence[Sequence[Bucket]],
    estimated_tokens: int,
    now: float,
    window: Window,
) -> Decision:
    """Admit or refuse a request given each scope's counted buckets (pre-charge) at ``now``."""
    allowed = True
    retry, which = 0.0, None
    totals: list[tuple[int, int]] = []
    for (name, limit), buckets in zip(scopes, usage, strict=True):
        used_r = sum(b[1] for b in buckets)
        used_t = sum(b[2] for b in buckets)
        totals.append((used_r, used_t))
        for dim, cap, used, need, col in (("rpm", limit.rpm, used_r, 1, 1), ("tpm", limit.tpm, used_t, estimated_tokens, 2)):
            if cap is not None and used + need > cap:
                allowed = False
                wait = _time_until_room(buckets, col, used, need, cap, now, window)
                if which is None or wait > retry:
                    retry, which = wait, f"{name} {dim}"
    if allowed and estimated_tokens > 0:
        headers = allowed_headers(scopes, totals, estimated_tokens, now, window)
    else:
        headers = _headers(scopes, usage, totals, estimated_tokens, allowed, now, window)
    return Decision(allowed, retry if not allowed else 0.0, which, headers)


def allowed_headers(
    scopes: Sequence[tuple[str, Limit]],
    totals: Sequence[tuple[int, int]],
    estimated_tokens: int,
    now: float,
    window: Window,
) -> dict[str, str]:
    """``_headers`` for an admitted request charging ``estimated_tokens > 0``: the charge lands in
    the current bucket, so every limited dimension resets when that bucket leaves the window, and
    only the totals (pre-charge, per scope) matter — no bucket lists needed."""
    headers: dict[str, str] = {}
    reset = format_duration(window.expiry(window.bucket(now)) - now)
    for col, need, suffix in ((0, 1, "requests"), (1, estimated_tokens, "tokens")):
        best_remaining = best_cap = -1
        for (_, limit), used in zip(scopes, totals, strict=True):
            cap = limit.rpm if col == 0 else limit.tpm
            if cap is None:
                continue
            remaining = max(0, cap - used[col] - need)
            if best_cap < 0 or remaining < best_remaining:
                best_remaining, best_cap = remaining, cap
        if best_cap >= 0:
            headers[f"x-ratelimit-limit-{suffix}"] = str(best_cap)
            headers[f"x-ratelimit-remaining-{suffix}"] = str(best_remaining)
            headers[f"x-ratelimit-reset-{suffix}"] = reset
    return headers


def _time_until_room(buckets: Sequence[Bucket], col: int, used: int, need: int, cap: int, now: float, window: Window) -> float:
    if need > cap:
        return window.window_s  # can never fit (e.g. a prompt larger than tpm): retrying will not help
    freed = 0
    for b in buckets:
        freed += b[col]
        if used - freed + need <= cap:
            return max(window.expiry(b[0]) - now, 1e-3)
    return window.window_s  # unreachable: all freed means need <= cap


def _headers(
    scopes: Sequence[tuple[str, Limit]],
    usage: Sequence[Sequence[Bucket]],
    totals: Sequence[tuple[int, int]],
    estimated_tokens: int,
    allowed: bool,
    now: float,
    window: Window,
) -> dict[str, str]:
    """The most constraining scope for each of requests and tokens, after this request's charge."""
    headers: dict[str, str] = {}
    cur = window.bucket(now)
    for dim, col, need, suffix in (("rpm", 1, 1, "requests"), ("tpm", 2, estimated_tokens, "tokens")):
        best: tuple[int, int, float] | None = None  # remaining, cap, reset
        for (_, limit), buckets, used in zip(scopes, usage, totals, strict=True):
            cap = limit.rpm if dim == "rpm" else limit.tpm
            if cap is None:
                continue
            charged = need if allowed else 0
            remaining = max(0, cap - used[col - 1] - charged)
            newest = cur if charged else max((b[0] for b in buckets if b[col]), default=None)
            reset = window.expiry(newest) - now if newest is not None else 0.0
            if best is None or remaining < best[0]:
                best = (remaining, cap, reset)
        if best is not None:
            headers[f"x-ratelimit-limit-{suffix}"] = str(best[1])
            headers[f"x-ratelimit-remaining-{suffix}"] = str(best[0])
            headers[f"x-ratelimit-reset-{suffix}"] = format_duration(best[2])
    return headers


def format_duration(seconds: float) -> str:
    """Like Go's ``time.Duration.String`` (what OpenAI sends): "120ms", "6s", "6.5s", "1m0s"."""
    ms = round(seconds * 1000)
    if ms <= 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    minutes, rest = divmod(ms, 60_000)
    hours, minutes = divmod(minutes, 60)
    secs = f"{rest / 1000:.3f}".rstrip("0").rstrip(".")
    return (f"{hours}h" if hours else "") + (f"{minutes}m" if minutes or hours else "") + f"{secs}s"
