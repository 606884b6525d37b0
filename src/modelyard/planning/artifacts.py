"""Model sizes and shapes from the artifact store, for specs that name ``artifact:`` instead of a size.

- GGUF (llama.cpp): weights = the file's size; layers, KV heads, head size and trained context from
  the header (``runtime/gguf.py`` reads it without loading the model).
- A directory (safetensors / sentence-transformers): weights = the ``*.safetensors`` files (all
  files when there are none); the shape from ``config.json`` (``num_hidden_layers``,
  ``num_key_value_heads`` or ``num_attention_heads``, ``head_dim`` or ``hidden_size / heads``,
  ``max_position_embeddings``), found at the top or one level down.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from modelyard.errors import ArtifactError
from modelyard.registry.artifacts import ArtifactStore, Manifest
from modelyard.runtime.gguf import read_gguf_metadata

from .spec import ArtifactFacts, SpecIn


def _gguf_shape(meta: dict[str, Any]) -> dict[str, int | None]:
    arch = meta.get("general.architecture", "llama")

    def get(key: str) -> Any:
        v = meta.get(f"{arch}.{key}")
        return v[0] if isinstance(v, list) and v else v

    layers, heads, kv_heads = get("block_count"), get("attention.head_count"), get("attention.head_count_kv")
    emb, key_len = get("embedding_length"), get("attention.key_length")
    head_dim = key_len if key_len else (int(emb) // int(heads) if emb and heads else None)
    return {"layers": int(layers) if layers else None, "kv_heads": int(kv_heads or heads) if (kv_heads or heads) else None,
            "head_dim": int(head_dim) if head_dim else None,
            "context": int(get("context_length")) if get("context_length") else None}


def _config_shape(cfg: dict[str, Any]) -> dict[str, int | None]:
    heads = cfg.get("num_attention_heads")
    kv_heads = cfg.get("num_key_value_heads", heads)
    head_dim = cfg.get("head_dim") or (cfg["hidden_size"] // heads if cfg.get("hidden_size") and heads else None)
    return {"layers": cfg.get("num_hidden_layers"), "kv_heads": kv_heads, "head_dim": head_dim,
            "context": cfg.get("max_position_embeddings")}


def facts_of(store: ArtifactStore, manifest: Manifest) -> ArtifactFacts:
    path = store.path(manifest)
    if manifest.kind == "file":
        shape: dict[str, int | None] = {}
        if manifest.format == "gguf":
            try:
                shape = _gguf_shape(read_gguf_metadata(str(path))[0])
            except (OSError, ValueError) as exc:
                raise ArtifactError(f"{manifest.ref}: unreadable GGUF header: {exc}") from exc
        return ArtifactFacts(manifest.size, shape)
    root = Path(path)
    tensors = sorted(root.rglob("*.safetensors"))
    weights = sum(p.stat().st_size for p in tensors) if tensors else manifest.size
    for cfg_path in [root / "config.json", *sorted(root.glob("*/config.json"))]:
        if cfg_path.is_file():
            try:
                return ArtifactFacts(weights, _config_shape(json.loads(cfg_path.read_text())))
            except (OSError, ValueError, TypeError) as exc:
                raise ArtifactError(f"{manifest.ref}: unreadable {cfg_path.name}: {exc}") from exc
    return ArtifactFacts(weights, {})


def facts_for_spec(spec: SpecIn, store: ArtifactStore) -> dict[str, ArtifactFacts]:
    """Facts of every artifact the spec names that the store has (the others are reported by to_problem)."""
    out: dict[str, ArtifactFacts] = {}
    for m in spec.models:
        if m.artifact is None or m.artifact in out:
            continue
        name, _, version = m.artifact.partition("@")
        try:
            manifest = store.get(name, version or None)
        except ArtifactError:
            continue
        out[m.artifact] = facts_of(store, manifest)
    return out
