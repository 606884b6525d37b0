"""The simulator's outputs: a table, a JSON document and two PNG plots (matplotlib, Agg backend)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .simulate import SimResult


def _ms(s: float) -> str:
    return "-" if math.isnan(s) else f"{s * 1000:,.1f}"


def table(results: Sequence[SimResult], slo_ttft_s: float) -> str:
    head = (f"{'policy':<15} {'GPUs':>4} {'GPU-h':>8} {'$/month':>10} {'requests':>10} {'unserved':>8} "
            f"{'TTFT p50 ms':>11} {'p99 ms':>10} {f'<= {slo_ttft_s * 1000:g} ms':>10} {'swaps':>6} {'util':>6}")
    lines = [head, "-" * len(head)]
    for r in results:
        lines.append(f"{r.policy:<15} {r.gpus:>4} {r.gpu_hours:>8.1f} {r.cost_per_month:>10,.0f} {r.requests:>10,} "
                     f"{r.unserved:>8,} {_ms(r.ttft_p50_s):>11} {_ms(r.ttft_p99_s):>10} "
                     f"{r.slo_attainment * 100:>9.2f}% {r.swaps:>6,} {r.utilisation * 100:>5.1f}%")
    for r in results:
        for n in r.notes:
            lines.append(f"  {r.policy}: {n}")
    return "\n".join(lines)


def document(results: Sequence[SimResult], meta: dict[str, Any]) -> dict[str, Any]:
    def clean(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v

    return clean({"meta": meta, "policies": [r.as_dict() for r in results]})


def write_json(path: Path, doc: dict[str, Any]) -> None:
    path.write_text(json.dumps(doc, indent=2) + "\n")


def plots(results: Sequence[SimResult], out: Path) -> list[Path]:
    """cost_vs_slo.png (each policy's $/month against its SLO attainment) and gpus_over_day.png
    (provisioned GPUs and GPU-equivalents of work per bucket)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in results:
        ax.scatter([r.slo_attainment * 100], [r.cost_per_month], s=60)
        ax.annotate(f"{r.policy} ({r.gpus} GPUs)", (r.slo_attainment * 100, r.cost_per_month),
                    textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.set_xlabel("requests with TTFT within the SLO (%)")
    ax.set_ylabel("$ / month")
    ax.set_title("cost vs SLO attainment per policy")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    paths.append(out / "cost_vs_slo.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(9, 4.5))
    for r in results:
        hours = [(i * r.bucket_s) / 3600 for i in range(len(r.busy_gpus))]
        line = ax.step(hours, r.busy_gpus, where="post", label=f"{r.policy}: work (GPU-equivalents)")
        ax.hlines(r.gpus, 0, r.duration_s / 3600, colors=line[0].get_color(), linestyles="dashed", alpha=0.6,
                  label=f"{r.policy}: provisioned ({r.gpus})")
    ax.set_xlabel("hours from the trace's start")
    ax.set_ylabel("GPUs")
    ax.set_title("GPUs over the day: provisioned (dashed) and busy")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    paths.append(out / "gpus_over_day.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths
