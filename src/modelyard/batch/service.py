"""The Batch API's operations (files and batches), behind the thin routes of ``api/batch_routes.py``.

Owner of a file or batch: the caller's virtual key id, ``"master"`` for the master key, ``None`` on a
server without keys. Reads are scoped to the owner (the master key reads every key's); another
key's id answers 404 exactly as an unknown id does.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator, Callable
from typing import Any

from modelyard.batch import states
from modelyard.batch.blobs import Blobs
from modelyard.batch.jsonl import ENDPOINTS
from modelyard.batch.multipart import Data, MultipartError, Parser, PartEnd, PartStart, boundary_of
from modelyard.batch.objects import batch_object, file_object
from modelyard.batch.runner import Runner
from modelyard.batch.store import ANY, BatchStore, FileRow
from modelyard.config.batch import BatchAPIConfig
from modelyard.db import Database
from modelyard.errors import InvalidRequestError, ModelyardError, NotFoundError, PayloadTooLargeError

log = logging.getLogger("modelyard.batch")
PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
WINDOW_S = 24 * 3600
MAX_TEXT_FIELD = 1024


class ConflictError(InvalidRequestError):
    status = 409
    code = "batch_not_cancellable"


def owner_of(principal: Any) -> str | None:
    """The id stored with what this caller creates."""
    return principal.key_id if principal is not None else None


def reader_of(principal: Any) -> Any:
    """What this caller may read: the master key everything, a key its own, no keys: the anonymous one's."""
    if principal is not None and principal.admin and principal.key is None:
        return ANY
    return owner_of(principal)


def _new_id(prefix: str) -> str:
    return prefix + secrets.token_hex(12)


class BatchService:
    def __init__(self, cfg: BatchAPIConfig, store: BatchStore, blobs: Blobs, runner: Runner, *,
                 now_us: Callable[[], int], owned_db: Database | None = None) -> None:
        self.cfg = cfg
        self.store = store
        self.blobs = blobs
        self.runner = runner
        self._now_us = now_us
        self._owned_db = owned_db  # a database of its own when the gateway has none (no spend, no keys)
        if owned_db is not None:
            runner._owned_db_start = owned_db.start  # retried by the runner if it failed at start

    async def start(self) -> None:
        if self._owned_db is not None:
            try:
                await self._owned_db.start()
            except ModelyardError as exc:  # the runner retries (and logs) until the database answers
                log.error("batch database unavailable at start: %s", exc.message)
        self.runner.start()

    async def aclose(self) -> None:
        await self.runner.aclose()
        if self._owned_db is not None:
            await self._owned_db.aclose()

    # --- files ---------------------------------------------------------------------------------
    async def upload(self, principal: Any, content_type: str | None, content_length: int | None,
                     chunks: AsyncIterator[bytes]) -> dict[str, Any]:
        limit = self.cfg.max_file_bytes
        if content_length is not None and content_length > limit + 64 * 1024:
            raise PayloadTooLargeError(f"the upload is {content_length} bytes; the limit is {limit} bytes "
                                       "(batch.max_file_bytes)", param="file")
        parser = Parser(boundary_of(content_type))
        fields: dict[str, str] = {}
        current: PartStart | None = None
        text = bytearray()
        tmp = fh = None
        filename = None
        size = 0
        try:
            async for chunk in chunks:
                for ev in parser.feed(chunk):
                    if isinstance(ev, PartStart):
                        current, text = ev, bytearray()
                        if ev.name == "file":
                            if tmp is not None:
                                raise MultipartError("the upload has two file parts", param="file")
                            tmp, fh = self.blobs.open_temp()
                            filename = ev.filename or "upload.jsonl"
                    elif isinstance(ev, Data):
                        assert current is not None
                        if current.name == "file":
                            size += len(ev.data)
                            if size > limit:
                                raise PayloadTooLargeError(f"the file exceeds the limit of {limit} bytes "
                                                           "(batch.max_file_bytes)", param="file")
                            assert fh is not None
                            fh.write(ev.data)
                        else:
                            text += ev.data
                            if len(text) > MAX_TEXT_FIELD:
                                raise InvalidRequestError(f"{current.name}: longer than {MAX_TEXT_FIELD} bytes",
                                                          param=current.name)
                    elif isinstance(ev, PartEnd):
                        assert current is not None
                        if current.name != "file":
                            fields[current.name] = text.decode("utf-8", "replace")
                        current = None
            parser.close()
            if tmp is None or fh is None:
                raise InvalidRequestError("file: required field is missing (the file to upload)", param="file",
                                          code="missing_required_parameter")
            expires_s = self._check_fields(fields)
            now = self._now_us()
            f = FileRow(_new_id("file-"), owner_of(principal), "batch", filename or "upload.jsonl", size, now,
                        now + int((expires_s or self.cfg.retention_s) * 1_000_000))
            self.blobs.commit(tmp, fh, f.id)
            tmp = fh = None
            try:
                await self.store.add_file(f)
            except BaseException:
                self.blobs.remove(f.id)
                raise
            return file_object(f)
        finally:
            if tmp is not None and fh is not None:
                self.blobs.abort(tmp, fh)

    @staticmethod
    def _check_fields(fields: dict[str, str]) -> int | None:
        purpose = fields.pop("purpose", None)
        if purpose is None:
            raise InvalidRequestError("purpose: required field is missing", param="purpose",
                                      code="missing_required_parameter")
        if purpose != "batch":
            known = purpose in PURPOSES
            raise InvalidRequestError(
                f"purpose: {purpose[:64]!r} " + ("is not served here; modelyard stores files for the Batch API only "
                                                 "(purpose 'batch')" if known else
                                                 "is not one of " + ", ".join(PURPOSES)), param="purpose")
        anchor = fields.pop("expires_after[anchor]", None)
        seconds = fields.pop("expires_after[seconds]", None)
        for k in fields:
            raise InvalidRequestError(f"{k[:64]}: unknown field (expected file, purpose, expires_after)", param=k)
        if seconds is None and anchor is None:
            return None
        if anchor != "created_at":
            raise InvalidRequestError("expires_after.anchor: expected 'created_at'", param="expires_after.anchor")
        if seconds is None or not seconds.isdigit() or not 3600 <= int(seconds) <= 2_592_000:
            raise InvalidRequestError("expires_after.seconds: expected an integer from 3600 to 2592000",
                                      param="expires_after.seconds")
        return int(seconds)

    async def file(self, principal: Any, file_id: str) -> FileRow:
        f = await self.store.get_file(file_id, reader_of(principal), now_us=self._now_us())
        if f is None:
            raise NotFoundError(f"No such File object: {file_id}", param="file_id")
        return f

    async def list_files(self, principal: Any, q: dict[str, str]) -> dict[str, Any]:
        limit = _int(q.get("limit"), "limit", 10_000, 1, 10_000)
        order = q.get("order", "desc")
        if order not in ("asc", "desc"):
            raise InvalidRequestError("order: expected 'asc' or 'desc'", param="order")
        rows, more = await self.store.list_files(reader_of(principal), now_us=self._now_us(), purpose=q.get("purpose"),
                                                 limit=limit, after=q.get("after"), ascending=order == "asc")
        data = [file_object(f) for f in rows]
        # OpenAI's ListFilesResponse requires first_id/last_id as strings: "" for an empty page
        return {"object": "list", "data": data, "first_id": data[0]["id"] if data else "",
                "last_id": data[-1]["id"] if data else "", "has_more": more}

    async def delete_file(self, principal: Any, file_id: str) -> dict[str, Any]:
        f = await self.file(principal, file_id)
        if not await self.store.delete_file(f.id, reader_of(principal)):
            raise NotFoundError(f"No such File object: {file_id}", param="file_id")
        self.blobs.remove(f.id)
        return {"id": f.id, "object": "file", "deleted": True}

    # --- batches -------------------------------------------------------------------------------
    async def create_batch(self, principal: Any, data: dict[str, Any]) -> dict[str, Any]:
        allowed = {"input_file_id", "endpoint", "completion_window", "metadata", "output_expires_after"}
        for k in data:
            if k not in allowed:
                raise InvalidRequestError(f"{str(k)[:64]}: unknown parameter", param=str(k), code="unknown_parameter")
        fid = data.get("input_file_id")
        if not isinstance(fid, str) or not fid:
            raise InvalidRequestError("input_file_id: required, a file id", param="input_file_id",
                                      code="missing_required_parameter" if fid is None else "invalid_type")
        endpoint = data.get("endpoint")
        if endpoint not in ENDPOINTS:
            raise InvalidRequestError(f"endpoint: {str(endpoint)[:100]!r} is not supported; one of " + ", ".join(ENDPOINTS),
                                      param="endpoint", code="invalid_endpoint")
        if data.get("completion_window") != "24h":
            raise InvalidRequestError("completion_window: only '24h' is supported", param="completion_window")
        metadata = _metadata(data.get("metadata"))
        f = await self.file(principal, fid)
        if f.purpose != "batch":
            raise InvalidRequestError(f"input_file_id: file {fid!r} has purpose {f.purpose!r}, not 'batch'",
                                      param="input_file_id")
        now = self._now_us()
        bid = _new_id("batch_")
        await self.store.add_batch({
            "id": bid, "key_id": owner_of(principal), "endpoint": endpoint, "input_file_id": fid,
            "completion_window": "24h", "status": states.VALIDATING, "created_us": now,
            "expires_us": now + WINDOW_S * 1_000_000, "total": 0, "completed": 0, "failed": 0,
            "input_tokens": 0, "output_tokens": 0, "metadata": metadata})
        self.runner.poke()
        return batch_object(await self._batch(principal, bid))

    async def _batch(self, principal: Any, batch_id: str) -> dict[str, Any]:
        b = await self.store.get_batch(batch_id, reader_of(principal))
        if b is None:
            raise NotFoundError(f"No such Batch object: {batch_id}", param="batch_id")
        return b

    async def batch(self, principal: Any, batch_id: str) -> dict[str, Any]:
        return batch_object(await self._batch(principal, batch_id))

    async def list_batches(self, principal: Any, q: dict[str, str]) -> dict[str, Any]:
        limit = _int(q.get("limit"), "limit", 20, 1, 100)
        rows, more = await self.store.list_batches(reader_of(principal), limit=limit, after=q.get("after"))
        data = [batch_object(b) for b in rows]
        out: dict[str, Any] = {"object": "list", "data": data, "has_more": more}
        if data:
            out["first_id"], out["last_id"] = data[0]["id"], data[-1]["id"]
        return out

    async def cancel(self, principal: Any, batch_id: str) -> dict[str, Any]:
        b = await self._batch(principal, batch_id)
        if b["status"] in (states.CANCELLING, states.CANCELLED):
            return batch_object(b)
        if not await self.store.move(batch_id, states.CANCELLING, now_us=self._now_us(), owner=reader_of(principal)):
            b = await self._batch(principal, batch_id)
            if b["status"] not in (states.CANCELLING, states.CANCELLED):
                raise ConflictError(f"Cannot cancel batch {batch_id}: its status is {b['status']!r}", param="batch_id")
        self.runner.poke()
        return batch_object(await self._batch(principal, batch_id))


def _int(raw: str | None, name: str, default: int, lo: int, hi: int) -> int:
    if raw is None:
        return default
    if not raw.isdigit() or not lo <= int(raw) <= hi:
        raise InvalidRequestError(f"{name}: expected an integer from {lo} to {hi}", param=name)
    return int(raw)


def _metadata(m: Any) -> dict[str, str] | None:
    if m is None:
        return None
    if not isinstance(m, dict) or len(m) > 16:
        raise InvalidRequestError("metadata: expected an object of at most 16 string values", param="metadata")
    for k, v in m.items():
        if len(k) > 64 or not isinstance(v, str) or len(v) > 512:
            raise InvalidRequestError("metadata: keys up to 64 characters, values strings up to 512",
                                      param=f"metadata.{str(k)[:64]}")
    return m
