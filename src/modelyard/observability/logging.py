"""Structured access log: one JSON line per request.

Written straight to a binary stream with orjson rather than through ``logging`` formatters: the
line is built once per request on the hot path. Headers are never logged, so neither is the
client's API key.
"""

from __future__ import annotations

import sys
import time
from typing import IO, Any

import orjson


class AccessLog:
    def __init__(self, stream: IO[bytes] | None = None, *, enabled: bool = True) -> None:
        self._stream = stream if stream is not None else sys.stderr.buffer
        self.enabled = enabled

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record["ts"] = round(time.time(), 3)
        try:
            self._stream.write(orjson.dumps(record) + b"\n")
            self._stream.flush()
        except (OSError, ValueError):  # a closed or broken log stream must never fail a request
            pass
