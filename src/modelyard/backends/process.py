"""The ``process`` backend: an engine process that modelyard starts on demand (vLLM, llama.cpp
server, TGI, ...) under the memory manager, reached over loopback HTTP.

Each call leases the engine from the memory manager (which starts it, or wakes it from sleep,
first; and never stops or sleeps it while the lease is held) and forwards the request with the
same pooled HTTP client as any OpenAI-compatible upstream. A stream holds its lease until it ends.
When an engine process dies, its in-flight requests fail as connection errors (the router retries
them elsewhere or falls back), and the engine is unloaded so that the next request starts a new one
(the engine's restart policy spaces restarts out and gives up after too many).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from modelyard.backends.base import CallOptions, UpstreamReply
from modelyard.backends.httpclient import HTTPPool
from modelyard.backends.openai import OpenAIBackend
from modelyard.errors import ModelyardError, UpstreamError, UpstreamTimeoutError
from modelyard.memory.manager import MemoryManager

log = logging.getLogger("modelyard.engines")


class ProcessBackend:
    def __init__(self, *, key: str, manager: MemoryManager, pool: HTTPPool) -> None:
        self._key = key
        self._manager = manager
        self._pool = pool
        self._http: tuple[object, OpenAIBackend] | None = None  # (engine, its HTTP backend)
        self._restarting: asyncio.Task[None] | None = None
        self.label = f"process:{key}"

    def _http_for(self, engine: Any) -> OpenAIBackend:
        if self._http is None or self._http[0] is not engine:
            self._http = (engine, OpenAIBackend(engine.base_url, None, self._pool))
        return self._http[1]

    async def call(self, path: str, body: bytes, opts: CallOptions) -> UpstreamReply:
        engine: Any = None
        try:
            async with asyncio.timeout(opts.timeout_s):
                async with self._manager.lease(self._key) as engine:
                    return await self._http_for(engine).call(path, body, opts)
        except TimeoutError as exc:
            raise UpstreamTimeoutError(f"engine {self._key!r} did not answer within {opts.timeout_s:g}s") from exc
        except UpstreamError:
            self._check_alive(engine)
            raise

    async def open_stream(self, path: str, body: bytes, opts: CallOptions) -> "LeasedStream":
        stack = contextlib.AsyncExitStack()
        engine: Any = None
        try:
            async with asyncio.timeout(opts.timeout_s):
                engine = await stack.enter_async_context(self._manager.lease(self._key))
                inner = await self._http_for(engine).open_stream(path, body, opts)
        except BaseException as exc:
            await stack.aclose()
            if isinstance(exc, UpstreamError):
                self._check_alive(engine)
            if isinstance(exc, TimeoutError):
                raise UpstreamTimeoutError(f"engine {self._key!r} did not answer within {opts.timeout_s:g}s") from exc
            raise
        return LeasedStream(inner, stack, lambda: self._check_alive(engine))

    def _check_alive(self, engine: Any) -> None:
        """A failed request on a dead engine: take it off the active tier so the next request
        starts a fresh process (the engine's restart policy spaces the restarts out)."""
        if engine is None or getattr(engine, "alive", True) or self._restarting is not None:
            return
        self._restarting = asyncio.get_running_loop().create_task(self._invalidate(engine))

    async def _invalidate(self, engine: Any) -> None:
        try:
            await self._manager.invalidate(self._key, engine, getattr(engine, "down_reason", None))
        except ModelyardError as exc:
            log.warning("engine %r died; taking it down failed: %s", self._key, exc.message)
        finally:
            self._restarting = None

    async def aclose(self) -> None:
        if self._restarting is not None:
            with contextlib.suppress(BaseException):
                await self._restarting


class LeasedStream:
    """An HTTP stream from an engine, holding the engine's lease until the stream ends."""

    def __init__(self, inner: Any, stack: contextlib.AsyncExitStack, on_error: Any) -> None:
        self._inner = inner
        self._stack = stack
        self._on_error = on_error
        self.status = inner.status
        self.content_type = inner.content_type
        self._closed = False

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._inner.chunks():
                yield chunk
        except UpstreamError:
            self._on_error()
            raise
        finally:
            await self._release()

    async def _release(self) -> None:
        if not self._closed:
            self._closed = True
            await self._stack.aclose()

    def close(self) -> None:
        self._inner.close()
        if not self._closed:
            asyncio.get_running_loop().create_task(self._release())
