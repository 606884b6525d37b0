"""The ``provider`` backend: providers that do not speak the OpenAI API (Anthropic, Bedrock,
Vertex AI, Cohere, ...), called through the LiteLLM SDK used as a library.

modelyard does not write a protocol adapter per provider: LiteLLM already has them. What stays
modelyard's is everything around the call — routing, keys, limits, retries, breakers, fallbacks,
spend and metrics — because this is just another ``Backend`` under the router. The backend takes
the OpenAI request bytes the router hands every backend, calls ``litellm.acompletion`` /
``aembedding`` and hands back OpenAI-shaped bytes (``chat.completion``, ``chat.completion.chunk``
SSE with a final usage chunk, an embedding ``list``), rebuilt field by field from LiteLLM's
objects so that no provider-specific extra (``provider_specific_fields``, ``thinking_blocks``)
leaks into a body an OpenAI client validates.

LiteLLM is imported only when a ``kind: provider`` deployment exists (``load_sdk``, called by
``api.services`` while the app starts): serving OpenAI-compatible upstreams never loads it. Its
import costs seconds and, left to itself, fetches a price list over the network and downloads
tokenizers; ``load_sdk`` turns both off (modelyard prices requests itself).

Only the OpenAI request fields in ``CHAT_FIELDS`` / ``EMBEDDING_FIELDS`` are taken from a client:
LiteLLM reads many more keyword arguments (``api_base``, ``api_key``, credentials files, ...),
and a client must not be able to point a deployment's key at another host. Provider-specific
settings go in the deployment's ``params`` (the operator's, trusted). Errors are translated here,
at the boundary (``translate_error``): a provider's 4xx is the client's 4xx, with the provider's
own message; 408/429/5xx, timeouts and connection failures are retryable ``UpstreamError``s.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import struct
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any, Protocol

import orjson

from modelyard.backends.base import CallOptions, UpstreamReply
from modelyard.config.schema import ProviderDeployment
from modelyard.errors import (
    ConfigError,
    InvalidRequestError,
    ModelyardError,
    NotFoundError,
    UpstreamConnectError,
    UpstreamError,
    UpstreamStatusError,
    UpstreamTimeoutError,
)

log = logging.getLogger("modelyard.providers")

EXTRA = "providers"  # pip install 'modelyard[providers]'
_JSON = b"application/json"
_SSE = b"text/event-stream"

# OpenAI chat-completion fields a client may send (LiteLLM translates each for the provider, or
# answers 400 for one the provider lacks unless the deployment sets ``params.drop_params``).
CHAT_FIELDS = frozenset({
    "messages", "temperature", "top_p", "n", "stop", "max_tokens", "max_completion_tokens", "presence_penalty",
    "frequency_penalty", "logit_bias", "logprobs", "top_logprobs", "user", "response_format", "seed", "tools",
    "tool_choice", "parallel_tool_calls", "functions", "function_call", "reasoning_effort", "modalities", "audio",
    "prediction", "web_search_options", "service_tier", "verbosity",
    "thinking", "top_k",  # not OpenAI's, but what Anthropic / Vertex / Cohere users send through LiteLLM
})
EMBEDDING_FIELDS = frozenset({"input", "dimensions", "user"})
# About OpenAI's own platform (stored completions, its dashboard, its cache): nothing a provider
# can honour, so they are dropped rather than refused.
_DROPPED = frozenset({"model", "stream", "stream_options", "store", "metadata", "prompt_cache_key",
                      "prompt_cache_retention", "safety_identifier", "encoding_format"})
_MESSAGE_KEYS = ("role", "content", "refusal", "tool_calls", "function_call", "audio", "reasoning_content")
_MAX_MESSAGE = 1000


class SDK(Protocol):
    """What the backend uses of the ``litellm`` module (a test hands in its own)."""

    async def acompletion(self, **kwargs: Any) -> Any: ...

    async def aembedding(self, **kwargs: Any) -> Any: ...


def load_sdk(where: str = "a provider deployment") -> Any:
    """Import and configure LiteLLM (once per process: a second call finds it in sys.modules).

    Raises ``ConfigError`` naming the extra when it is not installed."""
    # Without this LiteLLM's import fetches its price list from GitHub (three tries, seconds each,
    # on a machine without internet): use the copy in the package. The real environment wins.
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    try:
        import litellm
    except ImportError as exc:
        raise ConfigError(
            f"{where}: kind 'provider' calls the provider through the LiteLLM SDK, which is not installed: "
            f"pip install 'modelyard[{EXTRA}]'"
        ) from exc
    litellm.suppress_debug_info = True  # else every error also prints "Give Feedback / Get Help" to stdout
    litellm.disable_hf_tokenizer_download = True  # token counts come from the provider's usage
    return litellm


def check_provider(sdk: Any, deployment: ProviderDeployment, where: str) -> None:
    """A provider prefix LiteLLM does not know fails every request: refuse it at start instead."""
    known = getattr(sdk, "provider_list", None)
    provider = deployment.model.partition("/")[0]
    if known is not None and provider not in {str(getattr(p, "value", p)) for p in known}:
        raise ConfigError(f"{where}.model: LiteLLM has no provider {provider!r} ({deployment.model!r})")


class ProviderBackend:
    """One ``kind: provider`` deployment."""

    def __init__(self, deployment: ProviderDeployment, sdk: SDK) -> None:
        self._sdk = sdk
        self._model = deployment.model
        # The router retries; modelyard prices requests itself (a price given here also halves the
        # CPU LiteLLM spends per call looking the model up in its price list).
        fixed: dict[str, Any] = {"model": deployment.model, "max_retries": 0, "num_retries": 0,
                                 "input_cost_per_token": 0.0, "output_cost_per_token": 0.0}
        if deployment.api_key is not None:
            fixed["api_key"] = deployment.api_key
        if deployment.api_base is not None:
            fixed["api_base"] = deployment.api_base
        self._params = dict(deployment.params)
        self._fixed = fixed
        self.label = f"provider:{deployment.model}"

    # --- Backend protocol ----------------------------------------------------------------------
    async def call(self, path: str, body: bytes, opts: CallOptions) -> UpstreamReply:
        request = _parse(body)
        if path == "/chat/completions":
            kwargs = self._kwargs(request, CHAT_FIELDS, opts)
            resp = await self._guarded(self._sdk.acompletion(**kwargs), opts)
            data = _convert(chat_completion_body, resp)
        elif path == "/embeddings":
            kwargs = self._kwargs(request, EMBEDDING_FIELDS, opts)
            resp = await self._guarded(self._sdk.aembedding(**kwargs), opts)
            data = _convert(embedding_body, resp, request.get("encoding_format") == "base64")
        else:
            raise _unsupported(self._model, path)
        return UpstreamReply(200, _JSON, orjson.dumps(data))

    async def open_stream(self, path: str, body: bytes, opts: CallOptions) -> "ProviderStream":
        request = _parse(body)
        if path != "/chat/completions":
            if path == "/embeddings":
                raise InvalidRequestError(f"{path} cannot be streamed", param="stream")
            raise _unsupported(self._model, path)
        kwargs = self._kwargs(request, CHAT_FIELDS, opts)
        kwargs["stream"] = True
        kwargs["stream_options"] = {"include_usage": True}  # spend rows need the tokens
        opts_in = request.get("stream_options")
        include_usage = isinstance(opts_in, dict) and opts_in.get("include_usage") is True
        # The provider's error status arrives here, before any byte went to the client: retryable.
        stream = await self._guarded(self._sdk.acompletion(**kwargs), opts)
        return ProviderStream(stream, opts.timeout_s, include_usage)

    async def aclose(self) -> None:
        close = getattr(self._sdk, "close_litellm_async_clients", None)
        if close is not None:
            with contextlib.suppress(Exception):
                await close()

    # --- pieces ----------------------------------------------------------------------------------
    def _kwargs(self, request: dict[str, Any], allowed: frozenset[str], opts: CallOptions) -> dict[str, Any]:
        for key in request:
            if key not in allowed and key not in _DROPPED:
                raise InvalidRequestError(
                    f"{key}: not supported by provider deployments ({self._model!r}); provider-specific settings "
                    "go in the deployment's params", param=key, code="unsupported_parameter")
        client = {k: v for k, v in request.items() if k in allowed}
        given = self._params.get("extra_headers")
        headers = {str(k): str(v) for k, v in given.items()} if isinstance(given, Mapping) else {}
        headers.setdefault("X-Request-Id", opts.request_id)
        # The client's fields win over the deployment's params (as in LiteLLM's router); what
        # modelyard owns (model, key, endpoint, retries, timeout) wins over both.
        return {**self._params, **client, **self._fixed, "timeout": opts.timeout_s, "extra_headers": headers}

    async def _guarded(self, call: Any, opts: CallOptions) -> Any:
        try:
            async with asyncio.timeout(opts.timeout_s):
                return await call
        except ModelyardError:
            raise
        except TimeoutError as exc:
            raise UpstreamTimeoutError(f"{self.label} did not answer within {opts.timeout_s:g}s") from exc
        except Exception as exc:  # noqa: BLE001 - every foreign error is translated here
            raise translate_error(exc, self.label) from exc


class ProviderStream:
    """LiteLLM's stream of chunks as OpenAI SSE; each chunk must arrive within the idle timeout."""

    status = 200
    content_type = _SSE

    def __init__(self, stream: Any, idle_timeout_s: float, include_usage: bool) -> None:
        self._stream = stream
        self._idle = idle_timeout_s
        self._include_usage = include_usage
        self._closed = False

    async def chunks(self) -> AsyncIterator[bytes]:
        it = self._stream.__aiter__()
        usage: dict[str, Any] | None = None
        last: dict[str, Any] = {"id": "chatcmpl-provider", "object": "chat.completion.chunk", "created": 0, "model": ""}
        try:
            while True:
                try:
                    async with asyncio.timeout(self._idle):
                        raw = await it.__anext__()
                except StopAsyncIteration:
                    break
                except TimeoutError as exc:
                    raise UpstreamTimeoutError(f"provider stream stalled for {self._idle:g}s") from exc
                except ModelyardError:
                    raise
                except Exception as exc:  # noqa: BLE001 - a break after the first byte: an SSE error event
                    raise translate_error(exc, "provider stream") from exc
                chunk, chunk_usage = _convert(chunk_body, raw)
                usage = chunk_usage or usage
                last = chunk
                if chunk["choices"]:
                    yield b"data: " + orjson.dumps(chunk) + b"\n\n"
            if usage is not None and self._include_usage:
                tail = {**last, "choices": [], "usage": usage}
                yield b"data: " + orjson.dumps(tail) + b"\n\n"
            yield b"data: [DONE]\n\n"
        finally:
            await self._aclose()

    async def _aclose(self) -> None:
        if not self._closed:
            self._closed = True
            aclose = getattr(self._stream, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()

    def close(self) -> None:
        if not self._closed:
            asyncio.get_running_loop().create_task(self._aclose())


# --- LiteLLM objects → OpenAI bodies (pure) -------------------------------------------------------


def _dump(obj: Any) -> Any:
    """A LiteLLM (pydantic) object as plain data; dicts and lists pass through."""
    if hasattr(obj, "model_dump"):
        return obj.model_dump()
    if isinstance(obj, Mapping):
        return {k: _dump(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_dump(v) for v in obj]
    return obj


def _int(v: Any) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else 0


def usage_body(raw: Any) -> dict[str, Any] | None:
    """OpenAI's usage object (and its two details objects) from LiteLLM's, nothing else."""
    u = _dump(raw)
    if not isinstance(u, Mapping):
        return None
    p, c = _int(u.get("prompt_tokens")), _int(u.get("completion_tokens"))
    out: dict[str, Any] = {"prompt_tokens": p, "completion_tokens": c, "total_tokens": _int(u.get("total_tokens")) or p + c}
    pd, cd = u.get("prompt_tokens_details"), u.get("completion_tokens_details")
    if isinstance(pd, Mapping):
        out["prompt_tokens_details"] = {"cached_tokens": _int(pd.get("cached_tokens"))}
    if isinstance(cd, Mapping):
        out["completion_tokens_details"] = {"reasoning_tokens": _int(cd.get("reasoning_tokens"))}
    return out


def _tool_calls(v: Any, delta: bool) -> list[dict[str, Any]] | None:
    if not isinstance(v, list) or not v:
        return None
    out = []
    for i, call in enumerate(v):
        call = _dump(call)
        fn = call.get("function") or {}
        item: dict[str, Any] = {"function": {k: fn[k] for k in ("name", "arguments") if fn.get(k) is not None}}
        if call.get("id") is not None:
            item["id"] = call["id"]
        if call.get("type") is not None or not delta:
            item["type"] = call.get("type") or "function"
        if delta:
            item["index"] = call.get("index") if isinstance(call.get("index"), int) else i
        elif "arguments" not in item["function"]:
            item["function"]["arguments"] = ""
        out.append(item)
    return out


def _message(raw: Any, delta: bool) -> dict[str, Any]:
    m = _dump(raw) or {}
    out: dict[str, Any] = {}
    for key in _MESSAGE_KEYS:
        value = m.get(key)
        if key == "tool_calls":
            value = _tool_calls(value, delta)
        if value is not None:
            out[key] = value
    if not delta:
        out["role"] = out.get("role") or "assistant"
        out.setdefault("content", None)
        out.setdefault("refusal", None)
    return out


def chat_completion_body(resp: Any) -> dict[str, Any]:
    """LiteLLM's ``ModelResponse`` → OpenAI ``chat.completion``."""
    d = _dump(resp)
    choices = []
    for i, c in enumerate(d.get("choices") or []):
        logprobs = _dump(c.get("logprobs"))
        choices.append({
            "index": c.get("index", i) if isinstance(c.get("index"), int) else i,
            "message": _message(c.get("message"), delta=False),
            "finish_reason": c.get("finish_reason") or "stop",
            "logprobs": logprobs if isinstance(logprobs, Mapping) else None,
        })
    out: dict[str, Any] = {
        "id": str(d.get("id") or "chatcmpl-provider"),
        "object": "chat.completion",
        "created": _int(d.get("created")),
        "model": str(d.get("model") or ""),
        "choices": choices,
    }
    usage = usage_body(d.get("usage"))
    if usage is not None:
        out["usage"] = usage
    if d.get("system_fingerprint") is not None:
        out["system_fingerprint"] = d["system_fingerprint"]
    return out


def chunk_body(raw: Any) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """LiteLLM's ``ModelResponseStream`` → (OpenAI ``chat.completion.chunk`` without usage, its usage)."""
    d = _dump(raw)
    choices = []
    for i, c in enumerate(d.get("choices") or []):
        logprobs = _dump(c.get("logprobs"))
        choices.append({
            "index": c.get("index", i) if isinstance(c.get("index"), int) else i,
            "delta": _message(c.get("delta"), delta=True),
            "finish_reason": c.get("finish_reason"),
            "logprobs": logprobs if isinstance(logprobs, Mapping) else None,
        })
    chunk = {
        "id": str(d.get("id") or "chatcmpl-provider"),
        "object": "chat.completion.chunk",
        "created": _int(d.get("created")),
        "model": str(d.get("model") or ""),
        "choices": choices,
    }
    return chunk, usage_body(d.get("usage")) if d.get("usage") is not None else None


def embedding_body(resp: Any, as_base64: bool = False) -> dict[str, Any]:
    """LiteLLM's ``EmbeddingResponse`` → OpenAI's embedding ``list`` (base64 packed here if asked)."""
    d = _dump(resp)
    data = []
    for i, item in enumerate(d.get("data") or []):
        vec = item.get("embedding") if isinstance(item, Mapping) else None
        if not isinstance(vec, list):
            raise UpstreamError("the provider's embedding response has no vector")
        emb: Any = base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode() if as_base64 else vec
        index = item.get("index")
        data.append({"object": "embedding", "index": index if isinstance(index, int) else i, "embedding": emb})
    usage = usage_body(d.get("usage")) or {"prompt_tokens": 0, "total_tokens": 0}
    return {"object": "list", "data": data, "model": str(d.get("model") or ""),
            "usage": {"prompt_tokens": usage["prompt_tokens"], "total_tokens": usage["total_tokens"]}}


def _convert(fn: Any, *args: Any) -> Any:
    """A response LiteLLM accepted but that does not have the expected shape is the upstream's fault."""
    try:
        return fn(*args)
    except ModelyardError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, struct.error) as exc:
        raise UpstreamError(f"the provider's response could not be read: {type(exc).__name__}: {exc}") from exc


# --- errors -----------------------------------------------------------------------------------------

_TIMEOUT_NAMES = frozenset({"Timeout", "APITimeoutError", "TimeoutException", "ReadTimeout", "ConnectTimeout",
                            "PoolTimeout", "WriteTimeout", "ServerTimeoutError"})
_CONNECT_NAMES = frozenset({"ConnectError", "ClientConnectorError", "ClientConnectionError", "ServerDisconnectedError",
                            "RemoteProtocolError", "ReadError"})


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        yield cur
        cur = cur.__cause__ or cur.__context__


def _names(exc: BaseException) -> set[str]:
    return {k.__name__ for k in type(exc).__mro__}


def _status_of(exc: BaseException) -> int | None:
    for v in (getattr(exc, "status_code", None), getattr(getattr(exc, "response", None), "status_code", None)):
        if isinstance(v, int) and not isinstance(v, bool) and 400 <= v <= 599:
            return v
    return None


def _retry_after(chain: list[BaseException]) -> str | None:
    for exc in chain:
        for headers in (getattr(exc, "litellm_response_headers", None), getattr(getattr(exc, "response", None), "headers", None)):
            try:
                value = headers.get("retry-after") if headers is not None else None
            except Exception:  # noqa: BLE001 - a foreign headers object
                value = None
            if isinstance(value, str) and value:
                return value
    return None


def _provider_message(exc: BaseException) -> tuple[str, str | None]:
    """(message, provider error type): the provider's own words where LiteLLM quoted its JSON."""
    text = str(getattr(exc, "message", None) or exc).strip()
    head, sep, tail = text.partition(" - ")
    if sep and tail.lstrip().startswith("{"):
        candidate = tail.strip()
        for cut in (len(candidate), candidate.rfind("}") + 1):
            try:
                data = orjson.loads(candidate[:cut])
            except orjson.JSONDecodeError:
                continue
            err = data.get("error") if isinstance(data, dict) else None
            if isinstance(err, dict) and isinstance(err.get("message"), str):
                etype = err.get("type")
                return err["message"][:_MAX_MESSAGE], etype if isinstance(etype, str) else None
            if isinstance(data, dict) and isinstance(data.get("message"), str):  # Bedrock, Vertex
                return data["message"][:_MAX_MESSAGE], None
            break
    if text.startswith("litellm.") and ": " in text:
        text = text.split(": ", 1)[1]
    text = text.split(". Handle with `litellm.", 1)[0].split("\nTraceback", 1)[0]
    return text[:_MAX_MESSAGE], None


_DEFAULT_TYPES = {401: "authentication_error", 403: "permission_error", 404: "not_found_error", 429: "rate_limit_error"}


def translate_error(exc: BaseException, label: str) -> UpstreamError:
    """A LiteLLM (or lower) exception → modelyard's tree. Timeouts first (a ``TimeoutError`` is
    an ``OSError``), then connection failures (LiteLLM reports a refused connection as a 500),
    then the deepest HTTP status in the chain (LiteLLM re-labels Anthropic's 529 as 500)."""
    chain = list(_chain(exc))
    message, etype = _provider_message(exc)
    if any(isinstance(c, TimeoutError) or _names(c) & _TIMEOUT_NAMES for c in chain):
        return UpstreamTimeoutError(f"{label} timed out: {message}")
    if any((isinstance(c, OSError) and not isinstance(c, TimeoutError)) or _names(c) & _CONNECT_NAMES for c in chain):
        return UpstreamConnectError(f"{label} unreachable: {message}")
    statuses = [s for s in map(_status_of, chain) if s is not None]
    if statuses:
        status = statuses[-1]
        default = "invalid_request_error" if status < 500 else "upstream_error"
        body = {"error": {"message": message, "type": etype or _DEFAULT_TYPES.get(status, default), "param": None,
                          "code": etype or f"upstream_{status}"}}
        return UpstreamStatusError(status, orjson.dumps(body), retry_after=_retry_after(chain))
    log.warning("%s failed: %s: %s", label, type(exc).__name__, message)
    return UpstreamError(f"{label} failed: {message or type(exc).__name__}")


def _parse(body: bytes) -> dict[str, Any]:
    try:
        request = orjson.loads(body)
    except orjson.JSONDecodeError as exc:  # the API layer parsed it already; defensive
        raise InvalidRequestError("the request body is not JSON") from exc
    if not isinstance(request, dict):
        raise InvalidRequestError("the request body must be a JSON object")
    return request


def _unsupported(model: str, path: str) -> NotFoundError:
    return NotFoundError(f"model {model!r} (a provider deployment) does not support {path} "
                         "(it supports /chat/completions and /embeddings)", param="model", code="unsupported_endpoint")
