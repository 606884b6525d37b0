"""Validation of OpenAI request bodies: only the fields the gateway relies on, with errors that
name the field (``messages[1].role``). Every other field passes through to the upstream untouched,
so new OpenAI parameters work without a modelyard release.

Hand-written checks rather than pydantic models: a request is validated on the hot path, and these
checks cost a few microseconds where building a full pydantic model of a chat request costs tens.
"""

from __future__ import annotations

from typing import Any

from modelyard.errors import InvalidRequestError
from modelyard.runtime.tool_calls import check_tools

_NUMBER = (int, float)


def _bad(param: str, message: str) -> InvalidRequestError:
    return InvalidRequestError(f"{param}: {message}", param=param, code="invalid_value")


def _type_name(v: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null", int: "integer", float: "number"}
    return names.get(type(v), type(v).__name__)


def _what(v: Any) -> str:
    return "an empty string" if v == "" else _type_name(v)


def _check_model(data: dict[str, Any]) -> str:
    model = data.get("model")
    if model is None:
        raise InvalidRequestError("model: required field is missing", param="model", code="missing_required_parameter")
    if not isinstance(model, str) or not model:
        raise _bad("model", f"expected a non-empty string, got {_what(model)}")
    return model


def _optional(data: dict[str, Any], key: str, types: tuple[type, ...], what: str) -> Any:
    v = data.get(key)
    if v is None:
        return None
    if not isinstance(v, types) or (bool not in types and isinstance(v, bool)):
        raise _bad(key, f"expected {what}, got {_type_name(v)}")
    return v


# OpenAI's ranges for the sampling parameters (the same as its OpenAPI document's).
_RANGES = {"temperature": (0, 2), "top_p": (0, 1), "presence_penalty": (-2, 2), "frequency_penalty": (-2, 2)}


def _check_common(data: dict[str, Any], *, chat: bool) -> bool:
    stream = _optional(data, "stream", (bool,), "a boolean")
    opts = _optional(data, "stream_options", (dict,), "an object")
    if opts is not None and "include_usage" in opts and not isinstance(opts["include_usage"], bool):
        raise _bad("stream_options.include_usage", "expected a boolean")
    for key in ("max_tokens", "max_completion_tokens"):
        v = _optional(data, key, (int,), "an integer")
        if v is not None and v < 0:
            raise _bad(key, "must not be negative")
    _int_in(data, "n", 1, 128)
    for key, (lo, hi) in _RANGES.items():
        v = _optional(data, key, _NUMBER, "a number")
        if v is not None and not lo <= v <= hi:
            raise _bad(key, f"must be between {lo} and {hi}, got {v}")
    _optional(data, "seed", (int,), "an integer")
    stop = data.get("stop")
    if stop is not None and not isinstance(stop, str):
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise _bad("stop", "expected a string or an array of strings")
    bias = _optional(data, "logit_bias", (dict,), "an object")
    if bias is not None:
        for token, value in bias.items():
            if not isinstance(value, _NUMBER) or isinstance(value, bool):
                raise _bad("logit_bias", f"{token!r}: expected a number, got {_type_name(value)}")
    if chat:
        logprobs = _optional(data, "logprobs", (bool,), "a boolean")
        if _int_in(data, "top_logprobs", 0, 20) is not None and logprobs is not True:
            raise _bad("top_logprobs", "needs logprobs: true")
    else:
        _int_in(data, "logprobs", 0, 5)
        _int_in(data, "best_of", 0, 20)
        _optional(data, "echo", (bool,), "a boolean")
        _optional(data, "suffix", (str,), "a string")
    return bool(stream)


def _int_in(data: dict[str, Any], key: str, lo: int, hi: int) -> int | None:
    v = _optional(data, key, (int,), "an integer")
    if v is not None and not lo <= v <= hi:
        raise _bad(key, f"must be an integer from {lo} to {hi}, got {v}")
    return v


def validate_chat(data: dict[str, Any]) -> tuple[str, bool]:
    """Check a /v1/chat/completions body; return (model, stream)."""
    model = _check_model(data)
    messages = data.get("messages")
    if messages is None:
        raise InvalidRequestError("messages: required field is missing", param="messages", code="missing_required_parameter")
    if not isinstance(messages, list) or not messages:
        raise _bad("messages", "expected a non-empty array of message objects")
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise _bad(f"messages[{i}]", f"expected an object, got {_type_name(msg)}")
        role = msg.get("role")
        if not isinstance(role, str) or not role:
            raise _bad(f"messages[{i}].role", "expected a non-empty string")
    check_tools(data, local=False)  # tools, tool_choice, parallel_tool_calls: what OpenAI rejects too
    return model, _check_common(data, chat=True)


def validate_completion(data: dict[str, Any]) -> tuple[str, bool]:
    """Check a /v1/completions body; return (model, stream)."""
    model = _check_model(data)
    if "prompt" not in data:
        raise InvalidRequestError("prompt: required field is missing", param="prompt", code="missing_required_parameter")
    prompt = data["prompt"]
    if not _is_text_or_tokens(prompt):
        raise _bad("prompt", f"expected a string, an array of strings, or token arrays, got {_type_name(prompt)}")
    return model, _check_common(data, chat=False)


def validate_embedding(data: dict[str, Any]) -> str:
    """Check a /v1/embeddings body; return the model."""
    model = _check_model(data)
    inp = data.get("input")
    if inp is None:
        raise InvalidRequestError("input: required field is missing", param="input", code="missing_required_parameter")
    if not _is_text_or_tokens(inp) or inp == [] or inp == "":
        raise _bad("input", "expected a non-empty string, array of strings, or token arrays")
    fmt = _optional(data, "encoding_format", (str,), "a string")
    if fmt is not None and fmt not in ("float", "base64"):
        raise _bad("encoding_format", "expected 'float' or 'base64'")
    dims = _optional(data, "dimensions", (int,), "an integer")
    if dims is not None and dims < 1:
        raise _bad("dimensions", "must be positive")
    if data.get("stream"):
        raise _bad("stream", "embeddings cannot be streamed")
    return model


def _is_text_or_tokens(v: Any) -> bool:
    if isinstance(v, str):
        return True
    if not isinstance(v, list):
        return False
    if all(isinstance(x, str) for x in v):
        return True
    if all(isinstance(x, int) and not isinstance(x, bool) for x in v):
        return True
    return all(isinstance(x, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in x) for x in v)


def validate_moderation(data: dict[str, Any], default_model: str | None) -> str:
    """Check a /v1/moderations body (text inputs); return the model (``default_model`` if none)."""
    model = data.get("model")
    if model is None:
        if default_model is None:
            raise InvalidRequestError("model: required field is missing (no default moderation model is configured)",
                                      param="model", code="missing_required_parameter")
        data["model"] = model = default_model
    elif not isinstance(model, str) or not model:
        raise _bad("model", f"expected a non-empty string, got {_what(model)}")
    _check_texts(data)
    return model


def validate_classification(data: dict[str, Any]) -> str:
    """Check a /v1/classifications body (modelyard's own endpoint); return the model."""
    model = _check_model(data)
    _check_texts(data)
    top_k = _optional(data, "top_k", (int,), "an integer")
    if top_k is not None and top_k < 1:
        raise _bad("top_k", "must be at least 1")
    return model


def _check_texts(data: dict[str, Any]) -> None:
    inp = data.get("input")
    if inp is None:
        raise InvalidRequestError("input: required field is missing", param="input", code="missing_required_parameter")
    if isinstance(inp, str):
        return
    if not isinstance(inp, list) or not inp or not all(isinstance(x, str) for x in inp):
        raise _bad("input", "expected a string or a non-empty array of strings")
