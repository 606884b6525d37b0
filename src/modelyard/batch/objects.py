"""Rows → OpenAI's objects: ``OpenAIFile``, ``Batch`` (shared/specs/openai-openapi.yaml).

Times are whole Unix seconds. A ``Batch`` field with no value (``failed_at`` of a batch that did
not fail, no ``error_file_id``, ...) is left out rather than sent as ``null``: the spec types these
as plain integers/strings, and the SDK reads a missing field as ``None`` all the same.
"""

from __future__ import annotations

from typing import Any

from modelyard.batch import states
from modelyard.batch.store import FileRow


def _s(us: int | None) -> int | None:
    return None if us is None else int(us // 1_000_000)


def file_object(f: FileRow) -> dict[str, Any]:
    out: dict[str, Any] = {"id": f.id, "object": "file", "bytes": f.bytes, "created_at": _s(f.created_us),
                           "filename": f.filename, "purpose": f.purpose, "status": "processed"}
    if f.expires_us is not None:
        out["expires_at"] = _s(f.expires_us)
    return out


def batch_object(b: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": b["id"], "object": "batch", "endpoint": b["endpoint"], "input_file_id": b["input_file_id"],
        "completion_window": b["completion_window"], "status": b["status"], "created_at": _s(b["created_us"]),
        "expires_at": _s(b["expires_us"]),
        "request_counts": {"total": int(b["total"] or 0), "completed": int(b["completed"] or 0),
                           "failed": int(b["failed"] or 0)},
    }
    for state, col in states.STAMP.items():
        if b.get(col) is not None:
            out[f"{state}_at"] = _s(b[col])
    for k in ("model", "output_file_id", "error_file_id"):
        if b.get(k):
            out[k] = b[k]
    if b.get("errors"):
        out["errors"] = {"object": "list", "data": list(b["errors"])}
    tin, tout = int(b.get("input_tokens") or 0), int(b.get("output_tokens") or 0)
    out["usage"] = {"input_tokens": tin, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": tout,
                    "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": tin + tout}
    out["metadata"] = b.get("metadata")
    return out
