"""The ``process`` backend: an engine process that modelyard starts on demand (vLLM, llama.cpp
server, TGI, ...) under the memory manager, reached over loopback HTTP.

Each call leases the engine from the memory manager (which starts it, or wakes it from sleep,
first; and never stops or sleeps it while the lease is held) and forwards the request with the
same pooled HTTP client as any OpenAI-compatible upstream. A stream holds its lease until it ends.
When an engine process dies, it is taken down at once and the memory manager starts a fresh one
(after the restart policy's backoff; the policy gives up after too many). A request whose engine
died under it is retried once on the restarted engine (``EngineRestartingError``); requests that
arrive meanwhile wait in their lease (bounded by the queue TTL) instead of failing. No circuit
breaker stands in the way: the supervisor, not a failure count, says when the engine is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import Any

from modelyard.backends.base import CallOptions, UpstreamReply
from modelyard.backends.httpclient import HTTPPool
from modelyard.backends.openai import OpenAIBackend
from modelyard.errors import (
    EngineRestartingError,
    ModelUnavailableError,
    ModelyardError,
    UpstreamError,
    UpstreamStatusError,
    UpstreamTimeoutError,
)
from modelyard.memory.manager import MemoryManager

log = logging.getLogger("modelyard.engines")
_EXIT_GRACE_S = 0.5  # how long a broken connection waits for the engine's watcher to confirm an exit


class ProcessBackend:
    def __init__(self, *, key: str, manager: MemoryManager, pool: HTTPPool) -> None:
        self._key = key
        self._manager = manager
        self._pool = pool
        self._http: tuple[object, OpenAIBackend] | None = None  # (engine, its HTTP backend)
        self._restarting: asyncio.Task[None] | None = None
        self._crashed: OrderedDict[str, None] = OrderedDict()  # request ids that saw an engine die (bounded)
        self.label = f"process:{key}"

    def _http_for(self, engine: Any) -> OpenAIBackend:
        if self._http is None or self._http[0] is not engine:
            self._http = (engine, OpenAIBackend(engine.base_url, None, self._pool))
        return self._http[1]

    def resident(self) -> bool:
        """The engine process is up and on the active tier now."""
        return self._manager.tier(self._key).value == "active"

    async def call(self, path: str, body: bytes, opts: CallOptions) -> UpstreamReply:
        engine: Any = None
        try:
            async with asyncio.timeout(opts.timeout_s):
                async with self._manager.lease(self._key, opts.ready_wait_s) as engine:
                    return await self._http_for(engine).call(path, body, opts)
        except TimeoutError as exc:
            raise UpstreamTimeoutError(f"engine {self._key!r} did not answer within {opts.timeout_s:g}s") from exc
        except UpstreamError as exc:
            await self._after_failure(engine, exc, opts)
            raise

    async def open_stream(self, path: str, body: bytes, opts: CallOptions) -> "LeasedStream":
        stack = contextlib.AsyncExitStack()
        engine: Any = None
        try:
            async with asyncio.timeout(opts.timeout_s):
                engine = await stack.enter_async_context(self._manager.lease(self._key, opts.ready_wait_s))
                inner = await self._http_for(engine).open_stream(path, body, opts)
        except BaseException as exc:
            await stack.aclose()
            if isinstance(exc, UpstreamError):
                await self._after_failure(engine, exc, opts)
            if isinstance(exc, TimeoutError):
                raise UpstreamTimeoutError(f"engine {self._key!r} did not answer within {opts.timeout_s:g}s") from exc
            raise
        return LeasedStream(inner, stack, lambda: self._check_alive(engine))

    async def _after_failure(self, engine: Any, exc: UpstreamError, opts: CallOptions) -> None:
        """A request failed on ``engine``. If the engine died under it (the connection broke and
        the process is gone, or it went unhealthy), take it down now — the supervisor starts a
        fresh one at once — and raise ``EngineRestartingError``: the router retries the request
        once on the restarted engine (its lease waits for it). A request that sees a second
        engine die is not retried again (it may be what kills them)."""
        if engine is None or isinstance(exc, (UpstreamStatusError, ModelUnavailableError)):
            return  # it answered (an HTTP error status), or it never got an engine
        if getattr(engine, "alive", True):
            wait = getattr(engine, "wait_exited", None)
            # the watcher thread sees an exit within ms of the broken connection; give it a moment
            if wait is None or not await asyncio.get_running_loop().run_in_executor(None, wait, _EXIT_GRACE_S):
                return
        reason = getattr(engine, "down_reason", None) or f"{exc.__class__.__name__}: {exc.message}"
        try:
            await self._manager.invalidate(self._key, engine, reason)
        except ModelyardError as err:
            log.warning("engine %r died; taking it down failed: %s", self._key, err.message)
        first = opts.request_id not in self._crashed
        self._crashed[opts.request_id] = None
        while len(self._crashed) > 1024:
            self._crashed.popitem(last=False)
        eta = self._manager.ready_in_s(self._key)
        raise EngineRestartingError(
            f"engine {self._key!r} went down during the request ({reason.splitlines()[0]}); it is restarting",
            retry_after_s=eta if eta else 1.0, retry_once=first) from exc

    def _check_alive(self, engine: Any) -> None:
        """A stream broke on a dead engine (no retry possible mid-stream): take it down in the
        background so that the supervisor restarts it."""
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
