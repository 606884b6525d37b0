"""An in-process real server for integration tests that must watch the memory manager itself.

uvicorn serves the real app on a free loopback port in a thread with its own event loop; the test
installs an ``on_transition`` hook that checks the manager's own accounting after every tier move.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import uvicorn

from modelyard.api import create_app
from modelyard.config.loader import settings_from_dict
from modelyard.memory.policy import Tier
from modelyard.observability.logging import AccessLog
from modelyard.registry.artifacts import ArtifactStore
from modelyard.server import bind


class Served:
    """uvicorn serving one app on a free port, in a background thread."""

    def __init__(self, config: dict[str, Any], store: ArtifactStore) -> None:
        self.settings = settings_from_dict(config).settings
        self.app = create_app(self.settings, access_log=AccessLog(enabled=False))
        self.store = store
        self.sock = bind("127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(self.app, lifespan="on", log_level="warning", loop="asyncio"))
        self.transitions: list[tuple[str, Tier, Tier, dict[Tier, int]]] = []
        self.violations: list[str] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        # Point the app at the test's store before the lifespan builds the local models.
        from modelyard.backends import local_models

        original = local_models.ArtifactStore
        local_models.ArtifactStore = lambda root: self.store  # type: ignore[assignment,misc]
        try:
            await self.server.serve(sockets=[self.sock])
        finally:
            local_models.ArtifactStore = original  # type: ignore[misc]

    def hook(self, name: str, src: Tier, dst: Tier, usage: dict[Tier, int]) -> None:
        mm = self.app.services.memory
        self.transitions.append((name, src, dst, dict(usage)))
        for tier in (Tier.active, Tier.host):
            budget = getattr(mm.budgets, tier.value)
            if usage.get(tier, 0) > budget:
                self.violations.append(f"{tier.value} over budget after {name} {src.value}→{dst.value}: {usage}")
        if src is Tier.active:
            snap = next(m for m in mm.snapshot() if m["name"] == name)
            if snap["in_flight"]:
                self.violations.append(f"{name} demoted with {snap['in_flight']} requests in flight")

    def __enter__(self) -> "Served":
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            assert self.thread.is_alive(), "the server thread died during start-up"
            assert time.monotonic() < deadline, "the server did not start within 60 s"
            time.sleep(0.05)
        self.app.services.memory.on_transition = self.hook
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(60)
        assert not self.thread.is_alive(), "the server did not stop"
