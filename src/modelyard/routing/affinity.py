"""Session affinity: every turn of a conversation goes to the model and deployment of its first.

A bounded table (LRU past ``max_sessions``) of session id → (model, deployment), each entry living
``ttl_s`` after its last use; the clock is injected. The table only remembers; the proxy decides
what a pin means (``auto`` skips its classifier, the router prefers the pinned deployment) and
says so when the pinned deployment is gone and the session moved.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from modelyard.config.routing import AffinityConfig


@dataclass(frozen=True, slots=True)
class Pin:
    model: str  # the model group that answered the session's first turn
    deployment: str  # its deployment key
    expires: float


class SessionTable:
    def __init__(self, cfg: AffinityConfig, clock: Callable[[], float]) -> None:
        self._ttl = cfg.ttl_s
        self._max = cfg.max_sessions
        self._clock = clock
        self._pins: OrderedDict[str, Pin] = OrderedDict()

    def __len__(self) -> int:
        return len(self._pins)

    def get(self, session: str) -> Pin | None:
        pin = self._pins.get(session)
        if pin is None:
            return None
        if pin.expires <= self._clock():
            del self._pins[session]
            return None
        return pin

    def put(self, session: str, model: str, deployment: str) -> None:
        """Pin (or re-pin) ``session``; its entry lives ``ttl_s`` from now."""
        pins = self._pins
        now = self._clock()
        pins[session] = Pin(model, deployment, now + self._ttl)
        pins.move_to_end(session)
        # Entries are in order of last use, and so of expiry: drop the expired and the overflow
        # from the front (amortised O(1) per put).
        while len(pins) > self._max or next(iter(pins.values())).expires <= now:
            pins.popitem(last=False)


def session_of(cfg: AffinityConfig, header: bytes | None, data: dict) -> str | None:
    """The conversation's id: the configured header, else the body's ``user`` field (if enabled)."""
    if not cfg.enabled:
        return None
    if header:
        return header.decode("latin-1")[:256]
    if cfg.use_user_field:
        user = data.get("user")
        if isinstance(user, str) and user:
            return "user:" + user[:256]
    return None
