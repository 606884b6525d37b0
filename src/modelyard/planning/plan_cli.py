"""``modelyard plan SPEC.yaml``: the planner's command (thin: load, solve, render)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from modelyard.clitools import fail
from modelyard.errors import ArtifactError, ConfigError

from .placement import Bin
from .planner import PlanResult, solve
from .spec import GB, load_spec, to_problem


def _gb(n: float) -> str:
    return f"{n / GB:.1f}"


def _emit_config(result: PlanResult) -> str:
    """The ``gpu:`` / ``memory:`` fields of each placed replica, as a config fragment (YAML)."""
    import yaml

    per_model: dict[str, list[dict[str, Any]]] = {}
    by_name = {m.name: m for m in result.problem.models}
    for i, b in enumerate(result.bins):
        for name in b.models:
            entry: dict[str, Any] = {"gpu": str(i), "memory": f"{by_name[name].replica_bytes / GB:.2f}GB"}
            slice_ = next((s for s in b.slices if s.model == name), None)
            if slice_ is not None:
                entry["mig_profile"] = slice_.profile  # replace gpu with the slice's MIG UUID once it exists
            per_model.setdefault(name, []).append(entry)
    doc = {"models": [{"name": n, "deployments": d} for n, d in per_model.items()]}
    head = (f"# modelyard plan: {result.gpu_count} GPUs, ${result.cost_per_month:,.0f}/month "
            f"({'optimal' if result.exact.optimal else result.exact.note}).\n"
            "# One entry per replica, in GPU order: copy gpu/memory into the process deployments of these\n"
            "# models (one deployment per replica). For MIG slices, set gpu to the slice's MIG UUID.\n")
    unplaced = "".join(f"# not placed: {u.name}: {u.reason}\n" for u in result.unplaceable)
    return head + unplaced + yaml.safe_dump(doc, sort_keys=False)


def _bin_row(i: int, b: Bin) -> list[str]:
    what = ", ".join(b.models) or "-"
    if b.mig_layout is not None:
        what = " | ".join(f"{s.profile}:{s.model or 'free'}" for s in b.slices)
    flag = " OVERFLOW" if b.overflow else ""
    return [str(i), b.gpu_type, what, f"{_gb(b.used_bytes)} / {_gb(b.capacity_bytes)}{flag}",
            f"{b.load_tps:,.0f} / {b.throughput_tps:,.0f}"]


def _print_table(result: PlanResult) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    hpm = result.problem.hours_per_month
    t = Table(title="solvers", show_lines=False)
    for col in ("solver", "GPUs", "$/hour", "$/month", "status"):
        t.add_column(col)
    for p in (result.exact, result.ffd, result.scenario_ffd):
        status = "optimal" if p.optimal else (p.note or "heuristic")
        t.add_row(p.solver, str(p.gpu_count), f"{p.cost_per_hour:,.2f}", f"{p.cost_per_hour * hpm:,.0f}", status)
    console.print(t)
    bins = Table(title=f"exact plan: {result.gpu_count} GPUs")
    for col in ("#", "GPU", "models (one replica each)", "GB used / usable", "tokens/s at peak / GPU"):
        bins.add_column(col)
    for i, b in enumerate(result.bins):
        bins.add_row(*_bin_row(i, b))
    console.print(bins)
    models = Table(title="models")
    for col in ("model", "weights GB", "KV GB", "replica GB", "peak tokens/s", "isolation", "replicas"):
        models.add_column(col)
    for m in result.problem.models:
        models.add_row(m.name, _gb(m.weights_bytes), _gb(m.kv_bytes), _gb(m.replica_bytes), f"{m.demand_tps:,.0f}",
                       m.isolation, str(result.replicas.get(m.name, 0)))
    console.print(models)
    for u in result.unplaceable:
        console.print(f"[bold red]unplaceable[/] {u.name}: {u.reason}")


def _artifact_facts(spec, config_path: str | None) -> dict:  # noqa: ANN001
    if not any(m.artifact for m in spec.models):
        return {}
    from modelyard.backends.local_models import data_dir
    from modelyard.clitools import settings_or_defaults
    from modelyard.registry.artifacts import ArtifactStore

    from .artifacts import facts_for_spec

    return facts_for_spec(spec, ArtifactStore(data_dir(settings_or_defaults(config_path)) / "artifacts"))


@click.command("plan")
@click.argument("spec_path", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="print the plan as JSON")
@click.option("--gpu", "gpus", multiple=True, help="plan on these catalogue GPU types instead of the spec's (repeatable)")
@click.option("--time-limit", "time_limit", type=click.FloatRange(min=0.1), default=10.0, show_default=True,
              help="seconds the exact solver may search; then the best plan found and its gap")
@click.option("--emit-config", "emit", type=click.Path(dir_okay=False), help="write the gpu:/memory: fields of each replica here")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), help="write plan.json, plan.md and plan.png here")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="config whose artifact store `artifact:` reads")
def plan_command(spec_path: str, as_json: bool, gpus: tuple[str, ...], time_limit: float, emit: str | None,
                 out_dir: str | None, config_path: str | None) -> None:
    """Pack models onto GPUs: the scenario's FFD, a corrected FFD and the exact optimum (HiGHS)."""
    try:
        import scipy.optimize  # noqa: F401
    except ImportError:
        fail("the exact planner needs scipy (HiGHS): pip install 'modelyard[capacity]'", 2)
    try:
        spec = load_spec(spec_path)
        problem = to_problem(spec, source=spec_path, artifact_facts=_artifact_facts(spec, config_path), gpu_override=gpus)
    except (ConfigError, ArtifactError) as exc:
        fail(exc.message, 2)
    result = solve(problem, time_limit_s=time_limit)
    data = result.as_dict()
    if out_dir:
        from .plan_report import write_plan_report

        write_plan_report(result, Path(out_dir))
    if emit:
        Path(emit).write_text(_emit_config(result))
    if as_json:
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
    else:
        _print_table(result)
