"""PURE: a batch input file's lines → items to run, bad lines to report, and reasons to fail the batch.

An input line is ``{"custom_id": str, "method": "POST", "url": <the batch's endpoint>, "body": {...}}``
(OpenAI's request input object). Decisions, each for a reason:

- A line that is not JSON, not an object, has no string ``custom_id``, another ``method`` or ``url``
  than the batch's, or a ``body`` that is not an object is **reported on its own line** of the error
  file (``response`` null, ``error`` with a code and the line number) and counted failed; the other
  lines run. One bad line among 10,000 should not cost the other 9,999.
- A ``custom_id`` that appears twice **fails the whole batch** at validation (status ``failed``,
  ``errors`` naming each duplicate's line), as OpenAI does: results are matched to requests by
  ``custom_id``, so two lines with one id make the output ambiguous.
- Blank lines are skipped (a trailing newline, an empty line between requests); a file with no
  request at all, or more than ``max_requests``, fails the batch.

What the body asks for (its model, its fields) is checked when the item runs, by the same
validators as the interactive endpoint, so an invalid body is a 400 response line, as OpenAI's.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

ENDPOINTS = ("/v1/chat/completions", "/v1/embeddings", "/v1/responses")
MAX_REPORTED = 100  # batch-level errors listed (duplicates past this are counted in the message)


@dataclass(frozen=True, slots=True)
class Item:
    line: int  # 1-based line number in the input file
    custom_id: str
    model: str | None
    body: dict[str, Any]


@dataclass(frozen=True, slots=True)
class BadLine:
    line: int
    custom_id: str | None
    code: str
    message: str


@dataclass(slots=True)
class Parsed:
    items: list[Item] = field(default_factory=list)
    bad: list[BadLine] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)  # BatchError objects: the batch fails

    @property
    def total(self) -> int:
        return len(self.items) + len(self.bad)


def _bad(n: int, cid: Any, code: str, message: str) -> BadLine:
    return BadLine(n, cid if isinstance(cid, str) else None, code, f"line {n}: {message}")


def parse_line(n: int, raw: bytes, endpoint: str) -> Item | BadLine:
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return _bad(n, None, "invalid_json", f"not valid JSON ({exc})")
    if not isinstance(obj, dict):
        return _bad(n, None, "invalid_request", "a request line must be a JSON object")
    cid = obj.get("custom_id")
    if not isinstance(cid, str) or not cid:
        return _bad(n, None, "missing_custom_id", "custom_id must be a non-empty string")
    if len(cid) > 512:
        return _bad(n, None, "invalid_custom_id", "custom_id is longer than 512 characters")
    method = obj.get("method", "POST")
    if method != "POST":
        return _bad(n, cid, "invalid_method", f"method must be 'POST', got {str(method)[:32]!r}")
    url = obj.get("url")
    if url != endpoint:
        return _bad(n, cid, "mismatched_url", f"url {str(url)[:100]!r} is not the batch's endpoint {endpoint!r}")
    body = obj.get("body")
    if not isinstance(body, dict):
        return _bad(n, cid, "invalid_body", "body must be a JSON object (the request to send)")
    model = body.get("model")
    return Item(n, cid, model if isinstance(model, str) else None, body)


def parse_input(lines: Iterable[bytes], endpoint: str, *, max_requests: int) -> Parsed:
    """Every line of the input file (without or with its newline), numbered from 1."""
    out = Parsed()
    first_line: dict[str, int] = {}
    duplicates = 0
    for n, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        if out.total >= max_requests:
            out.errors = [{"code": "too_many_requests", "line": n, "param": None,
                           "message": f"the file has more than {max_requests} requests (batch.max_requests)"}]
            return out
        parsed = parse_line(n, raw, endpoint)
        if isinstance(parsed, BadLine):
            out.bad.append(parsed)
            continue
        seen = first_line.get(parsed.custom_id)
        if seen is not None:
            duplicates += 1
            if len(out.errors) < MAX_REPORTED:
                out.errors.append({"code": "duplicate_custom_id", "line": n, "param": "custom_id",
                                   "message": f"line {n}: custom_id {parsed.custom_id[:100]!r} was already used on line {seen}"})
            continue
        first_line[parsed.custom_id] = n
        out.items.append(parsed)
    if duplicates > MAX_REPORTED:
        out.errors.append({"code": "duplicate_custom_id", "line": None, "param": "custom_id",
                           "message": f"{duplicates} lines repeat an earlier custom_id ({MAX_REPORTED} listed)"})
    if not out.total and not out.errors:
        out.errors.append({"code": "empty_file", "line": None, "param": "input_file_id",
                           "message": "the input file has no requests"})
    return out


def item_id(batch_id: str, line: int) -> str:
    """The output line's ``id`` (also the item's request id and spend row id): stable across re-runs."""
    return "batch_req_" + hashlib.sha256(f"{batch_id}:{line}".encode()).hexdigest()[:32]


def output_line(batch_id: str, line: int, custom_id: str | None, status: int, body: Any) -> dict[str, Any]:
    rid = item_id(batch_id, line)
    return {"id": rid, "custom_id": custom_id,
            "response": {"status_code": status, "request_id": rid, "body": body}, "error": None}


def error_line(batch_id: str, line: int, custom_id: str | None, code: str, message: str) -> dict[str, Any]:
    return {"id": item_id(batch_id, line), "custom_id": custom_id, "response": None,
            "error": {"code": code, "message": message}}


def is_success(result: dict[str, Any]) -> bool:
    """An output line for the output file (a 2xx response); else it belongs to the error file."""
    resp = result.get("response")
    return isinstance(resp, dict) and 200 <= int(resp.get("status_code") or 0) < 300
