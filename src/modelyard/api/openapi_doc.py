"""The OpenAPI document modelyard serves at ``GET /openapi.json``.

It is OpenAI's own description of the operations modelyard implements (the bundled extract
``api/openapi/openai-subset.json``, made by ``python -m modelyard.api.openapi_gen``), with what
modelyard adds to them, plus modelyard's own endpoints written here:

- every operation lists the error statuses modelyard answers, each with OpenAI's error body
  ``{"error": {"message", "type", "param", "code"}}`` (OpenAI's document lists only 429 for some);
- ``POST /v1/completions`` also answers ``text/event-stream`` when ``stream`` is true, as OpenAI does
  (its document lists only JSON there); its events are ``CreateCompletionResponse`` objects whose
  ``finish_reason`` and ``usage`` may be null (``ModelyardCompletionStreamChunk``);
- a ``text/event-stream`` schema describes one event (its ``data``: a JSON chunk, a JSON error, or
  ``[DONE]``), as OpenAPI defines it; OpenAI's puts the chunk's schema there;
- ``Embedding.embedding`` is a list of floats or, for ``encoding_format: base64``, a string (what
  OpenAI answers; its document lists only the list);
- security: ``ApiKeyAuth`` (a virtual key or the master key) on ``/v1/*``, ``MasterKeyAuth`` on the
  admin endpoints; a server without a master key authenticates nobody on ``/v1/*`` (``security``
  there then also allows no credentials) and answers ``/admin/*``, ``/spend/*``, ``/key/*`` only on
  loopback.

Nothing outside the package is read: the document is built once per app from package data.
``register(app)`` adds the route.
"""

from __future__ import annotations

import copy
import functools
import json
from importlib import resources
from typing import Any

_ERR = {"$ref": "#/components/responses/Error"}
_RATE = {"$ref": "#/components/responses/TooManyRequests"}
_UNAVAILABLE = {"$ref": "#/components/responses/Unavailable"}
# What each status means on modelyard's endpoints (the error body is the same for all).
_WHY = {
    "400": "The request is invalid (the message and `param` name the field).",
    "401": "Missing, malformed, unknown, revoked or expired API key.",
    "403": "The key may not do this (a model it may not use; an admin endpoint with a virtual key; "
           "an `x-priority` header from a key without `allow_priority_header`; "
           "the admin API from a non-loopback client of a server without a master key).",
    "404": "Unknown model, path or object; or the feature is not configured here.",
    "409": "A conflict with the current state (a pinned model asked to move); an upstream's, passed on.",
    "413": "The request body is larger than `server.max_body_bytes`.",
    "422": "An upstream's refusal of the request, passed on as it answered.",
    "502": "The upstream failed (connection refused, reset, or a 5xx) after retries and fallbacks.",
    "504": "The upstream did not answer in time.",
}
_PROXIED = ("400", "401", "403", "404", "409", "413", "422", "429", "502", "503", "504")
_AUTHED = ("401", "403", "429", "503")  # what the gate alone can answer on /v1/*
_ADMIN = ("401", "403", "503")


def _responses(ok: dict[str, Any], codes: tuple[str, ...]) -> dict[str, Any]:
    out = {"200": ok}
    for c in codes:
        if c == "429":
            out[c] = _RATE
        elif c == "503":
            out[c] = _UNAVAILABLE
        else:
            out[c] = _ERR
    return out


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _body(schema: dict[str, Any], *, required: bool = True) -> dict[str, Any]:
    return {"required": required, "content": {"application/json": {"schema": schema}}}


def _q(name: str, description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description, "schema": schema or {"type": "string"}}


_STR = {"type": "string"}
_INT = {"type": "integer"}
_NULL_STR = {"type": ["string", "null"]}
_NULL_INT = {"type": ["integer", "null"]}
_NULL_NUM = {"type": ["number", "null"]}
_TIME = {"type": "string", "format": "date-time",
         "description": "ISO 8601 date-time (UTC when it has no offset); a date alone is taken too"}
_DURATION = {"type": "string", "pattern": "^[1-9][0-9]{0,2}(s|m|h|d|mo)$",
             "description": "e.g. 30s, 10m, 12h, 30d, 1mo (larger amounts up to 100 years are taken too)"}
_TEXT = {"type": "string", "minLength": 1, "maxLength": 256, "pattern": "[^ \t\n\r]"}


def _obj(props: dict[str, Any], required: tuple[str, ...] | None = None, **kw: Any) -> dict[str, Any]:
    return {"type": "object", "properties": props, "required": list(props if required is None else required), **kw}


SCHEMAS: dict[str, Any] = {
    "ModelyardClassificationRequest": _obj(
        {
            "model": {"type": "string", "minLength": 1, "examples": ["intent"],
                      "description": "A model with the classification capability."},
            "input": {"oneOf": [{"type": "string"}, {"type": "array", "minItems": 1, "items": {"type": "string"}}],
                      "description": "Text(s) to classify; one result per input, in order."},
            "top_k": {"type": "integer", "minimum": 1, "default": 5, "description": "Labels per input, best first."},
        },
        required=("model", "input"),
    ),
    "ModelyardClassificationResponse": _obj({
        "object": {"type": "string", "enum": ["list"]},
        "model": _STR,
        "data": {"type": "array", "items": _obj({
            "index": _INT,
            "labels": {"type": "array", "items": _obj({"label": _STR, "score": {"type": "number"}})},
        })},
        "usage": _obj({"prompt_tokens": _INT, "total_tokens": _INT}),
    }),
    "ModelyardLiveness": _obj({"status": {"type": "string", "enum": ["ok"]}}),
    "ModelyardReadiness": _obj(
        {
            "status": {"type": "string", "enum": ["ready", "degraded", "draining", "spend_backlogged"]},
            "spend": {"type": "object", "description": "The spend writer's state (ok, spooling, stuck, saturated)."},
            "models": {"type": "object", "additionalProperties": {"type": "integer", "minimum": 0},
                       "description": "Per model group: deployments whose circuit breaker is not open."},
            "unavailable": {"type": "array", "items": _STR, "description": "Groups with no usable deployment."},
        },
        required=("status", "models"),
    ),
    "ModelyardLocalModel": _obj(
        {
            "name": _STR,
            "tier": {"type": "string", "enum": ["active", "host", "disk"]},
            "state": _STR,
            "bytes": _obj({k: _INT for k in ("weights", "kv_cache", "overhead", "active", "host")}),
            "accounted": _obj({"active": _INT, "host": _INT}),
            "last_used": {**_NULL_NUM, "description": "Seconds since the last request (null: never used)."},
            "in_flight": _INT, "waiting": {**_INT, "description": "Requests waiting for this model to become active."},
            "loads": _INT, "demotions": _INT, "warmups": _INT, "load_failures": _INT,
            "average_load_s": _NULL_NUM,
            "pinned": {"type": "boolean"},
            "keep_alive_s": _NULL_NUM,
            "error": _NULL_STR,
            "engine": {"type": ["object", "null"], "description": "Engine details (a managed process: pid, port...)."},
        },
    ),
    "ModelyardAutoscale": _obj({
        "object": {"type": "string", "enum": ["list"]},
        "data": {"type": "array", "items": _obj({
            "model": _STR, "actual": _INT, "desired": _NULL_INT, "target": _NULL_INT, "reason": _NULL_STR,
            "replica_deployments": {"type": "array", "items": _STR}, "min_replicas": _INT, "max_replicas": _INT,
        })},
    }),
    "ModelyardAdminModels": _obj({
        "object": {"type": "string", "enum": ["list"]},
        "data": {"type": "array", "items": _ref("ModelyardLocalModel")},
        "memory": {"type": "object", "additionalProperties": _obj({"used_bytes": _INT, "budget_bytes": _NULL_INT})},
        "gpu": {"type": ["object", "array", "null"], "description": "GPU allocator statistics; null without a GPU."},
    }),
    "ModelyardAdminDemote": {
        "type": "object",
        "properties": {"to": {"type": "string", "enum": ["host", "disk"], "default": "host"}},
    },
    "ModelyardAdminAction": _obj({"ok": {"type": "boolean", "enum": [True]},
                                  "model": {"anyOf": [_ref("ModelyardLocalModel"), {"type": "null"}]}}),
    "ModelyardSpendRow": _obj({
        "request_id": _STR, "ts": _TIME, "key_hash": _NULL_STR, "team": _NULL_STR, "model": _STR,
        "deployment": _STR, "prompt_tokens": _INT, "completion_tokens": _INT,
        "cost": {"type": "string", "description": "Decimal, as a string (exact)."},
        "priced": {"type": "boolean"}, "latency_ms": {"type": "number"}, "status": _INT, "fallbacks": _INT,
        "stream": {"type": "boolean"},
    }),
    "ModelyardSpendLogs": _obj({
        "object": {"type": "string", "enum": ["list"]},
        "data": {"type": "array", "items": _ref("ModelyardSpendRow")},
        "next_cursor": {**_NULL_STR, "description": "Pass as `cursor` for the next page; null on the last."},
    }),
    "ModelyardSpendReport": _obj({
        "object": {"type": "string", "enum": ["list"]},
        "since": _TIME, "until": _TIME,
        "group_by": {"type": "array", "items": _STR},
        "data": {"type": "array", "items": _obj({
            "group": {"type": "object"}, "requests": _INT, "errors": _INT, "error_rate": {"type": "number"},
            "prompt_tokens": _INT, "completion_tokens": _INT, "cost": _STR, "cost_per_success": _NULL_STR,
            "unpriced": _INT,
        })},
    }),
    "ModelyardKeyGenerateRequest": {
        "type": "object",
        "additionalProperties": False,
        "description": "LiteLLM's /key/generate fields that modelyard honours; any other field is refused (400).",
        "properties": {
            "models": {"type": "array", "maxItems": 1000, "items": _TEXT,
                       "description": "Allowed models (public names or aliases this server serves; empty: all)."},
            "rpm_limit": {"type": "integer", "minimum": 0, "maximum": 2**62},
            "tpm_limit": {"type": "integer", "minimum": 0, "maximum": 2**62},
            "max_budget": {"type": "number", "minimum": 0, "maximum": 10**9},
            "budget_duration": {**_DURATION, "description": "The budget's period; " + _DURATION["description"]},
            "duration": {**_DURATION, "description": "Lifetime of the key (none: no expiry); " + _DURATION["description"]},
            "key_alias": _TEXT,
            "team_id": _TEXT,
            "metadata": {"type": "object", "maxProperties": 63, "propertyNames": {"minLength": 1, "maxLength": 256},
                         "additionalProperties": {"type": "string", "maxLength": 4096}},
            "user_id": {"type": "string", "minLength": 1, "maxLength": 4096, "description": "Kept in the key's metadata."},
            "priority": {"type": ["string", "null"], "enum": ["high", "normal", "low", None],
                         "description": "modelyard's own: admission priority of the key's requests "
                                        "(null: the routing rules decide)."},
            "allow_priority_header": {"type": "boolean", "default": False,
                                      "description": "modelyard's own: may the key's requests set x-priority."},
        },
    },
    "ModelyardKeyInfo": _obj(
        {
            "token": {"type": "string", "description": "The key's public id."},
            "key_alias": _NULL_STR, "team_id": _NULL_STR,
            "models": {"type": "array", "items": _STR},
            "rpm_limit": _NULL_INT, "tpm_limit": _NULL_INT, "max_budget": _NULL_NUM, "budget_duration": _NULL_STR,
            "expires": {"type": ["string", "null"]}, "created_at": _STR, "revoked": {"type": "boolean"},
            "metadata": {"type": "object", "additionalProperties": _STR},
            "spend": {"type": "number"}, "budget_period_start": _STR, "budget_reset_at": _NULL_STR,
            "priority": {"type": ["string", "null"], "enum": ["high", "normal", "low", None]},
            "allow_priority_header": {"type": "boolean"},
        },
        required=("token", "key_alias", "team_id", "models", "rpm_limit", "tpm_limit", "max_budget",
                  "budget_duration", "expires", "created_at", "revoked", "metadata", "priority",
                  "allow_priority_header"),
    ),
    "ModelyardKeyGenerateResponse": {"allOf": [
        _ref("ModelyardKeyInfo"),
        _obj({"key": {"type": "string", "description": "The key itself: shown once, here only."},
              "key_name": {"type": "string", "description": "An abbreviation of the key, for display."}}),
    ]},
    "ModelyardKeyInfoResponse": _obj({"key": _STR, "info": _ref("ModelyardKeyInfo")}),
    "ModelyardKeyList": _obj({"keys": {"type": "array", "items": _ref("ModelyardKeyInfo")}}),
    "ModelyardKeyDeleteRequest": {
        "type": "object",
        "properties": {
            "keys": {"type": "array", "items": _STR, "description": "Keys or their public ids (tokens)."},
            "key_aliases": {"type": "array", "items": _STR},
        },
        "description": "At least one key or alias.",
        "anyOf": [{"required": ["keys"], "properties": {"keys": {"minItems": 1}}},
                  {"required": ["key_aliases"], "properties": {"key_aliases": {"minItems": 1}}}],
    },
    "ModelyardKeyDeleteResponse": _obj({"deleted_keys": {"type": "array", "items": _STR}}),
}

_MASTER = [{"MasterKeyAuth": []}]


def _modelyard_paths() -> dict[str, Any]:
    err_body = ("400", "413")
    tag = {"tags": ["modelyard"]}
    spend_q = [_q("since", "Inclusive start (default: 30 days before `until`)", _TIME),
               _q("until", "Exclusive end (default: now)", _TIME)]
    return {
        "/v1/classifications": {"post": {
            **tag, "operationId": "createClassification", "summary": "Labels with scores for each input (modelyard's own).",
            "requestBody": _body(_ref("ModelyardClassificationRequest")),
            "responses": _responses(_json(_ref("ModelyardClassificationResponse")), _PROXIED),
        }},
        "/openapi.json": {"get": {
            **tag, "operationId": "getOpenAPI", "summary": "This document.", "security": [],
            "responses": {"200": _json({"type": "object"})},
        }},
        "/health": {"get": {
            **tag, "operationId": "health", "summary": "Same as /health/liveness.", "security": [],
            "responses": {"200": _json(_ref("ModelyardLiveness"))},
        }},
        "/health/liveness": {"get": {
            **tag, "operationId": "liveness", "summary": "The process is up.", "security": [],
            "responses": {"200": _json(_ref("ModelyardLiveness"))},
        }},
        "/health/readiness": {"get": {
            **tag, "operationId": "readiness", "security": [],
            "summary": "Ready unless draining; models with every breaker open are listed, not failed.",
            "responses": {"200": _json(_ref("ModelyardReadiness")),
                          "503": _json(_ref("ModelyardReadiness"), "Draining (shutting down), or the spend backlog is full.")},
        }},
        "/metrics": {"get": {
            **tag, "operationId": "metrics", "summary": "Prometheus text exposition.", "security": [],
            "responses": {"200": {"description": "OK", "content": {"text/plain": {"schema": _STR}}}},
        }},
        "/admin/models": {"get": {
            **tag, "operationId": "adminListModels", "summary": "Local models: tier, state, bytes, loads...",
            "security": _MASTER, "responses": _responses(_json(_ref("ModelyardAdminModels")), (*_ADMIN, "404")),
        }},
        "/admin/autoscale": {"get": {
            **tag, "operationId": "adminAutoscale", "security": _MASTER,
            "summary": "Autoscaled models: desired vs actual replicas and the reason of the last decision.",
            "responses": _responses(_json(_ref("ModelyardAutoscale")), _ADMIN),
        }},
        "/admin/traffic": {"get": {  # api/ui_routes.py: what /ui and `modelyard top` poll
            **tag, "operationId": "adminTraffic", "security": _MASTER,
            "summary": "Per model over the last window: req/s, error rate, tokens/s, p50/p99 latency and TTFT, queue.",
            "responses": _responses(_json({"type": "object"}), _ADMIN),
        }},
        "/admin/routing": {"get": {
            **tag, "operationId": "adminRouting", "security": _MASTER,
            "summary": "The last auto-routing decisions and cascade hops, newest first.",
            "parameters": [_q("limit", "At most this many (1..1000)", {"type": "integer", "minimum": 1, "maximum": 1000})],
            "responses": _responses(_json({"type": "object"}), (*_ADMIN, "400")),
        }},
        "/admin/models/{model}/{action}": {"post": {
            **tag, "operationId": "adminModelAction", "security": _MASTER,
            "summary": "Load, demote ({\"to\": \"host\"|\"disk\"}), unload, pin or unpin a local model.",
            "parameters": [
                {"name": "model", "in": "path", "required": True, "schema": _STR},
                {"name": "action", "in": "path", "required": True,
                 "schema": {"type": "string", "enum": ["load", "demote", "unload", "pin", "unpin"]}},
            ],
            "requestBody": _body(_ref("ModelyardAdminDemote"), required=False),
            "responses": _responses(_json(_ref("ModelyardAdminAction")), (*err_body, *_ADMIN, "404", "409")),
        }},
        "/spend/logs": {"get": {
            **tag, "operationId": "spendLogs", "summary": "Spend rows, newest first.", "security": _MASTER,
            "parameters": [
                _q("key_hash", "A key's public id (or `master`)"), _q("model", "Model group"), _q("team", "Team id"),
                *spend_q,
                _q("limit", "Rows per page (1..1000)", {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}),
                _q("cursor", "`next_cursor` of the previous page (opaque; anything else is refused with 400)"),
            ],
            "responses": _responses(_json(_ref("ModelyardSpendLogs")), ("400", *_ADMIN, "404")),
        }},
        "/spend/report": {"get": {
            **tag, "operationId": "spendReport", "summary": "Requests, errors, tokens and cost, grouped.",
            "security": _MASTER,
            "parameters": [*spend_q, _q("group_by", "Comma-separated: model, key_hash, team, deployment, day",
                                        {"type": "string", "default": "model"})],
            "responses": _responses(_json(_ref("ModelyardSpendReport")), ("400", *_ADMIN, "404")),
        }},
        "/key/generate": {"post": {
            **tag, "operationId": "keyGenerate", "summary": "A new virtual key (LiteLLM's fields).", "security": _MASTER,
            "requestBody": _body(_ref("ModelyardKeyGenerateRequest")),
            "responses": _responses(_json(_ref("ModelyardKeyGenerateResponse")), (*err_body, *_ADMIN, "404")),
        }},
        "/key/info": {"get": {
            **tag, "operationId": "keyInfo", "security": [{"ApiKeyAuth": []}, *_MASTER],
            "summary": "A key's settings and spend; a virtual key may ask about itself (without `key`).",
            "parameters": [_q("key", "The key or its token (public id)")],
            "responses": _responses(_json(_ref("ModelyardKeyInfoResponse")), ("400", *_ADMIN, "404")),
        }},
        "/key/list": {"get": {
            **tag, "operationId": "keyList", "summary": "Every key (live ones unless include_revoked).",
            "security": _MASTER,
            "parameters": [_q("include_revoked", "`true` or `1` to include revoked keys")],
            "responses": _responses(_json(_ref("ModelyardKeyList")), (*_ADMIN, "404")),
        }},
        "/key/delete": {"post": {
            **tag, "operationId": "keyDelete", "summary": "Revoke keys (by key, token or alias).", "security": _MASTER,
            "requestBody": _body(_ref("ModelyardKeyDeleteRequest")),
            "responses": _responses(_json(_ref("ModelyardKeyDeleteResponse")), (*err_body, *_ADMIN, "404")),
        }},
    }


def _completion_chunk(schemas: dict[str, Any]) -> dict[str, Any]:
    """A streamed /v1/completions chunk: ``CreateCompletionResponse`` whose ``finish_reason`` is null
    until the last chunk of a choice and whose ``usage`` is null or absent (OpenAI has no schema
    for these chunks; its document lists no stream for /v1/completions)."""
    chunk = copy.deepcopy(schemas["CreateCompletionResponse"])
    chunk["description"] = "A chunk of a streamed completion (CreateCompletionResponse, nullable as streamed)."
    props = chunk["properties"]
    choice = props["choices"]["items"]["properties"]
    choice["finish_reason"] = {"anyOf": [choice["finish_reason"], {"type": "null"}]}
    props["usage"] = {"anyOf": [props["usage"], {"type": "null"}]}
    return chunk


def _sse_event(chunk: str) -> dict[str, Any]:
    """One server-sent event of a stream: ``data`` is a chunk (JSON), an error (JSON: a failure
    after the stream began) or the closing ``[DONE]``. (OpenAI's 3.1 document puts the chunk's
    schema where the event's belongs; OpenAPI describes an event by its fields.)"""
    payload = {"type": "string", "contentMediaType": "application/json",
               "contentSchema": {"anyOf": [_ref(chunk), _ref("ErrorResponse")]}}
    return {"type": "object", "required": ["data"],
            "properties": {"data": {"anyOf": [{"const": "[DONE]"}, payload]}}}


@functools.lru_cache(maxsize=1)
def openai_subset() -> dict[str, Any]:
    """The bundled extract of OpenAI's document (parsed once; callers copy before changing it)."""
    raw = resources.files("modelyard.api").joinpath("openapi", "openai-subset.json").read_bytes()
    return json.loads(raw)


def build_document(*, keys_enabled: bool) -> dict[str, Any]:
    """The whole document; ``keys_enabled``: whether the server checks API keys (a master key is set)."""
    doc = copy.deepcopy(openai_subset())
    components = doc["components"]
    components["schemas"].update(copy.deepcopy(SCHEMAS))
    rate = components["responses"]["TooManyRequests"]
    components["responses"].update({
        "Error": {"description": "An OpenAI-shaped error: " + " ".join(f"{k}: {v}" for k, v in _WHY.items()),
                  "content": {"application/json": {"schema": _ref("ErrorResponse")}}},
        "TooManyRequests": {**rate, "description": "A rate limit, budget or admission queue is full "
                                                   "(Retry-After says when to retry)."},
        "Unavailable": {
            "description": "Overloaded (admission queue TTL), no usable deployment, a local model that cannot "
                           "serve, keys not loaded yet, the spend database unreachable, or shutting down.",
            "headers": {"Retry-After": rate["headers"]["Retry-After"]},
            "content": {"application/json": {"schema": _ref("ErrorResponse")}},
        },
    })
    components["securitySchemes"]["MasterKeyAuth"] = {
        "type": "http", "scheme": "bearer",
        "description": "The master key (auth.master_key or $MODELYARD_MASTER_KEY). Without one configured, "
                       "these endpoints answer loopback clients only, with no credentials.",
    }
    components["securitySchemes"]["ApiKeyAuth"]["description"] = "A virtual key or the master key."
    for path, item in doc["paths"].items():
        for op in item.values():
            if not isinstance(op, dict) or "responses" not in op:
                continue
            codes = _AUTHED if "requestBody" not in op else _PROXIED
            if op.get("parameters") and "400" not in codes:  # a bad query parameter or id
                codes = ("400", *codes)
            if "{" in path and "404" not in codes:  # an id in the path: unknown, or another key's (never disclosed)
                codes = (*codes, "404")
            # modelyard's error answers win over the few the spec lists with other bodies
            op["responses"] = {**op["responses"], **_responses(op["responses"]["200"], codes)}
            op["responses"]["429"] = _RATE
    # OpenAI answers a base64 string for encoding_format "base64"; its document lists only the array.
    emb = components["schemas"]["Embedding"]["properties"]
    emb["embedding"] = {"oneOf": [emb["embedding"], {"type": "string", "contentEncoding": "base64",
                                                      "description": "encoding_format base64: little-endian float32s"}]}
    chat = doc["paths"]["/v1/chat/completions"]["post"]["responses"]["200"]["content"]
    chat["text/event-stream"] = {"schema": _sse_event("CreateChatCompletionStreamResponse")}
    cmpl = doc["paths"]["/v1/completions"]["post"]["responses"]["200"]["content"]
    components["schemas"]["ModelyardCompletionStreamChunk"] = _completion_chunk(components["schemas"])
    cmpl["text/event-stream"] = {"schema": _sse_event("ModelyardCompletionStreamChunk")}
    content = doc["paths"]["/v1/files/{file_id}/content"]["get"]["responses"]["200"]["content"]
    content["application/octet-stream"] = {"schema": {"type": "string", "format": "binary"}}  # the file's bytes
    doc["paths"].update(_modelyard_paths())
    doc["info"] = {
        "title": "modelyard",
        "version": _version(),
        "description": "modelyard's OpenAI-compatible API and its own endpoints. The OpenAI operations are "
                       "described by OpenAI's own document: " + doc["info"]["description"],
        "license": doc["info"]["license"],
        "x-openai-license-text": doc["info"]["x-license-text"],
    }
    if keys_enabled:
        doc["security"] = [{"ApiKeyAuth": []}]
    else:
        doc["security"] = [{}]  # no keys configured: /v1/* takes any caller (loopback-only server)
        for item in doc["paths"].values():
            for op in item.values():
                if isinstance(op, dict) and op.get("security"):
                    op["security"] = [{}]
    return doc


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("modelyard")
    except Exception:  # noqa: BLE001 - not installed as a distribution
        return "0"


def register(app: Any) -> None:
    """``GET /openapi.json`` on ``app`` (a ``ModelyardApp``): built on the first request, then the same bytes."""
    document: list[bytes] = []

    async def openapi(req: Any) -> None:
        if not document:
            assert app.services is not None
            doc = build_document(keys_enabled=app.services.gate.enabled)
            document.append(json.dumps(doc, separators=(",", ":")).encode())  # OpenAI's has integers orjson refuses
        await req.respond(200, document[0])

    app.route("/openapi.json", "GET", openapi)
