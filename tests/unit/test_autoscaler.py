"""The one-machine autoscaler's inputs and loop: the hour-of-week forecast from spend rows (analyze's own fold),
the forecast driving a real decision, bounded metric causes, and load failures backed off."""

from __future__ import annotations

import datetime as dt

from modelyard.config.scaling import AutoscaleConfig
from modelyard.epoch import to_us
from modelyard.planning.analyze import Fold
from modelyard.scaling.forecast import HourOfWeekForecast, hour_of_week
from modelyard.scaling.local import cause_of
from modelyard.scaling.policy import Observation, ScaleState, decide

UTC = dt.timezone.utc
START = dt.datetime(2026, 11, 16, tzinfo=UTC)  # a Monday, two weeks of history


def test_forecast_is_mean_ongoing_per_hour_of_week_and_looks_an_hour_ahead():
    fold = Fold(START, START + dt.timedelta(days=14))
    for week in range(2):  # Mondays 09:00-10:00: 3,600 requests of 2 s each → 2 requests ongoing on average
        t0 = START + dt.timedelta(days=7 * week, hours=9)
        for i in range(3600):
            fold.add("coder", to_us(t0 + dt.timedelta(seconds=i)), 2000.0, 100)
    f = HourOfWeekForecast.from_fold(fold)
    monday_9 = START.replace(hour=9)
    assert abs(f("coder", monday_9) - 2.0) < 1e-9
    assert abs(f("coder", START.replace(hour=8, minute=10)) - 2.0) < 1e-9  # the hour before: warm ahead of it
    assert f("coder", START.replace(hour=11)) == 0.0
    assert f("chat", monday_9) is None
    assert hour_of_week(monday_9) == 9 and hour_of_week(START + dt.timedelta(days=6, hours=23)) == 167
    p = AutoscaleConfig(min_replicas=0, max_replicas=4, target_ongoing_requests=1, predictive=True)
    d = decide(p, ScaleState(0), Observation(0, 10**6, f("coder", START.replace(hour=8, minute=30))), now=0,
               wall=START.replace(hour=8, minute=30))
    assert d.desired == 2 and cause_of(d.reason) == "predictive"


def test_cause_labels_are_bounded():
    assert cause_of("prewarm '* * * * *' since 08:00 UTC → 2") == "prewarm"
    assert cause_of("idle 900 s ≥ scale_to_zero_after_s 600 → 0") == "idle"
    assert cause_of("load 3 ongoing / target 2 → 2; from zero with requests waiting: at once") == "load"
    assert cause_of("no load → min_replicas") == "load"


async def test_a_failing_load_backs_off_instead_of_retrying_every_tick():
    """A replica whose load fails (no room, a broken artifact) is retried after 5 s, then 10 s, ...
    not on every tick (the loop used to log the same failure every second)."""
    from modelyard.errors import InsufficientMemoryError
    from modelyard.scaling.local import LocalAutoscaler, Scaled
    from modelyard.testing.clock import ManualClock

    class Manager:
        def __init__(self) -> None:
            self.loads = 0

        def snapshot(self):
            return [{"name": "m", "tier": "disk", "in_flight": 0, "last_used": None}]

        async def load(self, name):
            self.loads += 1
            raise InsufficientMemoryError("no room")

    clock, mm = ManualClock(), Manager()
    p = AutoscaleConfig(min_replicas=1, max_replicas=1)
    a = LocalAutoscaler([Scaled("m", p, ("m",))], mm, clock=clock,
                        wall_clock=lambda: START)
    for _ in range(4):  # four ticks within a second: one attempt
        await a.tick()
        clock.advance(0.25)
    assert mm.loads == 1
    clock.advance(5)
    await a.tick()
    assert mm.loads == 2  # after the first backoff
    clock.advance(5)
    await a.tick()
    assert mm.loads == 2  # the second backoff is 10 s
    clock.advance(6)
    await a.tick()
    assert mm.loads == 3
