"""``LlamaCppEngine``: chat and text completion on llama.cpp's server, in process (xllamacpp).

xllamacpp runs the llama.cpp server (continuous batching over ``n_parallel`` slots) inside this
process and hands back OpenAI-shaped dicts; this module fixes what it gets wrong: ``model`` (the
name given at construction, not the file path), ids, legacy completion ``logprobs``, missing
``logprobs``/``refusal`` keys, llama.cpp-only fields (``timings``), and ``usage`` for ``n > 1``
(llama.cpp's own ``n`` reports one choice's tokens, so ``n`` runs as n generations).

**Its HTTP listener.** Every ``xllamacpp.Server`` starts llama.cpp's HTTP server (no switch turns
it off: ``init()`` always calls ``ctx_http.start()``). A hostname ending in ``.sock`` makes it
listen on a Unix socket instead of TCP, so ``load`` binds it to a socket in a fresh ``0700``
directory, requires a random API key nobody knows, and then deletes the socket and the directory:
the listener keeps running but nothing can reach it (no TCP port at all; no path to connect to).
In-process calls go straight to the routes and never see the key.

**Loading.** llama.cpp's own load is mostly CPU work on one thread that holds the GIL throughout
(profiled, SmolLM2 / Qwen2.5-0.5B, file cached: building the vocabulary and its token-to-piece cache
~100 / ~320 ms, formatting every metadata value — the whole 49k / 152k-token arrays — for a log line
even at verbosity 0, ~20 / ~70 ms, clearing the KV cache 35–160 ms; it then maps the weights with
``MAP_POPULATE``). So ``load`` first starts a thread that faults the whole file into the page cache
(``pages.populate``, in the kernel without the GIL) and only then lets llama.cpp start: the disk
reads while llama.cpp parses, and a cold load costs about max(read, parse) instead of their sum.

**Warm-up.** A ``Server`` destroyed before it served a request hangs, so ``load`` serves one
(1-token prompt, 1 token out). That request is the model's first warm-up: the first ``warmup()``
after a load returns at once, later ones serve the same smallest request. (It used to be a chat
request through the chat template: SmolLM2's template adds a 31-token system prompt, 200 ms of
prompt processing on one thread that made every load 200 ms longer; the slot's prompt cache it left
helped only a first request with that very system prompt.)

**Memory.** llama.cpp mmaps the GGUF, so the page cache already is the "host" tier
(``supports_host_tier = False``). ``Footprint.weights`` is the tensor-data size of the GGUF (the
"model size" llama.cpp reports; all of it is resident once traffic has touched every row, while RSS
right after load under-counts rows of the token-embedding matrix not yet read). ``kv_cache`` is
computed from the GGUF's own dimensions: ``n_ctx × Σ_layers n_head_kv × (key_len + value_len) × 2``
bytes (f16 K and V; ``n_ctx`` is the total shared by the slots, not per slot) — exactly the "KV
buffer size" llama.cpp logs (45.00 MiB SmolLM2, 24.00 MiB Qwen at n_ctx 2048). ``overhead`` is the
growth of malloc'd bytes in use (glibc ``mallinfo2``, all arenas) over load and warm-up, minus the
KV cache: compute buffer, repacked weights, output buffer, vocabulary, slots (80 MiB SmolLM2,
169 MiB Qwen; the same on every reload — RSS is not: freed heap is reused, so a reload "grows"
by almost nothing). It is counted process-wide, so other threads allocating during a load add to
it. Without mallinfo2 (not glibc) anonymous-RSS growth is used. llama.cpp's host prompt cache
(``cache_ram_mib``, 8 GiB by default!) is off unless ``extra`` asks for it, and then it is added.

**Threads.** ``n_threads`` defaults to cores − 1 (at least 1): llama.cpp's threads meet at a
barrier after every op, so when another process takes one of the cores they all wait for the
descheduled one. SmolLM2 on 2 cores, 100 tokens: idle, 1 thread 43 tok/s vs 2 threads 55–58;
with one core busy elsewhere, 1 thread 38 tok/s vs 2 threads 5.5 tok/s. ``chat``/``complete``
block their thread and release the GIL; they may run concurrently (the server schedules them over
its slots; beyond ``n_parallel`` they queue inside llama.cpp). ``on_chunk`` runs on the calling
thread. ``load``/``unload``/``warmup`` must not run concurrently with each other. ``unload`` stops
streams at their next token, waits for in-flight calls to return, then drops the server; new calls
get ``ModelUnavailableError``.

**Tools.** ``tools``/``tool_choice`` are handled here, not by llama.cpp (which neither constrains
nor parses calls for these templates): ``runtime/tool_calls.py`` rewrites the body and parses the
output (docs/design/tool-calls.md).

Request defaults are llama.cpp's sampling defaults (temperature 0.8, top_k 40, top_p 0.95,
min_p 0.05), except ``max_tokens`` for ``/completions``, which defaults to OpenAI's 16.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

from modelyard.errors import InvalidRequestError, ModelLoadError, ModelUnavailableError, ModelyardError
from modelyard.runtime import tool_calls, tool_parse
from modelyard.runtime.base import Capability, ChunkCallback, Footprint, LoadOptions
from modelyard.runtime.gguf import kv_cache_bytes, read_gguf_metadata
from modelyard.runtime.pages import allocated_bytes, populate

MAX_N = 16

_CHAT_PASS = ("messages", "temperature", "top_p", "stop", "seed", "presence_penalty", "frequency_penalty",
              "logit_bias", "logprobs", "top_logprobs", "response_format", "top_k", "min_p", "repeat_penalty")
_CMPL_PASS = ("temperature", "top_p", "stop", "seed", "presence_penalty", "frequency_penalty", "logit_bias",
              "top_k", "min_p", "repeat_penalty")


class _Reader:
    """Faults a file into the page cache on a thread (``pages.populate``: GIL released)."""

    def __init__(self, path: str) -> None:
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(path,), name="modelyard-populate", daemon=True)
        self._thread.start()
        self._started.wait()  # in the kernel before llama.cpp takes the GIL for its whole load

    def _run(self, path: str) -> None:
        self._started.set()
        with contextlib.suppress(OSError):  # only an optimisation: llama.cpp reads what is missing
            populate(path)

    def join(self) -> None:
        self._thread.join()


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


# --- the engine ----------------------------------------------------------------------------------


class LlamaCppEngine:
    """One GGUF model on an in-process llama.cpp server (see the module docstring)."""

    capabilities = frozenset({Capability.chat, Capability.completion})
    supports_host_tier = False

    def __init__(self, name: str, *, header_cache: dict[tuple[Any, ...], Any] | None = None) -> None:
        self.name = name
        self._headers = {} if header_cache is None else header_cache  # shared by one deployment's engines
        self.metadata: dict[str, Any] = {}
        self.native_tools = False  # the chat template renders tools and <tool_call> (tool_calls.py)
        self.footprint: Footprint | None = None
        self.load_seconds = 0.0  # Server construction (mmap, context, KV allocation)
        self.warmup_seconds = 0.0  # the first request, run inside load()
        self._warm_from_load = False  # load()'s own request counts as the first warm-up
        self._server: Any = None
        self._cond = threading.Condition()
        self._in_flight = 0
        self._closing = False
        # Servers whose destruction would hang (they never served a request): kept alive, with this
        # runtime, rather than hang the thread that drops them.
        self._unsafe_to_destroy: list[Any] = []

    def prepare(self, artifact_path: str, opts: LoadOptions) -> None:
        """Once per process before any load (server start): import xllamacpp, initialise ggml's
        backend registry, and read the GGUF header into the deployment's header cache."""
        import xllamacpp

        xllamacpp.get_device_info()
        with contextlib.suppress(OSError, ValueError):  # load() reports a bad file
            self._header(artifact_path)

    def _header(self, path: str) -> tuple[dict[str, Any], int]:
        """``read_gguf_metadata`` (16 ms for SmolLM2, 36 ms for Qwen: the vocabulary arrays are
        walked to find the tensor data), once per file version (path, inode, size, mtime)."""
        st = os.stat(path)
        key = (path, st.st_ino, st.st_size, st.st_mtime_ns)
        if key not in self._headers:
            self._headers[key] = read_gguf_metadata(path)
        return self._headers[key]

    # --- residency -------------------------------------------------------------------------------
    def load(self, artifact_path: str, opts: LoadOptions) -> Footprint:
        if self._server is not None:
            raise ModelLoadError(f"model {self.name!r} is already loaded")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # llama.cpp never downloads here either: offline=True
        try:
            import xllamacpp
        except ImportError as exc:
            raise ModelLoadError(f"xllamacpp is not installed: {exc}") from exc
        if not os.path.isfile(artifact_path):
            raise ModelLoadError(f"model {self.name!r}: no GGUF file at {artifact_path}")
        reader = _Reader(artifact_path)  # the disk works while llama.cpp parses (see "Loading")
        try:
            return self._load(xllamacpp, artifact_path, opts)
        finally:
            reader.join()

    def _load(self, xllamacpp: Any, artifact_path: str, opts: LoadOptions) -> Footprint:
        try:
            meta, data_offset = self._header(artifact_path)
            kv = kv_cache_bytes(meta, opts.n_ctx)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ModelLoadError(f"model {self.name!r}: {artifact_path} is not a usable GGUF file: {exc}") from exc
        extra = opts.extra
        threads = opts.n_threads or max(1, _cores() - 1)  # see "Threads" above
        cache_ram_mib = int(extra.get("cache_ram_mib", 0))
        sock_dir = tempfile.mkdtemp(prefix="modelyard-llama-")  # mode 0700
        p = xllamacpp.CommonParams()
        p.model.path = artifact_path
        p.cpuparams.n_threads = p.cpuparams_batch.n_threads = threads
        settings = {
            "n_ctx": opts.n_ctx, "n_parallel": opts.n_parallel,
            "n_gpu_layers": int(extra.get("n_gpu_layers", 0 if opts.device == "cpu" else -1)),
            "fit_params": False,  # keep n_ctx as asked: the footprint is computed from it
            "warmup": False,  # load() serves its own first request (saves 30-100 ms)
            "cache_ram_mib": cache_ram_mib, "offline": True, "ui": False, "endpoint_slots": False,
            "endpoint_metrics": False, "verbosity": int(extra.get("verbosity", 0)),
            "reasoning_format": xllamacpp.common_reasoning_format.COMMON_REASONING_FORMAT_NONE,
            "hostnames": [os.path.join(sock_dir, "http.sock")], "api_keys": [secrets.token_urlsafe(32)],
            "n_threads_http": 1,  # the listener is unreachable (see above): one thread is plenty
        }
        for key, value in settings.items():
            setattr(p, key, value)
        heap0 = allocated_bytes()
        t0 = time.perf_counter()
        try:
            server = xllamacpp.Server(p)
        except Exception as exc:
            raise ModelLoadError(f"model {self.name!r}: llama.cpp failed to load {artifact_path}: {exc}") from exc
        finally:
            shutil.rmtree(sock_dir, ignore_errors=True)  # the listener is now unreachable
        t1 = time.perf_counter()
        try:  # a Server destroyed before it served a request hangs: serve one now
            out = server.handle_completions({"prompt": "Hello", "max_tokens": 1, "temperature": 0.0})
            if not isinstance(out, dict) or "error" in out:
                raise RuntimeError(f"warm-up request failed: {out!r}"[:500])
        except Exception as exc:
            self._unsafe_to_destroy.append(server)
            raise ModelLoadError(f"model {self.name!r}: llama.cpp loaded but could not generate: {exc}") from exc
        t2 = time.perf_counter()
        heap1 = allocated_bytes()
        self.metadata = meta
        self.native_tools = tool_calls.template_has_tools(meta.get("tokenizer.chat_template"))
        self.load_seconds, self.warmup_seconds = t1 - t0, t2 - t1
        weights = os.path.getsize(artifact_path) - data_offset
        overhead = max(0, heap1 - heap0 - kv) + cache_ram_mib * (1 << 20)
        self.footprint = Footprint(weights=weights, kv_cache=kv, overhead=overhead)
        with self._cond:
            self._server, self._closing = server, False
        self._warm_from_load = True
        return self.footprint

    def to_host(self) -> None:
        raise NotImplementedError("llama.cpp mmaps the GGUF: the page cache is its host tier (unload instead)")

    def to_active(self) -> None:
        raise NotImplementedError("llama.cpp has no host tier: load from disk")

    def unload(self) -> None:
        """Safe in every state: never loaded, failed load, loaded, already unloaded."""
        with self._cond:
            if self._server is None:
                return
            self._closing = True  # streams stop at their next token; new calls are refused
            while self._in_flight:
                self._cond.wait()
            server, self._server = self._server, None
        del server  # the last reference: ~Server joins llama.cpp's loop and unmaps the file

    def warmup(self) -> None:
        """One synthetic request: the smallest there is (a 1-token prompt, 1 token out). The first
        call after a load is the request load() already served (see "Warm-up")."""
        if self._warm_from_load:
            self._warm_from_load = False
            return
        self.complete({"prompt": "Hello", "max_tokens": 1, "temperature": 0.0})

    # --- inference -------------------------------------------------------------------------------
    def chat(self, request: dict[str, Any], on_chunk: ChunkCallback | None = None) -> dict[str, Any]:
        n = _n(request)
        spec = tool_calls.check_tools(request, local=True)
        base = {k: request[k] for k in _CHAT_PASS if request.get(k) is not None}
        tool_calls.apply_to_body(base, spec, native=self.native_tools)
        spec = spec if spec is not None and spec.offered else None
        mt = request.get("max_completion_tokens")
        mt = request.get("max_tokens") if mt is None else mt
        if mt is not None:
            base["max_tokens"] = mt
        top = int(request.get("top_logprobs") or 0)
        head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
                "model": self.name}
        jobs = [(i, _seeded(base, i, n), i == 0, "") for i in range(n)]
        return self._generate(
            "handle_chat_completions", head, jobs, on_chunk,
            lambda out, i, _: [_chat_choice(c, i, top, spec) for c in out.get("choices", [])[:1]],
            lambda i, _: _ChatStream(head, i, on_chunk, self, top, spec))

    def complete(self, request: dict[str, Any], on_chunk: ChunkCallback | None = None) -> dict[str, Any]:
        n = _n(request)
        prompts = _prompts(request.get("prompt"))
        if request.get("suffix"):
            raise InvalidRequestError("suffix is not supported by this model", param="suffix")
        best_of = request.get("best_of")
        if best_of is not None and best_of != n:
            raise InvalidRequestError("best_of is not supported by this model (only best_of == n)", param="best_of")
        echo, k = bool(request.get("echo")), request.get("logprobs")
        if echo and (k is not None or not all(isinstance(p, str) for p in prompts)):
            raise InvalidRequestError("echo is supported only for text prompts without logprobs", param="echo")
        base = {kk: request[kk] for kk in _CMPL_PASS if request.get(kk) is not None}
        base["max_tokens"] = request.get("max_tokens") if request.get("max_tokens") is not None else 16
        if k is not None:
            base["logprobs"] = max(int(k), 1)
        head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                "model": self.name}
        jobs = [(pi * n + i, _seeded({**base, "prompt": p}, i, n), i == 0, p if echo else "")
                for pi, p in enumerate(prompts) for i in range(n)]
        return self._generate(
            "handle_completions", head, jobs, on_chunk,
            lambda out, i, pre: [_cmpl_choice(pre + c.get("text", ""), i, c, k, len(pre)) for c in out["choices"][:1]],
            lambda i, pre: _CmplStream(head, i, on_chunk, self, k, pre))

    # --- plumbing --------------------------------------------------------------------------------
    def _generate(self, method: str, head: dict[str, Any], jobs: list[tuple[int, dict[str, Any], bool, str]],
                  on_chunk: ChunkCallback | None, to_choices: Any, new_stream: Any) -> dict[str, Any]:
        """Run the generations one after another (n > 1 and prompt lists fan out: llama.cpp's own
        ``n`` reports one choice's usage) and sum their exact usage."""
        choices: list[dict[str, Any]] = []
        usage = _Usage()
        with self._in_flight_call():
            for index, sub, first, prefix in jobs:
                if on_chunk is None:
                    # No local may hold the Server or a bound method of it: a traceback keeping this
                    # frame alive would keep the model loaded after unload().
                    try:
                        out = self._check(getattr(self._server, method)(sub))
                    except (ValueError, RuntimeError) as exc:  # the request did not parse: llama.cpp's server answers 400
                        raise InvalidRequestError(f"{self.name}: {exc}") from None
                    choices += to_choices(out, index, prefix)
                    usage.add(out.get("usage"), first=first)
                    continue
                acc = new_stream(index, prefix)
                sub = {**sub, "stream": True, "stream_options": {"include_usage": True}, "timings_per_token": True}
                try:
                    out = getattr(self._server, method)(sub, acc.feed)
                except (ValueError, RuntimeError) as exc:  # as above; raised before the first chunk
                    raise InvalidRequestError(f"{self.name}: {exc}") from None
                if acc.error is not None:
                    raise acc.error
                if isinstance(out, dict):
                    self._check(out)
                choices.append(acc.choice())
                usage.add(acc.usage, first=first)
                if acc.stopped:
                    break
        return {**head, "choices": choices, "usage": usage.dict()}

    @contextlib.contextmanager
    def _in_flight_call(self) -> Iterator[None]:
        with self._cond:
            if self._server is None or self._closing:
                raise ModelUnavailableError(f"model {self.name!r} is not loaded")
            self._in_flight += 1
        try:
            yield
        finally:
            with self._cond:
                self._in_flight -= 1
                if not self._in_flight:
                    self._cond.notify_all()

    @staticmethod
    def _check(out: Any) -> dict[str, Any]:
        if not isinstance(out, dict):
            raise ModelyardError(f"llama.cpp returned {type(out).__name__}, not a dict")
        err = out.get("error")
        if err is None:
            return out
        if not isinstance(err, dict):
            raise ModelyardError(f"llama.cpp failed: {err}")
        msg = str(err.get("message", "llama.cpp error"))
        code = err.get("code", 500)
        if err.get("type") == "exceed_context_size_error":
            raise InvalidRequestError(msg, param="messages", code="context_length_exceeded")
        if isinstance(code, int) and 400 <= code < 500:
            raise InvalidRequestError(msg)
        raise ModelyardError(f"llama.cpp failed: {msg}")


def _n(request: dict[str, Any]) -> int:
    n = request.get("n", 1)
    n = 1 if n is None else n
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_N:
        raise InvalidRequestError(f"n: expected an integer from 1 to {MAX_N}", param="n")
    return n


def _seeded(base: dict[str, Any], i: int, n: int) -> dict[str, Any]:
    sub = dict(base)
    if n > 1 and isinstance(sub.get("seed"), int):
        sub["seed"] += i  # n choices from one seed must still differ, and stay reproducible
    return sub


def _prompts(prompt: Any) -> list[Any]:
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list) and prompt:
        if all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            return [prompt]
        if all(isinstance(p, str) for p in prompt) or all(isinstance(p, list) and p for p in prompt):
            return list(prompt)
    raise InvalidRequestError("prompt: expected a string, an array of strings, or token arrays", param="prompt")


class _Usage:
    def __init__(self) -> None:
        self.prompt = self.completion = self.cached = 0

    def add(self, u: dict[str, Any] | None, *, first: bool) -> None:
        if not u:
            return
        if first:  # the n generations of one prompt count that prompt once, as OpenAI does
            self.prompt += int(u.get("prompt_tokens", 0))
            self.cached += int((u.get("prompt_tokens_details") or {}).get("cached_tokens", 0))
        self.completion += int(u.get("completion_tokens", 0))

    def dict(self) -> dict[str, Any]:
        return {"prompt_tokens": self.prompt, "completion_tokens": self.completion,
                "total_tokens": self.prompt + self.completion, "prompt_tokens_details": {"cached_tokens": self.cached}}


def _token_lp(e: dict[str, Any], top: int) -> dict[str, Any]:
    return {"token": e.get("token", ""), "logprob": float(e.get("logprob", -9999.0)), "bytes": e.get("bytes"),
            "top_logprobs": [{"token": t.get("token", ""), "logprob": float(t.get("logprob", -9999.0)),
                              "bytes": t.get("bytes")} for t in (e.get("top_logprobs") or [])[:top]]}


def _chat_logprobs(lp: Any, top: int) -> dict[str, Any] | None:
    if not isinstance(lp, dict) or lp.get("content") is None:
        return None
    return {"content": [_token_lp(e, top) for e in lp["content"]], "refusal": None}


def _finish(reason: Any) -> str:
    return reason if reason in ("stop", "length", "tool_calls", "content_filter", "function_call") else "stop"


def _chat_choice(c: dict[str, Any], index: int, top: int, spec: tool_calls.ToolSpec | None) -> dict[str, Any]:
    msg = dict(c.get("message") or {})
    msg.setdefault("role", "assistant")
    msg.setdefault("content", None)
    msg.setdefault("refusal", None)
    msg.pop("reasoning_content", None)
    finish = _finish(c.get("finish_reason"))
    if spec is not None:  # the calls in the text (one parser for both paths: see tool_calls.py)
        msg = tool_parse.message(tool_calls.parse_text(msg.get("content") or "", spec))
        finish = tool_calls.finish_reason(finish, "tool_calls" in msg)
    return {"index": index, "message": msg, "logprobs": _chat_logprobs(c.get("logprobs"), top),
            "finish_reason": finish}


def _legacy_logprobs(entries: list[dict[str, Any]], k: int, offset: int) -> dict[str, Any]:
    """Chat-style token entries → the legacy completions shape (text_offset indexes ``text``)."""
    tokens, lps, tops, offs = [], [], [], []
    for e in entries:
        tok = e.get("token", "")
        tokens.append(tok)
        lps.append(float(e.get("logprob", -9999.0)))
        tops.append({t.get("token", ""): float(t.get("logprob", -9999.0)) for t in (e.get("top_logprobs") or [])[:k]})
        offs.append(offset)
        offset += len(tok)
    return {"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offs}


def _cmpl_choice(text: str, index: int, c: dict[str, Any], k: int | None, offset: int) -> dict[str, Any]:
    lp = None
    if k is not None:
        entries = (c.get("logprobs") or {}).get("content") or []
        lp = _legacy_logprobs(entries, k, offset)
    return {"text": text, "index": index, "logprobs": lp, "finish_reason": _finish(c.get("finish_reason"))}


class _Stream:
    """Receives llama.cpp's chunks for one generation, forwards fixed-up chunks, keeps the sum."""

    def __init__(self, head: dict[str, Any], index: int, on_chunk: ChunkCallback, engine: LlamaCppEngine) -> None:
        self.head, self.index, self.on_chunk, self.engine = head, index, on_chunk, engine
        self.usage: dict[str, Any] | None = None
        self.finish: str | None = None
        self.stopped = False
        self.error: BaseException | None = None

    def feed(self, chunk: Any) -> bool:
        try:
            if self.engine._closing:
                self.stopped = True
                self.error = ModelUnavailableError(f"model {self.engine.name!r} was unloaded mid-generation")
                return True
            if isinstance(chunk, dict) and "error" in chunk:
                LlamaCppEngine._check(chunk)
            t = chunk.get("timings")
            if t:  # exact counts so far, for a generation stopped before its usage chunk
                p = int(t.get("prompt_n", 0)) + int(t.get("cache_n", 0))
                self.usage = {"prompt_tokens": p, "completion_tokens": int(t.get("predicted_n", 0)),
                              "prompt_tokens_details": {"cached_tokens": int(t.get("cache_n", 0))}}
            if chunk.get("usage"):
                self.usage = chunk["usage"]
            choices = chunk.get("choices") or []
            if not choices:
                return False
            out = self.convert(choices[0])
            for one in out if isinstance(out, list) else [] if out is None else [out]:
                if self.on_chunk({**self.head, "object": self.chunk_object, "choices": [one]}):
                    self.stopped = True
                    return True
            return False
        except BaseException as exc:  # noqa: BLE001 - re-raised on the calling thread after the stop
            self.error, self.stopped = exc, True
            return True


class _ChatStream(_Stream):
    chunk_object = "chat.completion.chunk"

    def __init__(self, head: dict[str, Any], index: int, on_chunk: ChunkCallback, engine: LlamaCppEngine,
                 top: int, spec: tool_calls.ToolSpec | None = None) -> None:
        super().__init__(head, index, on_chunk, engine)
        self.top = top
        self.tools = tool_calls.DeltaStream(spec) if spec is not None else None
        self.pending_lp: list[dict[str, Any]] = []  # logprobs of text held back by the tool parser
        self.content: list[str] = []
        self.lp: list[dict[str, Any]] | None = None
        self.tool_calls: dict[int, dict[str, Any]] = {}

    def convert(self, c: dict[str, Any]) -> dict[str, Any] | list[dict[str, Any]] | None:
        delta = {k: v for k, v in (c.get("delta") or {}).items() if k != "reasoning_content"}
        if self.tools is not None:
            return self._convert_tools(c, delta)
        if delta.get("content"):
            self.content.append(delta["content"])
        for tc in delta.get("tool_calls") or []:
            cur = self.tool_calls.setdefault(int(tc.get("index", 0)), {"type": "function", "function": {"arguments": ""}})
            if tc.get("id"):
                cur["id"] = tc["id"]
            fn = tc.get("function") or {}
            if fn.get("name"):
                cur["function"]["name"] = fn["name"]
            cur["function"]["arguments"] += fn.get("arguments") or ""
        out: dict[str, Any] = {"index": self.index, "delta": delta, "finish_reason": c.get("finish_reason")}
        lp = _chat_logprobs(c.get("logprobs"), self.top)
        if lp is not None:
            self.lp = self.lp or []
            self.lp += lp["content"]
            out["logprobs"] = lp
        if c.get("finish_reason"):
            self.finish = out["finish_reason"] = _finish(c["finish_reason"])
        return out

    def _convert_tools(self, c: dict[str, Any], delta: dict[str, Any]) -> list[dict[str, Any]]:
        assert self.tools is not None
        fin = c.get("finish_reason")
        lp = _chat_logprobs(c.get("logprobs"), self.top)
        if lp is not None:
            self.lp = (self.lp or []) + lp["content"]
            self.pending_lp += lp["content"]
        outs: list[dict[str, Any]] = [{"index": self.index, "delta": d, "finish_reason": None}
                                      for d in self.tools.step(delta, last=bool(fin))]
        if fin:
            self.finish = tool_calls.finish_reason(_finish(fin), self.tools.has_calls)
            outs.append({"index": self.index, "delta": {}, "finish_reason": self.finish})
        if outs and self.pending_lp:
            outs[0]["logprobs"], self.pending_lp = {"content": self.pending_lp, "refusal": None}, []
        return outs

    def choice(self) -> dict[str, Any]:
        if self.tools is not None:
            msg = tool_parse.message(self.tools.events)
            lp = {"content": self.lp, "refusal": None} if self.lp is not None else None
            return {"index": self.index, "message": msg, "logprobs": lp, "finish_reason": self.finish or "stop"}
        msg: dict[str, Any] = {"role": "assistant", "content": "".join(self.content) if self.content else None,
                               "refusal": None}
        if self.tool_calls:
            msg["tool_calls"] = [self.tool_calls[i] for i in sorted(self.tool_calls)]
        lp = {"content": self.lp, "refusal": None} if self.lp is not None else None
        return {"index": self.index, "message": msg, "logprobs": lp, "finish_reason": self.finish or "stop"}


class _CmplStream(_Stream):
    chunk_object = "text_completion"

    def __init__(self, head: dict[str, Any], index: int, on_chunk: ChunkCallback, engine: LlamaCppEngine,
                 k: int | None, prefix: str) -> None:
        super().__init__(head, index, on_chunk, engine)
        self.k, self.prefix, self.pending_prefix = k, prefix, prefix
        self.parts: list[str] = []
        self.entries: list[dict[str, Any]] = []
        self.offset = len(prefix)  # text_offset of the next token

    def convert(self, c: dict[str, Any]) -> dict[str, Any] | None:
        gen = c.get("text") or ""
        self.parts.append(gen)
        text, self.pending_prefix = self.pending_prefix + gen, ""  # echo: the prompt goes out first
        lp = None
        if self.k is not None:
            entries = (c.get("logprobs") or {}).get("content") or []
            lp = _legacy_logprobs(entries, self.k, self.offset) if entries else None
            self.offset += sum(len(e.get("token", "")) for e in entries)
            self.entries += entries
        fin = c.get("finish_reason")
        if fin:
            self.finish = _finish(fin)
        if not text and lp is None and not fin:
            return None
        return {"text": text, "index": self.index, "logprobs": lp, "finish_reason": self.finish if fin else None}

    def choice(self) -> dict[str, Any]:
        c = {"logprobs": {"content": self.entries}, "finish_reason": self.finish or "stop"}
        return _cmpl_choice(self.prefix + "".join(self.parts), self.index, c, self.k, len(self.prefix))
