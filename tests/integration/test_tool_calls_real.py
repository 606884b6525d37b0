"""Tool calls on the embedded llama.cpp models (``chat`` SmolLM2-135M, ``coder`` Qwen2.5-Coder-0.5B),
served by the real gateway and driven through the official openai SDK.

``tool_choice="required"`` must give a call of a declared function whose arguments validate
against that function's parameters every time (grammar-constrained decoding), for both models:
``coder``'s template has a tool format (``<tool_call>``), ``chat``'s has none (modelyard's own
system message). Every body is checked against OpenAI's published schemas.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import openai
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from openapi_schema import validate  # noqa: E402

from modelyard.registry.artifacts import ArtifactStore  # noqa: E402
from modelyard.registry.defaults import import_defaults  # noqa: E402

from .inprocess import Served  # noqa: E402
from .support import assert_error  # noqa: E402

MODELS = ("chat", "coder")
MAX_TOKENS = 96


def fn(name: str, description: str, properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "description": description, "parameters": {
        "type": "object", "properties": properties, "required": required}}}


WEATHER = fn("get_weather", "Current weather in a city",
             {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}, ["city"])
TIME = fn("get_time", "Current time in an IANA time zone", {"timezone": {"type": "string"}}, ["timezone"])
CONVERT = fn("convert_currency", "Convert an amount of money",
             {"amount": {"type": "number"}, "from": {"type": "string"}, "to": {"type": "string"}}, ["amount", "from", "to"])
SEARCH = fn("search_books", "Search a library catalogue",
            {"query": {"type": "string"}, "limit": {"type": "integer", "minimum": 1, "maximum": 20},
             "sort": {"type": "string", "enum": ["relevance", "newest"]}}, ["query", "limit"])
EVENT = fn("create_event", "Put an event in the calendar",
           {"title": {"type": "string"}, "day": {"type": "string", "enum": ["mon", "tue", "wed", "thu", "fri"]},
            "attendees": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
            "place": {"type": "object", "properties": {"room": {"type": "integer"}}, "required": ["room"]}},
           ["title", "day", "place"])

# 20 required calls per model: five tool sets, four prompts each (a tool set's prompt prefix is
# cached by llama.cpp between its prompts).
CASES: list[tuple[list[dict[str, Any]], str]] = [
    ([WEATHER, TIME], p) for p in ("What's the weather in Paris?", "Is it raining in Tokyo right now?",
                                   "What time is it in Berlin?", "Tell me the temperature in Lima in fahrenheit.")
] + [
    ([CONVERT], p) for p in ("How much is 100 dollars in euros?", "Convert 5.5 GBP to JPY.",
                             "I have 20 CHF, how many USD is that?", "Change 1000 yen into pounds.")
] + [
    ([SEARCH, WEATHER], p) for p in ("Find three books about whales.", "Newest books on Rust programming, at most 5.",
                                     "Look up poetry books.", "Any good mystery novels? Show ten.")
] + [
    ([EVENT], p) for p in ("Book a team meeting on Monday in room 4 with Ann and Bo.", "Plan lunch on Friday in room 12.",
                           "Schedule a review on Wednesday, room 1.", "Add a standup on Tuesday in room 7 with Cy.")
] + [
    ([WEATHER, TIME, CONVERT, SEARCH], p) for p in ("Weather in Cairo?", "Convert 3 euros to dollars.",
                                                    "Time in America/New_York?", "Search books about bees, limit 2.")
]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    store = ArtifactStore(tmp_path_factory.mktemp("artifacts"))
    import_defaults(store, names=list(MODELS))
    config = {
        "router": {"timeout_s": 300, "retry": {"num_retries": 0}},
        "models": [{"name": m, "deployments": [{"kind": "local", "artifact": m, "n_ctx": 2048, "n_parallel": 1}]}
                   for m in MODELS],
    }
    with Served(config, store) as s:
        yield s


@pytest.fixture(scope="module")
def client(served: Served) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{served.url}/v1", api_key="sk-test", max_retries=0, timeout=300)


def create(client: openai.OpenAI, **kw: Any) -> tuple[Any, dict[str, Any]]:
    """The parsed completion and the body as sent, checked against OpenAI's schema."""
    raw = client.chat.completions.with_raw_response.create(max_tokens=MAX_TOKENS, **kw)
    body = raw.http_response.json()
    validate(body, "CreateChatCompletionResponse")
    return raw.parse(), body


def check_call(call: Any, tools: list[dict[str, Any]]) -> str | None:
    """Why ``call`` is not a valid call of one of ``tools`` (None: it is)."""
    declared = {t["function"]["name"]: t["function"]["parameters"] for t in tools}
    if call.type != "function" or not call.id.startswith("call_"):
        return f"not an OpenAI function call: {call}"
    if call.function.name not in declared:
        return f"undeclared function {call.function.name!r}"
    try:
        args = json.loads(call.function.arguments)
        jsonschema.validate(args, declared[call.function.name])
    except (ValueError, jsonschema.ValidationError) as exc:
        return f"{call.function.name}({call.function.arguments}): {exc}"[:300]
    return None


@pytest.mark.parametrize("model", MODELS)
def test_required_always_gives_a_valid_call(client: openai.OpenAI, model: str) -> None:
    bad = []
    for i, (tools, prompt) in enumerate(CASES):
        resp, body = create(client, model=model, messages=[{"role": "user", "content": prompt}], tools=tools,
                            tool_choice="required", seed=i)
        choice = resp.choices[0]
        problem = None
        if choice.finish_reason != "tool_calls" or body["choices"][0]["message"]["content"] is not None:
            problem = f"finish_reason {choice.finish_reason}, content {choice.message.content!r}"
        elif len(choice.message.tool_calls or []) != 1:
            problem = f"{len(choice.message.tool_calls or [])} calls"
        else:
            problem = check_call(choice.message.tool_calls[0], tools)
        if problem:
            bad.append(f"{prompt!r}: {problem}")
    assert not bad, f"{model}: {len(CASES) - len(bad)}/{len(CASES)} valid calls\n" + "\n".join(bad)


@pytest.mark.parametrize("model", MODELS)
def test_a_named_function_is_the_one_called(client: openai.OpenAI, model: str) -> None:
    tools = [WEATHER, TIME, CONVERT]
    resp, _ = create(client, model=model, messages=[{"role": "user", "content": "What's the weather in Paris?"}],
                     tools=tools, tool_choice={"type": "function", "function": {"name": "get_time"}})
    calls = resp.choices[0].message.tool_calls
    assert resp.choices[0].finish_reason == "tool_calls" and len(calls) == 1
    assert calls[0].function.name == "get_time" and check_call(calls[0], tools) is None


@pytest.mark.parametrize("model", MODELS)
def test_none_offers_no_tools_and_answers_in_text(client: openai.OpenAI, model: str) -> None:
    msgs = [{"role": "user", "content": "Say hello to Ann."}]
    plain, _ = create(client, model=model, messages=msgs, max_completion_tokens=1)
    none, _ = create(client, model=model, messages=msgs, tools=[WEATHER, TIME], tool_choice="none")
    assert none.choices[0].message.tool_calls is None and none.choices[0].message.content
    assert none.choices[0].finish_reason in ("stop", "length")
    assert none.usage.prompt_tokens == plain.usage.prompt_tokens  # the tools were not in the prompt
    auto, _ = create(client, model=model, messages=msgs, tools=[WEATHER, TIME], max_completion_tokens=1)
    assert auto.usage.prompt_tokens > plain.usage.prompt_tokens + 40  # offered: in the prompt


@pytest.mark.parametrize("model", MODELS)
def test_a_streamed_required_call_assembles_in_the_sdk(client: openai.OpenAI, model: str) -> None:
    tools = [WEATHER, CONVERT]
    chunks = []
    with client.chat.completions.stream(model=model, messages=[{"role": "user", "content": "Convert 12 euros to yen."}],
                                        tools=tools, tool_choice="required", max_tokens=MAX_TOKENS) as stream:
        for event in stream:
            if event.type == "chunk":
                chunks.append(event.chunk.model_dump(exclude_unset=True))
        final = stream.get_final_completion()
    for c in chunks:
        validate(c, "CreateChatCompletionStreamResponse")
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    firsts = [d["tool_calls"][0] for d in deltas if d.get("tool_calls") and "id" in d["tool_calls"][0]]
    assert len(firsts) == 1 and firsts[0]["type"] == "function" and firsts[0]["function"]["name"]
    fragments = [d["tool_calls"][0]["function"]["arguments"] for d in deltas if d.get("tool_calls")]
    assert len([f for f in fragments if f]) > 1, "the arguments did not stream"
    assert [c["choices"][0].get("finish_reason") for c in chunks if c["choices"]][-1] == "tool_calls"
    assert final.choices[0].finish_reason == "tool_calls"
    call = final.choices[0].message.tool_calls[0]
    assert call.id == firsts[0]["id"] and check_call(call, tools) is None


@pytest.mark.parametrize("model", MODELS)
def test_the_tool_result_goes_back_and_the_answer_is_text(client: openai.OpenAI, model: str) -> None:
    question = [{"role": "user", "content": "What's the weather in Paris?"}]
    first, _ = create(client, model=model, messages=question, tools=[WEATHER], tool_choice="required")
    call = first.choices[0].message.tool_calls[0]
    history = [*question, first.choices[0].message.model_dump(exclude_none=True),
               {"role": "tool", "tool_call_id": call.id, "content": '{"temperature_c": 18, "sky": "sunny"}'}]
    without, _ = create(client, model=model, messages=question, tools=[WEATHER], tool_choice="none", max_completion_tokens=1)
    second, _ = create(client, model=model, messages=history, tools=[WEATHER], tool_choice="none")
    msg = second.choices[0].message
    assert msg.tool_calls is None and isinstance(msg.content, str) and msg.content.strip()
    assert second.choices[0].finish_reason in ("stop", "length")
    # the call and its result were rendered into the prompt
    assert second.usage.prompt_tokens > without.usage.prompt_tokens + 15


@pytest.mark.parametrize(("tools", "extra", "param"), [
    ([{"type": "function", "function": {"description": "nameless"}}], {}, "tools[0].function.name"),
    ([{"type": "function", "function": {"name": "f", "parameters": "a string"}}], {}, "tools[0].function.parameters"),
    ([{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {"a": {"type": "text"}}}}}],
     {}, "tools[0].function.parameters.properties.a.type"),
    ([WEATHER], {"tool_choice": {"type": "function", "function": {"name": "get_time"}}}, "tool_choice.function.name"),
    (None, {"tool_choice": "required"}, "tool_choice"),
    ([WEATHER], {"parallel_tool_calls": "no"}, "parallel_tool_calls"),
    ([{"type": "custom", "custom": {"name": "g"}}], {}, "tools[0].type"),
    ([WEATHER, WEATHER], {}, "tools[1].function.name"),
])
def test_bad_tools_are_400s_naming_the_field(served: Served, tools: Any, extra: dict[str, Any], param: str) -> None:
    body = {"model": "chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, **extra}
    if tools is not None:
        body["tools"] = tools
    r = httpx.post(f"{served.url}/v1/chat/completions", json=body, timeout=120)
    assert_error(r, 400, param=param)
    assert r.json()["error"]["param"] == param
