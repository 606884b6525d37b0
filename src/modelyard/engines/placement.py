"""``GpuPlacer``: which engine runs on which GPU, in which sharing mode, and what each device holds.

Pure bookkeeping (no NVML, no side effects): the supervisor asks before it spawns, and config
validation can ask before anything runs. The rules (why: docs/design/engines.md, "GPU sharing"):

* ``exclusive``: the engine is alone on its device — no other engine may be placed there, and it
  may not join a device that already holds one.
* ``mps`` / ``time-slice``: any number of engines share a device, but all engines on one device use
  the same mode (an MPS daemon serves every CUDA client of its device; mixing MPS clients with
  plain time-sliced contexts on one GPU is not a configuration anyone can reason about).
* With ``capacities`` given, the declared bytes per device must fit.

A device is named as ``CUDA_VISIBLE_DEVICES`` names it: an index ("0") or a MIG UUID ("MIG-…"); a
MIG instance is a device of its own (isolated memory and compute). ``gpu="0,1"`` (tensor parallel)
places the engine on both, its bytes split evenly. The placer cannot know which MIG instances
belong to which physical GPU (that needs NVML): do not mix a whole-GPU index with MIG UUIDs of the
same GPU in one configuration.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace

from modelyard.engines.spec import ShareMode

_MODES = ("exclusive", "mps", "time-slice")


class PlacementError(ValueError):
    """An engine cannot be placed on a device (the message says which rule and which engines)."""


@dataclass(frozen=True)
class Placement:
    name: str
    devices: tuple[str, ...]
    share: ShareMode
    memory_bytes: int = 0  # declared or measured, split evenly over ``devices``


def devices_of(gpu: str) -> tuple[str, ...]:
    devs = tuple(d.strip() for d in gpu.split(",") if d.strip())
    if not devs:
        raise PlacementError(f"empty GPU list {gpu!r}")
    return devs


class GpuPlacer:
    def __init__(self, capacities: dict[str, int] | None = None) -> None:
        self._capacities = dict(capacities or {})
        self._placed: dict[str, Placement] = {}
        self._lock = threading.Lock()  # engines load on worker threads

    def place(self, name: str, gpu: str, share: ShareMode = "time-slice", memory_bytes: int = 0) -> Placement:
        """Record ``name`` on ``gpu`` or raise ``PlacementError``. Placing a name again replaces
        its old placement (a reload), checked as if the old one were gone."""
        if share not in _MODES:
            raise PlacementError(f"engine {name!r}: unknown share mode {share!r} (expected {', '.join(_MODES)})")
        devs = devices_of(gpu)
        per = memory_bytes // len(devs)
        with self._lock:
            others = {n: p for n, p in self._placed.items() if n != name}
            for dev in devs:
                there = [p for p in others.values() if dev in p.devices]
                for p in there:
                    if share == "exclusive":
                        raise PlacementError(
                            f"engine {name!r} asks for GPU {dev} exclusively, but engine {p.name!r} is already "
                            f"placed there ({p.share}); give it another device or share it")
                    if p.share == "exclusive":
                        raise PlacementError(
                            f"engine {name!r} cannot join GPU {dev}: engine {p.name!r} holds it exclusively")
                    if p.share != share:
                        raise PlacementError(
                            f"engine {name!r} asks for {share} on GPU {dev}, but engine {p.name!r} shares it in "
                            f"{p.share} mode: all engines on one device must use the same mode")
                cap = self._capacities.get(dev)
                if cap is not None:
                    used = sum(p.memory_bytes // len(p.devices) for p in there)
                    if used + per > cap:
                        raise PlacementError(
                            f"engine {name!r} needs {per} bytes on GPU {dev}, which has {cap - used} of {cap} left")
            placement = Placement(name, devs, share, memory_bytes)
            self._placed[name] = placement
            return placement

    def update(self, name: str, memory_bytes: int) -> None:
        """Replace the bytes accounted for ``name`` (e.g. measured after it loaded)."""
        with self._lock:
            p = self._placed.get(name)
            if p is not None:
                self._placed[name] = replace(p, memory_bytes=memory_bytes)

    def release(self, name: str) -> None:
        """Forget ``name`` (idempotent)."""
        with self._lock:
            self._placed.pop(name, None)

    def placement(self, name: str) -> Placement | None:
        with self._lock:
            return self._placed.get(name)

    def placements(self) -> list[Placement]:
        with self._lock:
            return list(self._placed.values())

    def device_usage(self) -> dict[str, int]:
        """Bytes accounted per device (every device with a placement, or with a capacity)."""
        with self._lock:
            out = {dev: 0 for dev in self._capacities}
            for p in self._placed.values():
                for dev in p.devices:
                    out[dev] = out.get(dev, 0) + p.memory_bytes // len(p.devices)
            return out

    def share_mode(self, device: str) -> ShareMode | None:
        with self._lock:
            for p in self._placed.values():
                if device in p.devices:
                    return p.share
            return None
