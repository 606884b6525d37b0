"""Unit tests of the exception tree (modelyard.errors)."""

from __future__ import annotations

import orjson
import pytest

from modelyard import errors as E

TABLE = [
    # class, status, type, code
    (E.ModelyardError, 500, "server_error", "internal_error"),
    (E.ConfigError, 500, "config_error", "invalid_config"),
    (E.InvalidRequestError, 400, "invalid_request_error", "invalid_request"),
    (E.InvalidJSONError, 400, "invalid_request_error", "invalid_json"),
    (E.AuthenticationError, 401, "authentication_error", "invalid_api_key"),
    (E.NotFoundError, 404, "invalid_request_error", "not_found"),
    (E.ModelNotFoundError, 404, "invalid_request_error", "model_not_found"),
    (E.MethodNotAllowedError, 405, "invalid_request_error", "method_not_allowed"),
    (E.PayloadTooLargeError, 413, "invalid_request_error", "payload_too_large"),
    (E.UnsupportedMediaTypeError, 415, "invalid_request_error", "unsupported_media_type"),
    (E.UpstreamError, 502, "upstream_error", "bad_gateway"),
    (E.UpstreamConnectError, 502, "upstream_error", "upstream_connect_error"),
    (E.UpstreamTimeoutError, 504, "upstream_error", "upstream_timeout"),
]

OVERLOAD = [
    (E.OverloadedError, 503, "server_error", "overloaded"),
    (E.QueueFullError, 429, "rate_limit_error", "queue_full"),
    (E.QueueTimeoutError, 503, "server_error", "queue_timeout"),
    (E.NoDeploymentAvailableError, 503, "server_error", "no_deployment_available"),
]


def check_body(exc: E.ModelyardError) -> dict:
    body = exc.body()
    assert list(body) == ["error"]
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert orjson.loads(exc.to_json()) == body
    return body["error"]


@pytest.mark.parametrize(("cls", "status", "etype", "code"), TABLE)
def test_error_classes(cls: type[E.ModelyardError], status: int, etype: str, code: str) -> None:
    exc = cls("something went wrong")
    assert isinstance(exc, E.ModelyardError) and isinstance(exc, Exception)
    assert (exc.status, exc.type, exc.code) == (status, etype, code)
    assert exc.headers == {}
    assert str(exc) == "something went wrong"
    err = check_body(exc)
    assert err == {"message": "something went wrong", "type": etype, "param": None, "code": code}


@pytest.mark.parametrize(("cls", "status", "etype", "code"), OVERLOAD)
def test_overload_classes_carry_retry_after(cls: type[E.OverloadedError], status: int, etype: str, code: str) -> None:
    exc = cls("busy", retry_after_s=2.5)
    assert (exc.status, exc.type, exc.code) == (status, etype, code)
    assert exc.retry_after_s == 2.5
    assert exc.headers == {"retry-after": "3"}
    assert check_body(exc) == {"message": "busy", "type": etype, "param": None, "code": code}


@pytest.mark.parametrize(("secs", "header"), [(0.0, "1"), (0.2, "1"), (1.0, "1"), (1.5, "2"), (2.0, "2"), (29.9, "30"), (30.0, "30")])
def test_retry_after_is_whole_seconds_at_least_one(secs: float, header: str) -> None:
    assert E.QueueTimeoutError("x", retry_after_s=secs).headers["retry-after"] == header


def test_retry_after_header_given_explicitly_wins() -> None:
    exc = E.QueueFullError("x", retry_after_s=5, headers={"retry-after": "9"})
    assert exc.headers["retry-after"] == "9"


def test_overrides_param_code_status_headers() -> None:
    exc = E.InvalidRequestError("bad", param="messages[0].role", code="invalid_value", status=422, headers={"x-a": "1"})
    assert exc.status == 422
    assert exc.headers == {"x-a": "1"}
    assert check_body(exc) == {"message": "bad", "type": "invalid_request_error", "param": "messages[0].role", "code": "invalid_value"}
    # class attributes are untouched by an instance's overrides
    assert E.InvalidRequestError.status == 400 and E.InvalidRequestError.code == "invalid_request"
    assert E.InvalidRequestError("x").status == 400


def test_headers_are_copied() -> None:
    h = {"a": "1"}
    exc = E.ModelyardError("x", headers=h)
    exc.headers["b"] = "2"
    assert h == {"a": "1"}


def test_hierarchy() -> None:
    assert issubclass(E.ModelNotFoundError, E.NotFoundError)
    assert issubclass(E.NotFoundError, E.InvalidRequestError)
    assert issubclass(E.QueueFullError, E.OverloadedError)
    assert issubclass(E.UpstreamStatusError, E.UpstreamError)
    assert issubclass(E.UpstreamTimeoutError, E.UpstreamError)
    assert E.UpstreamError("x").retryable is True
    assert E.UpstreamTimeoutError("x").retryable is True


# --- UpstreamStatusError ------------------------------------------------------------------------

OPENAI_BODY = orjson.dumps(
    {"error": {"message": "Invalid 'messages[0].role'", "type": "invalid_request_error", "param": "messages[0].role", "code": "invalid_value"}}
)


@pytest.mark.parametrize(
    ("upstream", "status", "retryable"),
    [
        (400, 400, False), (401, 401, False), (403, 403, False), (404, 404, False), (409, 409, False),
        (413, 413, False), (422, 422, False),
        (408, 502, True), (429, 429, True),
        (500, 502, True), (502, 502, True), (503, 502, True), (504, 502, True), (599, 502, True),
    ],
)
def test_upstream_status_mapping(upstream: int, status: int, retryable: bool) -> None:
    exc = E.UpstreamStatusError(upstream, OPENAI_BODY)
    assert exc.status == status
    assert exc.retryable is retryable
    assert exc.upstream_status == upstream
    assert exc.upstream_body == OPENAI_BODY


def test_upstream_message_is_passed_on() -> None:
    exc = E.UpstreamStatusError(400, OPENAI_BODY)
    assert exc.message == "Invalid 'messages[0].role'"
    assert check_body(exc) == {
        "message": "Invalid 'messages[0].role'", "type": "invalid_request_error",
        "param": "messages[0].role", "code": "invalid_value",
    }
    assert exc.headers == {}


def test_upstream_type_absent_keeps_upstream_error() -> None:
    exc = E.UpstreamStatusError(503, b'{"error":{"message":"overloaded","code":503}}')
    assert exc.message == "overloaded"
    assert exc.type == "upstream_error"
    assert exc.code == "503"  # a numeric code is rendered as a string
    assert exc.param is None


def test_upstream_error_as_plain_string() -> None:
    exc = E.UpstreamStatusError(500, b'{"error":"model crashed"}')
    assert exc.message == "model crashed"
    assert exc.code == "bad_gateway"  # class default: the upstream gave no code


@pytest.mark.parametrize(
    "body",
    [
        b"<html><body>502 Bad Gateway</body></html>",
        b"Internal Server Error",
        b"[1, 2]",
        b'"just a string"',
        b"null",
        b"42",
        b'{"detail": "not found"}',
        b'{"error": {"code": 1}}',
        b'{"error": {"message": 7}}',
        b'{"error": null}',
        b"\xff\xfe not utf-8",
    ],
)
def test_upstream_non_openai_bodies(body: bytes) -> None:
    exc = E.UpstreamStatusError(502, body)
    assert exc.message.startswith("upstream returned HTTP 502: ")
    assert exc.code == "upstream_502"
    assert exc.type == "upstream_error"
    assert exc.param is None
    assert exc.status == 502
    orjson.loads(exc.to_json())  # always renderable


def test_upstream_non_json_text_is_included_and_truncated() -> None:
    exc = E.UpstreamStatusError(404, b"  no such route  \n")
    assert exc.message == "upstream returned HTTP 404: no such route"
    assert exc.status == 404 and not exc.retryable
    long = E.UpstreamStatusError(500, b"x" * 5000)
    assert len(long.message) < 600


def test_upstream_empty_body() -> None:
    exc = E.UpstreamStatusError(503, b"")
    assert exc.message == "upstream returned HTTP 503"
    assert exc.code == "upstream_503"


def test_upstream_retry_after_header_is_kept() -> None:
    exc = E.UpstreamStatusError(429, OPENAI_BODY, retry_after="12")
    assert exc.headers == {"retry-after": "12"}
    assert exc.status == 429 and exc.retryable


def test_internal_error_body_hides_details() -> None:
    obj = orjson.loads(E.internal_error_body())
    assert obj == {"error": {"message": "internal server error", "type": "server_error", "param": None, "code": "internal_error"}}
