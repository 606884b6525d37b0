"""Finalizing a batch: its output and error files, then the final state, in that order.

The files are written first (each to a temporary name, renamed into place), then the final move
and the files' rows are committed in one transaction. The output and error files' ids are derived
from the batch id, so a finalization cut short by a crash is simply done again: the same ids, the
same bytes, the rows written once.

- output file (``purpose: batch_output``): the 2xx response lines, in input order;
- error file: every other line (4xx/5xx responses, invalid input lines, and for an ``expired``
  batch each item that never ran: ``batch_expired``); a ``cancelled`` batch's unrun items appear in
  neither (OpenAI's behaviour). A file with no line is not created (its id is left out).
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import orjson

from modelyard.batch import states
from modelyard.batch.blobs import Blobs
from modelyard.batch.jsonl import error_line, is_success
from modelyard.batch.store import FileRow, BatchStore

READ_CHUNK = 1000


def output_ids(batch_id: str) -> tuple[str, str]:
    h = hashlib.sha256(batch_id.encode()).hexdigest()
    return "file-" + h[:24], "file-" + h[24:48]


class Finalizer:
    def __init__(self, store: BatchStore, blobs: Blobs, *, retention_s: float) -> None:
        self._store = store
        self._blobs = blobs
        self._retention_us = int(retention_s * 1_000_000)

    async def finish(self, b: dict[str, Any], dst: str, *, now_us: int) -> bool:
        bid = b["id"]
        out_id, err_id = output_ids(bid)
        loop = asyncio.get_running_loop()
        out_tmp, out_fh = self._blobs.open_temp()
        err_tmp, err_fh = self._blobs.open_temp()
        n_out = n_err = out_bytes = err_bytes = expired = 0
        try:
            after = 0
            while True:
                rows = await self._store.results(bid, after_line=after, limit=READ_CHUNK)
                if not rows:
                    break
                after = rows[-1][0]
                out_buf, err_buf = bytearray(), bytearray()
                for line, _state, custom_id, result in rows:
                    if result is None:
                        if dst != states.EXPIRED:
                            continue  # cancelled (or never run): in neither file
                        expired += 1
                        result = error_line(bid, line, custom_id, "batch_expired", "This request could not be "
                                            "executed before the completion window expired.")
                    raw = orjson.dumps(result) + b"\n"
                    if is_success(result):
                        out_buf += raw
                        n_out += 1
                    else:
                        err_buf += raw
                        n_err += 1
                out_bytes += len(out_buf)
                err_bytes += len(err_buf)
                await loop.run_in_executor(None, out_fh.write, bytes(out_buf))
                await loop.run_in_executor(None, err_fh.write, bytes(err_buf))
            new_files = []
            exp = now_us + self._retention_us
            for fid, tmp, fh, n, size, kind in ((out_id, out_tmp, out_fh, n_out, out_bytes, "output"),
                                                (err_id, err_tmp, err_fh, n_err, err_bytes, "error")):
                if n:
                    await loop.run_in_executor(None, self._blobs.commit, tmp, fh, fid)
                    new_files.append(FileRow(fid, b["key_id"], "batch_output", f"{bid}_{kind}.jsonl", size, now_us, exp))
                else:
                    self._blobs.abort(tmp, fh)
        except BaseException:
            for tmp, fh in ((out_tmp, out_fh), (err_tmp, err_fh)):
                if not fh.closed:
                    self._blobs.abort(tmp, fh)
            raise
        return await self._store.finish(
            bid, dst, now_us=now_us, new_files=new_files, expired_failures=expired,
            output_file_id=out_id if n_out else None, error_file_id=err_id if n_err else None)
