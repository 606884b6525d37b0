"""Who is calling: the master key, a virtual key, or (without keys configured) anyone on loopback.

``Gate`` answers each request from memory — a constant-time compare for the master key, the
``KeyRing`` cache for virtual keys, the budget counters — and never queries the database per
request (a key unknown to this replica triggers at most one bounded refresh, see ``KeyRing``).
Errors never contain key material: a known key is named by its public id only.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass

from modelyard.accounting.pricing import from_nano, to_nano
from modelyard.api.http import Request
from modelyard.auth.keys import VirtualKey
from modelyard.auth.ring import KeyRing
from modelyard.errors import AuthenticationError, BudgetExceededError, ModelyardError, PermissionDeniedError
from modelyard.limits.budget import Budgets, period_of

_LOOPBACK = ("127.0.0.1", "::1", "localhost")
WallClock = Callable[[], dt.datetime]


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class KeyStoreUnavailableError(ModelyardError):
    status = 503
    type = "server_error"
    code = "key_store_unavailable"


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller of one request."""

    key: VirtualKey | None  # a virtual key; None for the master key or an open (keyless) server
    admin: bool

    @property
    def key_id(self) -> str | None:
        """What spend rows record: the virtual key's public id, "master", or None (no keys)."""
        if self.key is not None:
            return self.key.id
        return "master" if self.admin else None

    @property
    def team(self) -> str | None:
        return self.key.team_id if self.key is not None else None

    @property
    def priority(self) -> str | None:
        """The key's priority level name ("high"/"normal"/"low"); None: the routing rules decide."""
        return self.key.priority if self.key is not None else None

    @property
    def may_set_priority(self) -> bool:
        """May this caller's requests set the ``x-priority`` header? The master key and a server
        without keys (everyone on loopback is trusted alike) may; a virtual key only when made with
        ``allow_priority_header``."""
        return self.key is None or self.key.allow_priority_header

    def allows(self, *names: str) -> bool:
        """May this caller use a model known by any of ``names`` (requested name, canonical name)?"""
        if self.key is None or not self.key.models:
            return True
        return any(n in self.key.models for n in names)


OPEN = Principal(None, admin=False)
MASTER = Principal(None, admin=True)


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


class Gate:
    """Authentication, expiry/revocation, and the budget check of each request."""

    def __init__(
        self,
        master_key: str | None,
        ring: KeyRing | None,
        budgets: Budgets | None,
        *,
        now: WallClock = _utcnow,
        on_budget_exceeded: Callable[[], None] | None = None,
    ) -> None:
        self._master = _digest(master_key) if master_key else None
        self._on_budget_exceeded = on_budget_exceeded
        self._ring = ring
        self._budgets = budgets
        self._now = now

    @property
    def enabled(self) -> bool:
        return self._master is not None

    async def client(self, req: Request) -> Principal:
        """The caller of a /v1/* request; raises 401 / 429 (budget) / 503 (keys not loaded yet)."""
        if self._master is None:
            return OPEN
        token = _bearer(req)
        if hmac.compare_digest(_digest(token), self._master):
            return MASTER
        key = await self._virtual(token)
        await self._check_budget(key)
        return Principal(key, admin=False)

    async def admin(self, req: Request) -> Principal:
        """The caller of an admin endpoint: the master key (403 for a virtual key); without keys
        configured, only loopback clients."""
        if self._master is None:
            client = req.scope.get("client")
            if not client or client[0] not in _LOOPBACK:
                raise PermissionDeniedError(
                    "the admin API answers loopback clients only when no master key is configured (auth.master_key)"
                )
            return MASTER
        token = _bearer(req)
        if hmac.compare_digest(_digest(token), self._master):
            return MASTER
        key = await self._virtual(token)
        raise PermissionDeniedError(f"this endpoint needs the master key; {key.display()} is a virtual key")

    async def self_or_admin(self, req: Request) -> Principal:
        """The master key, or a live virtual key (for endpoints a key may call about itself)."""
        if self._master is None:
            return await self.admin(req)
        token = _bearer(req)
        if hmac.compare_digest(_digest(token), self._master):
            return MASTER
        return Principal(await self._virtual(token), admin=False)

    async def _virtual(self, token: str) -> VirtualKey:
        ring = self._ring
        if ring is None:
            raise AuthenticationError("Incorrect API key provided.")
        key = ring.find(token) or await ring.find_fresh(token)
        if key is None:
            if not ring.loaded:  # the keys were never read: the key may well be valid
                raise KeyStoreUnavailableError("API keys cannot be checked right now; retry shortly", retry_after_s=2.0)
            raise AuthenticationError("Incorrect API key provided.")
        now = self._now()
        if key.revoked_at is not None:
            raise AuthenticationError(f"API key {key.display()} has been revoked.", code="revoked_api_key")
        if key.expires_at is not None and key.expires_at <= now:
            raise AuthenticationError(
                f"API key {key.display()} expired at {key.expires_at.isoformat()}.", code="expired_api_key"
            )
        return key

    async def _check_budget(self, key: VirtualKey) -> None:
        if key.max_budget is None or self._budgets is None:
            return
        now = self._now()
        spent = await self._budgets.spent(key, now)
        if spent < to_nano(key.max_budget):
            return
        if self._on_budget_exceeded is not None:
            self._on_budget_exceeded()
        _, end = period_of(key, now)
        name = key.display() + (f" ({key.alias})" if key.alias else "")
        if key.budget_duration is None:
            raise BudgetExceededError(
                f"Budget exceeded: API key {name} has spent {from_nano(spent)} of its max_budget {key.max_budget} "
                "(no budget_duration: it does not reset)."
            )
        raise BudgetExceededError(
            f"Budget exceeded: API key {name} has spent {from_nano(spent)} of its max_budget {key.max_budget} "
            f"for this {key.budget_duration} period; it resets at {end.isoformat()}.",
            retry_after_s=max(1.0, (end - now).total_seconds()),
        )

    def charge(self, principal: Principal | None, cost_nano: int) -> None:
        """Count a finished request's cost against its key's budget (no await; off the DB)."""
        if principal is None or principal.key is None or principal.key.max_budget is None or self._budgets is None:
            return
        self._budgets.add(principal.key, cost_nano, self._now())


def _bearer(req: Request) -> str:
    raw = req.authorization
    if raw is None:
        raise AuthenticationError(
            "Missing API key: send it as 'Authorization: Bearer <key>'.",
            code="missing_api_key",
            headers={"www-authenticate": "Bearer"},
        )
    scheme, _, token = raw.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise AuthenticationError(
            "Malformed Authorization header: expected 'Bearer <key>'.",
            code="invalid_authorization_header",
            headers={"www-authenticate": "Bearer"},
        )
    return token
