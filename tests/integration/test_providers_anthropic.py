"""A provider that does not speak the OpenAI API, end to end: the real gateway, LiteLLM inside it,
and a local mock of Anthropic's Messages API on loopback; the official ``openai`` SDK as client.

The mock answers ``POST /v1/messages`` as Anthropic does — a ``message`` object, or with
``stream: true`` the event sequence message_start, content_block_start, ping, content_block_delta…,
content_block_stop, message_delta, message_stop — refuses a request without the right
``x-api-key`` or an ``anthropic-version`` (401/400, as Anthropic does), a ``max_tokens`` over
its limit (400 invalid_request_error), and answers 529 overloaded_error for models marked
overloaded. The gateway is configured (a) natively with ``kind: provider`` and (b) with an
unchanged LiteLLM ``config.yaml``. Every gateway process reports at exit whether ``litellm`` was
ever imported: an OpenAI-only config must never load it.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import uvicorn
import yaml

from modelyard.server import bind

from .support import _LISTENING, HTTP_TIMEOUT_S, Gateway, ManagedProcess, MockUpstream, ProcessPool, assert_error, validate, wait_until

KEY = "sk-ant-test-0123"
MODEL = "claude-3-5-sonnet-20240620"
MAX_TOKENS_LIMIT = 8192
MSG = [{"role": "user", "content": "Name three primes"}]
STARTUP_S = 90.0  # LiteLLM's import alone takes seconds on this 2-core box

# --- the mock Anthropic Messages API -------------------------------------------------------------------


def _words(text: str) -> int:
    return len(text.split())


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    return " ".join(b.get("text", "") for b in content or [] if isinstance(b, dict))


class AnthropicMock:
    """A tiny ASGI app; tokens are counted in words, so usage follows from what it was sent."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.overloaded: set[str] = set()  # model names answered with 529
        self.url = ""  # set once served
        self.lock = threading.Lock()

    @staticmethod
    def reply_for(body: dict[str, Any]) -> tuple[str, int]:
        """(reply text, input tokens) for a Messages request."""
        texts = [_text(m.get("content")) for m in body.get("messages", [])]
        system = body.get("system")
        if system:
            texts.append(_text(system))
        last = texts[len(body.get("messages", [])) - 1] if body.get("messages") else ""
        return f"echo: {last}", sum(_words(t) for t in texts)

    def count(self, model: str) -> int:
        with self.lock:
            return sum(r["body"].get("model") == model for r in self.requests)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        raw = b""
        while True:
            msg = await receive()
            raw += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        body = json.loads(raw or b"{}")
        with self.lock:
            self.requests.append({"method": scope["method"], "path": scope["path"], "headers": headers, "body": body})
        if scope["method"] != "POST" or scope["path"] != "/v1/messages":
            return await self._error(send, 404, "not_found_error", f"no route {scope['path']}")
        if headers.get("x-api-key") != KEY:
            return await self._error(send, 401, "authentication_error", "invalid x-api-key")
        if not headers.get("anthropic-version"):
            return await self._error(send, 400, "invalid_request_error", "anthropic-version: header is required")
        if body.get("model") in self.overloaded:
            return await self._error(send, 529, "overloaded_error", "Overloaded")
        max_tokens = body.get("max_tokens")
        if not isinstance(max_tokens, int) or max_tokens > MAX_TOKENS_LIMIT:
            return await self._error(send, 400, "invalid_request_error",
                                     f"max_tokens: {max_tokens} > {MAX_TOKENS_LIMIT}, which is the maximum allowed")
        text, input_tokens = self.reply_for(body)
        msg_id = f"msg_{len(self.requests):04d}"
        if not body.get("stream"):
            out = {"id": msg_id, "type": "message", "role": "assistant", "model": body["model"],
                   "content": [{"type": "text", "text": text}], "stop_reason": "end_turn", "stop_sequence": None,
                   "usage": {"input_tokens": input_tokens, "output_tokens": _words(text)}}
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": json.dumps(out).encode()})
            return
        events: list[tuple[str, dict[str, Any]]] = [
            ("message_start", {"type": "message_start", "message": {
                "id": msg_id, "type": "message", "role": "assistant", "content": [], "model": body["model"],
                "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": input_tokens, "output_tokens": 1}}}),
            ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            ("ping", {"type": "ping"}),
        ]
        pieces = text.split(" ")
        for i, piece in enumerate(pieces):
            delta = piece if i == 0 else " " + piece
            events.append(("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                   "delta": {"type": "text_delta", "text": delta}}))
        events += [
            ("content_block_stop", {"type": "content_block_stop", "index": 0}),
            ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                               "usage": {"output_tokens": _words(text)}}),
            ("message_stop", {"type": "message_stop"}),
        ]
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]})
        for name, data in events:
            await send({"type": "http.response.body", "body": f"event: {name}\ndata: {json.dumps(data)}\n\n".encode(),
                        "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    async def _error(self, send: Any, status: int, etype: str, message: str) -> None:
        out = json.dumps({"type": "error", "error": {"type": etype, "message": message}}).encode()
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": out})


class ServedMock:
    """uvicorn serving the mock on a free loopback port, in a thread with its own event loop."""

    def __init__(self) -> None:
        self.app = AnthropicMock()
        self.sock = bind("127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(self.app, lifespan="on", log_level="warning", loop="asyncio"))
        self.thread = threading.Thread(target=lambda: asyncio.run(self.server.serve(sockets=[self.sock])), daemon=True)

    def __enter__(self) -> AnthropicMock:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "the Anthropic mock did not start"
            time.sleep(0.02)
        self.app.url = self.url
        return self.app

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(20)
        assert not self.thread.is_alive(), "the Anthropic mock did not stop"


# --- a gateway that says at exit whether it imported litellm -----------------------------------------------

_PROBE = ("import atexit, sys; "
          "atexit.register(lambda: print('LITELLM_IMPORTED', 'litellm' in sys.modules, flush=True)); "
          "from modelyard.cli import main; sys.argv[0] = 'modelyard'; main()")


class ProbedGateway(Gateway):
    """``modelyard serve`` (through the CLI's own ``main``) that prints ``LITELLM_IMPORTED True|False`` at exit."""

    def __init__(self, name: str, workdir: Path, config: Any, env: dict[str, str]) -> None:
        path = workdir / f"{name}.yaml"
        path.write_text(config if isinstance(config, str) else yaml.safe_dump(config, sort_keys=False))
        ManagedProcess.__init__(self, name, [sys.executable, "-c", _PROBE, "serve", "--config", str(path), "--port", "0"],
                                workdir, env)
        m = self.wait_for_line(_LISTENING, timeout=STARTUP_S)
        self.url, self.port = m.group(1), int(m.group(2))
        self.http = httpx.Client(base_url=self.url, timeout=HTTP_TIMEOUT_S)

    def litellm_imported(self) -> bool:
        """Stop the gateway (SIGTERM) and read its exit report."""
        self.stop()
        assert self.proc.returncode == 0, self.describe()
        found = [ln.split()[1] for ln in self.stdout_lines if ln.startswith("LITELLM_IMPORTED ")]
        assert found, f"no exit report\n{self.describe()}"
        return found[-1] == "True"


def probed(pool: ProcessPool, config: Any, home: Path, env: dict[str, str] | None = None) -> ProbedGateway:
    if isinstance(config, dict) and "model_list" not in config:
        config = {**config, "server": {"graceful_timeout_s": 3}}
    gw = ProbedGateway(pool._name("gateway"), pool.workdir, config, {"MODELYARD_HOME": str(home), **(env or {})})
    pool.procs.append(gw)
    return gw


# --- fixtures ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def anthropic() -> Iterator[AnthropicMock]:
    with ServedMock() as app:
        yield app


FAST = {"num_retries": 0, "backoff_base_s": 0.01, "backoff_max_s": 0.02}
PRICE = {"input_per_1k": 3.0, "output_per_1k": 15.0}


@pytest.fixture(scope="module")
def native(module_procs: ProcessPool, anthropic: AnthropicMock, tmp_path_factory: pytest.TempPathFactory) -> ProbedGateway:
    def dep(model: str) -> dict[str, Any]:
        return {"kind": "provider", "model": f"anthropic/{model}", "api_key": KEY, "api_base": anthropic.url}

    anthropic.overloaded |= {"claude-busy-1", "claude-down-1"}
    config = {
        "spend": {"flush_interval_s": 0.1},
        "router": {"retry": FAST},
        "models": [
            {"name": "claude", "deployments": [dep(MODEL)], "price": PRICE},
            {"name": "claude-busy", "deployments": [dep("claude-busy-1")], "fallbacks": ["claude"],
             "retry": {**FAST, "num_retries": 1}},
            {"name": "claude-down", "deployments": [dep("claude-down-1")]},
        ],
    }
    return probed(module_procs, config, tmp_path_factory.mktemp("native-home"))


def spend_rows(gw: Gateway, model: str, n: int) -> list[dict[str, Any]]:
    return wait_until(lambda: (lambda rows: rows if len(rows) >= n else None)(
        gw.http.get("/spend/logs", params={"model": model}).json()["data"]), 10, f"{n} spend rows of {model}")


def sse_events(text: str) -> list[Any]:
    out = []
    for block in text.split("\n\n"):
        if block.startswith("data: "):
            data = block[len("data: "):]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


# --- (a) native kind: provider ------------------------------------------------------------------------------


def test_unary_chat_through_the_sdk(native: ProbedGateway, anthropic: AnthropicMock) -> None:
    c = native.client()
    raw = c.chat.completions.with_raw_response.create(model="claude", messages=MSG, max_tokens=32)
    r = raw.parse()
    sent = anthropic.requests[-1]
    assert (sent["path"], sent["headers"]["x-api-key"], sent["headers"]["anthropic-version"]) == ("/v1/messages", KEY, "2023-06-01")
    assert (sent["body"]["model"], sent["body"]["max_tokens"]) == (MODEL, 32)
    assert not {"input_cost_per_token", "max_retries", "num_retries", "timeout", "extra_headers"} & set(sent["body"])
    text, input_tokens = AnthropicMock.reply_for(sent["body"])
    assert r.choices[0].message.content == text == "echo: Name three primes"
    assert (r.choices[0].finish_reason, r.choices[0].message.role) == ("stop", "assistant")
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (input_tokens, len(text.split()))
    assert r.usage.total_tokens == input_tokens + len(text.split())
    assert raw.headers["x-modelyard-model"] == "claude"
    assert sent["headers"]["x-request-id"] == raw.headers["x-request-id"]  # one id from client to provider
    body = native.http.post("/v1/chat/completions", json={"model": "claude", "messages": MSG, "max_tokens": 8}).json()
    validate(body, "CreateChatCompletionResponse")
    assert native.metric("modelyard_tokens_total", model="claude", direction="in") >= 2 * input_tokens


def test_streaming_chat_through_the_sdk(native: ProbedGateway, anthropic: AnthropicMock) -> None:
    c = native.client()
    chunks = list(c.chat.completions.create(model="claude", messages=MSG, max_tokens=32, stream=True,
                                            stream_options={"include_usage": True}))
    sent = anthropic.requests[-1]
    assert sent["body"]["stream"] is True and sent["headers"]["x-api-key"] == KEY
    text, input_tokens = AnthropicMock.reply_for(sent["body"])
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == text
    assert len([ch for ch in chunks if ch.choices and ch.choices[0].delta.content]) == len(text.split())  # event by event
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason] == ["stop"]
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and (usage.prompt_tokens, usage.completion_tokens) == (input_tokens, len(text.split()))
    # without include_usage the client gets no usage chunk (the gateway still counts it: spend below)
    r = native.http.post("/v1/chat/completions", json={"model": "claude", "messages": MSG, "max_tokens": 8, "stream": True})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    assert events[-1] == "[DONE]"
    for e in events[:-1]:
        validate(e, "CreateChatCompletionStreamResponse")
        assert "usage" not in e or e["usage"] is None


def test_spend_rows_carry_the_providers_tokens(native: ProbedGateway, anthropic: AnthropicMock) -> None:
    c = native.client()
    msg = [{"role": "user", "content": "spend row please count these words"}]
    r = c.chat.completions.create(model="claude", messages=msg, max_tokens=16, extra_headers={"x-request-id": "spend-unary"})
    list(c.chat.completions.create(model="claude", messages=msg, max_tokens=16, stream=True,
                                   extra_headers={"x-request-id": "spend-stream"}))
    _, input_tokens = AnthropicMock.reply_for(anthropic.requests[-1]["body"])
    ours = {"spend-unary": False, "spend-stream": True}
    rows = wait_until(lambda: (lambda rs: rs if len(rs) == 2 else None)(
        [row for row in native.http.get("/spend/logs", params={"model": "claude"}).json()["data"] if row["request_id"] in ours]),
        10, "the two spend rows")
    assert {row["request_id"]: row["stream"] for row in rows} == ours
    for row in rows:
        assert (row["deployment"], row["prompt_tokens"], row["completion_tokens"]) == (
            "claude", input_tokens, r.usage.completion_tokens)
        expected = (input_tokens * PRICE["input_per_1k"] + r.usage.completion_tokens * PRICE["output_per_1k"]) / 1000
        assert float(row["cost"]) == pytest.approx(expected)


def test_upstream_400_is_the_clients_400(native: ProbedGateway, anthropic: AnthropicMock) -> None:
    c = native.client()
    with pytest.raises(openai.BadRequestError) as info:
        c.chat.completions.create(model="claude", messages=MSG, max_tokens=100_000)
    assert info.value.status_code == 400
    assert f"max_tokens: 100000 > {MAX_TOKENS_LIMIT}" in info.value.message
    r = native.http.post("/v1/chat/completions", json={"model": "claude", "messages": MSG, "max_tokens": 100_000})
    err = assert_error(r, 400)
    assert err["type"] == "invalid_request_error"
    r = native.http.post("/v1/chat/completions", json={"model": "claude", "messages": MSG, "api_base": "http://127.0.0.1:1"})
    assert_error(r, 400, param="api_base")  # a client cannot re-point the deployment's key
    r = native.http.post("/v1/completions", json={"model": "claude", "prompt": "x"})
    assert_error(r, 404, code="unsupported_endpoint")
    assert native.metric("modelyard_breaker_state", model="claude", deployment="claude") == 0  # the client's fault


def test_upstream_529_is_retried_then_falls_back_or_502(native: ProbedGateway, anthropic: AnthropicMock) -> None:
    c = native.client()
    before = anthropic.count("claude-busy-1")
    raw = c.chat.completions.with_raw_response.create(model="claude-busy", messages=MSG, max_tokens=16)
    assert raw.parse().choices[0].message.content == "echo: Name three primes"
    assert (raw.headers["x-modelyard-model"], raw.headers["x-modelyard-fallbacks"]) == ("claude", "1")
    assert anthropic.count("claude-busy-1") - before == 2  # one retry inside the group, then the fallback
    assert native.metric("modelyard_upstream_requests_total", model="claude-busy", outcome="529") >= 2
    with pytest.raises(openai.InternalServerError) as info:
        c.chat.completions.create(model="claude-down", messages=MSG, max_tokens=16)
    assert info.value.status_code == 502 and "Overloaded" in info.value.message
    r = native.http.post("/v1/chat/completions", json={"model": "claude-down", "messages": MSG, "stream": True})
    assert_error(r, 502)  # before the first byte: a plain error, not a broken stream


# --- (b) an unchanged LiteLLM config.yaml -----------------------------------------------------------------------


def test_litellm_config_served_unchanged(procs: ProcessPool, anthropic: AnthropicMock, tmp_path: Path) -> None:
    config = f"""
model_list:
  - model_name: claude-3-5-sonnet
    litellm_params:
      model: anthropic/claude-3-5-sonnet-20240620
      api_base: {anthropic.url}
      api_key: os.environ/ANTHROPIC_API_KEY
      input_cost_per_token: 0.000003
      output_cost_per_token: 0.000015
"""
    gw = probed(procs, config, tmp_path / "home", env={"ANTHROPIC_API_KEY": KEY})
    c = gw.client()
    r = c.chat.completions.create(model="claude-3-5-sonnet", messages=MSG, max_tokens=16)
    sent = anthropic.requests[-1]
    assert (sent["headers"]["x-api-key"], sent["body"]["model"]) == (KEY, MODEL)
    text, input_tokens = AnthropicMock.reply_for(sent["body"])
    assert r.choices[0].message.content == text
    streamed = list(c.chat.completions.create(model="claude-3-5-sonnet", messages=MSG, max_tokens=16, stream=True))
    assert "".join(ch.choices[0].delta.content or "" for ch in streamed if ch.choices) == text
    rows = spend_rows(gw, "claude-3-5-sonnet", 2)
    assert {(row["prompt_tokens"], row["completion_tokens"]) for row in rows} == {(input_tokens, r.usage.completion_tokens)}
    assert float(rows[0]["cost"]) == pytest.approx((input_tokens * 3 + r.usage.completion_tokens * 15) / 1e6)
    assert "deployment skipped" not in gw.stderr_text()
    assert gw.litellm_imported() is True  # the positive control of the test below


def test_openai_only_config_never_imports_litellm(procs: ProcessPool, mock: MockUpstream, tmp_path: Path) -> None:
    config = {"models": [{"name": "gpt", "deployments": [{"api_base": mock.url, "model": "up-gpt"}]}]}
    gw = probed(procs, config, tmp_path / "home")
    c = gw.client()
    assert c.chat.completions.create(model="gpt", messages=MSG).choices[0].message.content
    assert "".join(ch.choices[0].delta.content or "" for ch in c.chat.completions.create(model="gpt", messages=MSG, stream=True)
                   if ch.choices)
    assert gw.litellm_imported() is False
