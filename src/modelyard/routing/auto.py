"""``model: "auto"``: the task of what the user wrote picks the model (issue 11 §1).

The decision, in order, first match wins:

1. **session** — a conversation that already has a model (``routing.affinity``) stays on it, as
   long as that model is still one of the routing table's targets;
2. **rules** — the configured regexes (or the built-in ones, ``routing.tasks.DEFAULT_RULES``),
   case-insensitive, over the user's words: code fences, stack traces, language keywords...;
3. **classifier** — the user's words embedded by the ``embedder`` model (the embedded
   ``text-embedding``, through the router like any request: its memory tier, breaker and queue
   apply) and a linear model over the vector (``modelyard router train``), when its probability
   is at least ``min_confidence``;
4. **default** — the configured default task (also when the classifier is unavailable; the header
   says so).

Only the user's words are classified (``routing.tasks.user_text``: the last user turn with bounded
earlier context — never system prompts, tool schemas or agent boilerplate).

The route's model is then resolved to its group. Overflow: when that model could take no request
now (every deployment's breaker open or at its cap) or its queue holds ``overflow_queue_depth``
requests or more, the route's ``overflow`` model answers instead. A route whose model cannot answer
and has no overflow is not silently sent elsewhere: the request goes to the routed model, whose own
retries, fallbacks and errors (503 with ``Retry-After``) apply — exactly those of a request that
named the model.

The reason travels in ``x-modelyard-route``: ``task=code; by=classifier; p=0.93; model=coder``.

The decision is split in two: :func:`decide` (pure: text, rules, a prediction → a ``Decision``)
and :class:`AutoRouter` (the effects: the embedding call, the group lookup).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson

from modelyard.backends.base import CallOptions
from modelyard.config.routing import AutoConfig
from modelyard.errors import ModelyardError, UpstreamError
from modelyard.routing.router import DeploymentSlot, ModelGroup, Router
from modelyard.routing.tasks import DEFAULT_RULES, Prediction, Rules, TaskModel, user_text

log = logging.getLogger("modelyard.auto")
Embed = Callable[[str, str], Awaitable[list[float]]]  # (text, request id) -> vector


@dataclass(frozen=True)
class Decision:
    task: str | None  # None: the session's model, whatever its task was
    by: str  # session | rules | classifier | default
    p: float | None = None  # the classifier's probability (also shown when below min_confidence)
    note: str | None = None  # why the default was used, which rule matched

    def header(self, model: str, overflow_from: str | None = None) -> str:
        parts = [f"task={self.task}" if self.task is not None else None, f"by={self.by}"]
        if self.p is not None:
            parts.append(f"p={self.p:.2f}")
        if self.note:
            parts.append(f"note={self.note}")
        parts.append(f"model={model}")
        if overflow_from is not None:
            parts.append(f"overflow_from={overflow_from}")
        return "; ".join(p for p in parts if p)


def rules_for(cfg: AutoConfig) -> Rules:
    """The configured rules; ``None`` in the config: the built-in ones for the tasks the table has."""
    if cfg.rules is not None:
        return Rules(cfg.rules)
    return Rules({task: pats for task, pats in DEFAULT_RULES.items() if task in cfg.tasks})


def decide(cfg: AutoConfig, rules: Rules, text: str, prediction: Prediction | None, note: str | None = None) -> Decision:
    """Pure: rules, then the classifier's prediction (when it clears ``min_confidence`` and its task
    is in the table), then the default."""
    hit = rules.match(text) if text else None
    if hit is not None:
        return Decision(hit[0], "rules")
    if prediction is not None:
        if prediction.task in cfg.tasks and prediction.p >= cfg.min_confidence:
            return Decision(prediction.task, "classifier", prediction.p)
        why = "low_confidence" if prediction.task in cfg.tasks else f"no_route_for_{prediction.task}"
        return Decision(cfg.default, "default", prediction.p, note or why)
    return Decision(cfg.default, "default", None, note or ("empty" if not text else None))


def needs_overflow(group: ModelGroup, depth: int | None) -> bool:
    """The routed model can take no request now, or its queue is at least ``depth`` deep."""
    if not group.available():
        return True
    return depth is not None and group.admission.queued >= depth


class AutoRouter:
    def __init__(self, cfg: AutoConfig, router: Router, *, task_model: TaskModel | None = None,
                 embed: Embed | None = None) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self._router = router
        self._rules = rules_for(cfg)
        self.task_model = task_model
        self._embed = embed if embed is not None else self._embed_via_router
        self._targets = {r.model for r in cfg.tasks.values()} | {r.overflow for r in cfg.tasks.values() if r.overflow}

    async def classify(self, data: dict[str, Any], request_id: str = "") -> Decision:
        text = user_text(data, self.cfg.context_chars)
        if self._rules.match(text) is not None or self.task_model is None or not text:
            return decide(self.cfg, self._rules, text, None, None if text or self.task_model is None else "empty")
        try:
            vector = await self._embed(self.task_model.clip(text), request_id)
        except ModelyardError as exc:  # the embedder is down: the default, and the header says so
            log.warning("auto routing: classifier unavailable (%s): default task used", exc.message)
            return decide(self.cfg, self._rules, text, None, "classifier_unavailable")
        return decide(self.cfg, self._rules, text, self.task_model.predict(vector))

    async def route(self, data: dict[str, Any], path: str, request_id: str, *,
                    pinned: str | None = None) -> tuple[ModelGroup, str]:
        """The group to serve the request and the ``x-modelyard-route`` header's value."""
        if pinned is not None and pinned in self._targets:
            group = self._router.resolve(pinned)
            if group.available():
                return group, Decision(None, "session").header(group.name)
        decision = await self.classify(data, request_id)
        route = self.cfg.tasks[decision.task or self.cfg.default]
        group = self._router.resolve(route.model)
        if route.overflow is not None and needs_overflow(group, route.overflow_queue_depth):
            spill = self._router.resolve(route.overflow)
            return spill, decision.header(spill.name, overflow_from=group.name)
        return group, decision.header(group.name)

    async def _embed_via_router(self, text: str, request_id: str) -> list[float]:
        group = self._router.resolve(self.cfg.embedder)
        body = orjson.dumps({"model": self.cfg.embedder, "input": text})

        async def op(dep: DeploymentSlot):  # noqa: ANN202 - a coroutine for the router
            upstream = body if dep.upstream_model == self.cfg.embedder else orjson.dumps(
                {"model": dep.upstream_model, "input": text})
            return await dep.backend.call("/embeddings", upstream, CallOptions(dep.timeout_s, request_id, group.ready_wait_s))

        routed = await self._router.run(group, op)
        reply = routed.result
        try:
            vector = orjson.loads(reply.body)["data"][0]["embedding"]
        except (orjson.JSONDecodeError, KeyError, IndexError, TypeError) as exc:
            raise UpstreamError(f"the embedder {self.cfg.embedder!r} answered {reply.status} without a vector") from exc
        return vector

