"""The latency the Ray hop adds: the same small requests through the gateway, in-process vs Ray Serve.

    flock /tmp/modelyard-bench.lock .venv/bin/python bench/ray_hop.py [-n 200] [--max-tokens 1]

Starts a local Ray (``ray.init(num_cpus=2)``), imports ``chat`` and ``moderation`` into a temporary
artifact store, then two real gateways on it: ``modelyard serve`` (models in-process) and
``modelyard serve --ray ADDRESS`` (each model a Ray Serve deployment, called through its handle).
For each gateway and model, after 10 warm-up requests, ``-n`` sequential requests (one client, so
the hop is measured, not the queueing): a chat completion with ``max_tokens`` 1 (SmolLM2 on
xllamacpp) and a moderation (the sklearn classifier: the hop against a ~1 ms model). Prints p50 /
p99 / mean per (model, mode) and the Ray/in-process ratio; writes ``bench/results/ray_hop-<date>.txt``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

REPO = Path(__file__).resolve().parents[1]
LISTENING = re.compile(r"modelyard listening on (http://127\.0\.0\.1:\d+)")


def config(home: Path) -> dict:
    return {
        "memory": {"data_dir": str(home)},
        "spend": {"enabled": False},
        "server": {"access_log": False, "graceful_timeout_s": 3},
        "ray": {"num_cpus": 0.1},
        "models": [
            {"name": "chat", "deployments": [{"kind": "local", "artifact": "chat", "n_ctx": 1024, "n_parallel": 2,
                                              "preload": True}]},
            {"name": "moderation", "deployments": [{"kind": "local", "artifact": "moderation", "preload": True}]},
        ],
    }


def start(cfg: Path, extra: list[str], env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    p = subprocess.Popen([sys.executable, "-m", "modelyard", "serve", "--config", str(cfg), "--port", "0", *extra],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    assert p.stdout is not None
    deadline = time.monotonic() + 180
    for line in p.stdout:
        m = LISTENING.search(line)
        if m:
            return p, m.group(1)
        if time.monotonic() > deadline:
            break
    p.kill()
    raise SystemExit(f"gateway {extra} did not start")


def stop(p: subprocess.Popen) -> None:
    p.terminate()
    try:
        p.wait(30)
    except subprocess.TimeoutExpired:
        p.kill()


def measure(url: str, model: str, n: int, max_tokens: int) -> list[float]:
    if model == "chat":
        path, body = "/v1/chat/completions", {"model": "chat", "messages": [{"role": "user", "content": "Hi"}],
                                               "max_tokens": max_tokens, "temperature": 0}
    else:
        path, body = "/v1/moderations", {"model": "moderation", "input": "you are a damn idiot"}
    out = []
    with httpx.Client(base_url=url, timeout=60) as c:
        for i in range(n + 10):
            t0 = time.perf_counter()
            r = c.post(path, json=body)
            dt_ms = (time.perf_counter() - t0) * 1000
            r.raise_for_status()
            if i >= 10:
                out.append(dt_ms)
    return out


def cpu() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=200)
    ap.add_argument("--max-tokens", type=int, default=1)
    args = ap.parse_args()
    import ray

    from modelyard.registry.artifacts import ArtifactStore
    from modelyard.registry.defaults import import_defaults

    ctx = ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 * 2**20, log_to_driver=False)
    rows: list[tuple[str, str, list[float]]] = []
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        import_defaults(ArtifactStore(home / "artifacts"), names=["chat", "moderation"])
        cfg = home / "config.yaml"
        cfg.write_text(yaml.safe_dump(config(home)))
        env = dict(os.environ)
        for mode, extra in (("in-process", []), ("ray", ["--ray", ctx.address_info["address"]])):
            p, url = start(cfg, extra, env)
            try:
                for model in ("chat", "moderation"):
                    rows.append((model, mode, measure(url, model, args.n, args.max_tokens)))
            finally:
                stop(p)
    from ray import serve

    serve.shutdown()
    ray.shutdown()
    lines = [f"# bench/ray_hop.py {dt.date.today()} — {cpu()}, {os.cpu_count()} cores, "
             f"ray {ray.__version__}, n={args.n} sequential, chat max_tokens={args.max_tokens}",
             f"{'model':<11} {'mode':<11} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8}"]
    by = {(m, mode): xs for m, mode, xs in rows}
    for m, mode, xs in rows:
        lines.append(f"{m:<11} {mode:<11} {pct(xs, .5):8.2f} {pct(xs, .99):8.2f} {statistics.fmean(xs):8.2f}")
    for m in ("chat", "moderation"):
        a, b = by[(m, "in-process")], by[(m, "ray")]
        lines.append(f"{m}: Ray hop adds p50 {pct(b, .5) - pct(a, .5):+.2f} ms ({pct(b, .5) / pct(a, .5):.2f}x), "
                     f"p99 {pct(b, .99) - pct(a, .99):+.2f} ms ({pct(b, .99) / pct(a, .99):.2f}x)")
    text = "\n".join(lines)
    print(text)
    out = REPO / "bench" / "results" / f"ray_hop-{dt.date.today()}.txt"
    out.write_text(text + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
