"""Running one chat request through a cascade's tiers (issue 11 §3).

Tier by tier: the tier's model answers (non-streaming, with ``logprobs: true``, capped at the
tier's ``max_tokens``); its confidence (``routing.cascade.confidence``: mean or min token logprob,
or a judge model's P(yes)) is compared with the tier's threshold (config, else calibrated:
``routing.cascade.threshold_for``); accepted → that answer is the reply; otherwise the next tier is
asked. The last tier always answers. A tier that fails (unavailable, error) escalates like an
unsure one, and the hop says so; only the last tier's failure is the request's.

Every tier that ran is a hop of the request's tally (``accounting.outcome``), priced at its own
model's price, so spend has one row per hop and the budget is charged for all of them. The client
sees which tier answered and why in ``x-modelyard-cascade``::

    x-modelyard-cascade: answered=chat; tier=0; confidence=-0.41; threshold=-0.90
    x-modelyard-cascade: answered=coder; tier=1; escalated=chat(-1.37<-0.90)

Streaming: the non-last tiers cannot stream (their answer may be thrown away), so the first tier's
answer is buffered; when it is accepted it is replayed as SSE chunks (one content chunk, the
finish chunk, usage if asked for); when not, the last tier streams for real. Logprobs that the
client did not ask for are removed from the answer it gets.

Only ``/v1/chat/completions`` runs through cascades; other endpoints get a 400 naming the model.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import orjson

from modelyard.accounting.outcome import Hop
from modelyard.api.http import Request
from modelyard.api.proxy import BodyFor, Proxy
from modelyard.api.sse import DONE
from modelyard.config.routing import CascadeConfig, CascadeTier
from modelyard.errors import ConfigError, InvalidRequestError, ModelyardError
from modelyard.observability.metrics import Metrics
from modelyard.routing.cascade import (
    Calibration,
    accept,
    confidence,
    cut_by_tier_cap,
    judge_confidence,
    judge_messages,
    load_calibration,
    threshold_for,
    threshold_warnings,
)
from modelyard.routing.auto import AutoRouter
from modelyard.routing.router import ModelGroup, Router

log = logging.getLogger("modelyard.cascade")
_CHAT = "/chat/completions"


def calibrations(models: list[Any], data_dir: Path) -> dict[str, Calibration | None]:
    """Each cascade's calibration file, read once at start (``calibration`` or
    ``<data_dir>/cascades/<name>.json`` when it exists). A file that is named but bad stops the
    start with a ConfigError; a missing default file only means "uncalibrated"."""
    out: dict[str, Calibration | None] = {}
    for m in models:
        cfg: CascadeConfig | None = m.cascade
        if cfg is None:
            continue
        path = Path(cfg.calibration) if cfg.calibration else data_dir / "cascades" / f"{m.name}.json"
        if path.exists():
            out[m.name] = load_calibration(path)
            log.info("cascade %s: calibration from %s", m.name, path)
        elif cfg.calibration:
            raise ConfigError(f"models.{m.name}.cascade.calibration: no such file {str(path)!r}")
        else:
            out[m.name] = None
        for warning in threshold_warnings(m.name, cfg.tiers, out[m.name]):
            log.warning("%s", warning)
    return out


class Cascades:
    def __init__(self, proxy: Proxy, router: Router, metrics: Metrics, *,
                 calibration: dict[str, Calibration | None] | None = None, auto: AutoRouter | None = None) -> None:
        self._proxy = proxy
        self._router = router
        self._metrics = metrics
        self._calibration = calibration or {}
        self._auto = auto

    async def run(self, req: Request, group: ModelGroup, path: str, data: dict[str, Any], raw: bytes, *,
                  stream: bool, tokens: int) -> None:
        cfg = group.cascade
        assert cfg is not None
        if path != _CHAT:
            raise InvalidRequestError(f"model {group.name!r} is a cascade: it serves chat completions only", param="model")
        proxy, tally = self._proxy, req.outcome
        calibration = self._calibration.get(group.name)
        task = await self._task(data, req.request_id, cfg, calibration)
        wants_logprobs = data.get("logprobs") is True
        escalated: list[str] = []
        last = len(cfg.tiers) - 1
        for i, tier in enumerate(cfg.tiers):
            tier_group = self._router.resolve(tier.model)
            extra = _tier_fields(data, tier)
            if i == last:
                header = f"answered={tier_group.name}; tier={i}" + (f"; escalated={','.join(escalated)}" if escalated else "")
                req.extra_headers.append((b"x-modelyard-cascade", header.encode()))
                self._metrics.cascade_answers.labels(group.name, tier_group.name).inc()
                async with proxy.admitted(req, tier_group):
                    if stream:
                        await proxy.stream(req, tier_group, path, data, raw, tokens, None, extra=extra or None)
                    else:
                        await proxy.unary(req, tier_group, path, data, raw, tokens, None, extra=extra or None)
                return
            threshold = threshold_for(i, tier, calibration, task)
            try:
                async with proxy.admitted(req, tier_group):
                    routed, reply, usage = await proxy.call(
                        req, tier_group, path, BodyFor(data, raw, {**extra, "stream": False, "logprobs": True}),
                        tokens)
            except ModelyardError as exc:
                if exc.status < 500 and exc.status != 429:
                    raise  # the client's request is at fault: every tier would refuse it alike
                escalated.append(f"{tier.model}(error)")
                tally.add(_failed_hop(tier_group, exc))
                continue
            answer = _parse(reply.body) if reply.status == 200 else None
            if answer is not None and _cut_by_cap(answer, tier, data):
                conf = None  # the tier's own cap cut it: an unfinished answer is no answer (cascades.md)
            else:
                conf = await self._confidence(req, tier, data, answer, tokens) if answer is not None else None
            ok = answer is not None and accept(conf, threshold)
            if conf is not None:
                self._metrics.cascade_confidence.labels(group.name, tier_group.name).observe(conf)
            note = None if ok else f"escalated: confidence {_fmt(conf)} < threshold {_fmt(threshold)}"
            tally.add(proxy.hop_of(routed, usage, reply.status, note))
            if not ok:
                escalated.append(f"{tier.model}({_fmt(conf)}<{_fmt(threshold)})")
                continue
            header = f"answered={tier_group.name}; tier={i}; confidence={_fmt(conf)}; threshold={_fmt(threshold)}"
            if task is not None:
                header += f"; task={task}"
            req.extra_headers.append((b"x-modelyard-cascade", header.encode()))
            proxy.route_headers(req, routed)
            self._metrics.cascade_answers.labels(group.name, tier_group.name).inc()
            if not wants_logprobs:
                for choice in answer.get("choices") or ():
                    if isinstance(choice, dict):
                        choice["logprobs"] = None
            if stream:
                await _replay(req, answer, data)
            else:
                await req.respond(200, orjson.dumps(answer))
            return

    async def _task(self, data: dict[str, Any], request_id: str, cfg: CascadeConfig,
                    calibration: Calibration | None) -> str | None:
        """The request's task, looked up only when some threshold depends on it."""
        per_task = any(t.thresholds for t in cfg.tiers) or (
            calibration is not None and any(t.thresholds for t in calibration.tiers))
        if not per_task or self._auto is None:
            return None
        return (await self._auto.classify(data, request_id)).task

    async def _confidence(self, req: Request, tier: CascadeTier, data: dict[str, Any], answer: dict[str, Any],
                          tokens: int) -> float | None:
        choices = [c for c in answer.get("choices") or () if isinstance(c, dict)]
        if not choices:
            return None
        if tier.confidence != "judge":
            values = [confidence(tier.confidence, c) for c in choices]
            return None if any(v is None for v in values) else min(v for v in values if v is not None)
        assert tier.judge is not None
        text = ((choices[0].get("message") or {}).get("content")) or ""
        judge = self._router.resolve(tier.judge)
        body = {"model": tier.judge, "messages": judge_messages(data.get("messages") or [], text),
                "max_tokens": 1, "temperature": 0, "logprobs": True, "top_logprobs": 10}
        raw = orjson.dumps(body)
        try:
            async with self._proxy.admitted(req, judge):
                routed, reply, usage = await self._proxy.call(req, judge, _CHAT, BodyFor(body, raw), tokens)
        except ModelyardError as exc:
            if exc.status < 500 and exc.status != 429:
                raise
            req.outcome.add(_failed_hop(judge, exc, note="judge"))
            return None
        req.outcome.add(self._proxy.hop_of(routed, usage, reply.status, "judge"))
        verdict = _parse(reply.body)
        judged = [c for c in (verdict or {}).get("choices") or () if isinstance(c, dict)]
        return judge_confidence(judged[0]) if judged else None


def _tier_fields(data: dict[str, Any], tier: CascadeTier) -> dict[str, Any]:
    """The tier's cap on the answer's length (never raising the client's own)."""
    if tier.max_tokens is None:
        return {}
    asked = data.get("max_completion_tokens") or data.get("max_tokens")
    cap = tier.max_tokens if not isinstance(asked, int) else min(asked, tier.max_tokens)
    return {"max_tokens": cap, "max_completion_tokens": None} if "max_completion_tokens" in data else {"max_tokens": cap}


def _cut_by_cap(answer: dict[str, Any], tier: CascadeTier, data: dict[str, Any]) -> bool:
    asked = data.get("max_completion_tokens") or data.get("max_tokens")
    asked = asked if isinstance(asked, int) else None
    return any(cut_by_tier_cap(c, tier.max_tokens, asked) for c in answer.get("choices") or () if isinstance(c, dict))


def _failed_hop(group: ModelGroup, exc: ModelyardError, note: str | None = None) -> Hop:
    return Hop(group.name, None, group.price, 0, 0, exc.status, 0, 0,
               f"{note + ': ' if note else ''}escalated: {exc.code or exc.type}")


def _parse(body: bytes) -> dict[str, Any] | None:
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) else None


def _fmt(x: float | None) -> str:
    return "none" if x is None else f"{x:.2f}"


async def _replay(req: Request, answer: dict[str, Any], data: dict[str, Any]) -> None:
    """An accepted buffered answer as the chunks a streaming upstream would have sent."""
    base = {"id": answer.get("id"), "object": "chat.completion.chunk", "created": answer.get("created"),
            "model": answer.get("model")}
    if isinstance(answer.get("system_fingerprint"), str):
        base["system_fingerprint"] = answer["system_fingerprint"]
    opts = data.get("stream_options")
    include_usage = isinstance(opts, dict) and opts.get("include_usage") is True
    events: list[bytes] = []

    def event(choices: list[dict[str, Any]], **more: Any) -> None:
        events.append(b"data: " + orjson.dumps({**base, "choices": choices, **more}) + b"\n\n")

    for c in answer.get("choices") or ():
        msg = c.get("message") or {}
        delta: dict[str, Any] = {"role": "assistant", "content": msg.get("content") or ""}
        if msg.get("tool_calls"):
            delta["tool_calls"] = [{"index": k, **call} for k, call in enumerate(msg["tool_calls"])]
        if msg.get("refusal") is not None:
            delta["refusal"] = msg["refusal"]
        event([{"index": c.get("index", 0), "delta": delta, "logprobs": c.get("logprobs"), "finish_reason": None}])
        event([{"index": c.get("index", 0), "delta": {}, "logprobs": None, "finish_reason": c.get("finish_reason")}])
    if include_usage and answer.get("usage") is not None:
        event([], usage=answer["usage"])
    await req.start_stream(200, b"text/event-stream")
    await req.end_stream(b"".join(events) + DONE)
