"""Tool calls (``tools`` / ``tool_choice``) for chat models served in process: the pure parts.

``runtime/llamacpp.py`` is the adapter; everything here is a function of its inputs (no model, no
clock, no I/O): checking the request's tools, writing the prompt for a template that has no tool
format, building the grammar a forced call is decoded under, finding calls in a model's text
(``tool_parse.py``: incrementally, so one parser serves streaming and non-streaming alike) and
shaping what comes out as OpenAI's ``tool_calls`` and stream deltas. The design note is docs/design/tool-calls.md.

**The syntax.** A call is JSON inside ``<tool_call>…</tool_call>``. Templates that render ``tools``
and speak this syntax (Qwen2.5, Hermes, Qwen3) use their own format: ``<tool_call>\\n{"name": …,
"arguments": {…}}\\n</tool_call>``. For any other template (SmolLM2 has no tool format) a system
message written here lists the tools and asks for ``<tool_call>[{"name": …, "arguments": {…}}]
</tool_call>`` (a JSON array in the tag: the form SmolLM2's function-calling data used). The parser
reads both, several calls too.

**Constrained decoding.** ``tool_choice: "required"`` or a named function decodes under an
llguidance grammar: the opener, then one of the per-tool shapes ``{"name": <const>, "arguments":
<that tool's parameters>}`` (an alternation of one JSON-Schema rule per tool: the same as an
``anyOf`` of the shapes, with each tool's ``$defs`` resolving in its own document), then the closer.
Exactly one call comes out of a constrained generation.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from modelyard.errors import InvalidRequestError
from modelyard.runtime.tool_parse import END, TAG, Event, ToolCallParser, delta, new_call_id

_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")  # OpenAI's rule for function names
_TYPES = frozenset({"object", "array", "string", "number", "integer", "boolean", "null"})
_CHOICES = ("none", "auto", "required")
_MAX_DEPTH = 64
# llguidance's JSON options: compact JSON (as the templates show calls; fewer tokens to generate),
# unknown keywords ignored rather than failing the grammar.
# A forced call's default temperature (when the request sets none): at llama.cpp's 0.8 SmolLM2-135M
# loops inside a string argument until max_tokens in about one call in eight on the harder prompts
# (6/50 measured, 0/50 at 0.3: docs/design/tool-calls.md).
FORCED_TEMPERATURE = 0.3
FREE_STRING_MAX = 48  # characters; see _closed
FREE_NUMBER_STEP = 1e-6
_GUIDANCE = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": ", "lenient": True}


@dataclass(frozen=True)
class Syntax:
    """How one model writes a call: what the grammar puts around the JSON."""

    opener: str
    closer: str
    listed: bool  # the calls are a JSON array inside the tag


NATIVE = Syntax(TAG + "\n", "\n" + END, False)  # Qwen2.5 / Hermes templates
FALLBACK = Syntax(TAG + "[", "]" + END, True)  # our own format, for templates without tools


def template_has_tools(template: Any) -> bool:
    """The chat template renders ``tools`` and speaks the ``<tool_call>`` syntax."""
    return isinstance(template, str) and TAG in template and "tools" in template


@dataclass(frozen=True)
class Function:
    name: str
    description: str
    parameters: dict[str, Any]

    def declared(self) -> dict[str, Any]:
        return {"type": "function", "function": {"name": self.name, "description": self.description,
                                                 "parameters": self.parameters}}


@dataclass(frozen=True)
class ToolSpec:
    """The request's tools, checked. ``mode``: none | auto | required (a named function is
    ``required`` with ``forced`` set)."""

    functions: tuple[Function, ...]
    mode: str
    forced: str | None = None
    parallel: bool = True
    names: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "names", frozenset(f.name for f in self.functions))

    @property
    def offered(self) -> bool:
        return self.mode != "none" and bool(self.functions)

    @property
    def constrained(self) -> bool:
        return self.mode == "required"


# --- checking the request -------------------------------------------------------------------------


def _bad(param: str, message: str) -> InvalidRequestError:
    return InvalidRequestError(f"{param}: {message}", param=param, code="invalid_value")


def check_tools(data: dict[str, Any], *, local: bool) -> ToolSpec | None:
    """Check ``tools``, ``tool_choice`` and ``parallel_tool_calls``; errors name the field.

    ``local=False`` (the gateway, for every model): only what OpenAI itself rejects, so tool kinds
    and choices modelyard does not know pass on to an upstream. ``local=True`` (an in-process
    engine): function tools only, parameters that are a sound JSON Schema; returns the spec (None
    when the request declares no tools)."""
    tools, choice, parallel = data.get("tools"), data.get("tool_choice"), data.get("parallel_tool_calls")
    if tools is None and choice is None and parallel is None:
        return None
    if parallel is not None and not isinstance(parallel, bool):
        raise _bad("parallel_tool_calls", "expected a boolean")
    if tools is not None and not isinstance(tools, list):
        raise _bad("tools", "expected an array of tool objects")
    functions = _functions(tools or [], local=local)
    names = {f.name for f in functions}
    mode, forced = _choice(choice, names, bool(tools), local=local)
    if not local or not functions:
        return None
    return ToolSpec(tuple(functions), mode, forced, True if parallel is None else parallel)


def _functions(tools: list[Any], *, local: bool) -> list[Function]:
    out: list[Function] = []
    seen: set[str] = set()
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise _bad(where, "expected an object")
        kind = tool.get("type", "function")
        if kind != "function":
            if local:
                raise _bad(f"{where}.type", f"only 'function' tools are supported by this model, got {kind!r}")
            continue
        fn = tool.get("function")
        if fn is None and not local:  # left to the upstream (the gateway checks what is there)
            continue
        if not isinstance(fn, dict):
            raise _bad(f"{where}.function", "expected an object with the function's name")
        name = fn.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise _bad(f"{where}.function.name", "expected 1 to 64 letters, digits, '_' or '-'")
        if local and name in seen:
            raise _bad(f"{where}.function.name", f"{name!r} is declared twice")
        seen.add(name)
        desc = fn.get("description")
        if desc is not None and not isinstance(desc, str):
            raise _bad(f"{where}.function.description", "expected a string")
        params = fn.get("parameters")
        if params is None:
            params = {"type": "object", "properties": {}}
        where_p = f"{where}.function.parameters"
        if not isinstance(params, dict):
            raise _bad(where_p, "expected a JSON Schema object")
        if params.get("type", "object") != "object":
            raise _bad(f"{where_p}.type", f"the parameters must be a schema of type 'object', got {params.get('type')!r}")
        if local:
            _check_schema(params, where_p, 0)
        out.append(Function(name, desc or "", params))
    return out


def _choice(choice: Any, names: set[str], has_tools: bool, *, local: bool) -> tuple[str, str | None]:
    if choice is None:
        return "auto", None
    if isinstance(choice, str):
        if choice not in _CHOICES:
            raise _bad("tool_choice", f"expected 'none', 'auto', 'required' or a function, got {choice!r}")
        if choice == "required" and not has_tools:
            raise _bad("tool_choice", "'required' needs tools: the request declares none")
        return choice, None
    if not isinstance(choice, dict):
        raise _bad("tool_choice", "expected 'none', 'auto', 'required' or an object naming a function")
    if choice.get("type") != "function":
        if local:
            raise _bad("tool_choice.type", "only {'type': 'function', 'function': {'name': ...}} is supported by this model")
        return "auto", None
    fn = choice.get("function")
    name = fn.get("name") if isinstance(fn, dict) else None
    if not isinstance(name, str) or not name:
        raise _bad("tool_choice.function.name", "expected the name of a declared function")
    if name not in names:
        declared = ", ".join(sorted(names)) or "none"
        raise _bad("tool_choice.function.name", f"{name!r} is not a declared function (declared: {declared})")
    return "required", name


def _check_schema(s: Any, where: str, depth: int) -> None:
    """What would make the grammar fail to compile (llguidance then decodes unconstrained, silently)."""
    if isinstance(s, bool):
        return
    if not isinstance(s, dict):
        raise _bad(where, "expected a JSON Schema (an object or a boolean)")
    if depth > _MAX_DEPTH:
        raise _bad(where, f"the schema is nested more than {_MAX_DEPTH} levels deep")
    t = s.get("type")
    for one in t if isinstance(t, list) else ([] if t is None else [t]):
        if one not in _TYPES:
            raise _bad(f"{where}.type", f"{one!r} is not a JSON Schema type")
    for key in ("properties", "$defs", "definitions", "patternProperties"):
        sub = s.get(key)
        if sub is None:
            continue
        if not isinstance(sub, dict):
            raise _bad(f"{where}.{key}", "expected an object of schemas")
        for k, v in sub.items():
            _check_schema(v, f"{where}.{key}.{k}", depth + 1)
    req = s.get("required")
    if req is not None and (not isinstance(req, list) or not all(isinstance(r, str) for r in req)):
        raise _bad(f"{where}.required", "expected an array of property names")
    for key in ("anyOf", "oneOf", "allOf", "prefixItems"):
        sub = s.get(key)
        if sub is None:
            continue
        if not isinstance(sub, list) or not sub:
            raise _bad(f"{where}.{key}", "expected a non-empty array of schemas")
        for j, v in enumerate(sub):
            _check_schema(v, f"{where}.{key}[{j}]", depth + 1)
    for key in ("items", "additionalProperties", "not"):
        if key in s:
            _check_schema(s[key], f"{where}.{key}", depth + 1)
    enum = s.get("enum")
    if enum is not None and (not isinstance(enum, list) or not enum):
        raise _bad(f"{where}.enum", "expected a non-empty array")


# --- the constraint -----------------------------------------------------------------------------


def _closed(s: Any) -> Any:
    """The declared schema narrowed so that a small model's call ends within a small ``max_tokens``
    (every call still validates against the declared schema): objects with ``properties`` and no
    word on extra keys get ``additionalProperties: false`` (no invented arguments); free strings
    (no maxLength, enum, const, pattern or format) at most ``FREE_STRING_MAX`` characters and free
    numbers a multiple of ``FREE_NUMBER_STEP`` (six decimals): SmolLM2 otherwise loops inside a
    URL or in the digits of ``20.0000000000000001555…`` until ``max_tokens``."""
    if isinstance(s, list):
        return [_closed(x) for x in s]
    if not isinstance(s, dict):
        return s
    out = {k: (_closed(v) if k in ("items", "not", "anyOf", "oneOf", "allOf", "prefixItems") else v) for k, v in s.items()}
    for key in ("properties", "$defs", "definitions"):
        if isinstance(s.get(key), dict):
            out[key] = {k: _closed(v) for k, v in s[key].items()}
    if isinstance(s.get("properties"), dict) and "additionalProperties" not in s:
        out["additionalProperties"] = False
    if s.get("type") == "string" and not any(k in s for k in ("maxLength", "enum", "const", "pattern", "format")):
        low = s.get("minLength")
        out["maxLength"] = max(FREE_STRING_MAX, low if isinstance(low, int) and not isinstance(low, bool) else 0)
    if s.get("type") == "number" and not any(k in s for k in ("multipleOf", "enum", "const")):
        out["multipleOf"] = FREE_NUMBER_STEP
    return out


def _rebase(s: Any) -> Any:
    """Local ``$ref``s into the parameters' own root, moved under ``properties.arguments``."""
    if isinstance(s, list):
        return [_rebase(x) for x in s]
    if not isinstance(s, dict):
        return s
    out = {k: _rebase(v) for k, v in s.items()}
    ref = s.get("$ref")
    if isinstance(ref, str) and ref.startswith("#") and not ref.startswith(("#/$defs/", "#/definitions/")):
        out["$ref"] = "#/properties/arguments" + ref[1:]
    return out


def call_shape(fn: Function) -> dict[str, Any]:
    """The JSON Schema of one call of ``fn``: ``{"name": <fn.name>, "arguments": <parameters>}``.
    The parameters' ``$defs`` move to the shape's root, where their ``$ref``s resolve."""
    params = _rebase(_closed(fn.parameters))
    shape: dict[str, Any] = {"type": "object", "additionalProperties": False, "required": ["name", "arguments"]}
    for key in ("$defs", "definitions"):
        if key in params:
            shape[key] = params.pop(key)
    shape["properties"] = {"name": {"const": fn.name}, "arguments": params}
    return shape


def call_schema(functions: Iterable[Function]) -> dict[str, Any]:
    """What a constrained call must be, as one schema: an ``anyOf`` of the per-tool shapes."""
    return {"anyOf": [call_shape(f) for f in functions]}


def call_grammar(functions: Iterable[Function], syntax: Syntax) -> str:
    """An llguidance (Lark) grammar: opener, one of the per-tool shapes, closer."""
    shapes = [{**call_shape(f), "x-guidance": _GUIDANCE} for f in functions]
    rules = [f"c{i}: %json {json.dumps(s, ensure_ascii=False)}" for i, s in enumerate(shapes)]
    alts = " | ".join(f"c{i}" for i in range(len(shapes)))
    return "\n".join(["%llguidance {}", f"start: {json.dumps(syntax.opener)} call {json.dumps(syntax.closer)}",
                      f"call: {alts}", *rules]) + "\n"


# --- the prompt for templates without a tool format ----------------------------------------------


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: the text ones
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return "" if content is None else str(content)


def _arguments(raw: Any) -> Any:
    if isinstance(raw, str):
        try:
            return json.loads(raw)
        except ValueError:
            return raw
    return raw


def tools_prompt(functions: Iterable[Function]) -> str:
    """The system text that offers ``functions`` to a model whose template has no tool format."""
    listed = [{"name": f.name, "description": f.description, "parameters": f.parameters} for f in functions]
    return ("You can call functions to answer. They are listed as JSON between <tools> and </tools>:\n"
            f"<tools>{json.dumps(listed, ensure_ascii=False)}</tools>\n"
            "To call functions, reply with nothing else than:\n"
            '<tool_call>[{"name": "<function name>", "arguments": {"<parameter>": <value>}}]</tool_call>\n'
            "When a function result answers the question, or no function helps, reply in plain text.")


def fallback_messages(messages: list[Any], spec: ToolSpec | None) -> list[dict[str, Any]]:
    """``messages`` for a template without tools; every content a string. An assistant turn's calls
    become a sentence (not the tag syntax: a small model then copies that turn instead of reading
    the result) and a tool result a user turn that repeats the last question; with tools offered,
    they are listed in the system message."""
    out: list[dict[str, Any]] = []
    names: dict[str, str] = {}  # tool_call_id → function name, for the tool results
    question = ""
    for m in messages:
        if not isinstance(m, dict):
            continue
        role, text = m.get("role"), _text(m.get("content"))
        if role == "assistant" and m.get("tool_calls"):
            said = []
            for tc in m["tool_calls"]:
                fn = tc.get("function") if isinstance(tc, dict) else None
                if isinstance(fn, dict):
                    names[str(tc.get("id"))] = str(fn.get("name", ""))
                    args = json.dumps(_arguments(fn.get("arguments")), ensure_ascii=False)
                    said.append(f"I will call {fn.get('name')}({args}).")
            out.append({"role": "assistant", "content": " ".join(([text] if text else []) + said)})
        elif role == "tool":
            name = names.get(str(m.get("tool_call_id")), "the function")
            ask = f"\nUse this result to answer: {question}" if question else "\nUse this result to answer."
            out.append({"role": "user", "content": f"{name} returned: {text}{ask}"})
        else:
            question = text if role == "user" else question
            out.append({**m, "content": text})
    if spec is not None and spec.offered:
        block = tools_prompt(spec.functions)
        if out and out[0].get("role") == "system":
            out[0] = {**out[0], "content": f"{out[0]['content']}\n\n{block}" if out[0]["content"] else block}
        else:
            out.insert(0, {"role": "system", "content": block})
    return out


def needs_rewrite(messages: Any) -> bool:
    """The history holds calls or tool results (which a template without tools cannot render)."""
    return isinstance(messages, list) and any(
        isinstance(m, dict) and (m.get("role") == "tool" or m.get("tool_calls")) for m in messages)


def finish_reason(reason: str, has_calls: bool) -> str:
    """``tool_calls`` when a call ended the generation (a call cut by ``length`` stays ``length``)."""
    return "tool_calls" if has_calls and reason == "stop" else reason


def parse_text(text: str, spec: ToolSpec) -> list[Event]:
    """All the events of a finished generation."""
    p = ToolCallParser(spec.names, parallel=spec.parallel, bare=not spec.constrained)
    return p.feed(text) + p.finish()


class DeltaStream:
    """A streamed generation's deltas re-cut with the calls in them found: ``step`` takes each
    delta from the engine (its ``content`` is generated text), gives the deltas to send (OpenAI's:
    content, then per call ``index/id/type/function.name`` and ``function.arguments`` fragments)."""

    def __init__(self, spec: ToolSpec, new_id: Callable[[], str] = new_call_id) -> None:
        self.parser = ToolCallParser(spec.names, parallel=spec.parallel, bare=not spec.constrained, new_id=new_id)
        self.events: list[Event] = []

    def step(self, engine_delta: dict[str, Any], *, last: bool) -> list[dict[str, Any]]:
        rest = {k: v for k, v in engine_delta.items() if k not in ("content", "tool_calls")}
        text = engine_delta.get("content") or ""
        events = self.parser.feed(text) if text else []
        if last:
            events += self.parser.finish()
        self.events += events
        out = [{**(rest if i == 0 else {}), **delta(ev)} for i, ev in enumerate(events)]
        if not out and rest:
            out.append(rest)
        return out

    @property
    def has_calls(self) -> bool:
        return self.parser.calls > 0


def apply_to_body(body: dict[str, Any], spec: ToolSpec | None, *, native: bool) -> None:
    """Rewrite a llama.cpp chat body for ``spec``. Native templates get the tools through
    ``chat_template_kwargs`` (llama.cpp refuses a grammar beside ``tools``, and for these templates
    neither constrains nor parses calls itself) and render calls and tool results themselves;
    others get the tools in a system message and the history as text. A forced call gets the
    grammar (``response_format`` is then moot: there is no text) and, unless the request sets one,
    ``FORCED_TEMPERATURE``."""
    messages = body.get("messages")
    if spec is None or not spec.offered:
        if not native and needs_rewrite(messages):
            body["messages"] = fallback_messages(messages, None)
        return
    if native:
        body["chat_template_kwargs"] = {"tools": [f.declared() for f in spec.functions]}
    else:
        body["messages"] = fallback_messages(messages if isinstance(messages, list) else [], spec)
    if spec.constrained:
        fns = [f for f in spec.functions if spec.forced in (None, f.name)]
        body["grammar"] = call_grammar(fns, NATIVE if native else FALLBACK)
        body.pop("response_format", None)
        body.setdefault("temperature", FORCED_TEMPERATURE)
