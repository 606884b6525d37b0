"""Chat completion chunks → the Responses API's typed stream events. PURE (times passed in).

One ``StreamTranslator`` per response. ``start()`` gives ``response.created`` and
``response.in_progress``; ``feed(chunk)`` each chat chunk's events (a message item opened at the
first text, ``response.output_text.delta`` per text delta; a ``function_call`` item per tool call
with ``response.function_call_arguments.delta`` fragments); ``end(now)`` closes the open items and
gives ``response.completed`` (``response.incomplete`` when the model hit its token cap), and
``fail(code, message)`` the ``error`` event and ``response.failed``. Every event carries its
``sequence_number``; the final response is ``self.response``.
"""

from __future__ import annotations

from typing import Any

from modelyard.responses.translate import call_item, failed, finish, message_item, new_id

Event = dict[str, Any]


class StreamTranslator:
    def __init__(self, response: dict[str, Any]) -> None:
        self.response = response
        self._seq = 0
        self._output: list[dict[str, Any]] = []
        self._msg: dict[str, Any] | None = None  # the open message item
        self._text: list[str] = []
        self._calls: dict[int, dict[str, Any]] = {}  # chat tool call index → open function_call item
        self._args: dict[int, list[str]] = {}
        self._finish: Any = None
        self._usage: Any = None
        self.done = False

    def _ev(self, kind: str, **fields: Any) -> Event:
        ev = {"type": kind, "sequence_number": self._seq, **fields}
        self._seq += 1
        return ev

    def _snapshot(self) -> dict[str, Any]:
        return {**self.response, "output": [dict(o) for o in self._output]}

    def start(self) -> list[Event]:
        return [self._ev("response.created", response=self._snapshot()),
                self._ev("response.in_progress", response=self._snapshot())]

    def feed(self, chunk: dict[str, Any]) -> list[Event]:
        out: list[Event] = []
        if chunk.get("usage"):
            self._usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue  # n > 1 has no Responses counterpart: the first choice is the answer
            delta = choice.get("delta") or {}
            text = delta.get("content")
            if isinstance(text, str) and text:
                out.extend(self._text_delta(text))
            for call in delta.get("tool_calls") or ():
                out.extend(self._call_delta(call))
            if choice.get("finish_reason") is not None:
                self._finish = choice["finish_reason"]
        return out

    def _text_delta(self, text: str) -> list[Event]:
        out = []
        if self._msg is None:
            self._msg = message_item(new_id("msg"), "", status="in_progress")
            self._msg["content"] = []
            self._output.append(self._msg)
            idx = len(self._output) - 1
            out.append(self._ev("response.output_item.added", output_index=idx, item=dict(self._msg, content=[])))
            out.append(self._ev("response.content_part.added", item_id=self._msg["id"], output_index=idx,
                                content_index=0, part=_part("")))
        self._text.append(text)
        out.append(self._ev("response.output_text.delta", item_id=self._msg["id"], output_index=self._index(self._msg),
                            content_index=0, delta=text, logprobs=[]))
        return out

    def _close_message(self) -> list[Event]:
        msg = self._msg
        if msg is None:
            return []
        self._msg = None
        text = "".join(self._text)
        idx = self._index(msg)
        msg["content"] = [_part(text)]
        msg["status"] = "completed"
        return [self._ev("response.output_text.done", item_id=msg["id"], output_index=idx, content_index=0,
                         text=text, logprobs=[]),
                self._ev("response.content_part.done", item_id=msg["id"], output_index=idx, content_index=0,
                         part=_part(text)),
                self._ev("response.output_item.done", output_index=idx, item=dict(msg))]

    def _call_delta(self, call: dict[str, Any]) -> list[Event]:
        out: list[Event] = []
        index = call.get("index", 0)
        fn = call.get("function") or {}
        item = self._calls.get(index)
        if item is None:
            out.extend(self._close_message())
            item = call_item(new_id("fc"), call.get("id") or new_id("call"), fn.get("name") or "", "",
                             status="in_progress")
            self._calls[index] = item
            self._args[index] = []
            self._output.append(item)
            out.append(self._ev("response.output_item.added", output_index=self._index(item), item=dict(item)))
        elif fn.get("name"):
            item["name"] += fn["name"]
        frag = fn.get("arguments")
        if isinstance(frag, str) and frag:
            self._args[index].append(frag)
            out.append(self._ev("response.function_call_arguments.delta", item_id=item["id"],
                                output_index=self._index(item), delta=frag))
        return out

    def _close_calls(self) -> list[Event]:
        out = []
        for index, item in self._calls.items():
            args = "".join(self._args[index])
            item["arguments"] = args
            item["status"] = "completed"
            idx = self._index(item)
            out.append(self._ev("response.function_call_arguments.done", item_id=item["id"], name=item["name"],
                                output_index=idx, arguments=args))
            out.append(self._ev("response.output_item.done", output_index=idx, item=dict(item)))
        self._calls = {}
        return out

    def _index(self, item: dict[str, Any]) -> int:
        return next(i for i, o in enumerate(self._output) if o is item)

    def end(self, now: int) -> list[Event]:
        out = self._close_message() + self._close_calls()
        finish(self.response, [dict(o) for o in self._output], self._finish, self._usage, now)
        self.done = True
        kind = "response.incomplete" if self.response["status"] == "incomplete" else "response.completed"
        out.append(self._ev(kind, response=self.response))
        return out

    def fail(self, code: str, message: str, param: str | None = None) -> list[Event]:
        self.response["output"] = [dict(o) for o in self._output]
        failed(self.response, code, message)
        self.done = True
        return [self._ev("error", code=code, message=message, param=param),
                self._ev("response.failed", response=self.response)]


def _part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
