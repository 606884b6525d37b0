"""Structured access log: one JSON line per request.

Lines are built with orjson (no ``logging`` formatter on the hot path) into a buffer that is
written out every ``flush_interval_s`` (100 ms), when it passes 64 KiB, and at shutdown: one
system call per hundred requests instead of one per request, and a slow reader of stderr delays a
flush, not every request. A crash (SIGKILL) can lose at most the last interval's lines. Headers are
never logged, so neither is the client's API key.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from typing import IO, Any

import orjson


class AccessLog:
    def __init__(
        self,
        stream: IO[bytes] | None = None,
        *,
        enabled: bool = True,
        flush_interval_s: float = 0.1,
        max_buffer_bytes: int = 64 * 1024,
    ) -> None:
        self._stream = stream if stream is not None else sys.stderr.buffer
        self.enabled = enabled
        self._interval = flush_interval_s
        self._max = max_buffer_bytes
        self._buf = bytearray()
        self._task: asyncio.Task[None] | None = None

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record["ts"] = round(time.time(), 3)
        self._buf += orjson.dumps(record)
        self._buf += b"\n"
        if len(self._buf) >= self._max or self._task is None:
            self.flush()

    def flush(self) -> None:
        if not self._buf:
            return
        data = bytes(self._buf)
        self._buf.clear()
        try:
            self._stream.write(data)
            self._stream.flush()
        except (OSError, ValueError):  # a closed or broken log stream must never fail a request
            pass

    def start(self) -> None:
        """Begin periodic flushing (without it, every line is written at once)."""
        if self.enabled and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            self.flush()

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.flush()
