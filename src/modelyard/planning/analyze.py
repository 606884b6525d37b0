"""``modelyard analyze``'s decisions: spend rows and tier events in → per-model-hour statistics, idle
windows, recommendations (tier, keep_alive_s, pin, cron pre-warm windows) and the consolidation
comparison. Pure: no I/O and no clock (``since`` / ``until`` are arguments); ``history.py`` reads the
database, ``report.py`` writes the results. How each number is decided: ``docs/design/analyze.md``.

Rows arrive as plain tuples ``(model, ts_us, latency_ms, tokens)``, ordered by model then time (the
order ``ix_spend_model_ts`` gives), into a ``Fold``: per model, per-hour counters and latencies,
per-minute counts and the gaps between requests. Memory is O(rows) for the latencies (the exact
p50/p95 need them) and O(minutes) for the rest.

Every time is UTC; "hour of day" and "weekday" are UTC's.
"""

from __future__ import annotations

import datetime as dt
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from modelyard.epoch import from_us, to_us
from modelyard.errors import InvalidRequestError

HOUR_US = 3_600_000_000
MINUTE_US = 60_000_000
MIN_HISTORY_H = 24  # hourly recommendations need at least one whole day
IDLE_MIN_S = 900.0  # a gap between two requests this long or longer is an idle window
HOT_SHARE = 0.9  # a model with requests in >= 90% of the hours is hot (pinned)
WARM_SHARE = 0.3  # >= 30%: warm (kept on the host tier between uses); below: cold
BUSY_LEVEL = 0.5  # an hour is "busy" at >= half the day type's peak hour
QUIET_LEVEL = 0.25  # ... and a ramp starts after an hour under a quarter of it
PREWARM_LEAD_MIN = 10
PREWARM_MIN_REQUESTS = 3.0  # a busy hour worth a pre-warm has at least this many requests on average
KEEP_ALIVE_GAP_S = 3600.0  # the gaps keep-alive should bridge: those within an hour
WEEKDAYS, WEEKEND = "1-5", "0,6"  # cron day-of-week fields (0 = Sunday)


class HistoryError(InvalidRequestError):
    """The history cannot support the analysis (empty, too short): the message says what is missing."""

    code = "insufficient_history"


# --- folding the rows -------------------------------------------------------------------------


@dataclass
class _ModelAcc:
    hours: dict[int, list[Any]] = field(default_factory=dict)  # hour index → [requests, tokens, busy_ms, latencies]
    minutes: Counter[int] = field(default_factory=Counter)
    gaps_s: list[float] = field(default_factory=list)
    idle: list[tuple[int, int]] = field(default_factory=list)  # (start_us, end_us) of gaps >= IDLE_MIN_S
    first_us: int | None = None
    last_us: int | None = None
    requests: int = 0
    tokens: int = 0


class Fold:
    """The accumulator of one analysis; ``add`` rows of one model in time order."""

    def __init__(self, since: dt.datetime, until: dt.datetime, *, idle_min_s: float = IDLE_MIN_S) -> None:
        if since >= until:
            raise HistoryError(f"the window is empty: {since.isoformat()} is not before {until.isoformat()}")
        self.since_us, self.until_us = to_us(since), to_us(until)
        self.idle_min_us = int(idle_min_s * 1e6)
        self.models: dict[str, _ModelAcc] = {}

    def add(self, model: str, ts_us: int, latency_ms: float, tokens: int) -> None:
        a = self.models.get(model)
        if a is None:
            a = self.models[model] = _ModelAcc()
        if a.last_us is not None:
            if ts_us < a.last_us:
                raise ValueError(f"rows of {model!r} out of time order")
            gap = ts_us - a.last_us
            a.gaps_s.append(gap / 1e6)
            if gap >= self.idle_min_us:
                a.idle.append((a.last_us, ts_us))
        else:
            a.first_us = ts_us
        a.last_us = ts_us
        a.requests += 1
        a.tokens += tokens
        h = a.hours.get(ts_us // HOUR_US)
        if h is None:
            h = a.hours[ts_us // HOUR_US] = [0, 0, 0.0, []]
        h[0] += 1
        h[1] += tokens
        h[2] += latency_ms
        h[3].append(latency_ms)
        a.minutes[ts_us // MINUTE_US] += 1

    def add_all(self, rows: Iterable[tuple[str, int, float, int]]) -> Fold:
        for r in rows:
            self.add(*r)
        return self

    @property
    def rows(self) -> int:
        return sum(a.requests for a in self.models.values())

    @property
    def span_us(self) -> tuple[int, int] | None:
        firsts = [a.first_us for a in self.models.values() if a.first_us is not None]
        lasts = [a.last_us for a in self.models.values() if a.last_us is not None]
        return (min(firsts), max(lasts)) if firsts else None


def check_history(fold: Fold, *, min_hours: float = MIN_HISTORY_H) -> None:
    """Raise ``HistoryError`` saying what is missing: no rows at all, or less than ``min_hours``."""
    since = _stamp(from_us(fold.since_us))
    span = fold.span_us
    if span is None:
        raise HistoryError(f"no spend rows since {since} (until {_stamp(from_us(fold.until_us))}): "
                           "serve traffic with spend recording on, or widen --since")
    have_h = (span[1] - span[0]) / HOUR_US
    if have_h < min_hours:
        raise HistoryError(f"only {have_h:.1f} h of history since {since} ({fold.rows} requests, "
                           f"{_stamp(from_us(span[0]))} to {_stamp(from_us(span[1]))}); hourly recommendations "
                           f"need at least {min_hours:g} h")


# --- statistics --------------------------------------------------------------------------------


@dataclass(frozen=True)
class HourStat:
    model: str
    hour: dt.datetime
    requests: int
    tokens: int
    busy_fraction: float
    p50_ms: float
    p95_ms: float


@dataclass(frozen=True)
class IdleWindow:
    model: str
    start: dt.datetime
    end: dt.datetime

    @property
    def seconds(self) -> float:
        return (self.end - self.start).total_seconds()


@dataclass(frozen=True)
class Prewarm:
    cron: str  # when to start loading: "50 8 * * 1-5"
    days: str  # the cron day-of-week field the traffic was seen on
    busy_from: str  # "09:00"
    busy_until: str  # "19:00"


@dataclass(frozen=True)
class ModelSummary:
    model: str
    requests: int
    tokens: int
    mean_tokens: float
    mean_rps: float
    peak_rps: float  # p99 of the per-minute request rate over the window's minutes (at least the busiest hour's mean)
    p50_ms: float
    p95_ms: float
    busy_fraction: float  # mean over the window's hours
    active_share: float  # share of the window's whole hours with at least one request
    idle_s: float  # total seconds in idle windows
    longest_idle_s: float
    weekday_profile: tuple[float, ...]  # mean requests per hour of day, Mon-Fri (24)
    weekend_profile: tuple[float, ...]
    tier_events: Mapping[str, int]  # reason → count


@dataclass(frozen=True)
class Recommendation:
    model: str
    tier: str  # hot | warm | cold
    keep_alive_s: float | None  # None: forever (pinned)
    pin: bool
    prewarm: tuple[Prewarm, ...]
    why: str


def pct(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of sorted ``values`` (0 for none)."""
    if not values:
        return 0.0
    k = max(0, min(len(values) - 1, math.ceil(q / 100 * len(values)) - 1))
    return float(values[k])


def busy_fraction(latency_ms_sum: float, replicas: int = 1) -> float:
    """Seconds spent serving in an hour / (3600 s × replicas), capped at 1."""
    return min(1.0, latency_ms_sum / 1000 / 3600 / max(1, replicas))


def whole_hours(since_us: int, until_us: int) -> range:
    """Indices of the hours wholly inside ``[since, until)``."""
    return range(-(-since_us // HOUR_US), until_us // HOUR_US)


def hour_stats(fold: Fold, replicas: Mapping[str, int] | None = None) -> list[HourStat]:
    out = []
    for name in sorted(fold.models):
        for hi, (n, tok, busy_ms, lat) in sorted(fold.models[name].hours.items()):
            s = sorted(lat)
            out.append(HourStat(name, from_us(hi * HOUR_US), n, tok, busy_fraction(busy_ms, (replicas or {}).get(name, 1)),
                                pct(s, 50), pct(s, 95)))
    return out


def idle_windows(fold: Fold, name: str) -> list[IdleWindow]:
    """Gaps of at least ``idle_min_s`` between requests, and before the first / after the last one."""
    a = fold.models.get(name)
    if a is None or a.first_us is None or a.last_us is None:
        return [IdleWindow(name, from_us(fold.since_us), from_us(fold.until_us))]
    spans = list(a.idle)
    if a.first_us - fold.since_us >= fold.idle_min_us:
        spans.insert(0, (fold.since_us, a.first_us))
    if fold.until_us - a.last_us >= fold.idle_min_us:
        spans.append((a.last_us, fold.until_us))
    return [IdleWindow(name, from_us(s), from_us(e)) for s, e in spans]


def profiles(fold: Fold, name: str) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
    """(weekday mean requests/h, weekend mean, weekday share of hours with traffic, weekend share) per hour of day."""
    a = fold.models.get(name)
    sums = [[0.0] * 24, [0.0] * 24]
    active = [[0] * 24, [0] * 24]
    counts = [[0] * 24, [0] * 24]
    for hi in whole_hours(fold.since_us, fold.until_us):
        t = from_us(hi * HOUR_US)
        kind = 0 if t.weekday() < 5 else 1
        counts[kind][t.hour] += 1
        n = a.hours[hi][0] if a is not None and hi in a.hours else 0
        sums[kind][t.hour] += n
        active[kind][t.hour] += n > 0

    def mean(v: list[float] | list[int], c: list[int]) -> tuple[float, ...]:
        return tuple(x / k if k else 0.0 for x, k in zip(v, c, strict=True))

    return mean(sums[0], counts[0]), mean(sums[1], counts[1]), mean(active[0], counts[0]), mean(active[1], counts[1])


def summarize(fold: Fold, name: str, events: Mapping[str, int] | None = None,
              replicas: int = 1) -> ModelSummary:
    a = fold.models.get(name) or _ModelAcc()
    window_s = (fold.until_us - fold.since_us) / 1e6
    hours = whole_hours(fold.since_us, fold.until_us)
    minutes = range(-(-fold.since_us // MINUTE_US), fold.until_us // MINUTE_US)
    per_min = sorted(a.minutes.get(m, 0) / 60 for m in minutes)
    lat = sorted(x for h in a.hours.values() for x in h[3])
    busy = sum(busy_fraction(a.hours[h][2], replicas) for h in hours if h in a.hours)
    idle = idle_windows(fold, name)
    wd, we, _, _ = profiles(fold, name)
    busiest_h = max((h[0] for h in a.hours.values()), default=0)
    return ModelSummary(
        model=name, requests=a.requests, tokens=a.tokens, mean_tokens=a.tokens / a.requests if a.requests else 0.0,
        mean_rps=a.requests / window_s, peak_rps=max(pct(per_min, 99), busiest_h / 3600),
        p50_ms=pct(lat, 50), p95_ms=pct(lat, 95),
        busy_fraction=busy / len(hours) if len(hours) else 0.0,
        active_share=sum(1 for h in hours if h in a.hours) / len(hours) if len(hours) else 0.0,
        idle_s=sum(w.seconds for w in idle), longest_idle_s=max((w.seconds for w in idle), default=0.0),
        weekday_profile=wd, weekend_profile=we, tier_events=dict(events or {}),
    )


# --- recommendations ---------------------------------------------------------------------------


def prewarm_windows(profile: Sequence[float], share: Sequence[float], days: str, *,
                    lead_min: int = PREWARM_LEAD_MIN) -> list[Prewarm]:
    """A pre-warm before every ramp: an hour at >= BUSY_LEVEL of the day type's peak (and at least
    PREWARM_MIN_REQUESTS, with traffic on most such days) right after one under QUIET_LEVEL of the
    peak. The cron fires ``lead_min`` (1..59) minutes before the ramp's hour."""
    peak = max(profile, default=0.0)
    if peak < PREWARM_MIN_REQUESTS:
        return []  # a request or two an hour loads on demand
    busy = [p >= max(BUSY_LEVEL * peak, PREWARM_MIN_REQUESTS) and s >= 0.5 for p, s in zip(profile, share, strict=True)]
    out = []
    for h in range(24):
        prev = (h - 1) % 24
        if busy[h] and not busy[prev] and profile[prev] < QUIET_LEVEL * peak:
            end = h
            while busy[(end + 1) % 24] and (end + 1) % 24 != h:
                end += 1
            minute, at_h = (60 - lead_min) % 60, (h - 1) % 24 if lead_min else h
            dow = days if h > 0 or not lead_min else _day_before(days)
            out.append(Prewarm(f"{minute} {at_h} * * {dow}", days, f"{h:02d}:00", f"{(end + 1) % 24:02d}:00"))
    return out


def _day_before(days: str) -> str:
    return {WEEKDAYS: "0-4", WEEKEND: "5,6"}.get(days, days)


def keep_alive(gaps_s: Sequence[float], lo: float, hi: float) -> float:
    """The p90 of the gaps within an hour (what keeps 90% of the next requests warm), rounded up to
    30 s, within [lo, hi]."""
    short = sorted(g for g in gaps_s if g <= KEEP_ALIVE_GAP_S)
    p90 = pct(short, 90) if short else hi
    return float(min(hi, max(lo, math.ceil(p90 / 30) * 30)))


def recommend(fold: Fold, s: ModelSummary) -> Recommendation:
    a = fold.models.get(s.model)
    if s.requests == 0 or a is None:
        return Recommendation(s.model, "cold", 0.0, False, (), "no requests in the window: load on demand "
                              "(or retire it)")
    share = f"requests in {s.active_share:.0%} of hours"
    if s.active_share >= HOT_SHARE:
        return Recommendation(s.model, "hot", None, True, (), f"{share} (>= {HOT_SHARE:.0%}): pin it on the active tier")
    _, _, wd_share, we_share = profiles(fold, s.model)
    pre = tuple(prewarm_windows(s.weekday_profile, wd_share, WEEKDAYS) + prewarm_windows(s.weekend_profile, we_share,
                                                                                           WEEKEND))
    if s.active_share >= WARM_SHARE:
        ka = keep_alive(a.gaps_s, 300, 3600)
        why = f"{share}: keep it {ka:g} s after a request (p90 gap), then on the host tier"
        return Recommendation(s.model, "warm", ka, False, pre, why)
    ka = keep_alive(a.gaps_s, 60, 1800)
    why = f"{share} (< {WARM_SHARE:.0%}): load on demand or by the pre-warm cron, keep {ka:g} s"
    return Recommendation(s.model, "cold", ka, False, pre, why)


# --- consolidation -----------------------------------------------------------------------------


def observed_spec(base: Mapping[str, Any], traffic: Mapping[str, tuple[float, float]],
                  only: set[str] | None = None) -> tuple[dict[str, Any], list[str]]:
    """``base`` (a planner spec dict) with each model's peak_requests_per_sec / tokens_per_request
    replaced by the observed ``traffic[name] = (peak rps, mean tokens)``; ``only`` keeps those
    models. Returns the spec and notes (models without history, history without a spec entry)."""
    notes = []
    models = []
    for m in base.get("models") or []:
        m = dict(m)
        if only is not None and m["name"] not in only:
            continue
        peak, tokens = traffic.get(m["name"], (0.0, 0.0))
        if m["name"] not in traffic:
            notes.append(f"{m['name']}: in the spec, no requests in the history (planned at zero traffic)")
        m["peak_requests_per_sec"], m["tokens_per_request"] = round(peak, 6), round(tokens, 3)
        models.append(m)
    named = {m["name"] for m in base.get("models") or []}
    notes += [f"{n}: in the history, not in the spec (no size known: left out)" for n in sorted(set(traffic) - named)]
    return {**dict(base), "models": models}, notes


def dedicated(problem: Any) -> dict[str, Any]:
    """Today's layout: each model alone on max(1, min_replicas) GPUs of the cheapest type that holds it."""
    gpus, cost, rows, unplaceable = 0, 0.0, [], []
    for m in problem.models:
        fits = sorted((g for g in problem.gpus if g.usable_bytes >= m.replica_bytes), key=lambda g: g.cost_per_hour)
        n = max(1, m.min_replicas)
        if not fits:
            unplaceable.append({"name": m.name, "reason": f"{m.replica_bytes / 1e9:.1f} GB needed, no GPU type in the "
                                f"spec has that much usable memory"})
            continue
        gpus += n
        cost += n * fits[0].cost_per_hour
        rows.append({"model": m.name, "gpus": n, "gpu_type": fits[0].gpu_type})
    return {"gpu_count": gpus, "cost_per_hour": round(cost, 4), "cost_per_month": round(cost * problem.hours_per_month, 2),
            "models": rows, "unplaceable": unplaceable}


def consolidation(base_spec: Mapping[str, Any], summaries: Sequence[ModelSummary], hourly: Mapping[int, Mapping[str, float]],
                  hot: set[str], *, solve: Any, time_limit_s: float = 2.0) -> dict[str, Any]:
    """Dedicated vs packed-at-peak vs GPUs needed per hour of day (planner per hour with that
    hour's observed demand; a model with no traffic in most of that hour's days is left out of
    that hour unless it is hot). ``hourly[h][model]`` is the p99 per-minute req/s in hour h."""
    from .spec import parse_spec, to_problem

    tokens = {s.model: s.mean_tokens for s in summaries if s.requests}
    spec, notes = observed_spec(base_spec, {s.model: (s.peak_rps, s.mean_tokens) for s in summaries if s.requests})
    problem = to_problem(parse_spec(spec, source="--spec"), source="--spec")
    packed = solve(problem, time_limit_s=time_limit_s)
    cache: dict[tuple[Any, ...], Any] = {}
    per_hour = []
    for h in range(24):
        demand = {n: r for n, r in hourly.get(h, {}).items() if n in tokens}
        present = set(demand) | (hot & set(tokens))
        traffic = {n: (demand.get(n, 0.0), tokens[n]) for n in present}
        hspec, _ = observed_spec(base_spec, traffic, only=present)
        key = tuple(sorted((m["name"], m["peak_requests_per_sec"]) for m in hspec["models"]))
        if key not in cache:
            cache[key] = solve(to_problem(parse_spec(hspec, source="--spec"), source="--spec"),
                               time_limit_s=time_limit_s) if hspec["models"] else None
        r = cache[key]
        per_hour.append({"hour": h, "models": sorted(present), "gpu_count": r.gpu_count if r else 0,
                         "cost_per_hour": round(r.cost_per_hour, 4) if r else 0.0,
                         "unplaceable": [u.name for u in r.unplaceable] if r else []})
    ded = dedicated(problem)
    hourly_month = sum(p["cost_per_hour"] for p in per_hour) / 24 * problem.hours_per_month
    return {
        "note": "traffic numbers (peak_requests_per_sec = p99 of per-minute req/s, tokens_per_request = mean) "
                "are the observed ones, replacing the spec's; sizes and GPU types are the spec's",
        "notes": notes,
        "spec": spec,
        "dedicated": ded,
        "packed": {"gpu_count": packed.gpu_count, "cost_per_hour": round(packed.cost_per_hour, 4),
                   "cost_per_month": round(packed.cost_per_month, 2), "ffd_gpu_count": packed.ffd_gpu_count,
                   "bins": [{"gpu_type": b.gpu_type, "models": list(b.models)} for b in packed.bins],
                   "unplaceable": [{"name": u.name, "reason": u.reason} for u in packed.unplaceable]},
        "per_hour": per_hour,
        "per_hour_cost_per_month": round(hourly_month, 2),
        "savings_per_month": round(ded["cost_per_month"] - packed.cost_per_month, 2),
    }


def hourly_peaks(fold: Fold) -> dict[int, dict[str, float]]:
    """Per hour of day: each model's p99 per-minute req/s over that hour's minutes on the days that
    had traffic in it on most days (else the model is absent from that hour)."""
    out: dict[int, dict[str, float]] = {h: {} for h in range(24)}
    minutes = range(-(-fold.since_us // MINUTE_US), fold.until_us // MINUTE_US)
    for name, a in fold.models.items():
        _, _, wd, we = profiles(fold, name)
        by_hour: list[list[float]] = [[] for _ in range(24)]
        for mi in minutes:
            by_hour[(mi // 60) % 24].append(a.minutes.get(mi, 0) / 60)
        nwd = sum(1 for hi in whole_hours(fold.since_us, fold.until_us) if from_us(hi * HOUR_US).weekday() < 5)
        nwe = len(whole_hours(fold.since_us, fold.until_us)) - nwd
        for h in range(24):
            share = (wd[h] * nwd + we[h] * nwe) / (nwd + nwe) if nwd + nwe else 0.0
            if share >= 0.5:
                out[h][name] = pct(sorted(by_hour[h]), 99)
    return out


def _stamp(ts: dt.datetime) -> str:
    return ts.astimezone(dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


# --- the whole analysis ------------------------------------------------------------------------


@dataclass(frozen=True)
class Analysis:
    since: dt.datetime
    until: dt.datetime
    rows: int
    hours: list[HourStat]
    idle: dict[str, list[IdleWindow]]
    summaries: list[ModelSummary]
    recommendations: list[Recommendation]
    hourly_peaks: dict[int, dict[str, float]]
    consolidation: dict[str, Any] | None


def analyze(fold: Fold, events: Mapping[str, Mapping[str, int]] | None = None, *, spec: Mapping[str, Any] | None = None,
            solve: Any = None, time_limit_s: float = 2.0, min_hours: float = MIN_HISTORY_H) -> Analysis:
    """Everything ``modelyard analyze`` reports. ``events[model][reason]``: tier-event counts.
    With ``spec`` (a planner spec dict) and ``solve``: the consolidation report, and the spec's
    models and min_replicas are used (a spec model without rows is shown with zero traffic)."""
    check_history(fold, min_hours=min_hours)
    spec_models = {m["name"]: int(m.get("min_replicas", 1) or 1) for m in (spec or {}).get("models") or []}
    names = sorted(set(fold.models) | set(spec_models))
    replicas = {n: spec_models.get(n, 1) for n in names}
    summaries = [summarize(fold, n, (events or {}).get(n), replicas[n]) for n in names]
    recs = [recommend(fold, s) for s in summaries]
    peaks = hourly_peaks(fold)
    cons = None
    if spec is not None and solve is not None:
        cons = consolidation(spec, summaries, peaks, {r.model for r in recs if r.tier == "hot"}, solve=solve,
                             time_limit_s=time_limit_s)
    return Analysis(from_us(fold.since_us), from_us(fold.until_us), fold.rows, hour_stats(fold, replicas),
                    {n: idle_windows(fold, n) for n in names}, summaries, recs, peaks, cons)
