"""Validate the simulator against the real embedded default (issue 12 §3).

    flock /tmp/modelyard-bench.lock .venv/bin/python bench/sim_validate.py [--requests 90] [--active 450MiB]

1. Starts ``modelyard serve`` with four of the embedded models (chat, text-embedding, intent,
   moderation) and an active-tier budget too small for all of them (``--active``, host tier 0), so
   they swap as the trace moves between them.
2. Warm-up, measured on this machine: each model's footprint (``/admin/models`` accounted active
   bytes), its load time (``average_load_s``) and its warm request latency (median of 7 through
   the HTTP API, spaced by the trace's mean gap): these are the simulator's inputs, printed.
3. Replays a seeded trace of ``--requests`` over the real HTTP API (open loop, arrivals at their
   timestamps; runs of the same model, so that the budget forces swaps): the server's swaps are the
   ``loads`` it reports in ``/admin/models`` during the replay, its p50 the measured end-to-end latency.
4. Runs the simulator (``tiered``, one "GPU" = this CPU: the memory manager's policy, this budget,
   the models active when the replay began) on the same trace and prints both and the ratios
   (target: within 20 %). Writes ``bench/results/sim_validate-<date>.txt``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import io
import json
import random
import statistics
import sys
import tempfile
import time
from contextlib import redirect_stdout
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))
from gateway import Child, machine_info  # noqa: E402

from modelyard.planning.simulate import PolicySetup, SimConfig, SimGpu, SimModel, simulate  # noqa: E402
from modelyard.planning.trace import build  # noqa: E402

MODELS = ("chat", "text-embedding", "intent", "moderation")
BODIES = {
    "chat": ("/v1/chat/completions", {"model": "chat", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}),
    "text-embedding": ("/v1/embeddings", {"model": "text-embedding", "input": ["a sentence to embed"]}),
    "intent": ("/v1/classifications", {"model": "intent", "input": "I forgot my password"}),
    "moderation": ("/v1/moderations", {"model": "moderation", "input": "have a nice day"}),
}


def parse_bytes(s: str) -> int:
    units = {"KiB": 2**10, "MiB": 2**20, "GiB": 2**30}
    for u, f in units.items():
        if s.endswith(u):
            return int(float(s[:-len(u)]) * f)
    return int(s)


def admin(c: httpx.Client) -> dict[str, dict]:
    return {m["name"]: m for m in c.get("/admin/models").json()["data"]}


def make_trace(n: int, seed: int, gap_s: float) -> list[tuple[float, str]]:
    """Runs of 3-8 requests to one model, the next run's model a different one; exponential gaps."""
    rng = random.Random(seed)
    out: list[tuple[float, str]] = []
    t, model = 0.0, rng.choice(MODELS)
    while len(out) < n:
        for _ in range(rng.randint(3, 8)):
            if len(out) == n:
                break
            out.append((t, model))
            t += rng.expovariate(1 / gap_s)
        model = rng.choice([m for m in MODELS if m != model])
    return out


async def replay(url: str, trace: list[tuple[float, str]]) -> list[float]:
    lat = [0.0] * len(trace)
    async with httpx.AsyncClient(base_url=url, timeout=120) as c:
        t0 = time.monotonic()

        async def one(i: int, ts: float, model: str) -> None:
            await asyncio.sleep(max(0.0, t0 + ts - time.monotonic()))
            path, body = BODIES[model]
            s = time.monotonic()
            r = await c.post(path, json=body)
            r.raise_for_status()
            lat[i] = time.monotonic() - s

        await asyncio.gather(*(one(i, ts, m) for i, (ts, m) in enumerate(trace)))
    return lat


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=90)
    ap.add_argument("--active", default="450MiB")
    ap.add_argument("--gap-s", type=float, default=0.35, help="mean time between arrivals")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--out", default=str(HERE / "results"))
    a = ap.parse_args()
    from modelyard.registry.artifacts import ArtifactStore
    from modelyard.registry.defaults import import_defaults

    budget = parse_bytes(a.active)
    work = Path(tempfile.mkdtemp(prefix="modelyard-simval-"))
    home = work / "home"
    import_defaults(ArtifactStore(home / "artifacts"), names=list(MODELS))
    cfg = {"server": {"host": "127.0.0.1"}, "memory": {"data_dir": str(home), "active": a.active, "host": 0},
           "router": {"queue": {"size": 1024, "ttl_s": 120}},
           "models": [{"name": m, "deployments": [{"kind": "local", "artifact": m, **(
               {"n_ctx": 512, "n_parallel": 1} if m == "chat" else {})}]} for m in MODELS]}
    (work / "cfg.json").write_text(json.dumps(cfg))
    gw = Child("gateway", [sys.executable, "-m", "modelyard", "serve", "--config", str(work / "cfg.json"), "--port", "0"], work)
    report = io.StringIO()
    try:
        url = gw.wait_for(r"modelyard listening on (http://\S+)", 180).group(1)
        with httpx.Client(base_url=url, timeout=120) as c, redirect_stdout(report):
            print(f"sim_validate {dt.date.today()}: {machine_info()}")
            print(f"active budget {a.active} ({budget} bytes), host tier 0; trace: {a.requests} requests, "
                  f"mean gap {a.gap_s} s, seed {a.seed}")
            warm: dict[str, float] = {}
            for m in MODELS:  # each loads (evicting others as needed), then 5 warm requests
                path, body = BODIES[m]
                c.post(path, json=body).raise_for_status()
                times = []
                for _ in range(7):  # spaced as the replay's arrivals are: back to back runs hotter
                    time.sleep(a.gap_s)
                    s = time.monotonic()
                    c.post(path, json=body).raise_for_status()
                    times.append(time.monotonic() - s)
                warm[m] = statistics.median(times)
            for m in MODELS:  # a second load of each, for the load time's average
                path, body = BODIES[m]
                c.post(path, json=body).raise_for_status()
            snap = admin(c)
            sims = []
            print("measured inputs (this machine):")
            for m in MODELS:
                s = snap[m]
                footprint = s["accounted"]["active"] or s["bytes"]["active"]
                sims.append(SimModel(m, footprint, 0, fixed_s=warm[m], load_s=s["average_load_s"], can_host=False))
                print(f"  {m:<15} footprint {footprint / 2**20:7.1f} MiB  load {s['average_load_s'] * 1000:7.1f} ms "
                      f"(mean of {s['loads']})  warm request {warm[m] * 1000:6.1f} ms")
            initial = tuple(m for m in MODELS if snap[m]["tier"] == "active")
            loads0 = sum(s["loads"] for s in snap.values())
            trace = make_trace(a.requests, a.seed, a.gap_s)
            lat = asyncio.run(replay(url, trace))
            snap = admin(c)
            swaps = sum(s["loads"] for s in snap.values()) - loads0
            p50 = statistics.median(lat)
            t = build([(ts, m, 0, 0) for ts, m in trace], MODELS)
            gpu = SimGpu("this CPU", budget, 0, 1e12, 1e12, 0.0, 1.0, 1.0)
            r = simulate(t, sims, gpu, PolicySetup("tiered", 1, None, initial=(initial,)), SimConfig(slo_ttft_s=1.0))
            print(f"active at the replay's start: {', '.join(initial) or 'none'}")
            print(f"{'':<12} {'server':>10} {'simulator':>10} {'sim/server':>10}")
            print(f"{'swaps':<12} {swaps:>10} {r.swaps:>10} {r.swaps / swaps if swaps else float('nan'):>10.2f}")
            print(f"{'p50 latency':<12} {p50 * 1000:>8.1f}ms {r.latency_p50_s * 1000:>8.1f}ms {r.latency_p50_s / p50:>10.2f}")
            print(f"{'p99 latency':<12} {sorted(lat)[int(0.99 * (len(lat) - 1))] * 1000:>8.1f}ms "
                  f"{r.latency_p99_s * 1000:>8.1f}ms")
            ok = swaps and abs(r.swaps / swaps - 1) <= 0.2 and abs(r.latency_p50_s / p50 - 1) <= 0.2
            print(f"within 20 %: {'yes' if ok else 'NO'}")
    finally:
        gw.stop()
    text = report.getvalue()
    print(text, end="")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"sim_validate-{dt.date.today()}.txt"
    path.write_text(text)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
