"""Fallbacks, retries, the circuit breaker, admission control and disconnects, against real processes."""

from __future__ import annotations

import asyncio
import socket
import time

import httpx
import openai
import orjson
import pytest

from .support import FAST_RETRY, Gateway, MockUpstream, ProcessPool, deployment, model_cfg, validate, wait_until

MSG = [{"role": "user", "content": "hello big world"}]
REPLY = "mock reply to: hello big world"
CHAT = "/v1/chat/completions"


@pytest.fixture(scope="module")
def other_mock(module_procs: ProcessPool) -> MockUpstream:
    return module_procs.mock()


@pytest.fixture
def up_a(mock: MockUpstream) -> MockUpstream:
    return mock


@pytest.fixture
def up_b(other_mock: MockUpstream) -> MockUpstream:
    other_mock.reset("ok")
    return other_mock


# --- fallbacks and retries ----------------------------------------------------------------------


def test_fallback_answers_from_the_next_model(gateway, up_a: MockUpstream, up_b: MockUpstream) -> None:  # noqa: ANN001
    up_a.control("error:500")
    gw = gateway(
        {
            "router": {"retry": {"num_retries": 1, "backoff_base_s": 0.01, "backoff_max_s": 0.02}},
            "models": [
                model_cfg("A", deployment(up_a, "up-a"), fallbacks=["B"]),
                model_cfg("B", deployment(up_b, "up-b")),
            ],
        }
    )
    raw = gw.client().chat.completions.with_raw_response.create(model="A", messages=MSG)
    assert raw.status_code == 200
    assert raw.headers["x-modelyard-model"] == "B"
    assert raw.headers["x-modelyard-fallbacks"] == "1"
    assert raw.parse().choices[0].message.content == REPLY
    assert up_a.stats()["requests"] == 2 and up_b.stats()["requests"] == 1
    assert up_b.last_request()["body"]["model"] == "up-b"
    assert gw.metric("modelyard_fallbacks_total", model="A", to_model="B") == 1
    # streams fall back the same way (before the first byte)
    with gw.client().chat.completions.with_streaming_response.create(model="A", messages=MSG, stream=True) as s:
        assert s.headers["x-modelyard-model"] == "B" and s.headers["x-modelyard-fallbacks"] == "1"
        assert "".join(c.choices[0].delta.content or "" for c in s.parse()) == REPLY
    assert gw.metric("modelyard_fallbacks_total", model="A", to_model="B") == 2


def test_retries_hide_a_flaky_upstream(gateway, up_a: MockUpstream) -> None:  # noqa: ANN001
    up_a.control("flaky:2")
    gw = gateway(
        {
            "router": {
                "retry": {"num_retries": 2, "backoff_base_s": 0.01, "backoff_max_s": 0.02},
                "breaker": {"allowed_fails": 100},
            },
            "models": [model_cfg("m", deployment(up_a, "up", name="flaky-dep"))],
        }
    )
    c = gw.client()
    for _ in range(6):
        assert c.chat.completions.create(model="m", messages=MSG).choices[0].message.content == REPLY
    retries = gw.metric("modelyard_retries_total", model="m", deployment="flaky-dep")
    assert retries is not None and retries > 0
    assert up_a.stats()["requests"] == 6 + retries


def test_dropping_deployment_is_routed_around(gateway, up_a: MockUpstream, up_b: MockUpstream) -> None:  # noqa: ANN001
    up_a.control("drop")
    gw = gateway(
        {
            "router": {"strategy": "round_robin", "retry": {"num_retries": 2, "backoff_base_s": 0.005, "backoff_max_s": 0.01}},
            "models": [model_cfg("m", deployment(up_a, "up", name="dropper"), deployment(up_b, "up", name="good"))],
        }
    )
    c = gw.client()
    for i in range(10):
        r = c.chat.completions.create(model="m", messages=[{"role": "user", "content": f"q{i}"}])
        assert r.choices[0].message.content == f"mock reply to: q{i}"
    assert up_a.stats()["dropped"] >= 1, "the dropping deployment was never tried"
    assert up_b.stats()["completed"] == 10


# --- the circuit breaker ------------------------------------------------------------------------


def test_circuit_breaker_opens_and_recovers(gateway, up_a: MockUpstream) -> None:  # noqa: ANN001
    gw = gateway(
        {
            "router": {"retry": FAST_RETRY, "breaker": {"allowed_fails": 2, "window_s": 60, "cooldown_s": 1}},
            "models": [model_cfg("m", deployment(up_a, "up", name="dep"))],
        }
    )
    state = lambda: gw.metric("modelyard_breaker_state", model="m", deployment="dep")  # noqa: E731
    send = lambda: gw.http.post(CHAT, json={"model": "m", "messages": MSG})  # noqa: E731
    assert state() == 0 and send().status_code == 200
    up_a.reset("error:500")
    statuses = []
    for _ in range(10):
        statuses.append(send().status_code)
        if state() == 2:
            break
    assert state() == 2, statuses
    assert statuses == [502, 502]
    opened = time.monotonic()
    seen = up_a.stats()["requests"]
    assert seen == 2
    refused = []
    # only while well inside the 1 s cooldown: a request after it would be the half-open probe
    while time.monotonic() - opened < 0.6 and len(refused) < 3:
        refused.append(send())
    assert refused, "the machine is too slow to observe the open breaker"
    assert up_a.stats()["requests"] == seen, "an open breaker let a request through"
    ready = gw.http.get("/health/readiness")
    for r in refused:
        assert r.status_code == 503, r.text
        assert int(r.headers["retry-after"]) >= 1
        validate(r.json(), "ErrorResponse")
        assert r.json()["error"]["code"] == "no_deployment_available"
    assert ready.status_code == 200, "one open breaker must not fail the readiness probe"
    assert ready.json()["status"] == "degraded" and ready.json()["unavailable"] == ["m"]
    # heal; after the cooldown one probe goes through and closes the breaker
    up_a.control("ok")
    time.sleep(max(0.0, opened + 1.1 - time.monotonic()))
    r = send()
    assert r.status_code == 200, r.text
    assert state() == 0
    for _ in range(3):
        assert send().status_code == 200
    assert up_a.stats()["requests"] == seen + 4
    assert gw.http.get("/health/readiness").json()["status"] == "ready"


def test_failed_probe_reopens_the_breaker(gateway, up_a: MockUpstream) -> None:  # noqa: ANN001
    gw = gateway(
        {
            "router": {"retry": FAST_RETRY, "breaker": {"allowed_fails": 1, "window_s": 60, "cooldown_s": 0.5}},
            "models": [model_cfg("m", deployment(up_a, "up", name="dep"))],
        }
    )
    send = lambda: gw.http.post(CHAT, json={"model": "m", "messages": MSG})  # noqa: E731
    up_a.control("error:500")
    assert send().status_code == 502
    assert gw.metric("modelyard_breaker_state", model="m", deployment="dep") == 2
    time.sleep(0.6)
    assert send().status_code == 502  # the probe, failing
    assert gw.metric("modelyard_breaker_state", model="m", deployment="dep") == 2
    r = send()
    assert r.status_code == 503 and r.headers.get("retry-after")
    assert up_a.stats()["requests"] == 2


# --- admission ----------------------------------------------------------------------------------


def _queue_gateway(gateway, up: MockUpstream, **queue) -> Gateway:  # noqa: ANN001
    return gateway(
        {
            "router": {"retry": FAST_RETRY},
            "models": [model_cfg("m", deployment(up, "up"), queue={"max_concurrency": 1, **queue})],
        }
    )


async def test_full_queue_is_429_with_retry_after(gateway, up_a: MockUpstream) -> None:  # noqa: ANN001
    up_a.control("slow:1000")
    gw = _queue_gateway(gateway, up_a, size=1, ttl_s=10)
    async with gw.async_client() as c:
        create = lambda: c.chat.completions.create(model="m", messages=MSG)  # noqa: E731
        first = asyncio.ensure_future(create())
        await asyncio.to_thread(wait_until, lambda: gw.metric("modelyard_in_flight_requests", model="m") == 1, 5, "1 in flight")
        second = asyncio.ensure_future(create())
        await asyncio.to_thread(wait_until, lambda: gw.metric("modelyard_queue_depth", model="m") == 1, 5, "1 queued")
        t0 = time.monotonic()
        with pytest.raises(openai.RateLimitError) as ei:
            await create()
        assert time.monotonic() - t0 < 0.5, "a refusal must not wait"
        assert ei.value.status_code == 429
        assert int(ei.value.response.headers["retry-after"]) >= 1
        assert ei.value.body["code"] == "queue_full"
        results = await asyncio.gather(first, second)
    assert [r.choices[0].message.content for r in results] == [REPLY, REPLY]
    assert up_a.stats()["requests"] == 2
    assert gw.metric("modelyard_queue_depth", model="m") == 0


async def test_queue_ttl_is_503_with_retry_after(gateway, up_a: MockUpstream) -> None:  # noqa: ANN001
    up_a.control("slow:1500")
    gw = _queue_gateway(gateway, up_a, size=4, ttl_s=0.3)
    async with httpx.AsyncClient(base_url=gw.url, timeout=10) as http:
        body = {"model": "m", "messages": MSG}
        first = asyncio.ensure_future(http.post(CHAT, json=body))
        await asyncio.to_thread(wait_until, lambda: gw.metric("modelyard_in_flight_requests", model="m") == 1, 5, "1 in flight")
        t0 = time.monotonic()
        r = await http.post(CHAT, json=body)
        waited = time.monotonic() - t0
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "queue_timeout"
        validate(r.json(), "ErrorResponse")
        assert int(r.headers["retry-after"]) >= 1
        assert 0.25 <= waited < 3, waited
        assert (await first).status_code == 200
    assert up_a.stats()["requests"] == 1


# --- streams that break, clients that leave -----------------------------------------------------


def test_mid_stream_failure_raises_in_the_sdk(gateway, up_a: MockUpstream) -> None:  # noqa: ANN001
    up_a.control("stream-drop:3")
    gw = gateway({"router": {"retry": FAST_RETRY}, "models": [model_cfg("m", deployment(up_a, "up", name="dep"))]})
    got = []
    with pytest.raises(openai.APIError) as ei:
        for chunk in gw.client().chat.completions.create(model="m", messages=MSG, stream=True):
            got.append(chunk.choices[0].delta.content)
    assert got == ["mock", " reply", " to:"]
    assert isinstance(ei.value.body, dict) and ei.value.body.get("message"), ei.value.body
    # on the wire: the relayed events, then one error event, and no [DONE]
    with gw.http.stream("POST", CHAT, json={"model": "m", "messages": MSG, "stream": True}) as r:
        assert r.status_code == 200
        raw = r.read()
    events = [e for e in raw.split(b"\n\n") if e]
    assert len(events) == 4 and b"[DONE]" not in raw
    assert events[-1].startswith(b"data: ")
    err = orjson.loads(events[-1][len(b"data: "):])
    validate(err, "ErrorResponse")
    assert gw.metric("modelyard_upstream_requests_total", model="m", deployment="dep", outcome="stream_error") == 2
    assert gw.metric("modelyard_in_flight_requests", model="m") == 0


def _raw_request(port: int, body: dict) -> socket.socket:
    payload = orjson.dumps(body)
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer sk-test\r\nContent-Length: %d\r\n\r\n%s" % (len(payload), payload)
    )
    return sock


def _assert_disconnect_propagated(gw: Gateway, up: MockUpstream) -> None:
    wait_until(lambda: up.stats()["disconnects"] >= 1, 10, "the upstream to see the disconnect")
    up.wait_idle()
    wait_until(lambda: gw.metric("modelyard_in_flight_requests", model="m") == 0, 10, "gateway in_flight == 0")
    wait_until(lambda: any(r["status"] == 499 for r in gw.access_log()), 5, "a 499 access-log line")


def test_client_disconnect_cancels_the_upstream_request(gateway, up_a: MockUpstream) -> None:  # noqa: ANN001
    up_a.control("hang")
    gw = gateway({"router": {"retry": FAST_RETRY}, "models": [model_cfg("m", deployment(up_a, "up", timeout_s=60))]})
    sock = _raw_request(gw.port, {"model": "m", "messages": MSG})
    wait_until(lambda: up_a.stats()["in_flight"] == 1, 10, "the request to reach the upstream")
    assert gw.metric("modelyard_in_flight_requests", model="m") == 1
    sock.close()
    _assert_disconnect_propagated(gw, up_a)
    # the gateway is fine afterwards
    up_a.control("ok")
    assert gw.http.post(CHAT, json={"model": "m", "messages": MSG}).status_code == 200


async def test_sdk_task_cancelled_cancels_the_upstream_request(gateway, up_a: MockUpstream) -> None:  # noqa: ANN001
    up_a.control("hang")
    gw = gateway({"router": {"retry": FAST_RETRY}, "models": [model_cfg("m", deployment(up_a, "up", timeout_s=60))]})
    async with gw.async_client() as c:
        task = asyncio.ensure_future(c.chat.completions.create(model="m", messages=MSG))
        await asyncio.to_thread(wait_until, lambda: up_a.stats()["in_flight"] == 1, 10, "request at the upstream")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    await asyncio.to_thread(_assert_disconnect_propagated, gw, up_a)


def test_client_disconnect_mid_stream(gateway, up_a: MockUpstream) -> None:  # noqa: ANN001
    up_a.control("stream-slow:200")
    gw = gateway({"router": {"retry": FAST_RETRY}, "models": [model_cfg("m", deployment(up_a, "up", timeout_s=60))]})
    sock = _raw_request(gw.port, {"model": "m", "messages": MSG, "stream": True})
    received = b""
    while b"data: " not in received:
        data = sock.recv(65536)
        assert data, f"connection closed before the first event: {received!r}"
        received += data
    assert received.startswith(b"HTTP/1.1 200")
    assert up_a.stats()["in_flight"] == 1
    sock.close()
    _assert_disconnect_propagated(gw, up_a)
    assert up_a.stats()["completed"] == 0


def test_sdk_stream_closed_early(gateway, up_a: MockUpstream) -> None:  # noqa: ANN001
    up_a.control("stream-slow:200")
    gw = gateway({"router": {"retry": FAST_RETRY}, "models": [model_cfg("m", deployment(up_a, "up", timeout_s=60))]})
    with gw.client() as c:
        stream = c.chat.completions.create(model="m", messages=MSG, stream=True)
        first = next(iter(stream))
        assert first.choices[0].delta.content == "mock"
        stream.close()
    _assert_disconnect_propagated(gw, up_a)


def test_stalled_stream_ends_with_a_timeout_event(gateway, up_a: MockUpstream) -> None:  # noqa: ANN001
    up_a.control("stream-slow:1000")
    gw = gateway({"router": {"retry": FAST_RETRY}, "models": [model_cfg("m", deployment(up_a, "up", timeout_s=0.3))]})
    got = []
    t0 = time.monotonic()
    with pytest.raises(openai.APIError) as ei:
        for chunk in gw.client().chat.completions.create(model="m", messages=MSG, stream=True):
            got.append(chunk.choices[0].delta.content)
    assert time.monotonic() - t0 < 3
    assert got == ["mock"]
    assert ei.value.body["code"] == "upstream_timeout"
    up_a.wait_idle()
    assert gw.metric("modelyard_in_flight_requests", model="m") == 0


def test_timeout_is_retried_on_another_deployment(gateway, up_a: MockUpstream, up_b: MockUpstream) -> None:  # noqa: ANN001
    up_a.control("hang")
    gw = gateway(
        {
            "router": {"strategy": "round_robin", "retry": {"num_retries": 1, "backoff_base_s": 0.01, "backoff_max_s": 0.02}},
            "models": [model_cfg("m", deployment(up_a, "up", timeout_s=0.3), deployment(up_b, "up", timeout_s=0.3))],
        }
    )
    c = gw.client()
    for _ in range(4):
        assert c.chat.completions.create(model="m", messages=MSG).choices[0].message.content == REPLY
    assert up_b.stats()["completed"] == 4
    assert up_a.wait_idle()["disconnects"] >= 1


def test_client_disconnect_while_queued_frees_the_queue(gateway, up_a: MockUpstream) -> None:  # noqa: ANN001
    up_a.control("slow:800")
    gw = _queue_gateway(gateway, up_a, size=4, ttl_s=10)
    first = _raw_request(gw.port, {"model": "m", "messages": MSG})
    wait_until(lambda: gw.metric("modelyard_in_flight_requests", model="m") == 1, 5, "1 in flight")
    queued = _raw_request(gw.port, {"model": "m", "messages": MSG})
    wait_until(lambda: gw.metric("modelyard_queue_depth", model="m") == 1, 5, "1 queued")
    queued.close()
    wait_until(lambda: gw.metric("modelyard_queue_depth", model="m") == 0, 5, "the queue to empty")
    assert first.recv(64).startswith(b"HTTP/1.1 200")
    first.close()
    wait_until(lambda: gw.metric("modelyard_in_flight_requests", model="m") == 0, 5, "in_flight == 0")
    up_a.control("ok")
    # no slot leaked: the one slot is free again
    assert gw.http.post(CHAT, json={"model": "m", "messages": MSG}).status_code == 200
    assert up_a.stats()["requests"] == 2
