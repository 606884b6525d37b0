"""The autoscaling decision core, its config and cron, with an injected clock (no sleeps)."""

from __future__ import annotations

import datetime as dt

import pytest

from modelyard.config.cron import Cron, CronError
from modelyard.config.loader import settings_from_dict
from modelyard.config.scaling import AutoscaleConfig
from modelyard.errors import ConfigError
from modelyard.scaling.policy import Observation, ScaleState, decide, prewarm_floor, target_replicas

UTC = dt.timezone.utc
MON_0840 = dt.datetime(2026, 12, 7, 8, 40, tzinfo=UTC)  # a Monday
SAT_0840 = dt.datetime(2026, 12, 5, 8, 40, tzinfo=UTC)


def policy(**kw) -> AutoscaleConfig:
    base = {"min_replicas": 0, "max_replicas": 4, "target_ongoing_requests": 2, "upscale_delay_s": 10,
            "downscale_delay_s": 60, "scale_to_zero_after_s": 300}
    return AutoscaleConfig(**{**base, **kw})


# --- cron ---------------------------------------------------------------------------------------

def test_cron_matches_and_fires():
    c = Cron.parse("30 8 * * 1-5")
    assert c.matches(MON_0840.replace(minute=30)) and not c.matches(SAT_0840.replace(minute=30))
    assert c.last_fire(MON_0840, 3600) == MON_0840.replace(minute=30)
    assert c.last_fire(MON_0840, 300) is None  # fired 10 minutes ago: outside a 5-minute look-back
    assert c.next_fire(SAT_0840) == dt.datetime(2026, 12, 7, 8, 30, tzinfo=UTC)
    assert Cron.parse("*/15 9-17 * * mon,fri").matches(dt.datetime(2026, 12, 11, 9, 45, tzinfo=UTC))
    assert Cron.parse("0 0 1 * 0").matches(dt.datetime(2026, 12, 6, 0, 0, tzinfo=UTC))  # a Sunday: dom OR dow


@pytest.mark.parametrize("text, needle", [("30 8 * *", "five fields"), ("61 8 * * *", "minute"),
                                          ("30 8 * * 1-9", "day of week"), ("x 8 * * *", "not a number"),
                                          ("*/0 8 * * *", "step")])
def test_bad_crons(text, needle):
    with pytest.raises(CronError) as e:
        Cron.parse(text)
    assert needle in e.value.message


# --- config -------------------------------------------------------------------------------------

def _model(auto: dict) -> dict:
    return {"models": [{"name": "m", "deployments": [{"kind": "openai", "api_base": "http://127.0.0.1:9/v1", "model": "x"}],
                        "autoscale": auto}]}


def test_ray_alias_accepted_with_a_warning():
    r = settings_from_dict(_model({"max_replicas": 3, "target_num_ongoing_requests_per_replica": 5}))
    assert r.settings.models[0].autoscale.target_ongoing_requests == 5
    assert r.warnings and "target_num_ongoing_requests_per_replica" in r.warnings[0] and "target_ongoing_requests" in r.warnings[0]
    assert settings_from_dict(_model({"max_replicas": 3, "target_ongoing_requests": 5})).warnings == []


@pytest.mark.parametrize("auto, needle", [
    ({"min_replicas": 3, "max_replicas": 2}, "max_replicas (2) is below min_replicas (3)"),
    ({"max_replicas": 2, "prewarm": ["99 8 * * *"]}, "models[0].autoscale.prewarm[0].cron"),
    ({"max_replicas": 2, "timezone": "Mars/Olympus"}, "unknown time zone"),
    ({"max_replicas": 2, "target_ongoing_requests": 0}, "models[0].autoscale.target_ongoing_requests"),
    ({"max_replicas": 2, "prewarm": [{"cron": "0 8 * * *", "replicas": 3}]}, "above max_replicas"),
    ({"max_replicas": 2, "speed": "fast"}, "models[0].autoscale.speed: unknown field"),
])
def test_bad_autoscale_config_names_the_field(auto, needle):
    with pytest.raises(ConfigError) as e:
        settings_from_dict(_model(auto))
    assert needle in e.value.message, e.value.message


def test_min_zero_defaults_scale_to_zero_after():
    assert AutoscaleConfig(min_replicas=0, max_replicas=1).scale_to_zero_after_s == 900
    assert AutoscaleConfig(min_replicas=1, max_replicas=1).scale_to_zero_after_s is None


# --- the decision -------------------------------------------------------------------------------

def test_load_sets_the_target_and_max_clamps():
    p = policy()
    assert target_replicas(p, 1, Observation(5, 0), SAT_0840)[0] == 3  # ceil(5 / 2)
    n, why = target_replicas(p, 1, Observation(50, 0), SAT_0840)
    assert n == 4 and "clamped" in why


def test_upscale_waits_its_delay_then_applies():
    p = policy()
    s = ScaleState(1)
    d = decide(p, s, Observation(6, 0), now=100, wall=SAT_0840)
    assert d.desired == 1 and d.target == 3 and "waiting upscale_delay_s" in d.reason
    d = decide(p, d.state, Observation(6, 0), now=105, wall=SAT_0840)
    assert d.desired == 1
    d = decide(p, d.state, Observation(6, 0), now=110, wall=SAT_0840)
    assert d.desired == 3 and d.state.replicas == 3


def test_a_dip_resets_the_downscale_delay():
    p = policy()
    s = ScaleState(3)
    d = decide(p, s, Observation(1, 0), now=0, wall=SAT_0840)  # wants 1
    assert d.desired == 3
    d = decide(p, d.state, Observation(6, 0), now=30, wall=SAT_0840)  # back to 3: steady, pending cleared
    assert d.desired == 3 and d.state.pending is None
    d = decide(p, d.state, Observation(1, 0), now=40, wall=SAT_0840)
    d = decide(p, d.state, Observation(1, 0), now=99, wall=SAT_0840)
    assert d.desired == 3  # 59 s of the 60
    d = decide(p, d.state, Observation(1, 0), now=100, wall=SAT_0840)
    assert d.desired == 1


def test_scale_from_zero_with_waiting_requests_is_immediate():
    d = decide(policy(upscale_delay_s=600), ScaleState(0), Observation(1, 0), now=0, wall=SAT_0840)
    assert d.desired == 1 and "at once" in d.reason


def test_idle_goes_to_zero_only_after_scale_to_zero_after_s():
    p = policy(downscale_delay_s=0)
    d = decide(p, ScaleState(1), Observation(0, 299), now=0, wall=SAT_0840)
    assert d.desired == 1 and "keep 1" in d.reason
    d = decide(p, ScaleState(1), Observation(0, 300), now=0, wall=SAT_0840)
    assert d.desired == 0 and "idle" in d.reason
    # min_replicas 1: never zero
    d = decide(policy(min_replicas=1, downscale_delay_s=0), ScaleState(1), Observation(0, 10**6), now=0, wall=SAT_0840)
    assert d.desired == 1


def test_prewarm_window_in_its_time_zone():
    p = policy(prewarm=[{"cron": "30 8 * * 1-5", "duration_s": 3600, "replicas": 2}], upscale_delay_s=0)
    assert prewarm_floor(p, MON_0840)[0] == 2
    assert prewarm_floor(p, SAT_0840)[0] == 0
    assert prewarm_floor(p, MON_0840.replace(hour=9, minute=31))[0] == 0  # the window has ended
    d = decide(p, ScaleState(0), Observation(0, 10**6), now=0, wall=MON_0840)
    assert d.desired == 2 and "prewarm" in d.reason
    berlin = policy(prewarm=["30 8 * * 1-5"], timezone="Europe/Berlin")
    assert prewarm_floor(berlin, dt.datetime(2026, 12, 7, 7, 40, tzinfo=UTC))[0] == 1  # 08:40 in Berlin
    assert prewarm_floor(berlin, MON_0840)[0] == 0  # 09:40 in Berlin: one hour later, window over


def test_predictive_floor():
    p = policy(predictive=True, upscale_delay_s=0)
    d = decide(p, ScaleState(0), Observation(0, 10**6, predicted_ongoing=3.5), now=0, wall=SAT_0840)
    assert d.desired == 2 and "predicted" in d.reason
    p2 = policy(predictive=False, upscale_delay_s=0, downscale_delay_s=0)
    assert decide(p2, ScaleState(0), Observation(0, 10**6, predicted_ongoing=3.5), now=0, wall=SAT_0840).desired == 0
