"""The analyzer's pure parts (modelyard.planning.analyze): hour buckets, busy fraction, idle windows,
recommendations, pre-warm cron windows, the consolidation's spec rewrite and dedicated count, and
the messages for an empty or too-short history."""

from __future__ import annotations

import datetime as dt

import pytest

from modelyard.epoch import to_us
from modelyard.planning.analyze import (
    HistoryError,
    Fold,
    analyze,
    busy_fraction,
    check_history,
    dedicated,
    hour_stats,
    idle_windows,
    keep_alive,
    observed_spec,
    pct,
    prewarm_windows,
    recommend,
    summarize,
)
from modelyard.planning.analyze_cli import parse_since
from modelyard.planning.scenario import planner_spec
from modelyard.planning.spec import parse_spec, to_problem

UTC = dt.timezone.utc
MON = dt.datetime(2026, 11, 16, tzinfo=UTC)  # a Monday


def us(t: dt.datetime) -> int:
    return to_us(t)


def test_hour_buckets_tokens_percentiles_and_busy_fraction():
    f = Fold(MON, MON + dt.timedelta(hours=2))
    lat = [10.0 * (i + 1) for i in range(20)]  # 10..200 ms
    for i, latency in enumerate(lat):
        f.add("m", us(MON + dt.timedelta(minutes=i)), latency, 100)
    f.add("m", us(MON + dt.timedelta(hours=1, minutes=5)), 1_800_000.0, 7)  # 30 minutes of work in hour 2
    stats = hour_stats(f)
    assert [(s.hour, s.requests, s.tokens) for s in stats] == [(MON, 20, 2000), (MON + dt.timedelta(hours=1), 1, 7)]
    assert stats[0].p50_ms == 100.0 and stats[0].p95_ms == 190.0
    assert stats[0].busy_fraction == pytest.approx(sum(lat) / 1000 / 3600)
    assert stats[1].busy_fraction == pytest.approx(0.5)
    assert hour_stats(f, {"m": 2})[1].busy_fraction == pytest.approx(0.25)  # per replica


def test_busy_fraction_caps_at_one_and_pct_nearest_rank():
    assert busy_fraction(10 * 3_600_000.0) == 1.0
    assert busy_fraction(3_600_000.0, replicas=4) == 0.25
    assert pct([], 50) == 0.0
    assert pct([1.0, 2.0, 3.0, 4.0], 50) == 2.0 and pct([1.0, 2.0, 3.0, 4.0], 99) == 4.0


def test_rows_out_of_time_order_are_refused():
    f = Fold(MON, MON + dt.timedelta(days=1))
    f.add("m", us(MON + dt.timedelta(minutes=5)), 1.0, 1)
    with pytest.raises(ValueError, match="out of time order"):
        f.add("m", us(MON), 1.0, 1)


def test_idle_windows_between_before_and_after():
    f = Fold(MON, MON + dt.timedelta(hours=3))
    for minute in (30, 35, 100, 104):  # 65-minute gap between 35 and 100
        f.add("m", us(MON + dt.timedelta(minutes=minute)), 1.0, 1)
    w = [(x.start, x.end) for x in idle_windows(f, "m")]
    t = lambda m: MON + dt.timedelta(minutes=m)  # noqa: E731
    assert w == [(t(0), t(30)), (t(35), t(100)), (t(104), t(180))]
    assert idle_windows(f, "absent")[0].seconds == 3 * 3600  # a model without rows: idle throughout


def test_empty_history_says_there_are_no_rows_since():
    f = Fold(MON, MON + dt.timedelta(days=14))
    with pytest.raises(HistoryError, match=r"no spend rows since 2026-11-16T00:00:00Z"):
        check_history(f)


def test_short_history_says_how_much_is_there_and_needed():
    f = Fold(MON, MON + dt.timedelta(days=14))
    f.add("m", us(MON + dt.timedelta(hours=1)), 1.0, 1)
    f.add("m", us(MON + dt.timedelta(hours=4)), 1.0, 1)
    with pytest.raises(HistoryError, match=r"only 3\.0 h of history .*2 requests.*need at least 24 h"):
        analyze(f)
    f.add("m", us(MON + dt.timedelta(hours=25)), 1.0, 1)
    check_history(f)  # a day is enough


def test_window_must_not_be_empty():
    with pytest.raises(HistoryError, match="window is empty"):
        Fold(MON, MON)


def _history(days: int = 14) -> Fold:
    """A hot model every 2 minutes; a coding model every 4 minutes 09-20 on weekdays only; a rare one
    at 10:00-10:30 on weekdays (bursts) and once at 03:00 each day."""
    f = Fold(MON, MON + dt.timedelta(days=days))
    rows = []
    for d in range(days):
        day = MON + dt.timedelta(days=d)
        for m in range(0, 1440, 2):
            rows.append(("classifier", day + dt.timedelta(minutes=m)))
        if day.weekday() < 5:
            for m in range(9 * 60, 20 * 60, 4):
                rows.append(("coder", day + dt.timedelta(minutes=m, seconds=7)))
            for m in range(600, 630, 3):
                rows.append(("summarizer", day + dt.timedelta(minutes=m)))
        rows.append(("summarizer", day + dt.timedelta(hours=3)))
    for name, t in sorted(rows):
        f.add(name, us(t), 50.0, 10)
    return f


def test_recommendations_hot_warm_cold_and_prewarm():
    f = _history()
    recs = {s.model: recommend(f, s) for s in (summarize(f, n) for n in ("classifier", "coder", "summarizer"))}
    hot, coder, summ = recs["classifier"], recs["coder"], recs["summarizer"]
    assert (hot.tier, hot.pin, hot.keep_alive_s, hot.prewarm) == ("hot", True, None, ())
    assert coder.tier == "warm" and not coder.pin  # 11 of 24 h on 10 of 14 days: 33%
    assert [(p.cron, p.busy_from, p.busy_until) for p in coder.prewarm] == [("50 8 * * 1-5", "09:00", "20:00")]
    assert coder.keep_alive_s == 300.0  # 4-minute gaps: p90 240 s, warm floor 300 s
    assert summ.tier == "cold"
    assert [p.cron for p in summ.prewarm] == ["50 9 * * 1-5"]
    assert summ.keep_alive_s == 180.0  # 3-minute gaps inside the burst


def test_profiles_show_no_night_traffic_for_the_coder():
    s = summarize(_history(), "coder")
    assert s.weekday_profile[:9] == (0.0,) * 9 and s.weekend_profile == (0.0,) * 24
    assert s.weekday_profile[9] == pytest.approx(15.0)  # 60 / 4 per hour
    assert s.requests == 10 * 165


def test_prewarm_windows_wrap_midnight_and_ignore_smooth_rises():
    profile = [0.0] * 24
    profile[0] = profile[1] = 10.0
    share = [1.0 if p else 0.0 for p in profile]
    (p,) = prewarm_windows(profile, share, "1-5")
    assert (p.cron, p.busy_from, p.busy_until) == ("50 23 * * 0-4", "00:00", "02:00")  # the evening before
    smooth = [float(h) for h in range(24)]
    assert prewarm_windows(smooth, [1.0] * 24, "1-5") == []
    assert prewarm_windows([0.0] * 24, [0.0] * 24, "1-5") == []


def test_keep_alive_is_the_p90_short_gap_within_bounds():
    assert keep_alive([10.0] * 9 + [100.0], 60, 1800) == 60.0  # floor
    assert keep_alive([100.0] * 8 + [400.0, 500.0], 60, 1800) == 420.0  # p90 = 400, to 30 s
    assert keep_alive([5000.0], 60, 1800) == 1800.0  # no gap within an hour: the ceiling


def test_observed_spec_replaces_traffic_and_says_what_is_missing():
    base = planner_spec()
    spec, notes = observed_spec(base, {"bert-classifier": (0.5, 64.0), "stranger": (1.0, 1.0)})
    bert = next(m for m in spec["models"] if m["name"] == "bert-classifier")
    assert (bert["peak_requests_per_sec"], bert["tokens_per_request"], bert["gpu_memory_gb"]) == (0.5, 64.0, 1.5)
    assert any("codestral-22b: in the spec, no requests" in n for n in notes)
    assert any("stranger: in the history, not in the spec" in n for n in notes)
    assert base["models"][0]["peak_requests_per_sec"] == 2  # the input is not changed


def test_dedicated_counts_min_replicas_and_shows_what_does_not_fit():
    d = dedicated(to_problem(parse_spec(planner_spec())))
    assert d["gpu_count"] == 9  # 8 placeable models, llama-3-8b-chat with 2 replicas
    assert d["cost_per_hour"] == pytest.approx(9 * 3.20)
    assert [u["name"] for u in d["unplaceable"]] == ["codestral-22b"]


def test_parse_since():
    end = MON + dt.timedelta(days=14)
    assert parse_since("14d", end) == MON
    assert parse_since("36h", end) == end - dt.timedelta(hours=36)
    assert parse_since("2026-11-16", end) == MON
    for bad in ("14x", "yesterday", "0d"):
        with pytest.raises(ValueError, match="--since"):
            parse_since(bad, end)
