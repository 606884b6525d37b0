"""A request's priority (issue 11 §2): PURE — reads its arguments only, no clock, no logging.

Levels: ``high`` (2), ``normal`` (1), ``low`` (0); larger is served first by ``routing.admission``
(which also ages waiters so that low never starves; see docs/design/priorities.md).

Precedence, first match wins:

1. the ``x-priority`` header (``PriorityConfig.header``), when the caller may set it — the master
   key, a key made with ``allow_priority_header``, or anyone on a server without keys. A caller
   that may not set it gets **403 ``priority_not_allowed``** rather than being silently ignored: a
   client that believes it is sending urgent traffic must learn that it is not. A bad value (not
   ``high``/``normal``/``low``, case-insensitive) is **400** with ``param`` the header's name.
2. the key's own ``priority`` (``/key/generate``), when it has one;
3. the endpoint rule (``endpoints``: embeddings, classifications and moderations are high by
   default — short, cheap, often on a user's critical path);
4. the long-prompt rule: an estimated prompt of ``long_prompt_tokens`` or more is low;
5. otherwise normal.

So the rules are defaults for callers who said nothing: an explicit choice (header or key) is never
overridden by a heuristic, and the endpoint rule is checked before the long-prompt one (a large
embeddings batch stays high: embedding cost grows with input far less than a long generation).
With ``enabled: false`` everything is normal and the header is not looked at.
"""

from __future__ import annotations

from typing import Final

from modelyard.config.routing import PriorityConfig
from modelyard.errors import InvalidRequestError, PermissionDeniedError

HIGH: Final = 2
NORMAL: Final = 1
LOW: Final = 0
LEVELS: Final[dict[str, int]] = {"high": HIGH, "normal": NORMAL, "low": LOW}
NAMES: Final[dict[int, str]] = {v: k for k, v in LEVELS.items()}
MAX_LEVEL: Final = HIGH

# Exact header values that need no normalisation (the common case: one dict lookup).
_HEADER_VALUES: Final[dict[bytes, int]] = {k.encode(): v for k, v in LEVELS.items()}


class PriorityNotAllowedError(PermissionDeniedError):
    code = "priority_not_allowed"


def parse_level(param: str, value: str | bytes) -> int:
    """``"high"``/``b" Normal "``/… → the level; anything else → ``InvalidRequestError(param=param)``."""
    raw = value.encode("latin-1", "replace") if isinstance(value, str) else value
    level = _HEADER_VALUES.get(raw)
    if level is not None:
        return level
    level = _HEADER_VALUES.get(raw.strip().lower())
    if level is not None:
        return level
    shown = raw[:32].decode("latin-1")
    raise InvalidRequestError(
        f"{param}: expected one of high, normal, low, got {shown!r}", param=param, code="invalid_priority"
    )


def level_name(level: int) -> str:
    """2 → "high"; a level above high (never produced here) reads as high."""
    return NAMES[min(max(level, LOW), MAX_LEVEL)]


def request_priority(
    cfg: PriorityConfig,
    *,
    key_priority: str | None,
    header: bytes | None,
    header_allowed: bool,
    endpoint: str,
    prompt_tokens: int,
) -> tuple[int, str]:
    """The request's level and why: ``"header"``, ``"key"``, ``"rule:endpoint"``,
    ``"rule:long_prompt"``, ``"default"`` (or ``"disabled"``).

    ``key_priority``: the caller's key's level name (None: the key has none, or no key);
    ``header``: the raw value of ``cfg.header`` (None: absent); ``endpoint``: the request's
    endpoint as the routes name it (``"chat.completions"``, ``"embeddings"``, …);
    ``prompt_tokens``: the estimate the rate limiter uses. Raises ``InvalidRequestError`` (400)
    for a bad header value and ``PriorityNotAllowedError`` (403) for a header the caller may not set.
    """
    if not cfg.enabled:
        return NORMAL, "disabled"
    if header is not None:
        if not header_allowed:
            raise PriorityNotAllowedError(
                f"{cfg.header}: this API key may not set the request priority (create the key with "
                "allow_priority_header: true, or leave the header out)",
                param=cfg.header,
            )
        return parse_level(cfg.header, header), "header"
    if key_priority is not None:
        return LEVELS[key_priority], "key"
    rule = cfg.endpoints.get(endpoint)
    if rule is not None:
        return LEVELS[rule], "rule:endpoint"
    long_prompt = cfg.long_prompt_tokens
    if long_prompt is not None and prompt_tokens >= long_prompt:
        return LOW, "rule:long_prompt"
    return NORMAL, "default"
