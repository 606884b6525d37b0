"""Dynamic batching through the HTTP API: embedding throughput at concurrency 64.

    python bench/embeddings_http.py [--duration 10] [--concurrency 64]

Measures, in one run, all-MiniLM-L6-v2 (the embedded `text-embedding` model):
  offline    the model in this process, `embed_each` on batches of 32 (no server): the ceiling
  batched    `modelyard serve`, c=64 single-sentence /v1/embeddings requests, dynamic batching on
             (max_batch_size 32, max_queue_delay 2 ms)
  unbatched  the same server and model with max_batch_size 1 (each request its own forward pass)
Targets (issue 3): batched ≥ 80 % of offline, and ≥ 3× unbatched. Sentences per second, each
request one sentence. The load generator (bench/loadgen.py) runs in its own process; the machine's
cores are shared by it and the server, as they would be by any client on the same box.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

from gateway import Child, machine_info, run_loadgen  # noqa: E402

from modelyard.registry.artifacts import ArtifactStore  # noqa: E402
from modelyard.registry.defaults import import_defaults  # noqa: E402

SENTENCE = "The quick brown fox jumps over the lazy dog while the platform team watches the dashboards."


def offline(path: str, seconds: float, threads: int) -> float:
    from modelyard.runtime.base import LoadOptions
    from modelyard.runtime.sentence import SentenceEngine

    eng = SentenceEngine("offline")
    eng.load(path, LoadOptions(n_threads=threads))
    batch = [f"{SENTENCE} {i}" for i in range(32)]
    eng.embed_each(batch)  # warm
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        eng.embed_each(batch)
        n += len(batch)
    rate = n / (time.perf_counter() - t0)
    eng.unload()
    return rate


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2,
                    help="torch threads, the same offline and in the server (default: every core)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="modelyard-embbench-") as tmp:
        home = Path(tmp)
        store = ArtifactStore(home / "artifacts")
        (manifest,) = import_defaults(store, names=["text-embedding"])
        off = offline(str(store.path(manifest)), args.duration, args.threads)
        local = {"kind": "local", "artifact": "text-embedding", "keep_alive_s": -1, "preload": True,
                 "n_threads": args.threads}
        config = {
            "memory": {"data_dir": str(home)},
            "server": {"access_log": False},
            "models": [
                {"name": "batched", "deployments": [{**local, "batch": {"max_batch_size": 32, "max_queue_delay_us": 2000}}]},
                {"name": "unbatched", "deployments": [{**local, "batch": {"max_batch_size": 1, "max_queue_delay_us": 0}}]},
            ],
        }
        cfg = home / "config.yaml"
        cfg.write_text(json.dumps(config))
        server = Child("gateway", [sys.executable, "-m", "modelyard", "serve", "--config", str(cfg), "--port", "0"], home)
        results = {}
        try:
            url = "http://127.0.0.1:" + server.wait_for(r"listening on http://127\.0\.0\.1:(\d+)", 120).group(1)
            for model in ("batched", "unbatched"):
                body = json.dumps({"model": model, "input": SENTENCE})
                r = run_loadgen(
                    {"mode": "throughput", "url": url, "path": "/v1/embeddings", "body": body,
                     "concurrency": args.concurrency, "duration": args.duration, "warmup_s": 2.0,
                     "expect": ['"embedding"']},
                    timeout=args.duration * 4 + 60,
                )
                results[model] = r
        finally:
            server.stop()
    info = machine_info()
    print(f"embedding batching benchmark — {info}")
    print(f"  torch threads: {args.threads} (offline and server alike)")
    print(f"  offline batch-32 (in-process, no server)   {off:8.1f} sentences/s")
    for model, r in results.items():
        lat = r["latency"]
        print(f"  HTTP c={args.concurrency} {model:<10} (through modelyard) {r['rps']:8.1f} sentences/s  "
              f"p50 {lat.get('p50', float('nan')):.1f} ms  p99 {lat.get('p99', float('nan')):.1f} ms  "
              f"errors {r['errors']['total']} {r['errors']['samples'][:2]}")
    b = results["batched"].get("rps", 0.0)
    u = results["unbatched"].get("rps", 0.0)
    print(f"  batched / offline   = {b / off:.2f}  (target ≥ 0.80)")
    print(f"  batched / unbatched = {b / u:.2f}  (target ≥ 3)" if u else "  unbatched: no result")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    raise SystemExit(main())
