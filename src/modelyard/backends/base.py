"""The Backend protocol: what the router needs from anything that can serve a model.

Four kinds will implement it (issue 2 brings ``openai``; ``local``, ``process`` and ``ray``
follow). A backend speaks the OpenAI wire format: it takes the request body as bytes and gives
back the upstream's bytes, so the gateway never re-serialises a response it only passes through.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class CallOptions:
    """Per-call settings the router decides (timeout comes from the deployment or the router)."""

    timeout_s: float
    request_id: str
    # Local models and managed engines: how long this request may still wait for the model to
    # load or its engine to restart (what is left of the queue TTL); None: only timeout_s bounds it.
    ready_wait_s: float | None = None


class UpstreamStream(Protocol):
    """An upstream response whose status was 2xx and whose body is still arriving."""

    status: int
    content_type: bytes

    def chunks(self) -> AsyncIterator[bytes]:
        """Body bytes as they arrive; raises a modelyard ``UpstreamError`` if the body breaks."""
        ...

    def close(self) -> None:
        """Abandon the body (aborts the upstream request)."""
        ...


@dataclass(frozen=True)
class UpstreamReply:
    """A complete 2xx upstream response."""

    status: int
    content_type: bytes
    body: bytes


class Backend(Protocol):
    """One deployment's way of serving OpenAI-shaped requests.

    Errors are modelyard errors: ``UpstreamConnectError``, ``UpstreamTimeoutError``,
    ``UpstreamStatusError`` (a non-2xx answer) or ``UpstreamError``; the router decides what is
    retryable from them.
    """

    async def call(self, path: str, body: bytes, opts: CallOptions) -> UpstreamReply: ...

    async def open_stream(self, path: str, body: bytes, opts: CallOptions) -> UpstreamStream: ...

    async def aclose(self) -> None: ...
