"""The spend spool: an append-only JSON-lines file of rows that did not (yet) reach the database.

Every operation on the file runs in **one** thread of its own, in call order, so an append, a
read and the truncate that ends a replay never interleave: the check "nothing was appended since
the replay read the end" and the truncate are one step in that thread. Appends are fsync'ed (a row
in the spool survives a crash of the gateway and of the machine).

A torn last line (a crash in the middle of an append) is cut when the spool is opened.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import orjson

from .store import SpendRow

T = TypeVar("T")


class Spool:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="modelyard-spend-spool")
        self.rows = 0  # rows in the file now (complete lines)
        self.bytes = 0
        self.corrupt = 0  # lines that could not be read back, or a torn tail cut at open

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    # --- the async API (the writer's) --------------------------------------------------------

    async def open(self) -> None:
        """Count what an earlier process left, cutting a torn last line. An unreadable spool is
        reported (``OSError``) and counted as empty: the writer still takes rows."""
        self.rows, self.bytes = await self._run(self._repair_and_count)

    async def append(self, rows: Sequence[SpendRow]) -> None:
        """Append and fsync; ``OSError`` (disk full, read-only, ...) leaves the file as it was."""
        data = b"".join(orjson.dumps(r.to_json()) + b"\n" for r in rows)
        await self._run(self._append_sync, data)
        self.rows += len(rows)
        self.bytes += len(data)

    async def read(self, offset: int, max_rows: int) -> tuple[list[SpendRow], int]:
        """Up to ``max_rows`` rows from byte ``offset``, and the offset after them."""
        return await self._run(self._read_sync, offset, max_rows)

    async def consumed(self, offset: int) -> None:
        """Rows before ``offset`` are stored: drop them (all of it if nothing was appended since)."""
        self.rows, self.bytes = await self._run(self._consume_sync, offset)

    async def aclose(self) -> None:
        self._thread.shutdown(wait=True)

    # --- in the spool's thread ---------------------------------------------------------------

    def _repair_and_count(self) -> tuple[int, int]:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return 0, 0
        keep = data.rfind(b"\n") + 1
        if keep < len(data):
            self.corrupt += 1
            with open(self.path, "r+b") as f:
                f.truncate(keep)
                f.flush()
                os.fsync(f.fileno())
        return data.count(b"\n", 0, keep), keep

    def _append_sync(self, data: bytes) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "ab") as f:
            start = f.tell()
            try:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            except OSError:
                with contextlib.suppress(OSError):  # a partial write must not leave a torn line behind
                    f.truncate(start)
                raise

    def _read_sync(self, offset: int, max_rows: int) -> tuple[list[SpendRow], int]:
        rows: list[SpendRow] = []
        try:
            f = open(self.path, "rb")
        except FileNotFoundError:
            return rows, offset
        with f:
            f.seek(offset)
            while len(rows) < max_rows:
                line = f.readline()
                if not line:
                    break
                try:
                    rows.append(SpendRow.from_json(orjson.loads(line)))
                except (orjson.JSONDecodeError, TypeError, ValueError, KeyError):
                    self.corrupt += 1
            return rows, f.tell()

    def _consume_sync(self, offset: int) -> tuple[int, int]:
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return 0, 0
        if offset >= size:
            with open(self.path, "r+b") as f:
                f.truncate(0)
                f.flush()
                os.fsync(f.fileno())
            return 0, 0
        tmp = self.path.with_name(self.path.name + ".tmp")
        n = 0
        with open(self.path, "rb") as src, open(tmp, "wb") as dst:
            src.seek(offset)
            while chunk := src.read(1 << 20):
                n += chunk.count(b"\n")
                dst.write(chunk)
            dst.flush()
            os.fsync(dst.fileno())
        os.replace(tmp, self.path)
        self._fsync_dir()
        return n, size - offset

    def _fsync_dir(self) -> None:
        with contextlib.suppress(OSError):
            fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
