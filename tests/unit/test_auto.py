"""``model: "auto"``: the pure decision and the AutoRouter's effects over a real Router with fakes."""

from __future__ import annotations

import random
from typing import Any

import pytest

from modelyard.config.routing import AutoConfig, AutoRoute
from modelyard.config.schema import ModelConfig, OpenAIDeployment, RouterConfig, Settings
from modelyard.errors import ModelUnavailableError
from modelyard.observability.metrics import Metrics
from modelyard.routing.auto import AutoRouter, decide, needs_overflow, rules_for
from modelyard.routing.router import Router
from modelyard.routing.tasks import Prediction
from modelyard.testing.clock import ManualClock

CFG = AutoConfig(
    default="chat",
    tasks={"code": AutoRoute(model="coder", overflow="chat", overflow_queue_depth=2), "chat": AutoRoute(model="chat"),
           "summarize": AutoRoute(model="chat")},
    min_confidence=0.6,
)


def msgs(text: str, system: str | None = None) -> dict[str, Any]:
    return {"messages": ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]}


class FakeModel:
    """Stands in for the trained TaskModel: answers a fixed prediction, records the vectors."""

    def __init__(self, task: str, p: float) -> None:
        self.prediction = Prediction(task, p)
        self.seen: list[Any] = []

    def clip(self, text: str) -> str:
        return text

    def predict(self, vector: Any) -> Prediction:
        self.seen.append(vector)
        return self.prediction


def router(*, coder_cap: int | None = None) -> Router:
    def m(name: str, cap: int | None = None) -> ModelConfig:
        return ModelConfig(name=name, deployments=[OpenAIDeployment(api_base="http://127.0.0.1:9", model=name,
                                                                    max_concurrency=cap)])

    settings = Settings(router=RouterConfig(), models=[m("chat"), m("coder", coder_cap), m("text-embedding")])
    return Router(settings, lambda d: None, Metrics(), clock=ManualClock(), rng=random.Random(0))  # type: ignore[arg-type,return-value]


def test_decide_rules_first_then_a_confident_classifier_then_the_default() -> None:
    rules = rules_for(CFG)
    assert decide(CFG, rules, "```python\nx = 1\n```", Prediction("chat", 0.99)).by == "rules"
    d = decide(CFG, rules, "hello there", Prediction("summarize", 0.8))
    assert (d.task, d.by, d.p) == ("summarize", "classifier", 0.8)
    low = decide(CFG, rules, "hello there", Prediction("summarize", 0.5))
    assert (low.task, low.by, low.note) == ("chat", "default", "low_confidence")
    unrouted = decide(CFG, rules, "hello there", Prediction("classify", 0.9))  # a task the table lacks
    assert (unrouted.task, unrouted.by) == ("chat", "default") and "classify" in (unrouted.note or "")
    assert decide(CFG, rules, "", None).note == "empty"


def test_the_header_says_why() -> None:
    d = decide(CFG, rules_for(CFG), "hello", Prediction("chat", 0.931))
    assert d.header("chat") == "task=chat; by=classifier; p=0.93; model=chat"
    assert d.header("chat", overflow_from="coder").endswith("model=chat; overflow_from=coder")


async def test_the_classifier_sees_only_the_users_words() -> None:
    seen: list[str] = []

    async def embed(text: str, rid: str) -> list[float]:
        seen.append(text)
        return [0.0]

    auto = AutoRouter(CFG, router(), task_model=FakeModel("chat", 0.9), embed=embed)  # type: ignore[arg-type]
    group, header = await auto.route(msgs("what a lovely day", system="```python\nimport os\n```"), "/chat/completions", "r")
    assert group.name == "chat" and "by=classifier" in header
    assert seen == ["what a lovely day"]


async def test_overflow_when_the_routed_model_is_full() -> None:
    r = router(coder_cap=1)
    auto = AutoRouter(CFG, r, task_model=None)
    code = msgs("```js\nconsole.log(1)\n```")
    group, header = await auto.route(code, "/chat/completions", "r")
    assert group.name == "coder"
    r.resolve("coder").deployments[0].in_flight = 1  # at its cap: no deployment could take it now
    assert needs_overflow(r.resolve("coder"), None)
    group, header = await auto.route(code, "/chat/completions", "r")
    assert group.name == "chat" and header.endswith("overflow_from=coder")


async def test_overflow_past_the_queue_depth() -> None:
    r = router()
    coder = r.resolve("coder")
    assert not needs_overflow(coder, 2)
    coder.admission._queued = 2  # two waiting (the admission's own count)
    assert needs_overflow(coder, 2) and not needs_overflow(coder, 3) and not needs_overflow(coder, None)


async def test_a_route_without_overflow_goes_to_its_model_even_when_down() -> None:
    cfg = AutoConfig(default="chat", tasks={"code": AutoRoute(model="coder"), "chat": AutoRoute(model="chat")})
    r = router(coder_cap=1)
    r.resolve("coder").deployments[0].in_flight = 1
    group, _ = await AutoRouter(cfg, r).route(msgs("```py\nx\n```"), "/chat/completions", "r")
    assert group.name == "coder"  # never a silent fall-through: the coder's own errors/fallbacks apply


async def test_the_embedder_down_means_the_default_and_the_header_says_so() -> None:
    async def embed(text: str, rid: str) -> list[float]:
        raise ModelUnavailableError("text-embedding is loading")

    auto = AutoRouter(CFG, router(), task_model=FakeModel("code", 0.99), embed=embed)  # type: ignore[arg-type]
    group, header = await auto.route(msgs("the app crashes when I click save"), "/chat/completions", "r")
    assert group.name == "chat" and "by=default" in header and "classifier_unavailable" in header


async def test_a_session_pin_skips_the_classifier_while_its_model_can_answer() -> None:
    model = FakeModel("chat", 0.99)
    r = router(coder_cap=1)
    auto = AutoRouter(CFG, r, task_model=model, embed=lambda t, rid: _vec())  # type: ignore[arg-type]
    group, header = await auto.route(msgs("thanks!"), "/chat/completions", "r", pinned="coder")
    assert (group.name, header) == ("coder", "by=session; model=coder") and model.seen == []
    r.resolve("coder").deployments[0].in_flight = 1
    group, header = await auto.route(msgs("thanks!"), "/chat/completions", "r", pinned="coder")
    assert group.name == "chat" and "by=classifier" in header  # the pin's model is full: decided afresh
    group, _ = await auto.route(msgs("thanks!"), "/chat/completions", "r", pinned="text-embedding")
    assert group.name == "chat"  # a pin to a model outside the table is ignored


async def _vec() -> list[float]:
    return [1.0]


def test_bad_rule_is_a_config_error() -> None:
    from modelyard.errors import ConfigError

    with pytest.raises(ConfigError):
        rules_for(AutoConfig(default="chat", tasks={"chat": AutoRoute(model="chat")}, rules={"chat": ["("]}))
