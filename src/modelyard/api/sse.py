"""The one SSE codec: relays an upstream event stream event by event, and encodes error frames.

The relay forwards each complete event as soon as it has arrived (never re-serialising it), and on
the way notes what the gateway needs: the moment of the first content (time to first token) and
the ``usage`` chunk. When modelyard asked the upstream for usage on the client's behalf
(``stream_options.include_usage``), the usage-only chunk is kept from the client, who did not ask
for it. Chat chunks before the first content may be rewritten: each choice's first one gets
``"role": "assistant"`` and ``"content": ""`` as OpenAI's has (llama.cpp's servers send ``null``).
"""

from __future__ import annotations

from typing import Any

import orjson

from modelyard.errors import ModelyardError

DONE = b"data: [DONE]\n\n"


def error_event(exc: ModelyardError) -> bytes:
    """An SSE frame carrying an OpenAI error object; the openai SDK raises ``APIError`` on it."""
    return b"data: " + exc.to_json() + b"\n\n"


class SSERelay:
    __slots__ = ("_buf", "_strip_usage", "usage", "first_content", "content_events", "saw_done", "_opened")

    def __init__(self, *, strip_usage: bool) -> None:
        self._buf = b""
        self._strip_usage = strip_usage
        self.usage: dict[str, Any] | None = None
        self.first_content = False  # set once an event carrying generated content went out
        self.content_events = 0
        self.saw_done = False
        self._opened: set[int] = set()  # choice indexes whose first chunk went out

    def feed(self, chunk: bytes) -> bytes:
        """Take upstream bytes; return the complete events to forward now (maybe empty)."""
        buf = self._buf + chunk if self._buf else chunk
        if b"\r" in buf:  # normalise the joined buffer: a chunk may end between \r and \n
            buf = buf.replace(b"\r\n", b"\n")
        end = buf.rfind(b"\n\n")
        if end < 0:
            self._buf = buf
            return b""
        self._buf = buf[end + 2 :]
        complete = buf[: end + 2]
        if not self._strip_usage and self.first_content and b'"usage":{' not in complete and b'"usage": {' not in complete:
            # Fast path: nothing to inspect in these events beyond counting them.
            done = b"data: [DONE]" in complete
            self.content_events += complete.count(b"data:") - done  # one data line per event
            if done:
                self.saw_done = True
            return complete
        out: list[bytes] = []
        for event in complete.split(b"\n\n"):
            if not event:
                continue
            kept = self._inspect(event)
            if kept is not None:
                out.append(kept + b"\n\n")
        return b"".join(out)

    def flush(self) -> bytes:
        """Whatever is left when the upstream closed (a last event without its blank line)."""
        rest, self._buf = self._buf, b""
        if rest.strip():
            kept = self._inspect(rest.rstrip(b"\n"))
            if kept is not None:
                return kept + b"\n\n"
        return b""

    def _open(self, choices: list[Any]) -> bool:
        """Make a choice's first chat chunk carry ``"role": "assistant"`` and ``"content": ""`` as
        OpenAI's does (llama.cpp sends ``"content": null``, or no role at all when the first tokens
        decode to no text; clients that print ``delta.content`` printed None). In place; True if
        anything changed. A delta with tool calls keeps its null content."""
        changed = False
        for ch in choices:
            delta = ch.get("delta") if isinstance(ch, dict) else None
            index = ch.get("index", 0) if isinstance(ch, dict) else None
            if not isinstance(delta, dict) or not isinstance(index, int) or index in self._opened:
                continue
            self._opened.add(index)
            if "role" not in delta:
                delta["role"] = "assistant"
                changed = True
            if delta.get("content") is None and not delta.get("tool_calls") and not delta.get("function_call"):
                delta["content"] = ""
                changed = True
        return changed

    def _inspect(self, event: bytes) -> bytes | None:
        """Record what this event says; return the event to forward (None: keep it back)."""
        data = _data_of(event)
        if data is None:
            return event  # a comment or another field: pass it on
        if data == b"[DONE]":
            self.saw_done = True
            return event
        has_usage = b'"usage"' in data and b'"usage":null' not in data and b'"usage": null' not in data
        if not has_usage and self.first_content:
            self.content_events += 1
            return event
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            return event
        if not isinstance(obj, dict):
            return event
        choices = obj.get("choices")
        if choices:
            self.content_events += 1
            if not self.first_content:
                if _has_content(choices):
                    self.first_content = True
                elif self._open(choices):  # llama.cpp's {"role": "assistant", "content": null}
                    event = b"data: " + orjson.dumps(obj)
        usage = obj.get("usage")
        kind = obj.get("type")
        if kind is not None and not choices:  # a Responses API event (an upstream that speaks it natively)
            if kind == "response.output_text.delta":
                self.first_content = True
            elif kind in ("response.completed", "response.incomplete", "response.failed"):
                resp = obj.get("response")
                usage = resp.get("usage") if isinstance(resp, dict) else None
                if isinstance(usage, dict):
                    self.usage = usage
                return event
        if isinstance(usage, dict):
            self.usage = usage
            if self._strip_usage and not choices:
                return None
        return event


def _data_of(event: bytes) -> bytes | None:
    """The joined ``data:`` lines of one event, or None when it has none."""
    if event.startswith(b"data:") and b"\n" not in event:
        return event[5:].lstrip(b" ")
    lines = [ln[5:].lstrip(b" ") for ln in event.split(b"\n") if ln.startswith(b"data:")]
    return b"\n".join(lines) if lines else None


def _has_content(choices: list[Any]) -> bool:
    for ch in choices:
        if not isinstance(ch, dict):
            continue
        delta = ch.get("delta")
        if isinstance(delta, dict) and (delta.get("content") or delta.get("tool_calls") or delta.get("reasoning_content")):
            return True
        if ch.get("text"):
            return True
    return False
