"""scikit-learn classifiers: profanity moderation and intent classification, and their response shapes.

* ``ProfanityModerationEngine`` — alt-profanity-check's TF-IDF vectorizer + calibrated linear SVM,
  loaded with joblib from the folder holding ``vectorizer.joblib`` and ``model.joblib`` (the
  package's ``data`` folder or its copy in the artifact store). ``profanity_check``'s module-level
  globals are never imported. Labels: ``profanity`` and ``clean``, with probabilities.
* ``IntentEngine`` — rag-intent-classifier's logistic regression (157 intents) over
  all-MiniLM-L6-v2 embeddings. The wheel lacks its encoder (its own code would fetch it from the
  hub), so the engine embeds with a ``SentenceEngine`` on the MiniLM folder it is given
  (``encoder_path=`` or ``LoadOptions.extra["encoder_path"]``). Labels: every intent, best first.

Footprint: ``weights`` = the deep size of the unpickled objects (``sys.getsizeof`` over their
object graph, numpy buffers included; never less than the files' size — RSS growth is useless here,
the first ``joblib.load`` imports scikit-learn, ~100 MB), plus the encoder's weights for intents;
``overhead`` = the encoder's overhead (intents) or 1 MiB of sparse-matrix scratch (profanity).
``classify`` is thread-safe for the profanity model (sklearn's predict paths only read); the intent
model serialises on its encoder's lock.
"""

from __future__ import annotations

import gc
import os
import sys
import time
import types
import uuid
import warnings
from typing import Any

from modelyard.errors import ModelLoadError, ModelUnavailableError
from modelyard.runtime.base import Capability, Footprint, LoadOptions
from modelyard.runtime.sentence import SentenceEngine

# OpenAI's moderation categories, all required by CreateModerationResponse.
MODERATION_CATEGORIES = (
    "hate", "hate/threatening", "harassment", "harassment/threatening", "illicit", "illicit/violent",
    "self-harm", "self-harm/intent", "self-harm/instructions", "sexual", "sexual/minors", "violence",
    "violence/graphic",
)
# Our labels → OpenAI's categories. Profanity (insults, swearing) is closest to "harassment":
# "content that expresses, incites, or promotes harassing language towards any target".
LABEL_TO_CATEGORY = {"profanity": "harassment", **{c: c for c in MODERATION_CATEGORIES}}


def _joblib_load(path: str) -> Any:
    import joblib

    with warnings.catch_warnings():  # pickles from another sklearn minor version: they load fine
        warnings.simplefilter("ignore")
        return joblib.load(path)


def _measured(paths: list[str], *objs: Any) -> int:
    seen: set[int] = set()
    total, stack = 0, list(objs)
    while stack:
        o = stack.pop()
        if id(o) in seen or isinstance(o, _NOT_DATA):
            continue
        seen.add(id(o))
        total += sys.getsizeof(o)
        stack.extend(gc.get_referents(o))
    return max(total, sum(os.path.getsize(p) for p in paths))


_NOT_DATA = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType, types.MethodType)


class _SklearnBase:
    capabilities: frozenset[Capability]
    supports_host_tier = False

    def __init__(self, name: str) -> None:
        self.name = name
        self.footprint: Footprint | None = None
        self.load_seconds = 0.0

    def _files(self, folder: str, names: list[str]) -> list[str]:
        if not os.path.isdir(folder):
            raise ModelLoadError(f"model {self.name!r}: {folder} is not a folder")
        paths = [os.path.join(folder, n) for n in names]
        missing = [n for n, p in zip(names, paths, strict=True) if not os.path.isfile(p)]
        if missing:
            raise ModelLoadError(f"model {self.name!r}: {folder} lacks {', '.join(missing)}")
        return paths

    def _prepare_files(self, artifact_path: str, names: list[str]) -> None:
        """Unpickle the model's files once and drop them: the only exact way to import every
        scikit-learn module the pickles name (~0.9 s for the profanity model's, here), so the
        first load after start costs what every later one does (~30 ms)."""
        for path in self._files(artifact_path, names):
            _joblib_load(path)

    def to_host(self) -> None:
        raise NotImplementedError(f"{type(self).__name__} has no host tier (it reloads from disk in milliseconds)")

    def to_active(self) -> None:
        raise NotImplementedError(f"{type(self).__name__} has no host tier")


class ProfanityModerationEngine(_SklearnBase):
    """Profanity probability per text: ``[("profanity", p), ("clean", 1 - p)]``, best first."""

    capabilities = frozenset({Capability.moderation, Capability.classification})

    def __init__(self, name: str, *, model_file: str = "model.joblib", vectorizer_file: str = "vectorizer.joblib") -> None:
        super().__init__(name)
        self.model_file, self.vectorizer_file = model_file, vectorizer_file
        self._vectorizer: Any = None
        self._model: Any = None

    def prepare(self, artifact_path: str, opts: LoadOptions) -> None:
        """At server start, before any load: the imports the first load would pay."""
        self._prepare_files(artifact_path, self._names(opts))

    def _names(self, opts: LoadOptions) -> list[str]:
        return [opts.extra.get("vectorizer", self.vectorizer_file), opts.extra.get("model", self.model_file)]

    def load(self, artifact_path: str, opts: LoadOptions) -> Footprint:
        if self._model is not None:
            raise ModelLoadError(f"model {self.name!r} is already loaded")
        paths = self._files(artifact_path, self._names(opts))
        t0 = time.perf_counter()
        try:
            vectorizer, model = _joblib_load(paths[0]), _joblib_load(paths[1])
            classes = [int(c) for c in model.classes_]
        except Exception as exc:
            raise ModelLoadError(f"model {self.name!r}: cannot load the profanity model: {exc}") from exc
        if classes != [0, 1] or not hasattr(model, "predict_proba"):
            raise ModelLoadError(f"model {self.name!r}: expected a binary classifier with predict_proba")
        self.load_seconds = time.perf_counter() - t0
        self._vectorizer, self._model = vectorizer, model
        self.footprint = Footprint(weights=_measured(paths, vectorizer, model), overhead=1 << 20)
        return self.footprint

    def unload(self) -> None:
        self._vectorizer = self._model = None

    def warmup(self) -> None:
        self.classify(["warm-up text"])

    def profanity(self, texts: list[str]) -> list[float]:
        vectorizer, model = self._vectorizer, self._model
        if model is None:
            raise ModelUnavailableError(f"model {self.name!r} is not loaded")
        if not texts:
            return []
        return [float(p) for p in model.predict_proba(vectorizer.transform(texts))[:, 1]]

    def classify(self, texts: list[str]) -> list[list[tuple[str, float]]]:
        out = []
        for p in self.profanity(texts):
            pair = [("profanity", p), ("clean", 1.0 - p)]
            out.append(pair if p >= 0.5 else pair[::-1])
        return out


class IntentEngine(_SklearnBase):
    """Intent per text over MiniLM embeddings: every intent with its probability, best first."""

    capabilities = frozenset({Capability.classification})
    supports_host_tier = True  # the encoder's weights park on the host tier; the classifier is tiny

    def __init__(self, name: str, *, encoder_path: str | None = None, classifier_file: str = "LogisticRegression.joblib",
                 label_map_file: str = "label_map.joblib") -> None:
        super().__init__(name)
        self.encoder_path = encoder_path
        self.classifier_file, self.label_map_file = classifier_file, label_map_file
        self._encoder: SentenceEngine | None = None
        self._clf: Any = None
        self._labels: list[str] = []

    def prepare(self, artifact_path: str, opts: LoadOptions) -> None:
        """At server start, before any load: the classifier's imports and the encoder's."""
        self._prepare_files(artifact_path, self._names(opts))
        encoder_path = self.encoder_path or opts.extra.get("encoder_path")
        if encoder_path:
            SentenceEngine(f"{self.name}:encoder").prepare(encoder_path, opts)

    def _names(self, opts: LoadOptions) -> list[str]:
        return [opts.extra.get("classifier", self.classifier_file), opts.extra.get("label_map", self.label_map_file)]

    def load(self, artifact_path: str, opts: LoadOptions) -> Footprint:
        if self._clf is not None:
            raise ModelLoadError(f"model {self.name!r} is already loaded")
        encoder_path = self.encoder_path or opts.extra.get("encoder_path")
        if not encoder_path:
            raise ModelLoadError(f"model {self.name!r}: needs the MiniLM encoder folder (encoder_path)")
        paths = self._files(artifact_path, self._names(opts))
        t0 = time.perf_counter()
        try:
            clf, label_map = _joblib_load(paths[0]), _joblib_load(paths[1])
            labels = [_label_name(c, label_map) for c in clf.classes_]
            n_features = int(clf.n_features_in_)
        except Exception as exc:
            raise ModelLoadError(f"model {self.name!r}: cannot load the intent classifier: {exc}") from exc
        clf_bytes = _measured(paths, clf, label_map)
        encoder = SentenceEngine(f"{self.name}:encoder")
        enc_fp = encoder.load(encoder_path, opts)
        if encoder.dimensions != n_features:
            encoder.unload()
            raise ModelLoadError(f"model {self.name!r}: the classifier takes {n_features}-d vectors, "
                                 f"the encoder makes {encoder.dimensions}-d")
        self.load_seconds = time.perf_counter() - t0
        self._encoder, self._clf, self._labels = encoder, clf, labels
        self.footprint = Footprint(weights=enc_fp.weights + clf_bytes, overhead=enc_fp.overhead)
        return self.footprint

    def to_host(self) -> None:
        self._need().to_host()

    def to_active(self) -> None:
        self._need().to_active()

    def unload(self) -> None:
        encoder, self._encoder, self._clf = self._encoder, None, None
        if encoder is not None:
            encoder.unload()

    def warmup(self) -> None:
        self.classify(["what is the weather tomorrow"])

    def classify(self, texts: list[str]) -> list[list[tuple[str, float]]]:
        return self.classify_with_usage(texts)[0]

    def classify_with_usage(self, texts: list[str]) -> tuple[list[list[tuple[str, float]]], int]:
        """(labels per text, best first; the encoder's exact prompt token count)."""
        each = self.classify_each(texts)
        return [labels for labels, _ in each], sum(n for _, n in each)

    def classify_each(self, texts: list[str]) -> list[tuple[list[tuple[str, float]], int]]:
        """Per text: (labels best first, the encoder's tokens for that text) — for a batcher whose
        callers must each be charged their own tokens."""
        encoder, clf = self._need(), self._clf
        if not texts:
            return []
        import numpy as np

        each = encoder.embed_each(texts)
        probs = clf.predict_proba(np.asarray([v for v, _ in each], dtype=np.float32))
        out = []
        for row, (_, n) in zip(probs, each, strict=True):
            order = np.argsort(-row, kind="stable")
            out.append(([(self._labels[i], float(row[i])) for i in order], n))
        return out

    def _need(self) -> SentenceEngine:
        if self._encoder is None or self._clf is None:
            raise ModelUnavailableError(f"model {self.name!r} is not loaded")
        return self._encoder


def _label_name(cls: Any, label_map: Any) -> str:
    """rag-intent-classifier's label map is mixed: most keys are class ids → names, a few are names
    → ids (its own ``_resolve_label_name`` reads it the same way)."""
    key = str(cls)
    value = label_map.get(key) if isinstance(label_map, dict) else None
    if isinstance(value, str) and not value.lstrip("-").isdigit():
        return value
    return key


# --- response shapes -----------------------------------------------------------------------------


def to_moderation_response(model: str, labels: list[list[tuple[str, float]]], *, threshold: float = 0.5,
                           response_id: str | None = None) -> dict[str, Any]:
    """OpenAI's ``CreateModerationResponse`` from classifier labels, one result per input.

    Labels map to categories through ``LABEL_TO_CATEGORY`` (``profanity`` → ``harassment``; a
    label named like an OpenAI category maps to itself); other labels (``clean``) are ignored. A
    category is flagged when its score ≥ ``threshold``. Categories no label maps to are reported
    false / 0.0 with an empty ``category_applied_input_types`` list: they were not evaluated.
    """
    results = []
    for row in labels:
        scores = dict.fromkeys(MODERATION_CATEGORIES, 0.0)
        evaluated: set[str] = set()
        for label, score in row:
            cat = LABEL_TO_CATEGORY.get(label)
            if cat is not None:
                scores[cat] = max(scores[cat], float(score))
                evaluated.add(cat)
        cats = {c: c in evaluated and scores[c] >= threshold for c in MODERATION_CATEGORIES}
        results.append({
            "flagged": any(cats.values()),
            "categories": cats,
            "category_scores": scores,
            "category_applied_input_types": {c: ["text"] if c in evaluated else [] for c in MODERATION_CATEGORIES},
        })
    return {"id": response_id or f"modr-{uuid.uuid4().hex}", "model": model, "results": results}


def to_classification_response(model: str, labels: list[list[tuple[str, float]]], *, top_k: int = 5,
                               prompt_tokens: int = 0) -> dict[str, Any]:
    """modelyard's own ``/v1/classifications`` response::

        {"object": "list", "model": str,
         "data": [{"index": int, "labels": [{"label": str, "score": float}, ...]}, ...],
         "usage": {"prompt_tokens": int, "total_tokens": int}}

    ``data`` has one entry per input, in input order; ``labels`` holds at most ``top_k`` labels,
    highest score first. ``usage`` counts the encoder's tokens where there is one (intents), else 0.
    """
    data = [{"index": i, "labels": [{"label": lab, "score": float(s)} for lab, s in row[:top_k]]}
            for i, row in enumerate(labels)]
    return {"object": "list", "model": model, "data": data,
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}}
