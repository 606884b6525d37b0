"""Network faults between the gateway and its upstream, through a real TCP proxy on loopback
(``modelyard.testing.fault_proxy``): gateway → proxy → mock upstream.

For each fault, what the client sees — the fallback's answer, or an OpenAI error with the right
status, never a hang past the deployment's timeout, never a stream cut without an error event —
and, at the end, that every request left exactly one spend row with its status and that the
limiter's charges match those rows to the token.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import openai
import orjson
import pytest

from modelyard.limits.guard import estimate_tokens
from modelyard.testing.fault_proxy import FaultProxy

from .support import Gateway, MockUpstream, ProcessPool, assert_error, deployment, model_cfg, wait_until

TIMEOUT_S = 1.0
RPM, TPM = 100_000, 10_000_000
DEFAULT_COMPLETION = 256
NO_RETRY = {"num_retries": 0, "backoff_base_s": 0.01, "backoff_max_s": 0.05}
TOLERANT = {"allowed_fails": 1000, "window_s": 60, "cooldown_s": 1}  # faults here are injected on purpose


class World:
    def __init__(self, gw: Gateway, proxy: FaultProxy, mock: MockUpstream) -> None:
        self.gw, self.proxy, self.mock = gw, proxy, mock
        self.sent: list[tuple[str, str, int]] = []  # (model, request id, status the client saw)
        self.http = httpx.Client(base_url=gw.url, timeout=30)

    def chat(self, model: str, *, stream: bool = False, content: str = "hello there") -> httpx.Response:
        body = {"model": model, "messages": [{"role": "user", "content": content}], "stream": stream}
        r = self.http.post("/v1/chat/completions", json=body)
        self.sent.append((model, r.headers["x-request-id"], r.status_code))
        return r


@pytest.fixture(scope="module")
def world(module_procs: ProcessPool, shared_mock: MockUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    up = urlsplit(shared_mock.root_url)
    proxy = FaultProxy(up.hostname or "127.0.0.1", up.port or 0).start()
    via = proxy.url + "/v1"
    home = tmp_path_factory.mktemp("faults-home")
    gw = module_procs.gateway({
        "memory": {"data_dir": str(home)},
        "spend": {"flush_interval_s": 0.05},
        "limits": {"default_completion_tokens": DEFAULT_COMPLETION},
        "models": [
            model_cfg("solo", deployment(via, "up-solo", timeout_s=TIMEOUT_S), retry=NO_RETRY, rpm=RPM, tpm=TPM,
                      breaker=TOLERANT),
            model_cfg("guarded", deployment(via, "up-guarded", timeout_s=TIMEOUT_S), retry=NO_RETRY, fallbacks=["backup"],
                      breaker=TOLERANT),
            model_cfg("backup", deployment(shared_mock, "up-backup")),
            model_cfg("retried", deployment(via, "up-retried", timeout_s=TIMEOUT_S), breaker=TOLERANT,
                      retry={"num_retries": 3, "backoff_base_s": 0.01, "backoff_max_s": 0.05}),
            model_cfg("fragile", deployment(via, "up-fragile", timeout_s=TIMEOUT_S), retry=NO_RETRY,
                      breaker={"allowed_fails": 2, "window_s": 60, "cooldown_s": 1.0}),
        ],
    })
    w = World(gw, proxy, shared_mock)
    yield w
    w.http.close()
    proxy.close()


@pytest.fixture
def w(world: World) -> Iterator[World]:
    world.proxy.set("pass")
    yield world
    world.proxy.set("pass")


def sse_events(text: str) -> list[str]:
    return [line[6:] for line in text.splitlines() if line.startswith("data: ")]


def test_added_latency_is_only_slower(w: World) -> None:
    w.proxy.set("latency:0.3")
    t = time.monotonic()
    r = w.chat("solo")
    assert r.status_code == 200 and time.monotonic() - t >= 0.3
    assert r.json()["choices"][0]["message"]["content"]


def test_reset_is_a_502_and_a_fallback_answers_where_there_is_one(w: World) -> None:
    w.proxy.set("reset")
    assert_error(w.chat("solo"), 502)
    r = w.chat("guarded")
    assert r.status_code == 200, r.text
    assert r.headers["x-modelyard-model"] == "backup" and r.headers["x-modelyard-fallbacks"] == "1"


def test_black_hole_is_a_504_at_the_deployment_timeout_never_a_hang(w: World) -> None:
    w.proxy.set("blackhole")
    for stream in (False, True):
        t = time.monotonic()
        r = w.chat("solo", stream=stream)
        took = time.monotonic() - t
        assert_error(r, 504)
        assert TIMEOUT_S * 0.9 <= took < TIMEOUT_S + 1.5, took
    r = w.chat("guarded")
    assert r.status_code == 200 and r.headers["x-modelyard-model"] == "backup"


def test_a_stream_cut_in_the_middle_ends_with_an_error_event(w: World) -> None:
    w.mock.control("stream-slow:20")  # several events, so that the cut falls between them
    try:
        w.proxy.set("pass")
        whole = w.chat("solo", stream=True).text
        assert sse_events(whole)[-1] == "[DONE]"
        w.proxy.set(f"cut:{len(whole.encode()) // 2}")
        r = w.chat("solo", stream=True)
        assert r.status_code == 200  # the head had gone out: the error must be in the stream
        events = sse_events(r.text)
        assert "[DONE]" not in events, "a cut stream must not look complete"
        last = orjson.loads(events[-1])
        assert set(last) == {"error"} and last["error"]["message"], last
        assert any("choices" in orjson.loads(e) for e in events[:-1]), "some content arrived before the cut"
        model, rid, _ = w.sent[-1]
        w.sent[-1] = (model, rid, 502)  # the head said 200; the outcome recorded (spend, metrics, log) is the failure
        # and the SDK turns it into an exception, not a silently short answer
        c = openai.OpenAI(base_url=f"{w.gw.url}/v1", api_key="sk-test", max_retries=0)
        with pytest.raises(openai.APIError):
            for _ in c.chat.completions.create(model="solo", messages=[{"role": "user", "content": "hello there"}],
                                               stream=True):
                pass
        w.sent.append(("solo", "(sdk)", 200))
    finally:
        w.mock.control("ok")


def test_a_cut_before_the_response_head_is_a_502(w: World) -> None:
    w.proxy.set("cut:5")
    assert_error(w.chat("solo"), 502)
    assert_error(w.chat("solo", stream=True), 502)


def test_a_slow_body_arrives_whole_within_the_timeout_and_is_a_504_past_it(w: World) -> None:
    w.proxy.set("slow:8000")
    r = w.chat("solo")
    assert r.status_code == 200 and r.json()["object"] == "chat.completion"
    w.proxy.set("slow:100")
    t = time.monotonic()
    assert_error(w.chat("solo"), 504)
    assert time.monotonic() - t < TIMEOUT_S + 1.5


def test_a_5xx_burst_is_retried_and_a_longer_one_is_a_502(w: World) -> None:
    w.proxy.set("status:503x2")
    r = w.chat("retried")
    assert r.status_code == 200, r.text
    w.proxy.set("status:503x10")
    err = assert_error(w.chat("retried"), 502)
    assert "503" in err["message"]
    assert w.proxy.stats.faults["status"] >= 2 + 4  # 2, then one attempt and 3 retries


def test_a_reset_storm_opens_the_breaker_then_a_probe_closes_it(w: World) -> None:
    w.proxy.set("reset")
    assert_error(w.chat("fragile"), 502)
    assert_error(w.chat("fragile"), 502)
    before = w.proxy.stats.connections
    r = w.chat("fragile")  # open: refused at once, without touching the upstream
    assert_error(r, 503, code="no_deployment_available")
    assert 1 <= int(r.headers["retry-after"]) <= 1 and w.proxy.stats.connections == before
    w.proxy.set("pass")
    time.sleep(1.05)
    assert w.chat("fragile").status_code == 200  # the half-open probe succeeds
    assert w.chat("fragile").status_code == 200


def test_every_request_has_one_spend_row_and_the_limiter_charged_exactly_that(world: World) -> None:
    """Runs last in this module: everything the fault tests sent is accounted, exactly."""
    w = world
    w.proxy.set("pass")
    ids = {rid: (model, status) for model, rid, status in w.sent if rid != "(sdk)"}
    sdk = sum(1 for _, rid, _ in w.sent if rid == "(sdk)")
    assert len(ids) >= 12

    def rows() -> dict[str, dict]:
        out: dict[str, dict] = {}
        for model in ("solo", "guarded", "backup", "retried", "fragile"):  # a row names the model that answered
            page = w.http.get("/spend/logs", params={"model": model, "limit": 1000}).json()["data"]
            out.update({row["request_id"]: row for row in page})
        return out

    got = wait_until(lambda: (r := rows()) and len(r) >= len(ids) + sdk and r, 10, "every spend row")
    for rid, (model, status) in ids.items():
        row = got.get(rid)
        assert row is not None, f"request {rid} ({model}, {status}) has no spend row"
        assert row["status"] == status, (rid, row, status)
    assert len(got) == len(ids) + sdk, "a request left more than one row, or rows appeared from nowhere"

    # the limiter: requests counted = requests made; tokens charged = the tokens the rows carry
    solo_rows = [row for row in got.values() if row["model"] == "solo"]
    body = {"model": "solo", "messages": [{"role": "user", "content": "hello there"}], "stream": False}
    estimate = estimate_tokens(body, len(orjson.dumps(body)), DEFAULT_COMPLETION)
    r = w.http.post("/v1/chat/completions", content=orjson.dumps(body), headers={"content-type": "application/json"})
    assert r.status_code == 200
    assert int(r.headers["x-ratelimit-remaining-requests"]) == RPM - len(solo_rows) - 1
    used = sum(row["prompt_tokens"] + row["completion_tokens"] for row in solo_rows)
    assert int(r.headers["x-ratelimit-remaining-tokens"]) == TPM - used - estimate
