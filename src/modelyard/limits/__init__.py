"""rpm/tpm rate limiting: one ``Limiter`` protocol, an in-memory and a Redis implementation.

``RedisLimiter`` is imported lazily so that ``hiredis`` (the ``redis`` extra: the parser of
``limits.resp``, modelyard's own Redis client) stays an optional dependency.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from modelyard.limits.base import Decision, Limit, Limiter, LimiterUnavailableError, Reservation, Window, format_duration
from modelyard.limits.memory import MemoryLimiter

if TYPE_CHECKING:
    from modelyard.limits.redis import RedisLimiter

__all__ = [
    "Decision",
    "Limit",
    "Limiter",
    "LimiterUnavailableError",
    "MemoryLimiter",
    "RedisLimiter",
    "Reservation",
    "Window",
    "format_duration",
]


def __getattr__(name: str) -> Any:
    if name == "RedisLimiter":
        from modelyard.limits.redis import RedisLimiter

        return RedisLimiter
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
