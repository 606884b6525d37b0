"""OpenAI's Responses API onto chat completions, and back. PURE: no I/O, no clock (times are passed in).

``parse_create`` checks a ``POST /v1/responses`` body and normalises it into a ``CreateRequest``:
``input`` (a string or items) as chat messages, function ``tools`` and ``tool_choice`` in the chat
shape, ``text.format`` as ``response_format``. Every field the translation cannot honour is a 400
that names it (built-in tools such as ``web_search``, ``conversation``, ``prompt``, image and file
inputs, ``truncation: auto``, ...): a client must never believe a feature ran that did not.

``chat_body`` builds the chat completion request; ``response_object`` turns a chat completion into
a ``Response`` (output items: the assistant ``message`` with its ``output_text``, one
``function_call`` item per tool call; ``incomplete`` when the model stopped on its token cap).
The streaming counterpart lives in ``responses.stream``.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any

from modelyard.errors import InvalidRequestError

# Fields of CreateResponse that are accepted and honoured (or harmless: stored and echoed back).
_KNOWN = {
    "model", "input", "instructions", "max_output_tokens", "temperature", "top_p", "tools", "tool_choice", "text",
    "stream", "store", "previous_response_id", "background", "metadata", "user", "parallel_tool_calls",
    "service_tier", "truncation", "reasoning", "include", "stream_options", "max_tool_calls", "safety_identifier",
    "prompt_cache_key", "top_logprobs",
}
# Fields that name a feature this gateway does not provide: a 400 rather than silence.
_UNSUPPORTED = {
    "conversation": "conversations are not supported; use previous_response_id",
    "prompt": "prompt templates are not supported; send input and instructions",
    "context_management": "context management is not supported",
    "moderation": "moderated responses are not supported; call /v1/moderations",
}
_ROLES = ("user", "assistant", "system", "developer")


def _bad(param: str, message: str, code: str = "invalid_value") -> InvalidRequestError:
    return InvalidRequestError(f"{param}: {message}", param=param, code=code)


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(24)}"


@dataclass(slots=True)
class CreateRequest:
    """A checked ``POST /v1/responses`` body."""

    model: str
    input_messages: list[dict[str, Any]]  # the new turn(s), as chat messages
    input_items: list[dict[str, Any]]  # the same, as Responses input items (for input_items listing)
    instructions: str | None = None
    tools: list[dict[str, Any]] = field(default_factory=list)  # Responses function tools, as sent
    tool_choice: Any = "auto"
    text_format: dict[str, Any] | None = None
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stream: bool = False
    store: bool = True
    background: bool = False
    previous_response_id: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    user: str | None = None
    parallel_tool_calls: bool = True
    include_usage_logprobs: bool = False


def parse_create(data: dict[str, Any]) -> CreateRequest:
    for key in data:
        if key in _UNSUPPORTED and data[key] is not None:
            raise _bad(key, _UNSUPPORTED[key], "unsupported_parameter")
        if key not in _KNOWN and key not in _UNSUPPORTED:
            raise _bad(key, "unknown parameter", "unknown_parameter")
    model = data.get("model")
    if model is None:
        raise InvalidRequestError("model: required field is missing", param="model", code="missing_required_parameter")
    if not isinstance(model, str) or not model:
        raise _bad("model", "expected a non-empty string")
    if "input" not in data or data["input"] is None:
        raise InvalidRequestError("input: required field is missing", param="input", code="missing_required_parameter")
    messages, items = _input(data["input"])
    instructions = _opt(data, "instructions", str, "a string")
    req = CreateRequest(model=model, input_messages=messages, input_items=items, instructions=instructions)
    req.max_output_tokens = _opt_int(data, "max_output_tokens", 1)
    req.temperature = _opt_num(data, "temperature", 0, 2)
    req.top_p = _opt_num(data, "top_p", 0, 1)
    req.stream = bool(_opt(data, "stream", bool, "a boolean"))
    store = _opt(data, "store", bool, "a boolean")
    req.store = True if store is None else store
    req.background = bool(_opt(data, "background", bool, "a boolean"))
    if req.background and not req.store:
        raise _bad("background", "a background response must be stored (store: true)")
    req.previous_response_id = _opt(data, "previous_response_id", str, "a string")
    req.user = _opt(data, "user", str, "a string")
    ptc = _opt(data, "parallel_tool_calls", bool, "a boolean")
    req.parallel_tool_calls = True if ptc is None else ptc
    req.metadata = _metadata(data.get("metadata"))
    req.tools = _tools(data.get("tools"))
    req.tool_choice = _tool_choice(data.get("tool_choice"), req.tools)
    req.text_format = _text_format(data.get("text"))
    if data.get("truncation") not in (None, "disabled"):
        raise _bad("truncation", "only 'disabled' is supported", "unsupported_value")
    reasoning = data.get("reasoning")
    if reasoning is not None and (not isinstance(reasoning, dict) or any(v is not None for v in reasoning.values())):
        raise _bad("reasoning", "reasoning options are not supported by these models", "unsupported_parameter")
    include = data.get("include")
    if include:
        raise _bad("include", "no additional output data is available", "unsupported_value")
    if data.get("top_logprobs"):
        raise _bad("top_logprobs", "logprobs are not supported on responses", "unsupported_parameter")
    opts = data.get("stream_options")
    if opts is not None and not isinstance(opts, dict):
        raise _bad("stream_options", "expected an object")
    return req


def _opt(data: dict[str, Any], key: str, typ: type, what: str) -> Any:
    v = data.get(key)
    if v is None:
        return None
    if not isinstance(v, typ) or (typ is not bool and isinstance(v, bool)):
        raise _bad(key, f"expected {what}")
    return v


def _opt_int(data: dict[str, Any], key: str, lo: int) -> int | None:
    v = _opt(data, key, int, "an integer")
    if v is not None and v < lo:
        raise _bad(key, f"must be at least {lo}, got {v}")
    return v


def _opt_num(data: dict[str, Any], key: str, lo: float, hi: float) -> float | None:
    v = data.get(key)
    if v is None:
        return None
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        raise _bad(key, "expected a number")
    if not lo <= v <= hi:
        raise _bad(key, f"must be between {lo} and {hi}, got {v}")
    return v


def _metadata(v: Any) -> dict[str, str]:
    if v is None:
        return {}
    if not isinstance(v, dict) or len(v) > 16:
        raise _bad("metadata", "expected an object of at most 16 string pairs")
    for k, val in v.items():
        if not isinstance(val, str) or len(k) > 64 or len(val) > 512:
            raise _bad(f"metadata.{k}", "keys are strings of at most 64 characters, values at most 512")
    return dict(v)


def _text(content: Any, param: str, *, output: bool) -> str:
    """An item's content (a string or parts) as plain text; non-text parts are a 400."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _bad(param, "expected a string or an array of content parts")
    texts = []
    for j, part in enumerate(content):
        p = f"{param}[{j}]"
        if not isinstance(part, dict):
            raise _bad(p, "expected an object")
        kind = part.get("type")
        if kind in ("input_text", "output_text", "text"):
            text = part.get("text")
            if not isinstance(text, str):
                raise _bad(f"{p}.text", "expected a string")
            texts.append(text)
        elif kind == "refusal" and output:
            texts.append(str(part.get("refusal") or ""))
        elif kind in ("input_image", "input_file", "input_audio"):
            raise _bad(f"{p}.type", f"{kind} content is not supported by these models", "unsupported_value")
        else:
            raise _bad(f"{p}.type", f"unknown content type {kind!r}")
    return "".join(texts)


def _input(v: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    if isinstance(v, str):
        return [{"role": "user", "content": v}], [_input_message("user", v)]
    if not isinstance(v, list) or not v:
        raise _bad("input", "expected a string or a non-empty array of input items")
    messages: list[dict[str, Any]] = []
    items: list[dict[str, Any]] = []
    for i, item in enumerate(v):
        p = f"input[{i}]"
        if not isinstance(item, dict):
            raise _bad(p, "expected an object")
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in _ROLES:
                raise _bad(f"{p}.role", f"expected one of {', '.join(_ROLES)}")
            text = _text(item.get("content"), f"{p}.content", output=role == "assistant")
            messages.append({"role": "system" if role == "developer" else role, "content": text})
            items.append(_input_message(role, text))
        elif kind == "function_call":
            call_id, name, args = item.get("call_id"), item.get("name"), item.get("arguments")
            if not isinstance(call_id, str) or not isinstance(name, str) or not isinstance(args, str):
                raise _bad(p, "a function_call item needs string call_id, name and arguments")
            call = {"id": call_id, "type": "function", "function": {"name": name, "arguments": args}}
            if messages and messages[-1]["role"] == "assistant" and messages[-1].get("tool_calls"):
                messages[-1]["tool_calls"].append(call)  # parallel calls: one assistant turn
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
            items.append({"type": "function_call", "id": item.get("id") or new_id("fc"), "call_id": call_id,
                          "name": name, "arguments": args, "status": "completed"})
        elif kind == "function_call_output":
            call_id, output = item.get("call_id"), item.get("output")
            if not isinstance(call_id, str):
                raise _bad(f"{p}.call_id", "expected a string")
            out = _text(output, f"{p}.output", output=False)
            messages.append({"role": "tool", "tool_call_id": call_id, "content": out})
            items.append({"type": "function_call_output", "id": item.get("id") or new_id("fco"), "call_id": call_id,
                          "output": out, "status": "completed"})
        elif kind == "item_reference":
            raise _bad(f"{p}.type", "item references are not supported; use previous_response_id",
                       "unsupported_value")
        else:
            raise _bad(f"{p}.type", f"{kind!r} items are not supported", "unsupported_value")
    return messages, items


def _input_message(role: str, text: str) -> dict[str, Any]:
    return {"type": "message", "id": new_id("msg"), "role": role, "status": "completed",
            "content": [{"type": "input_text", "text": text}]}


def _tools(v: Any) -> list[dict[str, Any]]:
    if v is None:
        return []
    if not isinstance(v, list):
        raise _bad("tools", "expected an array of tools")
    seen = set()
    for i, tool in enumerate(v):
        p = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise _bad(p, "expected an object")
        kind = tool.get("type")
        if kind != "function":
            raise _bad(f"{p}.type", f"built-in tool {kind!r} is not supported; only function tools are",
                       "unsupported_value")
        name = tool.get("name")
        if not isinstance(name, str) or not name:
            raise _bad(f"{p}.name", "expected a non-empty string")
        if name in seen:
            raise _bad(f"{p}.name", f"duplicate tool name {name!r}")
        seen.add(name)
        params = tool.get("parameters")
        if params is not None and not isinstance(params, dict):
            raise _bad(f"{p}.parameters", "expected a JSON Schema object")
        if params is not None:
            _check_schema(params, f"{p}.parameters")
    return list(v)


def _check_schema(schema: dict[str, Any], param: str) -> None:
    from jsonschema import SchemaError
    from jsonschema.validators import Draft202012Validator

    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        raise _bad(param, f"not a valid JSON Schema: {exc.message}", "invalid_schema") from None


def _tool_choice(v: Any, tools: list[dict[str, Any]]) -> Any:
    if v is None:
        return "auto"
    if v in ("auto", "none", "required"):
        if v == "required" and not tools:
            raise _bad("tool_choice", "'required' needs at least one tool in tools")
        return v
    if isinstance(v, dict) and v.get("type") == "function":
        name = v.get("name")
        if not any(t.get("name") == name for t in tools):
            raise _bad("tool_choice.name", f"no tool named {name!r} in tools")
        return {"type": "function", "name": name}
    if isinstance(v, dict):
        raise _bad("tool_choice.type", f"tool choice {v.get('type')!r} is not supported", "unsupported_value")
    raise _bad("tool_choice", "expected 'auto', 'none', 'required' or {type: function, name}")


def _text_format(v: Any) -> dict[str, Any] | None:
    if v is None:
        return None
    if not isinstance(v, dict):
        raise _bad("text", "expected an object")
    if v.get("verbosity") not in (None, "medium"):
        raise _bad("text.verbosity", "only 'medium' is supported", "unsupported_value")
    fmt = v.get("format")
    if fmt is None:
        return None
    if not isinstance(fmt, dict):
        raise _bad("text.format", "expected an object")
    kind = fmt.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        name, schema = fmt.get("name"), fmt.get("schema")
        if not isinstance(name, str) or not name:
            raise _bad("text.format.name", "expected a non-empty string")
        if not isinstance(schema, dict):
            raise _bad("text.format.schema", "expected a JSON Schema object")
        _check_schema(schema, "text.format.schema")
        return dict(fmt)
    raise _bad("text.format.type", "expected 'text', 'json_object' or 'json_schema'")


# --- onto chat completions ----------------------------------------------------------------------
def chat_body(req: CreateRequest, history: list[dict[str, Any]], *, stream: bool) -> dict[str, Any]:
    """The chat completion request for ``req``, ``history`` being the earlier turns (chat messages)."""
    messages = []
    if req.instructions:
        messages.append({"role": "system", "content": req.instructions})
    messages.extend(history)
    messages.extend(req.input_messages)
    body: dict[str, Any] = {"model": req.model, "messages": messages}
    if req.max_output_tokens is not None:
        body["max_tokens"] = req.max_output_tokens
    if req.temperature is not None:
        body["temperature"] = req.temperature
    if req.top_p is not None:
        body["top_p"] = req.top_p
    if req.user is not None:
        body["user"] = req.user
    if req.tools and req.tool_choice != "none":
        body["tools"] = [{"type": "function", "function": {k: t[k] for k in ("name", "description", "parameters", "strict")
                                                          if t.get(k) is not None}} for t in req.tools]
        tc = req.tool_choice
        body["tool_choice"] = {"type": "function", "function": {"name": tc["name"]}} if isinstance(tc, dict) else tc
        if not req.parallel_tool_calls:
            body["parallel_tool_calls"] = False
    if req.text_format is not None:
        fmt = req.text_format
        if fmt["type"] == "json_object":
            body["response_format"] = {"type": "json_object"}
        else:
            js = {"name": fmt["name"], "schema": fmt["schema"]}
            if fmt.get("strict") is not None:
                js["strict"] = fmt["strict"]
            if fmt.get("description"):
                js["description"] = fmt["description"]
            body["response_format"] = {"type": "json_schema", "json_schema": js}
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


# --- back: the Response object --------------------------------------------------------------------
def base_response(resp_id: str, req: CreateRequest, created_at: int, *, status: str, model: str | None = None) -> dict[str, Any]:
    """A ``Response`` with no output yet (queued, in progress), every required field present."""
    text_fmt = {"type": "text"} if req.text_format is None else dict(req.text_format)
    return {
        "id": resp_id, "object": "response", "created_at": created_at, "status": status, "completed_at": None,
        "error": None, "incomplete_details": None, "instructions": req.instructions,
        "max_output_tokens": req.max_output_tokens, "model": model or req.model, "output": [],
        "parallel_tool_calls": req.parallel_tool_calls, "previous_response_id": req.previous_response_id,
        "reasoning": {"effort": None, "summary": None}, "store": req.store, "background": req.background,
        "temperature": 1.0 if req.temperature is None else req.temperature, "text": {"format": text_fmt},
        "tool_choice": req.tool_choice, "tools": [_tool_out(t) for t in req.tools],
        "top_p": 1.0 if req.top_p is None else req.top_p, "truncation": "disabled",
        "metadata": req.metadata, "service_tier": "default", **({"user": req.user} if req.user else {}),
    }


def _tool_out(t: dict[str, Any]) -> dict[str, Any]:
    return {"type": "function", "name": t["name"], "description": t.get("description"),
            "parameters": t.get("parameters") or {"type": "object", "properties": {}}, "strict": bool(t.get("strict"))}


def usage_of(chat_usage: Any) -> dict[str, Any] | None:
    if not isinstance(chat_usage, dict):
        return None
    p = chat_usage.get("prompt_tokens") or 0
    c = chat_usage.get("completion_tokens") or 0
    return {"input_tokens": p, "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": c, "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": p + c}


def message_item(item_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    return {"type": "message", "id": item_id, "status": status, "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]}


def call_item(item_id: str, call_id: str, name: str, arguments: str, status: str = "completed") -> dict[str, Any]:
    return {"type": "function_call", "id": item_id, "call_id": call_id, "name": name, "arguments": arguments,
            "status": status}


def finish(resp: dict[str, Any], output: list[dict[str, Any]], finish_reason: Any, usage: Any, now: int) -> dict[str, Any]:
    """``resp`` completed (or incomplete) with ``output``."""
    resp["output"] = output
    u = usage_of(usage)
    if u is not None:
        resp["usage"] = u
    if finish_reason == "length":
        resp["status"] = "incomplete"
        resp["incomplete_details"] = {"reason": "max_output_tokens"}
    elif finish_reason == "content_filter":
        resp["status"] = "incomplete"
        resp["incomplete_details"] = {"reason": "content_filter"}
    else:
        resp["status"] = "completed"
        resp["completed_at"] = now
    return resp


def response_object(resp: dict[str, Any], completion: dict[str, Any], now: int) -> dict[str, Any]:
    """A chat completion's first choice as ``resp``'s output."""
    choices = completion.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    msg = choice.get("message") or {}
    output: list[dict[str, Any]] = []
    content = msg.get("content")
    if isinstance(content, str) and (content or not msg.get("tool_calls")):
        output.append(message_item(new_id("msg"), content))
    for call in msg.get("tool_calls") or ():
        fn = call.get("function") or {}
        output.append(call_item(new_id("fc"), call.get("id") or new_id("call"), fn.get("name") or "",
                                fn.get("arguments") or ""))
    return finish(resp, output, choice.get("finish_reason"), completion.get("usage"), now)


def output_messages(output: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A response's output items as the chat messages a next turn continues from."""
    messages: list[dict[str, Any]] = []
    text = "".join(p.get("text", "") for it in output if it.get("type") == "message" for p in it.get("content") or ())
    calls = [{"id": it["call_id"], "type": "function", "function": {"name": it["name"], "arguments": it["arguments"]}}
             for it in output if it.get("type") == "function_call"]
    if text or calls:
        msg: dict[str, Any] = {"role": "assistant", "content": text or None}
        if calls:
            msg["tool_calls"] = calls
        messages.append(msg)
    return messages


def failed(resp: dict[str, Any], code: str, message: str) -> dict[str, Any]:
    resp["status"] = "failed"
    resp["error"] = {"code": code, "message": message}
    return resp


def error_code(status: int) -> str:
    """A ``ResponseErrorCode`` for an HTTP status (the spec's enum has no per-status codes)."""
    if status == 429:
        return "rate_limit_exceeded"
    return "invalid_prompt" if 400 <= status < 500 else "server_error"
