"""The records the memory manager keeps per model, and the lease it hands out.

Split from ``manager.py`` (which applies residency moves) so that each file holds one concept:
this one is data — the state enum, the registration spec, the per-model record — plus the
``async with`` lease object.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any

from modelyard.errors import ModelyardError
from modelyard.memory.policy import Tier
from modelyard.runtime.base import Engine, Footprint, LoadOptions

if TYPE_CHECKING:
    from modelyard.memory.manager import MemoryManager


class ModelState(str, Enum):
    disk = "disk"
    loading = "loading"  # disk → active or host → active in progress
    warming = "warming"  # loaded, running warm-up requests; leases still wait
    active = "active"
    demoting = "demoting"  # active → host in progress
    host = "host"
    unloading = "unloading"  # → disk in progress
    failed = "failed"  # last load/move failed (on disk); the next lease retries


class MemoryAccountingError(ModelyardError):
    """The manager's byte accounting broke its own invariant: a bug, never the client's fault."""

    code = "memory_accounting"


@dataclass
class ModelSpec:
    name: str
    engine_factory: Callable[[], Engine]
    artifact_path: str
    load_options: LoadOptions = field(default_factory=LoadOptions)
    pinned: bool = False
    keep_alive_s: float | None = 300.0  # None or negative: forever; 0: unload as soon as idle
    warmup_requests: int = 1
    preload: bool = False
    estimated_bytes: int | None = None  # active bytes to reserve before the first measured load


@dataclass
class ModelRecord:
    spec: ModelSpec
    pinned: bool
    in_flight_gauge: Any = None
    state: ModelState = ModelState.disk
    tier: Tier = Tier.disk
    engine: Engine | None = None
    footprint: Footprint | None = None  # last measured
    active_bytes: int = 0  # accounted on the active tier now
    host_bytes: int = 0  # accounted on the host tier now
    in_flight: int = 0
    waiting: int = 0  # leases/loads waiting for this model to become active
    last_used: float | None = None
    loads: int = 0
    load_seconds: float = 0.0
    demotions: int = 0
    warmups: int = 0
    load_failures: int = 0
    error: str | None = None
    task: asyncio.Task[None] | None = None  # the shared activation (single flight)


_TRANSITIONAL = (ModelState.loading, ModelState.warming, ModelState.demoting, ModelState.unloading)


class _Lease:
    """``async with mm.lease(name) as engine``: the model is active and counted in flight inside."""

    __slots__ = ("_mm", "_m", "_held")

    def __init__(self, mm: MemoryManager, m: ModelRecord) -> None:
        self._mm = mm
        self._m = m
        self._held = False

    async def __aenter__(self) -> Engine:
        m, mm = self._m, self._mm
        if m.state is ModelState.active and not mm._closing:  # fast path: no lock, no await
            mm._take(m)
            self._held = True
            assert m.engine is not None
            return m.engine
        engine = await mm._acquire(m, take=True)
        self._held = True
        return engine

    async def __aexit__(self, *exc: object) -> None:
        if self._held:
            self._held = False
            self._mm._release(self._m)
