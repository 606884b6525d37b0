"""The connection URLs a LiteLLM config carries, in the form modelyard's drivers take.

Pure helpers of ``config.litellm``: each appends its problems (``path: text``) to the list it is
given and never puts the URL, a host or a password in a message (these URLs hold credentials).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

__all__ = ["DEFAULT_REDIS_PORT", "asyncpg_url", "is_redis_url", "redis_address"]

DEFAULT_REDIS_PORT = 6379
_REDIS_SCHEMES = frozenset({"redis", "rediss", "unix"})
# Query parameters asyncpg (through SQLAlchemy) understands; libpq's sslmode is renamed to ssl.
# Anything else (Prisma's schema, connection_limit, pool_timeout, ...) would fail every connect.
_ASYNCPG_QUERY = frozenset({"ssl", "host", "prepared_statement_cache_size"})
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9.+-]*$")
_HOST = re.compile(r"^[^\s/@?#\[\]]+$")


def asyncpg_url(url: Any, path: str, errors: list[str], warnings: list[str]) -> str | None:
    """LiteLLM's (Prisma's) ``postgresql://`` or ``postgres://`` URL → ``postgresql+asyncpg://``.

    An explicit ``+asyncpg`` is kept; another driver is an error. Unusable query parameters are
    dropped, one warning each (the parameter's name only).
    """
    scheme, sep, rest = url.partition("://") if isinstance(url, str) else ("", "", "")
    base, _, driver = scheme.lower().partition("+")
    if not sep or not _SCHEME.match(scheme):
        errors.append(f"{path}: expected a PostgreSQL URL (postgresql://user:password@host:5432/db)")
        return None
    if base not in ("postgresql", "postgres"):
        errors.append(f"{path}: unsupported database {base!r} (expected postgresql://...)")
        return None
    if driver and driver != "asyncpg":
        errors.append(f"{path}: driver {driver!r} is not supported (modelyard uses asyncpg: write postgresql://...)")
        return None
    head, qsep, query = rest.partition("?")
    if qsep:
        kept: list[tuple[str, str]] = []
        for name, value in parse_qsl(query, keep_blank_values=True):
            if name == "sslmode" or name in _ASYNCPG_QUERY:
                kept.append(("ssl" if name == "sslmode" else name, value))
            else:
                warnings.append(f"{path}: URL parameter {name!r} is not used by modelyard's PostgreSQL driver; dropped")
        if kept:
            head += "?" + urlencode(kept)
    return f"postgresql+asyncpg://{head}"


def is_redis_url(url: Any) -> bool:
    return isinstance(url, str) and "://" in url and url.partition("://")[0].lower() in _REDIS_SCHEMES


def redis_address(parts: Mapping[str, tuple[Any, str]], errors: list[str]) -> str | None:
    """``redis://[:password@]host:port/0`` (password URL-quoted) from resolved parts.

    ``parts`` maps ``redis_host``/``redis_port``/``redis_password`` to ``(value, key path)``; a
    missing port is 6379, a missing or empty password means none.
    """
    host, host_path = parts.get("redis_host", (None, "router_settings.redis_host"))
    port, port_path = parts.get("redis_port", (DEFAULT_REDIS_PORT, "router_settings.redis_port"))
    password = parts.get("redis_password", (None, ""))[0]
    problems: list[str] = []
    if host is None:
        problems.append(f"{host_path}: required with redis_port/redis_password (or set REDIS_HOST)")
    elif not isinstance(host, str) or not _HOST.match(host):
        problems.append(f"{host_path}: expected a host name or IP address")
    try:
        number = 0 if isinstance(port, (bool, float)) else int(str(port).strip())
    except ValueError:
        number = 0
    if not 1 <= number <= 65535:
        problems.append(f"{port_path}: expected a port number (1-65535)")
    if problems or not isinstance(host, str):
        errors.extend(problems)
        return None
    if ":" in host:
        host = f"[{host}]"  # IPv6
    auth = f":{quote(str(password), safe='')}@" if password not in (None, "") else ""
    return f"redis://{auth}{host}:{number}/0"
