"""Tail latency through the gateway: p99 and max over long runs, and where the stalls come from.

    .venv/bin/python bench/tail_latency.py [--requests 20000] [--runs 3] [--duration 10]
                                           [--concurrency 64] [--baseline-rev REV]

The mock upstream and ``modelyard serve`` (access log and SQLite spend rows on: the defaults a
user runs), loopback, ``bench/loadgen.py`` in its own process:

1. **c=1**: ``--runs`` runs of ``--requests`` non-streaming chat completions per target, the
   targets (direct to the mock, through modelyard, and through the gateway of ``--baseline-rev``
   when given) interleaved in blocks of 50 so machine noise hits them alike. Added p99 = through
   p99 − direct p99, per run. Target: added p99 ≤ 2 ms.
2. **c=``--concurrency``** for ``--duration`` s per target: p50/p99 direct and through. At this
   concurrency the gateway is saturated (it does ~10× less per second than the mock), so its p50
   is Little's law (in flight / throughput), not a stall; the target "p99 ≤ 2× the direct p99" is
   read as the *tail ratio* p99/p50 through ≤ 2× that ratio direct. The literal figure is printed too.
3. From the gateway's ``/metrics``: event-loop lag (``modelyard_event_loop_lag_seconds``) and GC
   pauses by generation (``modelyard_gc_pause_seconds``) over the whole run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from gateway import PATH, Child, chat_body, machine_info, run_loadgen, scrape  # noqa: E402

TARGET_ADDED_P99_MS = 2.0
TARGET_TAIL_RATIO = 2.0


def histograms(url: str) -> dict[str, dict[str, float]]:
    """{series: {"count", "sum", "le=<b>": cumulative}} for the lag and GC histograms."""
    out: dict[str, dict[str, float]] = {}
    for name, labels, value in scrape(url):
        if not name.startswith(("modelyard_event_loop_lag_seconds", "modelyard_gc_pause_seconds")) or name.endswith("_created"):
            continue
        gen = labels.split('generation="')[1].split('"')[0] if "generation=" in labels else None
        base = name.removesuffix("_bucket").removesuffix("_count").removesuffix("_sum")
        d = out.setdefault(base + (f"[gen {gen}]" if gen else ""), {})
        if name.endswith("_count"):
            d["count"] = value
        elif name.endswith("_sum"):
            d["sum"] = value
        elif 'le="' in labels:
            d["le=" + labels.split('le="')[1].split('"')[0]] = value
    return out


def over(h: dict[str, float], bound: str) -> int:
    return int(h.get("count", 0) - h.get(f"le={bound}", 0))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=20_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--baseline-rev", default=None)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="modelyard-tail-"))
    children: list[Child] = []
    tree = None
    out: dict = {"machine": machine_info(), "c1": [], "throughput": {}}
    try:
        mock = Child("mock", [sys.executable, "-m", "modelyard.testing.mock_upstream", "--host", "127.0.0.1", "--port", "0"], work)
        children.append(mock)
        mock_url = mock.wait_for(r"MOCK_LISTENING (http://\S+)", 30).group(1)

        def gateway(label: str, src: Path | None) -> str:
            cfg = work / f"{label}.yaml"
            cfg.write_text("server: {host: 127.0.0.1, access_log: true}\n"
                           f"memory: {{data_dir: '{work / ('home-' + label)}'}}\n"
                           "models:\n  - name: bench-model\n"
                           f"    deployments: [{{api_base: '{mock_url}/v1', model: bench-model}}]\n")
            gw = Child(f"gw-{label}", [sys.executable, "-m", "modelyard", "serve", "--config", str(cfg), "--port", "0"],
                       work, env={"PYTHONPATH": str(src)} if src else None)
            children.append(gw)
            return gw.wait_for(r"modelyard listening on (http://\S+)", 60).group(1)

        targets = [("direct", mock_url), ("through", gateway("now", None))]
        if args.baseline_rev:
            tree = work / "baseline"
            subprocess.run(["git", "-C", str(HERE.parent), "worktree", "add", "--detach", str(tree), args.baseline_rev],
                           check=True, capture_output=True)
            targets.append((f"through@{args.baseline_rev}", gateway("base", tree / "src")))
        body = chat_body("bench-model")
        for i in range(args.runs):
            print(f"c=1 run {i + 1}/{args.runs}...", file=sys.stderr)
            res = run_loadgen({"mode": "latency", "requests": args.requests, "warmup": 300, "targets": [
                {"name": n, "url": u, "path": PATH, "body": body} for n, u in targets]}, timeout=1200)
            out["c1"].append({n: res["targets"][n]["total"] | {"errors": res["targets"][n]["errors"]["total"]}
                              for n, _ in targets})
        for n, u in targets:
            print(f"c={args.concurrency} {n}...", file=sys.stderr)
            res = run_loadgen({"mode": "throughput", "url": u, "path": PATH, "body": body, "concurrency": args.concurrency,
                               "duration": args.duration, "warmup_s": 1.0}, timeout=args.duration + 60)
            out["throughput"][n] = res["latency"] | {"rps": res["rps"], "errors": res["errors"]["total"]}
        out["histograms"] = {n: histograms(u) for n, u in targets[1:]}
    finally:
        for c in reversed(children):
            c.stop()
        if tree is not None:
            subprocess.run(["git", "-C", str(HERE.parent), "worktree", "remove", "--force", str(tree)], check=False)

    m = out["machine"]
    print(f"machine: {m['nproc']} cores, {m['cpu_model']}, Python {m['python']}, load at start {m['loadavg_at_start']}")
    names = [n for n, _ in targets]
    print(f"\n1. c=1, {args.requests:,} requests per target per run, ms")
    print("| run | " + " | ".join(f"{n} p50 / p99 / max" for n in names) + " | added p99 (now) |"
          + (" added p99 (baseline) |" if len(names) > 2 else ""))
    print("|---" * (len(names) + 2 + (len(names) > 2)) + "|")
    ok = True
    for i, run in enumerate(out["c1"], 1):
        cells = [f"{run[n]['p50']:.3f} / {run[n]['p99']:.3f} / {run[n]['max']:.1f}" for n in names]
        added = run["through"]["p99"] - run["direct"]["p99"]
        ok = ok and added <= TARGET_ADDED_P99_MS and all(run[n]["errors"] == 0 for n in names)
        extra = f" {run[names[2]]['p99'] - run['direct']['p99']:.3f} |" if len(names) > 2 else ""
        print(f"| {i} | " + " | ".join(cells) + f" | **{added:.3f}** |" + extra)
    print(f"target: added p99 ≤ {TARGET_ADDED_P99_MS} ms at c=1 → {'met' if ok else 'MISSED'}")
    print(f"\n2. c={args.concurrency}, {args.duration:g} s per target")
    print("| target | req/s | p50 ms | p99 ms | max ms | p99/p50 |\n|---|---|---|---|---|---|")
    tp = out["throughput"]
    for n in names:
        t = tp[n]
        print(f"| {n} | {t['rps']:,.0f} | {t['p50']:.2f} | {t['p99']:.2f} | {t['max']:.1f} | {t['p99'] / t['p50']:.2f} |")
    ratio = (tp["through"]["p99"] / tp["through"]["p50"]) / (tp["direct"]["p99"] / tp["direct"]["p50"])
    literal = tp["through"]["p99"] / tp["direct"]["p99"]
    ok2 = ratio <= TARGET_TAIL_RATIO
    print(f"tail ratio through / direct: {ratio:.2f} (target ≤ {TARGET_TAIL_RATIO}) → {'met' if ok2 else 'MISSED'}; "
          f"literal p99 through / p99 direct: {literal:.1f}× (throughput-bound: {tp['direct']['rps'] / tp['through']['rps']:.1f}× "
          "fewer requests per second through the gateway)")
    print("\n3. stalls seen by the gateway over the whole run (from its /metrics)")
    for n, hs in out["histograms"].items():
        for series, h in sorted(hs.items()):
            c = h.get("count", 0)
            print(f"   {n:<22} {series:<45} n={c:>8.0f}  total {h.get('sum', 0) * 1000:8.1f} ms  "
                  f"> 2 ms: {over(h, '0.002'):>5}  > 10 ms: {over(h, '0.01'):>4}  > 50 ms: {over(h, '0.05'):>3}")
    if args.json:
        print(json.dumps(out))
    return 0 if ok and ok2 else 1


if __name__ == "__main__":
    sys.exit(main())
