"""The pure parts of tool calls on local models: checking, the constraint, the fallback prompt,
the parser (runtime/tool_parse.py) and the OpenAI shapes."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelyard.api.protocol import validate_chat
from modelyard.errors import InvalidRequestError
from modelyard.runtime import tool_calls as tc
from modelyard.runtime.tool_parse import Event, ToolCallParser, delta, message

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}}, "required": ["city"]}}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {
    "type": "object", "properties": {"tz": {"type": "string"}}, "required": ["tz"]}}}
NAMES = frozenset({"get_weather", "get_time"})


def spec(**body: Any) -> tc.ToolSpec:
    s = tc.check_tools({"tools": [WEATHER, TIME], **body}, local=True)
    assert s is not None
    return s


def tool(name: str = "f", **fn: Any) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, **fn}}


# --- checking ------------------------------------------------------------------------------------


def test_spec_of_each_choice() -> None:
    assert spec().mode == "auto" and spec().offered and not spec().constrained
    assert spec(tool_choice="none").offered is False
    assert spec(tool_choice="required").constrained and spec(tool_choice="required").forced is None
    named = spec(tool_choice={"type": "function", "function": {"name": "get_time"}})
    assert named.constrained and named.forced == "get_time"
    assert spec(parallel_tool_calls=False).parallel is False and spec().parallel is True
    assert spec().names == NAMES
    assert tc.check_tools({"messages": []}, local=True) is None
    fn = tc.check_tools({"tools": [tool("noargs")]}, local=True).functions[0]  # type: ignore[union-attr]
    assert fn.parameters == {"type": "object", "properties": {}}


@pytest.mark.parametrize(("body", "param"), [
    ({"tools": {"a": 1}}, "tools"),
    ({"tools": ["x"]}, "tools[0]"),
    ({"tools": [{"type": "function", "function": {"description": "no name"}}]}, "tools[0].function.name"),
    ({"tools": [tool("has space")]}, "tools[0].function.name"),
    ({"tools": [tool("x" * 65)]}, "tools[0].function.name"),
    ({"tools": [WEATHER, tool(parameters=[1, 2])]}, "tools[1].function.parameters"),
    ({"tools": [tool(parameters={"type": "string"})]}, "tools[0].function.parameters.type"),
    ({"tools": [tool(description=3)]}, "tools[0].function.description"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice.function.name"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function"}}, "tool_choice.function.name"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": [], "tool_choice": "required"}, "tool_choice"),
    ({"tools": [WEATHER], "tool_choice": "sometimes"}, "tool_choice"),
    ({"tools": [WEATHER], "tool_choice": 3}, "tool_choice"),
    ({"tools": [WEATHER], "parallel_tool_calls": "yes"}, "parallel_tool_calls"),
])
def test_what_openai_rejects_is_a_400_naming_the_field_for_every_model(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequestError) as e:
        validate_chat({"model": "m", "messages": [{"role": "user", "content": "x"}], **body})
    assert e.value.status == 400 and e.value.param == param and param in e.value.message


@pytest.mark.parametrize(("body", "param"), [
    ({"tools": [{"type": "custom", "custom": {"name": "g"}}]}, "tools[0].type"),
    ({"tools": [{"type": "function"}]}, "tools[0].function"),
    ({"tools": [WEATHER, WEATHER]}, "tools[1].function.name"),
    ({"tools": [WEATHER], "tool_choice": {"type": "allowed_tools", "allowed_tools": {}}}, "tool_choice.type"),
    ({"tools": [tool(parameters={"type": "object", "properties": {"a": {"type": "strin"}}})]},
     "tools[0].function.parameters.properties.a.type"),
    ({"tools": [tool(parameters={"type": "object", "properties": {"a": 3}})]}, "tools[0].function.parameters.properties.a"),
    ({"tools": [tool(parameters={"type": "object", "required": "a"})]}, "tools[0].function.parameters.required"),
    ({"tools": [tool(parameters={"type": "object", "properties": {"a": {"anyOf": []}}})]},
     "tools[0].function.parameters.properties.a.anyOf"),
])
def test_local_models_also_reject_what_they_cannot_constrain(body: dict[str, Any], param: str) -> None:
    ok = {"model": "m", "messages": [{"role": "user", "content": "x"}], **body}
    validate_chat(ok)  # the gateway lets these through to an upstream that may know them
    with pytest.raises(InvalidRequestError) as e:
        tc.check_tools(body, local=True)
    assert e.value.param == param


# --- the constraint --------------------------------------------------------------------------------


def _validates(schema: dict[str, Any], value: Any) -> bool:
    return jsonschema.Draft202012Validator(schema).is_valid(value)


def test_call_shape_is_name_and_the_declared_arguments_and_nothing_else() -> None:
    shape = tc.call_shape(spec().functions[0])
    assert _validates(shape, {"name": "get_weather", "arguments": {"city": "Oslo", "unit": "c"}})
    assert not _validates(shape, {"name": "get_time", "arguments": {"city": "Oslo"}})
    assert not _validates(shape, {"name": "get_weather", "arguments": {}})  # city is required
    assert not _validates(shape, {"name": "get_weather", "arguments": {"city": "Oslo", "extra": 1}})  # closed
    assert not _validates(shape, {"name": "get_weather", "arguments": {"city": "Oslo"}, "why": "x"})
    assert WEATHER["function"]["parameters"].get("additionalProperties") is None  # the request is not changed


def test_free_strings_and_numbers_are_bounded_declared_ones_kept() -> None:
    params = {"type": "object", "properties": {
        "free": {"type": "string"}, "short": {"type": "string", "maxLength": 5}, "day": {"type": "string", "enum": ["a"]},
        "x": {"type": "number"}, "half": {"type": "number", "multipleOf": 0.5}, "n": {"type": "integer"},
        "long": {"type": "string", "minLength": 100}}}
    args = tc.call_shape(tc.Function("f", "", params))["properties"]["arguments"]["properties"]
    assert args["free"]["maxLength"] == tc.FREE_STRING_MAX and args["short"]["maxLength"] == 5
    assert "maxLength" not in args["day"] and "multipleOf" not in args["n"] and args["long"]["maxLength"] == 100
    assert args["x"]["multipleOf"] == tc.FREE_NUMBER_STEP and args["half"]["multipleOf"] == 0.5
    shape = tc.call_shape(tc.Function("f", "", params))
    assert _validates(shape, {"name": "f", "arguments": {"free": "a" * tc.FREE_STRING_MAX, "x": 20.5}})
    assert not _validates(shape, {"name": "f", "arguments": {"free": "a" * (tc.FREE_STRING_MAX + 1)}})


def test_any_of_the_shapes_ties_the_arguments_to_the_chosen_tool() -> None:
    schema = tc.call_schema(spec().functions)
    assert _validates(schema, {"name": "get_time", "arguments": {"tz": "UTC"}})
    assert _validates(schema, {"name": "get_weather", "arguments": {"city": "Rome"}})
    assert not _validates(schema, {"name": "get_time", "arguments": {"city": "Rome"}})
    assert not _validates(schema, {"name": "other", "arguments": {}})


def test_defs_and_root_refs_still_resolve_inside_the_shape() -> None:
    params = {"type": "object", "$defs": {"pt": {"type": "object", "properties": {"x": {"type": "number"}},
                                                 "required": ["x"]}},
              "properties": {"a": {"$ref": "#/$defs/pt"}, "kids": {"type": "array", "items": {"$ref": "#"}}}}
    shape = tc.call_shape(tc.Function("geo", "", params))
    assert "$defs" in shape and "$defs" not in shape["properties"]["arguments"]
    good = {"name": "geo", "arguments": {"a": {"x": 1}, "kids": [{"a": {"x": 2}}]}}
    assert _validates(shape, good)
    assert not _validates(shape, {"name": "geo", "arguments": {"a": {"x": "one"}}})
    assert not _validates(shape, {"name": "geo", "arguments": {"kids": [{"a": {"x": "two"}}]}})


def test_grammar_is_opener_one_rule_per_tool_closer() -> None:
    fns = spec().functions
    g = tc.call_grammar(fns, tc.NATIVE)
    lines = g.splitlines()
    assert lines[0] == "%llguidance {}"
    assert lines[1] == 'start: "<tool_call>\\n" call "\\n</tool_call>"'
    assert lines[2] == "call: c0 | c1"
    for i, fn in enumerate(fns):
        prefix = f"c{i}: %json "
        assert lines[3 + i].startswith(prefix)
        shape = json.loads(lines[3 + i][len(prefix):])
        assert shape.pop("x-guidance")["whitespace_flexible"] is False
        assert shape == tc.call_shape(fn)
    assert tc.call_grammar(fns[:1], tc.FALLBACK).splitlines()[1] == 'start: "<tool_call>[" call "]</tool_call>"'


# --- the fallback prompt ---------------------------------------------------------------------------


def test_fallback_lists_the_tools_in_the_system_message() -> None:
    out = tc.fallback_messages([{"role": "user", "content": "hi"}], spec())
    assert out[0]["role"] == "system" and "<tools>" in out[0]["content"] and "<tool_call>[" in out[0]["content"]
    listed = json.loads(out[0]["content"].split("<tools>")[-1].split("</tools>")[0])
    assert [t["name"] for t in listed] == ["get_weather", "get_time"]
    merged = tc.fallback_messages([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}], spec())
    assert len(merged) == 2 and merged[0]["content"].startswith("Be brief.\n\n") and "get_time" in merged[0]["content"]
    assert tc.fallback_messages([{"role": "user", "content": "hi"}], spec(tool_choice="none")) == [
        {"role": "user", "content": "hi"}]


def test_fallback_history_is_text_the_template_can_render() -> None:
    history = [
        {"role": "user", "content": [{"type": "text", "text": "Weather in Oslo?"}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 3}'},
    ]
    assert tc.needs_rewrite(history) and not tc.needs_rewrite(history[:1])
    out = tc.fallback_messages(history, None)
    assert all(isinstance(m["content"], str) for m in out)
    assert out[0] == {"role": "user", "content": "Weather in Oslo?"}
    assert out[1] == {"role": "assistant", "content": 'I will call get_weather({"city": "Oslo"}).'}
    assert out[2]["role"] == "user"
    assert out[2]["content"] == 'get_weather returned: {"temp": 3}\nUse this result to answer: Weather in Oslo?'


def test_apply_to_body_per_template_and_choice() -> None:
    msgs = [{"role": "user", "content": "hi"}]
    native = {"messages": msgs, "response_format": {"type": "json_object"}}
    tc.apply_to_body(native, spec(tool_choice="required"), native=True)
    assert native["messages"] is msgs and "response_format" not in native
    assert [t["function"]["name"] for t in native["chat_template_kwargs"]["tools"]] == ["get_weather", "get_time"]
    assert native["grammar"].count("%json") == 2 and native["temperature"] == tc.FORCED_TEMPERATURE
    named = {"messages": msgs}
    tc.apply_to_body(named, spec(tool_choice={"type": "function", "function": {"name": "get_time"}}), native=False)
    assert named["grammar"].count("%json") == 1 and '"const": "get_time"' in named["grammar"]
    assert named["messages"][0]["role"] == "system" and "chat_template_kwargs" not in named
    auto = {"messages": msgs}
    tc.apply_to_body(auto, spec(), native=True)
    assert "grammar" not in auto and "chat_template_kwargs" in auto and "temperature" not in auto
    hot = {"messages": msgs, "temperature": 1.2}
    tc.apply_to_body(hot, spec(tool_choice="required"), native=True)
    assert hot["temperature"] == 1.2
    none = {"messages": msgs}
    tc.apply_to_body(none, spec(tool_choice="none"), native=False)
    assert none == {"messages": msgs}


# --- the parser --------------------------------------------------------------------------------------


def parse(text: str, *, pieces: int | None = None, **kw: Any) -> dict[str, Any]:
    ids = iter(f"call_{i}" for i in range(100))
    p = ToolCallParser(NAMES, new_id=lambda: next(ids), **kw)
    if pieces is None:
        events = p.feed(text) + p.finish()
    else:
        events = [e for i in range(0, len(text), pieces) for e in p.feed(text[i:i + pieces])] + p.finish()
    return message(events)


def calls(msg: dict[str, Any]) -> list[tuple[str, Any]]:
    return [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in msg.get("tool_calls", [])]


CASES = [
    ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
     None, [("get_weather", {"city": "Paris"})]),
    ('<tool_call>[{"name": "get_time", "arguments": {"tz": "UTC"}}, {"name": "get_weather", "arguments": {"city": "a}\\"b"}}]</tool_call>',
     None, [("get_time", {"tz": "UTC"}), ("get_weather", {"city": 'a}"b'})]),
    ('\n<tool_call>\n{"name": "get_time", "arguments": {"tz": "UTC"}}\n</tool_call>\n<tool_call>\n{"name": "get_weather", "arguments": {}}\n</tool_call>',
     None, [("get_time", {"tz": "UTC"}), ("get_weather", {})]),
    ('```json\n{\n  "name": "get_weather",\n  "arguments": {\n    "city": "Paris"\n  }\n}\n```', None, [("get_weather", {"city": "Paris"})]),
    ('Let me look. <tool_call>\n{"arguments": {"city": "X"}, "name": "get_weather"}\n</tool_call>', "Let me look.",
     [("get_weather", {"city": "X"})]),
    ("Use <b>bold</b> and a < b, or <tool_ even.", "Use <b>bold</b> and a < b, or <tool_ even.", []),
    ("```python\nprint({'a': 1})\n```", "```python\nprint({'a': 1})\n```", []),
    ('{"name": "not_declared", "arguments": {}}', '{"name": "not_declared", "arguments": {}}', []),
    ('<tool_call>\n{"name": "nope", "arguments": {}}\n</tool_call> done',
     '<tool_call>\n{"name": "nope", "arguments": {}}\n</tool_call> done', []),
]


@pytest.mark.parametrize(("text", "content", "expected"), CASES)
def test_parser_whole_and_piecewise_agree(text: str, content: str | None, expected: list[tuple[str, Any]]) -> None:
    for pieces in (None, 1, 2, 7):
        msg = parse(text, pieces=pieces)
        assert calls(msg) == expected, (pieces, msg)
        assert msg["content"] == content, (pieces, msg)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from([c[0] for c in CASES]), st.lists(st.integers(1, 12), min_size=1, max_size=40))
def test_any_split_of_the_text_gives_the_same_message(text: str, sizes: list[int]) -> None:
    p, whole = ToolCallParser(NAMES, new_id=lambda: "call_x"), ToolCallParser(NAMES, new_id=lambda: "call_x")
    events, i, k = [], 0, 0
    while i < len(text):
        n = sizes[k % len(sizes)]
        events += p.feed(text[i:i + n])
        i, k = i + n, k + 1
    events += p.finish()
    assert message(events) == message(whole.feed(text) + whole.finish())


def test_parallel_false_keeps_the_first_call_only() -> None:
    text = CASES[1][0]
    assert calls(parse(text, parallel=False)) == [("get_time", {"tz": "UTC"})]
    assert parse(text, parallel=False)["content"] is None


def test_a_call_cut_short_keeps_what_was_generated() -> None:
    msg = parse('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Par', pieces=3)
    assert msg["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": '{"city": "Par'}


def test_not_bare_does_not_hold_json_back() -> None:
    p = ToolCallParser(NAMES, bare=False)
    assert p.feed('{"a"') == [Event("content", '{"a"')]
    p2 = ToolCallParser(NAMES)
    assert p2.feed('{"a"') == [] and p2.finish() == [Event("content", '{"a"')]


def test_arguments_stream_as_they_are_generated() -> None:
    p = ToolCallParser(NAMES, new_id=lambda: "call_abc")
    assert p.feed('<tool_call>\n{"name": "get_weather", "argu') == []
    start = p.feed('ments": {"ci')
    assert start == [Event("call", "get_weather", 0, "call_abc"), Event("args", '{"ci', 0)]
    assert p.feed('ty": "Rome"}}\n</tool_call>') == [Event("args", 'ty": "Rome"}', 0)]
    assert p.finish() == []


# --- OpenAI shapes -------------------------------------------------------------------------------------


def test_deltas_and_message_are_openai_shaped() -> None:
    assert delta(Event("call", "f", 1, "call_9")) == {"tool_calls": [
        {"index": 1, "id": "call_9", "type": "function", "function": {"name": "f", "arguments": ""}}]}
    assert delta(Event("args", '{"a"', 1)) == {"tool_calls": [{"index": 1, "function": {"arguments": '{"a"'}}]}
    assert delta(Event("content", "hi")) == {"content": "hi"}
    assert message([Event("content", "hi")]) == {"role": "assistant", "content": "hi", "refusal": None}
    assert tc.finish_reason("stop", True) == "tool_calls"
    assert tc.finish_reason("length", True) == "length" and tc.finish_reason("stop", False) == "stop"


def test_delta_stream_recuts_engine_deltas() -> None:
    ds = tc.DeltaStream(spec(tool_choice="required"), new_id=lambda: "call_1")
    out = ds.step({"role": "assistant", "content": None}, last=False)
    assert out == [{"role": "assistant"}]
    out = ds.step({"content": '<tool_call>\n{"name": "get_time", "arguments": {"tz": '}, last=False)
    assert out == [{"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                    "function": {"name": "get_time", "arguments": ""}}]},
                   {"tool_calls": [{"index": 0, "function": {"arguments": '{"tz": '}}]}]
    out = ds.step({"content": '"UTC"}}\n</tool_call>'}, last=True)
    assert out == [{"tool_calls": [{"index": 0, "function": {"arguments": '"UTC"}'}}]}]
    assert ds.has_calls and message(ds.events)["tool_calls"][0]["function"]["arguments"] == '{"tz": "UTC"}'


def test_template_detection() -> None:
    assert tc.template_has_tools("{% if tools %}...<tool_call>...{% endif %}")
    assert not tc.template_has_tools("{% for message in messages %}{{ message['content'] }}{% endfor %}")
    assert not tc.template_has_tools(None)
