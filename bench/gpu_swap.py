"""Host <-> device swap bandwidth of torch models, against raw copies of the same bytes.

Run on a machine with a CUDA GPU (it also runs on CPU, where it measures memcpy, to check the
script itself):

    python bench/gpu_swap.py [--sizes-mb 90,1024,4096] [--reps 5] [--json OUT.json]

For each synthetic transformer-shaped model (realistic tensor count and shapes; weights are not
trained — bandwidth does not care) it measures, median of --reps:
  raw    one pinned buffer of the model's bytes → device, and back; pageable → device
  naive  module.to(device) from pageable memory, and .to("cpu") back (what most servers do)
  flat   modelyard.runtime.torch_swap.FlatWeights: host (pinned) → active, active → host (copy),
         active → host with a kept host copy (no transfer)
  disk   disk → active: read the flat file into pinned memory + one copy, against the naive
         torch.load(state_dict) + load_state_dict + .to(device); page cache dropped before each
and the device memory allocated/reserved after a demotion, before and after empty_cache.
Targets (issue 3): host→active ≤ 1.3× the raw pinned copy; disk→active ≥ 5× faster than naive.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from modelyard.runtime.pages import drop_from_cache  # noqa: E402
from modelyard.runtime.torch_swap import FlatWeights, read_file_to_device  # noqa: E402


class Block(nn.Module):
    def __init__(self, h: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(h)
        self.qkv = nn.Linear(h, 3 * h)
        self.out = nn.Linear(h, h)
        self.ln2 = nn.LayerNorm(h)
        self.up = nn.Linear(h, 4 * h)
        self.down = nn.Linear(4 * h, h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, _, v = self.qkv(self.ln1(x)).chunk(3, dim=-1)
        x = x + self.out(q * v)
        return x + self.down(torch.relu(self.up(self.ln2(x))))


def make_model(target_mb: int, dtype: torch.dtype) -> nn.Module:
    """A transformer-shaped stack of about target_mb of weights (12·h² params per block)."""
    item = torch.empty((), dtype=dtype).element_size()
    h = 384 if target_mb <= 128 else 1024 if target_mb <= 1536 else 2048
    per_block = 12 * h * h * item
    n = max(1, round(target_mb * 2**20 / per_block))
    with torch.device("meta"):
        model = nn.Sequential(*[Block(h) for _ in range(n)]).to(dtype)
    model = model.to_empty(device="cpu")
    with torch.no_grad():
        for i, p in enumerate(model.parameters()):
            p.copy_(torch.full_like(p, 0.001 * (i % 7 + 1)))
    return model.eval()


def timed(fn, reps: int, setup=None) -> float:  # noqa: ANN001
    xs = []
    for _ in range(reps):
        if setup is not None:
            setup()
        t = time.perf_counter()
        fn()
        xs.append(time.perf_counter() - t)
    return statistics.median(xs)


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def as_buffer(t: torch.Tensor) -> memoryview:
    """A writable view of a contiguous CPU tensor's bytes (no numpy needed)."""
    n = t.numel() * t.element_size()
    return memoryview((ctypes.c_ubyte * n).from_address(t.data_ptr())).cast("B")


def bench_size(mb: int, dtype: torch.dtype, device: torch.device, reps: int, tmp: Path) -> dict:
    model = make_model(mb, dtype)
    nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
    ntensors = sum(1 for _ in model.parameters())
    gb = nbytes / 1e9
    pin = device.type == "cuda"
    r: dict = {"target_mb": mb, "dtype": str(dtype), "bytes": nbytes, "tensors": ntensors}
    x = torch.randn(4, model[0].qkv.in_features, dtype=dtype)
    with torch.no_grad():
        ref = model.to(device)(x.to(device)).float().cpu()
    model.to("cpu")

    # raw copies of the same bytes
    raw_host = torch.empty(nbytes, dtype=torch.uint8, pin_memory=pin)
    raw_page = torch.empty(nbytes, dtype=torch.uint8)
    raw_dev = torch.empty(nbytes, dtype=torch.uint8, device=device)
    r["raw_pinned_h2d_s"] = timed(lambda: (raw_dev.copy_(raw_host, non_blocking=pin), sync()), reps)
    r["raw_pageable_h2d_s"] = timed(lambda: (raw_dev.copy_(raw_page), sync()), reps)
    r["raw_d2h_pinned_s"] = timed(lambda: (raw_host.copy_(raw_dev, non_blocking=pin), sync()), reps)
    raw_dev = raw_page = None  # free the device buffer before the next measurements

    # naive: module.to(device) from pageable memory, and back
    r["naive_to_device_s"] = timed(lambda: (model.to(device), sync()), reps, setup=lambda: model.to("cpu"))
    r["naive_to_cpu_s"] = timed(lambda: (model.to("cpu"), sync()), reps, setup=lambda: (model.to(device), sync()))
    model.to("cpu")

    # flat: one bulk copy per dtype from pinned host memory
    flat = FlatWeights(model, pin=pin)
    r["flat_pinned"] = flat.is_pinned()
    r["flat_host_to_active_s"] = timed(lambda: flat.to_device(device), reps, setup=flat.to_host)
    r["flat_active_to_host_copy_s"] = timed(lambda: flat.to_host(), reps, setup=lambda: flat.to_device(device))
    r["flat_active_to_host_kept_s"] = timed(
        lambda: flat.to_host(), reps, setup=lambda: flat.to_device(device, keep_host_copy=True)
    )
    flat.to_device(device)
    with torch.no_grad():
        out = model(x.to(device)).float().cpu()
    r["output_identical_after_swaps"] = bool(torch.equal(out, ref))
    if device.type == "cuda":
        flat.to_host()
        r["after_demotion_allocated"] = torch.cuda.memory_allocated()
        r["after_demotion_reserved"] = torch.cuda.memory_reserved()
        torch.cuda.empty_cache()
        r["after_empty_cache_reserved"] = torch.cuda.memory_reserved()
        flat.to_device(device)

    # disk → active: flat file vs torch.load + load_state_dict + .to(device)
    flat.to_host()
    flat_file = tmp / f"flat-{mb}.bin"
    with open(flat_file, "wb") as fh:
        for g in flat._groups:  # noqa: SLF001 - the bench writes the artifact format directly
            fh.write(as_buffer(g.flat))
    sd_file = tmp / f"sd-{mb}.pt"
    torch.save({k: v.clone() for k, v in model.state_dict().items()}, sd_file)

    def disk_flat() -> None:
        dev = torch.empty(nbytes, dtype=torch.uint8, device=device)
        read_file_to_device(str(flat_file), dev)
        sync()

    def disk_naive() -> None:
        fresh = make_model_shell(model)
        fresh.load_state_dict(torch.load(sd_file, map_location="cpu"))
        fresh.to(device)
        sync()

    def disk_from_pretrained_style() -> None:
        fresh = make_model_initialised(model)  # builds the module with its random init first
        fresh.load_state_dict(torch.load(sd_file, map_location="cpu"))
        fresh.to(device)
        sync()

    r["disk_flat_to_active_s"] = timed(disk_flat, reps, setup=lambda: drop_from_cache(str(flat_file)))
    r["disk_from_pretrained_style_s"] = timed(
        disk_from_pretrained_style, min(reps, 3), setup=lambda: drop_from_cache(str(sd_file))
    )
    r["disk_naive_to_active_s"] = timed(disk_naive, reps, setup=lambda: drop_from_cache(str(sd_file)))
    r["raw_file_read_s"] = timed(lambda: Path(flat_file).read_bytes(), reps, setup=lambda: drop_from_cache(str(flat_file)))
    flat_file.unlink()
    sd_file.unlink()

    r["raw_pinned_h2d_GBps"] = gb / r["raw_pinned_h2d_s"]
    r["flat_host_to_active_GBps"] = gb / r["flat_host_to_active_s"]
    r["host_to_active_vs_raw"] = r["flat_host_to_active_s"] / r["raw_pinned_h2d_s"]
    r["naive_vs_flat_host_to_active"] = r["naive_to_device_s"] / r["flat_host_to_active_s"]
    r["disk_naive_vs_flat"] = r["disk_naive_to_active_s"] / r["disk_flat_to_active_s"]
    r["disk_from_pretrained_vs_flat"] = r["disk_from_pretrained_style_s"] / r["disk_flat_to_active_s"]
    return r


def make_model_initialised(model: nn.Module) -> nn.Module:
    """The module built the ordinary way (random init on the CPU), as from_pretrained does."""
    dtype = next(model.parameters()).dtype
    return nn.Sequential(*[Block(b.qkv.in_features) for b in model]).to(dtype)


def make_model_shell(model: nn.Module) -> nn.Module:
    with torch.device("meta"):
        shell = nn.Sequential(*[Block(b.qkv.in_features) for b in model]).to(next(model.parameters()).dtype)
    return shell.to_empty(device="cpu")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes-mb", default="90,1024,4096")
    ap.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype)
    info = {
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu (no CUDA: memcpy only)",
        "cpu_count": os.cpu_count(),
    }
    print(f"gpu_swap: {info}", flush=True)
    results = []
    with tempfile.TemporaryDirectory() as d:
        for mb in (int(s) for s in args.sizes_mb.split(",")):
            r = bench_size(mb, dtype, device, args.reps, Path(d))
            results.append(r)
            ms = lambda k, r=r: f"{r[k] * 1000:9.2f}"  # noqa: E731
            print(
                f"\n{r['bytes'] / 2**20:8.1f} MiB {r['dtype']}, {r['tensors']} tensors\n"
                f"  raw pinned→device   {ms('raw_pinned_h2d_s')} ms  ({r['raw_pinned_h2d_GBps']:.1f} GB/s)\n"
                f"  raw pageable→device {ms('raw_pageable_h2d_s')} ms\n"
                f"  raw device→pinned   {ms('raw_d2h_pinned_s')} ms\n"
                f"  naive .to(device)   {ms('naive_to_device_s')} ms   naive .to(cpu) {ms('naive_to_cpu_s')} ms\n"
                f"  flat host→active    {ms('flat_host_to_active_s')} ms  ({r['flat_host_to_active_GBps']:.1f} GB/s)"
                f"  = {r['host_to_active_vs_raw']:.2f}× raw (target ≤ 1.3×); naive is {r['naive_vs_flat_host_to_active']:.1f}× slower\n"
                f"  flat active→host    {ms('flat_active_to_host_copy_s')} ms (copy), {ms('flat_active_to_host_kept_s')} ms (kept host copy)\n"
                f"  disk→active flat    {ms('disk_flat_to_active_s')} ms   naive torch.load+to {ms('disk_naive_to_active_s')} ms"
                f"  = {r['disk_naive_vs_flat']:.1f}×; from_pretrained-style (init+load+to) {ms('disk_from_pretrained_style_s')} ms"
                f" = {r['disk_from_pretrained_vs_flat']:.1f}× (target ≥ 5×); raw file read {ms('raw_file_read_s')} ms\n"
                f"  output identical after swaps: {r['output_identical_after_swaps']}",
                flush=True,
            )
            if "after_demotion_reserved" in r:
                print(
                    f"  after demotion: allocated {r['after_demotion_allocated'] / 2**20:.1f} MiB, reserved "
                    f"{r['after_demotion_reserved'] / 2**20:.1f} MiB → {r['after_empty_cache_reserved'] / 2**20:.1f} MiB after empty_cache",
                    flush=True,
                )
    if args.json:
        Path(args.json).write_text(json.dumps({"info": info, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
