"""Real models behind the real server, driven through the openai SDK.

The server runs in this process (uvicorn on a free loopback port, in a thread with its own event
loop) so that the test can watch the memory manager's own accounting after EVERY tier transition:
the active budget holds two of the three big models, so a concurrent mixed workload forces
evictions, and every request must still answer correctly.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from openapi_schema import validate  # noqa: E402

from modelyard.memory.policy import Tier  # noqa: E402
from modelyard.registry.artifacts import ArtifactStore  # noqa: E402
from modelyard.registry.defaults import import_defaults  # noqa: E402

from .inprocess import Served  # noqa: E402

MiB = 1 << 20


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> ArtifactStore:
    s = ArtifactStore(tmp_path_factory.mktemp("artifacts"))
    import_defaults(s, names=["chat", "text-embedding", "moderation", "intent"])
    return s


def _local(artifact: str, **kw: Any) -> dict[str, Any]:
    return {"kind": "local", "artifact": artifact, **kw}


@pytest.fixture(scope="module")
def served(store: ArtifactStore) -> Iterator[Served]:
    config = {
        # chat ≈ 280 MB active, text-embedding ≈ 320 MB, intent ≈ 330 MB (its own MiniLM encoder):
        # 700 MB holds two of the three; the host tier holds one parked MiniLM.
        "memory": {"active": 700 * MiB, "host": 160 * MiB},
        "router": {"timeout_s": 120, "retry": {"num_retries": 0}},
        "models": [
            {"name": "chat", "deployments": [_local("chat", n_ctx=1024, n_parallel=2, pinned=False)]},
            {"name": "text-embedding", "deployments": [_local("text-embedding")]},
            {"name": "intent", "deployments": [_local("intent")]},
            {"name": "moderation", "aliases": ["omni-moderation-latest"], "deployments": [_local("moderation", pinned=True)]},
            {"name": "broken", "deployments": [_local("does-not-exist")]},
            {"name": "broken-with-fallback", "deployments": [_local("also-missing")], "fallbacks": ["chat"]},
        ],
    }
    with Served(config, store) as s:
        yield s


def client(s: Served) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{s.url}/v1", api_key="sk-test", max_retries=0, timeout=120)


async def test_mixed_workload_under_a_two_model_budget_answers_everything(served: Served) -> None:
    c = client(served)
    http = httpx.AsyncClient(base_url=served.url, timeout=120)

    async def chat(i: int) -> None:
        r = await c.chat.completions.create(
            model="chat", messages=[{"role": "user", "content": f"Say the number {i}."}], max_tokens=8, seed=i
        )
        validate(r.model_dump(exclude_unset=True), "CreateChatCompletionResponse")
        assert r.choices[0].message.content and r.usage.completion_tokens <= 8

    async def embed(i: int) -> None:
        r = await c.embeddings.create(model="text-embedding", input=[f"sentence {i}", "another one"])
        assert len(r.data) == 2 and len(r.data[0].embedding) == 384
        assert r.usage.prompt_tokens > 0

    async def intent(i: int) -> None:
        r = await http.post("/v1/classifications", json={"model": "intent", "input": "I forgot my password", "top_k": 3})
        assert r.status_code == 200, r.text
        labels = r.json()["data"][0]["labels"]
        assert len(labels) == 3 and labels[0]["score"] >= labels[1]["score"]

    async def moderate(i: int) -> None:
        r = await c.moderations.create(input=["you are a damn idiot", "have a lovely day"])
        validate(r.model_dump(exclude_unset=True), "CreateModerationResponse")
        assert r.results[0].flagged and not r.results[1].flagged

    jobs = []
    for i in range(6):
        jobs += [chat(i), embed(i), intent(i), moderate(i)]
    try:
        await asyncio.gather(*jobs)
    finally:
        await http.aclose()
    assert served.violations == []
    demotions = [t for t in served.transitions if t[1] is Tier.active]
    assert demotions, f"the budget never forced an eviction: {served.transitions}"
    snap = {m["name"]: m for m in served.app.services.memory.snapshot()}
    assert snap["moderation"]["tier"] == "active" and snap["moderation"]["demotions"] == 0, "a pinned model moved"
    for name in ("chat", "text-embedding", "intent"):
        assert snap[name]["warmups"] >= snap[name]["loads"] >= 1, f"{name}: warm-up did not run before serving"


async def test_admin_api_demotes_and_reports(served: Served) -> None:
    async with httpx.AsyncClient(base_url=served.url, timeout=120) as http:
        r = await http.post("/v1/embeddings", json={"model": "text-embedding", "input": "warm me"})
        assert r.status_code == 200
        r = await http.post("/admin/models/text-embedding/demote", json={"to": "host"})
        assert r.status_code == 200, r.text
        assert r.json()["model"]["tier"] == "host"
        r = await http.post("/v1/embeddings", json={"model": "text-embedding", "input": "back again"})
        assert r.status_code == 200 and len(r.json()["data"][0]["embedding"]) == 384
        listing = (await http.get("/admin/models")).json()
        by_name = {m["name"]: m for m in listing["data"]}
        assert by_name["text-embedding"]["tier"] == "active"
        assert listing["memory"]["active"]["used_bytes"] <= listing["memory"]["active"]["budget_bytes"]
        # Unload, then serve again: the reload makes a new engine; batching must follow it.
        r = await http.post("/admin/models/text-embedding/unload")
        assert r.status_code == 200 and r.json()["model"]["tier"] == "disk"
        r = await http.post("/v1/embeddings", json={"model": "text-embedding", "input": ["reloaded", "twice"]})
        assert r.status_code == 200, r.text
        assert len(r.json()["data"]) == 2
        r = await http.post("/admin/models/moderation/unload")
        assert r.status_code in (400, 409, 503) and "pinned" in r.json()["error"]["message"]
        metrics = (await http.get("/metrics")).text
        assert "modelyard_model_transitions_total" in metrics


async def test_missing_artifact_is_a_clear_503_and_the_others_keep_serving(served: Served) -> None:
    c = client(served)
    with pytest.raises(openai.APIStatusError) as ei:
        await c.chat.completions.create(model="broken", messages=[{"role": "user", "content": "hi"}])
    assert ei.value.status_code == 503
    body = ei.value.response.json()
    validate(body, "ErrorResponse")
    assert "does-not-exist" in body["error"]["message"]
    r = await c.embeddings.create(model="text-embedding", input="still fine")
    assert len(r.data[0].embedding) == 384


async def test_a_local_model_that_cannot_load_falls_back(served: Served) -> None:
    raw = await client(served).chat.completions.with_raw_response.create(
        model="broken-with-fallback", messages=[{"role": "user", "content": "hi"}], max_tokens=4
    )
    assert raw.headers["x-modelyard-model"] == "chat" and raw.headers["x-modelyard-fallbacks"] == "1"
    assert raw.parse().choices[0].message.content is not None


async def test_streaming_chat_from_a_local_model(served: Served) -> None:
    c = client(served)
    stream = await c.chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "Count to five."}], max_tokens=16, stream=True,
        stream_options={"include_usage": True},
    )
    text, usage = "", None
    async for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
        if chunk.usage:
            usage = chunk.usage
    assert text and usage is not None and 0 < usage.completion_tokens <= 16


async def test_the_first_streamed_chunk_has_an_empty_content_not_none(served: Served) -> None:
    """As OpenAI's: the first chunk carries ``role`` and ``"content": ""`` (llama.cpp sends null, and
    the README's ``print(chunk.choices[0].delta.content, end="")`` printed ``None`` first)."""
    stream = await client(served).chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "Say hi."}], max_tokens=8, stream=True, temperature=0, seed=1,
    )  # greedy: a stable reply
    deltas = [chunk.choices[0].delta async for chunk in stream if chunk.choices]
    assert deltas[0].role == "assistant"
    assert deltas[0].content == ""
    assert all(isinstance(d.content, str) for d in deltas[:-1])  # only the finish chunk's delta is {}
    assert "".join(d.content or "" for d in deltas).strip()
    first = ""
    async with httpx.AsyncClient(base_url=served.url, timeout=120) as http:
        body = {"model": "chat", "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 8, "stream": True,
                "temperature": 0, "seed": 1}
        async with http.stream("POST", "/v1/chat/completions", json=body) as r:
            async for line in r.aiter_lines():
                if line.startswith("data: "):
                    first = line
                    break
    validate(orjson.loads(first[len("data: "):]), "CreateChatCompletionStreamResponse")
    assert '"content":""' in first


async def test_wrong_endpoint_for_a_model_is_a_404(served: Served) -> None:
    c = client(served)
    with pytest.raises(openai.NotFoundError) as ei:
        await c.embeddings.create(model="chat", input="chat cannot embed")
    assert "does not support" in ei.value.response.json()["error"]["message"]


@pytest.fixture(scope="module")
def tight(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """A second server (with its own store): a corrupt artifact, a budget too small for chat, and
    replicas whose artifact versions differ."""
    store = ArtifactStore(tmp_path_factory.mktemp("tight-artifacts"))
    import_defaults(store, names=["chat", "moderation"])
    junk = tmp_path_factory.mktemp("junk") / "broken.gguf"
    junk.write_bytes(b"GGUF" + b"\x00" * 4096)  # a GGUF magic, then nothing valid
    store.import_file("corrupt-gguf", junk, engine="llamacpp", format="gguf", source="test:junk")
    first = store.get("chat")
    # a second version of "chat" with other content: replicas that load different versions
    other = tmp_path_factory.mktemp("other") / "other.gguf"
    other.write_bytes(Path(store.path(first)).read_bytes()[:1024] + b"different")
    second = store.import_file("chat", other, engine="llamacpp", format="gguf", source="test:other", version="v2")
    config = {
        "memory": {"active": 64 * MiB, "host": 16 * MiB},
        "router": {"timeout_s": 60, "retry": {"num_retries": 0}},
        "models": [
            {"name": "corrupt", "deployments": [_local("corrupt-gguf")]},
            {"name": "too-big", "deployments": [_local("chat", version=first.version)]},
            {"name": "replicas", "deployments": [_local("chat", version=first.version), _local("chat", version=second.version)]},
            {"name": "moderation", "deployments": [_local("moderation")]},
        ],
    }
    with Served(config, store) as s:
        yield s


async def test_corrupt_artifact_too_small_budget_and_replica_mismatch_are_clear_503s(tight: Served) -> None:
    c = client(tight)

    async def error_of(model: str) -> dict[str, Any]:
        with pytest.raises(openai.APIStatusError) as ei:
            await c.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=2)
        assert ei.value.status_code == 503, ei.value.response.text
        body = ei.value.response.json()
        validate(body, "ErrorResponse")
        return body["error"]

    corrupt = await error_of("corrupt")
    assert corrupt["code"] == "model_load_failed" and "corrupt" in corrupt["message"]
    too_big = await error_of("too-big")
    assert too_big["code"] == "insufficient_memory", too_big
    assert "budget" in too_big["message"]
    replicas = await error_of("replicas")
    assert "different content" in replicas["message"]
    # ... and the server keeps serving the model that fits
    r = await c.moderations.create(model="moderation", input="have a nice day")
    assert r.results[0].flagged is False
    assert tight.violations == []
