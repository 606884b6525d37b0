"""The planner's report on disk: plan.json, plan.md (tables) and plan.png (memory per GPU, exact vs FFD)."""

from __future__ import annotations

import json
from pathlib import Path

from .placement import Placement
from .planner import PlanResult
from .spec import GB


def plan_markdown(result: PlanResult) -> str:
    hpm = result.problem.hours_per_month
    lines = ["# Capacity plan", "",
             f"Overhead reserved per GPU: {result.problem.overhead_fraction:.0%}. Hours per month: {hpm:g}.", "",
             "| solver | GPUs | $/hour | $/month | status |", "|---|---|---|---|---|"]
    for p in (result.exact, result.ffd, result.scenario_ffd):
        status = "optimal" if p.optimal else (p.note or "heuristic")
        lines.append(f"| {p.solver} | {p.gpu_count} | {p.cost_per_hour:,.2f} | {p.cost_per_hour * hpm:,.0f} | {status} |")
    lines += ["", "## Exact plan", "", "| # | GPU | models | GB used / usable | tokens/s at peak |", "|---|---|---|---|---|"]
    for i, b in enumerate(result.bins):
        what = ", ".join(b.models) if b.mig_layout is None else " / ".join(f"{s.profile}: {s.model or 'free'}" for s in b.slices)
        lines.append(f"| {i} | {b.gpu_type} | {what} | {b.used_bytes / GB:.1f} / {b.capacity_bytes / GB:.1f} | "
                     f"{b.load_tps:,.0f} / {b.throughput_tps:,.0f} |")
    lines += ["", "## Models", "", "| model | weights GB | KV GB | replica GB | peak tokens/s | isolation | replicas |",
              "|---|---|---|---|---|---|---|"]
    for m in result.problem.models:
        lines.append(f"| {m.name} | {m.weights_bytes / GB:.1f} | {m.kv_bytes / GB:.1f} | {m.replica_bytes / GB:.1f} | "
                     f"{m.demand_tps:,.0f} | {m.isolation} | {result.replicas.get(m.name, 0)} |")
    if result.unplaceable:
        lines += ["", "## Unplaceable", ""] + [f"- **{u.name}**: {u.reason}" for u in result.unplaceable]
    return "\n".join(lines) + "\n"


def _draw(ax, p: Placement, title: str, sizes: dict[str, int]) -> None:  # noqa: ANN001 - a matplotlib Axes
    names = sorted(sizes)
    colours = {n: f"C{i % 10}" for i, n in enumerate(names)}
    for i, b in enumerate(p.bins):
        bottom = 0.0
        for n in b.models:
            size = sizes[n]
            ax.bar(i, size / GB, bottom=bottom, color=colours[n], edgecolor="white", label=n)
            bottom += size / GB
        ax.plot([i - 0.4, i + 0.4], [b.capacity_bytes / GB] * 2, color="black", linewidth=1)
    handles, labels = ax.get_legend_handles_labels()
    uniq = dict(zip(labels, handles, strict=True))
    ax.legend(uniq.values(), uniq.keys(), fontsize=7, loc="upper right")
    ax.set_xticks(range(len(p.bins)))
    ax.set_title(f"{title}: {p.gpu_count} GPUs, ${p.cost_per_hour:,.2f}/h")
    ax.set_xlabel("GPU")
    ax.set_ylabel("GB (line: usable)")


def write_plan_report(result: PlanResult, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "plan.json", out / "plan.md", out / "plan.png"]
    paths[0].write_text(json.dumps(result.as_dict(), indent=2) + "\n")
    paths[1].write_text(plan_markdown(result))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5), sharey=True)
    replica = {m.name: m.replica_bytes for m in result.problem.models}
    weights = {m.name: m.weights_bytes for m in result.problem.models}
    for ax, (p, title, sizes) in zip(axes, ((result.exact, "exact (HiGHS)", replica), (result.ffd, "FFD, corrected", replica),
                                            (result.scenario_ffd, "the scenario's FFD (weights only)", weights)), strict=True):
        _draw(ax, p, title, sizes)
    fig.tight_layout()
    fig.savefig(paths[2], dpi=110)
    plt.close(fig)
    return paths
