"""What the machine offers: tier budgets from config (explicit sizes or ``auto``) and measured bytes.

``auto`` measures at start, once: the active tier is the free memory of the GPU when torch is
installed and CUDA is available, otherwise a share of the RAM available now (the CPU is then the
execution device); the host tier is a share of the available RAM. torch is imported lazily and only
here, so a CPU-only install never pays for it (and importing this module never does).

Sizes: a non-negative int (bytes) or a string: ``"2GiB"``, ``"512MB"``, ``"1.5G"``, ``"1024"``.
``KiB/MiB/GiB/TiB`` and the bare ``K/M/G/T`` are binary (×1024, as Docker and most model tools
mean them); ``KB/MB/GB/TB`` are decimal (×1000, as SI and Kubernetes' ``G`` mean them).
``"NN%"`` is a share of the memory the tier's device has available now (free GPU memory for the
active tier on a GPU machine, else available RAM).
"""

from __future__ import annotations

import importlib.util
import sys
import os
import re
from collections.abc import Mapping

from modelyard.errors import ConfigError
from modelyard.memory.policy import Budgets

# On a GPU, keep a little free for the CUDA context, cuBLAS workspaces and fragmentation.
GPU_ACTIVE_FRACTION = 0.9
# Without a GPU the active and host tiers are the same RAM: split the available RAM between them
# and leave the rest to the OS, the gateway itself and the page cache.
CPU_ACTIVE_FRACTION = 0.5
CPU_HOST_FRACTION = 0.25
# With a GPU, host is where weights are parked: RAM not needed by anything else.
GPU_HOST_FRACTION = 0.5

_UNITS = {
    "": 1, "b": 1,
    "k": 1024, "kib": 1024, "kb": 1000,
    "m": 1024**2, "mib": 1024**2, "mb": 1000**2,
    "g": 1024**3, "gib": 1024**3, "gb": 1000**3,
    "t": 1024**4, "tib": 1024**4, "tb": 1000**4,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]*)\s*$")


def parse_bytes(value: int | float | str) -> int:
    """A size in bytes from an int or a string like ``"2GiB"``; ValueError says what is wrong."""
    if isinstance(value, bool):
        raise ValueError(f"expected a size in bytes or a string like '2GiB', got {value!r}")
    if isinstance(value, (int, float)):
        if value < 0 or value != value:
            raise ValueError(f"a size must be >= 0 bytes, got {value!r}")
        return int(value)
    if not isinstance(value, str):
        raise ValueError(f"expected a size in bytes or a string like '2GiB', got {type(value).__name__}")
    m = _SIZE.match(value)
    if m is None:
        raise ValueError(f"cannot parse size {value!r}: expected a number and a unit, e.g. '2GiB', '512MB', '1.5G'")
    unit = m.group(2).lower()
    if unit not in _UNITS:
        raise ValueError(
            f"unknown unit {m.group(2)!r} in size {value!r}: use B, KiB, MiB, GiB, TiB, KB, MB, GB, TB, K, M, G or T")
    return int(float(m.group(1)) * _UNITS[unit])


def available_ram_bytes() -> int:
    """RAM available to new allocations without swapping (``MemAvailable``), else free RAM."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        raise RuntimeError("cannot measure available RAM on this platform; set memory budgets explicitly") from None


def rss_bytes() -> int:
    """Resident set size of this process, for engines that measure their load as RSS growth."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # pragma: no cover - non-Linux: peak RSS is the best portable number
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def gpu_free_bytes(device: str = "cuda:0") -> int | None:
    """Free memory of a CUDA device, or None when torch is not installed or sees no GPU."""
    if importlib.util.find_spec("torch") is None:
        return None
    import torch  # lazy: hundreds of milliseconds, and only machines with a GPU need it

    if not torch.cuda.is_available():
        return None
    free, _total = torch.cuda.mem_get_info(torch.device(device))
    return int(free)


def detect_budgets(spec: Mapping[str, int | str] | str = "auto", *, device: str = "cuda:0") -> Budgets:
    """Budgets from ``"auto"`` or ``{"active": ..., "host": ...}`` (a missing tier is ``auto``).
    Bad values raise ConfigError naming ``memory.<tier>``."""
    if isinstance(spec, str):
        spec = {"active": spec, "host": spec}
    unknown = set(spec) - {"active", "host"}
    if unknown:
        raise ConfigError(f"memory: unknown tier(s) {sorted(unknown)}; expected 'active' and 'host'")
    active_raw, host_raw = spec.get("active", "auto"), spec.get("host", "auto")

    probe: dict[str, int | None] = {}

    def raw(tier: str) -> tuple[int, float]:
        """(the tier's device memory available now, the share ``auto`` takes of it)."""
        if "gpu" not in probe:
            probe["gpu"] = gpu_free_bytes(device)
        free_gpu = probe["gpu"]
        if tier == "active" and free_gpu is not None:
            return free_gpu, GPU_ACTIVE_FRACTION
        if "ram" not in probe:
            probe["ram"] = available_ram_bytes()
        ram = probe["ram"] or 0
        if tier == "active":
            return ram, CPU_ACTIVE_FRACTION
        return ram, GPU_HOST_FRACTION if free_gpu is not None else CPU_HOST_FRACTION

    def resolve(tier: str, value: int | str) -> int:
        try:
            text = value.strip().lower() if isinstance(value, str) else None
            if text == "auto":
                total, share = raw(tier)
                return int(total * share)
            if text is not None and text.endswith("%"):
                try:
                    pct = float(text[:-1])
                except ValueError:
                    raise ValueError(f"cannot parse share {value!r}: expected e.g. '40%'") from None
                if not 0 <= pct <= 100:
                    raise ValueError(f"a share must be between 0% and 100%, got {value!r}")
                return int(raw(tier)[0] * pct / 100)
            return parse_bytes(value)
        except ValueError as exc:
            raise ConfigError(f"memory.{tier}: {exc}") from exc

    return Budgets(active=resolve("active", active_raw), host=resolve("host", host_raw))


def gpu_memory_stats(device: str = "cuda:0") -> dict[str, int] | None:
    """Allocated vs reserved bytes of torch's caching allocator (reserved − allocated is what
    fragmentation and cached blocks hold back); None without a GPU. Never imports torch itself."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return None
    dev = torch.device(device)
    return {"allocated": int(torch.cuda.memory_allocated(dev)), "reserved": int(torch.cuda.memory_reserved(dev))}
