"""The records the memory manager keeps per model, and the lease it hands out.

Split from ``manager.py`` (which applies residency moves) so that each file holds one concept:
this one is data — the state enum, the registration spec, the per-model record — plus the
``async with`` lease object.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any

from modelyard.errors import ModelLoadError, ModelNotReadyError, ModelyardError
from modelyard.memory.policy import Tier
from modelyard.runtime.base import Engine, Footprint, LoadOptions

if TYPE_CHECKING:
    from modelyard.memory.manager import MemoryManager

log = logging.getLogger("modelyard.memory")


class ModelState(str, Enum):
    disk = "disk"
    loading = "loading"  # disk → active or host → active in progress
    warming = "warming"  # loaded, running warm-up requests; leases still wait
    active = "active"
    demoting = "demoting"  # active → host in progress
    host = "host"
    unloading = "unloading"  # → disk in progress
    failed = "failed"  # last load/move failed (on disk); the next lease retries
    restarting = "restarting"  # on disk, waiting out its engine's restart backoff; loads after it


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
    # Seconds before a fresh engine may start (a managed process's restart backoff after a crash):
    # the manager waits them out with the lock released, then loads, instead of failing the load.
    start_delay: Callable[[], float] | None = None


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
    move_started: float | None = None  # when the load in progress began (for the ready estimate)
    start_at: float | None = None  # restarting: when the restart backoff ends

    def ready_in_s(self, now: float) -> float | None:
        """Seconds until this model should be serving: 0 when active, None without any basis."""
        if self.state is ModelState.active:
            return 0.0
        load = self.load_seconds / self.loads if self.loads else None
        if self.state is ModelState.restarting and self.start_at is not None:
            return max(0.0, self.start_at - now) + (load or 0.0)
        if self.state in (ModelState.loading, ModelState.warming) and self.move_started is not None:
            return max(0.0, (load or 0.0) - (now - self.move_started))
        return load

    def expired(self, now: float) -> bool:
        """Idle on the active tier for longer than its keep-alive (0: as soon as idle)."""
        ka = self.spec.keep_alive_s
        if self.state is not ModelState.active or self.pinned or self.in_flight or self.waiting or ka is None or ka < 0:
            return False
        return ka == 0 or now - (self.last_used or 0.0) > ka

    def note_failure(self, exc: BaseException, what: str) -> bool:
        """Record why ``what`` failed (shown by /admin/models); True if it was a load that failed."""
        if isinstance(exc, ModelyardError):
            detail = exc.message
        elif isinstance(exc, asyncio.CancelledError):
            detail = "cancelled"
        else:
            detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        self.error = f"{what} failed: {detail}"
        log.warning("model %r: %s", self.spec.name, self.error)
        if what in ("load", "warm-up", "host → active"):
            self.load_failures += 1
            return True
        return False

    def load_error(self, exc: BaseException) -> BaseException:
        """What waiters see: a ModelLoadError carrying the recorded reason (the engine's own if it
        raised one); cancellation stays cancellation."""
        if isinstance(exc, (asyncio.CancelledError, ModelLoadError)):
            return exc
        err = ModelLoadError(f"model {self.spec.name!r}: {self.error}")
        err.__cause__ = exc
        return err

    def not_ready(self, now: float, waited: float) -> ModelNotReadyError:
        eta = self.ready_in_s(now)
        what = {ModelState.restarting: "restarting after its engine went down", ModelState.loading: "loading",
                ModelState.warming: "warming up"}.get(self.state, f"{self.state.value}, waiting for memory")
        expect = f"; expected in {eta:.1f}s" if eta is not None else ""
        return ModelNotReadyError(f"model {self.spec.name!r} is {what} and was not ready within {waited:g}s{expect}",
                                  retry_after_s=eta if eta else 1.0)


_TRANSITIONAL = (ModelState.loading, ModelState.warming, ModelState.demoting, ModelState.unloading)


class _Lease:
    """``async with mm.lease(name) as engine``: the model is active and counted in flight inside."""

    __slots__ = ("_mm", "_m", "_held", "_wait_s")

    def __init__(self, mm: MemoryManager, m: ModelRecord, wait_s: float | None = None) -> None:
        self._mm = mm
        self._m = m
        self._held = False
        self._wait_s = wait_s  # how long to wait for the model to become active (None: unbounded)

    async def __aenter__(self) -> Engine:
        m, mm = self._m, self._mm
        if m.state is ModelState.active and not mm._closing:  # fast path: no lock, no await
            mm._take(m)
            self._held = True
            assert m.engine is not None
            return m.engine
        if self._wait_s is None:
            engine = await mm._acquire(m, take=True)
        else:
            try:
                async with asyncio.timeout(self._wait_s):
                    engine = await mm._acquire(m, take=True)
            except TimeoutError:
                raise mm._not_ready(m, self._wait_s) from None
        self._held = True
        return engine

    async def __aexit__(self, *exc: object) -> None:
        if self._held:
            self._held = False
            self._mm._release(self._m)


def snapshot_of(m: ModelRecord, now: float) -> dict[str, Any]:
    """One model's line in ``/admin/models``."""
    fp = m.footprint or Footprint(0)
    return {
        "name": m.spec.name,
        "tier": m.tier.value,
        "state": m.state.value,
        "bytes": {"weights": fp.weights, "kv_cache": fp.kv_cache, "overhead": fp.overhead,
                  "active": fp.active, "host": fp.host},
        "accounted": {"active": m.active_bytes, "host": m.host_bytes},
        "last_used": None if m.last_used is None else max(0.0, now - m.last_used),
        "in_flight": m.in_flight,
        "waiting": m.waiting,
        "loads": m.loads,
        "demotions": m.demotions,
        "warmups": m.warmups,
        "load_failures": m.load_failures,
        "average_load_s": m.load_seconds / m.loads if m.loads else None,
        "ready_in_s": m.ready_in_s(now),
        "pinned": m.pinned,
        "keep_alive_s": m.spec.keep_alive_s,
        "error": m.error,
        # engines with more to say (a managed process: pid, port, restarts) expose info()
        "engine": _engine_info(m.engine),
    }


def _engine_info(engine: Engine | None) -> dict[str, Any] | None:
    info = getattr(engine, "info", None)
    if not callable(info):
        return None
    try:
        return dict(info())
    except Exception:  # noqa: BLE001 - a report must never fail /admin/models
        log.exception("engine info() raised")
        return None
