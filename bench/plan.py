"""The planner on the scenario and on a large instance: GPUs and $/month per solver, solve times.

    flock /tmp/modelyard-bench.lock .venv/bin/python bench/plan.py [--time-limit 10] [--out bench/results]

Prints (and writes to bench/results/plan-<date>.txt, with plan PNGs next to it):
1. the scenario's six listed models and our nine (A100-40GB, $3.20/h, 15,000 tokens/s, 15% reserved),
   weights only, then with KV for Llama-3-8B's shape (32 layers, 8 KV heads, 128, fp16) at 4,096
   tokens × 32 sequences (full context), then at the scenario's 6-8 GB per 7-8B model (~1,600 tokens);
2. the same nine on mixed GPU types from the catalogue;
3. a seeded 60-model × 4-GPU-type instance: FFD vs exact within the time limit, the gap.
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import sys
import time
from pathlib import Path

from modelyard.planning.plan_report import write_plan_report
from modelyard.planning.planner import PlanResult, solve
from modelyard.planning.scenario import SCENARIO9, planner_spec
from modelyard.planning.spec import parse_spec, to_problem

LLM = {"codestral-22b": (56, 8, 128), "llama-3-8b-chat": (32, 8, 128), "llama-3-8b-support": (32, 8, 128),
       "mistral-7b-summarizer": (32, 8, 128), "faq-bot-3b": (36, 2, 128), "internal-tools-bot": (32, 8, 128)}


def with_kv(spec: dict, context: int, concurrency: int) -> dict:
    out = {**spec, "models": []}
    for m in spec["models"]:
        m = dict(m)
        if m["name"] in LLM:
            layers, kv_heads, head_dim = LLM[m["name"]]
            m["kv"] = {"layers": layers, "kv_heads": kv_heads, "head_dim": head_dim, "dtype_bytes": 2,
                       "context": context, "concurrency": concurrency}
        out["models"].append(m)
    return out


def row(label: str, r: PlanResult, hpm: float = 730) -> str:
    un = ", ".join(u.name for u in r.unplaceable) or "-"
    status = "optimal" if r.exact.optimal else f"gap {r.exact.gap:.1%}"
    return (f"{label:<52} exact {r.gpu_count:>3} GPUs ${r.cost_per_month:>9,.0f}/mo ({status}, {r.exact.seconds:5.2f} s) | "
            f"FFD {r.ffd_gpu_count:>3} ${r.ffd_cost_per_hour * hpm:>9,.0f} | scenario FFD {r.scenario_ffd.gpu_count:>3} "
            f"({sum(b.overflow for b in r.scenario_ffd.bins)} overflowing) | unplaceable: {un}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--time-limit", type=float, default=10.0)
    ap.add_argument("--out", default="bench/results")
    a = ap.parse_args(argv)
    day = dt.date.today().isoformat()
    out = Path(a.out)
    lines = [f"# bench/plan.py, {day}, {sys.platform}, time limit {a.time_limit:g} s"]

    def run(label: str, spec: dict, png: str | None = None) -> PlanResult:
        r = solve(to_problem(parse_spec(spec)), time_limit_s=a.time_limit)
        lines.append(row(label, r))
        print(lines[-1], flush=True)
        if png:
            write_plan_report(r, out / png)
        return r

    six, nine = planner_spec(SCENARIO9[:6]), planner_spec()
    run("scenario, 6 listed models, weights only", six, f"plan-{day}-scenario6")
    run("nine models, weights only", nine, f"plan-{day}-nine")
    run("nine, KV full context (4,096 x 32 seq)", with_kv(nine, 4096, 32), f"plan-{day}-nine-kv")
    run("nine, KV ~scenario 6-8 GB (1,600 tokens x 32 seq)", with_kv(nine, 1600, 32))
    mixed = {**nine, "gpus": [{"gpu_type": t} for t in ("A100-40GB", "A100-80GB", "H100-80GB", "L40S", "L4")]}
    run("nine, mixed catalogue GPUs (example prices)", mixed)
    rng = random.Random(7)
    big = {"gpus": [{"gpu_type": t} for t in ("A100-40GB", "A100-80GB", "H100-80GB", "L4")],
           "models": [{"name": f"m{i:02d}", "gpu_memory_gb": rng.choice([0.5, 1.5, 3, 6, 8, 14, 16, 22]),
                       "min_replicas": rng.choice([1, 1, 2]), "peak_requests_per_sec": rng.choice([1, 5, 20, 50]),
                       "tokens_per_request": rng.choice([64, 256, 512])} for i in range(60)]}
    t0 = time.perf_counter()
    run("60 models x 4 GPU types (seed 7)", big)
    lines.append(f"60x4 wall time incl. FFD and model building: {time.perf_counter() - t0:.2f} s")
    print(lines[-1])
    out.mkdir(parents=True, exist_ok=True)
    (out / f"plan-{day}.txt").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
