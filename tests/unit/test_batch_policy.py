"""batch/policy.py: when batch items may start, with a manual clock (no sleeping, no timing asserts)."""

from __future__ import annotations

from modelyard.batch.policy import Counters, Knobs, Load, Residency, decide, interactive

K = Knobs(concurrency=4, pause_at_in_flight=1, resume_after_s=2.0, ramp_s=0)  # the ramp: its own test


def load(waiting: int = 0, in_flight: int = 0, running: int = 0, res: Residency = Residency.active) -> Load:
    return Load(waiting, in_flight, running, res)


def test_an_idle_model_gets_its_concurrency_less_what_runs() -> None:
    assert decide(load(), K, now=100.0, last_busy=None).slots == 4
    assert decide(load(running=3), K, now=100.0, last_busy=None).slots == 1
    d = decide(load(running=4), K, now=100.0, last_busy=None)
    assert d.slots == 0 and d.reason == "full"


def test_interactive_waiters_or_in_flight_work_pause_the_batch() -> None:
    for ld in (load(waiting=1), load(in_flight=1), load(waiting=3, in_flight=5, running=1)):
        d = decide(ld, K, now=100.0, last_busy=None)
        assert d.slots == 0 and d.busy and d.reason == "interactive"
    # a higher threshold lets the batch share the model with light interactive load
    k = Knobs(concurrency=4, pause_at_in_flight=3, resume_after_s=0.0)
    assert decide(load(in_flight=2), k, now=100.0, last_busy=None).slots == 4
    assert decide(load(in_flight=3), k, now=100.0, last_busy=None).slots == 0


def test_the_batch_resumes_only_after_the_quiet_period() -> None:
    clock = 50.0
    last_busy = None
    d = decide(load(in_flight=1), K, now=clock, last_busy=last_busy)
    assert d.busy
    last_busy = clock
    for t, slots, reason in ((50.5, 0, "settling"), (51.99, 0, "settling"), (52.0, 4, "idle"), (60.0, 4, "idle")):
        d = decide(load(), K, now=t, last_busy=last_busy)
        assert (d.slots, d.reason, d.busy) == (slots, reason, False), t
    # load returns during the quiet period: paused again, and the quiet period starts over
    assert decide(load(waiting=1), K, now=51.0, last_busy=last_busy).busy


def test_a_cold_model_loads_only_without_eviction_and_one_item_at_a_time() -> None:
    d = decide(load(res=Residency.cold_evicts), K, now=1.0, last_busy=None)
    assert (d.slots, d.reason) == (0, "cold")
    assert decide(load(res=Residency.cold_fits), K, now=1.0, last_busy=None).slots == 1
    assert decide(load(running=1, res=Residency.cold_fits), K, now=1.0, last_busy=None).slots == 0
    assert decide(load(res=Residency.remote), K, now=1.0, last_busy=None).slots == 4


def test_a_hold_after_a_refusal_is_waited_out() -> None:
    assert decide(load(), K, now=10.0, last_busy=None, hold_until=12.0).reason == "backoff"
    assert decide(load(), K, now=12.0, last_busy=None, hold_until=12.0).slots == 4
    # interactive load is still seen (and remembered) during a hold
    assert decide(load(in_flight=2), K, now=10.0, last_busy=None, hold_until=12.0).busy


def test_interactive_load_is_the_counters_less_the_batchs_own_items() -> None:
    # 5 in flight of which 3 are batch items; 2 waiting at low of which at most 3 could be ours
    assert interactive([Counters(in_flight=5, queued=2, low_queued=2, ours_in_flight=3)]) == (0, 2)
    # waiters at other levels are interactive whatever the batch runs
    assert interactive([Counters(in_flight=4, queued=3, low_queued=1, ours_in_flight=4)]) == (2, 0)
    # several groups (local models sharing a machine) add up
    assert interactive([Counters(1, 0, 0, 0), Counters(2, 1, 0, 2)]) == (1, 1)
    assert interactive([]) == (0, 0)


def test_after_a_pause_the_batch_ramps_up_one_item_doubling_every_ramp_s() -> None:
    k = Knobs(concurrency=8, pause_at_in_flight=1, resume_after_s=1.0, ramp_s=0.5)
    load = Load(0, 0, 0, Residency.active)
    slots = [decide(load, k, now=t, last_busy=10.0).slots for t in (10.5, 11.0, 11.4, 11.5, 12.0, 12.5, 20.0)]
    assert slots == [0, 1, 1, 2, 4, 8, 8]
    assert decide(load, k, now=11.0, last_busy=None).slots == 8  # never busy: full concurrency at once
    assert decide(load, Knobs(8, 1, 1.0, ramp_s=0), now=11.0, last_busy=10.0).slots == 8
