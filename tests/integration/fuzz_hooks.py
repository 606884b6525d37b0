"""Schemathesis hooks and a check for tests/integration/test_fuzz_api.py (SCHEMATHESIS_HOOKS=fuzz_hooks).

**Steering.** OpenAI's schemas make ``model`` any string, so almost every generated request would
name a model the gateway does not serve and stop at a 404, before validation of the rest, the
router, the upstream and the response relay. The hooks put a served model (from
``$MODELYARD_FUZZ_MODELS``: ``{path: [model, ...]}``, ``"*"`` for path parameters) into most
generated bodies and ``{model}`` path parameters, chosen deterministically from the generated
value so that Hypothesis can replay and shrink a failure. A quarter keep the generated name (404s
stay fuzzed); a ``model`` that is not a string stays as generated (type errors stay fuzzed). A
third of the steered chat and completion bodies without ``stream`` get ``"stream": true``: the
field is optional and mostly left out, so streams would be rare.
For the models in ``$MODELYARD_FUZZ_BOUNDED`` (real local models: every token costs CPU time)
``max_tokens``/``max_completion_tokens`` are at most 8 and ``n`` at most 2, only where the generated
value is such an integer already (invalid values still reach the gateway as generated).

**Reach.** The ``modelyard_reach`` check fails the run when an operation of ``MUST_ANSWER`` never
answered 200, or no chat stream was seen: a fuzz that only ever saw 404s tested nothing.
"""

from __future__ import annotations

import json
import os
import zlib
from typing import Any

import schemathesis

_MODELS: dict[str, list[str]] = json.loads(os.environ.get("MODELYARD_FUZZ_MODELS", "{}"))
_BOUNDED = set(json.loads(os.environ.get("MODELYARD_FUZZ_BOUNDED", "[]")))
_STREAMED = ("/v1/chat/completions", "/v1/completions")
MUST_ANSWER = ("POST /v1/chat/completions", "POST /v1/completions", "POST /v1/embeddings", "POST /v1/moderations",
               "POST /v1/classifications", "GET /v1/models/{model}", "GET /admin/models", "POST /key/generate",
               "GET /spend/logs", "GET /spend/report")


def _pick(names: list[str], generated: str) -> str | None:
    h = zlib.crc32(generated.encode("utf-8", "surrogatepass"))
    return None if h % 4 == 0 else names[(h >> 2) % len(names)]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@schemathesis.hook
def map_body(context: schemathesis.HookContext, body: Any) -> Any:
    op = context.operation
    names = _MODELS.get(op.path) if op is not None else None
    if not names or not isinstance(body, dict) or not isinstance(body.get("model"), str):
        return body
    chosen = _pick(names, body["model"])
    if chosen is None:
        return body
    body = {**body, "model": chosen}
    if "stream" not in body and op.path in _STREAMED and zlib.crc32(chosen.encode() + repr(body).encode()) % 3 == 0:
        body["stream"] = True  # rare in generated bodies (an optional field, mostly left out)
    if chosen in _BOUNDED:
        for key in ("max_tokens", "max_completion_tokens"):
            if _is_int(body.get(key)) and body[key] > 8:
                body[key] = 8
        if body.get("max_tokens") is None and body.get("max_completion_tokens") is None:
            body["max_tokens"] = 8
        if _is_int(body.get("n")) and body["n"] > 2:
            body["n"] = 2
    return body


@schemathesis.hook
def map_path_parameters(context: schemathesis.HookContext, path_parameters: dict[str, Any]) -> dict[str, Any]:
    names = _MODELS.get("*")
    if not names or not isinstance(path_parameters, dict) or not isinstance(path_parameters.get("model"), str):
        return path_parameters
    chosen = _pick(names, path_parameters["model"])
    return path_parameters if chosen is None else {**path_parameters, "model": chosen}


@schemathesis.check
class modelyard_reach:  # noqa: N801 - the check's name on the command line
    """Fail the run if a model endpoint never answered 200 or no chat stream was seen."""

    def __init__(self) -> None:
        self.ok: set[str] = set()
        self.seen: set[str] = set()
        self.streamed = False

    def after_response(self, ctx: Any, response: Any, case: Any) -> None:
        label = case.operation.label
        self.seen.add(label)
        if response.status_code == 200:
            self.ok.add(label)
            ctype = (response.headers.get("content-type") or [""])[0]
            if label == "POST /v1/chat/completions" and ctype.startswith("text/event-stream"):
                self.streamed = True

    def after_run(self, ctx: Any) -> None:
        missing = [label for label in MUST_ANSWER if label not in self.ok]
        if missing:
            raise AssertionError(f"never answered 200 (the fuzz did not reach them): {missing}")
        if not self.streamed:
            raise AssertionError("no chat stream was answered: the SSE relay was not fuzzed")
