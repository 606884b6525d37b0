"""How long is a model gone when its engine process dies mid-request?

    .venv/bin/python bench/engine_recovery.py [--window-s 5] [--concurrency 4] [--backoff 0.2]
                                              [--baseline-rev REV]

``modelyard serve`` with one ``kind: process`` model (the mock engine, one deployment, default
router settings, ``restart_backoff_s: --backoff``), preloaded. ``--concurrency`` clients send chat
requests back to back for ``--window-s`` s; the engine exits in the middle of the first one
(mock engine mode ``crash-once``). Reported: the crash request's latency and status, requests
refused (any non-200) in the window, the longest gap between two successful answers (what a user
sees as "down"), and the engine's own restart time (spawn to healthy, from ``/admin/models``).
``--baseline-rev`` runs the same against the gateway of an earlier commit (a git worktree).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from gateway import Child, machine_info  # noqa: E402

MOCK_ENGINE = HERE.parent / "src" / "modelyard" / "testing" / "mock_engine.py"  # stdlib only: runs from any tree
BODY = json.dumps({"model": "solo", "messages": [{"role": "user", "content": "hi"}]}).encode()


def post(url: str) -> tuple[int, float]:
    req = urllib.request.Request(url + "/v1/chat/completions", data=BODY, headers={"content-type": "application/json"})
    t = time.monotonic()
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            r.read()
            return r.status, time.monotonic() - t
    except urllib.error.HTTPError as e:
        e.read()
        return e.code, time.monotonic() - t


def admin(url: str) -> dict:
    with urllib.request.urlopen(url + "/admin/models", timeout=10) as r:
        return next(m for m in json.loads(r.read())["data"] if m["name"] == "solo")


def run(args: argparse.Namespace, work: Path, src: Path | None, label: str) -> dict:
    marker = work / f"crashed-{label}"
    cfg = work / f"{label}.yaml"
    cmd = [sys.executable, str(MOCK_ENGINE), "--port", "{port}", "--mode", f"crash-once:{marker}"]
    cfg.write_text(json.dumps({
        "server": {"host": "127.0.0.1", "access_log": False},
        "memory": {"data_dir": str(work / f"home-{label}")},
        "models": [{"name": "solo", "deployments": [{"kind": "process", "command": cmd, "preload": True,
                                                      "restart_backoff_s": args.backoff, "health_timeout_s": 30}]}],
    }))
    gw = Child(f"gateway-{label}", [sys.executable, "-m", "modelyard", "serve", "--config", str(cfg), "--port", "0"],
               work, env={"PYTHONPATH": str(src)} if src else None)
    try:
        url = gw.wait_for(r"modelyard listening on (http://\S+)", 60).group(1)
        deadline = time.monotonic() + 30
        while admin(url)["state"] != "active" and time.monotonic() < deadline:
            time.sleep(0.05)
        results: list[tuple[float, float, int]] = []  # (start, end, status) relative to t0
        lock = threading.Lock()
        t0 = time.monotonic()

        def client() -> None:
            while time.monotonic() - t0 < args.window_s:
                start = time.monotonic() - t0
                status, took = post(url)
                with lock:
                    results.append((start, start + took, status))

        threads = [threading.Thread(target=client) for _ in range(args.concurrency)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        solo = admin(url)
    finally:
        gw.stop()
    results.sort()
    crash = results[0]  # the first request sent is the one the engine dies in
    ok_ends = sorted(e for _, e, s in results if s == 200)
    gaps = [b - a for a, b in zip([0.0, *ok_ends], ok_ends, strict=False)]
    refused = [s for _, _, s in results if s != 200]
    lat = [e - s for s, e, st in results if st == 200]
    return {
        "label": label, "requests": len(results), "refused": len(refused),
        "refused_statuses": sorted(set(refused)), "crash_request_status": crash[2],
        "crash_request_s": crash[1] - crash[0], "longest_gap_without_success_s": max(gaps) if gaps else None,
        "p50_ms": statistics.median(lat) * 1000 if lat else None,
        "restarts": (solo.get("engine") or {}).get("restarts"), "state_after": solo["state"],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--window-s", type=float, default=5.0)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--backoff", type=float, default=0.2)
    ap.add_argument("--baseline-rev", default=None)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="modelyard-recovery-"))
    out = {"machine": machine_info(), "runs": []}
    tree = None
    if args.baseline_rev:
        tree = work / "baseline"
        subprocess.run(["git", "-C", str(HERE.parent), "worktree", "add", "--detach", str(tree), args.baseline_rev],
                       check=True, capture_output=True)
    try:
        if tree is not None:
            out["runs"].append(run(args, work, tree / "src", args.baseline_rev))
        out["runs"].append(run(args, work, None, "now"))
    finally:
        if tree is not None:
            subprocess.run(["git", "-C", str(HERE.parent), "worktree", "remove", "--force", str(tree)], check=False)
    m = out["machine"]
    print(f"machine: {m['nproc']} cores, {m['cpu_model']}, Python {m['python']}; c={args.concurrency}, "
          f"{args.window_s:g} s window, restart_backoff_s={args.backoff:g}")
    print("\n| gateway | requests | refused (statuses) | crash request | longest gap without a success | p50 of successes | restarts |")
    print("|---|---|---|---|---|---|---|")
    for r in out["runs"]:
        print(f"| {r['label']} | {r['requests']} | {r['refused']} {r['refused_statuses'] or ''} | "
              f"{r['crash_request_status']} in {r['crash_request_s'] * 1000:.0f} ms | "
              f"{(r['longest_gap_without_success_s'] or 0) * 1000:.0f} ms | "
              f"{(r['p50_ms'] or 0):.1f} ms | {r['restarts']} |")
    now = out["runs"][-1]
    ok = now["refused"] == 0 and now["crash_request_status"] == 200 and (now["longest_gap_without_success_s"] or 9) < 1.0
    print(f"\ntarget: the crash request answered, 0 refused, back in well under 1 s: {'met' if ok else 'MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
