"""Virtual keys: the key format, its verification, and budget periods (pure: no I/O, no clock).

A key reads ``sk-my-<id><secret>``: ``id`` is 12 lowercase hex digits, the public half that the
database, the spend rows (``key_hash``) and every log line name; ``secret`` is 48 lowercase hex
digits (``secrets.token_hex(24)``, 192 bits) that only the holder ever sees. Only
``sha256(salt + secret)`` is stored, so a leaked database or log never yields a usable key, and
since the secret is 192 random bits a fast hash is enough (a slow KDF protects low-entropy
passwords, and would cost milliseconds on every request). The id lets the request path find the
row with one dict lookup instead of hashing against every stored key.

Field names follow LiteLLM's ``/key/generate`` (``key_alias``, ``team_id``, ``models``,
``rpm_limit``, ``tpm_limit``, ``max_budget``, ``budget_duration``, ``duration``, ``metadata``) so
that its clients and scripts work unchanged; validation errors name those fields. Two fields are
modelyard's own (LiteLLM has none): ``priority`` (``high``/``normal``/``low``; None: the routing
rules decide, see ``routing.priority``) and ``allow_priority_header`` (may the key's requests set
``x-priority`` themselves).
"""

from __future__ import annotations

import calendar
import datetime as dt
import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Any, NamedTuple, get_args

from modelyard.config.routing import Level
from modelyard.epoch import to_us

KEY_PREFIX = "sk-my-"
ID_HEX = 12
SECRET_HEX = 48
KEY_LENGTH = len(KEY_PREFIX) + ID_HEX + SECRET_HEX  # 66

UTC = dt.timezone.utc
_HEX = frozenset("0123456789abcdef")
_NANO = Decimal("0.000000001")

# Limits that keep every value representable: durations stay far from datetime's year 9999, money in
# nano-units and rates fit a signed 64-bit column.
MAX_DURATION_YEARS = 100
MAX_BUDGET = Decimal(10) ** 9
MAX_RATE = 2**62
MAX_TEXT = 256  # alias, team_id, a model name, a metadata key
MAX_METADATA_VALUE = 4096
MAX_METADATA_ITEMS = 64
MAX_MODELS = 1000
PRIORITIES: tuple[str, ...] = get_args(Level)  # ("high", "normal", "low")

_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86_400}
_MAX_AMOUNT = {
    "s": MAX_DURATION_YEARS * 366 * 86_400,
    "m": MAX_DURATION_YEARS * 366 * 1440,
    "h": MAX_DURATION_YEARS * 366 * 24,
    "d": MAX_DURATION_YEARS * 366,
    "mo": MAX_DURATION_YEARS * 12,
}
_DURATION_RE = re.compile(r"([0-9]+)(s|m|h|d|mo)")


# --- durations and budget periods ----------------------------------------------------------------


class Duration(NamedTuple):
    amount: int
    unit: str  # "s", "m", "h", "d" or "mo" (calendar months)


def parse_duration(text: str) -> Duration:
    """``"30s"``, ``"5m"``, ``"1h"``, ``"30d"``, ``"1mo"`` → ``Duration``; anything else → ``ValueError``.

    Strict on purpose (no spaces, no upper case, no "1.5d"): a budget that silently never resets
    because its duration was misread costs money. The message does not name the field: callers
    prefix it (``new_key`` says ``budget_duration: …`` or ``duration: …``).
    """
    if not isinstance(text, str):
        raise ValueError(f"expected a duration string like '30d' or '1mo', got {type(text).__name__} {text!r}")
    m = _DURATION_RE.fullmatch(text)
    if m is None:
        raise ValueError(
            f"expected a duration like '30s', '5m', '1h', '30d' or '1mo' (a positive whole number and "
            f"one of s, m, h, d, mo), got {text[:40]!r}"
        )
    amount, unit = int(m.group(1)), m.group(2)
    if amount <= 0:
        raise ValueError(f"a duration must be positive, got {text!r}")
    if amount > _MAX_AMOUNT[unit]:
        raise ValueError(f"a duration must be at most {MAX_DURATION_YEARS} years, got {text[:40]!r}")
    return Duration(amount, unit)


def _add_months(t: dt.datetime, months: int) -> dt.datetime:
    y, m0 = divmod(t.month - 1 + months, 12)
    year, month = t.year + y, m0 + 1
    return t.replace(year=year, month=month, day=min(t.day, calendar.monthrange(year, month)[1]))


def add_duration(t: dt.datetime, d: Duration) -> dt.datetime:
    """``t + d``; a month step keeps the day of the month, clamped to the month's last day
    (Jan 31 + 1mo = Feb 28, or Feb 29 in a leap year)."""
    if d.unit == "mo":
        return _add_months(t, d.amount)
    return t + dt.timedelta(seconds=d.amount * _UNIT_SECONDS[d.unit])


def period_bounds(anchor: dt.datetime, d: Duration, now: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    """The budget period ``[start, end)`` that contains ``now``.

    Periods are ``[anchor + k·d, anchor + (k+1)·d)`` for k ≥ 0, each bound computed from the anchor
    (the key's creation), never by chaining: with months, a key made on Jan 31 resets on Feb 28,
    Mar 31, Apr 30 … instead of drifting to the 28th forever. Hence for months ``end`` is
    ``add_duration(anchor, (k+1)·d)``, which differs from ``add_duration(start, d)`` after a clamped
    month. ``now`` before the anchor (clock skew between replicas) falls in the first period.
    Constant time: k is a division, for months from the month difference, corrected by one.
    """
    if anchor.tzinfo is None or now.tzinfo is None:
        raise ValueError("period_bounds needs timezone-aware datetimes")
    if d.amount <= 0:
        raise ValueError("period_bounds needs a positive duration")
    if now < anchor:
        return anchor, add_duration(anchor, d)
    if d.unit != "mo":
        step = dt.timedelta(seconds=d.amount * _UNIT_SECONDS[d.unit])
        k = (now - anchor) // step
        start = anchor + k * step
        return start, start + step
    local = now.astimezone(anchor.tzinfo)  # count calendar months where the anchor lives
    k = ((local.year - anchor.year) * 12 + local.month - anchor.month) // d.amount
    while k > 0 and _add_months(anchor, k * d.amount) > now:
        k -= 1
    while _add_months(anchor, (k + 1) * d.amount) <= now:  # not reached by the arithmetic above; a guard
        k += 1
    return _add_months(anchor, k * d.amount), _add_months(anchor, (k + 1) * d.amount)


# --- the key ----------------------------------------------------------------------------------


class KeyFieldError(ValueError):
    """A ``/key/generate`` field is invalid; ``param`` is its LiteLLM name (``"rpm_limit"``)."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"{param}: {message}")
        self.param = param
        self.message = f"{param}: {message}"


@dataclass(frozen=True, slots=True)
class VirtualKey:
    id: str  # 12 hex digits: the key's public half; what spend rows store in key_hash
    salt: bytes  # 16 random bytes
    digest: bytes  # sha256(salt + secret.encode())
    alias: str | None  # LiteLLM key_alias
    team_id: str | None
    models: tuple[str, ...]  # () = every model
    rpm_limit: int | None
    tpm_limit: int | None
    max_budget: Decimal | None  # currency units, quantized to 1e-9 (the store keeps nano-units)
    budget_duration: str | None  # as given ("30d"); None = the budget never resets
    created_at: dt.datetime  # UTC, aware; the anchor of budget periods
    expires_at: dt.datetime | None
    revoked_at: dt.datetime | None
    updated_us: int  # microseconds since the epoch of the last change (create/revoke)
    metadata: dict[str, str] = field(default_factory=dict)
    priority: str | None = None  # one of PRIORITIES; None: decided by the routing rules
    allow_priority_header: bool = False  # may this key's requests set the x-priority header

    def display(self) -> str:
        """What messages and logs may show: the prefix and the id, never the secret."""
        return f"{KEY_PREFIX}{self.id}…"

    def to_info(self) -> dict[str, Any]:
        """LiteLLM-like JSON for ``/key/info`` and ``/key/generate``; never the salt or the digest."""
        return {
            "token": self.id,
            "key_alias": self.alias,
            "team_id": self.team_id,
            "models": list(self.models),
            "rpm_limit": self.rpm_limit,
            "tpm_limit": self.tpm_limit,
            "max_budget": float(self.max_budget) if self.max_budget is not None else None,
            "budget_duration": self.budget_duration,
            "expires": self.expires_at.isoformat() if self.expires_at is not None else None,
            "created_at": self.created_at.isoformat(),
            "revoked": self.revoked_at is not None,
            "metadata": dict(self.metadata),
            "priority": self.priority,
            "allow_priority_header": self.allow_priority_header,
        }


def _digest(salt: bytes, secret: str) -> bytes:
    return hashlib.sha256(salt + secret.encode()).digest()


def split_key(plaintext: str) -> tuple[str, str] | None:
    """``(id, secret)`` of a well-formed key, else None (never raises: it sees untrusted headers)."""
    if not isinstance(plaintext, str) or len(plaintext) != KEY_LENGTH or not plaintext.startswith(KEY_PREFIX):
        return None
    body = plaintext[len(KEY_PREFIX) :]
    if not _HEX.issuperset(body):  # lowercase ASCII hex only (str.isalnum would admit "٣" or "Ａ")
        return None
    return body[:ID_HEX], body[ID_HEX:]


def verify(key: VirtualKey, secret: str) -> bool:
    """Whether ``secret`` is the key's; constant-time in the digest comparison."""
    return hmac.compare_digest(_digest(key.salt, secret), key.digest)


def _text(param: str, value: object, *, limit: int = MAX_TEXT) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise KeyFieldError(param, f"expected a string, got {type(value).__name__}")
    if not value.strip():
        raise KeyFieldError(param, "must not be empty")
    if len(value) > limit:
        raise KeyFieldError(param, f"at most {limit} characters, got {len(value)}")
    return value


def _rate(param: str, value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise KeyFieldError(param, f"expected a whole number >= 0, got {type(value).__name__} {value!r}")
    if value < 0:
        raise KeyFieldError(param, f"expected a whole number >= 0, got {value}")
    if value > MAX_RATE:
        raise KeyFieldError(param, f"at most 2**62, got {value}")
    return value


def _budget(value: object) -> Decimal | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str, Decimal)):
        raise KeyFieldError("max_budget", f"expected a number >= 0, got {type(value).__name__}")
    try:
        amount = Decimal(repr(value)) if isinstance(value, float) else Decimal(value.strip() if isinstance(value, str) else value)
    except (InvalidOperation, ValueError):
        raise KeyFieldError("max_budget", f"expected a number >= 0, got {str(value)[:40]!r}") from None
    if not amount.is_finite():
        raise KeyFieldError("max_budget", f"expected a finite number, got {str(value)[:40]!r}")
    if amount < 0:
        raise KeyFieldError("max_budget", f"expected a number >= 0, got {str(value)[:40]!r}")
    if amount > MAX_BUDGET:
        raise KeyFieldError("max_budget", f"at most {MAX_BUDGET:,}, got {str(value)[:40]!r}")
    return amount.quantize(_NANO, rounding=ROUND_HALF_EVEN)


def _models(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise KeyFieldError("models", f"expected a list of model names, got {type(value).__name__}")
    out: list[str] = []
    for i, m in enumerate(value):
        if not isinstance(m, str) or not m.strip():
            raise KeyFieldError("models", f"item {i}: expected a non-empty model name, got {m!r}")
        if len(m) > MAX_TEXT:
            raise KeyFieldError("models", f"item {i}: at most {MAX_TEXT} characters")
        if m not in out:
            out.append(m)
        if len(out) > MAX_MODELS:
            raise KeyFieldError("models", f"at most {MAX_MODELS} models")
    return tuple(out)


def _metadata(value: object) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise KeyFieldError("metadata", f"expected an object of strings, got {type(value).__name__}")
    if len(value) > MAX_METADATA_ITEMS:
        raise KeyFieldError("metadata", f"at most {MAX_METADATA_ITEMS} entries")
    out: dict[str, str] = {}
    for k, v in value.items():
        if not isinstance(k, str) or not k or len(k) > MAX_TEXT:
            raise KeyFieldError("metadata", f"keys must be strings of 1..{MAX_TEXT} characters, got {str(k)[:40]!r}")
        if not isinstance(v, str) or len(v) > MAX_METADATA_VALUE:
            raise KeyFieldError("metadata", f"{k}: values must be strings of at most {MAX_METADATA_VALUE} characters")
        out[k] = v
    return out


def _priority(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or value not in PRIORITIES:
        shown = repr(value[:32]) if isinstance(value, str) else f"{type(value).__name__} {str(value)[:32]!r}"
        raise KeyFieldError("priority", f"expected one of {', '.join(PRIORITIES)} (or null), got {shown}")
    return value


def _flag(param: str, value: object) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise KeyFieldError(param, f"expected true or false, got {type(value).__name__} {str(value)[:32]!r}")
    return value


def _duration(param: str, value: object) -> Duration | None:
    if value is None:
        return None
    try:
        return parse_duration(value)  # type: ignore[arg-type]  # parse_duration checks the type
    except ValueError as exc:
        raise KeyFieldError(param, str(exc)) from None


def new_key(
    *,
    now: dt.datetime,
    alias: str | None = None,
    team_id: str | None = None,
    models: Iterable[str] | None = (),
    rpm_limit: int | None = None,
    tpm_limit: int | None = None,
    max_budget: int | float | str | Decimal | None = None,
    budget_duration: str | None = None,
    duration: str | None = None,
    metadata: Mapping[str, str] | None = None,
    priority: str | None = None,
    allow_priority_header: bool | None = False,
) -> tuple[str, VirtualKey]:
    """A fresh key: ``(plaintext, VirtualKey)``. The plaintext exists only in this return value.

    Every field is checked here, before anything is stored, so that the HTTP layer and the CLI
    answer the same ``KeyFieldError`` (``param`` = the LiteLLM field name) for the same mistake.
    """
    if not isinstance(now, dt.datetime) or now.tzinfo is None:
        raise ValueError("new_key needs a timezone-aware now")
    created = now.astimezone(UTC)
    key_alias = _text("key_alias", alias)
    team = _text("team_id", team_id)
    model_names = _models(models)
    rpm = _rate("rpm_limit", rpm_limit)
    tpm = _rate("tpm_limit", tpm_limit)
    budget = _budget(max_budget)
    _duration("budget_duration", budget_duration)
    lifetime = _duration("duration", duration)
    meta = _metadata(metadata)
    level = _priority(priority)
    may_set_priority = _flag("allow_priority_header", allow_priority_header)
    expires = add_duration(created, lifetime) if lifetime is not None else None

    key_id = secrets.token_hex(ID_HEX // 2)
    secret = secrets.token_hex(SECRET_HEX // 2)
    salt = secrets.token_bytes(16)
    key = VirtualKey(
        id=key_id,
        salt=salt,
        digest=_digest(salt, secret),
        alias=key_alias,
        team_id=team,
        models=model_names,
        rpm_limit=rpm,
        tpm_limit=tpm,
        max_budget=budget,
        budget_duration=budget_duration,
        created_at=created,
        expires_at=expires,
        revoked_at=None,
        updated_us=to_us(created),
        metadata=meta,
        priority=level,
        allow_priority_header=may_set_priority,
    )
    return KEY_PREFIX + key_id + secret, key
