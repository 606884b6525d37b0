"""What ``modelyard cascade calibrate`` (and ``bench/cascade_tradeoff.py``) write besides the
calibration itself: a summary (pure: :func:`summary`), the same as markdown and JSON, and two PNGs
(matplotlib, Agg): the cost/accuracy frontier with the chosen point and each tier alone marked,
and a reliability diagram (confidence bins vs observed accuracy per tier).

Every number in the report is computed here from the trials, so a test can recompute it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from modelyard.routing.cascade import Point, Result, Trial, apply, auroc, reliability, tier_alone


def _point(p: Point) -> dict[str, Any]:
    return {"thresholds": list(p.thresholds), "accuracy": p.accuracy, "cost": p.cost, "shares": list(p.shares),
            "escalation": p.escalation, "n": p.n}


def _split_figures(trials: Sequence[Trial], result: Result, models: Sequence[str]) -> dict[str, Any]:
    n_tiers = len(models)
    tiers = []
    for k, model in enumerate(models):
        acc, cost, n = tier_alone(trials, k)
        tokens = [t for t in trials if t.tier == k]
        tiers.append({"tier": k, "model": model, "accuracy": acc, "cost": cost, "n": n,
                      "no_confidence": sum(t.confidence is None for t in tokens)})
    per_task = {task: p.thresholds for task, p in result.per_task.items()}
    cascade = apply(trials, n_tiers, result.chosen.thresholds, per_task)
    last_cost = tiers[-1]["cost"]
    saving = 1.0 - cascade.cost / last_cost if last_cost > 0 else None
    by_task = {}
    for task in sorted({t.task for t in trials}):
        ts = [t for t in trials if t.task == task]
        by_task[task] = {"cascade": _point(apply(ts, n_tiers, result.chosen.thresholds, per_task)),
                         "tiers": [tier_alone(ts, k)[0] for k in range(n_tiers)]}
    return {"n": cascade.n, "tiers": tiers, "cascade": _point(cascade), "saving_vs_last": saving, "by_task": by_task}


def summary(name: str, models: Sequence[str], kinds: Sequence[str], train: Sequence[Trial],
            held_out: Sequence[Trial], result: Result, *, cost_basis: str, settings: Mapping[str, Any]) -> dict[str, Any]:
    """Everything the report says, as one JSON-able value."""
    n_tiers = len(models)
    return {
        "model": name,
        "tiers": [{"model": m, "confidence": kinds[k] if k < n_tiers - 1 else None,
                   "auroc": auroc(train, k) if k < n_tiers - 1 else None,
                   "reliability": [dict(zip(("lo", "hi", "n", "confidence", "accuracy"), b, strict=True))
                                   for b in reliability(list(train) + list(held_out), k, kinds[k])]}
                  for k, m in enumerate(models)],
        "cost_basis": cost_basis,
        "settings": dict(settings),
        "target_accuracy": result.target,
        "target_met": result.met,
        "chosen": _point(result.chosen),
        "per_task_thresholds": {t: list(p.thresholds) for t, p in result.per_task.items()},
        "calibration": _split_figures(train, result, models),
        "held_out": _split_figures(held_out, result, models) if held_out else None,
        "points": [_point(p) for p in result.points],
        "trials": [{"item": t.item_id, "task": t.task, "tier": t.tier, "confidence": t.confidence,
                    "correct": t.correct, "cost": t.cost} for t in (*train, *held_out)],
        "held_out_items": sorted({t.item_id for t in held_out}),
    }


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


def _th(x: float | None) -> str:
    return "escalate all" if x is None else f"{x:.3f}"


def table_rows(split: Mapping[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """``(what, accuracy, cost/item, answered by tier 0, saving vs last tier)`` rows of one split."""
    rows = [(f"tier {t['tier']} alone ({t['model']})", _pct(t["accuracy"]), f"{t['cost']:.5f}", "", "")
            for t in split["tiers"]]
    c = split["cascade"]
    rows.append(("cascade (chosen thresholds)", _pct(c["accuracy"]), f"{c['cost']:.5f}",
                 f"{_pct(c['shares'][0])} (escalated {_pct(c['escalation'])})", _pct(split["saving_vs_last"])))
    return rows


def markdown(s: Mapping[str, Any]) -> str:
    lines = [f"# Cascade calibration: `{s['model']}`", "",
             "Tiers: " + " → ".join(f"`{t['model']}`" + (f" ({t['confidence']})" if t["confidence"] else "")
                                     for t in s["tiers"]), "",
             f"Cost basis: {s['cost_basis']}", "",
             "Chosen thresholds (all tasks): " + ", ".join(_th(x) for x in s["chosen"]["thresholds"])]
    for task, ths in s["per_task_thresholds"].items():
        lines.append(f"- task `{task}`: " + ", ".join(_th(x) for x in ths))
    target = s["target_accuracy"]
    lines += ["", f"Target accuracy: {_pct(target)} ({'met' if s['target_met'] else 'NOT met'} on the calibration split)"
              if target is not None else "Chosen by maximum escalation share.", ""]
    for key, title in (("calibration", "Calibration split"), ("held_out", "Held-out split")):
        split = s.get(key)
        if not split:
            continue
        lines += [f"## {title} ({split['n']} items)", "",
                  "| | accuracy | cost / item | answered by tier 0 | saving vs last tier |", "|---|---|---|---|---|"]
        lines += [f"| {' | '.join(r)} |" for r in table_rows(split)]
        lines += ["", "| task | cascade accuracy | escalated | " + " | ".join(
            f"tier {k} alone" for k in range(len(s["tiers"]))) + " |", "|---|---|---|" + "---|" * len(s["tiers"])]
        for task, v in split["by_task"].items():
            lines.append(f"| {task} | {_pct(v['cascade']['accuracy'])} | {_pct(v['cascade']['escalation'])} | "
                         + " | ".join(_pct(a) for a in v["tiers"]) + " |")
        lines.append("")
    lines += ["## Confidence signal", "",
              "AUROC of each non-last tier's confidence for telling its right answers from its wrong ones "
              "(0.5 = no signal), on the calibration split:", ""]
    for k, t in enumerate(s["tiers"][:-1]):
        lines.append(f"- tier {k} `{t['model']}` ({t['confidence']}): "
                     + ("n/a (needs right and wrong answers with confidences)" if t["auroc"] is None else f"{t['auroc']:.3f}"))
    lines += ["", "![cost vs accuracy](frontier.png)", "", "![reliability](reliability.png)", ""]
    return "\n".join(lines)


def _plot(s: Mapping[str, Any], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    pts = s["points"]
    ax.plot([p["cost"] for p in pts], [p["accuracy"] for p in pts], ".", color="0.6", label="threshold sweep")
    cal = s["calibration"]
    for t in cal["tiers"]:
        ax.plot([t["cost"]], [t["accuracy"]], "s", ms=8, label=f"tier {t['tier']} alone ({t['model']})")
    ch = cal["cascade"]
    ax.plot([ch["cost"]], [ch["accuracy"]], "*", ms=16, color="crimson", label="chosen")
    if s["target_accuracy"] is not None:
        ax.axhline(s["target_accuracy"], ls="--", lw=0.8, color="crimson", label="target")
    ax.set_xlabel(f"mean cost per item ({s['cost_basis'].split(':')[0]})")
    ax.set_ylabel("accuracy")
    ax.set_title(f"cascade {s['model']}: cost vs accuracy (calibration split)")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    written.append(out / "frontier.png")
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.plot([0, 1], [0, 1], ":", color="0.5", label="perfectly calibrated")
    for k, t in enumerate(s["tiers"]):
        bins = t["reliability"]
        if bins:
            ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], "o-",
                    label=f"tier {k} {t['model']} ({t['confidence'] or 'mean_logprob'})")
    ax.set_xlabel("confidence (exp of the logprob signal, or judge P(yes))")
    ax.set_ylabel("observed accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title("reliability")
    ax.legend(fontsize=8)
    fig.tight_layout()
    written.append(out / "reliability.png")
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)
    return written


def write(s: Mapping[str, Any], out_dir: str | Path) -> list[Path]:
    """``report.md``, ``report.json``, ``frontier.png``, ``reliability.png`` in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(markdown(s), encoding="utf-8")
    (out / "report.json").write_text(json.dumps(s, indent=1) + "\n", encoding="utf-8")
    return [out / "report.md", out / "report.json", *_plot(s, out)]
