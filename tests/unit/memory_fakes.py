"""Fake engines and a harness for the memory manager's unit tests (shared by two test files)."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from typing import Any


from modelyard.errors import (
    ModelLoadError,
)
from modelyard.memory.manager import MemoryManager, ModelSpec
from modelyard.memory.policy import Budgets, Tier
from modelyard.observability.memory_metrics import MemoryMetrics
from modelyard.runtime.base import Capability, Footprint, LoadOptions
from modelyard.testing.clock import ManualClock as FakeClock

MAIN_THREAD = threading.get_ident()



class FakeModel:
    """One fake model: its configuration and counters across every engine its factory creates."""

    def __init__(self, name: str, weights: int = 100, kv: int = 0, overhead: int = 0, *, host: bool = True,
                 clock: FakeClock | None = None, load_s: float = 0.0) -> None:
        self.name = name
        self.footprint = Footprint(weights, kv, overhead)
        self.supports_host = host
        self.load_gate: threading.Event | None = None
        self.warmup_gate: threading.Event | None = None
        self.fail_loads = 0  # the next N loads raise
        self.fail_warmups = 0
        self.load_error: Exception = ModelLoadError("corrupt GGUF header")
        self.counts: Counter[str] = Counter()
        self.events: list[str] = []
        self.threads: set[int] = set()
        self.engines: list[FakeEngine] = []
        self.violations: list[str] = []
        self.clock, self.load_s = clock, load_s
        self._lock = threading.Lock()

    def factory(self) -> FakeEngine:
        e = FakeEngine(self)
        self.engines.append(e)
        return e

    def record(self, event: str) -> None:
        with self._lock:
            self.counts[event] += 1
            self.events.append(event)
            self.threads.add(threading.get_ident())

    def spec(self, **kw: Any) -> ModelSpec:
        return ModelSpec(self.name, self.factory, f"/models/{self.name}.gguf", **kw)


class FakeEngine:
    capabilities = frozenset({Capability.chat})

    def __init__(self, model: FakeModel) -> None:
        self.m = model
        self.supports_host_tier = model.supports_host
        self.where = "disk"
        self.busy = 0  # requests using it (set by the tests' lease bodies)

    def load(self, artifact_path: str, opts: LoadOptions) -> Footprint:
        m = self.m
        m.record("load")
        assert self.where == "disk"
        if m.load_gate is not None:
            assert m.load_gate.wait(10)
        if m.clock is not None:
            m.clock.advance(m.load_s)
        if m.fail_loads:
            m.fail_loads -= 1
            raise m.load_error
        self.where = "active"
        return m.footprint

    def _check_idle(self, what: str) -> None:
        if self.busy:
            self.m.violations.append(f"{what} with {self.busy} request(s) in flight")

    def to_host(self) -> None:
        self.m.record("to_host")
        self._check_idle("to_host")
        assert self.where == "active"
        self.where = "host"

    def to_active(self) -> None:
        self.m.record("to_active")
        assert self.where == "host"
        self.where = "active"

    def unload(self) -> None:
        self.m.record("unload")
        self._check_idle("unload")
        self.where = "disk"

    def warmup(self) -> None:
        self.m.record("warmup")
        assert self.where == "active"
        if self.m.warmup_gate is not None:
            assert self.m.warmup_gate.wait(10)
        if self.m.fail_warmups:
            self.m.fail_warmups -= 1
            raise RuntimeError("warm-up produced NaN")


class Harness:
    def __init__(self, budgets: Budgets, *models: FakeModel, metrics: MemoryMetrics | None = None,
                 **specs: dict[str, Any]) -> None:
        self.clock = FakeClock()
        self.transitions: list[tuple[str, Tier, Tier, dict[Tier, int]]] = []
        self.violations: list[str] = []
        self.mm = MemoryManager(budgets, clock=self.clock, metrics=metrics, on_transition=self.hook, reap_interval_s=None)
        self.models = {m.name: m for m in models}
        for m in models:
            self.mm.register(m.spec(**specs.get(m.name, {})))

    def hook(self, name: str, src: Tier, dst: Tier, usage: dict[Tier, int]) -> None:
        b = self.mm.budgets
        if usage[Tier.active] > b.active or usage[Tier.host] > b.host:
            self.violations.append(f"{name} {src}->{dst}: {usage}")
        if src is Tier.active and dst is not Tier.active:
            row = next(r for r in self.mm.snapshot() if r["name"] == name)
            if row["in_flight"]:
                self.violations.append(f"{name} demoted with {row['in_flight']} in flight")
        self.transitions.append((name, src, dst, dict(usage)))

    def moves(self) -> list[tuple[str, str, str]]:
        return [(n, s.value, d.value) for n, s, d, _ in self.transitions]

    def row(self, name: str) -> dict[str, Any]:
        return next(r for r in self.mm.snapshot() if r["name"] == name)

    async def use(self, name: str) -> FakeEngine:
        self.clock.advance(1)
        async with self.mm.lease(name) as engine:
            return engine  # type: ignore[return-value]


async def wait_for(cond: Any, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.001)
