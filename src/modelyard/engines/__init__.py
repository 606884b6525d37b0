"""Managed engine processes (vLLM, llama.cpp server, TGI, xllamacpp, any OpenAI-compatible server).

``spec.ProcessSpec`` says how to run one; ``supervisor.ProcessEngine`` runs it under the memory
manager (spawn, health, warm-up, sleep/wake, stop, restart policy); ``placement.GpuPlacer`` keeps
track of which engine is on which GPU. Design: ``docs/design/engines.md``.

The names below are imported lazily: ``python -m modelyard.engines.xllamacpp_server`` (an engine
process) imports this package first and must not pay ~80 ms for the supervisor it never uses.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from modelyard.engines.placement import GpuPlacer, Placement, PlacementError
    from modelyard.engines.restart import RestartPolicy
    from modelyard.engines.spec import ProcessSpec, preset
    from modelyard.engines.supervisor import EngineState, ProcessEngine

_WHERE = {
    "GpuPlacer": "placement", "Placement": "placement", "PlacementError": "placement",
    "RestartPolicy": "restart", "ProcessSpec": "spec", "preset": "spec",
    "EngineState": "supervisor", "ProcessEngine": "supervisor",
}
__all__ = ["EngineState", "GpuPlacer", "Placement", "PlacementError", "ProcessEngine", "ProcessSpec",
           "RestartPolicy", "preset"]


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"modelyard.engines.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'modelyard.engines' has no attribute {name!r}")
