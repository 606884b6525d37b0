"""The effect around the limiter: what the request path and the router call.

``RateGuard`` turns a refused ``Decision`` into ``RateLimitedError`` (429, ``Retry-After``, OpenAI's
``x-ratelimit-*`` headers), applies the fail-open/closed choice when the limiter's store is
unreachable, and settles reservations without letting a limiter failure fail a request that was
already served. Token estimates (pure) live here too: charged at admission, settled with usage.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

from modelyard.errors import RateLimitedError
from modelyard.limits.base import Decision, Limit, Limiter, LimiterUnavailableError, Reservation
from modelyard.observability.metrics import Metrics

log = logging.getLogger("modelyard.limits")

Scopes = Sequence[tuple[str, Limit]]


def estimate_tokens(data: Mapping[str, Any], body_bytes: int, default_completion: int) -> int:
    """Tokens to charge before the response: the prompt at ~4 bytes a token (an over-estimate for
    JSON, so settling mostly refunds) plus the completion the client allows, ``n`` times."""
    prompt = (body_bytes + 3) // 4
    cap = data.get("max_completion_tokens", data.get("max_tokens"))
    completion = cap if isinstance(cap, int) and not isinstance(cap, bool) and cap >= 0 else default_completion
    n = data.get("n", 1)
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        n = 1
    if "messages" not in data and "prompt" not in data:  # embeddings, moderations, classifications
        completion = 0
    return prompt + completion * min(n, 128)


class RateGuard:
    def __init__(
        self, limiter: Limiter, *, fail_open: bool = True, clock: Any = time.monotonic, metrics: Metrics | None = None
    ) -> None:
        self.limiter = limiter
        self._metrics = metrics
        self._fail_open = fail_open
        self._clock = clock
        self._last_warn = float("-inf")
        self.unavailable = 0  # decisions made without the limiter (fail-open), for metrics

    async def admit(
        self, scopes: Scopes, estimated_tokens: int, *, model: str = ""
    ) -> tuple[Decision | None, Reservation | None]:
        """Admit and charge every scope, or raise ``RateLimitedError`` naming the limit."""
        decision, reservation = await self.check(scopes, estimated_tokens)
        if decision is not None and not decision.allowed:
            if self._metrics is not None:
                kind = (decision.which or "?").partition(":")[0]
                self._metrics.rate_limited.labels(model, kind).inc()
            raise _refusal(decision, scopes, estimated_tokens)
        return decision, reservation

    async def check(self, scopes: Scopes, estimated_tokens: int) -> tuple[Decision | None, Reservation | None]:
        """Like ``admit`` but a refusal is returned, not raised; ``(None, None)`` when the limiter is
        unavailable and the guard fails open."""
        try:
            return await self.limiter.acquire(scopes, estimated_tokens)
        except LimiterUnavailableError as exc:
            self._unavailable(exc)
            return None, None

    async def settle(self, reservation: Reservation | None, actual_tokens: int) -> None:
        if reservation is None or reservation.settled:
            return
        try:
            await self.limiter.settle(reservation, max(0, actual_tokens))
        except LimiterUnavailableError as exc:  # the request is served; only the count is off
            self.unavailable += 1
            if self._metrics is not None:
                self._metrics.limiter_unavailable.inc()
            self._warn(exc)

    def _unavailable(self, exc: LimiterUnavailableError) -> None:
        self.unavailable += 1
        if self._metrics is not None:
            self._metrics.limiter_unavailable.inc()
        self._warn(exc)
        if not self._fail_open:
            raise LimiterUnavailableError(
                "rate limits cannot be checked right now; retry shortly", retry_after_s=1.0
            ) from exc

    def _warn(self, exc: Exception) -> None:
        now = self._clock()
        if now - self._last_warn > 10.0:
            self._last_warn = now
            log.warning("rate limiter unavailable (%s); %s", exc, "admitting" if self._fail_open else "refusing")


def _refusal(decision: Decision, scopes: Scopes, estimated_tokens: int) -> RateLimitedError:
    which = decision.which or "a rate limit"
    scope, _, dim = which.rpartition(" ")
    limit = dict(scopes).get(scope)
    kind, _, name = scope.partition(":")
    subject = {"key": "this API key", "model": f"model {name!r}", "deployment": f"deployment {name!r}"}.get(kind, scope)
    what = "requests per minute" if dim == "rpm" else "tokens per minute"
    message = f"Rate limit reached for {subject}: {what} ({dim}). Retry after {decision.retry_after_s:.1f}s."
    if dim == "tpm" and limit is not None and limit.tpm is not None and estimated_tokens > limit.tpm:
        message = (f"Request too large for {subject}: about {estimated_tokens} tokens (prompt + max_tokens) "
                   f"exceed its limit of {limit.tpm} {what}; lower max_tokens or shorten the prompt.")
    return RateLimitedError(message, retry_after_s=decision.retry_after_s, headers=decision.headers)
