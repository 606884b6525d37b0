"""The decisions of a cascade (issue 11 §3–4): how sure a tier is, which threshold applies, whether
to accept, and how thresholds are calibrated on labelled trials. Pure: no I/O except
:func:`load_calibration` / :func:`save_calibration`; the gateway (``api/cascading.py``) and
``modelyard cascade calibrate`` (``routing/cascade_cli.py``) do the effects.

Confidence signals (higher = surer):

- ``mean_logprob``: the mean of the answer's token logprobs, i.e. the log of the geometric-mean
  token probability. Length-neutral (a sum would punish long answers), cheap (the tier returns it
  with the answer: no second call), and what FrugalGPT-style cascades start from.
- ``min_logprob``: the least likely token; catches one confabulated digit in an otherwise fluent
  answer, but is noisier on long answers.
- ``judge``: P("yes") from a judge model asked "is this answer correct?" (one token, top-10
  logprobs), for tiers whose own logprobs carry little signal. Its scale is [0, 1], not ≤ 0.

A choice that stopped on ``"length"`` is scored like any other: the signal is about the tokens
it wrote, and the client's own ``max_tokens`` would cut the last tier's answer just the same, so
escalating would pay twice for an equally cut answer. Only when the *tier's* cap
(``CascadeTier.max_tokens``, tighter than the client's) cut it is the answer unfinished through
the cascade's own doing: :func:`cut_by_tier_cap` says so, and the caller escalates it (confidence
None), as ``modelyard cascade calibrate`` does.

A non-last tier with no threshold at all (none in the config, none calibrated) escalates every
request: a cascade nobody calibrated degrades to "always the last tier" (correct, dearer), never
to "always the small model" (cheaper, silently worse). :func:`threshold_warnings` says so at start.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from modelyard.errors import ConfigError

CALIBRATION_VERSION = 1
_YES = frozenset({"yes", "y", "true", "correct"})
_NO = frozenset({"no", "n", "false", "incorrect", "wrong"})


# --- confidence --------------------------------------------------------------------------------------


def _token_logprobs(choice: Mapping[str, Any]) -> list[float]:
    lp = choice.get("logprobs")
    content = lp.get("content") if isinstance(lp, Mapping) else None
    out: list[float] = []
    for entry in content or ():
        value = entry.get("logprob") if isinstance(entry, Mapping) else None
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out.append(float(value))
    return out


def confidence(kind: str, choice: Mapping[str, Any]) -> float | None:
    """``mean_logprob`` / ``min_logprob`` of one chat-completion choice; None when it has no token
    logprobs (see the module docstring for ``"length"``)."""
    if kind not in ("mean_logprob", "min_logprob"):
        raise ValueError(f"unknown confidence kind {kind!r} (judge confidence comes from judge_confidence)")
    values = _token_logprobs(choice)
    if not values:
        return None
    return min(values) if kind == "min_logprob" else sum(values) / len(values)


def cut_by_tier_cap(choice: Mapping[str, Any], tier_max_tokens: int | None, asked_max_tokens: int | None) -> bool:
    """Whether the tier's own cap, not the client's ``max_tokens``, cut this answer short."""
    if choice.get("finish_reason") != "length" or tier_max_tokens is None:
        return False
    return asked_max_tokens is None or tier_max_tokens < asked_max_tokens


_JUDGE_SYSTEM = ("You grade answers. Decide whether the answer correctly and completely answers the "
                 "question. Reply with one word: yes or no.")
_JUDGE_CHARS = 4000  # of the conversation, from its end: a judge prompt must stay small


def judge_messages(question_messages: Sequence[Mapping[str, Any]], answer: str) -> list[dict[str, str]]:
    """The prompt that asks a judge model whether ``answer`` answers the conversation. The
    conversation's own system prompt is quoted (it says what a good answer looks like: "the
    number only"), not obeyed: the judge's instructions stay its own."""
    lines = []
    for m in question_messages:
        content = m.get("content")
        if isinstance(content, list):  # content parts: keep the text ones
            content = " ".join(str(p.get("text", "")) for p in content if isinstance(p, Mapping))
        if isinstance(content, str) and content.strip():
            lines.append(f"{m.get('role', 'user')}: {content.strip()}")
    question = "\n".join(lines)[-_JUDGE_CHARS:]
    return [
        {"role": "system", "content": _JUDGE_SYSTEM},
        {"role": "user", "content": f"Conversation:\n{question}\n\nAnswer:\n{answer.strip()[-_JUDGE_CHARS:]}\n\n"
                                    "Is the answer correct? Reply yes or no."},
    ]


def _verdict_word(token: str) -> str:
    return token.strip().strip(".,:;!\"'`*").lower()


def judge_confidence(choice: Mapping[str, Any]) -> float | None:
    """P(yes) from the judge's first token: the probabilities of its yes-variants (``yes``,
    ``Yes``, `` YES``, ``yes.`` …) summed, over those of yes and no together. None when neither
    appears among the first token's top logprobs (the judge said something else)."""
    lp = choice.get("logprobs")
    content = lp.get("content") if isinstance(lp, Mapping) else None
    if not content or not isinstance(content[0], Mapping):
        return None
    first = content[0]
    candidates = list(first.get("top_logprobs") or ())
    if not candidates and "token" in first:
        candidates = [first]  # no top list: the chosen token alone still says yes or no
    yes = no = 0.0
    seen: set[str] = set()
    for cand in candidates:
        if not isinstance(cand, Mapping):
            continue
        token, value = str(cand.get("token", "")), cand.get("logprob")
        if token in seen or not isinstance(value, (int, float)) or not math.isfinite(value):
            continue
        seen.add(token)
        word = _verdict_word(token)
        if word in _YES:
            yes += math.exp(value)
        elif word in _NO:
            no += math.exp(value)
    if yes + no <= 0.0:
        return None
    return yes / (yes + no)


# --- thresholds -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TierThresholds:
    model: str
    threshold: float | None
    thresholds: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Calibration:
    model: str  # the cascade's name
    tiers: tuple[TierThresholds, ...]
    meta: dict[str, Any] = field(default_factory=dict)


class _TierCfg(Protocol):
    model: str
    threshold: float | None
    thresholds: dict[str, float]


def _calibrated_tier(tier_index: int, tier_cfg: _TierCfg, calibration: Calibration | None) -> TierThresholds | None:
    """The calibration's entry for this tier, or None when there is none or it is stale (it was
    measured on another model or another confidence signal than the config now names)."""
    if calibration is None or tier_index >= len(calibration.tiers):
        return None
    cal = calibration.tiers[tier_index]
    if cal.model != tier_cfg.model:
        return None
    kinds = calibration.meta.get("confidence")
    kind = getattr(tier_cfg, "confidence", None)
    if isinstance(kinds, list) and tier_index < len(kinds) and kind is not None and kinds[tier_index] != kind:
        return None
    return cal


def threshold_for(tier_index: int, tier_cfg: _TierCfg, calibration: Calibration | None,
                  task: str | None) -> float | None:
    """The threshold a tier's confidence must reach. Precedence: the config's ``thresholds[task]``
    > the config's ``threshold`` > the calibration's task threshold > the calibration's threshold
    > None (no threshold: :func:`accept` escalates). What a person wrote in the config wins over
    what a calibration run measured; a stale calibration entry is ignored."""
    if task is not None and task in tier_cfg.thresholds:
        return tier_cfg.thresholds[task]
    if tier_cfg.threshold is not None:
        return tier_cfg.threshold
    cal = _calibrated_tier(tier_index, tier_cfg, calibration)
    if cal is None:
        return None
    if task is not None and task in cal.thresholds:
        return cal.thresholds[task]
    return cal.threshold


def accept(conf: float | None, threshold: float | None) -> bool:
    """Whether a tier's answer stands: only a known confidence at or over a known threshold."""
    return conf is not None and threshold is not None and conf >= threshold


def threshold_warnings(name: str, tiers: Sequence[_TierCfg], calibration: Calibration | None) -> list[str]:
    """Start-up warnings for cascade ``name``: non-last tiers that will escalate every request
    (no threshold anywhere) and calibration entries ignored as stale."""
    out = []
    for i, tier in enumerate(tiers[:-1]):
        stale = (calibration is not None and i < len(calibration.tiers)
                 and _calibrated_tier(i, tier, calibration) is None)
        if stale:
            out.append(f"cascade {name!r} tier {i} ({tier.model}): the calibration was measured on "
                       f"{calibration.tiers[i].model!r} or another confidence signal; ignored")
        cal = _calibrated_tier(i, tier, calibration)
        if tier.threshold is None and (cal is None or cal.threshold is None):
            out.append(f"cascade {name!r} tier {i} ({tier.model}): no threshold (config or calibration), so "
                       f"every request it cannot answer by a task threshold escalates to {tiers[-1].model!r}; "
                       f"run `modelyard cascade calibrate --model {name}` or set a threshold")
    return out


# --- calibration files ------------------------------------------------------------------------------


def _finite_or_none(value: Any, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{where} must be a finite number or null")
    return float(value)


def calibration_from_dict(data: Any) -> Calibration:
    if not isinstance(data, Mapping):
        raise ValueError("not a JSON object")
    if data.get("version") != CALIBRATION_VERSION:
        raise ValueError(f"version must be {CALIBRATION_VERSION} (got {data.get('version')!r})")
    model, tiers, meta = data.get("model"), data.get("tiers"), data.get("meta", {})
    if not isinstance(model, str) or not model:
        raise ValueError("model must be a non-empty string")
    if not isinstance(tiers, list) or len(tiers) < 2:
        raise ValueError("tiers must be a list of at least 2")
    if not isinstance(meta, Mapping):
        raise ValueError("meta must be an object")
    out = []
    for i, t in enumerate(tiers):
        if not isinstance(t, Mapping) or not isinstance(t.get("model"), str):
            raise ValueError(f"tiers[{i}] must be an object with a model")
        per_task = t.get("thresholds") or {}
        if not isinstance(per_task, Mapping):
            raise ValueError(f"tiers[{i}].thresholds must be an object")
        thresholds = {}
        for task, v in per_task.items():
            value = _finite_or_none(v, f"tiers[{i}].thresholds.{task}")
            if value is not None:
                thresholds[str(task)] = value
        out.append(TierThresholds(t["model"], _finite_or_none(t.get("threshold"), f"tiers[{i}].threshold"), thresholds))
    return Calibration(model, tuple(out), dict(meta))


def calibration_to_dict(cal: Calibration) -> dict[str, Any]:
    return {"version": CALIBRATION_VERSION, "model": cal.model,
            "tiers": [{"model": t.model, "threshold": t.threshold, "thresholds": dict(t.thresholds)} for t in cal.tiers],
            "meta": cal.meta}


def load_calibration(path: str | os.PathLike[str]) -> Calibration:
    """A calibration JSON; unreadable or malformed → ConfigError naming the path."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        return calibration_from_dict(data)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, ValueError) as exc:
        raise ConfigError(f"cascade calibration {str(path)!r}: {exc}") from exc


def save_calibration(path: str | os.PathLike[str], cal: Calibration) -> None:
    """Written whole to a temporary file and renamed, so a running gateway never reads half a file."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(json.dumps(calibration_to_dict(cal), indent=2, sort_keys=False) + "\n", encoding="utf-8")
    os.replace(tmp, target)


# --- calibration math -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Trial:
    """One eval item answered by one tier (every item goes to every tier during calibration)."""

    item_id: str
    task: str
    tier: int
    confidence: float | None
    correct: bool
    cost: float  # this tier's call (and its judge call, if any)


@dataclass(frozen=True)
class Point:
    """The cascade at one setting of the non-last tiers' thresholds (None: always escalate)."""

    thresholds: tuple[float | None, ...]
    accuracy: float
    cost: float  # mean per item, escalations included (an item answered at tier k paid tiers 0..k)
    shares: tuple[float, ...]  # share of items answered by each tier
    n: int

    @property
    def escalation(self) -> float:
        """Share of items the first tier did not answer."""
        return 1.0 - self.shares[0] if self.n else 0.0


_GRID = 16  # candidates per tier when there are 3+ tiers (quantiles of the observed confidences)


def _table(trials: Iterable[Trial], n_tiers: int) -> list[list[Trial]]:
    by_item: dict[str, dict[int, Trial]] = {}
    for t in trials:
        if not 0 <= t.tier < n_tiers:
            raise ValueError(f"trial {t.item_id!r} has tier {t.tier}, outside 0..{n_tiers - 1}")
        by_item.setdefault(t.item_id, {})[t.tier] = t
    rows = []
    for item_id in sorted(by_item):
        row = by_item[item_id]
        missing = [k for k in range(n_tiers) if k not in row]
        if missing:
            raise ValueError(f"item {item_id!r} has no trial for tier(s) {missing}")
        rows.append([row[k] for k in range(n_tiers)])
    return rows


def evaluate(rows: Sequence[Sequence[Trial]], thresholds: Sequence[float | None]) -> Point:
    """The cascade's accuracy, mean cost and per-tier shares on ``rows`` (one list of tier trials
    per item) at ``thresholds`` (one per non-last tier)."""
    n_tiers = len(thresholds) + 1
    answered = [0] * n_tiers
    correct = 0
    cost = 0.0
    for row in rows:
        for k, trial in enumerate(row):
            cost += trial.cost
            if k == n_tiers - 1 or accept(trial.confidence, thresholds[k]):
                answered[k] += 1
                correct += trial.correct
                break
    n = len(rows)
    return Point(tuple(thresholds), correct / n if n else 0.0, cost / n if n else 0.0,
                 tuple(a / n if n else 0.0 for a in answered), n)


def _candidates(rows: Sequence[Sequence[Trial]], tier: int, limit: int | None) -> list[float | None]:
    values = sorted({r[tier].confidence for r in rows if r[tier].confidence is not None})
    if limit is not None and len(values) > limit:
        values = sorted({values[round(i * (len(values) - 1) / (limit - 1))] for i in range(limit)})
    return [None, *values]


def sweep(trials: Iterable[Trial], n_tiers: int) -> list[Point]:
    """Every distinct outcome of the threshold choice. Two tiers: each observed tier-0 confidence
    is a candidate (``conf >= t`` changes only at observed values), plus None (escalate all), so
    the sweep is exact. Three or more: the product of up to 16 quantile candidates per non-last
    tier (16² = 256 points for 3 tiers) — a grid rather than a greedy tier-by-tier search, because
    a greedy choice of tier 1's threshold before tier 0's ignores which items tier 0 passes on."""
    if n_tiers < 2:
        raise ValueError("a cascade has at least 2 tiers")
    rows = _table(trials, n_tiers)
    limit = None if n_tiers == 2 else _GRID
    grids = [_candidates(rows, k, limit) for k in range(n_tiers - 1)]
    combos: list[tuple[float | None, ...]] = [()]
    for grid in grids:
        combos = [(*c, t) for c in combos for t in grid]
    return [evaluate(rows, c) for c in combos]


def last_tier_point(points: Sequence[Point]) -> Point:
    """The point where every item escalates: the last tier alone (its cost includes the asks)."""
    for p in points:
        if all(t is None for t in p.thresholds):
            return p
    raise ValueError("the sweep has no all-escalate point")


def choose(points: Sequence[Point], *, target_accuracy: float | None = None, max_escalation: float | None = None,
           target_ratio: float = 0.95) -> Point:
    """RouteLLM-style: the cheapest point whose accuracy is at least ``target_accuracy`` (default:
    ``target_ratio`` × the last tier's own accuracy); or, with ``max_escalation``, the most accurate
    point that escalates at most that share. Ties: higher accuracy, then less escalation. An
    unreachable target gives the most accurate point (the caller reports that it was not met)."""
    if not points:
        raise ValueError("no points to choose from")
    if target_accuracy is not None and max_escalation is not None:
        raise ValueError("give target_accuracy or max_escalation, not both")
    if max_escalation is not None:
        within = [p for p in points if p.escalation <= max_escalation + 1e-12]
        if not within:
            return min(points, key=lambda p: (p.escalation, -p.accuracy, p.cost))
        return min(within, key=lambda p: (-p.accuracy, p.cost, p.escalation))
    target = target_accuracy if target_accuracy is not None else target_ratio * last_tier_point(points).accuracy
    ok = [p for p in points if p.accuracy >= target - 1e-12]
    if not ok:
        return max(points, key=lambda p: (p.accuracy, -p.cost))
    return min(ok, key=lambda p: (p.cost, -p.accuracy, p.escalation))


@dataclass(frozen=True)
class Result:
    """What :func:`calibrate` decided: the thresholds, and the points it chose from."""

    calibration: Calibration
    overall: Point  # the cascade over all items with the chosen (per-task where set) thresholds
    points: list[Point]  # the sweep over all items (one threshold for every task)
    chosen: Point  # the chosen all-tasks point
    per_task: dict[str, Point]  # tasks with their own thresholds
    target: float | None  # the accuracy aimed at (None with max_escalation)
    met: bool


def calibrate(trials: Sequence[Trial], tier_models: Sequence[str], name: str, *,
              target_accuracy: float | None = None, max_escalation: float | None = None, target_ratio: float = 0.95,
              min_task_items: int = 30, task_names: Collection[str] | None = None,
              meta: Mapping[str, Any] | None = None) -> Result:
    """Sweep and choose over all items, then per task for every task with at least
    ``min_task_items`` items (fewer: the all-tasks threshold serves it; a per-task threshold fit
    on a handful of items is noise) that is in ``task_names`` (None: any) — the gateway looks a
    task threshold up under the task its classifier names, so one for a task it never names
    would be dead weight. The per-task target is relative to that task's last tier."""
    n_tiers = len(tier_models)
    points = sweep(trials, n_tiers)
    kw: dict[str, Any] = {"target_accuracy": target_accuracy, "max_escalation": max_escalation,
                          "target_ratio": target_ratio}
    chosen = choose(points, **kw)
    target = None if max_escalation is not None else (
        target_accuracy if target_accuracy is not None else target_ratio * last_tier_point(points).accuracy)
    by_task: dict[str, list[Trial]] = {}
    for t in trials:
        by_task.setdefault(t.task, []).append(t)
    per_task: dict[str, Point] = {}
    for task, ts in sorted(by_task.items()):
        if len({t.item_id for t in ts}) >= min_task_items and (task_names is None or task in task_names):
            per_task[task] = choose(sweep(ts, n_tiers), **kw)
    overall = apply(trials, n_tiers, chosen.thresholds, {task: p.thresholds for task, p in per_task.items()})
    met = target is None or overall.accuracy >= target - 1e-12
    tiers = tuple(
        TierThresholds(model, chosen.thresholds[k] if k < n_tiers - 1 else None,
                       {task: p.thresholds[k] for task, p in per_task.items() if p.thresholds[k] is not None}
                       if k < n_tiers - 1 else {})
        for k, model in enumerate(tier_models))
    return Result(Calibration(name, tiers, dict(meta or {})), overall, points, chosen, per_task, target, met)


def apply(trials: Iterable[Trial], n_tiers: int, thresholds: Sequence[float | None],
          per_task: Mapping[str, Sequence[float | None]] | None = None) -> Point:
    """The cascade on ``trials`` when each item's task picks its thresholds (``per_task``, else
    ``thresholds``): how chosen thresholds do on items they were not fit on (a held-out split)."""
    rows = _table(trials, n_tiers)
    correct = 0
    cost = 0.0
    answered = [0] * n_tiers
    for row in rows:
        p = evaluate([row], (per_task or {}).get(row[0].task) or thresholds)
        correct += p.accuracy == 1.0
        cost += p.cost
        answered[p.shares.index(1.0)] += 1
    n = len(rows)
    return Point(tuple(thresholds), correct / n if n else 0.0, cost / n if n else 0.0,
                 tuple(a / n if n else 0.0 for a in answered), n)


def tier_alone(trials: Iterable[Trial], tier: int) -> tuple[float, float, int]:
    """``(accuracy, mean cost, n)`` of one tier answering every item by itself."""
    ts = [t for t in trials if t.tier == tier]
    n = len(ts)
    return (sum(t.correct for t in ts) / n if n else 0.0, sum(t.cost for t in ts) / n if n else 0.0, n)


def as_probability(conf: float, kind: str) -> float:
    """A confidence on the [0, 1] scale: exp of a logprob signal, a judge's P(yes) as it is."""
    return conf if kind == "judge" else math.exp(min(conf, 0.0))


def reliability(trials: Iterable[Trial], tier: int, kind: str, bins: int = 10) -> list[tuple[float, float, int, float, float]]:
    """Reliability-diagram bins for one tier: ``(lo, hi, n, mean confidence, observed accuracy)``
    over equal-width bins of :func:`as_probability`; empty bins are left out. Trials without a
    confidence are not in any bin."""
    filled: dict[int, list[tuple[float, bool]]] = {}
    for t in trials:
        if t.tier != tier or t.confidence is None:
            continue
        p = as_probability(t.confidence, kind)
        filled.setdefault(min(int(p * bins), bins - 1), []).append((p, t.correct))
    out = []
    for b in sorted(filled):
        vals = filled[b]
        out.append((b / bins, (b + 1) / bins, len(vals), sum(p for p, _ in vals) / len(vals),
                    sum(c for _, c in vals) / len(vals)))
    return out


def auroc(trials: Iterable[Trial], tier: int) -> float | None:
    """How well one tier's confidence separates its right answers from its wrong ones: the
    probability that a random correct answer has a higher confidence than a random wrong one (0.5:
    no signal; ties count half). None without both kinds or without confidences."""
    pos = [t.confidence for t in trials if t.tier == tier and t.confidence is not None and t.correct]
    neg = [t.confidence for t in trials if t.tier == tier and t.confidence is not None and not t.correct]
    if not pos or not neg:
        return None
    wins = 0.0
    for p in pos:
        for q in neg:
            wins += 1.0 if p > q else 0.5 if p == q else 0.0
    return wins / (len(pos) * len(neg))
