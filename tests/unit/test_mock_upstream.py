"""Tests of the mock OpenAI-compatible upstream (modelyard.testing.mock_upstream)."""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import struct
import sys
import time
from pathlib import Path

import aiohttp
import openai
import orjson
import pytest

from modelyard.testing.mock_upstream import MockServer, parse_behavior, start_mock

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from openapi_schema import validate  # noqa: E402

CHAT = {"model": "gpt-test", "messages": [{"role": "system", "content": "be brief"},
                                          {"role": "user", "content": "hello big world"}]}
REPLY = "mock reply to: hello big world"


@pytest.fixture
async def server():
    srv = await start_mock()
    yield srv
    await srv.close()


@pytest.fixture
async def client(server: MockServer):
    c = openai.AsyncOpenAI(base_url=server.url, api_key="x", max_retries=0, timeout=10)
    yield c
    await c.close()


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as s:
        yield s


async def until(pred, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


async def post(http, server, path, body, headers=None):
    async with http.post(server.url + path, data=orjson.dumps(body), headers=headers or {}) as r:
        return r.status, dict(r.headers), await r.read()


async def stats(http, server) -> dict:
    async with http.get(server.root_url + "/mock/stats") as r:
        assert r.status == 200
        return await r.json()


async def raw_exchange(server: MockServer, payload: bytes, read_timeout: float = 2.0) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(payload)
    await writer.drain()
    chunks = []
    try:
        while True:
            data = await asyncio.wait_for(reader.read(65536), read_timeout)
            if not data:
                break
            chunks.append(data)
    except asyncio.TimeoutError:
        pass
    writer.close()
    return b"".join(chunks)


def sse_events(raw: bytes) -> list[bytes]:
    return [e[len(b"data: "):] for e in raw.split(b"\n\n") if e.startswith(b"data: ")]


# ------------------------------------------------------------------ normal API
async def test_chat_completion_sdk(client):
    r = await client.chat.completions.create(**CHAT)
    assert r.model == "gpt-test"
    assert r.object == "chat.completion"
    assert len(r.choices) == 1
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == REPLY
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.prompt_tokens == 5  # "be brief" + "hello big world"
    assert r.usage.completion_tokens == 6
    assert r.usage.total_tokens == 11


async def test_chat_completion_schema_n_and_max_tokens(http, server):
    status, headers, raw = await post(http, server, "/chat/completions",
                                      {**CHAT, "n": 3, "max_tokens": 4})
    assert status == 200 and headers["Content-Type"] == "application/json"
    body = orjson.loads(raw)
    validate(body, "CreateChatCompletionResponse")
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]
    for c in body["choices"]:
        assert c["message"]["content"] == "mock reply to: hello"
        assert c["finish_reason"] == "length"
    assert body["usage"] == {"prompt_tokens": 5, "completion_tokens": 12, "total_tokens": 17}
    # max_completion_tokens takes the same role
    _, _, raw = await post(http, server, "/chat/completions", {**CHAT, "max_completion_tokens": 2})
    assert orjson.loads(raw)["choices"][0]["message"]["content"] == "mock reply"


async def test_chat_content_parts_and_truncation(client):
    long = "x" * 100
    r = await client.chat.completions.create(model="m", messages=[
        {"role": "user", "content": [{"type": "text", "text": "first"}]},
        {"role": "assistant", "content": "ignored"},
        {"role": "user", "content": [{"type": "text", "text": long}]},
    ])
    assert r.choices[0].message.content == "mock reply to: " + "x" * 64
    assert r.usage.prompt_tokens == 3


async def test_chat_stream_sdk_with_usage(client):
    stream = await client.chat.completions.create(
        **CHAT, stream=True, stream_options={"include_usage": True})
    chunks = [c async for c in stream]
    words = REPLY.split()
    assert len(chunks) == len(words) + 2  # words, finish, usage
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.choices[0].delta.role is None for c in chunks[1:-2])
    assert "".join(c.choices[0].delta.content or "" for c in chunks[:-1]) == REPLY
    assert [c.choices[0].finish_reason for c in chunks[:-1]] == [None] * len(words) + ["stop"]
    assert len({c.id for c in chunks}) == 1 and all(c.model == "gpt-test" for c in chunks)
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == len(words)
    assert chunks[-1].usage.total_tokens == len(words) + 5


async def test_chat_stream_wire_format_and_schema(server):
    body = orjson.dumps({**CHAT, "stream": True, "max_tokens": 3})
    req = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
           b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    raw = await raw_exchange(server, req)
    head, _, rest = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"transfer-encoding: chunked" in head.lower()
    assert b"text/event-stream" in head
    assert rest.endswith(b"0\r\n\r\n")
    # each event is its own HTTP chunk
    decoded, pieces, pos = b"", [], 0
    while True:
        eol = rest.index(b"\r\n", pos)
        size = int(rest[pos:eol], 16)
        if size == 0:
            break
        piece = rest[eol + 2: eol + 2 + size]
        pieces.append(piece)
        decoded += piece
        pos = eol + 2 + size + 2
    assert all(p.startswith(b"data: ") and p.endswith(b"\n\n") and p.count(b"\n\n") == 1
               for p in pieces)
    events = sse_events(decoded)
    assert events[-1] == b"[DONE]"
    chunks = [orjson.loads(e) for e in events[:-1]]
    assert len(chunks) == 4  # 3 words + finish; no usage chunk unless asked
    for c in chunks:
        validate(c, "CreateChatCompletionStreamResponse")
        assert "usage" not in c
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


async def test_stream_usage_chunk_schema_and_n(http, server):
    async with http.post(server.url + "/chat/completions", json={
            **CHAT, "stream": True, "n": 2, "stream_options": {"include_usage": True}}) as r:
        events = sse_events(await r.read())
    assert events[-1] == b"[DONE]"
    chunks = [orjson.loads(e) for e in events[:-1]]
    for c in chunks:
        validate(c, "CreateChatCompletionStreamResponse")
    usage = chunks[-1]
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 12
    assert all(c["usage"] is None for c in chunks[:-1])
    for idx in (0, 1):
        text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks[:-1]
                       if c["choices"][0]["index"] == idx)
        assert text == REPLY


async def test_completions_sdk_schema_and_stream(client, http, server):
    r = await client.completions.create(model="davinci-test", prompt="say this please", max_tokens=5)
    assert r.model == "davinci-test"
    assert r.choices[0].text == "mock reply to: say this"
    assert r.choices[0].finish_reason == "length"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (3, 5)
    _, _, raw = await post(http, server, "/completions", {"model": "m", "prompt": "hi", "n": 2})
    body = orjson.loads(raw)
    validate(body, "CreateCompletionResponse")
    assert [c["text"] for c in body["choices"]] == ["mock reply to: hi"] * 2
    stream = await client.completions.create(model="m", prompt="a b", stream=True,
                                             stream_options={"include_usage": True})
    chunks = [c async for c in stream]
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "mock reply to: a b"
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].usage.prompt_tokens == 2
    # token-array prompt
    r = await client.completions.create(model="m", prompt=[1, 2, 3])
    assert r.usage.prompt_tokens == 3


async def test_embeddings_float_base64_and_schema(client, http, server):
    _, _, raw = await post(http, server, "/embeddings", {"model": "emb", "input": ["a b c", "d"]})
    body = orjson.loads(raw)
    validate(body, "CreateEmbeddingResponse")
    assert body["model"] == "emb"
    assert [d["index"] for d in body["data"]] == [0, 1]
    vec = body["data"][0]["embedding"]
    assert len(vec) == 8 and abs(sum(v * v for v in vec) - 1) < 1e-5
    assert body["usage"] == {"prompt_tokens": 4, "total_tokens": 4}
    assert body["data"][0]["embedding"] != body["data"][1]["embedding"]

    _, _, raw = await post(http, server, "/embeddings",
                           {"model": "emb", "input": "a b c", "encoding_format": "base64"})
    b64 = orjson.loads(raw)
    validate_b64 = b64["data"][0]["embedding"]
    assert isinstance(validate_b64, str)
    assert list(struct.unpack("<8f", base64.b64decode(validate_b64))) == vec

    # the SDK (which asks for base64 by default and decodes it) sees the same numbers
    r = await client.embeddings.create(model="emb", input="a b c")
    assert list(r.data[0].embedding) == vec
    r = await client.embeddings.create(model="emb", input="a b c", encoding_format="float",
                                       dimensions=32)
    assert len(r.data[0].embedding) == 32
    r = await client.embeddings.create(model="emb", input=[[1, 2], [3]])
    assert len(r.data) == 2 and r.usage.prompt_tokens == 3


async def test_models_list_and_retrieve(client, http, server):
    models = await client.models.list()
    assert [m.id for m in models.data] == ["mock-model"]
    async with http.get(server.url + "/models") as r:
        validate(await r.json(), "ListModelsResponse")
    m = await client.models.retrieve("mock-model")
    assert m.owned_by == "modelyard-mock"
    with pytest.raises(openai.NotFoundError):
        await client.models.retrieve("nope")


async def test_custom_models():
    srv = await start_mock(models=["a", "b"])
    try:
        c = openai.AsyncOpenAI(base_url=srv.url, api_key="x", max_retries=0)
        assert [m.id for m in (await c.models.list()).data] == ["a", "b"]
        await c.close()
    finally:
        await srv.close()


async def test_health(http, server):
    async with http.get(server.root_url + "/health") as r:
        assert r.status == 200 and await r.json() == {"status": "ok"}


# ------------------------------------------------------------- error handling
@pytest.mark.parametrize("path,method,body,status", [
    ("/chat/completions", "POST", b"{not json", 400),
    ("/chat/completions", "POST", b"", 400),
    ("/chat/completions", "POST", b'{"model": "m"}', 400),
    ("/embeddings", "POST", b'{"model": "m", "input": 5}', 400),
    ("/nope", "GET", b"", 404),
    ("/chat/completions", "GET", b"", 405),
])
async def test_bad_requests_get_openai_error_bodies(http, server, path, method, body, status):
    async with http.request(method, server.url + path, data=body) as r:
        assert r.status == status
        err = await r.json()
    validate(err, "ErrorResponse")


async def test_malformed_http_is_answered_400(server):
    raw = await raw_exchange(server, b"THIS IS NOT HTTP\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 400")


async def test_api_key_required():
    srv = await start_mock(api_key="sekret")
    try:
        bad = openai.AsyncOpenAI(base_url=srv.url, api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError) as ei:
            await bad.chat.completions.create(**CHAT)
        assert ei.value.status_code == 401
        validate(ei.value.body and {"error": ei.value.body}, "ErrorResponse")
        good = openai.AsyncOpenAI(base_url=srv.url, api_key="sekret", max_retries=0)
        assert (await good.chat.completions.create(**CHAT)).choices[0].message.content == REPLY
        async with aiohttp.ClientSession() as s:
            async with s.post(srv.url + "/chat/completions", json=CHAT) as r:  # no header at all
                assert r.status == 401
            async with s.get(srv.root_url + "/health") as r:  # health is exempt
                assert r.status == 200
        await bad.close()
        await good.close()
    finally:
        await srv.close()


# ----------------------------------------------------------------- behaviours
def test_parse_behavior():
    b = parse_behavior("slow:250,error:503")
    assert (b.action, b.status, b.delay) == ("error", 503, 0.25)
    b = parse_behavior("stream-drop:2,stream-slow:10")
    assert (b.action, b.stream_drop, b.stream_delay) == ("ok", 2, 0.01)
    assert parse_behavior("flaky:3").flaky == 3
    for bad in ("", "nope", "error", "error:abc", "error:200", "flaky:0", "slow:-1",
                "hang,drop", "ok:1", "stream-drop:x"):
        with pytest.raises(ValueError):
            parse_behavior(bad)


async def test_error_behaviors(client, http, server):
    with pytest.raises(openai.InternalServerError) as ei:
        await client.chat.completions.create(**CHAT, extra_headers={"x-mock-behavior": "error:500"})
    assert ei.value.status_code == 500
    assert ei.value.body["message"] == "mock error 500"
    with pytest.raises(openai.RateLimitError) as ei:
        await client.chat.completions.create(**CHAT, extra_headers={"x-mock-behavior": "error:429"})
    assert ei.value.response.headers["retry-after"] == "1"
    status, headers, raw = await post(http, server, "/chat/completions", CHAT,
                                      {"x-mock-behavior": "error:503"})
    assert status == 503
    body = orjson.loads(raw)
    validate(body, "ErrorResponse")
    assert body["error"]["message"] == "mock error 503" and body["error"]["param"] is None
    status, _, raw = await post(http, server, "/models", {}, {"x-mock-behavior": "error:599"})
    assert status == 599 and orjson.loads(raw)["error"]["type"] == "server_error"
    status, _, raw = await post(http, server, "/chat/completions", CHAT, {"x-mock-behavior": "bogus"})
    assert status == 400 and "bogus" in orjson.loads(raw)["error"]["message"]


async def test_slow_behavior(client):
    t0 = time.monotonic()
    r = await client.chat.completions.create(**CHAT, extra_headers={"x-mock-behavior": "slow:200"})
    assert time.monotonic() - t0 >= 0.19
    assert r.choices[0].message.content == REPLY
    t0 = time.monotonic()
    stream = await client.chat.completions.create(
        **CHAT, stream=True, extra_headers={"x-mock-behavior": "slow:150"})
    first = await stream.__anext__()
    assert time.monotonic() - t0 >= 0.14 and first.choices[0].delta.role == "assistant"
    rest = [c async for c in stream]
    assert len(rest) == len(REPLY.split())


async def test_stream_slow_behavior(client):
    stream = await client.chat.completions.create(
        **CHAT, stream=True, extra_headers={"x-mock-behavior": "stream-slow:50"})
    times = []
    async for _ in stream:
        times.append(time.monotonic())
    assert len(times) == len(REPLY.split()) + 1
    # n events with 50 ms between consecutive ones (robust to scheduling jitter)
    assert times[-1] - times[0] >= 0.9 * 0.05 * (len(times) - 1)
    # non-stream requests are unaffected
    t0 = time.monotonic()
    await client.chat.completions.create(**CHAT, extra_headers={"x-mock-behavior": "stream-slow:500"})
    assert time.monotonic() - t0 < 0.4


@pytest.mark.parametrize("spec", ["hang", "slow:5000", "stream-slow:2000"])
async def test_client_abort_is_counted_as_disconnect(server, spec):
    body = orjson.dumps({**CHAT, "stream": spec.startswith("stream")})
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nx-mock-behavior: %s\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (spec.encode(), len(body), body))
    await writer.drain()
    await until(lambda: server.state.in_flight == 1)
    await asyncio.sleep(0.05)
    writer.close()
    await until(lambda: server.state.disconnects == 1)
    st = server.state.stats()
    assert st["in_flight"] == 0 and st["completed"] == 0 and st["disconnects"] == 1


async def test_sdk_timeout_during_hang_counts_disconnect(client, http, server):
    with pytest.raises(openai.APITimeoutError):
        await client.chat.completions.create(**CHAT, timeout=0.2,
                                             extra_headers={"x-mock-behavior": "hang"})
    await until(lambda: server.state.disconnects == 1)
    s = await stats(http, server)
    assert s["disconnects"] == 1 and s["in_flight"] == 0


async def test_drop_behavior(http, server):
    with pytest.raises(aiohttp.ServerDisconnectedError):
        async with http.post(server.url + "/chat/completions", json=CHAT,
                             headers={"x-mock-behavior": "drop"}) as r:
            await r.read()
    s = await stats(http, server)
    assert s["dropped"] == 1 and s["disconnects"] == 0 and s["completed"] == 0
    assert s["in_flight"] == 0


async def test_stream_drop_behavior(client, http, server):
    stream = await client.chat.completions.create(
        **CHAT, stream=True, extra_headers={"x-mock-behavior": "stream-drop:2"})
    got = []
    with pytest.raises(openai.APIConnectionError):
        async for c in stream:
            got.append(c)
    assert len(got) == 2
    # on the wire: two events, no [DONE], no terminating chunk
    with pytest.raises(aiohttp.ClientPayloadError):
        async with http.post(server.url + "/chat/completions", json={**CHAT, "stream": True},
                             headers={"x-mock-behavior": "stream-drop:3"}) as r:
            await r.read()
    s = await stats(http, server)
    assert s["dropped"] == 2 and s["disconnects"] == 0


async def test_flaky_behavior(client):
    results = []
    for _ in range(7):
        try:
            await client.chat.completions.create(**CHAT, extra_headers={"x-mock-behavior": "flaky:3"})
            results.append("ok")
        except openai.InternalServerError:
            results.append("500")
    assert results == ["ok", "ok", "500", "ok", "ok", "500", "ok"]


async def test_control_changes_default_and_header_wins(client, http, server):
    async with http.post(server.root_url + "/mock/control", json={"behavior": "error:503"}) as r:
        assert r.status == 200 and (await r.json())["behavior"] == "error:503"
    with pytest.raises(openai.InternalServerError):
        await client.chat.completions.create(**CHAT)
    # a per-request header beats the default
    r = await client.chat.completions.create(**CHAT, extra_headers={"x-mock-behavior": "ok"})
    assert r.choices[0].message.content == REPLY
    # control endpoints themselves never fail; stats show the default
    assert (await stats(http, server))["behavior"] == "error:503"
    async with http.post(server.root_url + "/mock/control", json={"behavior": "nope"}) as r:
        assert r.status == 400
    async with http.post(server.root_url + "/mock/control", data=b"{") as r:
        assert r.status == 400
    async with http.post(server.root_url + "/mock/control", json={"behavior": "ok"}) as r:
        assert r.status == 200
    assert (await client.chat.completions.create(**CHAT)).choices[0].message.content == REPLY


async def test_default_behavior_from_constructor():
    srv = await start_mock(behavior="error:502")
    try:
        async with aiohttp.ClientSession() as s:
            async with s.get(srv.url + "/models") as r:
                assert r.status == 502
    finally:
        await srv.close()


# ---------------------------------------------------------------------- stats
async def test_stats_counters_last_request_and_reset(client, http, server):
    await client.chat.completions.create(**CHAT, extra_headers={"X-Trace": "abc"})
    await client.models.list()
    with pytest.raises(openai.NotFoundError):
        await client.post("/nope", cast_to=object, body={})
    s = await stats(http, server)
    assert s["requests"] == 3 and s["completed"] == 3 and s["in_flight"] == 0
    assert s["by_path"] == {"/v1/chat/completions": 1, "/v1/models": 1, "/v1/nope": 1}
    _, _, raw = await post(http, server, "/chat/completions", {**CHAT, "temperature": 0.5},
                           {"X-Trace": "xyz"})
    s = await stats(http, server)
    last = s["last_request"]
    assert last["path"] == "/v1/chat/completions"
    assert last["headers"]["x-trace"] == "xyz"
    assert last["body"] == {**CHAT, "temperature": 0.5}
    assert s["requests"] == 4  # /mock/* calls are not counted
    # in_flight during a hang
    task = asyncio.create_task(client.chat.completions.create(
        **CHAT, timeout=5, extra_headers={"x-mock-behavior": "hang"}))
    await until(lambda: server.state.in_flight == 1)
    assert (await stats(http, server))["in_flight"] == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await until(lambda: server.state.disconnects == 1)
    async with http.post(server.root_url + "/mock/reset") as r:
        assert r.status == 200
    s = await stats(http, server)
    assert (s["requests"], s["completed"], s["disconnects"], s["by_path"], s["last_request"]) == (
        0, 0, 0, {}, None)


# ----------------------------------------------------------------- HTTP layer
async def test_keepalive_and_pipelining(server):
    one = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    for _ in range(3):  # sequential keep-alive
        writer.write(one)
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and b"connection: close" not in head
        n = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        assert orjson.loads(await reader.readexactly(n)) == {"status": "ok"}
    writer.close()
    # pipelined, including one that goes async (slow) in the middle
    slow = b"GET /health HTTP/1.1\r\nHost: x\r\nx-mock-behavior: slow:50\r\n\r\n"
    last = b"GET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    raw = await raw_exchange(server, one + slow + one + last)
    assert raw.count(b"HTTP/1.1 200 OK") == 4
    assert raw.rstrip().endswith(b'"owned_by":"modelyard-mock"}]}')
    assert server.state.completed == 7


async def test_http10_and_connection_close(server):
    raw = await raw_exchange(server, b"GET /health HTTP/1.0\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 200") and raw.endswith(b'{"status":"ok"}')
    raw = await raw_exchange(server, b"GET /health HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
                             read_timeout=0.3)
    assert b"connection: keep-alive" in raw


async def test_close_with_hanging_request_does_not_count_disconnect():
    srv = await start_mock(behavior="hang")
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    await until(lambda: srv.state.in_flight == 1)
    await srv.close()
    assert await asyncio.wait_for(reader.read(), 2) == b""
    assert srv.state.in_flight == 0 and srv.state.disconnects == 0
    writer.close()


# -------------------------------------------------------------------- program
async def test_program_subprocess_lifecycle():
    src = str(Path(__file__).resolve().parents[2] / "src")
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "modelyard.testing.mock_upstream", "--host", "127.0.0.1",
        "--port", "0", "--behavior", "ok", "--api-key", "k1",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env)
    try:
        line = (await asyncio.wait_for(proc.stdout.readline(), 15)).decode()
        assert line.startswith("MOCK_LISTENING http://127.0.0.1:") and line.endswith("\n")
        root = line.split()[1]
        c = openai.AsyncOpenAI(base_url=root + "/v1", api_key="k1", max_retries=0)
        r = await c.chat.completions.create(**CHAT)
        assert r.choices[0].message.content == REPLY
        await c.close()
        proc.send_signal(signal.SIGTERM)
        rc = await asyncio.wait_for(proc.wait(), 10)
        rest = await proc.stdout.read()
        err = await proc.stderr.read()
        assert rc == 0, err.decode()
        assert rest == b""  # exactly one stdout line
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
