"""The gateway as a user meets it: the official openai SDK against a real gateway and upstream."""

from __future__ import annotations

import base64
import struct

import openai
import orjson
import pytest

from .support import Gateway, MockUpstream, ProcessPool, deployment, model_cfg, validate

UPSTREAM_KEY = "sk-upstream-deployment-key-7f3a"
CLIENT_SECRET = "sk-client-only-9c1e"
MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello big world"}]
REPLY = "mock reply to: hello big world"


@pytest.fixture(scope="module")
def gw(module_procs: ProcessPool, shared_mock: MockUpstream) -> Gateway:
    return module_procs.gateway(
        {
            "models": [
                model_cfg(
                    "chat-a",
                    deployment(shared_mock, "up-chat", api_key=UPSTREAM_KEY, name="chat-a-dep"),
                    aliases=["chat-alias", "org/slashed-alias"],
                    owned_by="team-x",
                ),
                model_cfg("same-name", deployment(shared_mock, "same-name")),
                model_cfg("embed", deployment(shared_mock, "up-embed", api_key=UPSTREAM_KEY)),
            ]
        }
    )


@pytest.fixture(scope="module")
def client(gw: Gateway) -> openai.OpenAI:
    return gw.client()


# --- chat ---------------------------------------------------------------------------------------


def test_chat_completion(client: openai.OpenAI, mock: MockUpstream) -> None:
    resp = client.chat.completions.create(model="chat-a", messages=MESSAGES)
    assert resp.choices[0].message.content == REPLY
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage is not None and resp.usage.prompt_tokens == 5 and resp.usage.completion_tokens == 6
    last = mock.last_request()
    assert last["path"] == "/v1/chat/completions"
    assert last["body"] == {"model": "up-chat", "messages": MESSAGES}


def test_chat_stream_reassembles_and_hides_usage_the_client_did_not_ask_for(client: openai.OpenAI, mock: MockUpstream) -> None:
    chunks = list(client.chat.completions.create(model="chat-a", messages=MESSAGES, stream=True))
    assert chunks, "no chunk arrived"
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    assert all(c.choices for c in chunks), "a usage-only chunk (choices: []) reached a client that did not ask for usage"
    assert all(getattr(c, "usage", None) is None for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == REPLY
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == "stop"
    # modelyard asked the upstream for usage on its own behalf (token accounting)
    body = mock.last_request()["body"]
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}


def test_chat_stream_with_usage_when_asked(client: openai.OpenAI, mock: MockUpstream) -> None:
    chunks = list(
        client.chat.completions.create(
            model="chat-a", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
    )
    usage_chunks = [c for c in chunks if c.usage is not None]
    assert len(usage_chunks) == 1
    assert usage_chunks[0] is chunks[-1] and chunks[-1].choices == []
    assert chunks[-1].usage.prompt_tokens == 5 and chunks[-1].usage.completion_tokens == 6
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == REPLY
    assert mock.last_request()["body"]["stream_options"] == {"include_usage": True}


def test_raw_stream_ends_with_done(gw: Gateway, mock: MockUpstream) -> None:
    body = {"model": "chat-a", "messages": MESSAGES, "stream": True, "stream_options": {"include_obfuscation": False}}
    with gw.http.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        raw = r.read()
    events = [e for e in raw.split(b"\n\n") if e]
    assert events[-1] == b"data: [DONE]"
    assert raw.endswith(b"data: [DONE]\n\n")
    assert raw.count(b"[DONE]") == 1
    payloads = [orjson.loads(e[len(b"data: "):]) for e in events[:-1]]
    for p in payloads:
        validate(p, "CreateChatCompletionStreamResponse")
        assert p["choices"], "usage-only chunk leaked to a client that did not ask for it"
    # the client's other stream_options are kept; include_usage is added for the upstream only
    assert mock.last_request()["body"]["stream_options"] == {"include_obfuscation": False, "include_usage": True}


# --- completions & embeddings -------------------------------------------------------------------


def test_completions(client: openai.OpenAI, mock: MockUpstream) -> None:
    resp = client.completions.create(model="chat-alias", prompt="say this please", max_tokens=4)
    assert resp.choices[0].text == "mock reply to: say"
    assert resp.choices[0].finish_reason == "length"
    assert mock.last_request()["body"] == {"model": "up-chat", "prompt": "say this please", "max_tokens": 4}
    assert mock.last_request()["path"] == "/v1/completions"


def test_completions_stream(client: openai.OpenAI, mock: MockUpstream) -> None:
    chunks = list(client.completions.create(model="chat-a", prompt="say this please", stream=True))
    assert "".join(c.choices[0].text for c in chunks) == "mock reply to: say this please"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks)


def test_completions_stream_with_usage(client: openai.OpenAI, mock: MockUpstream) -> None:
    chunks = list(
        client.completions.create(model="chat-a", prompt="a b", stream=True, stream_options={"include_usage": True})
    )
    assert [c.usage.completion_tokens for c in chunks if c.usage] == [5]


def test_embeddings_float_and_base64(client: openai.OpenAI, mock: MockUpstream) -> None:
    inputs = ["first text", "second"]
    flt = client.embeddings.create(model="embed", input=inputs, encoding_format="float")
    assert [d.index for d in flt.data] == [0, 1]
    assert all(len(d.embedding) == 8 for d in flt.data)
    assert mock.last_request()["body"] == {"model": "up-embed", "input": inputs, "encoding_format": "float"}
    b64 = client.embeddings.create(model="embed", input=inputs, encoding_format="base64")
    for f, b in zip(flt.data, b64.data):
        assert isinstance(b.embedding, str)
        assert list(struct.unpack("<8f", base64.b64decode(b.embedding))) == f.embedding
    assert flt.usage.prompt_tokens == 3


def test_embeddings_sdk_default_decodes(client: openai.OpenAI, mock: MockUpstream) -> None:
    # the SDK asks for base64 by default and decodes it to floats itself
    default = client.embeddings.create(model="embed", input="first text")
    flt = client.embeddings.create(model="embed", input="first text", encoding_format="float")
    assert default.data[0].embedding == pytest.approx(flt.data[0].embedding, abs=1e-7)


# --- models -------------------------------------------------------------------------------------


def test_models_list_includes_aliases(gw: Gateway, client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    assert sorted(ids) == sorted(["chat-a", "chat-alias", "org/slashed-alias", "same-name", "embed"])
    raw = gw.http.get("/v1/models")
    assert raw.status_code == 200
    validate(raw.json(), "ListModelsResponse")
    owners = {m["id"]: m["owned_by"] for m in raw.json()["data"]}
    assert owners["chat-alias"] == "team-x"


@pytest.mark.parametrize("name", ["chat-a", "chat-alias", "org/slashed-alias"])
def test_models_retrieve(gw: Gateway, client: openai.OpenAI, name: str) -> None:
    m = client.models.retrieve(name)
    assert m.id == name and m.object == "model"
    raw = gw.http.get(f"/v1/models/{name}")
    assert raw.status_code == 200
    validate(raw.json(), "Model")


def test_models_retrieve_unknown(gw: Gateway, client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as ei:
        client.models.retrieve("no-such-model")
    assert ei.value.status_code == 404
    raw = gw.http.get("/v1/models/no-such-model")
    assert raw.status_code == 404
    validate(raw.json(), "ErrorResponse")


# --- what reaches the upstream ------------------------------------------------------------------


def test_unused_fields_reach_the_upstream_untouched(client: openai.OpenAI, mock: MockUpstream) -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "lookup",
                "description": "look ☃ up",
                "parameters": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]},
            },
        }
    ]
    sent = dict(
        messages=[{"role": "user", "content": "héllo \"quoted\" \n wörld"}],
        tools=tools,
        tool_choice="auto",
        parallel_tool_calls=False,
        response_format={"type": "json_object"},
        logprobs=True,
        top_logprobs=2,
        seed=2**53 + 1,
        n=2,
        stop=["END", "\n\n"],
        user="user-42",
        metadata={"trace": "abc"},
        temperature=0.25,
        top_p=1,
        presence_penalty=-0.5,
        logit_bias={"50256": -100},
        max_completion_tokens=3,
    )
    extra = {"vendor_specific": {"nested": [1, 2.5, None, True]}, "top_k": 40}
    resp = client.chat.completions.create(model="chat-a", extra_body=extra, **sent)
    assert len(resp.choices) == 2
    assert mock.last_request()["body"] == {"model": "up-chat", **sent, **extra}


def test_same_upstream_name_body_passes_through(gw: Gateway, mock: MockUpstream) -> None:
    raw = b'{"model":"same-name","messages":[{"role":"user","content":"x"}],"x_unknown":{"a":[1,2,{"b":null}]}}'
    r = gw.http.post("/v1/chat/completions", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text
    assert mock.last_request()["body"] == orjson.loads(raw)


def test_upstream_gets_deployment_key_not_client_key(gw: Gateway, mock: MockUpstream) -> None:
    c = gw.client(api_key=CLIENT_SECRET)
    c.chat.completions.create(model="chat-a", messages=MESSAGES)
    headers = mock.last_request()["headers"]
    assert headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert not any(CLIENT_SECRET in v for v in headers.values()), headers
    # a deployment without an api_key sends no Authorization at all (never the client's)
    c.chat.completions.create(model="same-name", messages=MESSAGES)
    headers = mock.last_request()["headers"]
    assert "authorization" not in headers, headers
    assert not any(CLIENT_SECRET in v for v in headers.values()), headers


def test_keyed_upstream_accepts_the_deployment_key(procs: ProcessPool, gateway) -> None:  # noqa: ANN001
    keyed = procs.mock(api_key=UPSTREAM_KEY)
    gw = gateway({"models": [model_cfg("m", deployment(keyed, "up", api_key=UPSTREAM_KEY))]})
    resp = gw.client(api_key=CLIENT_SECRET).chat.completions.create(model="m", messages=MESSAGES)
    assert resp.choices[0].message.content == REPLY


# --- request ids and routing headers ------------------------------------------------------------


def test_request_id_is_honoured(gw: Gateway, mock: MockUpstream) -> None:
    rid = "req-Abc_123.x:y"
    r = gw.http.post("/v1/chat/completions", json={"model": "chat-a", "messages": MESSAGES}, headers={"x-request-id": rid})
    assert r.status_code == 200
    assert r.headers["x-request-id"] == rid
    assert mock.last_request()["headers"]["x-request-id"] == rid


def test_request_id_is_generated(gw: Gateway, mock: MockUpstream) -> None:
    ids = []
    for _ in range(2):
        r = gw.http.post("/v1/chat/completions", json={"model": "chat-a", "messages": MESSAGES})
        assert r.status_code == 200
        rid = r.headers.get("x-request-id")
        assert rid, r.headers
        assert mock.last_request()["headers"]["x-request-id"] == rid
        ids.append(rid)
    assert ids[0] != ids[1]
    # an unsafe id (header injection, overlong) is replaced, never echoed
    bad = "a" * 300
    r = gw.http.post("/v1/chat/completions", json={"model": "chat-a", "messages": MESSAGES}, headers={"x-request-id": bad})
    assert r.status_code == 200 and r.headers["x-request-id"] not in ("", bad)
    # errors carry one too
    r = gw.http.post("/v1/chat/completions", json={"model": "nope", "messages": MESSAGES}, headers={"x-request-id": "err-1"})
    assert r.status_code == 404 and r.headers["x-request-id"] == "err-1"


def test_routing_headers(client: openai.OpenAI, mock: MockUpstream) -> None:
    raw = client.chat.completions.with_raw_response.create(model="chat-alias", messages=MESSAGES)
    assert raw.headers["x-modelyard-model"] == "chat-a"
    assert raw.headers["x-modelyard-fallbacks"] == "0"
    assert raw.parse().choices[0].message.content == REPLY
    with client.chat.completions.with_streaming_response.create(model="chat-a", messages=MESSAGES, stream=True) as s:
        assert s.headers["x-modelyard-model"] == "chat-a"
        assert s.headers["x-modelyard-fallbacks"] == "0"
        assert "".join(c.choices[0].delta.content or "" for c in s.parse()) == REPLY


async def test_async_client_concurrent(gw: Gateway, mock: MockUpstream) -> None:
    import asyncio

    async with gw.async_client() as ac:
        prompts = [f"question number {i}" for i in range(8)]
        results = await asyncio.gather(
            *(ac.chat.completions.create(model="chat-a", messages=[{"role": "user", "content": p}]) for p in prompts)
        )
        assert [r.choices[0].message.content for r in results] == [f"mock reply to: {p}" for p in prompts]
        stream = await ac.chat.completions.create(model="chat-a", messages=MESSAGES, stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in stream])
        assert text == REPLY


def test_errors_from_modelyard_validate(gw: Gateway) -> None:
    for r in (
        gw.http.post("/v1/chat/completions", json={"model": "missing", "messages": MESSAGES}),
        gw.http.post("/v1/chat/completions", content=b"{"),
        gw.http.get("/v1/nothing-here"),
    ):
        assert r.status_code in (400, 404)
        validate(r.json(), "ErrorResponse")
    with pytest.raises(openai.NotFoundError) as ei:
        gw.client().chat.completions.create(model="missing", messages=MESSAGES)
    assert isinstance(ei.value.body, dict) and ei.value.body.get("code") == "model_not_found"
