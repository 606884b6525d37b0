"""Bad input and failing upstreams: every answer is a clean OpenAI-shaped error, never a traceback."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from .support import (
    FAST_RETRY,
    Gateway,
    MockUpstream,
    ProcessPool,
    assert_error,
    closed_port,
    deployment,
    model_cfg,
    wait_until,
)

UPSTREAM_KEY = "sk-upstream-secret-5d2b"
MAX_BODY = 2048
CHAT = "/v1/chat/completions"
MSG = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def gw(module_procs: ProcessPool, shared_mock: MockUpstream) -> Gateway:
    retry = {"num_retries": 2, "backoff_base_s": 0.01, "backoff_max_s": 0.02}
    return module_procs.gateway(
        {
            "server": {"max_body_bytes": MAX_BODY},
            "router": {"retry": retry, "breaker": {"allowed_fails": 1000}},
            "models": [
                model_cfg("m", deployment(shared_mock, "up-m", api_key=UPSTREAM_KEY), aliases=["m-alias"]),
                model_cfg("emb", deployment(shared_mock, "up-emb", api_key=UPSTREAM_KEY)),
            ],
        }
    )


@pytest.fixture
def http(gw: Gateway, mock: MockUpstream) -> httpx.Client:
    return gw.http


@pytest.fixture(autouse=True, scope="module")
def _no_traceback_in_the_log(gw: Gateway):  # noqa: ANN202
    yield
    assert "Traceback" not in gw.stderr_text(), gw.stderr_text()[-4000:]


def post(http: httpx.Client, path: str, content: bytes) -> httpx.Response:
    return http.post(path, content=content, headers={"content-type": "application/json"})


# --- the body ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [b"{", b"", b"   ", b'{"model": "m", "messages": [}', b"\xff\xfe{}", b"[" * 1500, b'{"model":"m","temperature":NaN}'],
    ids=["truncated", "empty", "blank", "broken", "not-utf8", "too-deep", "nan"],
)
def test_malformed_json_is_400(http: httpx.Client, raw: bytes) -> None:
    assert_error(post(http, CHAT, raw), 400)


@pytest.mark.parametrize("raw", [b"[]", b'"text"', b"42", b"null", b"true"])
def test_body_not_an_object_is_400(http: httpx.Client, raw: bytes) -> None:
    assert_error(post(http, CHAT, raw), 400)


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        (CHAT, {"messages": MSG}, "model"),
        (CHAT, {"model": 7, "messages": MSG}, "model"),
        (CHAT, {"model": "", "messages": MSG}, "model"),
        (CHAT, {"model": "m"}, "messages"),
        (CHAT, {"model": "m", "messages": "hi"}, "messages"),
        (CHAT, {"model": "m", "messages": []}, "messages"),
        (CHAT, {"model": "m", "messages": ["hi"]}, "messages[0]"),
        (CHAT, {"model": "m", "messages": [{"content": "hi"}]}, "messages[0].role"),
        (CHAT, {"model": "m", "messages": [*MSG, {"role": 3, "content": "x"}]}, "messages[1].role"),
        (CHAT, {"model": "m", "messages": MSG, "stream": "yes"}, "stream"),
        (CHAT, {"model": "m", "messages": MSG, "stream": 1}, "stream"),
        (CHAT, {"model": "m", "messages": MSG, "stream": True, "stream_options": {"include_usage": "y"}}, "stream_options.include_usage"),
        (CHAT, {"model": "m", "messages": MSG, "max_tokens": "10"}, "max_tokens"),
        (CHAT, {"model": "m", "messages": MSG, "max_tokens": True}, "max_tokens"),
        (CHAT, {"model": "m", "messages": MSG, "n": 0}, "n"),
        (CHAT, {"model": "m", "messages": MSG, "temperature": "hot"}, "temperature"),
        (CHAT, {"model": "m", "messages": MSG, "stop": [1]}, "stop"),
        ("/v1/completions", {"model": "m"}, "prompt"),
        ("/v1/completions", {"model": "m", "prompt": 5}, "prompt"),
        ("/v1/embeddings", {"model": "emb"}, "input"),
        ("/v1/embeddings", {"model": "emb", "input": []}, "input"),
        ("/v1/embeddings", {"model": "emb", "input": "x", "encoding_format": "int8"}, "encoding_format"),
        ("/v1/embeddings", {"model": "emb", "input": "x", "stream": True}, "stream"),
    ],
)
def test_missing_or_ill_typed_field_is_400_naming_it(
    http: httpx.Client, mock: MockUpstream, path: str, body: dict, param: str
) -> None:
    err = assert_error(http.post(path, json=body), 400, param=param)
    assert err["type"] == "invalid_request_error"
    assert mock.stats()["requests"] == 0, "an invalid request reached the upstream"


def test_sdk_sees_bad_request(gw: Gateway) -> None:
    with pytest.raises(openai.BadRequestError) as ei:
        gw.client().chat.completions.create(model="m", messages=[{"content": "no role"}])  # type: ignore[list-item]
    assert ei.value.status_code == 400
    assert "messages[0].role" in str(ei.value)


def test_unknown_model_is_404_without_leaking_config(http: httpx.Client, mock: MockUpstream) -> None:
    for path, body in (
        (CHAT, {"model": "gpt-nope", "messages": MSG}),
        ("/v1/completions", {"model": "gpt-nope", "prompt": "x"}),
        ("/v1/embeddings", {"model": "gpt-nope", "input": "x"}),
    ):
        r = http.post(path, json=body)
        err = assert_error(r, 404, code="model_not_found")
        assert "gpt-nope" in err["message"]
        for secret in ("up-m", "up-emb", "m-alias", "'m'", "emb", UPSTREAM_KEY, mock.root_url):
            assert secret not in r.text, f"{secret!r} leaked in {r.text}"
    assert mock.stats()["requests"] == 0


def test_body_over_limit_is_413(http: httpx.Client, mock: MockUpstream) -> None:
    big = {"model": "m", "messages": [{"role": "user", "content": "x" * (MAX_BODY + 10)}]}
    assert_error(http.post(CHAT, json=big), 413)

    def chunks():  # no Content-Length: chunked transfer, the limit must hold while reading
        yield b'{"model": "m", "messages": [{"role": "user", "content": "'
        for _ in range(10):
            yield b"y" * 512
        yield b'"}]}'

    assert_error(http.post(CHAT, content=chunks(), headers={"content-type": "application/json"}), 413)
    # exactly at the limit is fine
    pad = MAX_BODY - len(b'{"model":"m","messages":[{"role":"user","content":""}]}')
    ok = b'{"model":"m","messages":[{"role":"user","content":"' + b"z" * pad + b'"}]}'
    assert len(ok) == MAX_BODY
    assert post(http, CHAT, ok).status_code == 200
    assert mock.stats()["requests"] == 1


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("GET", CHAT, "POST"),
        ("PUT", CHAT, "POST"),
        ("GET", "/v1/embeddings", "POST"),
        ("DELETE", "/v1/models", "GET"),
        ("POST", "/v1/models", "GET"),
        ("DELETE", "/v1/models/m", "GET"),
        ("POST", "/metrics", "GET"),
    ],
)
def test_wrong_method_is_405(http: httpx.Client, method: str, path: str, allow: str) -> None:
    r = http.request(method, path)
    assert_error(r, 405)
    assert r.headers.get("allow") == allow


@pytest.mark.parametrize("path", ["/v1/nope", "/v2/chat/completions", "/v1/chat/completions/extra", "/", "/v1/models/"])
def test_unknown_path_is_404(http: httpx.Client, path: str) -> None:
    assert_error(http.get(path), 404)
    assert_error(http.post(path, json={"model": "m", "messages": MSG}), 404)


# --- upstream errors ----------------------------------------------------------------------------


@pytest.mark.parametrize("status", [400, 401, 404, 422])
def test_upstream_client_error_is_passed_on_not_retried(http: httpx.Client, mock: MockUpstream, status: int) -> None:
    mock.control(f"error:{status}")
    err = assert_error(http.post(CHAT, json={"model": "m", "messages": MSG}), status)
    assert err["message"] == f"mock error {status}"
    assert mock.stats()["requests"] == 1, "a client error was retried"


def test_upstream_429_is_retried_then_passed_on(http: httpx.Client, mock: MockUpstream) -> None:
    mock.control("error:429")
    r = http.post(CHAT, json={"model": "m", "messages": MSG})
    assert_error(r, 429)
    assert r.headers.get("retry-after")
    assert mock.stats()["requests"] == 3


def test_upstream_500_after_retries_and_fallbacks_is_502(gateway, procs: ProcessPool) -> None:  # noqa: ANN001
    bad_a, bad_b = procs.mock(behavior="error:500"), procs.mock(behavior="error:503")
    retry = {"num_retries": 1, "backoff_base_s": 0.01, "backoff_max_s": 0.02}
    gw = gateway(
        {
            "router": {"retry": retry},
            "models": [
                model_cfg("a", deployment(bad_a, "up-a"), fallbacks=["b"]),
                model_cfg("b", deployment(bad_b, "up-b")),
            ],
        }
    )
    r = gw.http.post(CHAT, json={"model": "a", "messages": MSG})
    err = assert_error(r, 502)
    assert "Traceback" not in r.text
    assert err["type"] != "invalid_request_error"
    assert bad_a.stats()["requests"] == 2 and bad_b.stats()["requests"] == 2
    with pytest.raises(openai.InternalServerError) as ei:
        gw.client().chat.completions.create(model="a", messages=MSG)
    assert ei.value.status_code == 502


def test_upstream_hang_with_small_timeout_is_504(gateway, procs: ProcessPool) -> None:  # noqa: ANN001
    hang = procs.mock(behavior="hang")
    gw = gateway({"router": {"retry": FAST_RETRY}, "models": [model_cfg("m", deployment(hang, "up", timeout_s=0.5))]})
    t0 = time.monotonic()
    r = gw.http.post(CHAT, json={"model": "m", "messages": MSG})
    elapsed = time.monotonic() - t0
    assert_error(r, 504, code="upstream_timeout")
    assert 0.4 < elapsed < 5, elapsed
    # the gateway gave up on the upstream request: the mock saw the connection go
    stats = hang.wait_idle()
    assert stats["disconnects"] == 1
    # streams too: no first byte within the timeout → 504 before any byte went out
    r = gw.http.post(CHAT, json={"model": "m", "messages": MSG, "stream": True})
    assert_error(r, 504, code="upstream_timeout")


def test_connection_refused_is_502(gateway) -> None:  # noqa: ANN001
    port = closed_port()
    gw = gateway(
        {"router": {"retry": FAST_RETRY}, "models": [model_cfg("m", deployment(f"http://127.0.0.1:{port}/v1", "up"))]}
    )
    err = assert_error(gw.http.post(CHAT, json={"model": "m", "messages": MSG}), 502, code="upstream_connect_error")
    assert "Traceback" not in err["message"]
    assert_error(gw.http.post(CHAT, json={"model": "m", "messages": MSG, "stream": True}), 502)


def test_client_api_key_never_logged(gateway, mock: MockUpstream) -> None:  # noqa: ANN001
    secret = "sk-CLIENT-SECRET-do-not-log-4b7e91"
    gw = gateway({"models": [model_cfg("m", deployment(mock, "up-m", api_key=UPSTREAM_KEY))]})
    c = gw.client(api_key=secret)
    c.chat.completions.create(model="m", messages=MSG)
    list(c.chat.completions.create(model="m", messages=MSG, stream=True))
    with pytest.raises(openai.NotFoundError):
        c.chat.completions.create(model="nope", messages=MSG)
    with pytest.raises(openai.BadRequestError):
        c.chat.completions.create(model="m", messages=[])
    gw.http.post(CHAT, content=b"{", headers={"authorization": f"Bearer {secret}"})
    mock.control("error:401")
    with pytest.raises(openai.AuthenticationError):
        c.chat.completions.create(model="m", messages=MSG)
    log = wait_until(lambda: len(gw.access_log()) >= 6 and gw.stderr_text(), 5, "six access-log lines")
    assert secret not in log
    assert UPSTREAM_KEY not in log
    records = gw.access_log()
    assert [r["status"] for r in records] == [200, 200, 404, 400, 400, 401]
    assert all(r.get("request_id") for r in records)


def test_upstream_client_error_on_a_stream_is_plain_json(gw: Gateway, mock: MockUpstream) -> None:
    mock.control("error:400")
    with pytest.raises(openai.BadRequestError) as ei:
        gw.client().chat.completions.create(model="m", messages=MSG, stream=True)
    assert ei.value.status_code == 400 and "mock error 400" in str(ei.value)
    assert mock.stats()["requests"] == 1
