"""Routing intelligence end to end (issue 11): ``model: "auto"``, session affinity and cascades on the
real embedded models (chat, coder, text-embedding), through the official openai SDK.

The server runs in this process (``inprocess.Served``) over an artifact store with the three models.
Two cascades bracket the threshold so that both outcomes are certain whatever the models write:
``sure`` accepts any first-tier answer (threshold −100: a mean logprob is never below it), ``unsure``
never does (threshold +1: a mean logprob is at most 0).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from openapi_schema import validate  # noqa: E402

from modelyard.registry.artifacts import ArtifactStore  # noqa: E402
from modelyard.registry.defaults import import_defaults  # noqa: E402

from .inprocess import Served  # noqa: E402

CODE = "Why does this fail?\n```python\nprint(undefined_name)\n```"
ROUTES = {
    "default": "chat",
    "tasks": {"code": {"model": "coder", "overflow": "chat", "overflow_queue_depth": 8}, "chat": {"model": "chat"},
              "summarize": {"model": "chat"}, "classify": {"model": "chat"}},
}


def _local(artifact: str, **kw: Any) -> dict[str, Any]:
    return {"kind": "local", "artifact": artifact, **kw}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    store = ArtifactStore(tmp_path_factory.mktemp("artifacts"))
    import_defaults(store, names=["chat", "coder", "text-embedding"])
    price = {"input_per_1k": 0.001, "output_per_1k": 0.002}
    config = {
        "memory": {"data_dir": str(tmp_path_factory.mktemp("home"))},
        "spend": {"flush_interval_s": 0.1},
        "router": {"timeout_s": 120, "retry": {"num_retries": 0}},
        "routing": {"auto": ROUTES},
        "models": [
            {"name": "chat", "price": price, "deployments": [_local("chat", n_ctx=2048, n_parallel=2)]},
            {"name": "coder", "price": {k: v * 10 for k, v in price.items()},
             "deployments": [_local("coder", n_ctx=2048, n_parallel=2)]},
            {"name": "text-embedding", "deployments": [_local("text-embedding")]},
            {"name": "sure", "cascade": {"tiers": [{"model": "chat", "threshold": -100}, {"model": "coder"}]}},
            {"name": "unsure", "cascade": {"tiers": [{"model": "chat", "threshold": 1, "max_tokens": 4},
                                                     {"model": "coder"}]}},
        ],
    }
    with Served(config, store) as s:
        yield s


def client(s: Served) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{s.url}/v1", api_key="sk-test", max_retries=0, timeout=120)


def ask(s: Served, model: str, content: str, *, system: str | None = None, headers: dict[str, str] | None = None,
        **kw: Any):  # noqa: ANN201 - the SDK's raw response
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": content}]
    return client(s).chat.completions.with_raw_response.create(
        model=model, messages=messages, max_tokens=kw.pop("max_tokens", 8), temperature=0, extra_headers=headers, **kw)


def route_of(raw: Any) -> dict[str, str]:
    header = raw.headers.get("x-modelyard-route")
    assert header, "no x-modelyard-route header"
    return dict(part.split("=", 1) for part in header.split("; "))


def test_auto_sends_code_to_the_coder_by_rules_and_says_why(served: Served) -> None:
    raw = ask(served, "auto", CODE)
    route = route_of(raw)
    assert (route["task"], route["by"], route["model"]) == ("code", "rules", "coder")
    assert raw.headers["x-modelyard-model"] == "coder"
    body = raw.parse()
    assert body.choices[0].message.content is not None
    validate(raw.http_response.json(), "CreateChatCompletionResponse")


def test_auto_classifies_plain_chat_with_the_learned_classifier(served: Served) -> None:
    raw = ask(served, "auto", "Hi! How was your weekend? Mine was lovely, we went hiking.")
    route = route_of(raw)
    assert route["by"] in ("classifier", "default"), route
    assert route["model"] == "chat" and raw.headers["x-modelyard-model"] == "chat"
    assert float(route["p"]) > 0  # the classifier ran (the embedding went through the router)


def test_only_the_users_words_are_classified_not_the_system_prompt(served: Served) -> None:
    system = "You are a coding agent. Tools: ```python\ndef run(cmd): ...\n``` Traceback (most recent call last)"
    route = route_of(ask(served, "auto", "Thanks, that is all for today. Have a nice evening!", system=system))
    assert route["model"] == "chat", route


def test_an_explicit_model_always_wins(served: Served) -> None:
    raw = ask(served, "chat", CODE)
    assert raw.headers.get("x-modelyard-route") is None
    assert raw.headers["x-modelyard-model"] == "chat"


def test_auto_streams_with_the_route_header(served: Served) -> None:
    with client(served).chat.completions.with_streaming_response.create(
            model="auto", messages=[{"role": "user", "content": CODE}], max_tokens=8, stream=True) as resp:
        assert route_of(resp)["model"] == "coder"
        chunks = [c for c in resp.parse()]
    assert chunks and chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_a_session_stays_on_its_model(served: Served) -> None:
    session = {"x-session-id": f"conv-{time.monotonic_ns()}"}
    first = route_of(ask(served, "auto", CODE, headers=session))
    assert first["model"] == "coder"
    second = ask(served, "auto", "Thanks! And what is the capital of France?", headers=session)
    assert route_of(second) == {"by": "session", "model": "coder"}
    assert second.headers["x-modelyard-model"] == "coder"
    other = ask(served, "auto", "Thanks! And what is the capital of France?")  # no session: classified afresh
    assert route_of(other)["model"] == "chat"


def test_auto_is_listed_and_the_catalogue_validates(served: Served) -> None:
    models = httpx.get(f"{served.url}/v1/models", timeout=10).json()
    validate(models, "ListModelsResponse")
    assert {"auto", "sure", "unsure", "chat", "coder"} <= {m["id"] for m in models["data"]}


def _spend_rows(s: Served, request_id: str, n: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 10
    while True:
        rows = [r for model in ("chat", "coder")
                for r in httpx.get(f"{s.url}/spend/logs", params={"model": model, "limit": 200}, timeout=10).json()["data"]
                if r["request_id"].split("#")[0] == request_id]
        if len(rows) >= n or time.monotonic() > deadline:
            return sorted(rows, key=lambda r: r["hop"])
        time.sleep(0.1)


def test_a_sure_first_tier_answers_alone(served: Served) -> None:
    raw = ask(served, "sure", "Say hello.", headers={"x-request-id": "cascade-sure-1"})
    header = dict(p.split("=", 1) for p in raw.headers["x-modelyard-cascade"].split("; "))
    assert header["answered"] == "chat" and header["tier"] == "0" and float(header["confidence"]) <= 0
    body = raw.http_response.json()
    validate(body, "CreateChatCompletionResponse")
    assert body["choices"][0]["logprobs"] is None  # the client did not ask for them
    rows = _spend_rows(served, "cascade-sure-1", 1)
    assert [(r["model"], r["hop"], r["request_id"]) for r in rows] == [("chat", 0, "cascade-sure-1")]


def test_an_unsure_first_tier_escalates_and_both_hops_are_paid(served: Served) -> None:
    raw = ask(served, "unsure", "Say hello.", headers={"x-request-id": "cascade-unsure-1"})
    header = raw.headers["x-modelyard-cascade"]
    assert header.startswith("answered=coder; tier=1; escalated=chat("), header
    validate(raw.http_response.json(), "CreateChatCompletionResponse")
    rows = _spend_rows(served, "cascade-unsure-1", 2)
    assert [(r["model"], r["hop"], r["request_id"]) for r in rows] == [
        ("chat", 0, "cascade-unsure-1#0"), ("coder", 1, "cascade-unsure-1")]
    assert rows[0]["completion_tokens"] <= 4  # the tier's own max_tokens cap held
    assert all(float(r["cost"]) > 0 for r in rows)


@pytest.mark.parametrize(("model", "answered"), [("sure", "chat"), ("unsure", "coder")])
def test_cascades_stream(served: Served, model: str, answered: str) -> None:
    with client(served).chat.completions.with_streaming_response.create(
            model=model, messages=[{"role": "user", "content": "Say hello."}], max_tokens=8, stream=True,
            stream_options={"include_usage": True}) as resp:
        assert resp.headers["x-modelyard-cascade"].startswith(f"answered={answered}")
        chunks = list(resp.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    for c in chunks:
        validate(c.model_dump(mode="json", exclude_unset=True), "CreateChatCompletionStreamResponse")


def test_a_cascade_serves_chat_completions_only(served: Served) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        client(served).completions.create(model="sure", prompt="hi", max_tokens=4)
    assert e.value.body["param"] == "model" and "cascade" in e.value.body["message"]


# --- the Responses API on the real models (issue 14 §1): routing and cascades apply unchanged ---------


def test_responses_on_real_models_auto_cascade_stream_and_multi_turn(served: Served) -> None:
    c = client(served)
    raw = c.responses.with_raw_response.create(model="auto", input=CODE, max_output_tokens=8, temperature=0)
    assert route_of(raw)["model"] == "coder"
    first = raw.parse()
    validate(raw.http_response.json(), "Response")
    assert first.status in ("completed", "incomplete") and first.output_text
    raw = c.responses.with_raw_response.create(model="sure", input="What is 2 + 2?", max_output_tokens=6,
                                               temperature=0)
    assert raw.headers["x-modelyard-cascade"].startswith("answered=chat; tier=0")
    assert raw.parse().output_text
    with c.responses.stream(model="chat", input="Say hello.", max_output_tokens=6, temperature=0) as s:
        events = list(s)
    # 6 tokens may cut the answer: then the stream ends with response.incomplete (as OpenAI's does), on
    # which the SDK's get_final_response() raises; the event carries the final response either way.
    assert events[-1].type in ("response.completed", "response.incomplete")
    final = events[-1].response
    deltas = [ev.delta for ev in events if ev.type == "response.output_text.delta"]
    assert deltas and "".join(deltas) == final.output_text
    follow = c.responses.create(model="chat", input="Say it again.", previous_response_id=final.id,
                                max_output_tokens=6, temperature=0)
    assert follow.previous_response_id == final.id and follow.output_text
    schema = {"type": "object", "properties": {"answer": {"type": "integer"}}, "required": ["answer"],
              "additionalProperties": False}
    js = c.responses.create(model="chat", input="What is 3 + 4? Answer in JSON.", max_output_tokens=24, temperature=0,
                            text={"format": {"type": "json_schema", "name": "sum", "schema": schema, "strict": True}})
    import json

    assert isinstance(json.loads(js.output_text)["answer"], int)
