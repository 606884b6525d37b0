"""The ``provider`` backend (LiteLLM as a library): its config, what it sends LiteLLM, the OpenAI
bodies it makes of LiteLLM's objects, and how provider errors land in modelyard's tree.

The SDK is the real ``litellm`` (its ``mock_response`` answers without a network), or a recording
stand-in where the test is about the keyword arguments the backend passes.
"""

from __future__ import annotations

import base64
import struct
import sys
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from modelyard.backends.base import CallOptions
from modelyard.backends.provider import (
    ProviderBackend,
    ProviderStream,
    check_provider,
    chunk_body,
    load_sdk,
    translate_error,
)
from modelyard.config.loader import settings_from_dict
from modelyard.config.schema import ProviderDeployment
from modelyard.errors import (
    ConfigError,
    InvalidRequestError,
    NotFoundError,
    UpstreamConnectError,
    UpstreamError,
    UpstreamStatusError,
    UpstreamTimeoutError,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from openapi_schema import validate  # noqa: E402

OPTS = CallOptions(timeout_s=5.0, request_id="req-1")
MSG = [{"role": "user", "content": "Say hello"}]


@pytest.fixture(scope="module")
def litellm() -> Any:
    return load_sdk()


def provider(**kw: Any) -> ProviderDeployment:
    models = [{"name": "claude", "deployments": [{"kind": "provider", "model": "anthropic/claude-3-5-sonnet-20240620", **kw}]}]
    d = settings_from_dict({"models": models}, environ={}).settings.models[0].deployments[0]
    assert isinstance(d, ProviderDeployment)
    return d


def body(**kw: Any) -> bytes:
    return orjson.dumps({"model": "anthropic/claude-3-5-sonnet-20240620", "messages": MSG, **kw})


class Recorder:
    """Stands in for the SDK: records the keyword arguments, answers with ``reply``."""

    def __init__(self, reply: Any = None) -> None:
        self.calls: list[dict[str, Any]] = []
        self.reply = reply

    async def acompletion(self, **kw: Any) -> Any:
        self.calls.append(kw)
        return self.reply

    async def aembedding(self, **kw: Any) -> Any:
        self.calls.append(kw)
        return self.reply


# --- config ---------------------------------------------------------------------------------------


def test_native_provider_deployment() -> None:
    d = provider(api_key="sk-ant", api_base="http://127.0.0.1:9/", params={"drop_params": True}, rpm=10)
    assert (d.kind, d.model, d.api_key, d.api_base, d.params, d.rpm) == (
        "provider", "anthropic/claude-3-5-sonnet-20240620", "sk-ant", "http://127.0.0.1:9", {"drop_params": True}, 10)
    assert d.upstream_name("claude") == "anthropic/claude-3-5-sonnet-20240620"


def test_provider_config_errors_name_the_field() -> None:
    bad = {"models": [{"name": "c", "deployments": [
        {"kind": "provider", "model": "claude-3", "api_base": "ftp://x", "params": {"api_key": "k", "timeout": 3}},
        {"kind": "provider", "model": "anthropic/x", "api_kye": "k"},
    ]}]}
    with pytest.raises(ConfigError) as info:
        settings_from_dict(bad, source="cfg.yaml", environ={})
    lines = info.value.message.splitlines()
    assert lines[0] == "cfg.yaml: 4 problems"
    assert any(ln.strip().startswith("models[0].deployments[0].model: expected <provider>/<model>") for ln in lines)
    assert any(ln.strip().startswith("models[0].deployments[0].api_base: not a URL") for ln in lines)
    assert any(ln.strip().startswith("models[0].deployments[0].params: 'api_key', 'timeout': set by modelyard") for ln in lines)
    assert any("models[0].deployments[1].api_kye: unknown field (did you mean 'api_key'?)" in ln for ln in lines)
    assert "k" not in [w for ln in lines for w in ln.split()]  # no value echoed


def test_missing_litellm_is_a_config_error_naming_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "litellm", None)  # import litellm → ImportError; find_spec → None
    with pytest.raises(ConfigError) as info:
        provider()
    assert "models[0].deployments[0]: kind 'provider'" in info.value.message
    assert "pip install 'modelyard[providers]'" in info.value.message
    with pytest.raises(ConfigError, match=r"pip install 'modelyard\[providers\]'"):
        load_sdk("deployment 'claude'")
    # an OpenAI-only config needs no LiteLLM at all
    s = settings_from_dict({"models": [{"name": "m", "deployments": [{"api_base": "http://127.0.0.1:1/v1", "model": "x"}]}]})
    assert s.settings.models[0].deployments[0].kind == "openai"


def test_unknown_provider_is_refused_at_start(litellm: Any) -> None:
    check_provider(litellm, provider(), "deployment 'claude'")
    models = [{"name": "c", "deployments": [{"kind": "provider", "model": "antropic/claude-3"}]}]
    d = settings_from_dict({"models": models}, environ={}).settings.models[0].deployments[0]
    with pytest.raises(ConfigError, match=r"deployment 'c'\.model: LiteLLM has no provider 'antropic'"):
        check_provider(litellm, d, "deployment 'c'")


@pytest.mark.parametrize(("model", "custom", "native"), [
    ("anthropic/claude-3-5-sonnet-20240620", None, "anthropic/claude-3-5-sonnet-20240620"),
    ("bedrock/anthropic.claude-v2", None, "bedrock/anthropic.claude-v2"),
    ("vertex_ai/gemini-1.5-pro", None, "vertex_ai/gemini-1.5-pro"),
    ("cohere/command-r", None, "cohere/command-r"),
    ("anthropic.claude-v2", "bedrock", "bedrock/anthropic.claude-v2"),
])
def test_litellm_entries_map_onto_kind_provider(model: str, custom: str | None, native: str) -> None:
    params: dict[str, Any] = {"model": model, "api_key": "os.environ/PROVIDER_KEY", "rpm": 60, "timeout": 30,
                              "aws_region_name": "eu-west-1", "drop_params": True, "max_retries": 4, "stream_timeout": 5}
    if custom:
        params["custom_llm_provider"] = custom
    data = {"model_list": [{"model_name": "m", "litellm_params": params, "model_info": {"id": "dep-1"}}]}
    r = settings_from_dict(data, environ={"PROVIDER_KEY": "sk-secret"})
    d = r.settings.models[0].deployments[0]
    assert isinstance(d, ProviderDeployment)
    assert (d.model, d.api_key, d.rpm, d.timeout_s, d.name) == (native, "sk-secret", 60, 30.0, "dep-1")
    assert d.params == {"aws_region_name": "eu-west-1", "drop_params": True}
    assert sorted(w.split(":")[0] for w in r.warnings) == [
        "model_list[0].litellm_params.max_retries", "model_list[0].litellm_params.stream_timeout"]
    assert "sk-secret" not in "".join(r.warnings)


def test_litellm_entry_without_prefix_is_still_skipped() -> None:
    r = settings_from_dict({"model_list": [{"model_name": "m", "litellm_params": {"model": "llama3"}},
                                           {"model_name": "ok", "litellm_params": {"model": "anthropic/claude-3"}}]}, environ={})
    assert [m.name for m in r.settings.models] == ["ok"]
    assert r.warnings[0].startswith("model_list[0]: model_name 'm': a model without a provider prefix ('llama3')")


def test_litellm_provider_errors_name_the_litellm_key() -> None:
    data = {"model_list": [{"model_name": "m", "litellm_params": {"model": "anthropic/x", "api_base": "not a url", "rpm": 0}}]}
    with pytest.raises(ConfigError) as info:
        settings_from_dict(data, source="litellm.yaml", environ={})
    assert "model_list[0].litellm_params.api_base: not a URL" in info.value.message
    assert "model_list[0].litellm_params.rpm: Input should be greater than or equal to 1" in info.value.message


# --- what the backend sends LiteLLM ---------------------------------------------------------------------


async def test_kwargs_client_fields_params_and_what_modelyard_owns(litellm: Any) -> None:
    sdk = Recorder(reply=await litellm.acompletion(model="anthropic/c", messages=MSG, mock_response="hi"))
    d = provider(api_key="sk-ant", api_base="http://127.0.0.1:9", params={"max_tokens": 99, "temperature": 0.1, "top_k": 5})
    b = ProviderBackend(d, sdk)
    await b.call("/chat/completions", body(temperature=0.7, store=True, metadata={"a": "b"}), OPTS)
    kw = sdk.calls[0]
    assert kw["model"] == "anthropic/claude-3-5-sonnet-20240620"
    assert (kw["api_key"], kw["api_base"], kw["timeout"]) == ("sk-ant", "http://127.0.0.1:9", 5.0)
    assert (kw["max_retries"], kw["num_retries"]) == (0, 0)  # modelyard's router retries
    assert (kw["temperature"], kw["max_tokens"], kw["top_k"]) == (0.7, 99, 5)  # the client wins over params
    assert kw["messages"] == MSG
    assert kw["extra_headers"] == {"X-Request-Id": "req-1"}
    assert "store" not in kw and "metadata" not in kw and "stream" not in kw


@pytest.mark.parametrize("field", ["api_base", "api_key", "base_url", "custom_llm_provider", "vertex_credentials", "mock_response"])
async def test_client_cannot_set_litellm_arguments(field: str) -> None:
    sdk = Recorder()
    with pytest.raises(InvalidRequestError) as info:
        await ProviderBackend(provider(api_key="sk-ant"), sdk).call("/chat/completions", body(**{field: "http://127.0.0.1:1"}), OPTS)
    assert info.value.status == 400 and info.value.param == field
    assert sdk.calls == []


async def test_unsupported_paths() -> None:
    b = ProviderBackend(provider(), Recorder())
    with pytest.raises(NotFoundError):
        await b.call("/completions", orjson.dumps({"prompt": "x"}), OPTS)
    with pytest.raises(InvalidRequestError, match="cannot be streamed"):
        await b.open_stream("/embeddings", orjson.dumps({"input": "x"}), OPTS)


# --- LiteLLM's objects → OpenAI bodies ------------------------------------------------------------------


async def test_unary_chat_is_an_openai_chat_completion(litellm: Any) -> None:
    reply = await ProviderBackend(provider(params={"mock_response": "Hello there"}), litellm).call(
        "/chat/completions", body(max_tokens=8), OPTS)
    data = orjson.loads(reply.body)
    validate(data, "CreateChatCompletionResponse")
    assert data["object"] == "chat.completion"
    assert data["choices"][0]["message"] == {"role": "assistant", "content": "Hello there", "refusal": None}
    assert data["choices"][0]["finish_reason"] == "stop"
    u = data["usage"]
    assert u["prompt_tokens"] > 0 and u["completion_tokens"] > 0
    assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]
    assert "provider_specific_fields" not in reply.body.decode()


async def _events(stream: ProviderStream) -> list[Any]:
    out = []
    async for part in stream.chunks():
        for line in part.decode().split("\n\n"):
            if line:
                assert line.startswith("data: ")
                out.append(line[6:] if line == "data: [DONE]" else orjson.loads(line[6:]))
    return out


@pytest.mark.parametrize("include_usage", [True, False])
async def test_stream_is_openai_chunks_with_a_usage_chunk(litellm: Any, include_usage: bool) -> None:
    b = ProviderBackend(provider(params={"mock_response": "Hello streaming world"}), litellm)
    s = await b.open_stream("/chat/completions", body(stream=True, stream_options={"include_usage": include_usage}), OPTS)
    assert (s.status, s.content_type) == (200, b"text/event-stream")
    events = await _events(s)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    for c in chunks:
        validate(c, "CreateChatCompletionStreamResponse")
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "Hello streaming world"
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    finals = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert finals == ["stop"]
    usage = [c for c in chunks if c.get("usage")]
    if include_usage:
        assert len(usage) == 1 and usage[0] is chunks[-1] and usage[0]["choices"] == []
        assert usage[0]["usage"]["completion_tokens"] > 0
    else:
        assert usage == []
    assert len({c["id"] for c in chunks}) == 1


def test_chunk_with_tool_call_delta() -> None:
    raw = {"id": "chatcmpl-1", "created": 5, "model": "claude", "object": "chat.completion.chunk",
           "choices": [{"index": 0, "finish_reason": None, "delta": {
               "role": None, "content": None, "provider_specific_fields": {"x": 1},
               "tool_calls": [{"id": "toolu_1", "type": "function", "index": 0, "function": {"name": "get", "arguments": "{\"a\""}}]}}]}
    chunk, usage = chunk_body(raw)
    validate(chunk, "CreateChatCompletionStreamResponse")
    assert chunk["choices"][0]["delta"] == {"tool_calls": [
        {"function": {"name": "get", "arguments": "{\"a\""}, "id": "toolu_1", "type": "function", "index": 0}]}
    assert usage is None


@pytest.mark.parametrize("encoding", ["float", "base64"])
async def test_embeddings(litellm: Any, encoding: str) -> None:
    d = ProviderDeployment(kind="provider", model="cohere/embed-english-v3.0", params={"mock_response": [0.25, -0.5, 1.0]})
    reply = await ProviderBackend(d, litellm).call(
        "/embeddings", orjson.dumps({"model": d.model, "input": ["a", "b"], "encoding_format": encoding}), OPTS)
    data = orjson.loads(reply.body)
    if encoding == "float":  # OpenAI's schema types the embedding as an array only (base64 is its known gap)
        validate(data, "CreateEmbeddingResponse")
    emb = data["data"][0]["embedding"]
    if encoding == "base64":
        emb = list(struct.unpack("<3f", base64.b64decode(emb)))
    assert emb == [0.25, -0.5, 1.0]
    assert data["usage"]["prompt_tokens"] == data["usage"]["total_tokens"] > 0


async def test_unreadable_response_is_an_upstream_error() -> None:
    with pytest.raises(UpstreamError, match="could not be read"):
        await ProviderBackend(provider(), Recorder(reply={"choices": [{"message": 5}]})).call("/chat/completions", body(), OPTS)


# --- errors -----------------------------------------------------------------------------------------------


def _raised(outer: BaseException, inner: BaseException | None = None) -> BaseException:
    try:
        try:
            if inner is not None:
                raise inner
        finally:
            raise outer
    except BaseException as exc:  # noqa: BLE001
        return exc


def _http_status(status: int, headers: dict[str, str] | None = None) -> httpx.HTTPStatusError:
    req = httpx.Request("POST", "http://127.0.0.1:1/v1/messages")
    return httpx.HTTPStatusError(str(status), request=req, response=httpx.Response(status, request=req, headers=headers))


def test_provider_4xx_is_the_clients_4xx_with_the_providers_words(litellm: Any) -> None:
    text = 'AnthropicException - {"type": "error", "error": {"type": "invalid_request_error", "message": "max_tokens: too big"}}'
    err = translate_error(_raised(litellm.BadRequestError(message=text, model="c", llm_provider="anthropic"), _http_status(400)), "p")
    assert isinstance(err, UpstreamStatusError) and not err.retryable
    assert (err.status, err.upstream_status) == (400, 400)
    assert err.body()["error"] == {"message": "max_tokens: too big", "type": "invalid_request_error", "param": None,
                                   "code": "invalid_request_error"}


def test_overloaded_529_keeps_its_status_and_is_retryable(litellm: Any) -> None:
    text = 'AnthropicError - {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}'
    exc = _raised(litellm.InternalServerError(message=text, model="c", llm_provider="anthropic"), _http_status(529))
    err = translate_error(exc, "p")
    assert isinstance(err, UpstreamStatusError) and err.retryable
    assert (err.upstream_status, err.status, err.message) == (529, 502, "Overloaded")


def test_rate_limit_keeps_429_and_retry_after(litellm: Any) -> None:
    exc = _raised(litellm.RateLimitError(message="slow down", model="c", llm_provider="anthropic"),
                  _http_status(429, {"retry-after": "7"}))
    err = translate_error(exc, "p")
    assert isinstance(err, UpstreamStatusError) and err.retryable
    assert (err.status, err.headers.get("retry-after"), err.body()["error"]["type"]) == (429, "7", "rate_limit_error")


def test_unsupported_param_is_400(litellm: Any) -> None:
    exc = litellm.UnsupportedParamsError(message="anthropic does not support parameters: ['logit_bias']", model="c",
                                         llm_provider="anthropic")
    err = translate_error(exc, "p")
    assert isinstance(err, UpstreamStatusError) and (err.status, err.retryable) == (400, False)
    assert "logit_bias" in err.message


def test_connection_refused_is_a_connect_error_not_a_500(litellm: Any) -> None:
    refused = _raised(httpx.ConnectError("connect failed"), ConnectionRefusedError(111, "Connection refused"))
    exc = _raised(litellm.InternalServerError(message="AnthropicException - Cannot connect", model="c", llm_provider="anthropic"), refused)
    assert isinstance(translate_error(exc, "p"), UpstreamConnectError)


def test_timeouts(litellm: Any) -> None:
    assert isinstance(translate_error(litellm.Timeout(message="t", model="c", llm_provider="anthropic"), "p"), UpstreamTimeoutError)
    assert isinstance(translate_error(_raised(litellm.APIConnectionError(message="x", model="c", llm_provider="a"),
                                              httpx.ReadTimeout("slow")), "p"), UpstreamTimeoutError)


def test_anything_else_is_a_502_upstream_error() -> None:
    err = translate_error(KeyError("choices"), "provider:anthropic/c")
    assert type(err) is UpstreamError and err.status == 502 and err.retryable
    assert err.message.startswith("provider:anthropic/c failed")


async def test_real_sdk_error_through_the_backend(litellm: Any) -> None:
    d = provider(params={"mock_response": litellm.RateLimitError(message="slow down", llm_provider="anthropic", model="c")})
    with pytest.raises(UpstreamStatusError) as info:
        await ProviderBackend(d, litellm).call("/chat/completions", body(), OPTS)
    assert (info.value.status, info.value.retryable) == (429, True)
    assert "slow down" in info.value.message
