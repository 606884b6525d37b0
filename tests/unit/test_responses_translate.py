"""The Responses API's translation onto chat completions and back (pure), checked against OpenAI's schemas."""

from __future__ import annotations

import pathlib
import sys

import pytest

from modelyard.errors import InvalidRequestError
from modelyard.responses.stream import StreamTranslator
from modelyard.responses.translate import (
    base_response,
    chat_body,
    output_messages,
    parse_create,
    response_object,
)

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from openapi_schema import validate  # noqa: E402

SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
TOOL = {"type": "function", "name": "weather", "parameters": SCHEMA, "strict": True}


def _completion(message: dict, finish: str = "stop") -> dict:
    return {"id": "c1", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish}],
            "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}}


def test_items_become_chat_messages_with_tool_turns() -> None:
    req = parse_create({"model": "m", "instructions": "sys", "input": [
        {"role": "developer", "content": "dev note"},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "a"},
                                                        {"type": "input_text", "text": "b"}]},
        {"type": "function_call", "call_id": "call_1", "name": "weather", "arguments": '{"city":"Paris"}'},
        {"type": "function_call", "call_id": "call_2", "name": "weather", "arguments": '{"city":"Rome"}'},
        {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
    ], "tools": [TOOL]})
    body = chat_body(req, [{"role": "user", "content": "earlier"}], stream=False)
    assert body["messages"] == [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "earlier"},
        {"role": "system", "content": "dev note"},
        {"role": "user", "content": "ab"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Paris"}'}},
            {"id": "call_2", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Rome"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    assert body["tools"][0]["function"]["name"] == "weather" and body["tool_choice"] == "auto"


def test_tool_choice_none_offers_no_tools_and_streaming_asks_for_usage() -> None:
    body = chat_body(parse_create({"model": "m", "input": "x", "tools": [TOOL], "tool_choice": "none"}), [], stream=True)
    assert "tools" not in body and body["stream_options"] == {"include_usage": True}


def test_a_completion_with_text_becomes_a_valid_response() -> None:
    req = parse_create({"model": "m", "input": "hi", "metadata": {"a": "b"}})
    resp = response_object(base_response("resp_1", req, 100, status="in_progress"),
                           _completion({"content": "hello"}), 101)
    validate(resp, "Response")
    assert resp["status"] == "completed" and resp["completed_at"] == 101
    assert resp["output"][0]["content"][0]["text"] == "hello"
    assert resp["usage"] == {"input_tokens": 7, "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
                             "output_tokens": 3, "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 10}
    assert output_messages(resp["output"]) == [{"role": "assistant", "content": "hello"}]


def test_tool_calls_become_function_call_items_and_length_is_incomplete() -> None:
    req = parse_create({"model": "m", "input": "weather?", "tools": [TOOL], "tool_choice": "required"})
    comp = _completion({"content": None, "tool_calls": [
        {"id": "call_9", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Oslo"}'}}]},
        finish="tool_calls")
    resp = response_object(base_response("resp_2", req, 1, status="in_progress"), comp, 2)
    validate(resp, "Response")
    assert [o["type"] for o in resp["output"]] == ["function_call"]
    assert resp["output"][0]["call_id"] == "call_9" and resp["output"][0]["arguments"] == '{"city":"Oslo"}'
    assert output_messages(resp["output"])[0]["tool_calls"][0]["id"] == "call_9"
    cut = response_object(base_response("resp_3", req, 1, status="in_progress"), _completion({"content": "abc"}, "length"), 2)
    validate(cut, "Response")
    assert cut["status"] == "incomplete" and cut["incomplete_details"] == {"reason": "max_output_tokens"}


def _chunk(delta: dict | None = None, finish: str | None = None, usage: dict | None = None) -> dict:
    choices = [] if delta is None and finish is None else [{"index": 0, "delta": delta or {}, "finish_reason": finish}]
    return {"id": "c", "object": "chat.completion.chunk", "choices": choices, **({"usage": usage} if usage else {})}


_SCHEMAS = {
    "response.created": "ResponseCreatedEvent", "response.in_progress": "ResponseInProgressEvent",
    "response.output_item.added": "ResponseOutputItemAddedEvent", "response.output_item.done": "ResponseOutputItemDoneEvent",
    "response.content_part.added": "ResponseContentPartAddedEvent", "response.content_part.done": "ResponseContentPartDoneEvent",
    "response.output_text.delta": "ResponseTextDeltaEvent", "response.output_text.done": "ResponseTextDoneEvent",
    "response.function_call_arguments.delta": "ResponseFunctionCallArgumentsDeltaEvent",
    "response.function_call_arguments.done": "ResponseFunctionCallArgumentsDoneEvent",
    "response.completed": "ResponseCompletedEvent", "response.incomplete": "ResponseIncompleteEvent",
    "response.failed": "ResponseFailedEvent", "error": "ResponseErrorEvent",
}


def test_stream_of_text_then_a_tool_call() -> None:
    req = parse_create({"model": "m", "input": "x", "tools": [TOOL]})
    tr = StreamTranslator(base_response("resp_s", req, 1, status="in_progress"))
    events = tr.start()
    events += tr.feed(_chunk({"role": "assistant", "content": ""}))
    events += tr.feed(_chunk({"content": "Let me "}))
    events += tr.feed(_chunk({"content": "check."}))
    events += tr.feed(_chunk({"tool_calls": [{"index": 0, "id": "call_a", "type": "function",
                                               "function": {"name": "weather", "arguments": ""}}]}))
    events += tr.feed(_chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]}))
    events += tr.feed(_chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Oslo"}'}}]}))
    events += tr.feed(_chunk(finish="tool_calls"))
    events += tr.feed(_chunk(usage={"prompt_tokens": 4, "completion_tokens": 9}))
    events += tr.end(5)
    for e in events:
        validate(e, _SCHEMAS[e["type"]])
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    kinds = [e["type"] for e in events]
    assert kinds.index("response.output_item.done") < kinds.index("response.function_call_arguments.delta")
    final = events[-1]["response"]
    assert final["status"] == "completed" and final["usage"]["output_tokens"] == 9
    assert [o["type"] for o in final["output"]] == ["message", "function_call"]
    assert final["output"][0]["content"][0]["text"] == "Let me check."
    assert final["output"][1]["arguments"] == '{"city":"Oslo"}'


def test_stream_failure_gives_error_then_failed() -> None:
    tr = StreamTranslator(base_response("resp_f", parse_create({"model": "m", "input": "x"}), 1, status="in_progress"))
    events = tr.start() + tr.feed(_chunk({"content": "par"})) + tr.fail("server_error", "upstream went away")
    for e in events:
        validate(e, _SCHEMAS[e["type"]])
    assert [e["type"] for e in events[-2:]] == ["error", "response.failed"]
    assert events[-1]["response"]["error"] == {"code": "server_error", "message": "upstream went away"}


@pytest.mark.parametrize(("body", "param"), [
    ({"model": "m", "input": "x", "tools": [{"type": "file_search"}]}, "tools[0].type"),
    ({"model": "m", "input": "x", "tools": [TOOL, TOOL]}, "tools[1].name"),
    ({"model": "m", "input": "x", "tool_choice": "required"}, "tool_choice"),
    ({"model": "m", "input": "x", "prompt": {"id": "p"}}, "prompt"),
    ({"model": "m", "input": "x", "truncation": "auto"}, "truncation"),
    ({"model": "m", "input": "x", "reasoning": {"effort": "high"}}, "reasoning"),
    ({"model": "m", "input": "x", "include": ["file_search_call.results"]}, "include"),
    ({"model": "m", "input": "x", "background": True, "store": False}, "background"),
    ({"model": "m", "input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type"),
    ({"model": "m", "input": [{"role": "robot", "content": "x"}]}, "input[0].role"),
    ({"model": "m", "input": []}, "input"),
    ({"model": "m", "input": "x", "temperature": 3}, "temperature"),
    ({"model": "m", "input": "x", "metadata": {"k": 1}}, "metadata.k"),
    ({"model": "m", "input": "x", "text": {"format": {"type": "json_schema", "name": "n",
                                                      "schema": {"properties": 3}}}}, "text.format.schema"),
    ({"model": "", "input": "x"}, "model"),
])
def test_bad_bodies_name_the_field(body: dict, param: str) -> None:
    with pytest.raises(InvalidRequestError) as exc:
        parse_create(body)
    assert exc.value.param == param, exc.value.message
