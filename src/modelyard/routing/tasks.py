"""The pure pieces of ``model: "auto"`` (issue 11 §1): what the user wrote, the cheap rules, and the
learned task classifier. ``routing/auto.py`` (the effects: the embedding call, the routing table)
calls them; ``routing/train.py`` trains and stores the classifier.

Why only the user's words (:func:`user_text`): system prompts, tool schemas and agent boilerplate
are the same for every request of one client, so they carry no signal about *this* request's task
and, being long, they would drown it (an agent's 3 kB system prompt full of code words would send
"thanks!" to the coder). The last user turn decides; earlier user turns are context while they fit.

Why rules before the classifier (:class:`Rules`): a code fence or a Python traceback is certain
evidence and costs a regex scan (µs), not an embedding (ms). The built-in rules are deliberately
narrow — "python" alone is a snake as often as a language, "java" an island or coffee — so a rule
fires only on programming context ("in python", "java class", "SELECT ... FROM"); anything vaguer
is the classifier's.

Why a linear model over sentence embeddings (:class:`TaskModel`): the embedder is already loaded
(the embedded ``text-embedding``), a softmax over 384 numbers is microseconds in numpy, the whole
model is one small JSON file that ships in the package, and it retrains in seconds when a
deployment has its own traffic to learn from.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from modelyard.errors import ArtifactError, ConfigError

TASKS = ("code", "chat", "summarize", "classify")  # the shipped dataset's tasks
FORMAT = "modelyard-task-model"
FORMAT_VERSION = 1
_TEXT_PARTS = ("text", "input_text")  # content-part types that carry the user's words

# Built-in rules, case-insensitive, first task in this order wins. "code" comes first on purpose: a
# request that pastes a traceback or a code block is for the coder even when it says "summarize"
# ("summarize this stack trace": the coder reads traces better; docs/design/task-routing.md).
DEFAULT_RULES: dict[str, list[str]] = {
    "code": [
        r"```",
        r"traceback \(most recent call last\)",
        r"^\s*(def|class|async def) \w+\s*[(:]",
        r"\bdef \w+\s*\([^)]*\)\s*:",
        r"#include\s*[<\"]",
        r"(?-i:\bSELECT\b)[\s\S]{1,300}?(?-i:\bFROM\b)",  # upper-case SQL: "select one from the list" is English
        r"\bselect\s+(\*|count\s*\(|distinct\s)",
        r"\b(insert\s+into|delete\s+from\s+\w+|create\s+(table|index)|alter\s+table|(inner|left|right|outer)\s+join)\b",
        r"console\.(log|error)\s*\(",
        r"\bfunction\s+\w+\s*\(",
        r"\bpublic\s+static\s+void\b|<\?php|\bfn\s+main\s*\(|\bfunc\s+main\s*\(",
        r"^\s*(import\s+[\w.]+(\s+as\s+\w+)?|from\s+[\w.]+\s+import\s+\w+)\s*$",
        r"\b(in|using|with|into|to|for)\s+(python|javascript|typescript|rust|golang|c\+\+|c#|kotlin|ruby|php|bash|"
        r"haskell|scala|perl)(\s+3)?\s*(\?|$|,|\.(\s|$)|\s+(code|please|so|that|and|but|without|with|using|instead))",
        r"\b(python|javascript|js|typescript|ts|java|rust|go|golang|c\+\+|c#|kotlin|swift|ruby|php|bash|shell|sql|"
        r"powershell|node|react|django|flask|pandas|numpy)\s+(function|script|code|class|method|program|snippet|"
        r"module|package|library|error|exception|decorator|one-liner|loop|query|queries|component|hook|dataframe|"
        r"array|unit tests?|regex|api endpoint|compiler|interpreter|syntax)s?\b",
        r"\b(write|fix|debug|refactor|optimi[sz]e|implement)\s+(a|an|the|this|my)?\s*(regex|regular expression|sql query)\b",
        r"\bregex(es|p)?\b|\bregular expressions?\b",
        r"\bsql\s+(query|queries|statement|injection|join|table|index|schema)\b",
        r"\b(segfault|segmentation fault|null ?pointer ?exception|typeerror|valueerror|keyerror|attributeerror|"
        r"indexerror|syntaxerror|importerror|modulenotfounderror|undefined is not a function|stack ?overflowerror)\b",
        r"\b(npm|pip|cargo|yarn|pnpm|poetry)\s+(install|run|build|publish|add)\b|\bgit\s+(commit|rebase|merge|push|"
        r"clone|cherry-pick|bisect|stash)\b",
    ],
    "summarize": [
        r"^\s*(please\s+|can you\s+|could you\s+)?(summari[sz]e|sum up|recap|condense)\b",
        r"\btl;?\s?dr\b",
        r"\b(give|write|make)\s+(me\s+)?an?\s+(short\s+|brief\s+|quick\s+|one[- ]line\s+|executive\s+)?summary\b",
    ],
    "classify": [
        r"^\s*(please\s+)?(classify|categori[sz]e)\b",
        r"\b(classify|categori[sz]e)\s+(this|the following|these|each|every)\b",
        r"\bis\s+(this|the following)\s+(message|email|review|comment|text|tweet)\s+(spam|positive|negative|toxic)\b",
        r"\b(label|tag)\s+(each|every)\s+\w+\s+(as|with)\b",
    ],
}


# --- what the user wrote ----------------------------------------------------------------------------


def _content_text(content: Any) -> str:
    """The words of one message's content: a string, or the text parts of a content list."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):  # a lone part
        content = [content]
    if not isinstance(content, list):
        return ""
    words = []
    for part in content:
        if isinstance(part, str):
            words.append(part)
        elif isinstance(part, dict) and part.get("type", "text") in _TEXT_PARTS and isinstance(part.get("text"), str):
            words.append(part["text"])
    return "\n".join(w for w in words if w)


def _user_turns_chat(messages: Any) -> list[str]:
    if not isinstance(messages, list):
        return []
    return [_content_text(m.get("content")) for m in messages if isinstance(m, dict) and m.get("role") == "user"]


def _user_turns_input(items: Any) -> list[str]:
    """A Responses-API ``input``: a string, or items (plain strings, ``{"role": "user", ...}``
    messages, ``{"type": "input_text"}`` parts); tool outputs and assistant items are skipped."""
    if isinstance(items, str):
        return [items]
    if not isinstance(items, list):
        return []
    turns: list[str] = []
    for it in items:
        if isinstance(it, str):
            turns.append(it)
        elif isinstance(it, dict):
            if it.get("role") == "user" and it.get("type", "message") == "message":
                turns.append(_content_text(it.get("content")))
            elif it.get("type") == "input_text" and "role" not in it and isinstance(it.get("text"), str):
                turns.append(it["text"])
    return turns


def _join_from_end(turns: list[str], limit: int) -> str:
    turns = [t for t in turns if t and t.strip()]
    if not turns or limit <= 0:
        return ""
    picked = [turns[-1]]
    size = len(turns[-1])
    for turn in reversed(turns[:-1]):
        if size + 2 + len(turn) > limit:
            break
        picked.append(turn)
        size += 2 + len(turn)
    text = "\n\n".join(reversed(picked))
    return text[-limit:]


def user_text(data: dict, context_chars: int) -> str:
    """The user's words, at most ``context_chars`` characters from the end: the last user turn,
    earlier user turns prepended while they fit. Never system/developer prompts, assistant turns,
    tool messages or schemas. Called before validation: never raises; ``""`` when nothing."""
    try:
        if not isinstance(data, dict):
            return ""
        if "messages" in data:
            turns = _user_turns_chat(data.get("messages"))
        elif "prompt" in data:
            prompt = data.get("prompt")
            turns = [prompt] if isinstance(prompt, str) else [p for p in prompt if isinstance(p, str)] \
                if isinstance(prompt, list) else []
        elif "input" in data:
            turns = _user_turns_input(data.get("input"))
        else:
            return ""
        return _join_from_end(turns, int(context_chars))
    except Exception:  # noqa: BLE001 - odd input of any shape must not fail routing
        return ""


# --- rules ------------------------------------------------------------------------------------------


class Rules:
    """Regexes per task, compiled once (case-insensitive, ``^``/``$`` per line); the first task in
    dict order with a matching pattern decides."""

    def __init__(self, rules: dict[str, list[str]]) -> None:
        compiled: list[tuple[str, str, re.Pattern[str]]] = []
        for task, patterns in rules.items():
            for i, pattern in enumerate(patterns):
                try:
                    compiled.append((task, pattern, re.compile(pattern, re.IGNORECASE | re.MULTILINE)))
                except (re.error, TypeError) as exc:
                    raise ConfigError(f"routing.auto.rules.{task}[{i}]: bad regular expression {pattern!r}: {exc}",
                                      param=f"routing.auto.rules.{task}[{i}]") from exc
        self._compiled = tuple(compiled)
        self.tasks = tuple(dict.fromkeys(task for task in rules))

    def match(self, text: str) -> tuple[str, str] | None:
        """``(task, the pattern that matched)``, or None."""
        for task, pattern, rx in self._compiled:
            if rx.search(text):
                return task, pattern
        return None


# --- the classifier ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Prediction:
    task: str
    p: float


@dataclass
class TaskModel:
    """Multinomial logistic regression over L2-normalised sentence embeddings.

    ``max_chars``: the classifier was trained (and is meant to be fed) on the last ``max_chars``
    characters of the user's words; ``routing/auto.py`` clips the text before the embedding call,
    which bounds the encoder's cost (its time grows with the tokens it reads).
    """

    tasks: tuple[str, ...]
    weights: np.ndarray  # (len(tasks), dim)
    bias: np.ndarray  # (len(tasks),)
    embedding_model: str = "all-minilm-l6-v2"
    max_chars: int | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.tasks = tuple(self.tasks)
        self.weights = np.asarray(self.weights, dtype=np.float64)
        self.bias = np.asarray(self.bias, dtype=np.float64)
        k = len(self.tasks)
        if k < 2 or len(set(self.tasks)) != k:
            raise ConfigError(f"a task model needs at least two distinct tasks (got {list(self.tasks)})")
        if self.weights.ndim != 2 or self.weights.shape[0] != k or self.bias.shape != (k,):
            raise ConfigError(f"task model shapes do not fit {k} tasks: weights {self.weights.shape}, bias {self.bias.shape}")

    @property
    def dim(self) -> int:
        return int(self.weights.shape[1])

    def clip(self, text: str) -> str:
        """What the classifier reads of ``text``: its end, ``max_chars`` long (all of it when None)."""
        return text[-self.max_chars:] if self.max_chars else text

    def probabilities(self, vectors: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
        """Softmax probabilities, one row per vector (rows are L2-normalised first)."""
        x = np.asarray(vectors, dtype=np.float64)
        if x.ndim == 1:
            x = x[None, :]
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ConfigError(f"the task model expects {self.dim}-d vectors from {self.embedding_model!r}, got shape "
                              f"{x.shape}: is the embedder the one it was trained on?")
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        x = x / np.where(norms > 0, norms, 1.0)
        logits = x @ self.weights.T + self.bias
        logits -= logits.max(axis=1, keepdims=True)
        e = np.exp(logits)
        return e / e.sum(axis=1, keepdims=True)

    def predict(self, vector: Sequence[float] | np.ndarray) -> Prediction:
        probs = self.probabilities(vector)[0]
        i = int(np.argmax(probs))
        return Prediction(self.tasks[i], float(probs[i]))

    def predict_many(self, vectors: Sequence[Sequence[float]] | np.ndarray) -> list[str]:
        probs = self.probabilities(vectors)
        return [self.tasks[i] for i in np.argmax(probs, axis=1)]

    # --- the file ----------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": FORMAT_VERSION, "tasks": list(self.tasks), "dim": self.dim,
                "embedding_model": self.embedding_model, "max_chars": self.max_chars,
                "weights": self.weights.tolist(), "bias": self.bias.tolist(), "metadata": self.metadata}

    def save(self, path: str | os.PathLike[str]) -> Path:
        """One JSON file, written to a temp name and renamed (a reader never sees half a model)."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(self.to_dict(), separators=(",", ":")) + "\n", encoding="utf-8")
        os.replace(tmp, path)
        return path

    @classmethod
    def from_dict(cls, data: Any, where: str = "task model") -> TaskModel:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ArtifactError(f"{where}: not a {FORMAT} file")
        if data.get("version") != FORMAT_VERSION:
            raise ArtifactError(f"{where}: format version {data.get('version')!r}, this modelyard reads {FORMAT_VERSION}")
        try:
            model = cls(tasks=tuple(data["tasks"]), weights=np.asarray(data["weights"], dtype=np.float64),
                        bias=np.asarray(data["bias"], dtype=np.float64),
                        embedding_model=str(data.get("embedding_model", "all-minilm-l6-v2")),
                        max_chars=data.get("max_chars"), metadata=dict(data.get("metadata") or {}))
        except (KeyError, TypeError, ValueError, ConfigError) as exc:
            raise ArtifactError(f"{where}: damaged task model: {exc}") from exc
        if data.get("dim") not in (None, model.dim):
            raise ArtifactError(f"{where}: says dim {data.get('dim')} but its weights are {model.dim}-d")
        return model

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> TaskModel:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ArtifactError(f"cannot read the task model {path}: {exc}") from exc
        return cls.from_dict(data, where=str(path))


def train(vectors: np.ndarray, labels: Sequence[str], *, seed: int = 0, c: float = 10.0,
          tasks: Sequence[str] | None = None, embedding_model: str = "all-minilm-l6-v2",
          max_chars: int | None = None, metadata: dict[str, Any] | None = None) -> TaskModel:
    """Fit the classifier (scikit-learn's L-BFGS logistic regression: deterministic for the same
    input; ``seed`` only fixes its tie-breaking). Weights are rounded to 7 decimals *before* the model
    is returned, so the model in memory, the saved file and any accuracy computed on either agree."""
    from sklearn.linear_model import LogisticRegression

    x = np.asarray(vectors, dtype=np.float64)
    labels = list(labels)
    if x.ndim != 2 or x.shape[0] != len(labels):
        raise ConfigError(f"train: {x.shape} vectors for {len(labels)} labels")
    order = tuple(tasks) if tasks is not None else tuple(sorted(set(labels)))
    unknown = sorted(set(labels) - set(order))
    if unknown:
        raise ConfigError(f"train: labels {unknown} are not among the tasks {list(order)}")
    if len(set(labels)) < 2:
        raise ConfigError("train: at least two tasks are needed")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    x = x / np.where(norms > 0, norms, 1.0)
    clf = LogisticRegression(C=c, max_iter=5000, random_state=seed)
    clf.fit(x, labels)
    classes = list(clf.classes_)
    coef, intercept = np.asarray(clf.coef_), np.asarray(clf.intercept_)
    if len(classes) == 2:  # one logit for classes[1]; as a softmax: rows (0, w)
        coef, intercept = np.vstack([np.zeros_like(coef[0]), coef[0]]), np.array([0.0, intercept[0]])
    weights = np.zeros((len(order), x.shape[1]))
    bias = np.full(len(order), -1e4)  # a task with no training example is never predicted
    for row, name in enumerate(classes):
        weights[order.index(name)] = coef[row]
        bias[order.index(name)] = intercept[row]
    return TaskModel(order, np.round(weights, 7), np.round(bias, 7), embedding_model, max_chars,
                     {"n_train": len(labels), "seed": seed, "C": c, **(metadata or {})})


def evaluate(model: TaskModel, vectors: np.ndarray, labels: Sequence[str]) -> dict[str, Any]:
    """Accuracy, per-task precision/recall/f1/support, and the confusion matrix (rows: the true
    task, columns: the predicted one, both in ``model.tasks`` order)."""
    labels = list(labels)
    predicted = model.predict_many(vectors) if labels else []
    idx = {t: i for i, t in enumerate(model.tasks)}
    k = len(model.tasks)
    matrix = [[0] * k for _ in range(k)]
    for truth, guess in zip(labels, predicted, strict=True):
        if truth in idx:
            matrix[idx[truth]][idx[guess]] += 1
    per_task: dict[str, dict[str, float]] = {}
    for t, i in idx.items():
        tp = matrix[i][i]
        col = sum(matrix[r][i] for r in range(k))
        row = sum(matrix[i])
        precision = tp / col if col else 0.0
        recall = tp / row if row else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_task[t] = {"precision": precision, "recall": recall, "f1": f1, "support": row}
    correct = sum(1 for a, b in zip(labels, predicted, strict=True) if a == b)
    return {"accuracy": correct / len(labels) if labels else 0.0, "n": len(labels), "per_task": per_task,
            "confusion": {"tasks": list(model.tasks), "matrix": matrix}}


T = TypeVar("T")


def split(items: Sequence[T], held_out: float = 0.2, seed: int = 0, *,
          label: Callable[[T], str] = lambda it: it["task"]) -> tuple[list[T], list[T]]:  # type: ignore[index]
    """(train, held-out), stratified by ``label`` and deterministic for a seed: each task's items are
    shuffled by ``random.Random(f"{seed}:{task}")`` and the first ``round(n * held_out)`` (at least
    one when the task has two or more) are held out. Both lists keep the input order."""
    if not 0 <= held_out < 1:
        raise ConfigError(f"held_out must be in [0, 1), got {held_out}")
    groups: dict[str, list[int]] = {}
    for i, it in enumerate(items):
        groups.setdefault(label(it), []).append(i)
    out: set[int] = set()
    for task in sorted(groups):
        idx = groups[task][:]
        random.Random(f"{seed}:{task}").shuffle(idx)
        n = round(len(idx) * held_out)
        if held_out > 0 and len(idx) >= 2:
            n = max(1, min(n, len(idx) - 1))
        out.update(idx[:n])
    return [it for i, it in enumerate(items) if i not in out], [it for i, it in enumerate(items) if i in out]


def sha256_of(data: bytes | Iterable[bytes]) -> str:
    h = hashlib.sha256()
    for chunk in [data] if isinstance(data, bytes) else data:
        h.update(chunk)
    return h.hexdigest()


def packaged_dataset_path() -> Path:
    return Path(str(resources.files("modelyard.datasets") / "router_tasks.jsonl"))


def packaged_model_path() -> Path:
    """The classifier shipped in the package, trained on ``router_tasks.jsonl`` by ``modelyard
    router train`` (a fresh install routes by task with no training step)."""
    return Path(str(resources.files("modelyard.datasets") / "router_tasks.model.json"))
