"""The ``local`` backend: models served in this process, under the memory manager.

It speaks the same bytes-in/bytes-out protocol as the HTTP backend, so everything the router does
(admission, retries, breakers, fallbacks, metrics) applies to local models unchanged. Each call
takes a lease from the memory manager (which loads or promotes the model first, and never demotes
it while the lease is held), runs the engine in a worker thread, and encodes the engine's
OpenAI-shaped dicts with orjson. Embeddings and classifications go through a per-model dynamic
batcher; streams bridge the engine's per-token callback to the event loop.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import struct
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor
from typing import Any

import orjson

from modelyard.backends.base import CallOptions, UpstreamReply
from modelyard.config.schema import BatchConfig
from modelyard.errors import InvalidRequestError, ModelyardError, NotFoundError, UpstreamError, UpstreamTimeoutError
from modelyard.memory.manager import MemoryManager
from modelyard.runtime.base import Capability
from modelyard.runtime.batching import DynamicBatcher
from modelyard.runtime.sklearn_models import to_classification_response, to_moderation_response

_JSON = b"application/json"
_SSE = b"text/event-stream"
_DONE = object()

_PATH_CAPABILITY = {
    "/chat/completions": Capability.chat,
    "/completions": Capability.completion,
    "/embeddings": Capability.embedding,
    "/moderations": Capability.moderation,
    "/classifications": Capability.classification,
}


class LocalBackend:
    """One local deployment: the manager's model ``key``, served under the public name ``model``."""

    def __init__(
        self,
        *,
        key: str,
        model: str,
        manager: MemoryManager,
        capabilities: frozenset[Capability],
        executor: Executor,
        batch: BatchConfig,
    ) -> None:
        self._key = key
        self._model = model
        self._manager = manager
        self._capabilities = capabilities
        self._executor = executor
        self._batch = batch
        self._batchers: dict[str, DynamicBatcher[str, Any]] = {}
        self._batch_engine: object | None = None
        self.label = f"local:{key}"

    def resident(self) -> bool:
        """Loaded on the active tier now (the router prefers these replicas of an autoscaled model)."""
        return self._manager.tier(self._key).value == "active"

    # --- Backend protocol ----------------------------------------------------------------------
    async def call(self, path: str, body: bytes, opts: CallOptions) -> UpstreamReply:
        request = self._parse(path, body)
        try:
            async with asyncio.timeout(opts.timeout_s):
                async with self._manager.lease(self._key, opts.ready_wait_s) as engine:
                    data = await self._dispatch(path, request, engine)
        except TimeoutError as exc:
            raise UpstreamTimeoutError(f"local model {self._model!r} did not answer within {opts.timeout_s:g}s") from exc
        return UpstreamReply(200, _JSON, orjson.dumps(data))

    async def open_stream(self, path: str, body: bytes, opts: CallOptions) -> "LocalStream":
        request = self._parse(path, body)
        if path not in ("/chat/completions", "/completions"):
            raise InvalidRequestError(f"{path} cannot be streamed", param="stream")
        stack = contextlib.AsyncExitStack()
        try:
            async with asyncio.timeout(opts.timeout_s):
                engine = await stack.enter_async_context(self._manager.lease(self._key, opts.ready_wait_s))
        except BaseException as exc:
            await stack.aclose()
            if isinstance(exc, TimeoutError):
                raise UpstreamTimeoutError(f"local model {self._model!r} was not ready within {opts.timeout_s:g}s") from exc
            raise
        method = engine.chat if path == "/chat/completions" else engine.complete
        return LocalStream(method, request, stack, self._executor, opts.timeout_s)

    async def aclose(self) -> None:
        for b in self._batchers.values():
            await b.aclose()
        self._batchers.clear()

    # --- dispatch ----------------------------------------------------------------------------------
    def _parse(self, path: str, body: bytes) -> dict[str, Any]:
        cap = _PATH_CAPABILITY.get(path)
        if cap is None or cap not in self._capabilities:
            raise NotFoundError(
                f"model {self._model!r} does not support {path} (it supports: "
                + ", ".join(sorted(c.value for c in self._capabilities)) + ")",
                param="model", code="unsupported_endpoint",
            )
        request = orjson.loads(body)
        request["model"] = self._model
        return request

    async def _dispatch(self, path: str, request: dict[str, Any], engine: Any) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        if path == "/chat/completions":
            return await loop.run_in_executor(self._executor, engine.chat, request, None)
        if path == "/completions":
            return await loop.run_in_executor(self._executor, engine.complete, request, None)
        texts = _texts(request)
        if path == "/embeddings":
            results = await self._batcher("embed", engine.embed_each).submit(texts)
            return _embedding_response(self._model, request, results)
        each = getattr(engine, "classify_each", None)  # (labels, tokens) per text where the engine counts tokens
        if each is not None:
            results = await self._batcher("classify", each).submit(texts)
            labels, tokens = [r[0] for r in results], sum(r[1] for r in results)
        else:
            labels, tokens = await self._batcher("classify", engine.classify).submit(texts), 0
        if path == "/moderations":
            return to_moderation_response(self._model, labels)
        top_k = request.get("top_k", 5)
        if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
            raise InvalidRequestError("top_k: expected a positive integer", param="top_k")
        return to_classification_response(self._model, labels, top_k=top_k, prompt_tokens=tokens)

    def _batcher(self, kind: str, fn: Callable[[list[str]], Any]) -> DynamicBatcher[str, Any]:
        # The manager makes a new engine object on every load from disk: batchers are bound to
        # the engine they call. While any caller holds a lease the engine cannot change, so when
        # a new one shows up the old batchers have nothing queued and are simply dropped.
        owner = getattr(fn, "__self__", None)
        if owner is not None and owner is not self._batch_engine:
            self._batch_engine = owner
            for old in self._batchers.values():
                asyncio.get_running_loop().create_task(old.aclose())
            self._batchers.clear()
        b = self._batchers.get(kind)
        if b is None:
            b = self._batchers[kind] = DynamicBatcher(
                fn,
                max_batch_size=self._batch.max_batch_size,
                max_queue_delay_us=self._batch.max_queue_delay_us,
                executor=self._executor,
                name=f"{self._key}:{kind}",
            )
        return b


def _texts(request: dict[str, Any]) -> list[str]:
    inp = request.get("input")
    if isinstance(inp, str):
        return [inp]
    if isinstance(inp, list) and inp and all(isinstance(x, str) for x in inp):
        return inp
    raise InvalidRequestError(
        "input: local models take a string or an array of strings (token arrays are not supported)", param="input"
    )


def _embedding_response(model: str, request: dict[str, Any], results: list[tuple[list[float], int]]) -> dict[str, Any]:
    dims = request.get("dimensions")
    as_b64 = request.get("encoding_format") == "base64"
    data = []
    tokens = 0
    for i, (vec, n) in enumerate(results):
        tokens += n
        if dims is not None:
            if dims > len(vec):
                raise InvalidRequestError(f"dimensions: this model has {len(vec)} dimensions", param="dimensions")
            vec = vec[:dims]
        emb: Any = base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode() if as_b64 else vec
        data.append({"object": "embedding", "index": i, "embedding": emb})
    return {"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


class LocalStream:
    """An engine generating in a worker thread, its chunks handed to the event loop as SSE."""

    status = 200
    content_type = _SSE

    def __init__(
        self, method: Callable[..., dict[str, Any]], request: dict[str, Any], stack: contextlib.AsyncExitStack,
        executor: Executor, idle_timeout_s: float,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._stop = False
        self._stack = stack
        self._idle = idle_timeout_s
        opts = request.get("stream_options")
        self._include_usage = isinstance(opts, dict) and opts.get("include_usage") is True
        self._future = self._loop.run_in_executor(executor, self._run, method, request)
        self._closed = False

    def _run(self, method: Callable[..., dict[str, Any]], request: dict[str, Any]) -> None:
        put = self._loop.call_soon_threadsafe
        try:
            final = method(request, self._on_chunk)
            if self._include_usage and isinstance(final, dict) and final.get("usage") is not None:
                put(self._queue.put_nowait, _usage_chunk(final))
            put(self._queue.put_nowait, _DONE)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which raises it
            put(self._queue.put_nowait, exc)

    def _on_chunk(self, chunk: dict[str, Any]) -> bool:
        if self._stop:
            return True  # the client went away: stop generating
        self._loop.call_soon_threadsafe(self._queue.put_nowait, chunk)
        return False

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            while True:
                try:
                    async with asyncio.timeout(self._idle):
                        item = await self._queue.get()
                except TimeoutError as exc:
                    raise UpstreamTimeoutError(f"local model produced nothing for {self._idle:g}s") from exc
                if item is _DONE:
                    yield b"data: [DONE]\n\n"
                    return
                if isinstance(item, ModelyardError) and not isinstance(item, UpstreamError):
                    raise UpstreamError(item.message) from item
                if isinstance(item, BaseException):
                    raise UpstreamError(f"local model failed mid-stream: {item}") from item
                parts = [b"data: ", orjson.dumps(item), b"\n\n"]
                while not self._queue.empty():  # hand over what is already there in one write
                    nxt = self._queue.get_nowait()
                    if not isinstance(nxt, dict):
                        self._queue.put_nowait(nxt)  # sentinel or error: handled on the next turn
                        break
                    parts += [b"data: ", orjson.dumps(nxt), b"\n\n"]
                yield b"".join(parts)
        finally:
            await self._finish()

    async def _finish(self) -> None:
        self._stop = True
        if not self._closed:
            self._closed = True
            with contextlib.suppress(BaseException):
                await asyncio.shield(self._future)  # the engine stops at its next token
            await self._stack.aclose()

    def close(self) -> None:
        self._stop = True
        if not self._closed:
            self._loop.create_task(self._finish())


def _usage_chunk(final: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": final.get("id", "chatcmpl-local"),
        "object": "chat.completion.chunk" if final.get("object") == "chat.completion" else final.get("object", "text_completion"),
        "created": final.get("created", int(time.time())),
        "model": final.get("model"),
        "choices": [],
        "usage": final["usage"],
    }
