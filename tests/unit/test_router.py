"""Unit tests of the router (modelyard.routing.router): retries, backoff, breakers, fallbacks,
in-flight accounting and metrics, against scripted fake backends. The clock and sleep are
injected: nothing here waits for time to pass."""

from __future__ import annotations

import asyncio
import random
from collections import deque
from typing import Any

import pytest

from modelyard.backends.base import CallOptions, UpstreamReply
from modelyard.config.schema import BreakerConfig, ModelConfig, OpenAIDeployment, RetryConfig, RouterConfig, Settings, Strategy
from modelyard.errors import (
    NoDeploymentAvailableError, UpstreamConnectError, UpstreamError, UpstreamStatusError, UpstreamTimeoutError,
)
from modelyard.observability.metrics import Metrics
from modelyard.routing.breaker import BreakerState
from modelyard.routing.router import DeploymentSlot, Router
from modelyard.testing.clock import ManualClock as FakeClock


OK, HANG = "ok", "hang"


class FakeBackend:
    """Scripted: each call takes the next action from ``script`` (then ``default``). An action is
    "ok", "hang" (wait until released), a float (advance the clock that much, then ok) or an
    exception to raise."""

    def __init__(self, name: str, log: list[str], clock: FakeClock) -> None:
        self.name = name
        self.script: deque[Any] = deque()
        self.default: Any = OK
        self.calls = 0
        self.log = log
        self.clock = clock
        self.gate = asyncio.Event()

    async def _act(self) -> None:
        self.calls += 1
        self.log.append(self.name)
        action = self.script.popleft() if self.script else self.default
        if isinstance(action, BaseException):
            raise action
        if action == HANG:
            await self.gate.wait()
        elif isinstance(action, float):
            self.clock.t += action

    async def call(self, path: str, body: bytes, opts: CallOptions) -> UpstreamReply:
        await self._act()
        return UpstreamReply(200, b"application/json", b'{"from":"' + self.name.encode() + b'"}')

    async def open_stream(self, path: str, body: bytes, opts: CallOptions) -> Any:
        await self._act()
        return self.name

    async def aclose(self) -> None:  # noqa: D102
        pass


def err(status: int) -> UpstreamStatusError:
    return UpstreamStatusError(status, b'{"error":{"message":"boom ' + str(status).encode() + b'"}}')


def model(name: str, deps: list[str], **kw: Any) -> ModelConfig:
    caps = kw.pop("caps", {})
    return ModelConfig(
        name=name,
        deployments=[OpenAIDeployment(api_base="http://127.0.0.1:9", model=f"up-{d}", name=d, max_concurrency=caps.get(d)) for d in deps],
        **kw,
    )


class Env:
    def __init__(self, *models: ModelConfig, retries: int = 2, allowed_fails: int = 100, cooldown: float = 30.0,
                 base: float = 0.1, cap: float = 1.0, strategy: Strategy = Strategy.round_robin, seed: int = 1) -> None:
        self.settings = Settings(
            router=RouterConfig(
                strategy=strategy,
                retry=RetryConfig(num_retries=retries, backoff_base_s=base, backoff_max_s=cap),
                breaker=BreakerConfig(allowed_fails=allowed_fails, window_s=60.0, cooldown_s=cooldown),
            ),
            models=list(models),
        )
        self.clock = FakeClock()
        self.log: list[str] = []
        self.backends: dict[str, FakeBackend] = {}
        self.sleeps: list[float] = []
        self.metrics = Metrics()

        def factory(d: OpenAIDeployment) -> FakeBackend:
            return self.backends.setdefault(d.name or "", FakeBackend(d.name or "", self.log, self.clock))

        async def fake_sleep(delay: float) -> None:
            self.sleeps.append(delay)

        self.router = Router(self.settings, factory, self.metrics, clock=self.clock, rng=random.Random(seed), sleep=fake_sleep)

    def __getitem__(self, name: str) -> FakeBackend:
        return self.backends[name]

    def slot(self, name: str) -> DeploymentSlot:
        return next(d for d in self.router.deployments() if d.name == name)

    async def run(self, model_name: str, *, hold: bool = False, stream: bool = False):  # noqa: ANN201
        group = self.router.resolve(model_name)

        def op(dep: DeploymentSlot):  # noqa: ANN202
            opts = CallOptions(dep.timeout_s, "rid")
            return dep.backend.open_stream("/chat/completions", b"{}", opts) if stream else dep.backend.call("/chat/completions", b"{}", opts)

        return await self.router.run(group, op, hold=hold)

    def sample(self, name: str, **labels: str) -> float | None:
        return self.metrics.registry.get_sample_value(name, labels)

    def in_flight(self) -> list[int]:
        return [d.in_flight for d in self.router.deployments()]


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


RETRYABLE = [pytest.param(lambda s=s: err(s), id=str(s)) for s in (500, 503, 429, 408)] + [
    pytest.param(lambda: UpstreamTimeoutError("slow"), id="timeout"),
    pytest.param(lambda: UpstreamConnectError("refused"), id="connect"),
    pytest.param(lambda: UpstreamError("broken"), id="protocol"),
]


@pytest.mark.parametrize("make_err", RETRYABLE)
async def test_retryable_failure_goes_to_another_deployment(make_err) -> None:  # noqa: ANN001
    env = Env(model("m", ["a", "b"]))
    env["a"].default = make_err()
    routed = await env.run("m")
    assert env.log == ["a", "b"]  # round robin starts at a; the retry avoids the one that failed
    assert routed.deployment.name == "b"
    assert routed.result.body == b'{"from":"b"}'
    assert routed.retries == 1 and routed.hops == 0
    assert routed.group.name == "m"
    assert len(env.sleeps) == 1
    assert env.sample("modelyard_retries_total", model="m", deployment="b") == 1
    assert env.in_flight() == [0, 0]


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
async def test_client_error_is_raised_at_once(status: int) -> None:
    env = Env(model("m", ["a", "b"], fallbacks=["fb"]), model("fb", ["f"]))
    env["a"].default = err(status)
    with pytest.raises(UpstreamStatusError) as ei:
        await env.run("m")
    assert ei.value.status == status
    assert ei.value.message == f"boom {status}"
    assert env.log == ["a"]  # no retry, no fallback
    assert env.sleeps == []
    assert env.sample("modelyard_retries_total", model="m", deployment="b") is None
    assert env.sample("modelyard_fallbacks_total", model="m", to_model="fb") is None
    assert env.slot("a").breaker.state is BreakerState.closed
    assert env.in_flight() == [0, 0, 0]


@pytest.mark.parametrize("num_retries", [0, 1, 3, 5])
async def test_num_retries_is_respected_exactly(num_retries: int) -> None:
    env = Env(model("m", ["a"]), retries=num_retries)
    env["a"].default = err(503)
    with pytest.raises(UpstreamStatusError):
        await env.run("m")
    assert env["a"].calls == num_retries + 1
    assert len(env.sleeps) == num_retries
    got = env.sample("modelyard_retries_total", model="m", deployment="a")
    assert (got or 0) == num_retries
    assert env.sample("modelyard_upstream_requests_total", model="m", deployment="a", outcome="503") == num_retries + 1


async def test_retries_spread_over_the_group_then_come_back() -> None:
    env = Env(model("m", ["a", "b"]), retries=3)
    env["a"].default = err(502)
    env["b"].default = err(502)
    with pytest.raises(UpstreamStatusError):
        await env.run("m")
    assert sorted(env.log[:2]) == ["a", "b"]  # both tried before either is tried again
    assert len(env.log) == 4


@pytest.mark.parametrize("seed", range(10))
async def test_backoff_delays_are_full_jitter_within_the_cap(seed: int) -> None:
    env = Env(model("m", ["a"]), retries=7, base=0.1, cap=1.0, seed=seed)
    env["a"].default = err(500)
    with pytest.raises(UpstreamStatusError):
        await env.run("m")
    assert len(env.sleeps) == 7
    for n, d in enumerate(env.sleeps, start=1):
        assert 0.0 <= d <= min(1.0, 0.1 * 2 ** (n - 1)), (n, d, env.sleeps)
    assert len(set(env.sleeps)) == 7  # jittered, not a fixed schedule


async def test_breaker_opens_and_the_open_deployment_gets_no_traffic() -> None:
    env = Env(model("m", ["a", "b"]), retries=1, allowed_fails=2, cooldown=30.0, strategy=Strategy.weighted)
    env["a"].default = err(503)
    gauge = {"model": "m", "deployment": "a"}
    assert env.sample("modelyard_breaker_state", **gauge) == 0
    for _ in range(100):
        if env["a"].calls == 2:
            break
        assert (await env.run("m")).deployment.name == "b"
    assert env.slot("a").breaker.state is BreakerState.open
    assert env.sample("modelyard_breaker_state", **gauge) == 2
    assert env.sample("modelyard_breaker_state", model="m", deployment="b") == 0
    for _ in range(30):
        assert (await env.run("m")).deployment.name == "b"
    assert env["a"].calls == 2
    # after the cooldown exactly one probe goes to a; its failure re-opens the breaker
    env.clock.t += 30.0
    for _ in range(30):
        assert (await env.run("m")).deployment.name == "b"
    assert env["a"].calls == 3
    assert env.sample("modelyard_breaker_state", **gauge) == 2
    # the next probe succeeds and closes it
    env.clock.t += 30.0
    env["a"].default = OK
    seen = {(await env.run("m")).deployment.name for _ in range(30)}
    assert seen == {"a", "b"}
    assert env.sample("modelyard_breaker_state", **gauge) == 0


async def test_fallbacks_in_order_when_the_group_fails() -> None:
    env = Env(model("m", ["a"], fallbacks=["f1", "f2"]), model("f1", ["b"]), model("f2", ["c"]), retries=1)
    env["a"].default = err(503)
    env["b"].default = UpstreamTimeoutError("slow")
    routed = await env.run("m")
    assert env.log == ["a", "a", "b", "b", "c"]
    assert routed.hops == 2
    assert routed.group.name == "f2"
    assert routed.deployment.name == "c"
    assert routed.retries == 2
    assert env.sample("modelyard_fallbacks_total", model="m", to_model="f1") == 1
    assert env.sample("modelyard_fallbacks_total", model="m", to_model="f2") == 1
    assert env.sample("modelyard_retries_total", model="m", deployment="a") == 1
    assert env.sample("modelyard_retries_total", model="f1", deployment="b") == 1
    assert env.in_flight() == [0, 0, 0]


async def test_first_fallback_that_answers_ends_the_chain() -> None:
    env = Env(model("m", ["a"], fallbacks=["f1", "f2"]), model("f1", ["b"]), model("f2", ["c"]), retries=0)
    env["a"].default = err(500)
    routed = await env.run("m")
    assert env.log == ["a", "b"]
    assert routed.hops == 1 and routed.group.name == "f1"
    assert env.sample("modelyard_fallbacks_total", model="m", to_model="f2") is None


async def test_no_deployment_available_when_everything_is_open() -> None:
    env = Env(model("m", ["a"], fallbacks=["f"]), model("f", ["b"]), retries=0, allowed_fails=1, cooldown=30.0)
    env["a"].default = err(503)
    env["b"].default = err(503)
    with pytest.raises(UpstreamStatusError):
        await env.run("m")
    assert env.log == ["a", "b"]
    env.clock.t += 10.0
    with pytest.raises(NoDeploymentAvailableError) as ei:
        await env.run("m")
    e = ei.value
    assert e.status == 503
    assert e.retry_after_s == pytest.approx(20.0)
    assert e.headers["retry-after"] == "20"
    assert "fallbacks" in e.message
    assert env.log == ["a", "b"]  # nothing was sent


@pytest.mark.parametrize(
    ("make_err", "status"),
    [
        pytest.param(lambda: err(503), 502, id="5xx-502"),
        pytest.param(lambda: err(500), 502, id="500-502"),
        pytest.param(lambda: UpstreamTimeoutError("slow"), 504, id="timeout-504"),
        pytest.param(lambda: UpstreamConnectError("refused"), 502, id="connect-502"),
        pytest.param(lambda: err(429), 429, id="429-429"),
    ],
)
async def test_final_error_after_retries_and_fallbacks(make_err, status: int) -> None:  # noqa: ANN001
    env = Env(model("m", ["a", "b"], fallbacks=["f"]), model("f", ["c"]), retries=2)
    for n in "abc":
        env[n].default = make_err()
    with pytest.raises(UpstreamError) as ei:
        await env.run("m")
    assert ei.value.status == status
    assert len(env.log) == 6  # 3 attempts in m, 3 in f
    assert env.in_flight() == [0, 0, 0]


async def test_cancellation_mid_call_frees_in_flight() -> None:
    env = Env(model("m", ["a"]))
    env["a"].default = HANG
    task = asyncio.create_task(env.run("m"))
    await settle()
    assert env.slot("a").in_flight == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert env.slot("a").in_flight == 0
    assert env.sample("modelyard_upstream_requests_total", model="m", deployment="a", outcome="cancelled") == 1
    assert env.slot("a").breaker.state is BreakerState.closed


async def test_cancelled_probe_frees_the_half_open_slot() -> None:
    env = Env(model("m", ["a"]), retries=0, allowed_fails=1)
    env["a"].default = err(500)
    with pytest.raises(UpstreamStatusError):
        await env.run("m")
    env.clock.t += 30.0
    env["a"].default = HANG
    probe = asyncio.create_task(env.run("m"))
    await settle()
    with pytest.raises(NoDeploymentAvailableError):  # the probe is out: nothing else goes
        await env.run("m")
    probe.cancel()
    with pytest.raises(asyncio.CancelledError):
        await probe
    env["a"].default = OK
    assert (await env.run("m")).deployment.name == "a"  # a new probe; it closes the breaker
    assert env.slot("a").breaker.state is BreakerState.closed
    assert env.in_flight() == [0]


async def test_cancellation_during_backoff_frees_everything() -> None:
    env = Env(model("m", ["a"]), retries=2)
    env["a"].default = err(500)
    blocked = asyncio.Event()

    async def blocking_sleep(delay: float) -> None:
        blocked.set()
        await asyncio.Event().wait()

    env.router._sleep = blocking_sleep  # noqa: SLF001
    task = asyncio.create_task(env.run("m"))
    await blocked.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert env["a"].calls == 1
    assert env.in_flight() == [0]


async def test_hold_keeps_in_flight_until_finish() -> None:
    env = Env(model("m", ["a"]), allowed_fails=1)
    routed = await env.run("m", hold=True, stream=True)
    assert routed.result == "a"
    assert env.slot("a").in_flight == 1
    assert env.sample("modelyard_upstream_requests_total", model="m", deployment="a", outcome="ok") == 0  # series exist from startup
    routed.finish(ok=True)
    assert env.slot("a").in_flight == 0
    assert env.sample("modelyard_upstream_requests_total", model="m", deployment="a", outcome="ok") == 1
    routed.finish(ok=True)  # idempotent
    assert env.slot("a").in_flight == 0
    # a stream that broke counts as a failure of the deployment
    broken = await env.run("m", hold=True, stream=True)
    broken.finish(ok=False)
    assert env.slot("a").in_flight == 0
    assert env.slot("a").breaker.state is BreakerState.open


async def test_hold_abandoned_gives_no_verdict() -> None:
    env = Env(model("m", ["a"]), allowed_fails=1)
    routed = await env.run("m", hold=True)
    routed.finish(ok=None)
    assert env.in_flight() == [0]
    assert env.slot("a").breaker.state is BreakerState.closed
    assert env.sample("modelyard_upstream_requests_total", model="m", deployment="a", outcome="cancelled") == 1
    plain = await env.run("m")  # not held: finish() is a no-op
    plain.finish(ok=False)
    assert env.in_flight() == [0]
    assert env.slot("a").breaker.state is BreakerState.closed


async def test_latency_ewma_follows_the_injected_clock() -> None:
    env = Env(model("m", ["a"]))
    env["a"].script.extend([2.0, 1.0])
    await env.run("m")
    assert env.slot("a").latency_ewma_s == pytest.approx(2.0)
    await env.run("m")
    assert env.slot("a").latency_ewma_s == pytest.approx(0.3 * 1.0 + 0.7 * 2.0)


async def test_full_deployment_is_excluded() -> None:
    env = Env(model("m", ["a", "b"], caps={"a": 1}))
    held = await env.run("m", hold=True)
    assert held.deployment.name == "a"
    for _ in range(5):
        r = await env.run("m")
        assert r.deployment.name == "b"
    held.finish(ok=True)
    names = {(await env.run("m")).deployment.name for _ in range(4)}
    assert names == {"a", "b"}


async def test_every_deployment_full_is_no_deployment_available() -> None:
    env = Env(model("m", ["a", "b"], caps={"a": 1, "b": 1}))
    h1 = await env.run("m", hold=True)
    h2 = await env.run("m", hold=True)
    assert {h1.deployment.name, h2.deployment.name} == {"a", "b"}
    with pytest.raises(NoDeploymentAvailableError) as ei:
        await env.run("m")
    assert ei.value.headers["retry-after"] == "1"
    h1.finish(ok=True)
    h2.finish(ok=True)
    assert env.in_flight() == [0, 0]
    assert env.router.resolve("m").admission.max_concurrency == 2  # the group cap is the sum


async def test_stale_abandoned_stream_does_not_let_a_second_probe_through() -> None:
    """A stream admitted while the breaker was closed is abandoned by its client while the
    half-open probe is still out: the deployment must still get only that one probe."""
    env = Env(model("m", ["a"]), retries=0, allowed_fails=2, cooldown=30.0)
    long_stream = await env.run("m", hold=True, stream=True)  # admitted while closed
    env["a"].default = err(503)
    for _ in range(2):
        with pytest.raises(UpstreamStatusError):
            await env.run("m")
    assert env.slot("a").breaker.state is BreakerState.open
    env.clock.t += 30.0
    env["a"].default = HANG
    probe = asyncio.create_task(env.run("m"))
    await settle()
    assert env["a"].calls == 4
    long_stream.finish(ok=None)  # the old stream's client goes away
    second = asyncio.create_task(env.run("m"))
    await settle()
    try:
        assert env["a"].calls == 4, "a second probe reached the half-open deployment"
        with pytest.raises(NoDeploymentAvailableError):
            await second
    finally:
        env["a"].gate.set()
        await asyncio.gather(probe, second, return_exceptions=True)


# --- issue 11: one identity per deployment, session affinity, cascades --------------------------


def test_a_deployments_key_is_the_model_name_for_the_first_and_numbered_after() -> None:
    cfg = ModelConfig(name="m", deployments=[OpenAIDeployment(api_base="http://127.0.0.1:9", model="x")] * 3)
    env = Env(cfg)
    assert [d.name for d in env.router.deployments()] == ["m", "m/1", "m/2"]
    assert [cfg.key(i) for i in range(3)] == ["m", "m/1", "m/2"]


async def test_prefer_takes_the_pinned_deployment_every_time() -> None:
    env = Env(model("m", ["a", "b", "c"]), strategy=Strategy.round_robin)
    group = env.router.resolve("m")

    async def op(dep: DeploymentSlot):  # noqa: ANN202
        return dep.name

    picked = [(await env.router.run(group, op, prefer="b")).result for _ in range(6)]
    assert picked == ["b"] * 6
    free = [(await env.router.run(group, op)).result for _ in range(3)]
    assert sorted(free) == ["a", "b", "c"]  # without a pin, round robin over all three


async def test_prefer_falls_back_when_the_pinned_deployment_fails() -> None:
    env = Env(model("m", ["a", "b"]), retries=1)
    env["b"].script.append(err(503))
    group = env.router.resolve("m")

    def op(dep: DeploymentSlot):  # noqa: ANN202
        return dep.backend.call("/chat/completions", b"{}", CallOptions(dep.timeout_s, "rid"))

    routed = await env.router.run(group, op, prefer="b")
    assert routed.deployment.name == "a" and routed.retries == 1
    assert env.log == ["b", "a"]


def test_a_cascade_group_has_no_deployments_and_no_admission_cap() -> None:
    from modelyard.config.routing import CascadeConfig, CascadeTier

    env = Env(model("small", ["s"]), model("big", ["b"]),
              ModelConfig(name="both", cascade=CascadeConfig(tiers=[CascadeTier(model="small", threshold=-1.0),
                                                                       CascadeTier(model="big")])))
    group = env.router.resolve("both")
    assert group.cascade is not None and group.deployments == []
    assert group.admission.max_concurrency is None  # not 0: a cascade's tiers are admitted by their own groups
