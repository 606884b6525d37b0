"""``SentenceEngine``: text embeddings with sentence-transformers (all-MiniLM-L6-v2), from a local path.

**Offline.** ``load`` sets ``HF_HUB_OFFLINE=1`` and ``TRANSFORMERS_OFFLINE=1`` with
``os.environ.setdefault`` (an explicit setting wins) before importing sentence-transformers, and
loads only from the folder it is given; nothing is ever fetched from a hub.

**Vectors.** The model card's pipeline is Transformer → mean pooling → L2 ``Normalize`` (its
``modules.json``), so vectors are unit length and cosine similarity is a dot product; with
``normalize=True`` (the default) the engine normalises again, which is a no-op for this model and a
guarantee for a folder that lacks the Normalize module. Texts longer than the model's
``max_seq_length`` (256 word pieces) are truncated, as the model card says.

**Token counts** are exact: per text, the number of positions the model attended to after
truncation (``attention_mask`` sum, ``[CLS]`` and ``[SEP]`` included), from the model's own
tokenizer in the very call that embeds it.

**Loading** (see ``st_fast``): a folder of the usual shape (Transformer → Pooling → Normalize,
``tokenizer.json``, ``model.safetensors``) is built directly: the safetensors file is mapped and its
tensors become the model's weights without a copy, a thread faulting the file in while the
tokenizer and the model skeleton are built — vectors bitwise identical to
``SentenceTransformer(path)``'s. Any other folder, or ``LoadOptions.extra["loader"] ==
"sentence-transformers"``, loads through ``SentenceTransformer(path)``; ``self.loader`` says which
path was taken and ``self.fallback_reason`` why. ``prepare(path)`` does the heavy imports (torch,
transformers, tokenizers, the model's architecture module; ~4 s here) once, at server start.

**Tiers.** On a CPU-only machine active and host are the same RAM: the weights stay where they are
(``to_host``/``to_active`` only change the state; ≈ 1 µs). With ``device="cuda"`` the weights are
packed into ``FlatWeights`` in pinned host memory after load and moved in one bulk transfer per
dtype; ``to_host`` copies them back into pinned memory (or keeps the pinned copy with
``extra["keep_host_copy"]``). A parked model refuses ``embed`` until ``to_active``.

**Footprint.** ``weights`` = the bytes of every parameter and buffer (90.9 MB for MiniLM; on the
fast path they are page-cache pages of the mapped file, shared with any other model mapping the same
file). ``overhead`` = the malloc'd bytes the load added (tokenizer, module objects; glibc
``mallinfo2``, so a reload that reuses freed heap measures the same; on the reference path a
growth larger than the weights means they were malloc'd, and they are subtracted; CPU only), plus
the activation scratch of the largest batch:
``batch × max_seq_length × 4 B × (4·hidden + intermediate + heads·max_seq_length)`` — 201 MB for
MiniLM at batch 32 × 256 tokens, against 195 MB of peak RSS growth measured for that batch.

**Threads.** ``embed`` calls are serialised by a lock (a fast tokenizer is not re-entrant and two
forward passes on the same cores only slow each other down); ``to_host``/``to_active``/``unload``
take the same lock, so they wait for a running batch. ``LoadOptions.n_threads``, when set, calls
``torch.set_num_threads`` — process-wide, torch has one intra-op pool; None leaves torch's default
(one thread per core). On 2 shared cores, torch's default collapses when another process takes a
core (measured: batch 32 from ~130 to 31–42 sentences/s, batch 1 from ~65 to 3); one thread stays
at 126–133 and 63–70, so the gateway should run torch with cores − 1 threads.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from modelyard.errors import ModelLoadError, ModelUnavailableError
from modelyard.runtime.base import Capability, Footprint, LoadOptions
from modelyard.runtime.pages import allocated_bytes
from modelyard.runtime.st_fast import (
    FastPlan,
    UnsupportedFolder,
    build_encoder,
    model_class,
    read_fast_plan,
    warm_up_code_paths,
)


def set_offline_env() -> None:
    """Never reach a hub: sentence-transformers/transformers read these at call time."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


class _Reference:
    """``SentenceTransformer(path)`` behind the encoder interface ``st_fast.TextEncoder`` has."""

    def __init__(self, folder: str) -> None:
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(folder, device="cpu", local_files_only=True)
        self.model.eval()
        self.config = getattr(getattr(self.model[0], "auto_model", None), "config", None)
        get_dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dimensions = int(get_dim() or 0)
        self.max_seq_length = int(self.model.max_seq_length or 512)

    @property
    def module(self) -> Any:
        return self.model

    def features(self, texts: list[str]) -> dict[str, Any]:
        return self.model.preprocess(texts)

    def embed(self, features: dict[str, Any]) -> Any:
        return self.model(features)["sentence_embedding"]


def _tensor_bytes(module: Any) -> int:
    seen: set[int] = set()
    total = 0
    for t in [*module.parameters(), *module.buffers()]:
        if id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total


class SentenceEngine:
    """One sentence-transformers model; ``embed`` returns unit vectors and exact token counts."""

    capabilities = frozenset({Capability.embedding})
    supports_host_tier = True

    def __init__(self, name: str, *, normalize: bool = True, batch_size: int = 32) -> None:
        self.name = name
        self.normalize = normalize
        self.batch_size = batch_size  # texts per forward pass inside one embed() call
        self.footprint: Footprint | None = None
        self.load_seconds = 0.0
        self.last_move_seconds = 0.0  # the last to_host / to_active
        self.dimensions = 0
        self.max_seq_length = 0
        self.loader = ""  # "fast" | "sentence-transformers": the path the last load took
        self.fallback_reason: str | None = None
        self._enc: Any = None
        self._flat: Any = None
        self._device: Any = None
        self._active = False
        self._keep_host_copy = False
        self._lock = threading.Lock()

    def prepare(self, artifact_path: str, opts: LoadOptions) -> None:
        """What the first load in a process would otherwise pay, done once before any load (at
        server start): the imports (torch, tokenizers, transformers and the model's architecture
        module on the fast path, sentence-transformers where the folder needs the reference path)
        and the first-time code paths (``st_fast.warm_up_code_paths``), with the thread count the
        loads will use."""
        set_offline_env()
        import tokenizers  # noqa: F401
        import torch
        import transformers  # noqa: F401

        if opts.n_threads:
            torch.set_num_threads(opts.n_threads)
        if isinstance(read_fast_plan(artifact_path), FastPlan):
            model_class(artifact_path)
            warm_up_code_paths(artifact_path)
        else:
            import sentence_transformers  # noqa: F401

    # --- residency -------------------------------------------------------------------------------
    def load(self, artifact_path: str, opts: LoadOptions) -> Footprint:
        if self._enc is not None:
            raise ModelLoadError(f"model {self.name!r} is already loaded")
        set_offline_env()
        if not os.path.isdir(artifact_path) or not os.path.isfile(os.path.join(artifact_path, "modules.json")):
            raise ModelLoadError(f"model {self.name!r}: {artifact_path} is not a sentence-transformers folder")
        try:
            import torch

            from modelyard.runtime.torch_swap import FlatWeights
        except ImportError as exc:
            raise ModelLoadError(f"model {self.name!r}: torch is not installed: {exc}") from exc
        device = torch.device(opts.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ModelLoadError(f"model {self.name!r}: device {opts.device!r} asked for, but CUDA is not available")
        if opts.n_threads:  # process-wide: torch has one intra-op pool (see "Threads" above)
            torch.set_num_threads(opts.n_threads)
        heap0 = allocated_bytes()
        t0 = time.perf_counter()
        try:
            enc, self.loader, self.fallback_reason = self._build(artifact_path, opts)
            flat = None
            keep = bool(opts.extra.get("keep_host_copy", False))  # CUDA: demotion without a copy
            if device.type != "cpu":
                flat = FlatWeights(enc.module, pin=True)
                flat.to_device(device, keep_host_copy=keep)
        except ModelLoadError:
            raise
        except Exception as exc:
            raise ModelLoadError(f"model {self.name!r}: failed to load {artifact_path}: {exc}") from exc
        self.load_seconds = time.perf_counter() - t0
        weights = _tensor_bytes(enc.module)
        growth = allocated_bytes() - heap0
        if self.loader != "fast" and growth > weights:  # the reference path malloc'd its weights
            growth -= weights
        runtime = max(0, growth) if device.type == "cpu" else 0
        self._enc, self._flat, self._device, self._active = enc, flat, device, True
        self._keep_host_copy = keep
        self.dimensions, self.max_seq_length = enc.dimensions, enc.max_seq_length
        scratch = self._scratch_bytes(int(opts.extra.get("max_batch_size", self.batch_size)))
        self.footprint = Footprint(weights=weights, overhead=runtime + scratch)
        return self.footprint

    def _build(self, folder: str, opts: LoadOptions) -> tuple[Any, str, str | None]:
        plan = read_fast_plan(folder)
        if opts.extra.get("loader") == "sentence-transformers":
            plan = "the reference loader was asked for"
        if isinstance(plan, FastPlan):
            try:
                return build_encoder(folder, plan), "fast", None
            except UnsupportedFolder as exc:
                plan = str(exc)
        try:
            return _Reference(folder), "sentence-transformers", plan
        except ImportError as exc:
            raise ModelLoadError(f"model {self.name!r}: sentence-transformers is not installed: {exc}") from exc

    def _scratch_bytes(self, batch: int) -> int:
        cfg = self._enc.config
        hidden = int(getattr(cfg, "hidden_size", self.dimensions or 384))
        inter = int(getattr(cfg, "intermediate_size", 4 * hidden))
        heads = int(getattr(cfg, "num_attention_heads", 12))
        seq = self.max_seq_length
        return batch * seq * 4 * (4 * hidden + inter + heads * seq)

    def to_host(self) -> None:
        with self._lock:
            self._require_loaded()
            t0 = time.perf_counter()
            if self._flat is not None:
                self._flat.to_host()
            self._active = False
            self.last_move_seconds = time.perf_counter() - t0

    def to_active(self) -> None:
        with self._lock:
            self._require_loaded()
            t0 = time.perf_counter()
            if self._flat is not None:
                self._flat.to_device(self._device, keep_host_copy=self._keep_host_copy)
            self._active = True
            self.last_move_seconds = time.perf_counter() - t0

    def unload(self) -> None:
        """Safe in every state (never loaded, loaded, parked, already unloaded)."""
        with self._lock:
            enc, self._enc, self._flat, self._active = self._enc, None, None, False
        if enc is not None and self._device is not None and self._device.type == "cuda":
            import torch

            del enc
            torch.cuda.empty_cache()

    def warmup(self) -> None:
        self.embed(["warm-up sentence for the embedding model"])

    # --- inference -------------------------------------------------------------------------------
    def embed(self, texts: list[str]) -> tuple[list[list[float]], int]:
        """(one vector per text, in order; total prompt tokens) — the ``EmbeddingEngine`` protocol."""
        each = self.embed_each(texts)
        return [v for v, _ in each], sum(n for _, n in each)

    def embed_each(self, texts: list[str]) -> list[tuple[list[float], int]]:
        """One (vector, tokens of that text) per text, in order: what a batch of several callers
        needs, each caller being charged for its own texts."""
        if not texts:
            return []
        import torch

        with self._lock:
            self._require_loaded()
            if not self._active:
                raise ModelUnavailableError(f"model {self.name!r} is parked on the host tier")
            enc = self._enc
            order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))  # similar lengths pad less
            out: list[tuple[list[float], int]] = [([], 0)] * len(texts)
            with torch.inference_mode():
                for start in range(0, len(order), self.batch_size):
                    idx = order[start : start + self.batch_size]
                    features = enc.features([texts[i] for i in idx])
                    counts = features["attention_mask"].sum(dim=1).tolist()
                    features = {k: v.to(self._device) if hasattr(v, "to") else v for k, v in features.items()}
                    emb = enc.embed(features)
                    if self.normalize:
                        emb = torch.nn.functional.normalize(emb, p=2, dim=1)
                    vecs = emb.float().cpu().tolist()
                    for j, i in enumerate(idx):
                        out[i] = (vecs[j], int(counts[j]))
            return out

    def count_tokens(self, texts: list[str]) -> list[int]:
        """Tokens the model would see for each text (after truncation), without embedding."""
        with self._lock:
            self._require_loaded()
            return [int(n) for n in self._enc.features(texts)["attention_mask"].sum(dim=1).tolist()]

    def _require_loaded(self) -> None:
        if self._enc is None:
            raise ModelUnavailableError(f"model {self.name!r} is not loaded")
