"""Tier moves of the real torch model on this machine (CPU): all-MiniLM-L6-v2.

    python bench/swap_cpu.py [--reps 5]

Measured in one run against copying the same bytes:
  raw read      the model's safetensors file read from disk (page cache dropped first: cold; the
                store holds copies, not hard links, so no other process maps the file and the drop
                is real — checked with mincore, "NOT COLD" otherwise)
  memcpy        a copy of the model's weight bytes in RAM
  naive load    SentenceTransformer(path) — a from_pretrained-style load, cold and warm
  disk→active   modelyard's SentenceEngine.load from the artifact store (cold and warm); + warm-up:
                with the one warm-up request the memory manager runs before the first request
  host→active / active→host   SentenceEngine.to_active / to_host
On a machine without a GPU the active tier *is* CPU RAM: host↔active moves only change the
model's state (no bytes move), which is what this shows; bench/gpu_swap.py measures real
host↔device moves on a GPU. llama.cpp models: bench/llama_load.py.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from modelyard.registry.artifacts import ArtifactStore  # noqa: E402
from modelyard.registry.defaults import import_defaults  # noqa: E402
from modelyard.runtime.pages import drop_from_cache, resident_fraction  # noqa: E402

def drop_cache(folder: Path, resident: list[float]) -> None:
    """Drop the folder's files from the page cache; note the largest share still cached."""
    gc.collect()  # a model still mapping the file keeps its pages: release unloaded ones first
    files = [f for f in folder.rglob("*") if f.is_file()]
    for f in files:
        drop_from_cache(f)
    resident.append(max(resident_fraction(f) for f in files))


def med(fn, reps: int, setup=None) -> float:  # noqa: ANN001
    xs = []
    for _ in range(reps):
        if setup:
            setup()
        t = time.perf_counter()
        fn()
        xs.append(time.perf_counter() - t)
    return statistics.median(xs) * 1000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    import torch
    from sentence_transformers import SentenceTransformer

    from modelyard.runtime.base import LoadOptions
    from modelyard.runtime.sentence import SentenceEngine

    with tempfile.TemporaryDirectory() as tmp:
        store = ArtifactStore(Path(tmp) / "artifacts", hardlink=False)
        (m,) = import_defaults(store, names=["text-embedding"])
        path = store.path(m)
        weights = next(path.rglob("*.safetensors"))
        nbytes = weights.stat().st_size
        flat = torch.empty(nbytes, dtype=torch.uint8)
        r = {}
        resident: list[float] = []
        r["raw read (cold)"] = med(lambda: weights.read_bytes(), args.reps, setup=lambda: drop_cache(path, resident))
        r["raw read (warm)"] = med(lambda: weights.read_bytes(), args.reps)
        r["memcpy of the bytes"] = med(lambda: flat.clone(), args.reps)
        r["naive SentenceTransformer(path) (cold)"] = med(
            lambda: SentenceTransformer(str(path), device="cpu", local_files_only=True), args.reps,
            setup=lambda: drop_cache(path, resident),
        )
        r["naive SentenceTransformer(path) (warm)"] = med(
            lambda: SentenceTransformer(str(path), device="cpu", local_files_only=True), args.reps
        )

        def engine_load(warm: bool = False) -> SentenceEngine:
            e = SentenceEngine("bench")
            e.load(str(path), LoadOptions())
            if warm:
                e.warmup()
            return e

        engines: list[SentenceEngine] = []

        def unload_all() -> None:
            while engines:
                engines.pop().unload()

        def cold() -> None:
            unload_all()
            drop_cache(path, resident)

        r["disk→active SentenceEngine.load (cold)"] = med(lambda: engines.append(engine_load()), args.reps, setup=cold)
        r["disk→active SentenceEngine.load (warm)"] = med(lambda: engines.append(engine_load()), args.reps, setup=unload_all)
        r["disk→active + warm-up (cold)"] = med(lambda: engines.append(engine_load(True)), args.reps, setup=cold)
        r["disk→active + warm-up (warm)"] = med(lambda: engines.append(engine_load(True)), args.reps, setup=unload_all)
        e = engines[-1]
        r["active→host"] = med(e.to_host, args.reps, setup=e.to_active)
        r["host→active"] = med(e.to_active, args.reps, setup=e.to_host)
        vec_before = e.embed_each(["same text"])[0][0]
        e.to_host()
        e.to_active()
        same = vec_before == e.embed_each(["same text"])[0][0]
        unload_all()
    print(f"all-MiniLM-L6-v2: {nbytes / 2**20:.1f} MiB of weights; CPU only ({os.cpu_count()} cores); median of {args.reps}")
    if max(resident) > 0.02:
        print(f"  NOT COLD: up to {max(resident):.0%} of a file stayed cached after a drop")
    for k, v in r.items():
        print(f"  {k:<42} {v:9.3f} ms")
    print(f"  embeddings identical after host→active: {same}")
    print("  (no GPU: host and active are the same RAM, so the moves are state changes; see bench/gpu_swap.py)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
