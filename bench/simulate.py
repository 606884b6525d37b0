"""Speed of the simulator (issue 12 §3: ≥ 1M simulated requests in ≤ 60 s) and its policy table.

    flock /tmp/modelyard-bench.lock .venv/bin/python bench/simulate.py [--days 0.05] [--scale 1] [--start-hour 9]

The scenario's nine models at full rate from Monday 09:00 (0.05 days ≈ 1.2M requests), each
policy run over the same trace. Prints the generation time, each policy's simulation time and
simulated requests/s, the whole run's figure (requests × policies / seconds, and "1M in N s"), then
the policy table.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from modelyard.planning import sim_policies, sim_report  # noqa: E402
from modelyard.planning.scenario import SCENARIO9  # noqa: E402
from modelyard.planning.simulate import SimConfig, simulate  # noqa: E402
from modelyard.planning.trace import synthetic  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--days", type=float, default=0.05)
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--start-hour", type=float, default=9.0)
    ap.add_argument("--gpus", type=int, default=3)
    ap.add_argument("--gpu-type", default="A100-80GB")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    t = time.perf_counter()
    trace = synthetic(a.days, a.scale, seed=a.seed, start_hour=a.start_hour)
    gen = time.perf_counter() - t
    print(f"trace: {len(trace):,} requests over {a.days * 24:.2f} h (scale {a.scale}), generated in {gen:.2f} s")
    models = sim_policies.scenario_models()
    gpu = sim_policies.sim_gpu(a.gpu_type)
    packed, _ = sim_policies.packed(SCENARIO9, gpu.gpu_type)
    setups = [sim_policies.dedicated(models, gpu), packed, sim_policies.tiered(models, gpu, a.gpus),
              sim_policies.tiered(models, gpu, a.gpus, prewarm=True)]
    cfg = SimConfig(duration_s=a.days * 86400)
    results, total = [], 0.0
    for s in setups:
        t = time.perf_counter()
        results.append(simulate(trace, models, gpu, s, cfg))
        dt = time.perf_counter() - t
        total += dt
        print(f"  {s.name:<15} {dt:6.2f} s  {len(trace) / dt:>12,.0f} simulated requests/s")
    n = len(trace) * len(setups)
    print(f"all policies: {n:,} simulated requests in {total:.2f} s = {n / total:,.0f} requests/s; "
          f"1M requests in {1e6 / (n / total):.2f} s (target <= 60 s); with generation "
          f"{len(trace):,} requests generated + one policy in {gen + total / len(setups):.2f} s")
    print(sim_report.table(results, cfg.slo_ttft_s))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
