"""Cold starts of the five embedded models against the cost of reading their bytes, in one run.

    flock /tmp/modelyard-bench.lock .venv/bin/python bench/cold_start.py [--reps 5] [--serves 3] [--skip-serve] [--json OUT]

Part 1, disk → active, in this process. The default models are copied (not hard-linked) into a
temporary artifact store, so their files have inodes of their own that no other process maps and
the page cache can really be dropped for them (checked with mincore: a file still more than 2 %
resident is reported "NOT COLD"). Every model is built exactly as ``modelyard serve`` builds it
(the default config's load options, ``n_threads`` = cores − 1, the engine factory of
``backends/local_models``), its engine prepared once as at server start, then, alternating, --reps
times each:
  raw read      the model's files (for intent: its classifier and the MiniLM encoder folder) read
                into memory in 64 MiB chunks, page cache dropped first
  disk→active   ``engine.load`` + the warm-up requests the memory manager runs before the first
                request (``warmup_requests`` of the config), page cache dropped first
and disk→active again with the files cached ("warm"). Medians; targets: torch models (text-embedding,
intent) ≤ 1.3× the raw read, GGUF (chat, coder) ≤ raw read + 0.2 s.

Part 2, a fresh ``modelyard serve`` (this store as MODELYARD_HOME): the time until it says it is
listening, then for each model in turn the first request (which loads it) and, after
``POST /admin/models/NAME/unload``, the same request again (a warm load: the files are cached). For
both: the request's latency and the load time the server reports (``/admin/models``
``average_load_s``). Repeated with --serves fresh servers; medians. Target: first ≤ 1.5× the warm
one.

``--src DIR`` benchmarks another source tree (e.g. a ``git worktree`` of an older commit) with this
script: its engines, its factories and its ``modelyard serve`` (engines without ``prepare`` are
simply not prepared, as that code never did).
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parents[1] / "src"
SRC = Path(sys.argv[sys.argv.index("--src") + 1]).resolve() if "--src" in sys.argv else HERE
sys.path.insert(0, str(SRC))


def _this_trees(module: str, rel: str):  # noqa: ANN202 - measuring helpers from this tree, whatever --src says
    spec = importlib.util.spec_from_file_location(module, HERE / rel)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


_pages = _this_trees("bench_pages", "modelyard/runtime/pages.py")
drop_from_cache, resident_fraction = _pages.drop_from_cache, _pages.resident_fraction

from modelyard.backends.local_models import _encoder_path, _engine_for  # noqa: E402
from modelyard.config.defaults import default_settings  # noqa: E402
from modelyard.registry.artifacts import ArtifactStore  # noqa: E402
from modelyard.registry.defaults import import_defaults  # noqa: E402
from modelyard.runtime.base import LoadOptions  # noqa: E402


def prepare_all(jobs: list[tuple[str, Any, str, LoadOptions]]) -> dict[str, Any]:
    """What ``modelyard serve`` does at start (``prepare_engines``), where the tree has it."""
    try:
        from modelyard.backends.local_models import prepare_engines
    except ImportError:
        return {"seconds": {}, "errors": {"*": "this tree prepares nothing at start"}}
    r = prepare_engines(jobs)
    return {"seconds": r.seconds, "errors": r.errors}


TARGETS = {"text-embedding": ("ratio", 1.3), "intent": ("ratio", 1.3), "chat": ("plus", 0.2), "coder": ("plus", 0.2)}
REQUESTS = {
    "chat": ("/v1/chat/completions", {"model": "chat", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}),
    "coder": ("/v1/completions", {"model": "coder", "prompt": "def add(a, b):", "max_tokens": 1}),
    "text-embedding": ("/v1/embeddings", {"model": "text-embedding", "input": "hello world"}),
    "moderation": ("/v1/moderations", {"model": "moderation", "input": "you are an idiot"}),
    "intent": ("/v1/classifications", {"model": "intent", "input": "I forgot my password"}),
}


def files_of(path: str) -> list[str]:
    p = Path(path)
    return [str(p)] if p.is_file() else sorted(str(f) for f in p.rglob("*") if f.is_file())


def drop(files: list[str]) -> float:
    """Drop the files from the page cache; the largest share still resident afterwards."""
    for f in files:
        drop_from_cache(f)
    return max(resident_fraction(f) for f in files)


def raw_read(files: list[str]) -> float:
    buf = bytearray(64 << 20)
    t0 = time.perf_counter()
    for f in files:
        with open(f, "rb", buffering=0) as fh:
            while fh.readinto(buf):
                pass
    return time.perf_counter() - t0


def disk_to_active(factory: Any, path: str, opts: LoadOptions, warmups: int) -> float:
    engine = factory()
    t0 = time.perf_counter()
    engine.load(path, opts)
    for _ in range(warmups):
        engine.warmup()
    dt = time.perf_counter() - t0
    engine.unload()
    del engine
    gc.collect()  # release the mappings: mapped pages cannot be dropped for the next cold rep
    return dt


def verdict(name: str, raw: float, load: float) -> tuple[str, str]:
    kind, x = TARGETS.get(name, (None, None))
    if kind == "ratio":
        return f"≤ {x}×", "met" if load <= x * raw else f"MISSED by {(load - x * raw) * 1e3:.0f} ms"
    if kind == "plus":
        return f"≤ raw + {x * 1e3:.0f} ms", "met" if load <= raw + x else f"MISSED by {(load - raw - x) * 1e3:.0f} ms"
    return "—", ""


def part1(store: ArtifactStore, reps: int) -> list[dict[str, Any]]:
    settings = default_settings()
    cores = os.cpu_count() or 2
    models = []
    for m in settings.models:
        d = m.deployments[0]
        manifest = store.get(d.artifact)
        factory, path, _, _ = _engine_for(store, m.name, manifest)
        opts = LoadOptions(n_ctx=d.n_ctx, n_parallel=d.n_parallel, n_threads=d.n_threads or max(1, cores - 1))
        files = files_of(path)
        encoder = _encoder_path(store, manifest)
        if encoder:
            files += files_of(encoder)
        models.append((m.name, factory, path, opts, d.warmup_requests, files))
    t0 = time.perf_counter()
    report = prepare_all([(n, f, p, o) for n, f, p, o, _, _ in models])
    print(f"engines prepared as at server start in {time.perf_counter() - t0:.2f} s "
          f"({', '.join(f'{k} {v:.2f}' for k, v in report['seconds'].items())}) {report['errors'] or ''}")
    out = []
    for name, factory, path, opts, warmups, files in models:
        raws, colds, warms, resident = [], [], [], 0.0
        disk_to_active(factory, path, opts, warmups)  # one untimed load: first-in-process costs are part 2's subject
        for _ in range(reps):
            resident = max(resident, drop(files))
            raws.append(raw_read(files))
            resident = max(resident, drop(files))
            colds.append(disk_to_active(factory, path, opts, warmups))
        for _ in range(reps):
            warms.append(disk_to_active(factory, path, opts, warmups))
        r = {"model": name, "bytes": sum(os.path.getsize(f) for f in files), "raw_cold_s": statistics.median(raws),
             "cold_s": statistics.median(colds), "warm_s": statistics.median(warms), "resident_after_drop": resident,
             "raw_all_s": raws, "cold_all_s": colds}
        r["target"], r["verdict"] = verdict(name, r["raw_cold_s"], r["cold_s"])
        out.append(r)
        print(f"  {name}: raw {r['raw_cold_s'] * 1e3:.0f} ms, disk→active {r['cold_s'] * 1e3:.0f} ms cold / "
              f"{r['warm_s'] * 1e3:.0f} ms warm", flush=True)
    return out


def _post(url: str, body: dict[str, Any]) -> float:
    import httpx

    t0 = time.perf_counter()
    r = httpx.post(url, json=body, timeout=300)
    dt = time.perf_counter() - t0
    if r.status_code != 200:
        raise SystemExit(f"{url}: {r.status_code} {r.text[:300]}")
    return dt


def _loads(base: str) -> dict[str, tuple[int, float]]:
    import httpx

    rows = httpx.get(f"{base}/admin/models", timeout=30).json()["data"]
    return {m["name"]: (m["loads"], m["average_load_s"] or 0.0) for m in rows}


def part2(home: Path, serves: int) -> dict[str, Any]:
    runs = [serve_once(home) for _ in range(serves)]
    rows = []
    for i, name in enumerate(REQUESTS):
        each = [run["models"][i] for run in runs]
        rows.append({k: (name if k == "model" else statistics.median(e[k] for e in each)) for k in each[0]})
        rows[-1]["ratios"] = [e["first_request_s"] / e["warm_request_s"] for e in each]
    return {"serve_to_listening_s": statistics.median(r["serve_to_listening_s"] for r in runs), "models": rows,
            "runs": runs}


def serve_once(home: Path) -> dict[str, Any]:
    import httpx

    env = {**os.environ, "MODELYARD_HOME": str(home), "PYTHONPATH": str(SRC)}
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "modelyard", "serve", "--port", "0"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            m = re.search(r"listening on (http://\S+)", line)
            if m:
                base = m.group(1)
                break
        else:
            raise SystemExit("modelyard serve exited before listening")
        started = time.perf_counter() - t0
        rows = []
        for name, (path, body) in REQUESTS.items():
            first = _post(base + path, body)
            _, first_load = _loads(base)[name]
            r = httpx.post(f"{base}/admin/models/{name}/unload", timeout=60)
            if r.status_code != 200:
                raise SystemExit(f"unload {name}: {r.status_code} {r.text[:200]}")
            warm = _post(base + path, body)
            loads, avg = _loads(base)[name]
            warm_load = avg * loads - first_load * (loads - 1)  # average over two loads → the second
            rows.append({"model": name, "first_request_s": first, "warm_request_s": warm,
                         "first_load_s": first_load, "warm_load_s": warm_load})
            print(f"  {name}: first request {first * 1e3:.0f} ms (load {first_load * 1e3:.0f}), after unload "
                  f"{warm * 1e3:.0f} ms (load {warm_load * 1e3:.0f})", flush=True)
        return {"serve_to_listening_s": started, "models": rows}
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def report(p1: list[dict[str, Any]], p2: dict[str, Any] | None, reps: int) -> None:
    print(f"\n## disk → active vs reading the bytes (cold = page cache dropped; median of {reps})")
    print("| model | bytes | raw read cold | disk→active cold | ratio | target | | disk→active warm |")
    print("|---|---|---|---|---|---|---|---|")
    for r in p1:
        cold = "" if r["resident_after_drop"] <= 0.02 else f" NOT COLD ({r['resident_after_drop']:.0%} resident)"
        print(f"| {r['model']} | {r['bytes'] / 1e6:.1f} MB | {r['raw_cold_s'] * 1e3:.0f} ms | {r['cold_s'] * 1e3:.0f} ms{cold} "
              f"| {r['cold_s'] / r['raw_cold_s']:.2f}× (+{(r['cold_s'] - r['raw_cold_s']) * 1e3:.0f} ms) | {r['target']} "
              f"| {r['verdict']} | {r['warm_s'] * 1e3:.0f} ms |")
    if p2 is None:
        return
    print(f"\n## fresh `modelyard serve` (median of {len(p2['runs'])}): listening after {p2['serve_to_listening_s']:.1f} s;"
          " first request vs warm (after unload, files cached)")
    print("| model | first request | warm request | ratio | first load | warm load | ratio | target ≤ 1.5× |")
    print("|---|---|---|---|---|---|---|---|")
    for r in p2["models"]:
        rq, ld = r["first_request_s"] / r["warm_request_s"], r["first_load_s"] / max(r["warm_load_s"], 1e-9)
        print(f"| {r['model']} | {r['first_request_s'] * 1e3:.0f} ms | {r['warm_request_s'] * 1e3:.0f} ms | {rq:.2f}× "
              f"| {r['first_load_s'] * 1e3:.0f} ms | {r['warm_load_s'] * 1e3:.0f} ms | {ld:.2f}× "
              f"| {'met' if rq <= 1.5 else 'MISSED'} (each serve: {', '.join(f'{x:.2f}' for x in r['ratios'])}) |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--serves", type=int, default=3, help="fresh servers for part 2")
    ap.add_argument("--skip-serve", action="store_true", help="part 1 only")
    ap.add_argument("--skip-disk", action="store_true", help="part 2 only")
    ap.add_argument("--json", metavar="OUT")
    ap.add_argument("--src", metavar="DIR", help="the source tree to benchmark (default: this one)")
    args = ap.parse_args()
    with open("/proc/cpuinfo") as f:
        cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), platform.processor())
    print(f"cold starts of {SRC} | {os.cpu_count()} cores, {cpu}, Python {platform.python_version()} | "
          f"load average {os.getloadavg()[0]:.2f} at start")
    with tempfile.TemporaryDirectory(prefix="modelyard-cold-") as tmp:
        store = ArtifactStore(Path(tmp) / "artifacts", hardlink=False)  # own inodes: droppable
        t0 = time.perf_counter()
        import_defaults(store)
        print(f"default models copied into a private store in {time.perf_counter() - t0:.1f} s")
        p1 = [] if args.skip_disk else part1(store, args.reps)
        p2 = None if args.skip_serve else part2(Path(tmp), args.serves)
    report(p1, p2, args.reps)
    print(f"\nload average {os.getloadavg()[0]:.2f} at the end (other processes share these cores)")
    if args.json:
        Path(args.json).write_text(json.dumps({"disk_to_active": p1, "serve": p2}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
