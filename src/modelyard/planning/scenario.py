"""The scenario's nine models (``../shared/WORKLOAD.md``) as data: sizes, peaks and traffic shapes.

Six models are the scenario's planner example verbatim; it introduces nine but lists six, so the
other three are **our assumptions** (marked ``assumed``): an intent classifier, a small FAQ bot and
an internal-tools bot. Traffic shapes follow the scenario's words: the coding assistant is heavy
09:00-19:00 on working days and zero from midnight to 06:00; summarisation comes in a few bursts a
day; the moderation classifier is high volume all day; chat and support bots peak in the daytime;
embeddings follow the LLM traffic.

``rate(model, t)`` is the expected requests/s at a moment (a pure function of the hour of week);
``arrivals`` draws a seeded Poisson process from it. Both the analyzer's generated history and the
simulator's ``--synthetic scenario9`` use these, so they describe the same fleet.
"""

from __future__ import annotations

import datetime as dt
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ScenarioModel:
    name: str
    kind: str  # chat | completion | embedding | classifier
    gpu_memory_gb: float
    min_replicas: int
    peak_rps: float
    tokens_per_request: int
    prompt_tokens: int  # mean prompt / completion split of tokens_per_request
    completion_tokens: int
    shape: str  # coding | bursts | flat | daytime | follows | business
    isolation: str = "shared"
    assumed: bool = False
    price_per_1k_tokens: float = 0.0  # what a hosted equivalent would charge (for spend rows), example


SCENARIO9: tuple[ScenarioModel, ...] = (
    ScenarioModel("codestral-22b", "chat", 44, 1, 2, 512, 320, 192, "coding", price_per_1k_tokens=0.003),
    ScenarioModel("llama-3-8b-chat", "chat", 16, 2, 20, 256, 96, 160, "daytime", price_per_1k_tokens=0.0006),
    ScenarioModel("llama-3-8b-support", "chat", 16, 1, 10, 512, 256, 256, "daytime", price_per_1k_tokens=0.0006),
    ScenarioModel("mistral-7b-summarizer", "chat", 14, 1, 3, 1024, 896, 128, "bursts", price_per_1k_tokens=0.0006),
    ScenarioModel("bge-m3-embed", "embedding", 3, 1, 100, 128, 128, 0, "follows", price_per_1k_tokens=0.00002),
    ScenarioModel("bert-classifier", "classifier", 1.5, 1, 200, 64, 64, 0, "flat", price_per_1k_tokens=0.00001),
    ScenarioModel("intent-classifier", "classifier", 0.5, 1, 40, 32, 32, 0, "follows", assumed=True,
                  price_per_1k_tokens=0.00001),
    ScenarioModel("faq-bot-3b", "chat", 6, 1, 5, 256, 128, 128, "daytime", assumed=True, price_per_1k_tokens=0.0003),
    ScenarioModel("internal-tools-bot", "chat", 8, 1, 4, 384, 256, 128, "business", assumed=True,
                  price_per_1k_tokens=0.0004),
)

BURST_HOURS = (10, 14, 16)  # the summariser's bursts: 30 minutes from these hours


def _daytime(h: float) -> float:
    """A bell between 07:00 and 22:00, peaking at 14:00."""
    if h < 7 or h > 22:
        return 0.04
    return 0.04 + 0.96 * math.sin(math.pi * (h - 7) / 15) ** 2


def shape_factor(shape: str, t: dt.datetime) -> float:
    """The fraction of its peak a model sees at ``t`` (0..1): a pure function of the hour of week."""
    h = t.hour + t.minute / 60
    weekday = t.weekday() < 5
    if shape == "coding":
        if h < 6:
            return 0.0
        if not weekday:
            return 0.02
        return 1.0 if 9 <= h < 19 else 0.08
    if shape == "business":
        return (0.9 if 9 <= h < 18 else 0.02) if weekday else 0.01
    if shape == "daytime":
        return _daytime(h) * (1.0 if weekday else 0.45)
    if shape == "flat":
        return 0.75 + 0.25 * _daytime(h)
    if shape == "bursts":
        in_burst = weekday and any(b <= h < b + 0.5 for b in BURST_HOURS)
        return 1.0 if in_burst else 0.01
    if shape == "follows":  # embeddings and intent: the LLM traffic, never quite zero
        return 0.1 + 0.9 * _daytime(h) * (1.0 if weekday else 0.5)
    raise ValueError(f"unknown traffic shape {shape!r}")


def rate(model: ScenarioModel, t: dt.datetime) -> float:
    """Expected requests/s of ``model`` at ``t``."""
    return model.peak_rps * shape_factor(model.shape, t)


def arrivals(models: tuple[ScenarioModel, ...] = SCENARIO9, *, start: dt.datetime, seconds: float, scale: float = 1.0,
             seed: int = 0) -> Iterator[tuple[float, ScenarioModel, int, int]]:
    """A seeded Poisson process: (offset_s, model, prompt_tokens, completion_tokens), in time order.
    ``scale`` multiplies every rate (a 14-day history at full rate would be 300M requests). The rate
    is held constant over each minute (thinning within a minute would add nothing the tests see)."""
    rng = random.Random(seed)
    minute = 0
    while minute * 60 < seconds:
        t0 = start + dt.timedelta(minutes=minute)
        events: list[tuple[float, ScenarioModel, int, int]] = []
        for m in models:
            lam = rate(m, t0) * scale
            if lam <= 0:
                continue
            n = _poisson(rng, lam * 60)
            for _ in range(n):
                off = minute * 60 + rng.random() * 60
                if off >= seconds:
                    continue
                p = max(1, int(rng.expovariate(1 / m.prompt_tokens))) if m.prompt_tokens else 1
                c = max(1, int(rng.expovariate(1 / m.completion_tokens))) if m.completion_tokens else 0
                events.append((off, m, p, c))
        events.sort(key=lambda e: e[0])
        yield from events
        minute += 1


def _poisson(rng: random.Random, lam: float) -> int:
    if lam > 50:  # normal approximation: exact enough for counts this large, and O(1)
        return max(0, int(round(rng.gauss(lam, math.sqrt(lam)))))
    limit, k, p = math.exp(-lam), 0, rng.random()
    while p > limit:
        k += 1
        p *= rng.random()
    return k


def planner_spec(models: tuple[ScenarioModel, ...] = SCENARIO9) -> dict[str, Any]:
    """The planner example as a spec dict (A100-40GB, $3.20/h, 15,000 tokens/s, 15% overhead)."""
    return {
        "overhead_fraction": 0.15,
        "gpus": [{"gpu_type": "A100-40GB", "memory_gb": 40, "cost_per_hour": 3.20, "throughput_tokens_per_sec": 15000}],
        "models": [{"name": m.name, "gpu_memory_gb": m.gpu_memory_gb, "min_replicas": m.min_replicas,
                    "peak_requests_per_sec": m.peak_rps, "tokens_per_request": m.tokens_per_request,
                    "isolation": m.isolation} for m in models],
    }
