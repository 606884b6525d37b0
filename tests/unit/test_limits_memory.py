"""Unit tests of the in-memory rpm/tpm limiter (modelyard.limits.memory) and the shared pure
decision (modelyard.limits.base).

Time comes from a hand-driven clock; nothing sleeps. The window is 60 s in 1 s buckets, so the
exact bound asserted is: in any interval shorter than 60 s at most ``rpm`` requests are admitted,
and a request is refused for rpm only if ``rpm`` requests were admitted in the last 61 s.
"""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import settings, strategies as st
from hypothesis import example, given

from modelyard.errors import ModelyardError
from modelyard.limits import Limit, LimiterUnavailableError, MemoryLimiter, format_duration
from modelyard.testing.clock import ManualClock

KEY = ("key:ab12", Limit(rpm=3, tpm=None))


def make(t: float = 1000.5) -> tuple[MemoryLimiter, ManualClock]:
    clock = ManualClock(t)
    return MemoryLimiter(clock), clock


# --- rpm ----------------------------------------------------------------------------------------


async def test_admits_up_to_rpm_then_refuses_with_retry_after() -> None:
    lim, clock = make()
    for _ in range(3):
        d, res = await lim.acquire([KEY], 0)
        assert d.allowed and res is not None and d.which is None and d.retry_after_s == 0
    d, res = await lim.acquire([KEY], 0)
    assert not d.allowed and res is None
    assert d.which == "key:ab12 rpm"
    # charged in bucket 1000 → counted until t = 1061 (at most one bucket later than exact)
    assert d.retry_after_s == pytest.approx(1061 - 1000.5)
    clock.t = 1060.999
    assert not (await lim.acquire([KEY], 0))[0].allowed
    clock.t = 1061.0
    assert (await lim.acquire([KEY], 0))[0].allowed


async def test_window_slides() -> None:
    lim, clock = make(1000.0)
    two = ("key:a", Limit(rpm=2))
    assert (await lim.acquire([two], 0))[0].allowed  # bucket 1000
    clock.t = 1030.0
    assert (await lim.acquire([two], 0))[0].allowed  # bucket 1030
    clock.t = 1045.0
    d, _ = await lim.acquire([two], 0)
    assert not d.allowed and d.retry_after_s == pytest.approx(1061 - 1045)  # the first one leaves first
    clock.t = 1061.0
    assert (await lim.acquire([two], 0))[0].allowed
    d, _ = await lim.acquire([two], 0)
    assert not d.allowed and d.retry_after_s == pytest.approx(1091 - 1061)
    clock.t = 1200.0  # long idle: everything forgotten
    assert [(await lim.acquire([two], 0))[0].allowed for _ in range(3)] == [True, True, False]


async def test_concurrent_acquires_on_one_loop_take_exactly_rpm() -> None:
    lim, _ = make()
    results = await asyncio.gather(*(lim.acquire([("model:chat", Limit(rpm=10))], 1) for _ in range(100)))
    assert sum(d.allowed for d, _ in results) == 10


# --- tpm ----------------------------------------------------------------------------------------


async def test_tpm_charges_estimate_and_settle_corrects_both_ways() -> None:
    lim, clock = make()
    scope = [("key:a", Limit(tpm=1000))]
    d1, r1 = await lim.acquire(scope, 600)
    assert d1.allowed and r1 is not None
    d, r = await lim.acquire(scope, 500)  # 600 + 500 > 1000
    assert not d.allowed and r is None and d.which == "key:a tpm"
    await lim.settle(r1, 300)  # used less than estimated: 300 refunded
    d2, r2 = await lim.acquire(scope, 500)
    assert d2.allowed and r2 is not None  # 300 + 500
    assert d2.headers["x-ratelimit-remaining-tokens"] == "200"
    clock.advance(10)
    await lim.settle(r2, 900)  # used more: 400 more charged, now
    d, _ = await lim.acquire(scope, 1)
    assert not d.allowed and d.which == "key:a tpm"
    assert d.headers["x-ratelimit-remaining-tokens"] == "0"  # 1200 used of 1000
    # the 300 (bucket 1000) and the 500 estimate (bucket 1000) leave at 1061; the 400 over (bucket 1010) at 1071
    clock.t = 1061.0
    d, _ = await lim.acquire(scope, 600)
    assert d.allowed
    await lim.settle(r2, 0)  # settling twice is a no-op
    assert (await lim.acquire(scope, 1))[0].allowed is False  # 400 + 600 = 1000 used


async def test_refund_after_the_bucket_left_the_window_is_dropped() -> None:
    lim, clock = make()
    scope = [("key:a", Limit(tpm=100))]
    _, r = await lim.acquire(scope, 100)
    clock.advance(120)
    assert (await lim.acquire(scope, 100))[0].allowed
    await lim.settle(r, 0)  # the old bucket is gone: the refund must not touch the new charge
    assert not (await lim.acquire(scope, 1))[0].allowed


async def test_request_larger_than_tpm_is_refused() -> None:
    lim, _ = make()
    d, r = await lim.acquire([("key:a", Limit(tpm=100))], 101)
    assert not d.allowed and r is None and d.which == "key:a tpm" and d.retry_after_s == 60.0


# --- several scopes: all or nothing -----------------------------------------------------------


async def test_refused_request_charges_no_scope() -> None:
    lim, _ = make()
    key = ("key:a", Limit(rpm=10, tpm=10_000))
    model = ("model:chat", Limit(rpm=2))
    dep = ("deployment:chat/0", Limit(tpm=5000))
    for _ in range(2):
        assert (await lim.acquire([key, model, dep], 100))[0].allowed
    d, r = await lim.acquire([key, model, dep], 100)
    assert not d.allowed and r is None and d.which == "model:chat rpm"
    d, r = await lim.acquire([key, dep], 4900)  # refused by the deployment's tpm
    assert not d.allowed and d.which == "deployment:chat/0 tpm"
    # the key was charged only by the two admitted requests: 2 requests, 200 tokens
    d, _ = await lim.acquire([key], 0)
    assert d.allowed
    assert d.headers["x-ratelimit-remaining-requests"] == str(10 - 3)
    assert d.headers["x-ratelimit-remaining-tokens"] == str(10_000 - 200)
    d, _ = await lim.acquire([dep], 4800)  # and the deployment 200 tokens
    assert d.allowed and d.headers["x-ratelimit-remaining-tokens"] == "0"


async def test_which_names_the_limit_that_waits_longest() -> None:
    lim, clock = make(1000.0)
    a = ("key:a", Limit(rpm=1))
    b = ("model:m", Limit(rpm=2))
    assert (await lim.acquire([b], 0))[0].allowed  # model: 1 at bucket 1000
    clock.t = 1010.0
    assert (await lim.acquire([a, b], 0))[0].allowed  # key: 1 at 1010, model: 2
    d, _ = await lim.acquire([a, b], 0)
    assert not d.allowed and d.which == "key:a rpm" and d.retry_after_s == pytest.approx(1071 - 1010)


# --- headers ------------------------------------------------------------------------------------


async def test_headers_report_the_tightest_scope() -> None:
    lim, clock = make(1000.25)
    key = ("key:a", Limit(rpm=100, tpm=1000))
    model = ("model:chat", Limit(rpm=5, tpm=50_000))
    d, _ = await lim.acquire([key, model], 400)
    assert d.headers == {
        "x-ratelimit-limit-requests": "5",
        "x-ratelimit-remaining-requests": "4",
        "x-ratelimit-reset-requests": "1m0.75s",  # bucket 1000 leaves at 1061
        "x-ratelimit-limit-tokens": "1000",
        "x-ratelimit-remaining-tokens": "600",
        "x-ratelimit-reset-tokens": "1m0.75s",
    }
    clock.t = 1055.0
    d, _ = await lim.acquire([key, model], 0)
    assert d.headers["x-ratelimit-remaining-requests"] == "3"
    assert d.headers["x-ratelimit-reset-requests"] == "1m1s"  # charged now, bucket 1055 leaves at 1116
    assert d.headers["x-ratelimit-reset-tokens"] == "6s"  # no tokens now: the 400 leave at 1061


async def test_unlimited_scopes_send_no_headers() -> None:
    lim, _ = make()
    d, r = await lim.acquire([("key:a", Limit()), ("model:m", Limit(rpm=None, tpm=None))], 10**9)
    assert d.allowed and r is not None and d.headers == {}
    d, _ = await lim.acquire([("key:a", Limit(rpm=7))], 1)
    assert set(d.headers) == {"x-ratelimit-limit-requests", "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests"}


def test_format_duration_like_openai() -> None:
    assert format_duration(0) == "0s"
    assert format_duration(-1) == "0s"
    assert format_duration(0.12) == "120ms"
    assert format_duration(6) == "6s"
    assert format_duration(6.5) == "6.5s"
    assert format_duration(17.281) == "17.281s"
    assert format_duration(60) == "1m0s"
    assert format_duration(61.5) == "1m1.5s"
    assert format_duration(3600) == "1h0m0s"


# --- arguments, errors, housekeeping ----------------------------------------------------------


async def test_bad_arguments() -> None:
    lim, _ = make()
    with pytest.raises(ValueError):
        Limit(rpm=-1)
    with pytest.raises(ValueError):
        await lim.acquire([("a", Limit(rpm=1))], -5)
    with pytest.raises(ValueError):
        await lim.acquire([("a", Limit(rpm=1)), ("a", Limit(rpm=2))], 1)
    _, r = await lim.acquire([("a", Limit(rpm=1))], 1)
    assert r is not None
    with pytest.raises(ValueError):
        await lim.settle(r, -1)


def test_unavailable_error_is_a_503_modelyard_error() -> None:
    err = LimiterUnavailableError("redis down")
    assert isinstance(err, ModelyardError)
    assert err.status == 503 and err.body()["error"]["code"] == "rate_limiter_unavailable"


async def test_idle_scopes_are_forgotten() -> None:
    lim, clock = make()
    for i in range(50):
        await lim.acquire([(f"key:{i}", Limit(rpm=1))], 0)
    assert len(lim._scopes) == 50
    clock.advance(200)
    await lim.acquire([("key:new", Limit(rpm=1))], 0)
    assert list(lim._scopes) == ["key:new"]
    await lim.aclose()


# --- the bound, for random traffic --------------------------------------------------------------

SCOPES = {"a": [("key:a", Limit(rpm=4)), ("model:m", Limit(rpm=6))], "b": [("key:b", Limit(rpm=3)), ("model:m", Limit(rpm=6))]}

EDGES = [1, 250, 500, 999, 1000, 30_000, 59_000, 59_500, 59_999, 60_000, 60_500, 61_000]
ops = st.lists(
    st.one_of(
        st.tuples(st.just("acquire"), st.sampled_from(["a", "b"]), st.integers(1, 5)),  # a burst
        st.tuples(st.just("settle"), st.integers(0, 500), st.just(1)),
        # milliseconds: anything, and the steps that straddle bucket and window edges
        st.tuples(st.just("advance"), st.sampled_from(EDGES) | st.integers(0, 30_000), st.just(1)),
    ),
    max_size=40,
)


@settings(max_examples=500, deadline=None)
@given(ops)
@example([("advance", 500, 1), ("acquire", "b", 3), ("advance", 59_999, 1), ("acquire", "b", 1)])  # 59.999 s: still counted
@example([("acquire", "b", 3), ("advance", 61_000, 1), ("acquire", "b", 1)])  # 61 s: must be forgotten
def test_admitted_requests_in_any_60s_never_exceed_rpm(steps: list[tuple[str, int | str, int]]) -> None:
    """Exact upper bound (no overshoot) and the one-bucket lower bound, per scope, with random
    settles in between (which must not touch request counts). Times are whole milliseconds."""
    ms = 0
    clock = ManualClock(1000.0)
    lim = MemoryLimiter(clock)
    admitted: dict[str, list[int]] = {}
    reservations = []
    for op, arg, times in steps:
        if op == "advance":
            ms += int(arg)
            clock.t = (1_000_000 + ms) / 1000
        elif op == "settle":
            if reservations:
                lim.settle_now(reservations[int(arg) % len(reservations)], int(arg))
        else:
            for _ in range(times):
                scopes = SCOPES[str(arg)]
                d, r = lim.acquire_now(scopes, 7)
                recent = {name: [s for s in admitted.get(name, []) if ms - s < 60_000] for name, _ in scopes}
                recent61 = {name: [s for s in admitted.get(name, []) if ms - s < 61_000] for name, _ in scopes}
                if d.allowed:
                    assert r is not None
                    reservations.append(r)
                    for name, limit in scopes:
                        admitted.setdefault(name, []).append(ms)
                        assert len(recent[name]) + 1 <= limit.rpm  # type: ignore[operator]
                else:
                    assert r is None and d.retry_after_s > 0
                    full = [name for name, limit in scopes if len(recent61[name]) >= limit.rpm]  # type: ignore[operator]
                    assert full, "refused although no scope had rpm requests in the last 61 s"
                    assert d.which is not None and d.which.removesuffix(" rpm") in full


# --- the fast path's headers equal the general ones ------------------------------------------------

_caps = st.one_of(st.none(), st.integers(min_value=0, max_value=50))


@settings(max_examples=300, deadline=None)
@given(
    limits=st.lists(st.tuples(_caps, _caps), min_size=1, max_size=3),
    raw=st.lists(st.lists(st.tuples(st.integers(0, 61), st.integers(0, 5), st.integers(0, 20)), max_size=6), min_size=3, max_size=3),
    tokens=st.integers(min_value=1, max_value=30),
    frac=st.floats(min_value=0, max_value=0.999),
)
def test_allowed_headers_match_the_general_computation(limits, raw, tokens, frac) -> None:  # noqa: ANN001
    from modelyard.limits.base import Window, _headers, allowed_headers

    window = Window()
    now = 1000 + 61 + frac
    cur = window.bucket(now)
    scopes = [(f"s{i}", Limit(r, t)) for i, (r, t) in enumerate(limits)]
    usage = []
    for buckets in raw[: len(scopes)]:
        merged: dict[int, list[int]] = {}
        for back, r, t in buckets:
            slot = merged.setdefault(cur - min(back, window.n), [0, 0])
            slot[0] += r
            slot[1] += t
        usage.append([(i, r, t) for i, (r, t) in sorted(merged.items())])
    totals = [(sum(b[1] for b in u), sum(b[2] for b in u)) for u in usage]
    assert allowed_headers(scopes, totals, tokens, now, window) == _headers(scopes, usage, totals, tokens, True, now, window)
