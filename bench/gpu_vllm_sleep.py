"""vLLM under modelyard's supervisor on a GPU machine: cold start, sleep, wake, first requests.

    python3 bench/gpu_vllm_sleep.py --model /path/to/hf-model-dir [--reps 3] [--json OUT.json]

Runs the real ``vllm serve`` through ``modelyard.engines.ProcessEngine`` with the ``vllm`` preset
(``--enable-sleep-mode``; sleep level 1 offloads the weights to CPU RAM and drops the KV cache),
and measures, median of --reps:
  cold start       spawn → /health 200 → warm-up request (what the memory manager waits for)
  first request    the first chat request after the cold start
  sleep            POST /sleep?level=1 (active → host tier); GPU memory before/after (nvidia-smi)
  wake             POST /wake_up (host → active)
  first after wake the first chat request after waking
  stop             SIGTERM to the process group → reaped
Needs vLLM installed and a model directory on local disk (nothing is fetched). Not run yet: the
lent machines so far had no vLLM and could fetch nothing (see docs/design/engines.md).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from engine_http import chat  # noqa: E402

from modelyard.engines import ProcessEngine, preset  # noqa: E402
from modelyard.runtime.base import LoadOptions  # noqa: E402


def gpu_used_mib() -> int | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
        return int(out.split()[0])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def timed(fn) -> float:  # noqa: ANN001
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def one_run(model: str, log_dir: str) -> dict[str, float | int | None]:
    name = "bench-vllm"
    e = ProcessEngine(preset("vllm", name=name, log_dir=log_dir, health_timeout_s=900))
    r: dict[str, float | int | None] = {}
    try:
        r["cold_start_s"] = timed(lambda: e.load(model, LoadOptions(device="cuda")))
        assert e.port is not None
        r["first_request_s"] = chat(e.port, name)
        r["gpu_mib_awake"] = gpu_used_mib()
        r["sleep_s"] = timed(e.to_host)
        r["gpu_mib_asleep"] = gpu_used_mib()
        r["wake_s"] = timed(e.to_active)
        r["first_after_wake_s"] = chat(e.port, name)
    finally:
        r["stop_s"] = timed(e.unload)
    return r


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="a local model directory vLLM can serve")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as logs:
        runs = [one_run(args.model, logs) for _ in range(args.reps)]
    keys = [k for k in runs[0] if k.endswith("_s")]
    print(f"vLLM via modelyard's supervisor, {args.model}, {args.reps} runs (median):")
    for k in keys:
        print(f"  {k:<22} {statistics.median(float(r[k]) for r in runs) * 1000:10.1f} ms")
    print(f"  GPU MiB awake / asleep: {runs[-1]['gpu_mib_awake']} / {runs[-1]['gpu_mib_asleep']}")
    if args.json:
        Path(args.json).write_text(json.dumps(runs, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
