"""``modelyard analyze``'s outputs: a JSON document, a markdown report and two PNG plots
(``load.png``: each model's hourly requests over the window; ``gpus_per_hour.png``: GPUs needed per
hour of day, packed, against the dedicated and packed-at-peak counts). matplotlib, Agg backend."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from .analyze import Analysis, Recommendation

FILES = ("analyze.md", "analyze.json", "load.png", "gpus_per_hour.png")


def _t(ts: dt.datetime) -> str:
    return ts.astimezone(dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _r(x: float, n: int = 4) -> float:
    return round(float(x), n)


def _rec(r: Recommendation) -> dict[str, Any]:
    return {"tier": r.tier, "keep_alive_s": r.keep_alive_s, "pin": r.pin, "why": r.why,
            "prewarm": [{"cron": p.cron, "days": p.days, "busy_from": p.busy_from, "busy_until": p.busy_until}
                        for p in r.prewarm]}


def as_json(a: Analysis) -> dict[str, Any]:
    recs = {r.model: r for r in a.recommendations}
    models = {}
    for s in a.summaries:
        models[s.model] = {
            "requests": s.requests, "tokens": s.tokens, "mean_tokens": _r(s.mean_tokens, 2), "mean_rps": _r(s.mean_rps, 6),
            "peak_rps": _r(s.peak_rps, 6), "p50_ms": _r(s.p50_ms, 2), "p95_ms": _r(s.p95_ms, 2),
            "busy_fraction": _r(s.busy_fraction, 6), "active_share": _r(s.active_share), "idle_s": _r(s.idle_s, 1),
            "longest_idle_s": _r(s.longest_idle_s, 1), "idle_windows": len(a.idle.get(s.model, [])),
            "weekday_profile": [_r(x, 3) for x in s.weekday_profile],
            "weekend_profile": [_r(x, 3) for x in s.weekend_profile],
            "tier_events": dict(s.tier_events), "recommendation": _rec(recs[s.model]),
        }
    return {
        "since": _t(a.since), "until": _t(a.until), "rows": a.rows, "timezone": "UTC",
        "models": models,
        "hours": [{"model": h.model, "hour": _t(h.hour), "requests": h.requests, "tokens": h.tokens,
                   "busy_fraction": _r(h.busy_fraction, 6), "p50_ms": _r(h.p50_ms, 2), "p95_ms": _r(h.p95_ms, 2)}
                  for h in a.hours],
        "idle_windows": {m: [{"start": _t(w.start), "end": _t(w.end), "seconds": _r(w.seconds, 1)} for w in ws]
                         for m, ws in a.idle.items()},
        "consolidation": a.consolidation,
    }


def markdown(a: Analysis) -> str:
    recs = {r.model: r for r in a.recommendations}
    out = [f"# modelyard analyze: {_t(a.since)} → {_t(a.until)}", "",
           f"{a.rows:,} spend rows, {len(a.summaries)} models (times and hours of day are UTC).", "",
           "## Per model", "",
           "| model | requests | mean tokens | mean req/s | peak req/s (p99/min) | p50 ms | p95 ms | busy | hours with traffic "
           "| longest idle | tier changes |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for s in a.summaries:
        ev = ", ".join(f"{k} {v}" for k, v in sorted(s.tier_events.items())) or "—"
        out.append(f"| {s.model} | {s.requests:,} | {s.mean_tokens:.0f} | {s.mean_rps:.4f} | {s.peak_rps:.4f} | "
                   f"{s.p50_ms:.0f} | {s.p95_ms:.0f} | {s.busy_fraction:.2%} | {s.active_share:.0%} | "
                   f"{s.longest_idle_s / 3600:.1f} h | {ev} |")
    out += ["", "## Recommendations", "", "| model | tier | keep_alive_s | pin | pre-warm (cron, UTC) | why |",
            "|---|---|---:|---|---|---|"]
    for s in a.summaries:
        r = recs[s.model]
        ka = "forever" if r.keep_alive_s is None else f"{r.keep_alive_s:g}"
        pre = "; ".join(f"`{p.cron}` (busy {p.busy_from}-{p.busy_until})" for p in r.prewarm) or "—"
        out.append(f"| {s.model} | {r.tier} | {ka} | {'yes' if r.pin else 'no'} | {pre} | {r.why} |")
    c = a.consolidation
    out += ["", "## Consolidation", ""]
    if c is None:
        out.append("Not computed: pass `--spec SPEC.yaml` (model sizes and GPU types) for dedicated vs packed.")
    else:
        d, p = c["dedicated"], c["packed"]
        out += [c["note"] + ".", ""]
        out += [f"- {n}" for n in c["notes"]]
        out += ["| layout | GPUs | $/hour | $/month |", "|---|---:|---:|---:|",
                f"| dedicated (one GPU per model replica) | {d['gpu_count']} | {d['cost_per_hour']:.2f} | "
                f"{d['cost_per_month']:,.2f} |",
                f"| packed at the observed peak (planner) | {p['gpu_count']} | {p['cost_per_hour']:.2f} | "
                f"{p['cost_per_month']:,.2f} |",
                f"| packed per hour of day (planner, mean) | {sum(h['gpu_count'] for h in c['per_hour']) / 24:.1f} | "
                f"{sum(h['cost_per_hour'] for h in c['per_hour']) / 24:.2f} | {c['per_hour_cost_per_month']:,.2f} |", ""]
        for u in {x["name"]: x for x in d["unplaceable"] + p["unplaceable"]}.values():
            out.append(f"- **unplaceable: {u['name']}** — {u['reason']} (not in any count above)")
        out += ["", "Packed bins: " + "; ".join(f"{b['gpu_type']}: {', '.join(b['models'])}" for b in p["bins"]), "",
                "GPUs needed per hour of day: " + " ".join(f"{h['hour']:02d}h={h['gpu_count']}" for h in c["per_hour"])]
    return "\n".join(out) + "\n"


def plots(a: Analysis, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = [out / "load.png", out / "gpus_per_hour.png"]
    fig, ax = plt.subplots(figsize=(11, 5))
    start = a.since.replace(minute=0, second=0, microsecond=0)
    xs = [start + dt.timedelta(hours=i) for i in range(-(-(a.until - start) // dt.timedelta(hours=1)))]
    counts: dict[str, dict[dt.datetime, int]] = {s.model: {} for s in a.summaries}
    for h in a.hours:
        counts.setdefault(h.model, {})[h.hour] = h.requests
    for name, by_hour in sorted(counts.items()):  # an hour without requests is drawn at 0.5 (the log axis' floor)
        ax.plot(xs, [max(by_hour.get(x, 0), 0.5) for x in xs], label=name, linewidth=0.9)
    ax.set_yscale("log")
    ax.set_ylim(bottom=0.4)
    ax.set_ylabel("requests per hour (log; 0 drawn at 0.5)")
    ax.set_title("per-model hourly load (UTC)")
    ax.legend(fontsize=7, ncol=3)
    ax.grid(alpha=0.3)
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(paths[0], dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(9, 4.5))
    c = a.consolidation
    if c is not None:
        hours = [h["hour"] for h in c["per_hour"]]
        ax.step(hours, [h["gpu_count"] for h in c["per_hour"]], where="mid", label="packed for that hour's demand")
        ax.axhline(c["dedicated"]["gpu_count"], color="tab:red", linestyle="--", label="dedicated")
        ax.axhline(c["packed"]["gpu_count"], color="tab:green", linestyle=":", label="packed at peak")
        ax.set_ylim(0, max(c["dedicated"]["gpu_count"], c["packed"]["gpu_count"]) + 1)
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no --spec: GPU counts not computed", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("hour of day (UTC)")
    ax.set_ylabel("GPUs")
    ax.set_title("GPUs needed per hour")
    ax.set_xticks(range(0, 24, 2))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(paths[1], dpi=100)
    plt.close(fig)
    return paths


def write_all(a: Analysis, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    (out / "analyze.json").write_text(json.dumps(as_json(a), indent=2) + "\n")
    (out / "analyze.md").write_text(markdown(a))
    return [out / "analyze.md", out / "analyze.json", *plots(a, out)]
