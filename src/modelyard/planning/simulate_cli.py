"""``modelyard simulate``: replay a trace (or the scenario's diurnal day) under each policy."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click

from modelyard.clitools import fail
from modelyard.errors import ConfigError

from . import sim_policies, sim_report
from . import trace as traces
from .scenario import SCENARIO9
from .simulate import POLICIES, PolicySetup, SimConfig, simulate

DEFAULT_GPUS = 3  # the scenario's target after consolidation (../shared/WORKLOAD.md)


@click.command("simulate")
@click.option("--trace", "trace_path", type=click.Path(dir_okay=False), default=None,
              help="CSV trace: ts, model, prompt_tokens, completion_tokens (models: the scenario's nine)")
@click.option("--synthetic", type=click.Choice(["scenario9"]), default=None, help="the scenario's diurnal generator")
@click.option("--days", type=float, default=1.0, show_default=True, help="synthetic: simulated days")
@click.option("--scale", default="small", show_default=True, help="synthetic: small | medium | full | a rate multiplier")
@click.option("--start-hour", type=float, default=0.0, show_default=True, help="synthetic: Monday hour to start at")
@click.option("--policy", "policies", multiple=True, type=click.Choice(POLICIES), help="repeatable; default: all")
@click.option("--gpus", type=int, default=DEFAULT_GPUS, show_default=True, help="GPUs of the tiered policies")
@click.option("--gpu-type", default="A100-80GB", show_default=True, help="a catalogue GPU type")
@click.option("--bandwidths", type=click.Choice(sorted(sim_policies.BANDWIDTHS)), default="measured", show_default=True,
              help="move bandwidths: measured (bench/results) or the scenario's")
@click.option("--slo-ttft-ms", type=float, default=500.0, show_default=True)
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None, help="write simulate.json and PNGs here")
@click.option("--json", "as_json", is_flag=True, help="print the JSON document instead of the table")
@click.option("--seed", type=int, default=0, show_default=True)
def simulate_command(trace_path: str | None, synthetic: str | None, days: float, scale: str, start_hour: float,
                     policies: tuple[str, ...], gpus: int, gpu_type: str, bandwidths: str, slo_ttft_ms: float,
                     out_dir: str | None, as_json: bool, seed: int) -> None:
    """Simulate many models on N GPUs under each policy: cost, TTFT, SLO attainment, swaps."""
    if (trace_path is None) == (synthetic is None):
        fail("give exactly one of --trace FILE.csv or --synthetic scenario9", 2)
    if gpus < 1:
        fail(f"--gpus: {gpus} must be at least 1", 2)
    if slo_ttft_ms <= 0 or days <= 0:
        fail("--slo-ttft-ms and --days must be positive", 2)
    try:
        gpu = sim_policies.sim_gpu(gpu_type, bandwidths)
        if trace_path is not None:
            trace = traces.read_csv(trace_path, [m.name for m in SCENARIO9])
            duration = trace.duration_s
        else:
            rate_scale = traces.parse_scale(scale)
            trace = traces.synthetic(days, rate_scale, seed=seed, start_hour=start_hour)
            duration = days * 86400.0
        models = sim_policies.scenario_models()
        setups, plan = _setups(policies or POLICIES, models, gpu, gpus)
    except ConfigError as exc:
        fail(exc.message, 2)
    cfg = SimConfig(slo_ttft_s=slo_ttft_ms / 1000.0, duration_s=max(duration, 1.0))
    results = []
    t0 = time.perf_counter()
    for s in setups:
        results.append(simulate(trace, models, gpu, s, cfg))
    wall = time.perf_counter() - t0
    meta: dict[str, Any] = {
        "source": trace_path or f"synthetic {synthetic} days={days} scale={scale} seed={seed} start_hour={start_hour}",
        "requests": len(trace), "duration_s": cfg.duration_s, "gpu": gpu.__dict__, "slo_ttft_s": cfg.slo_ttft_s,
        "bandwidths": sim_policies.BANDWIDTHS[bandwidths][2], "prefill_factor": sim_policies.PREFILL_FACTOR,
        "simulated_requests_per_s": round(len(trace) * len(setups) / wall) if wall > 0 else None,
        "plan": plan,
    }
    doc = sim_report.document(results, meta)
    written: list[Path] = []
    if out_dir is not None:
        out = Path(out_dir)
        try:
            out.mkdir(parents=True, exist_ok=True)
            sim_report.write_json(out / "simulate.json", doc)
            written = [out / "simulate.json", *sim_report.plots(results, out)]
        except OSError as exc:
            fail(f"--out {out_dir}: cannot write: {exc.strerror or exc}", 1)
    if as_json:
        click.echo(json.dumps(doc, indent=2))
        return
    click.echo(f"{len(trace):,} requests over {cfg.duration_s / 3600:.1f} h on {gpu.gpu_type} "
               f"(${gpu.cost_per_hour:.2f}/h); moves: {meta['bandwidths']}")
    click.echo(sim_report.table(results, cfg.slo_ttft_s))
    for p in written:
        click.echo(f"wrote {p}")


def _setups(names: tuple[str, ...], models: Any, gpu: Any, gpus: int) -> tuple[list[PolicySetup], dict[str, Any] | None]:
    setups: list[PolicySetup] = []
    plan = None
    for name in dict.fromkeys(names):
        if name == "dedicated":
            setups.append(sim_policies.dedicated(models, gpu))
        elif name == "packed":
            try:
                setup, plan = sim_policies.packed(SCENARIO9, gpu.gpu_type)
            except ImportError as exc:
                raise ConfigError(f"--policy packed: the planner is not available ({exc})") from None
            setups.append(setup)
        else:
            setups.append(sim_policies.tiered(models, gpu, gpus, prewarm=name == "tiered-prewarm"))
    return setups, plan
