"""Tier moves of the real torch model on this machine (CPU): all-MiniLM-L6-v2.

    python bench/swap_cpu.py [--reps 5]

Measured in one run against copying the same bytes:
  raw read      the model's safetensors file read from disk (page cache dropped first: cold)
  memcpy        a copy of the model's weight bytes in RAM
  naive load    SentenceTransformer(path) — a from_pretrained-style load, cold and warm
  disk→active   modelyard's SentenceEngine.load from the artifact store (cold and warm)
  host→active / active→host   SentenceEngine.to_active / to_host
On a machine without a GPU the active tier *is* CPU RAM: host↔active moves only change the
model's state (no bytes move), which is what this shows; bench/gpu_swap.py measures real
host↔device moves on a GPU. llama.cpp models: bench/llama_load.py.
"""

from __future__ import annotations

import argparse
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


def drop_cache(folder: Path) -> None:
    for f in folder.rglob("*"):
        if f.is_file():
            fd = os.open(f, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


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
        store = ArtifactStore(Path(tmp) / "artifacts")
        (m,) = import_defaults(store, names=["text-embedding"])
        path = store.path(m)
        weights = next(path.rglob("*.safetensors"))
        nbytes = weights.stat().st_size
        flat = torch.empty(nbytes, dtype=torch.uint8)
        r = {}
        r["raw read (cold)"] = med(lambda: weights.read_bytes(), args.reps, setup=lambda: drop_cache(path))
        r["raw read (warm)"] = med(lambda: weights.read_bytes(), args.reps)
        r["memcpy of the bytes"] = med(lambda: flat.clone(), args.reps)
        r["naive SentenceTransformer(path) (cold)"] = med(
            lambda: SentenceTransformer(str(path), device="cpu", local_files_only=True), args.reps,
            setup=lambda: drop_cache(path),
        )
        r["naive SentenceTransformer(path) (warm)"] = med(
            lambda: SentenceTransformer(str(path), device="cpu", local_files_only=True), args.reps
        )

        def engine_load() -> SentenceEngine:
            e = SentenceEngine("bench")
            e.load(str(path), LoadOptions())
            return e

        engines: list[SentenceEngine] = []
        r["disk→active SentenceEngine.load (cold)"] = med(
            lambda: engines.append(engine_load()), args.reps, setup=lambda: drop_cache(path)
        )
        r["disk→active SentenceEngine.load (warm)"] = med(lambda: engines.append(engine_load()), args.reps)
        e = engines[-1]
        r["active→host"] = med(e.to_host, args.reps, setup=e.to_active)
        r["host→active"] = med(e.to_active, args.reps, setup=e.to_host)
        vec_before = e.embed_each(["same text"])[0][0]
        e.to_host()
        e.to_active()
        same = vec_before == e.embed_each(["same text"])[0][0]
        for x in engines:
            x.unload()
    print(f"all-MiniLM-L6-v2: {nbytes / 2**20:.1f} MiB of weights; CPU only ({os.cpu_count()} cores); median of {args.reps}")
    for k, v in r.items():
        print(f"  {k:<42} {v:9.3f} ms")
    print(f"  embeddings identical after host→active: {same}")
    print("  (no GPU: host and active are the same RAM, so the moves are state changes; see bench/gpu_swap.py)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
