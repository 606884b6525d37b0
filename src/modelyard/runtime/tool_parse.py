"""Reading tool calls out of a model's generated text, incrementally (the pure part of
``runtime/tool_calls.py`` that parses; docs/design/tool-calls.md).

One parser serves streaming and non-streaming alike: a finished generation is fed as one piece.
It knows the ``<tool_call>`` syntax in both forms modelyard uses (an object per tag, or a JSON
array of calls in one tag), and, for ``tool_choice: "auto"``, an answer that is nothing but a call
written as bare or fenced JSON.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

TAG, END = "<tool_call>", "</tool_call>"


class Event(NamedTuple):
    kind: str  # "content" | "call" (a call starts: id, name) | "args" (a fragment of its arguments)
    text: str = ""
    index: int = 0
    id: str = ""


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


_HEAD = re.compile(r'\{\s*"name"\s*:\s*("(?:[^"\\]|\\.)*")\s*,\s*"arguments"\s*:\s*(?=\{)')
_BARE = ("{", "```json", "```\n{", "[{")  # an auto answer that may be nothing but a call, without tags
_FENCE = re.compile(r"^\s*(?:```(?:json)?\s*)?(.*?)\s*(?:```)?\s*$", re.S)


class ToolCallParser:
    """Finds calls in generated text, piece by piece: ``feed`` each piece, then ``finish``; both
    return ``Event``s. Text outside calls is content (whitespace before a call is dropped). A
    call's name is known as soon as its ``"arguments":`` starts, and its arguments then stream as
    they are generated. ``bare``: an answer that is nothing but a call written without the tags
    (bare or fenced JSON naming a declared function, as Qwen2.5-Coder likes to write it) counts
    too; text that starts like one is held back until the end. ``parallel=False`` keeps only the
    first call. A block that is not a call of a declared function stays text."""

    def __init__(self, names: frozenset[str], *, parallel: bool = True, bare: bool = True,
                 new_id: Callable[[], str] = new_call_id) -> None:
        self.names, self.parallel, self.new_id = names, parallel, new_id
        self.text, self.pos = "", 0
        self.state = "start" if bare else "text"
        self.calls = 0
        self.content_sent = False
        self._ws = ""  # whitespace content held back (dropped if a call follows)
        self._listed = False
        self._tag_at = 0
        self._cur: _Obj | None = None
        self._out: list[Event] = []
        self._states = {"start": self._s_start, "hold": self._s_hold, "text": self._s_text, "open": self._s_open,
                        "obj": self._s_obj, "after": self._s_after, "done": lambda final: False}

    def feed(self, piece: str) -> list[Event]:
        self.text += piece
        return self._run(final=False)

    def finish(self) -> list[Event]:
        out = self._run(final=True)
        if self._ws and not self.calls:
            out.append(Event("content", self._ws))
        self._ws = ""
        return out

    def _run(self, *, final: bool) -> list[Event]:
        while self._states[self.state](final):
            pass
        out, self._out = self._out, []
        return out

    def _content(self, t: str) -> None:
        if not t:
            return
        body = t.rstrip()
        if body:  # trailing whitespace waits: dropped if a call comes next
            self._out.append(Event("content", self._ws + body))
            self._ws, self.content_sent = "", True
        self._ws += t[len(body):]

    def _call(self, name: str) -> int | None:
        if self.calls and not self.parallel:
            return None
        self.calls += 1
        self._ws = ""
        self._out.append(Event("call", name, self.calls - 1, self.new_id()))
        return self.calls - 1

    def _s_start(self, final: bool) -> bool:
        s = self.text[self.pos:].lstrip()
        if s and any(s.startswith(c) for c in _BARE):
            self.state = "hold"
        elif final or (s and not any(c.startswith(s) for c in _BARE)):
            self.state = "text"
        else:
            return False
        return True

    def _s_hold(self, final: bool) -> bool:
        if not final:
            return False
        raw = self.text[self.pos:]
        self.pos, self.state = len(self.text), "done"
        calls = _bare_calls(raw, self.names)
        if calls is None:
            self._content(raw)
        for name, args in calls or []:
            i = self._call(name)
            if i is not None:
                self._out.append(Event("args", args, i))
        return False

    def _s_text(self, final: bool) -> bool:
        at = self.text.find(TAG, self.pos)
        if at >= 0:
            self._content(self.text[self.pos:at])
            self._tag_at, self.pos, self.state = at, at + len(TAG), "open"
            return True
        end = len(self.text) - (0 if final else _partial_suffix(self.text, self.pos, TAG))
        self._content(self.text[self.pos:end])
        self.pos = end
        return False

    def _skip_ws(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def _s_open(self, final: bool) -> bool:
        self._skip_ws()
        if self.pos >= len(self.text):
            if final:
                self._content(self.text[self._tag_at:])
            return False
        c = self.text[self.pos]
        if c == "[" and not self._listed:
            self._listed, self.pos = True, self.pos + 1
            return True
        if c == "{":
            self._cur, self.state = _Obj(self.pos), "obj"
            return True
        self._not_a_call(self.pos)
        return True

    def _s_obj(self, final: bool) -> bool:
        o = self._cur
        assert o is not None
        o.scan(self.text)
        if not o.head_seen:
            m = _HEAD.match(self.text, o.start)
            if m:
                o.head_seen = True
                name = json.loads(m.group(1))
                if name in self.names:
                    o.call = self._call(name)
                    o.args_start = o.args_sent = m.end()
        if o.call is not None:
            end = o.args_end() or len(self.text)
            if end > o.args_sent:
                self._out.append(Event("args", self.text[o.args_sent:end], o.call))
                o.args_sent = end
        if o.end is None:
            if final and o.call is None:
                self._content(self.text[self._tag_at:])
            return False
        self.pos, self.state = o.end, "after"
        if o.call is None:
            parsed = _one_call(self.text[o.start:o.end], self.names)
            if parsed is None:
                self._not_a_call(o.end)
            elif (i := self._call(parsed[0])) is not None:
                self._out.append(Event("args", parsed[1], i))
        return True

    def _not_a_call(self, upto: int) -> None:
        """The block from the last tag to ``upto`` is no call: text, and so is what follows."""
        self._content(self.text[self._tag_at:upto])
        self.pos, self._listed, self.state = upto, False, "text"

    def _s_after(self, final: bool) -> bool:
        self._skip_ws()
        rest = self.text[self.pos:]
        if not rest:
            return False
        if self._listed and rest[0] == ",":
            self.pos, self.state = self.pos + 1, "open"
            return True
        if self._listed and rest[0] == "]":
            self.pos, self._listed = self.pos + 1, False
            return True
        if rest.startswith(END):
            self.pos += len(END)
        elif END.startswith(rest) and not final:
            return False
        self._listed, self.state = False, "text"
        return True


class _Obj:
    """A JSON object being generated: where it starts and ends, where its ``arguments`` end."""

    def __init__(self, start: int) -> None:
        self.start, self.i = start, start
        self.depth, self.in_str, self.esc = 0, False, False
        self.end: int | None = None
        self.closes: list[int] = []  # just after each "}"/"]" that brought the depth back to 1
        self.head_seen = False
        self.call: int | None = None
        self.args_start = self.args_sent = -1

    def scan(self, text: str) -> None:
        while self.end is None and self.i < len(text):
            c = text[self.i]
            self.i += 1
            if self.in_str:
                if self.esc:
                    self.esc = False
                elif c == "\\":
                    self.esc = True
                elif c == '"':
                    self.in_str = False
            elif c == '"':
                self.in_str = True
            elif c in "{[":
                self.depth += 1
            elif c in "}]":
                self.depth -= 1
                if self.depth == 1:
                    self.closes.append(self.i)
                elif self.depth == 0:
                    self.end = self.i

    def args_end(self) -> int | None:
        return next((c for c in self.closes if c > self.args_start), None)


def _partial_suffix(text: str, start: int, tag: str) -> int:
    """Length of the longest end of ``text[start:]`` that could be the start of ``tag``."""
    for n in range(min(len(tag) - 1, len(text) - start), 0, -1):
        if tag.startswith(text[len(text) - n:]):
            return n
    return 0


def _as_call(obj: Any, names: frozenset[str]) -> tuple[str, str] | None:
    if not isinstance(obj, dict) or obj.get("name") not in names:
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except ValueError:
            return None
    if not isinstance(args, dict):
        return None
    return obj["name"], json.dumps(args, ensure_ascii=False)


def _one_call(raw: str, names: frozenset[str]) -> tuple[str, str] | None:
    try:
        return _as_call(json.loads(raw), names)
    except ValueError:
        return None


def _bare_calls(raw: str, names: frozenset[str]) -> list[tuple[str, str]] | None:
    m = _FENCE.match(raw)
    try:
        obj = json.loads(m.group(1) if m else raw)
    except ValueError:
        return None
    items = obj if isinstance(obj, list) and obj else [obj]
    calls = [_as_call(x, names) for x in items]
    return None if any(c is None for c in calls) else [c for c in calls if c is not None]


# --- OpenAI shapes ------------------------------------------------------------------------------


def delta(ev: Event) -> dict[str, Any]:
    """One event as a ``chat.completion.chunk`` delta."""
    if ev.kind == "content":
        return {"content": ev.text}
    if ev.kind == "call":
        return {"tool_calls": [{"index": ev.index, "id": ev.id, "type": "function",
                                "function": {"name": ev.text, "arguments": ""}}]}
    return {"tool_calls": [{"index": ev.index, "function": {"arguments": ev.text}}]}


def message(events: Iterable[Event]) -> dict[str, Any]:
    """The assistant message the events make (what the SDK assembles from the deltas)."""
    content: list[str] = []
    calls: list[dict[str, Any]] = []
    for ev in events:
        if ev.kind == "content":
            content.append(ev.text)
        elif ev.kind == "call":
            calls.append({"id": ev.id, "type": "function", "function": {"name": ev.text, "arguments": ""}})
        else:
            calls[ev.index]["function"]["arguments"] += ev.text
    msg: dict[str, Any] = {"role": "assistant", "content": "".join(content) or None, "refusal": None}
    if calls:
        msg["tool_calls"] = calls
    return msg
