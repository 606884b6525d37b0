"""Virtual keys over HTTP, with LiteLLM's paths and field names so that its users' scripts work:
``POST /key/generate``, ``GET /key/info``, ``POST /key/delete``, ``GET /key/list``.

The app authenticates ``/key/*`` before routing (master key, or a virtual key asking about
itself); generate, delete and list need the master key. The plaintext key appears once, in the
generate response, and nowhere else (not in logs, not in any later answer).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from modelyard.accounting.pricing import from_nano
from modelyard.api.app import ModelyardApp, Services
from modelyard.api.http import Request
from modelyard.auth.keys import KEY_PREFIX, KeyFieldError, VirtualKey, new_key, split_key
from modelyard.errors import InvalidRequestError, NotFoundError, PermissionDeniedError
from modelyard.limits.budget import period_of

# LiteLLM's /key/generate fields modelyard honours, and its own two (priority, allow_priority_header);
# anything else is refused (a limit silently ignored is worse than an error).
GENERATE_FIELDS = (
    "models", "rpm_limit", "tpm_limit", "max_budget", "budget_duration", "duration", "key_alias", "team_id", "metadata",
    "user_id",  # informational in LiteLLM as here: kept in the key's metadata
    "priority", "allow_priority_header",  # modelyard's: the key's admission priority (routing.priority)
)


def register(app: ModelyardApp) -> None:
    def services() -> Services:
        s = app.services
        assert s is not None
        if s.keys is None or s.ring is None:
            raise NotFoundError(
                "virtual keys need a master key (auth.master_key or $MODELYARD_MASTER_KEY)", code="keys_disabled"
            )
        return s

    def require_admin(req: Request) -> None:
        if not req.principal.admin:
            raise PermissionDeniedError("this endpoint needs the master key")

    async def generate(req: Request) -> None:
        req.endpoint = "key"
        require_admin(req)
        s = services()
        data, _ = await req.json_object(app.max_body)
        unknown = sorted(set(data) - set(GENERATE_FIELDS))
        if unknown:
            raise InvalidRequestError(
                f"unsupported field(s): {', '.join(unknown)}; supported: {', '.join(GENERATE_FIELDS)}", param=unknown[0]
            )
        models = data.get("models")
        if isinstance(models, list):
            known = {name for name, _ in s.router.public_names()}
            missing = [m for m in models if isinstance(m, str) and m not in known]
            if missing:
                raise InvalidRequestError(f"models: unknown model(s) {missing}", param="models", code="model_not_found")
        metadata = data.get("metadata")
        user_id = data.get("user_id")
        if user_id is not None:
            if not isinstance(user_id, str) or not user_id:
                raise InvalidRequestError("user_id: expected a non-empty string", param="user_id")
            if metadata is not None and not isinstance(metadata, dict):
                raise InvalidRequestError("metadata: expected an object of strings", param="metadata")
            metadata = {**(metadata or {}), "user_id": user_id}
        try:
            plaintext, key = new_key(
                now=dt.datetime.now(dt.timezone.utc),
                alias=data.get("key_alias"),
                team_id=data.get("team_id"),
                models=data.get("models") or (),
                rpm_limit=data.get("rpm_limit"),
                tpm_limit=data.get("tpm_limit"),
                max_budget=data.get("max_budget"),
                budget_duration=data.get("budget_duration"),
                duration=data.get("duration"),
                metadata=metadata,
                priority=data.get("priority"),
                allow_priority_header=data.get("allow_priority_header"),
            )
        except KeyFieldError as exc:
            raise InvalidRequestError(str(exc), param=exc.param) from None
        assert s.keys is not None and s.ring is not None
        await s.keys.create(key)
        s.ring.put(key)
        await req.respond_json(200, {**key.to_info(), "key": plaintext, "key_name": key.display()})

    async def info(req: Request) -> None:
        """``GET /key/info?key=<key or token>``; a virtual key may ask about itself (no ``key``)."""
        req.endpoint = "key"
        s = services()
        asked = req.query().get("key")
        me = req.principal.key
        if asked is None:
            if me is None:
                raise InvalidRequestError("key: give the key (or its token) to look up", param="key")
            key = me
        else:
            key = await _lookup(s, asked)
            if key is None:
                raise NotFoundError("no such key", param="key", code="key_not_found")
            if not req.principal.admin and (me is None or key.id != me.id):
                raise PermissionDeniedError("a virtual key may only look up itself")
        await req.respond_json(200, {"key": key.id, "info": await _info(s, key)})

    async def delete(req: Request) -> None:
        """``POST /key/delete {"keys": [key or token, ...], "key_aliases": [alias, ...]}``: revoked at
        once on this replica, on the others within ``auth.refresh_interval_s``."""
        req.endpoint = "key"
        require_admin(req)
        s = services()
        data, _ = await req.json_object(app.max_body)
        given, aliases = data.get("keys"), data.get("key_aliases")
        for name, value in (("keys", given), ("key_aliases", aliases)):
            if value is not None and (not isinstance(value, list) or not all(isinstance(k, str) for k in value)):
                raise InvalidRequestError(f"{name}: expected a list of strings", param=name)
        if not given and not aliases:
            raise InvalidRequestError("keys: give a non-empty list of keys or key tokens (or key_aliases)", param="keys")
        ids = []
        for k in given or ():
            key = await _lookup(s, k)
            if key is None:
                raise NotFoundError("keys: no such key " + _redact(k), param="keys", code="key_not_found")
            ids.append(key.id)
        assert s.keys is not None
        live = await s.keys.list() if aliases else []
        for alias in aliases or ():
            found = [k.id for k in live if k.alias == alias]
            if not found:
                raise NotFoundError(f"key_aliases: no live key with alias {alias[:64]!r}", param="key_aliases",
                                    code="key_not_found")
            ids.extend(found)
        assert s.keys is not None and s.ring is not None
        revoked = await s.keys.revoke(list(dict.fromkeys(ids)), now=dt.datetime.now(dt.timezone.utc))
        for key_id in revoked:
            fresh = await s.keys.get(key_id)
            if fresh is not None:
                s.ring.put(fresh)
        await req.respond_json(200, {"deleted_keys": revoked})

    async def list_keys(req: Request) -> None:
        req.endpoint = "key"
        require_admin(req)
        s = services()
        assert s.keys is not None
        include_revoked = req.query().get("include_revoked") in ("1", "true")
        keys = await s.keys.list(include_revoked=include_revoked)
        await req.respond_json(200, {"keys": [await _info(s, k) for k in keys]})

    app.route("/key/generate", "POST", generate)
    app.route("/key/info", "GET", info)
    app.route("/key/delete", "POST", delete)
    app.route("/key/list", "GET", list_keys)



async def _lookup(s: Services, given: str) -> VirtualKey | None:
    """A key by its plaintext (verified) or by its token (the public id); also one made by another
    replica or the CLI that this replica has not seen yet."""
    assert s.ring is not None and s.keys is not None
    if given.startswith(KEY_PREFIX):
        if split_key(given) is None:
            return None
        return s.ring.find(given) or await s.ring.find_fresh(given)
    return s.ring.get(given) or await s.keys.get(given)


def _redact(given: str) -> str:
    return given[: len(KEY_PREFIX) + 12] + "…" if given.startswith(KEY_PREFIX) else repr(given[:32])


async def _info(s: Services, key: VirtualKey) -> dict[str, Any]:
    out = key.to_info()
    if s.budgets is not None:
        now = dt.datetime.now(dt.timezone.utc)
        start, end = period_of(key, now)
        out["spend"] = float(from_nano(await s.budgets.spent(key, now)))
        out["budget_period_start"] = start.isoformat()
        out["budget_reset_at"] = end.isoformat() if key.budget_duration else None
    return out
