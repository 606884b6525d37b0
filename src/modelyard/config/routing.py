"""Typed configuration of routing intelligence: ``model: "auto"``, session affinity, priorities
and cascades (issue 11). Cross-references (a route's model, a cascade tier) are checked by
``Settings`` in ``config.schema`` so that every problem names its field path.

```yaml
routing:
  auto:                      # requests for model "auto" are routed by task
    default: chat            # the task used when nothing decides (a task of `tasks`)
    tasks:
      code: {model: coder, overflow: chat, overflow_queue_depth: 8}
      chat: {model: chat}
    rules: {code: ["```", "traceback \\(most recent call last\\)"]}   # regexes, case-insensitive
    classifier: router-tasks # artifact written by `modelyard router train`
    min_confidence: 0.55     # below: the default task
  affinity: {ttl_s: 3600, max_sessions: 100000}
  priority: {aging_s: 2.0}
models:
  - name: cascade
    cascade:
      tiers:
        - {model: chat, confidence: mean_logprob, threshold: -0.9, thresholds: {code: -0.6}}
        - {model: coder}     # the last tier always answers
```
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

PositiveFloat = Annotated[float, Field(gt=0)]
Level = Literal["high", "normal", "low"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AutoRoute(_Strict):
    """Where one task goes. ``overflow``: the model used instead when every deployment of
    ``model`` is unavailable (breaker open, at capacity) or its queue holds at least
    ``overflow_queue_depth`` requests."""

    model: str = Field(min_length=1)
    overflow: str | None = None
    overflow_queue_depth: Annotated[int, Field(ge=1)] | None = None


class AutoConfig(_Strict):
    """``model: "<name>"`` (default ``auto``) picks the model by the task of the last user turn:
    cheap rules first, then the learned classifier, then ``default``."""

    name: str = Field(default="auto", min_length=1)
    tasks: dict[str, AutoRoute] = Field(min_length=1)
    default: str
    # task → regular expressions (case-insensitive) that decide it; None: the built-in rules for
    # the tasks that have them (code fences, stack traces, language keywords: routing/tasks.py).
    rules: dict[str, list[str]] | None = None
    classifier: str | None = "router-tasks"  # artifact name; None: rules only
    embedder: str = "text-embedding"  # the embeddings model the classifier's vectors come from
    min_confidence: Annotated[float, Field(ge=0, le=1)] = 0.5
    context_chars: Annotated[int, Field(ge=64, le=100_000)] = 2000  # of the user's words, from the end

    @model_validator(mode="after")
    def _tasks_known(self) -> "AutoConfig":
        problems = []
        if self.default not in self.tasks:
            problems.append(f"default: unknown task {self.default!r} (tasks: {', '.join(self.tasks)})")
        for task in self.rules or {}:
            if task not in self.tasks:
                problems.append(f"rules.{task}: unknown task {task!r} (tasks: {', '.join(self.tasks)})")
        if problems:
            raise ValueError("\n".join(problems))
        return self


class AffinityConfig(_Strict):
    """Every turn of a conversation (``x-session-id`` header, else the body's ``user``) goes to
    the model and deployment that answered its first turn, while the entry lives."""

    enabled: bool = True
    header: str = "x-session-id"
    use_user_field: bool = True
    ttl_s: PositiveFloat = 3600.0
    max_sessions: Annotated[int, Field(ge=1)] = 100_000


class PriorityConfig(_Strict):
    """Admission order when a model's queue is used: high before normal before low, a waiter
    rising one level per ``aging_s`` waited (so low never starves)."""

    enabled: bool = True
    aging_s: PositiveFloat = 2.0
    header: str = "x-priority"  # honoured only for keys that allow it (and the master key)
    endpoints: dict[str, Level] = Field(
        default_factory=lambda: {"embeddings": "high", "classifications": "high", "moderations": "high"})
    long_prompt_tokens: Annotated[int, Field(ge=1)] | None = 2000  # estimated prompt tokens at or over: low


class CascadeTier(_Strict):
    """One tier: ask ``model``; accept its answer if the confidence clears the threshold (the
    task's in ``thresholds``, else ``threshold``, else the calibrated one); else escalate."""

    model: str = Field(min_length=1)
    confidence: Literal["mean_logprob", "min_logprob", "judge"] = "mean_logprob"
    threshold: float | None = None
    thresholds: dict[str, float] = Field(default_factory=dict)
    judge: str | None = None  # the model asked "is this answer correct?" (confidence: judge)
    max_tokens: Annotated[int, Field(ge=1)] | None = None  # cap for this tier (the request's otherwise)

    @model_validator(mode="after")
    def _judge(self) -> "CascadeTier":
        if self.confidence == "judge" and not self.judge:
            raise ValueError("confidence 'judge' needs a judge model")
        if self.judge and self.confidence != "judge":
            raise ValueError("judge is used only with confidence: judge")
        return self


class CascadeConfig(_Strict):
    tiers: list[CascadeTier] = Field(min_length=2)
    # Thresholds written by `modelyard cascade calibrate` (JSON); None: <data_dir>/cascades/<model>.json
    # when it exists. Thresholds given here win over calibrated ones.
    calibration: str | None = None


class RoutingConfig(_Strict):
    auto: AutoConfig | None = None
    affinity: AffinityConfig = AffinityConfig()
    priority: PriorityConfig = PriorityConfig()
