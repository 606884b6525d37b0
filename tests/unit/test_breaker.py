"""Unit tests of the per-deployment circuit breaker (modelyard.routing.breaker).

Time is driven by hand through an injected clock; nothing here sleeps. Every admission hands out a
ticket that comes back with the outcome; only the half-open probe's ticket decides anything once the
breaker has left the closed state.
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from modelyard.config.schema import BreakerConfig
from modelyard.routing.breaker import CLOSED_TICKET, BreakerState, CircuitBreaker
from modelyard.testing.clock import ManualClock as FakeClock


CFG = BreakerConfig(allowed_fails=3, window_s=60.0, cooldown_s=30.0)


def make(cfg: BreakerConfig = CFG) -> tuple[CircuitBreaker, FakeClock, list[BreakerState]]:
    clock = FakeClock()
    changes: list[BreakerState] = []
    return CircuitBreaker(cfg, clock, on_change=changes.append), clock, changes


def trip(b: CircuitBreaker, n: int = 3) -> None:
    for _ in range(n):
        t = b.try_acquire()
        assert t is not None
        b.record_failure(t)


# --- closed → open ----------------------------------------------------------------------------


def test_starts_closed_and_admits() -> None:
    b, _, changes = make()
    assert b.state is BreakerState.closed
    assert b.available()
    assert all(b.try_acquire() is CLOSED_TICKET for _ in range(10))  # closed: no limit on admissions
    assert b.retry_after_s() == 0.0
    assert changes == []


def test_opens_after_allowed_fails_inside_window() -> None:
    b, clock, changes = make()
    b.record_failure(CLOSED_TICKET)
    clock.advance(10)
    b.record_failure(CLOSED_TICKET)
    assert b.state is BreakerState.closed  # two of three
    clock.advance(10)
    b.record_failure(CLOSED_TICKET)
    assert b.state is BreakerState.open
    assert changes == [BreakerState.open]
    assert not b.available()
    assert not b.try_acquire()


def test_allowed_fails_one_opens_on_first_failure() -> None:
    b, _, _ = make(BreakerConfig(allowed_fails=1, window_s=5, cooldown_s=5))
    b.record_failure(CLOSED_TICKET)
    assert b.state is BreakerState.open


def test_failures_spread_wider_than_window_do_not_open() -> None:
    b, clock, changes = make()
    for _ in range(10):
        b.record_failure(CLOSED_TICKET)
        clock.advance(31)  # at most two failures inside any 60 s window
    assert b.state is BreakerState.closed
    assert changes == []
    # ... but three close together still do
    b.record_failure(CLOSED_TICKET)
    b.record_failure(CLOSED_TICKET)
    b.record_failure(CLOSED_TICKET)
    assert b.state is BreakerState.open


def test_old_failures_leave_the_window() -> None:
    b, clock, _ = make()
    b.record_failure(CLOSED_TICKET)
    b.record_failure(CLOSED_TICKET)
    clock.advance(61)  # both expire
    b.record_failure(CLOSED_TICKET)
    b.record_failure(CLOSED_TICKET)
    assert b.state is BreakerState.closed
    b.record_failure(CLOSED_TICKET)
    assert b.state is BreakerState.open


# --- open, cooldown, half-open ----------------------------------------------------------------


def test_open_admits_nothing_until_cooldown() -> None:
    b, clock, _ = make()
    trip(b)
    for _ in range(29):
        clock.advance(1)
        assert not b.available()
        assert not b.try_acquire()
        assert b.state is BreakerState.open
    assert 0 < b.retry_after_s() <= 1.0
    clock.advance(1)  # exactly the cooldown
    assert b.retry_after_s() == 0.0
    assert b.available()


def test_retry_after_counts_down() -> None:
    b, clock, _ = make()
    trip(b)
    assert b.retry_after_s() == 30.0
    clock.advance(12.5)
    assert b.retry_after_s() == 17.5
    clock.advance(100)
    assert b.retry_after_s() == 0.0


def test_after_cooldown_exactly_one_probe() -> None:
    b, clock, changes = make()
    trip(b)
    clock.advance(30)
    probe = b.try_acquire()
    assert probe is not None and probe.probe
    assert b.state is BreakerState.half_open
    assert not b.available()
    assert b.try_acquire() is None
    assert b.try_acquire() is None
    assert changes == [BreakerState.open, BreakerState.half_open]


def test_available_has_no_side_effect() -> None:
    b, clock, changes = make()
    trip(b)
    clock.advance(31)
    for _ in range(3):
        assert b.available()
    assert b.state is BreakerState.open
    assert changes == [BreakerState.open]


def test_probe_success_closes() -> None:
    b, clock, changes = make()
    trip(b)
    clock.advance(30)
    probe = b.try_acquire()
    assert probe is not None
    b.record_success(probe)
    assert b.state is BreakerState.closed
    assert b.available()
    assert all(b.try_acquire() for _ in range(5))
    assert changes == [BreakerState.open, BreakerState.half_open, BreakerState.closed]
    # the failure window was reset: it takes allowed_fails fresh failures to open again
    b.record_failure(CLOSED_TICKET)
    b.record_failure(CLOSED_TICKET)
    assert b.state is BreakerState.closed
    b.record_failure(CLOSED_TICKET)
    assert b.state is BreakerState.open


def test_probe_failure_reopens_for_a_new_cooldown() -> None:
    b, clock, changes = make()
    trip(b)
    clock.advance(30)
    probe = b.try_acquire()
    assert probe is not None
    clock.advance(5)
    b.record_failure(probe)
    assert b.state is BreakerState.open
    assert b.retry_after_s() == 30.0  # counted from the probe's failure, not the first opening
    clock.advance(29)
    assert not b.available()
    assert not b.try_acquire()
    clock.advance(1)
    assert b.try_acquire()
    assert b.state is BreakerState.half_open
    assert changes == [
        BreakerState.open, BreakerState.half_open, BreakerState.open, BreakerState.half_open,
    ]


def test_abandoned_probe_frees_the_slot() -> None:
    b, clock, changes = make()
    trip(b)
    clock.advance(30)
    probe = b.try_acquire()
    assert probe is not None
    assert not b.try_acquire()
    b.record_abandoned(probe)
    assert b.state is BreakerState.half_open  # no verdict: still half-open
    assert b.available()
    assert b.try_acquire()
    assert not b.try_acquire()
    assert changes == [BreakerState.open, BreakerState.half_open]


def test_abandoned_when_closed_or_open_changes_nothing() -> None:
    b, clock, changes = make()
    b.record_abandoned(CLOSED_TICKET)
    assert b.state is BreakerState.closed
    trip(b)
    b.record_abandoned(CLOSED_TICKET)
    assert b.state is BreakerState.open
    assert not b.available()
    assert changes == [BreakerState.open]


def test_on_change_reports_each_transition_once() -> None:
    b, clock, changes = make(BreakerConfig(allowed_fails=2, window_s=10, cooldown_s=5))
    b.record_failure(CLOSED_TICKET)
    b.record_failure(CLOSED_TICKET)
    b.record_failure(CLOSED_TICKET)  # already open: no second report
    clock.advance(5)
    probe = b.try_acquire()
    assert probe is not None
    assert b.try_acquire() is None
    b.record_failure(probe)
    clock.advance(5)
    probe = b.try_acquire()
    assert probe is not None
    b.record_success(probe)
    b.record_success(probe)  # already closed: no report
    assert changes == [
        BreakerState.open, BreakerState.half_open, BreakerState.open, BreakerState.half_open, BreakerState.closed,
    ]


def test_stale_request_abandoned_does_not_free_the_probe() -> None:
    """A request admitted while the breaker was still closed (a long stream) is cancelled by its
    client while another request is the half-open probe: the probe is still out, so the breaker
    must not admit a second probe."""
    b, clock, _ = make()
    stale = b.try_acquire()  # the long request, admitted while closed
    assert stale is not None
    trip(b)  # three other requests fail: open
    clock.advance(30)
    assert b.try_acquire()  # the probe
    b.record_abandoned(stale)  # the *long* request's client goes away (router: finish(ok=None))
    assert not b.try_acquire(), "a second concurrent probe was admitted while the first is still out"


def test_stale_outcomes_do_not_decide_an_open_or_half_open_breaker() -> None:
    """Requests admitted before the trip end later: neither their success nor their failure
    closes, re-opens or frees the breaker; only the probe's verdict does."""
    b, clock, changes = make()
    stale = [b.try_acquire() for _ in range(2)]
    trip(b)
    b.record_success(stale[0])  # a success from before the trip does not skip the cooldown
    assert b.state is BreakerState.open
    clock.advance(30)
    probe = b.try_acquire()
    assert probe is not None
    b.record_failure(stale[1])  # nor does a stale failure re-open a half-open breaker
    assert b.state is BreakerState.half_open
    b.record_success(probe)
    assert b.state is BreakerState.closed
    assert changes == [BreakerState.open, BreakerState.half_open, BreakerState.closed]


# --- property: any sequence of events --------------------------------------------------------


class BreakerMachine(RuleBasedStateMachine):
    """Models the router's use of a breaker: every admission (try_acquire → True) is one request,
    and each request ends exactly once with success, failure or abandonment."""

    def __init__(self) -> None:
        super().__init__()
        self.cfg = BreakerConfig(allowed_fails=2, window_s=10.0, cooldown_s=5.0)
        self.clock = FakeClock(0.0)
        self.opened_at: float | None = None
        self.breaker = CircuitBreaker(self.cfg, self.clock, on_change=self._changed)
        self.outstanding: list[int] = []  # request ids in flight
        self.tickets: dict[int, object] = {}
        self.probes: set[int] = set()  # requests admitted during the current half-open period
        self.next_id = 0

    def _changed(self, state: BreakerState) -> None:
        if state is BreakerState.open:
            self.opened_at = self.clock()
        self.probes = set()  # a new period begins

    @rule(dt=st.sampled_from([0.0, 1.0, 4.999, 5.0, 6.0]) | st.floats(min_value=0.0, max_value=12.0))
    def advance(self, dt: float) -> None:
        self.clock.advance(dt)

    @rule(n=st.integers(min_value=1, max_value=3))
    def acquire(self, n: int) -> None:
        for _ in range(n):
            before = self.breaker.state
            avail = self.breaker.available()
            ticket = self.breaker.try_acquire()
            ok = ticket is not None
            assert ok == avail, "available() disagrees with try_acquire()"
            if before is BreakerState.open and self.opened_at is not None:
                if self.clock() - self.opened_at < self.cfg.cooldown_s:
                    assert not ok, "admitted while open before the cooldown"
            if ok:
                rid = self.next_id
                self.next_id += 1
                self.outstanding.append(rid)
                self.tickets[rid] = ticket
                if self.breaker.state is BreakerState.half_open:
                    self.probes.add(rid)

    def _pick(self, idx: int) -> int | None:
        return self.outstanding[idx % len(self.outstanding)] if self.outstanding else None

    def _end(self, rid: int, verdict: str) -> None:
        self.outstanding.remove(rid)
        was_probe = rid in self.probes
        self.probes.discard(rid)
        ticket = self.tickets.pop(rid)
        before = self.breaker.state
        if verdict == "success":
            self.breaker.record_success(ticket)  # type: ignore[arg-type]
            if was_probe:
                assert self.breaker.state is BreakerState.closed
            elif before is not BreakerState.half_open:
                assert self.breaker.state is before, "a stale success changed the breaker"
        elif verdict == "failure":
            self.breaker.record_failure(ticket)  # type: ignore[arg-type]
        else:
            self.breaker.record_abandoned(ticket)  # type: ignore[arg-type]

    @rule(idx=st.integers(min_value=0, max_value=50),
          verdict=st.sampled_from(["success", "failure", "failure", "abandoned", "abandoned"]))
    def finish(self, idx: int, verdict: str) -> None:
        rid = self._pick(idx)
        if rid is not None:
            self._end(rid, verdict)

    @invariant()
    def at_most_one_probe(self) -> None:
        if self.breaker.state is BreakerState.half_open:
            assert len(self.probes) <= 1, f"{len(self.probes)} concurrent probes in half-open"

    @invariant()
    def not_available_while_cooling_down(self) -> None:
        if self.breaker.state is BreakerState.open:
            assert self.opened_at is not None
            cooling = self.clock() - self.opened_at < self.cfg.cooldown_s
            assert self.breaker.available() == (not cooling)
            assert not cooling or not self.breaker.try_acquire()
            assert self.breaker.retry_after_s() == max(0.0, self.opened_at + self.cfg.cooldown_s - self.clock())


_MACHINE_SETTINGS = settings(
    max_examples=400, stateful_step_count=50, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
BreakerMachine.TestCase.settings = _MACHINE_SETTINGS
TestBreakerMachine = BreakerMachine.TestCase


class ProbeOnlyMachine(BreakerMachine):
    """The same, except that in half-open only the probe itself may be abandoned (no request
    admitted in an earlier period is cancelled meanwhile): the breaker's core contract, which
    holds even where the stale-request case above does not."""

    def _end(self, rid: int, verdict: str) -> None:
        if verdict == "abandoned" and self.breaker.state is BreakerState.half_open and rid not in self.probes:
            return  # a stale request: leave it out
        super()._end(rid, verdict)


ProbeOnlyMachine.TestCase.settings = _MACHINE_SETTINGS
TestProbeOnlyMachine = ProbeOnlyMachine.TestCase
