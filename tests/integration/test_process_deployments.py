"""`kind: process` deployments through the real gateway: a real llama.cpp engine process
(xllamacpp launcher serving SmolLM2) and the mock engine for faults, driven with the openai SDK."""

from __future__ import annotations

import os
import signal
import sys

import pytest

from modelyard.engines.procs import pid_alive
from modelyard.registry.artifacts import ArtifactStore
from modelyard.registry.defaults import import_defaults

from modelyard.memory.policy import Tier

from .support import ProcessPool, wait_until


def _mock_engine(mode: str) -> list[str]:
    return [sys.executable, "-m", "modelyard.testing.mock_engine", "--port", "{port}", "--mode", mode]


@pytest.fixture
def home(tmp_path):  # noqa: ANN001, ANN201
    home = tmp_path / "home"
    import_defaults(ArtifactStore(home / "artifacts"), names=["chat"])
    return home


def _config(home, **extra):  # noqa: ANN001, ANN003, ANN202
    return {
        "memory": {"data_dir": str(home)},
        "router": {"timeout_s": 60, "retry": {"num_retries": 0}},
        "models": [
            {"name": "smol", "deployments": [
                {"kind": "process", "preset": "xllamacpp", "artifact": "chat", "n_ctx": 1024, "health_timeout_s": 60},
            ]},
            {"name": "crashy", "fallbacks": ["smol"], "deployments": [
                {"kind": "process", "command": _mock_engine("crash-after:1"), "max_restarts": 3,
                 "restart_backoff_s": 0.1, "health_timeout_s": 20},
            ]},
            {"name": "never-ready", "deployments": [
                {"kind": "process", "command": _mock_engine("never-ready"), "health_timeout_s": 1.5},
            ]},
        ],
        **extra,
    }


def _engine_pids(gw) -> dict[str, int]:  # noqa: ANN001
    models = gw.http.get("/admin/models").json()["data"]
    return {m["name"]: m["engine"]["pid"] for m in models if m.get("engine") and m["engine"].get("pid")}


def test_a_real_engine_process_serves_and_stops_with_the_gateway(procs: ProcessPool, home) -> None:  # noqa: ANN001
    gw = procs.gateway(_config(home))
    c = gw.client(timeout=60)
    r = c.chat.completions.create(model="smol", messages=[{"role": "user", "content": "Hi!"}], max_tokens=8)
    assert r.choices[0].message.content and r.usage.completion_tokens <= 8
    pids = _engine_pids(gw)
    assert pids.get("smol") and pid_alive(pids["smol"]), pids
    stream = c.chat.completions.create(model="smol", messages=[{"role": "user", "content": "Count."}], max_tokens=6,
                                       stream=True)
    assert "".join(ch.choices[0].delta.content or "" for ch in stream if ch.choices)
    gw.signal(signal.SIGTERM)
    assert gw.wait(30) == 0, gw.describe()
    wait_until(lambda: not pid_alive(pids["smol"]), 15, "the engine process to exit with the gateway")


def test_an_engine_that_crashes_mid_request_falls_back_and_is_restarted(procs: ProcessPool, home) -> None:  # noqa: ANN001
    gw = procs.gateway(_config(home))
    c = gw.client(timeout=60)
    raw = c.chat.completions.with_raw_response.create(model="crashy", messages=[{"role": "user", "content": "x"}])
    # it crashed, was retried once on the restarted engine, crashed again: then the fallback answered
    assert raw.headers["x-modelyard-model"] == "smol" and raw.headers["x-modelyard-fallbacks"] == "1"

    def crashy() -> dict:
        return next(m for m in gw.http.get("/admin/models").json()["data"] if m["name"] == "crashy")

    # the supervisor restarts it on its own (no request needed), spacing the restarts out
    wait_until(lambda: crashy()["state"] == "active" and crashy()["loads"] >= 3, 15, "the engine restarted again")
    raw = c.chat.completions.with_raw_response.create(model="crashy", messages=[{"role": "user", "content": "y"}])
    assert raw.headers["x-modelyard-model"] == "smol"  # it crashed again; no request was lost


def test_an_engine_that_never_gets_ready_is_a_clear_503_and_leaves_no_process(procs: ProcessPool, home) -> None:  # noqa: ANN001
    gw = procs.gateway(_config(home))
    r = gw.http.post("/v1/chat/completions", json={"model": "never-ready", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 503, r.text
    err = r.json()["error"]
    assert err["code"] == "model_load_failed" and "never-ready" in err["message"]
    assert "\n" not in err["message"] and "MOCK_ENGINE_LISTENING" not in err["message"], "the log tail reached the client"
    admin = next(m for m in gw.http.get("/admin/models").json()["data"] if m["name"] == "never-ready")
    assert "MOCK_ENGINE_LISTENING" in admin["error"], admin  # ... it is for operators
    me = os.getpid()
    leftovers = [line for line in os.popen("ps -eo pid,ppid,args").read().splitlines()
                 if "mock_engine" in line and "never-ready" in line and str(me) not in line.split()[1:2]]
    assert leftovers == [], leftovers


async def test_two_engine_processes_and_in_process_models_share_one_budget(tmp_path) -> None:  # noqa: ANN001
    """Two managed engines and two in-process models compete for an active budget that holds
    only part of them: every request answers, and the manager's accounting never exceeds the
    budget after any transition (checked by the hook in ``Served``)."""
    import asyncio

    import openai

    from .inprocess import Served

    store = ArtifactStore(tmp_path / "artifacts")
    import_defaults(store, names=["chat", "text-embedding", "moderation"])
    MiB = 1 << 20
    config = {
        # smol's process ≈ 210 MB RSS, the mock engine declares 200 MB, MiniLM ≈ 320 MB:
        # 600 MB holds any two of the three.
        "memory": {"active": 600 * MiB, "host": 0, "data_dir": str(tmp_path)},
        "router": {"timeout_s": 120, "retry": {"num_retries": 0}},
        "models": [
            {"name": "smol", "deployments": [
                {"kind": "process", "preset": "xllamacpp", "artifact": "chat", "n_ctx": 512, "health_timeout_s": 60},
            ]},
            {"name": "mock", "deployments": [
                {"kind": "process", "command": _mock_engine("ok"), "memory": "200MiB", "health_timeout_s": 20},
            ]},
            {"name": "text-embedding", "deployments": [{"kind": "local", "artifact": "text-embedding"}]},
            {"name": "moderation", "deployments": [{"kind": "local", "artifact": "moderation"}]},
        ],
    }
    with Served(config, store) as s:
        c = openai.AsyncOpenAI(base_url=f"{s.url}/v1", api_key="sk-test", max_retries=0, timeout=120)

        async def chat(model: str, i: int) -> None:
            r = await c.chat.completions.create(model=model, messages=[{"role": "user", "content": f"n {i}"}], max_tokens=4)
            assert r.choices[0].message.content is not None

        async def embed(i: int) -> None:
            r = await c.embeddings.create(model="text-embedding", input=f"text {i}")
            assert len(r.data[0].embedding) == 384

        async def moderate(i: int) -> None:
            r = await c.moderations.create(model="moderation", input="have a nice day")
            assert not r.results[0].flagged

        for i in range(3):  # rounds: each one needs room for all three big models in turn
            await asyncio.gather(chat("smol", i), chat("mock", i), embed(i), moderate(i))
        assert s.violations == []
        assert any(src is Tier.active for _, src, _, _ in s.transitions), "the budget never forced an eviction"
        pids = [m["engine"]["pid"] for m in s.app.services.memory.snapshot() if m.get("engine") and m["engine"].get("pid")]
    for pid in pids:  # the server is gone: so are its engine processes
        wait_until(lambda pid=pid: not pid_alive(pid), 15, f"engine process {pid} to exit")
