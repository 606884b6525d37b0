"""The one exception tree of modelyard.

Every error a client can see is a ``ModelyardError``: it knows its HTTP status, its OpenAI error
``type`` and ``code``, the offending ``param`` (if any), and renders itself as OpenAI's
``{"error": {"message", "type", "param", "code"}}``. Foreign exceptions are translated at the
boundary where they occur (``raise ... from exc``); the HTTP edge has one handler that renders these
and turns anything else into a generic 500 with no traceback in the body.
"""

from __future__ import annotations

from typing import Any

import orjson


class ModelyardError(Exception):
    """Base of every modelyard error."""

    status: int = 500
    type: str = "server_error"
    code: str | None = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        status: int | None = None,
        headers: dict[str, str] | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.headers: dict[str, str] = dict(headers or {})
        self.retry_after_s = retry_after_s
        if retry_after_s is not None:  # whole seconds, at least 1 (HTTP's Retry-After)
            self.headers.setdefault("retry-after", str(max(1, int(retry_after_s + 0.999))))

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def to_json(self) -> bytes:
        return orjson.dumps(self.body())


# --- configuration (never reaches a client: raised at load time) -------------------------------


class ConfigError(ModelyardError):
    """A config file is invalid; the message names the file and every bad field path."""

    status = 500
    type = "config_error"
    code = "invalid_config"


# --- client errors (4xx) -----------------------------------------------------------------------


class InvalidRequestError(ModelyardError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class InvalidJSONError(InvalidRequestError):
    code = "invalid_json"


class AuthenticationError(ModelyardError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class PermissionDeniedError(ModelyardError):
    status = 403
    type = "permission_error"
    code = "permission_denied"


class NotFoundError(InvalidRequestError):
    status = 404
    code = "not_found"


class ModelNotFoundError(NotFoundError):
    code = "model_not_found"


class MethodNotAllowedError(InvalidRequestError):
    status = 405
    code = "method_not_allowed"


class PayloadTooLargeError(InvalidRequestError):
    status = 413
    code = "payload_too_large"


class UnsupportedMediaTypeError(InvalidRequestError):
    status = 415
    code = "unsupported_media_type"


# --- overload ----------------------------------------------------------------------------------


class OverloadedError(ModelyardError):
    """Admission refused; always carries ``Retry-After``."""

    status = 503
    type = "server_error"
    code = "overloaded"

    def __init__(self, message: str, *, retry_after_s: float, **kw: Any) -> None:
        super().__init__(message, retry_after_s=retry_after_s, **kw)  # required here: overload always says when


class QueueFullError(OverloadedError):
    status = 429
    type = "rate_limit_error"
    code = "queue_full"


class QueueTimeoutError(OverloadedError):
    status = 503
    code = "queue_timeout"


class ShuttingDownError(OverloadedError):
    """The request was still running when the shutdown grace period ended."""

    status = 503
    code = "shutting_down"


class SpendBackloggedError(OverloadedError):
    """The spend writer's backlog is at its bound (database and spool both behind): the request is
    refused rather than served unaccounted."""

    status = 503
    code = "spend_backlogged"


class NoDeploymentAvailableError(OverloadedError):
    """Every deployment of every model in the chain is open (circuit breaker) or at capacity."""

    status = 503
    code = "no_deployment_available"


class RateLimitedError(OverloadedError):
    """An rpm/tpm limit (of the key, the model, or every deployment) is reached; the headers say
    which and when (``Retry-After`` and OpenAI's ``x-ratelimit-*``)."""

    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class BudgetExceededError(ModelyardError):
    """A key's budget for its current period is spent (Retry-After: when the period resets)."""

    status = 429
    type = "insufficient_quota"
    code = "budget_exceeded"


# --- upstream failures -------------------------------------------------------------------------


class UpstreamError(ModelyardError):
    """An upstream failed in a way that is not the client's fault."""

    status = 502
    type = "upstream_error"
    code = "bad_gateway"
    retryable = True


class UpstreamConnectError(UpstreamError):
    code = "upstream_connect_error"


class UpstreamTimeoutError(UpstreamError):
    status = 504
    code = "upstream_timeout"


class UpstreamStatusError(UpstreamError):
    """The upstream answered with an error status.

    A 4xx other than 408/429 is the client's fault: passed on as is (status and the upstream's own
    message), never retried. 408, 429 and 5xx are retryable; after retries and fallbacks a 5xx
    becomes 502 and a 429 stays 429.
    """

    def __init__(self, upstream_status: int, body: bytes, *, retry_after: str | None = None) -> None:
        self.upstream_status = upstream_status
        self.upstream_body = body
        message, etype, param, code = _parse_upstream_error(body, upstream_status)
        self.retryable = upstream_status in (408, 429) or upstream_status >= 500
        status = upstream_status if not self.retryable or upstream_status == 429 else 502
        headers = {"retry-after": retry_after} if retry_after else None
        super().__init__(message, param=param, code=code, status=status, headers=headers)
        if etype:
            self.type = etype


# --- local models (issue 3) ---------------------------------------------------------------------


class ModelUnavailableError(UpstreamError):
    """A local model cannot serve now (failed to load, corrupt artifact, does not fit).

    An ``UpstreamError``: to the router a local model that cannot serve is a failed deployment,
    so retries on other deployments and fallbacks apply, and the final answer is this 503."""

    status = 503
    type = "server_error"
    code = "model_unavailable"

    def body(self) -> dict[str, Any]:
        """Clients get the first line; the rest (an engine's log tail, say) is for operators and
        stays in ``/admin/models`` and the server log."""
        first, _, rest = self.message.partition("\n")
        message = first + (" (details: GET /admin/models)" if rest.strip() else "")
        return {"error": {"message": message, "type": self.type, "param": self.param, "code": self.code}}


class ModelLoadError(ModelUnavailableError):
    """The engine failed to load the model (the message says why)."""

    code = "model_load_failed"


class InsufficientMemoryError(ModelUnavailableError):
    """The model does not fit its tier even after every allowed eviction."""

    code = "insufficient_memory"


class ModelNotReadyError(ModelUnavailableError):
    """The model did not become ready (loading, or its engine restarting) within the request's
    wait (the queue TTL); ``Retry-After`` says when it is expected to be."""

    code = "model_not_ready"


class EngineRestartingError(ModelUnavailableError):
    """The engine died under the request and its supervisor is starting it again. Retried once on
    the restarted engine (``retry_once``), then answered 503 with the time it should be back."""

    code = "engine_restarting"

    def __init__(self, message: str, *, retry_after_s: float, retry_once: bool = True) -> None:
        super().__init__(message, retry_after_s=retry_after_s)
        self.retry_once = retry_once


class ArtifactError(ModelyardError):
    """A model artifact is missing, corrupt, or not the digest a deployment pinned."""

    status = 503
    type = "server_error"
    code = "artifact_error"



def _parse_upstream_error(body: bytes, status: int) -> tuple[str, str | None, str | None, str | None]:
    try:
        data = orjson.loads(body)
        err = data["error"]
        if isinstance(err, dict):
            message = err.get("message")
            if isinstance(message, str):
                code = err.get("code")
                return (
                    message,
                    err.get("type") if isinstance(err.get("type"), str) else None,
                    err.get("param") if isinstance(err.get("param"), str) else None,
                    str(code) if code is not None else None,
                )
        elif isinstance(err, str):
            return err, None, None, None
    except (orjson.JSONDecodeError, KeyError, TypeError):
        pass
    text = body[:500].decode("utf-8", "replace").strip()
    return f"upstream returned HTTP {status}" + (f": {text}" if text else ""), None, None, f"upstream_{status}"


def internal_error_body() -> bytes:
    return orjson.dumps(
        {"error": {"message": "internal server error", "type": "server_error", "param": None, "code": "internal_error"}}
    )
