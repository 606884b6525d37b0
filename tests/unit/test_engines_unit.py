"""Unit tests of the engine supervisor's pure parts: restart policy, GPU placement, presets, logs, ports.

No engine process is started here (tests/integration/test_engines_process.py runs real ones).
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading

import pytest

from modelyard.engines import GpuPlacer, PlacementError, ProcessEngine, ProcessSpec, RestartPolicy, preset
from modelyard.engines import procs
from modelyard.engines.supervisor import EngineState, describe_exit
from modelyard.errors import ModelLoadError, ModelUnavailableError
from modelyard.runtime.base import Capability, LoadOptions


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


# --- RestartPolicy ------------------------------------------------------------------------------


def test_restart_policy_backoff_doubles_and_is_capped() -> None:
    clock = Clock()
    p = RestartPolicy(max_restarts=100, backoff_s=1.0, backoff_cap_s=8.0, window_s=1e9, clock=clock)
    p.check("m")  # no failure yet: starts at once
    delays = []
    for _ in range(6):
        p.failed("m", "exit code 2")
        delays.append(p.delay_s())
        clock.t += 1000  # far past any backoff, but inside the window
    assert delays == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]


def test_restart_policy_fails_fast_during_backoff_with_retry_after() -> None:
    clock = Clock()
    p = RestartPolicy(max_restarts=5, backoff_s=1.0, clock=clock)
    p.failed("m", "exit code 2")
    clock.t += 0.25
    with pytest.raises(ModelLoadError) as ei:
        p.check("m")
    assert ei.value.retry_after_s == pytest.approx(0.75)
    assert "next start in 0.8s" in ei.value.message and "exit code 2" in ei.value.message
    assert ei.value.headers["retry-after"] == "1"
    clock.t += 0.75
    p.check("m")  # backoff over


def test_restart_policy_gives_up_after_max_restarts_and_says_why() -> None:
    clock = Clock()
    p = RestartPolicy(max_restarts=3, backoff_s=0.0, clock=clock)
    assert not p.failed("m", "exit code 2; log tail: boom")
    assert not p.failed("m", "exit code 2; log tail: boom")
    assert p.failed("m", "exit code 2; log tail: boom")
    clock.t += 10_000  # giving up is not forgotten with time
    with pytest.raises(ModelLoadError) as ei:
        p.check("m")
    msg = ei.value.message
    assert "stays down" in msg and "failed 3 times" in msg and "exit code 2" in msg and "boom" in msg
    p.reset()
    p.check("m")
    assert p.recent_failures() == 0


def test_restart_policy_forgets_failures_outside_the_window() -> None:
    clock = Clock()
    p = RestartPolicy(max_restarts=3, backoff_s=1.0, window_s=60.0, clock=clock)
    p.failed("m", "a")
    p.failed("m", "b")
    clock.t += 61
    assert p.recent_failures() == 0 and p.delay_s() == 0.0
    assert not p.failed("m", "c")  # a fresh streak: 1 of 3
    assert p.delay_s() == 1.0


def test_restart_policy_counts_restarts() -> None:
    p = RestartPolicy()
    assert p.restarts == 0
    for _ in range(3):
        p.started()
    assert p.restarts == 2
    with pytest.raises(ValueError):
        RestartPolicy(max_restarts=0)


def test_restart_policy_for_spec() -> None:
    spec = ProcessSpec("m", ["x"], max_restarts=2, restart_backoff_s=0.5, restart_backoff_cap_s=3, restart_window_s=9)
    p = RestartPolicy.for_spec(spec)
    assert (p.max_restarts, p.backoff_s, p.backoff_cap_s, p.window_s) == (2, 0.5, 3, 9)


# --- GpuPlacer --------------------------------------------------------------------------------


def test_placer_exclusive_is_alone_both_ways() -> None:
    g = GpuPlacer()
    g.place("a", "0", "exclusive", 10)
    with pytest.raises(PlacementError, match="'b' cannot join GPU 0: engine 'a' holds it exclusively"):
        g.place("b", "0", "time-slice")
    with pytest.raises(PlacementError, match="exclusively"):
        g.place("c", "0", "exclusive")
    g.place("b", "1", "time-slice")
    with pytest.raises(PlacementError, match="'c' asks for GPU 1 exclusively, but engine 'b' is already placed there"):
        g.place("c", "1", "exclusive")
    g.release("a")
    g.release("a")  # idempotent
    g.place("c", "0", "exclusive")
    assert {p.name for p in g.placements()} == {"b", "c"}


def test_placer_shared_devices_need_one_mode() -> None:
    g = GpuPlacer()
    g.place("a", "0", "mps", 100)
    g.place("b", "0", "mps", 50)
    with pytest.raises(PlacementError, match="same mode"):
        g.place("c", "0", "time-slice")
    g.place("c", "1", "time-slice", 7)
    g.place("d", "1", "time-slice", 3)
    assert g.device_usage() == {"0": 150, "1": 10}
    assert g.share_mode("0") == "mps" and g.share_mode("2") is None


def test_placer_replaces_own_placement_and_updates_bytes() -> None:
    g = GpuPlacer()
    g.place("a", "0", "exclusive", 10)
    g.place("a", "0", "exclusive", 20)  # a reload of the same engine is not a conflict with itself
    g.update("a", 99)
    g.update("nobody", 1)  # ignored
    assert g.device_usage() == {"0": 99}
    assert g.placement("a") is not None and g.placement("a").memory_bytes == 99


def test_placer_capacity_and_multi_gpu_split() -> None:
    g = GpuPlacer(capacities={"0": 100, "1": 100, "MIG-abc": 40})
    g.place("tp", "0,1", "time-slice", 120)  # 60 on each
    assert g.device_usage() == {"0": 60, "1": 60, "MIG-abc": 0}
    with pytest.raises(PlacementError, match="needs 50 bytes on GPU 0, which has 40 of 100 left"):
        g.place("x", "0", "time-slice", 50)
    g.place("x", "0", "time-slice", 40)
    g.place("mig", "MIG-abc", "exclusive", 40)
    with pytest.raises(PlacementError, match="unknown share mode"):
        g.place("y", "2", "shared")  # type: ignore[arg-type]
    with pytest.raises(PlacementError, match="empty GPU list"):
        g.place("y", " , ", "time-slice")


# --- specs and presets ------------------------------------------------------------------------


def test_preset_command_rendering() -> None:
    v = preset("vllm", name="qwen", model_path="/m/qwen")
    assert v.render(port=8001) == ["vllm", "serve", "/m/qwen", "--port", "8001", "--host", "127.0.0.1",
                                   "--served-model-name", "qwen", "--enable-sleep-mode"]
    assert (v.sleep_path, v.wake_path, v.env["VLLM_SERVER_DEV_MODE"]) == ("/sleep?level=1", "/wake_up", "1")
    assert v.render_warmup(port=1)["model"] == "qwen"
    assert preset("llamacpp-server", name="l").render(port=5, model_path="/a.gguf") == [
        "llama-server", "-m", "/a.gguf", "--port", "5", "--host", "127.0.0.1"]
    tgi = preset("tgi", name="t", health_timeout_s=30)
    assert tgi.render(port=7, model_path="org/m") == [
        "text-generation-launcher", "--model-id", "org/m", "--port", "7", "--hostname", "127.0.0.1"]
    assert tgi.health_path == "/health" and tgi.health_timeout_s == 30 and tgi.sleep_path is None
    x = preset("xllamacpp", name="smol", extra_args=["--threads", "1"])
    assert x.render(port=9, model_path="/s.gguf", opts=LoadOptions(n_ctx=4096, n_parallel=4)) == [
        sys.executable, "-m", "modelyard.engines.xllamacpp_server", "--model", "/s.gguf", "--port", "9",
        "--alias", "smol", "--n-ctx", "4096", "--n-parallel", "4", "--threads", "1"]
    assert x.render(port=9)[-6:] == ["smol", "--n-ctx", "2048", "--n-parallel", "2", "--threads", "1"][-6:]


def test_preset_openai_and_errors() -> None:
    o = preset("openai", name="o", command=["srv", "--listen={host}:{port}", '--json={"a": {"b": 1}}', "{gpu}"], gpu="MIG-1")
    assert o.render(port=3) == ["srv", "--listen=127.0.0.1:3", '--json={"a": {"b": 1}}', "MIG-1"]  # other braces untouched
    with pytest.raises(ValueError, match="needs command"):
        preset("openai", name="o")
    with pytest.raises(ValueError, match="unknown engine preset"):
        preset("nope", name="o")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs name"):
        preset("vllm")
    with pytest.raises(ValueError, match="go together"):
        ProcessSpec("m", ["x"], sleep_path="/sleep")
    with pytest.raises(ValueError, match="share"):
        ProcessSpec("m", ["x"], share="both")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="command"):
        ProcessSpec("m", [])
    assert preset("vllm", name="v", env={"X": "1"}).env == {"VLLM_SERVER_DEV_MODE": "1", "X": "1"}


def test_spec_uses_its_model_path_when_load_gives_none() -> None:
    s = ProcessSpec("m", ["run", "{model_path}"], model_path="/default")
    assert s.render(port=1) == ["run", "/default"]
    assert s.render(port=1, model_path="/given") == ["run", "/given"]
    assert ProcessSpec("m", ["x"], warmup_body=None).render_warmup(port=1) is None


# --- the engine object without a process ------------------------------------------------------


def test_engine_surface_before_load() -> None:
    e = ProcessEngine(preset("vllm", name="v"))
    assert e.capabilities == frozenset({Capability.chat, Capability.completion})
    assert e.supports_host_tier and not ProcessEngine(preset("tgi", name="t")).supports_host_tier
    assert e.state is EngineState.stopped and not e.alive and e.pid is None and e.restarts == 0
    with pytest.raises(ModelUnavailableError):
        _ = e.base_url
    e.unload()  # safe when never loaded
    e.unload()
    assert e.status()["state"] == "stopped"
    with pytest.raises(NotImplementedError):
        ProcessEngine(preset("tgi", name="t")).to_host()
    with pytest.raises(ModelUnavailableError, match="cannot sleep"):
        e.to_host()  # not running


def test_engine_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "7")
    e = ProcessEngine(ProcessSpec("m", ["x"], gpu="MIG-aaa", share="mps", declared_memory_bytes=3 << 30, env={"A": "b"}))
    env = e._env()
    assert env["CUDA_VISIBLE_DEVICES"] == "MIG-aaa" and env["A"] == "b" and env["PYTHONUNBUFFERED"] == "1"
    assert env["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] == "0=3072M"
    env2 = ProcessEngine(ProcessSpec("m", ["x"], gpu="0,1", share="mps", declared_memory_bytes=4 << 30))._env()
    assert env2["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] == "0=2048M,1=2048M"
    assert ProcessEngine(ProcessSpec("m", ["x"]))._env()["CUDA_VISIBLE_DEVICES"] == "7"  # gpu=None: inherited


def test_load_refused_by_policy_or_placement_spawns_nothing(tmp_path) -> None:
    policy = RestartPolicy(max_restarts=1)
    policy.failed("m", "exit code 2")
    spec = ProcessSpec("m", ["/nonexistent/never-run"], log_dir=str(tmp_path))
    with pytest.raises(ModelLoadError, match="stays down"):
        ProcessEngine(spec, restart_policy=policy).load("", LoadOptions())
    assert policy.starts == 0

    placer = GpuPlacer()
    placer.place("other", "0", "exclusive")
    e = ProcessEngine(ProcessSpec("m", ["/nonexistent/never-run"], gpu="0", log_dir=str(tmp_path)), placer=placer)
    with pytest.raises(ModelLoadError, match="cannot be placed.*holds it exclusively"):
        e.load("", LoadOptions())
    assert e.state is EngineState.failed and e.pid is None and e.policy.recent_failures() == 0


def test_missing_command_is_a_clear_load_error(tmp_path) -> None:
    e = ProcessEngine(ProcessSpec("m", ["/nonexistent/engine-binary", "--port", "{port}"], log_dir=str(tmp_path)))
    with pytest.raises(ModelLoadError, match="cannot run '/nonexistent/engine-binary'.*PATH"):
        e.load("", LoadOptions())
    assert e.state is EngineState.failed and e.policy.recent_failures() == 1
    with pytest.raises(ModelLoadError, match="one per load"):
        e.load("", LoadOptions())


def test_describe_exit() -> None:
    assert describe_exit(3) == "exit code 3"
    assert describe_exit(-signal.SIGKILL) == "killed by SIGKILL"
    assert describe_exit(None) == "still running"


# --- logs -------------------------------------------------------------------------------------


def test_log_rotation_with_a_tiny_max_size(tmp_path) -> None:
    path = tmp_path / "e.log"
    log = procs.RotatingLog(path, max_bytes=100, backups=2)
    for i in range(30):
        log.write(f"line {i:04d} .........\n".encode())  # 20 bytes each: 5 lines per file
    log.close()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["e.log", "e.log.1", "e.log.2"]  # never more than `backups` old files
    assert all(p.stat().st_size <= 100 for p in tmp_path.iterdir())
    assert path.read_text().splitlines() == [f"line {i:04d} ........." for i in range(25, 30)]
    assert (tmp_path / "e.log.1").read_text().splitlines()[0] == "line 0020 ........."  # .1 is the newest backup
    assert (tmp_path / "e.log.2").read_text().splitlines()[0] == "line 0015 ........."
    assert log.rotations == 5
    assert log.tail(2) == "line 0028 .........\nline 0029 ........."


def test_log_tail_folds_repeated_lines(tmp_path) -> None:
    log = procs.RotatingLog(tmp_path / "e.log", max_bytes=1 << 20, backups=1)
    log.write(b"loading model\n" + b"GET /health 503\n" * 40 + b"\nstill loading\n")
    log.close()
    assert log.tail(3) == "loading model\nGET /health 503 [x40]\nstill loading"


def test_log_without_backups_truncates_and_splits_big_writes(tmp_path) -> None:
    log = procs.RotatingLog(tmp_path / "e.log", max_bytes=10, backups=0)
    log.write(b"x" * 25)
    log.note("hi")
    log.close()
    assert [p.name for p in tmp_path.iterdir()] == ["e.log"]
    assert (tmp_path / "e.log").stat().st_size <= 10


def test_log_appends_to_an_existing_file(tmp_path) -> None:
    (tmp_path / "e.log").write_bytes(b"old\n")
    log = procs.RotatingLog(tmp_path / "e.log", max_bytes=1000, backups=1)
    log.write(b"new\n")
    log.close()
    assert (tmp_path / "e.log").read_bytes() == b"old\nnew\n"
    assert log.tail() == "new"  # the in-memory tail holds this writer's output only


def test_pump_copies_a_pipe_until_eof(tmp_path) -> None:
    log = procs.RotatingLog(tmp_path / "p.log", max_bytes=64, backups=3)
    r, w = os.pipe()
    t = procs.pump(r, log)
    for i in range(20):
        os.write(w, f"{i:02d} abcdefgh\n".encode())
    os.close(w)
    t.join(5)
    assert not t.is_alive()
    log.close()
    assert log.rotations >= 3 and log.tail(1) == "19 abcdefgh"


# --- ports and the process table --------------------------------------------------------------


def test_free_port_and_port_taken() -> None:
    port = procs.free_port()
    assert 0 < port < 65536 and not procs.port_taken(port)
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
        s.listen()
        assert procs.port_taken(port)
        assert procs.owns_listener(port, [os.getpid()]) is True
        assert procs.owns_listener(port, [1 << 22]) is None  # no such pid: cannot tell
    assert not procs.port_taken(port)
    assert procs.listener_inodes(port) == set()


def test_free_ports_differ_and_bind() -> None:
    ports = {procs.free_port() for _ in range(20)}
    assert len(ports) > 1
    for p in list(ports)[:3]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", p))


def test_process_table_helpers() -> None:
    me = os.getpid()
    info = procs.proc_info(me)
    assert info is not None and info.ppid == os.getppid() and info.rss > 0
    assert procs.pid_alive(me) and not procs.pid_alive(1 << 22)
    assert me in procs.tree_pids(os.getppid())
    assert procs.tree_rss(me) >= info.rss
    assert me in procs.group_members(os.getpgid(0))
    assert procs.signal_group(1 << 22, 0) is False


def test_gpu_memory_parses_nvidia_smi(monkeypatch: pytest.MonkeyPatch) -> None:
    class Out:
        returncode, stdout = 0, "444, 3590\n445, 10\n999, 77\n[N/A], [N/A]\n"

    calls = []
    monkeypatch.setattr(procs.shutil, "which", lambda name: "/usr/bin/nvidia-smi")
    assert procs.gpu_memory([444, 445], run=lambda argv, **kw: calls.append(argv) or Out()) == 3600 << 20
    assert calls[0][1:] == ["--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"]
    Out.returncode = 9
    assert procs.gpu_memory([444], run=lambda argv, **kw: Out()) is None
    monkeypatch.setattr(procs.shutil, "which", lambda name: None)
    assert procs.gpu_memory([444]) is None


def test_pdeathsig_preexec_is_resolved_up_front() -> None:
    fn = procs.pdeathsig_preexec()
    assert fn is not None  # Linux
    done: list[bool] = []
    t = threading.Thread(target=lambda: done.append(callable(fn)))
    t.start()
    t.join()
    assert done == [True]
