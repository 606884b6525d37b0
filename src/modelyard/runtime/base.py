"""What an in-process engine offers the memory manager and the local backend.

An engine wraps one loaded model of one kind (llama.cpp, sentence-transformers, scikit-learn).
All its methods are **blocking** and are called from a worker thread by their owner (the memory
manager for residency, the local backend / batcher for inference); an engine never touches the
event loop. One engine object serves one model for its whole life: ``load`` → (``to_host`` ⇄
``to_active``)* → ``unload``.

An engine may also offer ``prepare(artifact_path, options)``: what the first load in a process
would otherwise pay (heavy imports, first-time code paths), run once at server start on a spare
engine object before any load (``backends/local_models.prepare_engines``). It keeps nothing loaded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol


class Capability(str, Enum):
    chat = "chat"  # /v1/chat/completions
    completion = "completion"  # /v1/completions
    embedding = "embedding"  # /v1/embeddings
    moderation = "moderation"  # /v1/moderations
    classification = "classification"  # /v1/classifications


@dataclass(frozen=True)
class Footprint:
    """Bytes a model occupies, measured after load (not guessed from the file size)."""

    weights: int  # weight bytes (RSS growth on CPU; torch allocation on a GPU)
    kv_cache: int = 0  # KV-cache reserve: n_layers × 2 × n_ctx × n_kv_heads × head_dim × bytes (n_ctx is shared by the slots)
    overhead: int = 0  # runtime buffers (compute graph, scratch, tokenizer)

    @property
    def active(self) -> int:
        """What the model costs on the active tier."""
        return self.weights + self.kv_cache + self.overhead

    @property
    def host(self) -> int:
        """What it costs parked on the host tier (weights only: KV and scratch are freed)."""
        return self.weights


@dataclass
class LoadOptions:
    device: str = "cpu"  # "cpu" or "cuda[:N]"
    n_ctx: int = 2048  # llama.cpp: context shared by the slots
    n_parallel: int = 2  # llama.cpp: parallel slots (continuous batching)
    n_threads: int | None = None  # None: sized to the machine
    extra: dict[str, Any] = field(default_factory=dict)


class Engine(Protocol):
    """One model, loaded or not. Blocking methods; never called concurrently for residency
    changes (the memory manager serialises them per model); inference calls may run while the
    model is active, concurrently up to the engine's own parallelism."""

    capabilities: frozenset[Capability]
    supports_host_tier: bool  # can park weights in CPU RAM and come back faster than from disk

    def load(self, artifact_path: str, opts: LoadOptions) -> Footprint:
        """disk → active. Raises ``modelyard.errors.ModelLoadError`` with a clear reason."""
        ...

    def to_host(self) -> None:
        """active → host (only if ``supports_host_tier``)."""
        ...

    def to_active(self) -> None:
        """host → active."""
        ...

    def unload(self) -> None:
        """→ disk: free everything."""
        ...

    def warmup(self) -> None:
        """Run one synthetic request (the manager runs N before marking the model ready)."""
        ...


# Inference surfaces (each engine implements those of its capabilities) ------------------------

ChunkCallback = Callable[[dict[str, Any]], bool | None]  # return True to stop generation


class ChatEngine(Engine, Protocol):
    def chat(self, request: dict[str, Any], on_chunk: ChunkCallback | None = None) -> dict[str, Any]:
        """An OpenAI chat.completion dict; with ``on_chunk`` the chunks are delivered as they are
        generated (OpenAI chat.completion.chunk dicts) and the final dict carries ``usage``."""
        ...

    def complete(self, request: dict[str, Any], on_chunk: ChunkCallback | None = None) -> dict[str, Any]: ...


class EmbeddingEngine(Engine, Protocol):
    def embed(self, texts: list[str]) -> tuple[list[list[float]], int]:
        """(one vector per text, in order; prompt tokens counted by the model's tokenizer)."""
        ...

    def embed_each(self, texts: list[str]) -> list[tuple[list[float], int]]:
        """Per text (vector, tokens): a batch mixes callers, each is billed its own tokens."""
        ...


class ClassifierEngine(Engine, Protocol):
    def classify(self, texts: list[str]) -> list[list[tuple[str, float]]]:
        """For each text, (label, score) pairs, highest score first."""
        ...

