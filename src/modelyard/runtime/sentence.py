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

**Tiers.** ``FlatWeights`` packs the weights into one storage per dtype. With ``device="cuda"``
``to_host`` copies them into pinned host memory and frees the device copy, and ``to_active`` copies
them back in one bulk transfer each. On a CPU-only machine active and host are the same RAM: the
storage is simply parked where it is (``to_host``/``to_active`` only change the state; measured cost
≈ 10 µs). A parked model refuses ``embed`` until ``to_active``.

**Footprint.** ``weights`` = the bytes of every parameter and buffer (``FlatWeights.nbytes``,
90.9 MB for MiniLM). ``overhead`` = tokenizer and module objects, measured as RSS growth over the
load minus the weights (CPU only; the safetensors file is mmapped, so growth is measured after the
weights were copied into the flat storage; a reload reuses freed heap and measures less, so the
largest growth seen for the folder in this process is kept: ~29 MB for MiniLM), plus the
activation scratch of the largest batch:
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

_PAGE = os.sysconf("SC_PAGE_SIZE")
_RUNTIME_SEEN: dict[str, int] = {}  # folder → the largest tokenizer/runtime RSS growth measured


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE


def set_offline_env() -> None:
    """Never reach a hub: sentence-transformers/transformers read these at call time."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


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
        self._model: Any = None
        self._flat: Any = None
        self._device: Any = None
        self._active = False
        self._keep_host_copy = False
        self._lock = threading.Lock()

    # --- residency -------------------------------------------------------------------------------
    def load(self, artifact_path: str, opts: LoadOptions) -> Footprint:
        if self._model is not None:
            raise ModelLoadError(f"model {self.name!r} is already loaded")
        set_offline_env()
        if not os.path.isdir(artifact_path) or not os.path.isfile(os.path.join(artifact_path, "modules.json")):
            raise ModelLoadError(f"model {self.name!r}: {artifact_path} is not a sentence-transformers folder")
        try:
            import torch
            from sentence_transformers import SentenceTransformer

            from modelyard.runtime.torch_swap import FlatWeights
        except ImportError as exc:
            raise ModelLoadError(f"model {self.name!r}: sentence-transformers/torch not installed: {exc}") from exc
        device = torch.device(opts.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ModelLoadError(f"model {self.name!r}: device {opts.device!r} asked for, but CUDA is not available")
        if opts.n_threads:  # process-wide: torch has one intra-op pool (see "Threads" above)
            torch.set_num_threads(opts.n_threads)
        rss0 = _rss()
        t0 = time.perf_counter()
        try:
            model = SentenceTransformer(artifact_path, device="cpu", local_files_only=True)
            model.eval()
            flat = FlatWeights(model, pin=device.type == "cuda")
            keep = bool(opts.extra.get("keep_host_copy", False))  # CUDA: demotion without a copy
            if device.type != "cpu":
                flat.to_device(device, keep_host_copy=keep)
            get_dim = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
            dims = get_dim() or 0
        except Exception as exc:
            raise ModelLoadError(f"model {self.name!r}: sentence-transformers failed to load {artifact_path}: {exc}") from exc
        self.load_seconds = time.perf_counter() - t0
        growth = _rss() - rss0
        self._model, self._flat, self._device, self._active = model, flat, device, True
        self._keep_host_copy = keep
        self.dimensions, self.max_seq_length = int(dims), int(model.max_seq_length or 512)
        weights = flat.nbytes
        runtime = max(0, growth - weights) if device.type == "cpu" else 0
        # A reload reuses heap the last unload freed and "grows" less: keep the largest seen.
        runtime = _RUNTIME_SEEN[artifact_path] = max(runtime, _RUNTIME_SEEN.get(artifact_path, 0))
        scratch = self._scratch_bytes(int(opts.extra.get("max_batch_size", self.batch_size)))
        self.footprint = Footprint(weights=weights, overhead=runtime + scratch)
        return self.footprint

    def _scratch_bytes(self, batch: int) -> int:
        cfg = getattr(getattr(self._model[0], "auto_model", None), "config", None)
        hidden = int(getattr(cfg, "hidden_size", self.dimensions or 384))
        inter = int(getattr(cfg, "intermediate_size", 4 * hidden))
        heads = int(getattr(cfg, "num_attention_heads", 12))
        seq = self.max_seq_length
        return batch * seq * 4 * (4 * hidden + inter + heads * seq)

    def to_host(self) -> None:
        with self._lock:
            self._require_loaded()
            t0 = time.perf_counter()
            if self._device.type != "cpu":
                self._flat.to_host()
            self._active = False
            self.last_move_seconds = time.perf_counter() - t0

    def to_active(self) -> None:
        with self._lock:
            self._require_loaded()
            t0 = time.perf_counter()
            if self._device.type != "cpu":
                self._flat.to_device(self._device, keep_host_copy=self._keep_host_copy)
            self._active = True
            self.last_move_seconds = time.perf_counter() - t0

    def unload(self) -> None:
        """Safe in every state (never loaded, loaded, parked, already unloaded)."""
        with self._lock:
            model, self._model, self._flat, self._active = self._model, None, None, False
        if model is not None and self._device is not None and self._device.type == "cuda":
            import torch

            del model
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
            model = self._model
            order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))  # similar lengths pad less
            out: list[tuple[list[float], int]] = [([], 0)] * len(texts)
            with torch.inference_mode():
                for start in range(0, len(order), self.batch_size):
                    idx = order[start : start + self.batch_size]
                    features = model.preprocess([texts[i] for i in idx])
                    counts = features["attention_mask"].sum(dim=1).tolist()
                    features = {k: v.to(self._device) if hasattr(v, "to") else v for k, v in features.items()}
                    emb = model(features)["sentence_embedding"]
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
            return [int(n) for n in self._model.preprocess(texts)["attention_mask"].sum(dim=1).tolist()]

    def _require_loaded(self) -> None:
        if self._model is None:
            raise ModelUnavailableError(f"model {self.name!r} is not loaded")
