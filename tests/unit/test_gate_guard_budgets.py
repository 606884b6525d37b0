"""Unit tests of the request-path policies of issue 5: token estimates and 429s (limits.guard), the
router skipping a deployment at its rate limit, budget counters (limits.budget), the auth gate
(api.auth) and the refusal to serve a public address without keys (server)."""

from __future__ import annotations

import asyncio
import datetime as dt
import random
from decimal import Decimal
from typing import Any

import pytest

from modelyard.api.auth import MASTER, OPEN, Gate, KeyStoreUnavailableError, Principal
from modelyard.auth.keys import new_key
from modelyard.backends.base import CallOptions, UpstreamReply
from modelyard.config.schema import ModelConfig, OpenAIDeployment, RetryConfig, RouterConfig, Settings
from modelyard.db import DatabaseError
from modelyard.errors import AuthenticationError, BudgetExceededError, PermissionDeniedError, RateLimitedError
from modelyard.limits.base import Limit, LimiterUnavailableError
from modelyard.limits.budget import MemoryBudgets, period_of
from modelyard.limits.guard import RateGuard, estimate_tokens
from modelyard.limits.memory import MemoryLimiter
from modelyard.observability.metrics import Metrics
from modelyard.routing.router import Router
from modelyard.server import exposure_problem, is_loopback
from modelyard.testing.clock import ManualClock

UTC = dt.timezone.utc
T0 = dt.datetime(2026, 1, 31, 12, tzinfo=UTC)


# --- estimates and refusals ---------------------------------------------------------------------


def test_estimate_tokens() -> None:
    chat = {"messages": [], "max_tokens": 100}
    assert estimate_tokens(chat, 400, 256) == 100 + 100
    assert estimate_tokens({"messages": [], "max_completion_tokens": 7, "max_tokens": 100}, 4, 256) == 1 + 7
    assert estimate_tokens({"messages": []}, 0, 256) == 256
    assert estimate_tokens({"prompt": "x", "max_tokens": 10, "n": 3}, 8, 256) == 2 + 30
    assert estimate_tokens({"input": "x"}, 40, 256) == 10  # embeddings: no completion
    for bad in (True, -1, "9", 1.5, None):
        assert estimate_tokens({"messages": [], "max_tokens": bad}, 0, 5) == 5
    assert estimate_tokens({"messages": [], "max_tokens": 1, "n": 10_000}, 0, 5) == 128  # n is capped


async def test_guard_refusal_names_the_limit_and_carries_headers() -> None:
    clock = ManualClock()
    guard = RateGuard(MemoryLimiter(clock))
    scopes = [("key:abc", Limit(rpm=1)), ("model:chat", Limit(rpm=10))]
    decision, res = await guard.admit(scopes, 0)
    assert decision is not None and decision.allowed and res is not None
    with pytest.raises(RateLimitedError) as exc:
        await guard.admit(scopes, 0)
    e = exc.value
    assert e.status == 429 and "this API key" in e.message and "rpm" in e.message
    assert e.headers["retry-after"] and e.headers["x-ratelimit-remaining-requests"] == "0"
    with pytest.raises(RateLimitedError, match="Request too large for model 'm'"):
        await guard.admit([("model:m", Limit(tpm=100))], 101)


class _DownLimiter:
    async def acquire(self, scopes: Any, tokens: int) -> Any:
        raise LimiterUnavailableError("redis down")

    async def settle(self, reservation: Any, tokens: int) -> None:
        raise LimiterUnavailableError("redis down")

    async def aclose(self) -> None:
        pass


async def test_guard_fail_open_and_closed() -> None:
    scopes = [("key:a", Limit(rpm=1))]
    open_guard = RateGuard(_DownLimiter(), fail_open=True)
    assert await open_guard.admit(scopes, 1) == (None, None)
    assert open_guard.unavailable == 1
    closed = RateGuard(_DownLimiter(), fail_open=False)
    with pytest.raises(LimiterUnavailableError) as exc:
        await closed.admit(scopes, 1)
    assert exc.value.status == 503 and exc.value.headers["retry-after"] == "1"


# --- the router skips a deployment at its limit ------------------------------------------------


class _Backend:
    def __init__(self, name: str, calls: list[str]) -> None:
        self.name, self.calls = name, calls

    async def call(self, path: str, body: bytes, opts: CallOptions) -> UpstreamReply:
        self.calls.append(self.name)
        return UpstreamReply(200, b"application/json", b"{}")

    async def aclose(self) -> None:
        pass


def _router(rpm_a: int | None, rpm_b: int | None) -> tuple[Router, list[str], ManualClock]:
    deps = [
        OpenAIDeployment(api_base="http://127.0.0.1:9", model="m", name="a", rpm=rpm_a),
        OpenAIDeployment(api_base="http://127.0.0.1:9", model="m", name="b", rpm=rpm_b),
    ]
    settings = Settings(
        router=RouterConfig(strategy="round_robin", retry=RetryConfig(num_retries=0)),
        models=[ModelConfig(name="m", deployments=deps)],
    )
    calls: list[str] = []
    clock = ManualClock()
    router = Router(settings, lambda d: _Backend(d.name or "", calls), Metrics(), clock=clock,
                    rng=random.Random(1), guard=RateGuard(MemoryLimiter(clock)))
    return router, calls, clock


async def test_router_skips_deployment_at_its_rpm_without_spending_an_attempt() -> None:
    router, calls, clock = _router(1, None)
    group = router.resolve("m")
    for _ in range(4):
        routed = await router.run(group, lambda dep: dep.backend.call("/x", b"", CallOptions(1.0, "r")))
        assert routed.result.status == 200
    assert calls.count("a") == 1 and calls.count("b") == 3
    clock.advance(62)  # the window moved on: a has room again
    calls.clear()
    for _ in range(2):
        await router.run(group, lambda dep: dep.backend.call("/x", b"", CallOptions(1.0, "r")))
    assert sorted(calls) == ["a", "b"]


async def test_router_429_when_every_deployment_is_at_its_limit() -> None:
    router, calls, _ = _router(1, 1)
    group = router.resolve("m")
    for _ in range(2):
        await router.run(group, lambda dep: dep.backend.call("/x", b"", CallOptions(1.0, "r")))
    with pytest.raises(RateLimitedError) as exc:
        await router.run(group, lambda dep: dep.backend.call("/x", b"", CallOptions(1.0, "r")))
    assert exc.value.status == 429 and int(exc.value.headers["retry-after"]) >= 1
    assert len(calls) == 2
    # no breaker was charged for the skips: both deployments remain closed with nothing in flight
    assert all(d.breaker.available() and d.in_flight == 0 for d in group.deployments)


# --- budgets --------------------------------------------------------------------------------------


def _key(**kw: Any):  # noqa: ANN202
    _, key = new_key(now=T0, **kw)
    return key


async def test_memory_budgets_seed_once_then_count_in_memory() -> None:
    seeds: list[tuple[str, dt.datetime]] = []
    release = asyncio.Event()

    async def seed(key_id: str, since: dt.datetime) -> int:
        seeds.append((key_id, since))
        await release.wait()
        return 1_000

    b = MemoryBudgets(seed)
    k = _key(max_budget=1, budget_duration="1d")
    now = T0 + dt.timedelta(hours=1)
    waiters = [asyncio.create_task(b.spent(k, now)) for _ in range(5)]
    await asyncio.sleep(0)
    b.add(k, 7, now)  # a response finishing while the seed query runs is not lost
    release.set()
    assert await asyncio.gather(*waiters) == [1_007] * 5
    assert len(seeds) == 1 and seeds[0] == (k.id, T0)  # single-flight, from the period start
    b.add(k, 3, now)
    assert await b.spent(k, now) == 1_010 and len(seeds) == 1
    # the next day is a new period: seeded again, the old count forgotten
    tomorrow = T0 + dt.timedelta(days=1, hours=1)
    assert await b.spent(k, tomorrow) == 1_000 and seeds[-1] == (k.id, T0 + dt.timedelta(days=1))


async def test_memory_budgets_store_down_counts_from_zero() -> None:
    async def seed(key_id: str, since: dt.datetime) -> int:
        raise DatabaseError("down")

    b = MemoryBudgets(seed)
    k = _key(max_budget=1)
    assert await b.spent(k, T0) == 0
    b.add(k, 5, T0)
    assert await b.spent(k, T0) == 5


def test_budget_period_without_duration_never_resets() -> None:
    k = _key(max_budget=1)
    start, end = period_of(k, T0 + dt.timedelta(days=400))
    assert start == T0 and end.year == 9999
    m = _key(max_budget=1, budget_duration="1mo")
    assert period_of(m, T0 + dt.timedelta(days=1)) == (T0, dt.datetime(2026, 2, 28, 12, tzinfo=UTC))


# --- the gate -------------------------------------------------------------------------------------


class _Req:
    def __init__(self, authorization: str | None, client: str = "127.0.0.1") -> None:
        self.authorization = authorization
        self.scope = {"client": (client, 5000)}


class _Ring:
    def __init__(self, *keys: tuple[str, Any], loaded: bool = True) -> None:
        self._by_plain = dict(keys)
        self.loaded = loaded
        self.fresh_calls = 0

    def find(self, plaintext: str) -> Any:
        return self._by_plain.get(plaintext)

    async def find_fresh(self, plaintext: str) -> Any:
        self.fresh_calls += 1
        return self._by_plain.get(plaintext)


MASTER_KEY = "sk-master-key-1"


async def test_gate_without_master_key_is_open_and_admin_is_loopback_only() -> None:
    gate = Gate(None, None, None)
    assert not gate.enabled
    assert await gate.client(_Req(None)) is OPEN
    assert await gate.admin(_Req(None)) is MASTER
    with pytest.raises(PermissionDeniedError):
        await gate.admin(_Req(None, client="10.0.0.7"))


async def test_gate_keys() -> None:
    plain, live = new_key(now=T0, models=["chat"])
    expired_plain, expired = new_key(now=T0 - dt.timedelta(days=2), duration="1d")
    ring = _Ring((plain, live), (expired_plain, expired))
    gate = Gate(MASTER_KEY, ring, None, now=lambda: T0)  # type: ignore[arg-type]
    assert await gate.client(_Req(f"Bearer {MASTER_KEY}")) is MASTER
    p = await gate.client(_Req(f"bearer {plain}"))
    assert p.key is live and p.key_id == live.id and not p.admin
    assert p.allows("chat") and not p.allows("other") and p.allows("alias", "chat")
    for header, code in ((None, "missing_api_key"), ("Token sk-token-zzz", "invalid_authorization_header"),
                         ("Bearer sk-nope", "invalid_api_key"), (f"Bearer {expired_plain}", "expired_api_key")):
        with pytest.raises(AuthenticationError) as exc:
            await gate.client(_Req(header))
        assert exc.value.code == code and (header is None or header.split()[-1] not in exc.value.message)
    with pytest.raises(PermissionDeniedError, match="needs the master key"):
        await gate.admin(_Req(f"Bearer {plain}"))
    assert (await gate.self_or_admin(_Req(f"Bearer {plain}"))).key is live
    # keys never loaded (database down since start): 503, not 401
    gate2 = Gate(MASTER_KEY, _Ring(loaded=False), None, now=lambda: T0)  # type: ignore[arg-type]
    with pytest.raises(KeyStoreUnavailableError):
        await gate2.client(_Req(f"Bearer {plain}"))


async def test_gate_budget_refusal_says_which_budget_and_when_it_resets() -> None:
    plain, key = new_key(now=T0, max_budget="0.5", budget_duration="1d", alias="nightly")

    async def seed(key_id: str, since: dt.datetime) -> int:
        return 0

    budgets = MemoryBudgets(seed)
    gate = Gate(MASTER_KEY, _Ring((plain, key)), budgets, now=lambda: T0 + dt.timedelta(hours=6))  # type: ignore[arg-type]
    principal = await gate.client(_Req(f"Bearer {plain}"))
    gate.charge(principal, 499_999_999)
    await gate.client(_Req(f"Bearer {plain}"))  # just under
    gate.charge(principal, 1)
    with pytest.raises(BudgetExceededError) as exc:
        await gate.client(_Req(f"Bearer {plain}"))
    e = exc.value
    assert e.status == 429 and "nightly" in e.message and "0.5" in e.message and "1d" in e.message
    assert "2026-02-01T12:00:00+00:00" in e.message
    assert int(e.headers["retry-after"]) == 18 * 3600
    gate.charge(Principal(None, admin=True), 10**12)  # the master key has no budget: nothing counted
    assert Decimal(await budgets.spent(key, T0)) == Decimal(500_000_000)


# --- serving on a public address --------------------------------------------------------------------


def test_exposure_problem() -> None:
    bare = Settings()
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost") and is_loopback("127.8.9.1")
    assert not is_loopback("0.0.0.0") and not is_loopback("example.com") and not is_loopback("10.1.2.3")
    assert exposure_problem("127.0.0.1", bare, {}) is None
    assert "refusing to serve on 0.0.0.0" in (exposure_problem("0.0.0.0", bare, {}) or "")
    assert exposure_problem("0.0.0.0", bare, {"MODELYARD_MASTER_KEY": "x" * 12}) is None
    assert exposure_problem("0.0.0.0", bare, {}, allow_unauthenticated=True) is None
    assert exposure_problem("0.0.0.0", Settings(auth={"master_key": "k" * 12}), {}) is None
    assert exposure_problem("0.0.0.0", Settings(auth={"allow_unauthenticated": True}), {}) is None
    assert "shorter than 8" in (exposure_problem("127.0.0.1", bare, {"MODELYARD_MASTER_KEY": "abc"}) or "")
    assert "shorter than 8" in (exposure_problem("127.0.0.1", bare, {"MODELYARD_MASTER_KEY": ""}) or "")
