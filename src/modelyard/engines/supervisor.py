"""``ProcessEngine``: one model served by a managed engine process (vLLM, llama.cpp, TGI, ...).

It implements the ``Engine`` protocol of ``runtime/base.py``, so the memory manager drives it like
an in-process engine: ``load`` spawns and readies the process, ``to_host``/``to_active`` put it to
sleep and wake it (engines with a sleep API), ``unload`` stops it. Inference does not go through
this object: the process backend forwards OpenAI requests over HTTP to ``engine.base_url``.

One engine object per load (the manager's rule), so each object runs at most one process:

* **spawn**: a free loopback port, the command rendered from the spec, its own process group
  (``start_new_session``) so a stop reaches every process it started, a parent-death signal so it
  never outlives modelyard (``procs.pdeathsig_preexec``), ``CUDA_VISIBLE_DEVICES`` from
  ``spec.gpu``, stdout+stderr through a pipe into a size-rotated log.
* **ready**: ``health_path`` polled until 200 within ``health_timeout_s``; an exit during start-up
  fails the load at once with the log's tail. A port taken under us (the bind race of "port 0,
  close, reuse", or a squatter answering our probe) is retried on a new port.
* **watch**: the thread that spawned the process waits on it (it must live as long as the child:
  PDEATHSIG fires when the *forking thread* ends) and, every ``health_interval_s``, probes health.
  An exit or ``unhealthy_after`` failed probes make ``alive`` False, count as a failure in the
  ``RestartPolicy`` and call ``on_down`` — the memory manager unloads it and the next lease loads
  a fresh engine. (A probe on every lease would add a round trip to the hot path; the watcher
  costs nothing per request and sees an exit the moment it happens.)
* **stop**: SIGTERM to the group, ``stop_grace_s``, SIGKILL to the group, reaped; idempotent.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import os
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Any

from modelyard.engines import procs
from modelyard.engines.placement import GpuPlacer, Placement, PlacementError
from modelyard.engines.restart import RestartPolicy
from modelyard.engines.spec import LOOPBACK, ProcessSpec
from modelyard.errors import ModelLoadError, ModelUnavailableError
from modelyard.runtime.base import Capability, Footprint, LoadOptions

__all__ = ["EngineState", "GpuPlacer", "Placement", "PlacementError", "ProcessEngine", "RestartPolicy"]

log = logging.getLogger("modelyard.engines")
DownHook = Callable[["ProcessEngine", str], None]


class EngineState(str, Enum):
    stopped = "stopped"  # no process (never started, or stopped by unload)
    starting = "starting"  # spawned, waiting for health / warm-up
    ready = "ready"
    sleeping = "sleeping"  # parked by to_host (weights in CPU RAM)
    unhealthy = "unhealthy"  # running, but failed unhealthy_after health probes in a row
    exited = "exited"  # the process ended without being asked to
    stopping = "stopping"
    failed = "failed"  # load failed; nothing left running


class _PortTaken(Exception):
    pass


def describe_exit(rc: int | None) -> str:
    if rc is None:
        return "still running"
    if rc < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-rc).name}"
        return f"killed by signal {-rc}"
    return f"exit code {rc}"


class ProcessEngine:
    """One model in one managed process (see the module docstring)."""

    def __init__(self, spec: ProcessSpec, *, restart_policy: RestartPolicy | None = None,
                 placer: GpuPlacer | None = None, on_down: DownHook | None = None,
                 ports: Callable[[], int] = procs.free_port) -> None:
        self.spec = spec
        self.name = spec.name
        self.policy = restart_policy or RestartPolicy.for_spec(spec)
        self.capabilities = frozenset(Capability(c) for c in spec.capabilities)
        self.supports_host_tier = spec.sleep_path is not None
        self.placer, self.on_down, self._ports = placer, on_down, ports
        self.pid: int | None = None
        self.port: int | None = None
        self.state = EngineState.stopped
        self.last_exit: int | None = None  # return code (negative: killed by that signal)
        self.down_reason: str | None = None
        self.footprint: Footprint | None = None
        self.timings: dict[str, float] = {}  # spawn_to_healthy_s, warmup_s, load_s, unload_s, ...
        self.log: procs.RotatingLog | None = None
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._exited = threading.Event()
        self._watcher: threading.Thread | None = None
        self._pump: threading.Thread | None = None
        self._stopping = False
        self._bad_probes = 0
        self._model_path = ""
        self._opts = LoadOptions()
        self._t_spawn = 0.0

    # --- views ------------------------------------------------------------------------------
    @property
    def restarts(self) -> int:
        return self.policy.restarts

    @property
    def alive(self) -> bool:
        return self.state in (EngineState.ready, EngineState.sleeping)

    @property
    def base_url(self) -> str:
        if self.port is None or self._proc is None:
            raise ModelUnavailableError(f"engine {self.name!r} is not running")
        return f"http://{LOOPBACK}:{self.port}{self.spec.api_prefix}"

    @property
    def log_path(self) -> Path:
        return Path(self.spec.log_dir or os.path.join(tempfile.gettempdir(), "modelyard-engines")) / f"{self.name}.log"

    def wait_exited(self, timeout: float) -> bool:
        """Block up to ``timeout`` s for the process to be seen gone (exited, or unhealthy): True if
        it is. For a request whose connection broke, to tell a dead engine from a network blip."""
        return self._exited.wait(timeout) or not self.alive

    def info(self) -> dict[str, Any]:
        """What the memory manager's snapshot shows under ``engine`` (/admin/models)."""
        return self.status()

    def status(self) -> dict[str, Any]:
        """For /admin/models."""
        return {"state": self.state.value, "pid": self.pid, "port": self.port, "restarts": self.restarts,
                "last_exit": self.last_exit, "down_reason": self.down_reason, "log": str(self.log_path),
                "base_url": None if self.port is None or self._proc is None else self.base_url}

    def log_tail(self, lines: int = 20) -> str:
        return self.log.tail(lines) if self.log is not None else ""

    # --- residency (the Engine protocol; blocking, called from a worker thread) -------------
    def load(self, artifact_path: str, opts: LoadOptions) -> Footprint:
        if self._proc is not None or self.state is not EngineState.stopped:
            raise ModelLoadError(f"engine {self.name!r}: this engine object was already used (one per load)")
        self.policy.check(self.name)
        self._model_path = artifact_path or self.spec.model_path
        self._opts = opts
        self.log = procs.RotatingLog(self.log_path, self.spec.log_max_bytes, self.spec.log_backups)
        t0 = time.perf_counter()
        try:
            if self.placer is not None and self.spec.gpu:
                self.placer.place(self.name, self.spec.gpu, self.spec.share, self.spec.declared_memory_bytes)
            self.policy.started()
            self._start()
            t1 = time.perf_counter()
            self._warm(self.spec.warmup_timeout_s)
            self.timings["warmup_s"] = time.perf_counter() - t1
            used, how = self._measure()
            if self.placer is not None and self.spec.gpu:
                self.placer.update(self.name, used)
        except BaseException as exc:
            err = self._fail_load(exc)
            if err is exc:
                raise
            raise err from exc
        self.footprint = Footprint(weights=used)
        self.timings["load_s"] = time.perf_counter() - t0
        with self._lock:
            if self.state is EngineState.starting:  # the watcher may already have seen it die
                self.state = EngineState.ready
        if self.state is not EngineState.ready:
            raise self._fail_load(ModelLoadError(
                f"engine {self.name!r} went down at the end of its load ({describe_exit(self.last_exit)}); "
                f"log tail:\n{self.log_tail()}"))
        self.log.note(f"ready on port {self.port} (pid {self.pid}) in {self.timings['load_s']:.2f}s; "
                      f"footprint {used} bytes ({how})")
        return self.footprint

    def _measure(self) -> tuple[int, str]:
        """Bytes the engine occupies on its device: declared, else GPU memory of the process tree
        (engines placed on a GPU), else the tree's RSS."""
        if self.spec.declared_memory_bytes:
            return self.spec.declared_memory_bytes, "declared"
        pids = procs.tree_pids(self.pid) if self.pid else []
        if self.spec.gpu is not None:
            gpu = procs.gpu_memory(pids)
            if gpu:
                return gpu, "measured GPU memory (nvidia-smi)"
            assert self.log is not None
            self.log.note("GPU memory of the engine could not be measured (no nvidia-smi, or it does not show these "
                          "pids); falling back to RSS: set declared_memory_bytes")
        return (procs.tree_rss(self.pid) if self.pid else 0), "measured RSS of the process tree"

    def to_host(self) -> None:
        if self.spec.sleep_path is None:
            raise NotImplementedError(f"engine {self.name!r} has no sleep API (unload instead)")
        self._residency_call(self.spec.sleep_path, "sleep", EngineState.ready, EngineState.sleeping)

    def to_active(self) -> None:
        if self.spec.wake_path is None:
            raise NotImplementedError(f"engine {self.name!r} has no wake API: load from disk")
        self._residency_call(self.spec.wake_path, "wake", EngineState.sleeping, EngineState.ready)

    def warmup(self) -> None:
        if self.spec.warmup_body is not None:
            self._warm(self.spec.warmup_timeout_s)

    def unload(self) -> None:
        """Stop the process group (SIGTERM, grace, SIGKILL) and reap it. Safe in every state."""
        t0 = time.perf_counter()
        with self._lock:
            proc, self._stopping = self._proc, True
            if proc is not None:
                self.state = EngineState.stopping
        if proc is not None:
            self._stop(proc)
            self.timings["unload_s"] = time.perf_counter() - t0
            if self.log is not None:
                self.log.note(f"stopped ({describe_exit(self.last_exit)}) in {self.timings['unload_s']:.2f}s")
        with self._lock:
            self._proc = None
            if self.state is not EngineState.failed:
                self.state = EngineState.stopped
        if self.placer is not None:
            self.placer.release(self.name)
        if self.log is not None:
            self.log.close()

    # --- start-up ---------------------------------------------------------------------------
    def _start(self) -> None:
        last_port = None
        for _ in range(self.spec.port_attempts):
            port = self._ports()
            try:
                self._spawn(port)
                self._wait_healthy(port)
                return
            except _PortTaken:
                last_port = port
                assert self.log is not None
                self.log.note(f"port {port} was taken by another process; retrying on a new port")
                self._stop_current()
        raise ModelLoadError(f"engine {self.name!r}: the port was taken by another process {self.spec.port_attempts} "
                             f"time(s) in a row (last {last_port}); giving up this load")

    def _env(self) -> dict[str, str]:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if self.spec.gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = self.spec.gpu
            if self.spec.share == "mps" and self.spec.declared_memory_bytes:
                n = len([d for d in self.spec.gpu.split(",") if d.strip()])
                per = max(1, self.spec.declared_memory_bytes // max(1, n) // (1 << 20))
                env["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] = ",".join(f"{i}={per}M" for i in range(n))
        env.update(self.spec.env)
        return env

    def _spawn(self, port: int) -> None:
        """Spawn from a dedicated thread that then waits on the child for its whole life (the
        parent-death signal is bound to the forking thread, see procs.pdeathsig_preexec)."""
        assert self.log is not None
        argv = self.spec.render(port=port, model_path=self._model_path, opts=self._opts)
        env = self._env()
        started = threading.Event()
        box: dict[str, Any] = {}
        self._exited = threading.Event()
        self._bad_probes = 0
        self.last_exit = None

        def run() -> None:
            r, w = os.pipe()
            try:
                proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=w, stderr=w, env=env,
                                        start_new_session=True, preexec_fn=procs.pdeathsig_preexec(), close_fds=True)
            except BaseException as exc:  # noqa: BLE001 - handed to load()
                os.close(r)
                box["error"] = exc
                started.set()
                return
            finally:
                os.close(w)
            box["proc"] = proc
            box["pump"] = procs.pump(r, self.log)  # type: ignore[arg-type]
            started.set()
            self._watch(proc)

        self.log.note(f"starting on port {port}: {' '.join(argv)}")
        with self._lock:
            self.state = EngineState.starting
        t0 = time.perf_counter()
        watcher = threading.Thread(target=run, name=f"engine:{self.name}", daemon=True)
        watcher.start()
        started.wait()
        if "error" in box:
            exc = box["error"]
            hint = " (is it installed and on PATH?)" if isinstance(exc, FileNotFoundError) else ""
            raise ModelLoadError(f"engine {self.name!r}: cannot run {argv[0]!r}{hint}: {exc}") from exc
        with self._lock:
            self._proc, self._watcher, self._pump = box["proc"], watcher, box["pump"]
            self.pid, self.port = box["proc"].pid, port
        self._t_spawn = t0

    def _wait_healthy(self, port: int) -> None:
        deadline = time.monotonic() + self.spec.health_timeout_s
        delay = 0.01
        while True:
            if self._exited.is_set():
                self._started_exit(port)
            left = deadline - time.monotonic()
            if left <= 0:
                raise ModelLoadError(
                    f"engine {self.name!r} did not become healthy (GET {self.spec.health_path} → 200) within "
                    f"{self.spec.health_timeout_s:g}s; log {self.log_path}, tail:\n{self.log_tail()}")
            status, _ = self._http("GET", self.spec.health_path, timeout=min(2.0, max(0.1, left)))
            if status == 200:
                pids = procs.tree_pids(self.pid) if self.pid else []
                if procs.owns_listener(port, pids) is False:  # someone else answers on "our" port
                    raise _PortTaken()
                self.timings["spawn_to_healthy_s"] = time.perf_counter() - self._t_spawn
                return
            self._exited.wait(min(delay, max(0.0, left)))
            # fine polling first (a small model is ready in < 1 s; a refused connect costs µs), coarse later
            delay = min(0.05 if time.perf_counter() - self._t_spawn < 10 else 0.25, delay * 1.5)

    def _started_exit(self, port: int) -> None:
        tail = self.log_tail()
        if procs.port_taken(port) or "address already in use" in tail.lower():
            raise _PortTaken()
        raise ModelLoadError(
            f"engine {self.name!r} exited during start-up ({describe_exit(self.last_exit)}); "
            f"log {self.log_path}, tail:\n{tail}")

    def _warm(self, timeout: float) -> None:
        assert self.port is not None
        body = self.spec.render_warmup(port=self.port, model_path=self._model_path, opts=self._opts)
        if body is None:
            return
        status, data = self._http("POST", self.spec.warmup_path, body, timeout=timeout)
        if not 200 <= status < 300:
            gone = f" ({describe_exit(self.last_exit)})" if self._exited.is_set() else ""
            detail = data[:300].decode("utf-8", "replace") if status else "no answer"
            raise ModelLoadError(f"engine {self.name!r}: warm-up POST {self.spec.warmup_path} failed{gone}: "
                                 f"{status or ''} {detail}; log tail:\n{self.log_tail()}")

    def _fail_load(self, exc: BaseException) -> BaseException:
        """Clean up after a failed load (nothing may keep running) and return the error to raise."""
        if isinstance(exc, PlacementError):
            err: BaseException = ModelLoadError(f"engine {self.name!r} cannot be placed: {exc}")
            counted = False  # a configuration problem, not a crash: no restart accounting
        elif isinstance(exc, ModelLoadError):
            err, counted = exc, exc.retry_after_s is None
        elif isinstance(exc, Exception):
            err, counted = ModelLoadError(f"engine {self.name!r} failed to start: {exc}"), True
        else:
            err, counted = exc, False  # KeyboardInterrupt, cancellation: stop, re-raise as is
        with self._lock:
            self._stopping = True
        self._stop_current()
        with self._lock:
            self._proc = None
            self.state = EngineState.failed
        if self.placer is not None:
            self.placer.release(self.name)
        if self.log is not None:
            self.log.note(f"load failed: {getattr(err, 'message', err)}")
            self.log.close()
        if counted and isinstance(err, ModelLoadError):
            reason = err.message
            if self.policy.failed(self.name, reason):
                err = ModelLoadError(f"{reason}\n{self.policy.gave_up}")
        return err

    # --- watching ---------------------------------------------------------------------------
    def _watch(self, proc: subprocess.Popen[bytes]) -> None:
        interval = self.spec.health_interval_s or None
        while True:
            try:
                rc = proc.wait(timeout=interval)
                break
            except subprocess.TimeoutExpired:
                if self.state is EngineState.ready and not self._stopping:
                    self._probe()
        reason = f"engine process {proc.pid} exited unexpectedly ({describe_exit(rc)})"
        with self._lock:
            self.last_exit = rc
            # an unhealthy engine was already reported (and counted) once
            unexpected = not self._stopping and self.state in (EngineState.ready, EngineState.sleeping)
            if not self._stopping and self.state is not EngineState.failed:
                self.state = EngineState.exited
            if unexpected:
                self.down_reason = reason
        self._exited.set()
        if unexpected:
            self._down(reason)

    def _probe(self) -> None:
        status, _ = self._http("GET", self.spec.health_path, timeout=min(5.0, max(1.0, self.spec.health_interval_s)))
        if status == 200:
            self._bad_probes = 0
            return
        self._bad_probes += 1
        if self._bad_probes >= self.spec.unhealthy_after:
            reason = f"engine failed {self._bad_probes} health checks in a row (last status {status or 'none'})"
            with self._lock:
                if self.state is not EngineState.ready or self._stopping:
                    return
                self.state, self.down_reason = EngineState.unhealthy, reason
            self._down(reason)

    def _down(self, reason: str) -> None:
        """Report a ready engine gone (exit or failed health): log, restart policy, hook."""
        tail = self.log_tail(10)
        if self.log is not None:
            self.log.note(reason)
        log.warning("engine %r: %s", self.name, reason)
        self.policy.failed(self.name, f"{reason}; log tail:\n{tail}" if tail else reason)
        if self.on_down is not None:
            try:
                self.on_down(self, reason)
            except Exception:
                log.exception("engine %r: on_down hook raised", self.name)

    # --- stopping ---------------------------------------------------------------------------
    def _stop_current(self) -> None:
        with self._lock:
            proc = self._proc
        if proc is not None:
            self._stop(proc)
            with self._lock:
                self._proc = None

    def _stop(self, proc: subprocess.Popen[bytes]) -> None:
        pgid = proc.pid  # start_new_session: the leader's pid is the group id
        grace = self.spec.stop_grace_s
        deadline = time.monotonic() + grace
        procs.signal_group(pgid, signal.SIGTERM)
        self._exited.wait(grace)
        while procs.group_members(pgid) and time.monotonic() < deadline:
            time.sleep(0.02)
        if not self._exited.is_set() or procs.group_members(pgid):
            if self.log is not None:
                self.log.note(f"process group {pgid} still running {grace:g}s after SIGTERM: SIGKILL")
            procs.signal_group(pgid, signal.SIGKILL)
            self._exited.wait(10.0)
            end = time.monotonic() + 5.0
            while procs.group_members(pgid) and time.monotonic() < end:
                procs.signal_group(pgid, signal.SIGKILL)
                time.sleep(0.02)
        for t in (self._watcher, self._pump):
            if t is not None and t is not threading.current_thread():
                t.join(timeout=5.0)

    def _residency_call(self, path: str, what: str, expect: EngineState, then: EngineState) -> None:
        if self.state is not expect:
            raise ModelUnavailableError(f"engine {self.name!r} cannot {what}: it is {self.state.value}")
        t0 = time.perf_counter()
        status, data = self._http("POST", path, timeout=self.spec.warmup_timeout_s)
        if not 200 <= status < 300:
            detail = data[:300].decode("utf-8", "replace") if status else "no answer"
            cls = ModelLoadError if what == "wake" else ModelUnavailableError
            raise cls(f"engine {self.name!r}: {what} (POST {path}) failed: {status or ''} {detail}")
        with self._lock:
            if self.state is expect:
                self.state = then
        self.timings[f"{what}_s"] = time.perf_counter() - t0

    def _http(self, method: str, path: str, body: dict[str, Any] | None = None, *,
              timeout: float) -> tuple[int, bytes]:
        """One request to the engine; (0, b"") when it cannot be reached."""
        if self.port is None:
            return 0, b""
        conn = http.client.HTTPConnection(LOOPBACK, self.port, timeout=timeout)
        try:
            payload = None if body is None else json.dumps(body).encode()
            headers = {"Content-Type": "application/json"} if payload is not None else {}
            conn.request(method, path, body=payload, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.read()
        except (OSError, http.client.HTTPException):
            return 0, b""
        finally:
            conn.close()
