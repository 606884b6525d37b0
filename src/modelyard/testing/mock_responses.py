"""Deterministic OpenAI-shaped response builders and the behaviour SPEC parser
for the mock upstream (:mod:`modelyard.testing.mock_upstream`).

Pure functions of the (already parsed) request body: no I/O, no global state.
Everything here is on the mock's hot path, so it avoids needless allocation.

Content rules (relied on by tests, keep stable):

* chat: ``"mock reply to: " + <last user message text>[:64]`` split on
  whitespace; completions do the same with the prompt.
* ``max_tokens`` / ``max_completion_tokens`` cap the number of words
  (``finish_reason`` becomes ``"length"`` when the cap cut the text).
* usage: ``prompt_tokens`` = whitespace-separated words of the input (min 1),
  ``completion_tokens`` = words produced (summed over all choices).
* embeddings: unit vector of ``dimensions`` (default 8) float32 values derived
  from SHAKE-128 of the input text; values are float32-exact so the ``float``
  and ``base64`` encodings decode to identical numbers.
"""

from __future__ import annotations

import base64
import hashlib
import struct
from typing import Any

import orjson

REPLY_PREFIX = "mock reply to: "
MAX_ECHO_CHARS = 64
DEFAULT_EMBEDDING_DIM = 8
DEFAULT_MODELS = ("mock-model",)
MODEL_CREATED = 1700000000


class RequestError(ValueError):
    """A request body the mock refuses; becomes a 400 with ``param``."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


# --------------------------------------------------------------------- text
def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts
        parts = []
        for p in content:
            if isinstance(p, dict):
                t = p.get("text")
                if isinstance(t, str):
                    parts.append(t)
            elif isinstance(p, str):
                parts.append(p)
        return " ".join(parts)
    return ""


def _prompt_text(prompt: Any) -> str:
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list):
        if prompt and all(isinstance(t, int) for t in prompt):
            return " ".join(map(str, prompt))
        return " ".join(_prompt_text(p) for p in prompt)
    return ""


def _word_count(text: str) -> int:
    return len(text.split())


def _cap(body: dict) -> int | None:
    cap = body.get("max_completion_tokens")
    if cap is None:
        cap = body.get("max_tokens")
    if cap is None:
        return None
    if not isinstance(cap, int) or isinstance(cap, bool) or cap < 0:
        raise RequestError("max_tokens must be a non-negative integer", "max_tokens")
    return cap


def _n(body: dict) -> int:
    n = body.get("n")
    if n is None:
        return 1
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 128:
        raise RequestError("n must be an integer between 1 and 128", "n")
    return n


def _model(body: dict) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise RequestError("you must provide a model parameter", "model")
    return model


def reply_words(source: str, cap: int | None) -> tuple[list[str], str]:
    """Words of the deterministic reply and the finish reason."""
    words = (REPLY_PREFIX + source[:MAX_ECHO_CHARS]).split()
    if cap is not None and cap < len(words):
        return words[:cap], "length"
    return words, "stop"


def _usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


# --------------------------------------------------------------------- chat
class ChatPlan:
    """What a chat/completions request will produce (shared by both modes)."""

    __slots__ = ("model", "words", "finish", "n", "prompt_tokens", "include_usage", "chat")

    def __init__(self, body: Any, chat: bool) -> None:
        if not isinstance(body, dict):
            raise RequestError("request body must be a JSON object")
        self.chat = chat
        self.model = _model(body)
        self.n = _n(body)
        cap = _cap(body)
        if chat:
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages:
                raise RequestError("messages must be a non-empty array", "messages")
            last_user = ""
            total_words = 0
            for m in messages:
                if not isinstance(m, dict):
                    raise RequestError("each message must be an object", "messages")
                text = _content_text(m.get("content"))
                total_words += _word_count(text)
                if m.get("role") == "user":
                    last_user = text
            source = last_user
        else:
            prompt = body.get("prompt", "")
            if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
                total_words = len(prompt)
            elif isinstance(prompt, list) and prompt and all(isinstance(t, list) for t in prompt):
                total_words = sum(len(t) for t in prompt)
            else:
                total_words = _word_count(_prompt_text(prompt))
            source = _prompt_text(prompt)
        self.prompt_tokens = total_words if total_words > 0 else 1
        self.words, self.finish = reply_words(source, cap)
        so = body.get("stream_options")
        self.include_usage = bool(isinstance(so, dict) and so.get("include_usage"))

    def usage(self) -> dict:
        return _usage(self.prompt_tokens, len(self.words) * self.n)


def chat_completion(plan: ChatPlan, rid: str, created: int) -> dict:
    content = " ".join(plan.words)
    choices = [
        {
            "index": i,
            "message": {"role": "assistant", "content": content, "refusal": None, "annotations": []},
            "logprobs": None,
            "finish_reason": plan.finish,
        }
        for i in range(plan.n)
    ]
    return {
        "id": rid,
        "object": "chat.completion",
        "created": created,
        "model": plan.model,
        "choices": choices,
        "usage": plan.usage(),
        "system_fingerprint": "fp_mock",
    }


def text_completion(plan: ChatPlan, rid: str, created: int) -> dict:
    text = " ".join(plan.words)
    choices = [
        {"text": text, "index": i, "logprobs": None, "finish_reason": plan.finish}
        for i in range(plan.n)
    ]
    return {
        "id": rid,
        "object": "text_completion",
        "created": created,
        "model": plan.model,
        "choices": choices,
        "usage": plan.usage(),
        "system_fingerprint": "fp_mock",
    }


def stream_payloads(plan: ChatPlan, rid: str, created: int) -> list[bytes]:
    """JSON payloads (bytes) of all SSE chunks of a streamed chat/completion.

    Chat: one chunk per word and choice (the first chunk of each choice carries
    ``delta.role``), then one chunk per choice with an empty delta and the
    ``finish_reason``, then (``stream_options.include_usage``) a usage chunk
    with ``choices: []`` (earlier chunks then carry ``"usage": null``, as the
    real API does). Completions: same, with ``text`` instead of ``delta``.
    Concatenating the pieces of a choice yields the non-stream text.
    Serialised from pre-encoded templates: this is the streaming hot path.
    """
    chat = plan.chat
    obj = "chat.completion.chunk" if chat else "text_completion"
    head = orjson.dumps({"id": rid, "object": obj, "created": created, "model": plan.model})
    head = head[:-1] + b',"choices":['
    tail = b'],"usage":null}' if plan.include_usage else b"]}"
    if chat:
        first = head + b'{"index":%d,"delta":{"role":"assistant","content":%s},"logprobs":null,"finish_reason":null}' + tail
        word = head + b'{"index":%d,"delta":{"content":%s},"logprobs":null,"finish_reason":null}' + tail
        last = head + b'{"index":%d,"delta":{},"logprobs":null,"finish_reason":"%s"}' + tail
    else:
        first = word = head + b'{"text":%s,"index":%d,"logprobs":null,"finish_reason":null}' + tail
        last = head + b'{"text":"","index":%d,"logprobs":null,"finish_reason":"%s"}' + tail
    dumps = orjson.dumps
    words = plan.words or [""]
    n = plan.n
    out: list[bytes] = []
    for w_i, w in enumerate(words):
        piece = dumps(w if w_i == 0 else " " + w)
        tpl = first if w_i == 0 else word
        for i in range(n):
            out.append(tpl % ((i, piece) if chat else (piece, i)))
    fin = plan.finish.encode()
    for i in range(n):
        out.append(last % (i, fin))
    if plan.include_usage:
        out.append(dumps({"id": rid, "object": obj, "created": created, "model": plan.model,
                          "choices": [], "usage": plan.usage()}))
    return out


# --------------------------------------------------------------- embeddings
def embedding_vector(text: str, dim: int) -> tuple[float, ...]:
    """Deterministic unit-length float32 vector for ``text``."""
    raw = hashlib.shake_128(text.encode("utf-8", "surrogatepass")).digest(2 * dim)
    ints = struct.unpack("<%dH" % dim, raw)
    vals = [(v - 32767.5) / 32767.5 for v in ints]
    norm = sum(v * v for v in vals) ** 0.5 or 1.0
    fmt = "<%df" % dim  # the struct module caches compiled formats
    # round-trip through float32 so float and base64 outputs agree exactly
    return struct.unpack(fmt, struct.pack(fmt, *[v / norm for v in vals]))


def embeddings(body: Any) -> dict:
    if not isinstance(body, dict):
        raise RequestError("request body must be a JSON object")
    model = _model(body)
    inp = body.get("input")
    if isinstance(inp, str):
        items: list = [inp]
    elif isinstance(inp, list) and inp:
        if all(isinstance(t, int) for t in inp):
            items = [inp]  # one token array
        else:
            items = inp
    else:
        raise RequestError("input must be a string or a non-empty array", "input")
    dim = body.get("dimensions")
    if dim is None:
        dim = DEFAULT_EMBEDDING_DIM
    elif not isinstance(dim, int) or isinstance(dim, bool) or not 1 <= dim <= 65536:
        raise RequestError("dimensions must be a positive integer", "dimensions")
    fmt = body.get("encoding_format") or "float"
    if fmt not in ("float", "base64"):
        raise RequestError("encoding_format must be 'float' or 'base64'", "encoding_format")
    data = []
    tokens = 0
    for idx, item in enumerate(items):
        if isinstance(item, str):
            text = item
            tokens += _word_count(item)
        elif isinstance(item, list) and all(isinstance(t, int) for t in item):
            text = " ".join(map(str, item))
            tokens += len(item)
        else:
            raise RequestError("input items must be strings or token arrays", "input")
        vec = embedding_vector(text, dim)
        if fmt == "base64":
            emb: Any = base64.b64encode(struct.pack("<%df" % dim, *vec)).decode("ascii")
        else:
            emb = vec
        data.append({"object": "embedding", "index": idx, "embedding": emb})
    tokens = tokens if tokens > 0 else 1
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


# ------------------------------------------------------------------- models
def model_object(model_id: str) -> dict:
    return {"id": model_id, "object": "model", "created": MODEL_CREATED, "owned_by": "modelyard-mock"}


def models_list(models: tuple[str, ...] | list[str]) -> dict:
    return {"object": "list", "data": [model_object(m) for m in models]}


# ------------------------------------------------------------------- errors
_ERROR_TYPES = {
    400: ("invalid_request_error", None),
    401: ("authentication_error", "invalid_api_key"),
    403: ("permission_error", None),
    404: ("not_found_error", "not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
    409: ("conflict_error", None),
    413: ("invalid_request_error", "request_too_large"),
    422: ("unprocessable_entity_error", None),
    429: ("rate_limit_error", "rate_limit_exceeded"),
}


def error_body(status: int, message: str | None = None, param: str | None = None) -> dict:
    etype, code = _ERROR_TYPES.get(status, ("server_error" if status >= 500 else "invalid_request_error", None))
    return {
        "error": {
            "message": message if message is not None else "mock error %d" % status,
            "type": etype,
            "param": param,
            "code": code if code is not None else str(status),
        }
    }


# ---------------------------------------------------------------- behaviour
_ACTIONS = frozenset({"ok", "hang", "drop"})


class Behavior:
    """A parsed behaviour SPEC (immutable once built)."""

    __slots__ = ("spec", "action", "status", "flaky", "delay", "stream_delay", "stream_drop")

    def __init__(self, spec: str) -> None:
        self.spec = spec
        self.action = "ok"
        self.status = 0
        self.flaky = 0
        self.delay = 0.0
        self.stream_delay = 0.0
        self.stream_drop: int | None = None

    @property
    def is_async(self) -> bool:
        return self.delay > 0 or self.action == "hang"


def _num(arg: str, what: str, lo: float, hi: float, integer: bool) -> float:
    try:
        val = int(arg) if integer else float(arg)
    except ValueError:
        raise ValueError(f"bad {what} value {arg!r}") from None
    if not lo <= val <= hi:
        raise ValueError(f"{what} value {arg!r} out of range")
    return val


def parse_behavior(spec: str) -> Behavior:
    """Parse a behaviour SPEC; raise ``ValueError`` on anything unknown."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError("empty behavior spec")
    b = Behavior(spec.strip())
    action_seen = False
    for part in b.spec.split(","):
        name, _, arg = part.strip().partition(":")
        if name in _ACTIONS or name in ("error", "flaky"):
            if action_seen:
                raise ValueError(f"more than one action in behavior spec {spec!r}")
            action_seen = True
            if name in _ACTIONS:
                if arg:
                    raise ValueError(f"behavior {name!r} takes no argument")
            elif name == "error":
                b.status = int(_num(arg, "error", 400, 599, True))
            else:
                b.flaky = int(_num(arg, "flaky", 1, 1 << 30, True))
            b.action = name
        elif name == "slow":
            b.delay = _num(arg, "slow", 0, 86_400_000, False) / 1000.0
        elif name == "stream-slow":
            b.stream_delay = _num(arg, "stream-slow", 0, 86_400_000, False) / 1000.0
        elif name == "stream-drop":
            b.stream_drop = int(_num(arg, "stream-drop", 0, 1 << 30, True))
        else:
            raise ValueError(f"unknown behavior {part.strip()!r}")
    return b


# ------------------------------------------------------------ responses (native)
def _responses_input_text(body: dict) -> str:
    inp = body.get("input")
    if isinstance(inp, str):
        return inp
    if isinstance(inp, list) and inp and isinstance(inp[-1], dict):
        return _content_text(inp[-1].get("content"))
    return ""


def native_response(body: Any, rid: str, created: int) -> dict:
    """A minimal Responses API object, as an upstream that speaks ``/v1/responses`` itself answers
    (the text says "native", so a test can tell it was not translated onto chat completions)."""
    if not isinstance(body, dict):
        raise RequestError("body must be a JSON object")
    text = "native " + " ".join(reply_words(_responses_input_text(body), None)[0])
    p = _word_count(_responses_input_text(body))
    c = _word_count(text)
    return {
        "id": rid, "object": "response", "created_at": created, "status": "completed", "completed_at": created,
        "error": None, "incomplete_details": None, "instructions": body.get("instructions"),
        "model": _model(body), "output": [{"type": "message", "id": "msg_" + rid, "status": "completed",
                                           "role": "assistant", "content": [{"type": "output_text", "text": text,
                                                                             "annotations": [], "logprobs": []}]}],
        "parallel_tool_calls": True, "tool_choice": "auto", "tools": [], "temperature": 1.0, "top_p": 1.0,
        "metadata": {}, "usage": {"input_tokens": p, "input_tokens_details": {"cached_tokens": 0},
                                  "output_tokens": c, "output_tokens_details": {"reasoning_tokens": 0},
                                  "total_tokens": p + c},
    }


def native_stream(body: Any, rid: str, created: int) -> list[bytes]:
    """The same as SSE: (event name, data) frames from response.created to response.completed."""
    final = native_response(body, rid, created)
    text = final["output"][0]["content"][0]["text"]
    start = {**final, "status": "in_progress", "output": [], "completed_at": None}
    start.pop("usage")
    item = {**final["output"][0], "status": "in_progress", "content": []}
    part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
    events: list[tuple[str, dict]] = [
        ("response.created", {"response": start}),
        ("response.output_item.added", {"output_index": 0, "item": item}),
        ("response.content_part.added", {"item_id": item["id"], "output_index": 0, "content_index": 0, "part": part}),
    ]
    for i, word in enumerate(text.split(" ")):
        events.append(("response.output_text.delta", {"item_id": "msg_" + rid, "output_index": 0,
                                                      "content_index": 0, "delta": word if i == 0 else " " + word,
                                                      "logprobs": []}))
    events.append(("response.output_item.done", {"output_index": 0, "item": final["output"][0]}))
    events.append(("response.completed", {"response": final}))
    return [b"event: %s\ndata: %s\n\n" % (k.encode(), orjson.dumps({"type": k, "sequence_number": n, **v}))
            for n, (k, v) in enumerate(events)]
