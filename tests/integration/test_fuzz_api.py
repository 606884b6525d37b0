"""The live gateway fuzzed with Schemathesis against the OpenAPI document it serves itself.

A real `modelyard serve` (a mock OpenAI upstream behind chat/completions/embeddings, the real local
moderation classifier behind moderations/classifications and the admin API, a master key, spend
rows in SQLite) answers what Schemathesis' CLI generates from its own `GET /openapi.json`: the
examples, coverage, fuzzing and stateful phases, valid and invalid bodies, query strings, path
parameters, undocumented methods, requests without the key. The run must pass every check: no
5xx, documented status and content type, bodies (every SSE event too) and headers valid against
the document; the gateway must log no traceback; and `modelyard_reach` (fuzz_hooks.py) must see
every model endpoint answer 200 and a chat stream, or the fuzz reached nothing but 404s.
fuzz_hooks.py also steers generated `model` fields to served models (see there).

- `test_fuzz_api_ci`: 30 examples per operation, a fixed seed (~15 s): runs in CI.
- `test_fuzz_api_long` (slow): 400 examples per operation, and a real llama.cpp chat model
  (SmolLM2, generation bounded to 8 tokens and n <= 2 by the hooks) as well:

      flock /tmp/modelyard-bench.lock .venv/bin/python -m pytest -m slow tests/integration/test_fuzz_api.py -q

MODELYARD_FUZZ_EXAMPLES and MODELYARD_FUZZ_SEED change the count and the seed. On a failure the
assertion shows Schemathesis' report (each failure with a curl command to reproduce it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from modelyard.registry.artifacts import ArtifactStore
from modelyard.registry.defaults import import_defaults

from .support import Gateway, ProcessPool, deployment

HERE = Path(__file__).resolve().parent
MASTER = "sk-fuzz-master-0123456789"
SEED = os.environ.get("MODELYARD_FUZZ_SEED", "20261202")
CHECKS = ("not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,"
          "response_schema_conformance,unsupported_method,ignored_auth,modelyard_reach")


def _serve(pool: ProcessPool, home: Path, *, local_chat: bool) -> tuple[Gateway, dict[str, list[str]]]:
    store = ArtifactStore(home / "artifacts")
    import_defaults(store, names=["moderation", "chat"] if local_chat else ["moderation"])
    mock = pool.mock()
    models: list[dict[str, Any]] = [
        {"name": "chat", "aliases": ["gpt-4o-mini", "gpt-3.5-turbo-instruct"], "deployments": [deployment(mock, "mock-chat")]},
        {"name": "text-embedding-3-small", "deployments": [deployment(mock, "mock-embed")]},
        {"name": "moderation", "aliases": ["omni-moderation-latest"],
         "deployments": [{"kind": "local", "artifact": "moderation", "pinned": True}]},
    ]
    chat = ["chat"]
    if local_chat:
        models.append({"name": "local-chat", "deployments": [
            {"kind": "local", "artifact": "chat", "n_ctx": 512, "n_parallel": 1, "pinned": True}]})
        chat.append("local-chat")
    gw = pool.gateway({
        "memory": {"data_dir": str(home)},
        "auth": {"master_key": MASTER},
        "spend": {"flush_interval_s": 0.2},
        "router": {"timeout_s": 120, "retry": {"num_retries": 0}, "breaker": {"allowed_fails": 1_000_000}},
        "models": models,
    })
    steer = {
        "/v1/chat/completions": chat, "/v1/completions": chat, "/v1/embeddings": ["text-embedding-3-small"],
        "/v1/moderations": ["moderation"], "/v1/classifications": ["moderation"],
        "*": ["chat", "moderation", "text-embedding-3-small"],  # {model} path parameters
    }
    return gw, steer


def _fuzz(gw: Gateway, steer: dict[str, list[str]], *, examples: int, bounded: list[str], report: Path) -> float:
    """Run Schemathesis against the live gateway; fail with its report unless it passed."""
    env = {
        **os.environ,
        "SCHEMATHESIS_HOOKS": "fuzz_hooks",
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
        "MODELYARD_FUZZ_MODELS": json.dumps(steer),
        "MODELYARD_FUZZ_BOUNDED": json.dumps(bounded),
        "NO_COLOR": "1",
    }
    argv = [
        sys.executable, "-m", "schemathesis.cli", "run", f"{gw.url}/openapi.json",
        "--header", f"Authorization: Bearer {MASTER}", "--checks", CHECKS, "--max-examples", str(examples),
        "--seed", SEED, "--workers", "1", "--generation-database", "none", "--request-timeout", "180",
        "--phases", "examples,coverage,fuzzing,stateful", "--no-color", "--output-truncate", "false",
        "--report", "junit", "--report-dir", str(report),
    ]
    t0 = time.monotonic()
    proc = subprocess.run(argv, env=env, cwd=report.parent, capture_output=True, text=True, timeout=3000)
    elapsed = time.monotonic() - t0
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"schemathesis found problems (exit {proc.returncode}):\n{_failures(report)}\n{out[-8000:]}"
    assert "passed" in out and " 0 passed" not in out, out[-3000:]
    log = gw.stderr_text()
    assert "Traceback" not in log, log[-6000:]
    return elapsed


def _failures(report: Path) -> str:
    """The failures of the JUnit report (the CLI's own output can be too long to show whole)."""
    import xml.etree.ElementTree as ET

    out = []
    for path in report.glob("*.xml"):
        for case in ET.parse(path).iter("testcase"):
            for f in [*case.iter("failure"), *case.iter("error")]:
                out.append(f"--- {case.get('name')}: {f.get('message')}\n{(f.text or '')[:3000]}")
    return "\n".join(out)[:20000]


def test_fuzz_api_ci(procs: ProcessPool, tmp_path: Path) -> None:
    gw, steer = _serve(procs, tmp_path / "home", local_chat=False)
    examples = int(os.environ.get("MODELYARD_FUZZ_EXAMPLES", "30"))
    elapsed = _fuzz(gw, steer, examples=examples, bounded=[], report=tmp_path / "report")
    print(f"fuzzed in {elapsed:.1f}s")


@pytest.mark.slow
def test_fuzz_api_long(procs: ProcessPool, tmp_path: Path) -> None:
    gw, steer = _serve(procs, tmp_path / "home", local_chat=True)
    examples = int(os.environ.get("MODELYARD_FUZZ_EXAMPLES", "400"))
    elapsed = _fuzz(gw, steer, examples=examples, bounded=["local-chat"], report=tmp_path / "report")
    print(f"fuzzed in {elapsed:.1f}s")
