"""Cascade cost vs accuracy on the shipped eval set (issue 11 §3–4): chat (SmolLM2-135M) → coder
(Qwen2.5-Coder-0.5B), real models on a real ``modelyard serve``, through the openai SDK.

    flock /tmp/modelyard-bench.lock .venv/bin/python bench/cascade_tradeoff.py [--limit N]
        [--holdout 0.3] [--target-ratio 0.95] [--concurrency 2] [--out bench/results/cascade]

One pass asks, for every item: chat (with logprobs), coder as a judge of chat's answer (one token,
top-10 logprobs: "is this answer correct?"), and coder itself. From that pass three tier-0
confidence signals are calibrated separately — ``mean_logprob``, ``min_logprob``, ``judge`` (its
cost includes the judge call) — each exactly as ``modelyard cascade calibrate`` does
(``routing.cascade.calibrate`` on the calibration split, figures on the held-out split). Costs:
no prices in the embedded default, so (output + input/4 tokens) × the model's GGUF size in GB
(chat 0.098, coder 0.491), as the calibrate command does.

Written to ``--out``: ``summary.md`` (the table), ``summary.json``, per signal a full report
(``<signal>/report.md``, ``.json``, ``frontier.png``, ``reliability.png``), and
``frontiers.png`` (the three signals' sweeps on one plot).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))
import yaml  # noqa: E402
from gateway import Child, machine_info  # noqa: E402

from modelyard.config.loader import settings_from_dict  # noqa: E402
from modelyard.registry.artifacts import ArtifactStore  # noqa: E402
from modelyard.registry.defaults import import_defaults  # noqa: E402
from modelyard.routing import cascade_report  # noqa: E402
from modelyard.routing.cascade import (  # noqa: E402
    Trial,
    calibrate,
    confidence,
    judge_confidence,
    judge_messages,
)
from modelyard.routing.cascade_cli import _Asker, _sizes, default_data, parse_items, rates, split, stratified  # noqa: E402
from modelyard.routing.checkers import check  # noqa: E402

SIGNALS = ("mean_logprob", "min_logprob", "judge")


def config(home: Path) -> dict[str, Any]:
    local = {"kind": "local", "n_ctx": 4096, "n_parallel": 2, "keep_alive_s": 3600}
    return {"memory": {"data_dir": str(home)}, "server": {"access_log": False},
            "router": {"timeout_s": 300, "retry": {"num_retries": 0}},
            "models": [{"name": "chat", "deployments": [{**local, "artifact": "chat"}]},
                       {"name": "coder", "deployments": [{**local, "artifact": "coder"}]}]}


def one_item(asker: _Asker, item: dict[str, Any]) -> dict[str, Any]:
    body = {"messages": item["messages"], "max_tokens": item.get("max_tokens") or 256, "logprobs": True}
    small, small_cost = asker.ask("chat", body)
    small_text = (small.get("message") or {}).get("content") or ""
    verdict, judge_cost = asker.ask("coder", {"messages": judge_messages(item["messages"], small_text),
                                              "max_tokens": 1, "logprobs": True, "top_logprobs": 10})
    big, big_cost = asker.ask("coder", body)
    big_text = (big.get("message") or {}).get("content") or ""
    return {"id": item["id"], "task": item["task"], "level": item.get("level"),
            "mean_logprob": confidence("mean_logprob", small), "min_logprob": confidence("min_logprob", small),
            "judge": judge_confidence(verdict), "big_conf": confidence("mean_logprob", big),
            "small_ok": check(item["check"], small_text).ok, "big_ok": check(item["check"], big_text).ok,
            "small_cost": small_cost, "judge_cost": judge_cost, "big_cost": big_cost,
            "small_finish": small.get("finish_reason"), "small": small_text[:300], "big": big_text[:300]}


def trials_for(rows: list[dict[str, Any]], signal: str) -> list[Trial]:
    out = []
    for r in rows:
        extra = r["judge_cost"] if signal == "judge" else 0.0
        out.append(Trial(r["id"], r["task"], 0, r[signal], r["small_ok"], r["small_cost"] + extra))
        out.append(Trial(r["id"], r["task"], 1, r["big_conf"], r["big_ok"], r["big_cost"]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--holdout", type=float, default=0.3)
    ap.add_argument("--target-ratio", type=float, default=0.95)
    ap.add_argument("--min-task-items", type=int, default=30)
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument("--out", default=str(HERE / "results" / "cascade"))
    ap.add_argument("--rows", default=None, help="reuse the answers of an earlier run (its rows.jsonl)")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    items = stratified(parse_items(default_data().read_text().splitlines(), "cascade_eval.jsonl"), args.limit)
    train_items, held_items = split(items, args.holdout)
    held_ids = {i["id"] for i in held_items}
    work = Path(tempfile.mkdtemp(prefix="cascade-bench-"))
    cfg = config(work)
    settings = settings_from_dict(cfg).settings
    started = time.monotonic()
    if args.rows:
        rows = [json.loads(line) for line in Path(args.rows).read_text().splitlines()]
        seconds = None
    else:
        import_defaults(ArtifactStore(work / "artifacts"), names=["chat", "coder"])
        rates_, basis = rates(settings, ["chat", "coder"], _sizes(settings, ["chat", "coder"]))
        (work / "cfg.yaml").write_text(yaml.safe_dump(cfg))
        gw = Child("gateway", [sys.executable, "-m", "modelyard", "serve", "--config", str(work / "cfg.yaml"),
                               "--port", "0"], work, env={"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
        try:
            url = gw.wait_for(r"modelyard listening on (http://127\.0\.0\.1:\d+)", 120).group(1)
            import openai
            from concurrent.futures import ThreadPoolExecutor

            asker = _Asker(openai.OpenAI(base_url=f"{url}/v1", api_key="sk-bench", max_retries=1, timeout=300), rates_)
            rows = []
            with ThreadPoolExecutor(args.concurrency) as pool:
                for n, row in enumerate(pool.map(lambda it: one_item(asker, it), items), 1):
                    rows.append(row)
                    if n % 20 == 0 or n == len(items):
                        print(f"{n}/{len(items)} items, {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
        finally:
            gw.stop()
        seconds = time.monotonic() - started
        (out / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        (out / "tokens.json").write_text(json.dumps(asker.tokens))
    rates_, basis = rates(settings, ["chat", "coder"], {"chat": 98_362_432, "coder": 491_400_064}) if args.rows else (rates_, basis)
    results = {}
    for signal in SIGNALS:
        trials = trials_for(rows, signal)
        train = [t for t in trials if t.item_id not in held_ids]
        held = [t for t in trials if t.item_id in held_ids]
        kinds = [signal, "mean_logprob"]
        res = calibrate(train, ["chat", "coder"], "cascade", target_ratio=args.target_ratio,
                        min_task_items=args.min_task_items, task_names={"code", "chat", "summarize", "classify"},
                        meta={"confidence": kinds, "bench": "cascade_tradeoff"})
        s = cascade_report.summary("cascade", ["chat", "coder"], kinds, train, held, res, cost_basis=basis,
                                   settings={"limit": args.limit, "holdout": args.holdout, "signal": signal})
        cascade_report.write(s, out / signal)
        results[signal] = s
    summary = {"machine": machine_info(), "items": len(items), "calibration_items": len(train_items),
               "held_out_items": len(held_items), "seconds": seconds, "cost_basis": basis,
               "small_truncated": sum(r["small_finish"] == "length" for r in rows),
               "signals": {k: {"thresholds": v["chosen"]["thresholds"], "per_task": v["per_task_thresholds"],
                               "auroc": v["tiers"][0]["auroc"], "calibration": v["calibration"], "held_out": v["held_out"]}
                           for k, v in results.items()}}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    md = render(summary, args)
    (out / "summary.md").write_text(md)
    plot(results, out / "frontiers.png")
    print(md)


def render(s: dict[str, Any], args: argparse.Namespace) -> str:
    lines = [f"# cascade chat → coder: {s['items']} items ({s['calibration_items']} calibration, "
             f"{s['held_out_items']} held out), target {args.target_ratio:.0%} of coder's accuracy", "",
             f"cost basis: {s['cost_basis']}; chat answers cut at max_tokens: {s['small_truncated']}", ""]
    for split_ in ("calibration", "held_out"):
        lines += [f"## {split_.replace('_', '-')} split", "",
                  "| signal (tier 0) | AUROC | threshold | cascade accuracy | cost / item | escalated | saving vs coder |"
                  " chat alone | coder alone |", "|---|---|---|---|---|---|---|---|---|"]
        for sig, v in s["signals"].items():
            f = v[split_]
            if not f:
                continue
            c, t = f["cascade"], f["tiers"]
            th = v["thresholds"][0]
            lines.append(f"| {sig} | {v['auroc'] if v['auroc'] is None else round(v['auroc'], 3)} | "
                         f"{'escalate all' if th is None else f'{th:.3f}'}{' +task' if v['per_task'] else ''} | "
                         f"{c['accuracy']:.1%} | {c['cost']:.4f} | {c['escalation']:.1%} | "
                         f"{'—' if f['saving_vs_last'] is None else format(f['saving_vs_last'], '.1%')} | "
                         f"{t[0]['accuracy']:.1%} ({t[0]['cost']:.4f}) | {t[1]['accuracy']:.1%} ({t[1]['cost']:.4f}) |")
        lines.append("")
    m = s["machine"]
    lines.append(f"machine: {m}; wall {s['seconds']:.0f} s" if s["seconds"] else f"machine: {m}")
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.8))
    for sig, s in results.items():
        pts = sorted(s["points"], key=lambda p: p["cost"])
        ax.plot([p["cost"] for p in pts], [p["accuracy"] for p in pts], ".-", ms=3, lw=0.8, label=f"sweep: {sig}")
        ch = s["calibration"]["cascade"]
        ax.plot([ch["cost"]], [ch["accuracy"]], "*", ms=13, label=f"chosen: {sig}")
    tiers = results["mean_logprob"]["calibration"]["tiers"]
    for t in tiers:
        ax.plot([t["cost"]], [t["accuracy"]], "s", ms=8, color="k" if t["tier"] else "0.5", label=f"{t['model']} alone")
    ax.set_xlabel("mean cost per item ((output + input/4 tokens)/1000 × GB)")
    ax.set_ylabel("accuracy (calibration split)")
    ax.set_title("cascade chat → coder: tier-0 confidence signals")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
