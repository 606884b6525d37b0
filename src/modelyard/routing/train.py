"""Training and loading the task classifier behind ``model: "auto"`` (issue 11 §1).

The pieces, each separate so the CLI, the tests and the benchmark share them:

- :func:`read_dataset` — the labelled JSON lines, checked (every problem names its line);
- :class:`Encoder` — the embedded ``text-embedding`` model (all-MiniLM-L6-v2) from the artifact
  store, loaded in this process through the same engine the server uses (``runtime.sentence``), so
  the vectors are the ones the gateway's ``/v1/embeddings`` returns — no server is started;
- :func:`fit` — split, train, evaluate: a pure function of the items, their vectors and the seed;
- :func:`store_model` — the model as a new version of the ``router-tasks`` artifact;
- :func:`load_task_model` — what the AutoRouter loads at start: the store's newest version, else
  the model shipped in the package.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from modelyard.errors import ArtifactError, ConfigError
from modelyard.registry.artifacts import ArtifactStore, Manifest
from modelyard.routing.tasks import TASKS, TaskModel, evaluate, packaged_model_path, sha256_of, split, train

log = logging.getLogger("modelyard.auto")
ARTIFACT = "router-tasks"
EMBEDDER = "text-embedding"
EMBEDDING_MODEL = "all-minilm-l6-v2"
MIN_PER_TASK = 5
_TASK_RE = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
Embed = Callable[[Sequence[str]], np.ndarray]


# --- data -------------------------------------------------------------------------------------------


def read_dataset(path: str | os.PathLike[str], tasks: Sequence[str] | None = TASKS) -> tuple[list[dict[str, Any]], str]:
    """(items, sha256 of the file's bytes). ``tasks``: the allowed labels (None: any well-formed name).
    ConfigError naming the file and line on: a missing file, bad JSON, no text, a missing or
    unknown task, fewer than two tasks, a task with fewer than ``MIN_PER_TASK`` examples."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from exc
    items: list[dict[str, Any]] = []
    for n, line in enumerate(raw.decode("utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except ValueError as exc:
            raise ConfigError(f"{path}: line {n}: bad JSON: {exc}") from None
        if not isinstance(item, dict):
            raise ConfigError(f"{path}: line {n}: expected an object with \"text\" and \"task\"")
        text, task = item.get("text"), item.get("task")
        if not isinstance(text, str) or not text.strip():
            raise ConfigError(f"{path}: line {n}: missing or empty \"text\"")
        if not isinstance(task, str) or not task:
            raise ConfigError(f"{path}: line {n}: missing \"task\"")
        if (tasks is not None and task not in tasks) or not _TASK_RE.match(task):
            allowed = f"; known tasks: {', '.join(tasks)} (--tasks to change)" if tasks is not None else ""
            raise ConfigError(f"{path}: line {n}: unknown task {task!r}{allowed}")
        items.append({"text": text, "task": task, "hard": bool(item.get("hard", False))})
    counts = Counter(it["task"] for it in items)
    if len(counts) < 2:
        raise ConfigError(f"{path}: {len(counts)} task(s) ({', '.join(counts) or 'none'}): at least 2 are needed")
    few = {t: c for t, c in counts.items() if c < MIN_PER_TASK}
    if few:
        listed = ", ".join(f"{t} has {c}" for t, c in sorted(few.items()))
        raise ConfigError(f"{path}: every task needs at least {MIN_PER_TASK} examples ({listed})")
    return items, sha256_of(raw)


# --- the encoder ------------------------------------------------------------------------------------


class Encoder:
    """The embedded MiniLM, loaded in-process from the artifact store (imported into it from the
    installed wheel first if the store lacks it). ``embed`` returns unit vectors, batch by batch."""

    def __init__(self, store: ArtifactStore, name: str = EMBEDDER, *, n_threads: int | None = None,
                 batch_size: int = 32) -> None:
        from modelyard.runtime.base import LoadOptions
        from modelyard.runtime.sentence import SentenceEngine

        try:
            manifest = store.get(name)
        except ArtifactError:
            if name != EMBEDDER:
                raise
            from modelyard.registry.defaults import import_defaults

            manifest = import_defaults(store, names=[EMBEDDER])[0]
            log.info("imported %s into %s from the installed package", manifest.ref, store.root)
        self.manifest = manifest
        self.engine = SentenceEngine(name, batch_size=batch_size)
        self.engine.load(str(store.path(manifest)), LoadOptions(n_threads=n_threads))
        self.model_id = str(manifest.extra.get("model", EMBEDDING_MODEL)).lower()

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        vectors, _ = self.engine.embed(list(texts))
        return np.asarray(vectors, dtype=np.float64)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return self.engine.count_tokens(list(texts))

    def close(self) -> None:
        self.engine.unload()


# --- training ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fitted:
    model: TaskModel
    report: dict[str, Any]  # evaluate() on the held-out split, plus "hard" (accuracy on its hard items)
    held_out: list[dict[str, Any]]


def fit(items: Sequence[dict[str, Any]], embed: Embed, *, dataset_sha256: str, held_out: float = 0.2, seed: int = 0,
        max_chars: int | None = None, tasks: Sequence[str] | None = None, embedding_model: str = EMBEDDING_MODEL,
        now: Callable[[], datetime] = lambda: datetime.now(timezone.utc)) -> Fitted:
    """Split (stratified), embed the texts as the AutoRouter will (their last ``max_chars``
    characters), train on the training part, evaluate on the held-out part. Deterministic for the
    same items, seed and embedder; ``now`` only stamps ``trained_at``."""
    train_items, test_items = split(list(items), held_out, seed)
    order = tuple(tasks) if tasks is not None else tuple(t for t in TASKS if any(it["task"] == t for it in items)) + \
        tuple(sorted({it["task"] for it in items} - set(TASKS)))
    clip = (lambda s: s[-max_chars:]) if max_chars else (lambda s: s)
    x_train = embed([clip(it["text"]) for it in train_items])
    model = train(x_train, [it["task"] for it in train_items], seed=seed, tasks=order,
                  embedding_model=embedding_model, max_chars=max_chars)
    if test_items:
        x_test = embed([clip(it["text"]) for it in test_items])
        report = evaluate(model, x_test, [it["task"] for it in test_items])
        hard = [i for i, it in enumerate(test_items) if it.get("hard")]
        report["hard"] = evaluate(model, x_test[hard], [test_items[i]["task"] for i in hard])["accuracy"] if hard else None
    else:
        report = {"accuracy": None, "n": 0, "per_task": {}, "confusion": None, "hard": None}
    model.metadata.update({
        "trained_at": now().isoformat(timespec="seconds"), "n_train": len(train_items), "n_held_out": len(test_items),
        "held_out_fraction": held_out, "held_out_accuracy": report["accuracy"], "held_out_hard_accuracy": report["hard"],
        "per_task": {t: {k: round(v, 4) for k, v in m.items()} for t, m in report["per_task"].items()},
        "dataset_sha256": dataset_sha256})
    return Fitted(model, report, test_items)


def store_model(store: ArtifactStore, model: TaskModel, *, name: str = ARTIFACT, source: str) -> Manifest:
    """A new version of ``name`` (the file's digest names it; ``trained_at`` makes each run distinct).
    Copied, never hard-linked: the file is written to a temp directory that is about to vanish."""
    with tempfile.TemporaryDirectory(prefix="router-tasks-") as tmp:
        path = model.save(Path(tmp) / "model.json")
        meta = model.metadata
        extra = {k: meta.get(k) for k in ("trained_at", "held_out_accuracy", "dataset_sha256", "n_train")}
        return ArtifactStore(store.root, hardlink=False).import_file(
            name, path, engine="linear", format="json", source=source,
            extra={**extra, "tasks": list(model.tasks), "embedding_model": model.embedding_model})


def load_task_model(store: ArtifactStore | str | os.PathLike[str], name: str = ARTIFACT) -> TaskModel:
    """The newest ``name`` in the store, else the packaged model; a log line says which."""
    try:
        st = store if isinstance(store, ArtifactStore) else ArtifactStore(store)
        manifest = st.get(name)
        model = TaskModel.load(st.path(manifest))
        log.info("auto routing: task classifier %s from the artifact store (held-out accuracy %s)",
                 manifest.ref, model.metadata.get("held_out_accuracy"))
        return model
    except ArtifactError as exc:
        packaged = packaged_model_path()
        model = TaskModel.load(packaged)
        level = logging.INFO if "is not in the artifact store" in exc.message else logging.WARNING
        log.log(level, "auto routing: task classifier: the packaged model %s (%s)", packaged.name, exc.message)
        return model
