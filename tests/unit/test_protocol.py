"""Unit tests of request-body validation (modelyard.api.protocol)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from modelyard.api.protocol import validate_chat, validate_completion, validate_embedding
from modelyard.errors import InvalidRequestError

CHAT: dict[str, Any] = {"model": "gpt-x", "messages": [{"role": "system", "content": "hi"}, {"role": "user", "content": "yo"}]}
COMPLETION: dict[str, Any] = {"model": "gpt-x", "prompt": "once upon"}
EMBEDDING: dict[str, Any] = {"model": "emb", "input": "hello"}


def with_(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    d = copy.deepcopy(base)
    for k, v in changes.items():
        if v is _DEL:
            d.pop(k, None)
        else:
            d[k] = v
    return d


_DEL = object()


def rejects(fn, body: dict[str, Any], param: str, *, code: str = "invalid_value") -> InvalidRequestError:  # noqa: ANN001
    with pytest.raises(InvalidRequestError) as ei:
        fn(body)
    e = ei.value
    assert e.param == param, (e.param, e.message)
    assert e.message.startswith(param + ":"), e.message
    assert e.status == 400
    assert e.type == "invalid_request_error"
    assert e.code == code
    assert e.body()["error"]["param"] == param
    return e


# --- chat ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"stream": True},
        {"stream": False},
        {"stream": None},
        {"stream": True, "stream_options": {"include_usage": True}},
        {"stream_options": {}},
        {"max_tokens": 16, "max_completion_tokens": 10, "n": 1},
        {"temperature": 0, "top_p": 0.5, "presence_penalty": -1.5, "frequency_penalty": 2},
        {"stop": "\n"},
        {"stop": ["a", "b"]},
        {"stop": []},
        {"tools": [{"type": "function"}], "response_format": {"type": "json_object"}, "seed": 3, "user": "u"},
        {"some_future_param": {"anything": [1, 2, 3]}, "logit_bias": {"50256": -100}},
    ],
)
def test_chat_accepts_valid_bodies(extra: dict[str, Any]) -> None:
    body = {**CHAT, **extra}
    before = copy.deepcopy(body)
    model, stream = validate_chat(body)
    assert model == "gpt-x"
    assert stream is bool(extra.get("stream"))
    assert body == before  # validation never changes the body


def test_chat_accepts_messages_with_any_role_and_content_shape() -> None:
    msgs = [
        {"role": "developer", "content": [{"type": "text", "text": "x"}]},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "1"}]},
        {"role": "tool", "content": "r", "tool_call_id": "1"},
    ]
    assert validate_chat({"model": "m", "messages": msgs}) == ("m", False)


def test_chat_model_missing() -> None:
    rejects(validate_chat, with_(CHAT, model=_DEL), "model", code="missing_required_parameter")


@pytest.mark.parametrize("bad", ["", 5, ["gpt"], True, {"name": "x"}])
def test_chat_model_bad(bad: Any) -> None:
    e = rejects(validate_chat, with_(CHAT, model=bad), "model")
    assert "non-empty string" in e.message


def test_chat_model_bad_names_the_type() -> None:
    assert "got integer" in rejects(validate_chat, with_(CHAT, model=5), "model").message
    assert "got boolean" in rejects(validate_chat, with_(CHAT, model=False), "model").message


def test_chat_messages_missing() -> None:
    rejects(validate_chat, with_(CHAT, messages=_DEL), "messages", code="missing_required_parameter")


@pytest.mark.parametrize("bad", [[], "hello", {"role": "user"}, 3])
def test_chat_messages_not_a_nonempty_array(bad: Any) -> None:
    rejects(validate_chat, with_(CHAT, messages=bad), "messages")


def test_chat_message_not_an_object() -> None:
    e = rejects(validate_chat, with_(CHAT, messages=[{"role": "user"}, "hi"]), "messages[1]")
    assert "got string" in e.message


@pytest.mark.parametrize("msg", [{"content": "x"}, {"role": ""}, {"role": 1}, {"role": None}])
def test_chat_message_role_bad(msg: dict[str, Any]) -> None:
    body = with_(CHAT, messages=[{"role": "user", "content": "a"}, msg])
    rejects(validate_chat, body, "messages[1].role")


def test_chat_first_bad_message_is_named() -> None:
    body = with_(CHAT, messages=[{"role": "user"}, {"role": "user"}, {"role": 2}, {}])
    rejects(validate_chat, body, "messages[2].role")


@pytest.mark.parametrize(
    ("field", "value", "param"),
    [
        ("stream", "true", "stream"),
        ("stream", 1, "stream"),
        ("stream", 0, "stream"),
        ("stream_options", "yes", "stream_options"),
        ("stream_options", {"include_usage": "yes"}, "stream_options.include_usage"),
        ("stream_options", {"include_usage": 1}, "stream_options.include_usage"),
        ("max_tokens", -1, "max_tokens"),
        ("max_tokens", 1.5, "max_tokens"),
        ("max_tokens", "10", "max_tokens"),
        ("max_tokens", True, "max_tokens"),
        ("max_completion_tokens", -5, "max_completion_tokens"),
        ("n", 0, "n"),
        ("n", -1, "n"),
        ("n", 2.0, "n"),
        ("temperature", "hot", "temperature"),
        ("temperature", True, "temperature"),
        ("top_p", [1], "top_p"),
        ("presence_penalty", "0", "presence_penalty"),
        ("frequency_penalty", False, "frequency_penalty"),
        ("stop", 1, "stop"),
        ("stop", [1, 2], "stop"),
        ("stop", ["ok", 2], "stop"),
        ("stop", {"a": 1}, "stop"),
    ],
)
def test_chat_rejects_bad_fields(field: str, value: Any, param: str) -> None:
    rejects(validate_chat, with_(CHAT, **{field: value}), param)


def test_chat_type_message_names_expected_and_actual() -> None:
    e = rejects(validate_chat, with_(CHAT, stream="yes"), "stream")
    assert "boolean" in e.message and "string" in e.message
    e = rejects(validate_chat, with_(CHAT, n=0), "n")
    assert "from 1 to 128" in e.message


# --- completions ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "prompt", ["hi", "", ["a", "b"], [1, 2, 3], [[1, 2], [3]], []],
)
def test_completion_accepts_prompts(prompt: Any) -> None:
    assert validate_completion(with_(COMPLETION, prompt=prompt)) == ("gpt-x", False)


def test_completion_stream_flag_and_extras() -> None:
    assert validate_completion(with_(COMPLETION, stream=True, echo=True, suffix="x", best_of=2)) == ("gpt-x", True)


def test_completion_prompt_missing() -> None:
    rejects(validate_completion, with_(COMPLETION, prompt=_DEL), "prompt", code="missing_required_parameter")


@pytest.mark.parametrize("bad", [5, {"text": "x"}, ["a", 1], [[1, "a"]], [True, False], [[True]], [1, [2]]])
def test_completion_prompt_bad(bad: Any) -> None:
    rejects(validate_completion, with_(COMPLETION, prompt=bad), "prompt")


def test_completion_common_checks_apply() -> None:
    rejects(validate_completion, with_(COMPLETION, n=0), "n")
    rejects(validate_completion, with_(COMPLETION, stop=[3]), "stop")
    rejects(validate_completion, with_(COMPLETION, stream="no"), "stream")
    rejects(validate_completion, with_(COMPLETION, model=_DEL), "model", code="missing_required_parameter")


# --- embeddings ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"input": ["a", "b"]},
        {"input": [1, 2]},
        {"input": [[1], [2, 3]]},
        {"encoding_format": "float"},
        {"encoding_format": "base64"},
        {"dimensions": 256},
        {"stream": False},
        {"user": "u", "future": True},
    ],
)
def test_embedding_accepts_valid_bodies(extra: dict[str, Any]) -> None:
    assert validate_embedding({**EMBEDDING, **extra}) == "emb"


def test_embedding_input_missing() -> None:
    rejects(validate_embedding, with_(EMBEDDING, input=_DEL), "input", code="missing_required_parameter")


@pytest.mark.parametrize("bad", ["", [], 3, {"a": 1}, ["a", 2], [True]])
def test_embedding_input_bad(bad: Any) -> None:
    rejects(validate_embedding, with_(EMBEDDING, input=bad), "input")


@pytest.mark.parametrize(
    ("field", "value", "param"),
    [
        ("encoding_format", "int8", "encoding_format"),
        ("encoding_format", "FLOAT", "encoding_format"),
        ("encoding_format", 1, "encoding_format"),
        ("dimensions", 0, "dimensions"),
        ("dimensions", -3, "dimensions"),
        ("dimensions", "256", "dimensions"),
        ("dimensions", True, "dimensions"),
        ("stream", True, "stream"),
        ("model", "", "model"),
    ],
)
def test_embedding_rejects_bad_fields(field: str, value: Any, param: str) -> None:
    rejects(validate_embedding, with_(EMBEDDING, **{field: value}), param)


def test_embedding_encoding_format_message_lists_the_choices() -> None:
    e = rejects(validate_embedding, with_(EMBEDDING, encoding_format="int8"), "encoding_format")
    assert "float" in e.message and "base64" in e.message


# --- OpenAI's ranges and the fields local engines read (found by fuzzing, docs/design/fuzzing.md) ---


@pytest.mark.parametrize(
    "field, value",
    [
        ("temperature", 2.5), ("temperature", -0.1), ("top_p", 1.5), ("presence_penalty", -3), ("frequency_penalty", 2.01),
        ("n", 129), ("seed", 1.5), ("seed", "7"), ("logit_bias", []), ("logit_bias", {"50256": "x"}),
        ("logprobs", 1), ("top_logprobs", 21), ("top_logprobs", -1), ("top_logprobs", "x"),
    ],
)
def test_chat_rejects_out_of_range_or_mistyped(field: str, value: Any) -> None:
    rejects(validate_chat, with_(CHAT, **{field: value}), field)


def test_chat_top_logprobs_needs_logprobs() -> None:
    e = rejects(validate_chat, with_(CHAT, top_logprobs=3), "top_logprobs")
    assert "logprobs: true" in e.message
    assert validate_chat(with_(CHAT, logprobs=True, top_logprobs=3)) == ("gpt-x", False)
    assert validate_chat(with_(CHAT, logprobs=False, top_logprobs=None)) == ("gpt-x", False)


@pytest.mark.parametrize(
    "extra", [{"temperature": 2, "top_p": 0, "presence_penalty": -2, "frequency_penalty": 2, "n": 128, "seed": -5},
              {"logit_bias": {"50256": -100, "11": 0.5}}, {"temperature": None, "top_p": None, "seed": None}],
)
def test_chat_accepts_the_ends_of_each_range(extra: dict[str, Any]) -> None:
    assert validate_chat(with_(CHAT, **extra)) == ("gpt-x", False)


@pytest.mark.parametrize(
    "field, value", [("logprobs", 6), ("logprobs", "x"), ("logprobs", True), ("best_of", 21), ("echo", "yes"), ("suffix", 3),
                     ("temperature", 3)],
)
def test_completion_rejects_out_of_range_or_mistyped(field: str, value: Any) -> None:
    rejects(validate_completion, with_(COMPLETION, **{field: value}), field)


def test_completion_null_prompt_is_refused_not_missing() -> None:
    e = rejects(validate_completion, with_(COMPLETION, prompt=None), "prompt")
    assert e.message.endswith("got null")
    assert validate_completion(with_(COMPLETION, logprobs=5, best_of=1, echo=False)) == ("gpt-x", False)


def test_empty_model_says_empty() -> None:
    e = rejects(validate_chat, with_(CHAT, model=""), "model")
    assert "an empty string" in e.message
