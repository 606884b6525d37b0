"""Helpers for the integration tests: real processes (mock upstreams, the gateway) on loopback.

Every process is started with ``sys.executable``, waited for with a bounded wait that fails with
the process's stderr, and stopped (SIGTERM, then SIGKILL) by the ``ProcessPool`` that started it.
"""

from __future__ import annotations

import copy
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import yaml
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))
from openapi_schema import validate  # noqa: E402

STARTUP_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 15.0
HTTP_TIMEOUT_S = 10.0
CLIENT_KEY = "sk-test"

_LISTENING = re.compile(r"modelyard listening on (http://127\.0\.0\.1:(\d+))")


def wait_until(pred: Callable[[], Any], timeout: float = 10.0, message: str = "condition", interval: float = 0.02) -> Any:
    """Poll ``pred`` until it returns something truthy; fail with ``message`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = pred()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {message} (last value: {last!r})")
        time.sleep(interval)


def until_refused(client: httpx.Client, body: dict[str, Any], timeout: float = 3.0) -> tuple[httpx.Response, int]:
    """POST ``body`` to /v1/chat/completions after a SIGTERM until the draining gateway answers 503;
    (that 503, how many were still served first: the signal is acted on at uvicorn's next tick,
    ≤ 0.1 s)."""
    served = 0

    def attempt() -> httpx.Response | None:
        nonlocal served
        r = client.post("/v1/chat/completions", json=body)
        served += r.status_code == 200
        return r if r.status_code == 503 else None

    return wait_until(attempt, timeout, "new requests refused with 503 after SIGTERM"), served


def closed_port() -> int:
    """A loopback port with nothing listening on it (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ManagedProcess:
    """A child process whose stdout is read line by line and whose stderr goes to a file."""

    def __init__(self, name: str, argv: list[str], workdir: Path, env: Mapping[str, str] | None = None) -> None:
        self.name = name
        self.argv = argv
        self.stderr_path = workdir / f"{name}.stderr.log"
        self._stderr = open(self.stderr_path, "wb")  # noqa: SIM115 - closed in stop()
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if env:
            full_env.update(env)
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=self._stderr, stdin=subprocess.DEVNULL, env=full_env, cwd=str(REPO)
        )
        self.stdout_lines: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read_stdout, name=f"{name}-stdout", daemon=True)
        self._reader.start()
        self.stopped_cleanly: bool | None = None

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self.stdout_lines.append(line)
            self._lines.put(line)
        self._lines.put(None)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stderr_text(self) -> str:
        self._stderr.flush()
        return self.stderr_path.read_text("utf-8", "replace")

    def describe(self) -> str:
        return (
            f"{self.name} (pid {self.pid}, returncode {self.proc.poll()}): {' '.join(self.argv)}\n"
            f"--- stdout ---\n" + "\n".join(self.stdout_lines) + f"\n--- stderr ---\n{self.stderr_text()[-4000:]}"
        )

    def wait_for_line(self, pattern: re.Pattern[str], timeout: float = STARTUP_TIMEOUT_S) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                self.kill()
                raise AssertionError(f"{self.name} did not print {pattern.pattern!r} within {timeout:g}s\n{self.describe()}")
            try:
                line = self._lines.get(timeout=min(left, 0.5))
            except queue.Empty:
                continue
            if line is None:
                self.proc.wait(timeout=5)
                raise AssertionError(f"{self.name} exited before printing {pattern.pattern!r}\n{self.describe()}")
            m = pattern.search(line)
            if m:
                return m

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int | None:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        """SIGTERM, wait, then SIGKILL. Records whether SIGTERM alone was enough."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            if self.wait(STOP_TIMEOUT_S) is None:
                self.stopped_cleanly = False
                self.kill()
            else:
                self.stopped_cleanly = True
        elif self.stopped_cleanly is None:
            self.stopped_cleanly = True  # had already exited (e.g. a test signalled it)
        self._reader.join(timeout=5)
        self._stderr.close()


class MockUpstream(ManagedProcess):
    """``python -m modelyard.testing.mock_upstream`` with helpers for its /mock/* endpoints."""

    _READY = re.compile(r"^MOCK_LISTENING (http://\S+)$")

    def __init__(self, name: str, workdir: Path, *, behavior: str | None = None, api_key: str | None = None) -> None:
        argv = [sys.executable, "-m", "modelyard.testing.mock_upstream", "--host", "127.0.0.1", "--port", "0"]
        if behavior:
            argv += ["--behavior", behavior]
        if api_key:
            argv += ["--api-key", api_key]
        super().__init__(name, argv, workdir)
        self.root_url = self.wait_for_line(self._READY).group(1)
        self.url = self.root_url + "/v1"
        self._http = httpx.Client(base_url=self.root_url, timeout=HTTP_TIMEOUT_S)

    def stats(self) -> dict[str, Any]:
        r = self._http.get("/mock/stats")
        r.raise_for_status()
        return r.json()

    def control(self, behavior: str) -> None:
        r = self._http.post("/mock/control", json={"behavior": behavior})
        assert r.status_code == 200, r.text

    def reset(self, behavior: str = "ok") -> None:
        self.control(behavior)
        r = self._http.post("/mock/reset")
        assert r.status_code == 200, r.text

    def last_request(self) -> dict[str, Any]:
        last = self.stats()["last_request"]
        assert last is not None, f"{self.name} received no request"
        return last

    def wait_idle(self, timeout: float = 10.0) -> dict[str, Any]:
        return wait_until(lambda: (s := self.stats())["in_flight"] == 0 and s, timeout, f"{self.name} in_flight == 0")

    def stop(self) -> None:
        self._http.close()
        super().stop()


class Gateway(ManagedProcess):
    """``python -m modelyard serve --config FILE --port 0``."""

    def __init__(self, name: str, workdir: Path, serve_args: list[str], env: Mapping[str, str] | None = None) -> None:
        argv = [sys.executable, "-m", "modelyard", "serve", *serve_args, "--port", "0"]
        super().__init__(name, argv, workdir, env)
        m = self.wait_for_line(_LISTENING)
        self.url = m.group(1)
        self.port = int(m.group(2))
        self.http = httpx.Client(base_url=self.url, timeout=HTTP_TIMEOUT_S)

    def client(self, api_key: str = CLIENT_KEY, **kw: Any) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=api_key, max_retries=0, timeout=kw.pop("timeout", HTTP_TIMEOUT_S), **kw)

    def async_client(self, api_key: str = CLIENT_KEY, **kw: Any) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=f"{self.url}/v1", api_key=api_key, max_retries=0, timeout=kw.pop("timeout", HTTP_TIMEOUT_S), **kw)

    def metrics_text(self) -> str:
        r = self.http.get("/metrics")
        assert r.status_code == 200, r.text
        return r.text

    def metric(self, name: str, **labels: str) -> float | None:
        """Sum of the samples called ``name`` whose labels include ``labels``; None if there is none."""
        return metric_value(self.metrics_text(), name, **labels)

    def access_log(self) -> list[dict[str, Any]]:
        """The JSON access-log lines written to stderr so far."""
        out = []
        for line in self.stderr_text().splitlines():
            if line.startswith("{"):
                try:
                    out.append(orjson.loads(line))
                except orjson.JSONDecodeError:
                    pass
        return out

    def stop(self) -> None:
        self.http.close()
        super().stop()


def metric_value(text: str, name: str, **labels: str) -> float | None:
    found = False
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                found = True
                total += sample.value
    return total if found else None


class ProcessPool:
    """Starts processes and, at teardown, stops every one of them and asserts that each exited."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: list[ManagedProcess] = []
        self._n = 0

    def _name(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}{self._n}"

    def mock(self, *, behavior: str | None = None, api_key: str | None = None) -> MockUpstream:
        proc = MockUpstream(self._name("mock"), self.workdir, behavior=behavior, api_key=api_key)
        self.procs.append(proc)
        return proc

    def gateway(self, config: Any, *, env: Mapping[str, str] | None = None) -> Gateway:
        cfg = copy.deepcopy(config)
        if isinstance(cfg, dict) and "model_list" not in cfg:
            server = cfg.setdefault("server", {})
            server.setdefault("graceful_timeout_s", 3)  # keep teardown quick
        name = self._name("gateway")
        path = self.workdir / f"{name}.yaml"
        path.write_text(cfg if isinstance(cfg, str) else yaml.safe_dump(cfg, sort_keys=False))
        return self.gateway_args(["--config", str(path)], env=env, name=name)

    def gateway_args(self, serve_args: list[str], *, env: Mapping[str, str] | None = None, name: str | None = None) -> Gateway:
        """``modelyard serve SERVE_ARGS --port 0``."""
        gw = Gateway(name or self._name("gateway"), self.workdir, serve_args, env)  # kills itself if never ready
        self.procs.append(gw)
        return gw

    def close(self) -> None:
        problems = []
        for proc in reversed(self.procs):
            proc.stop()
            if proc.proc.returncode is None:
                problems.append(f"{proc.name} is still running")
            elif not proc.stopped_cleanly:
                problems.append(f"{proc.name} ignored SIGTERM for {STOP_TIMEOUT_S:g}s and had to be killed\n{proc.describe()}")
        self.procs.clear()
        assert not problems, "\n".join(problems)


# --- configs ----------------------------------------------------------------------------------


def deployment(upstream: MockUpstream | str, model: str, **kw: Any) -> dict[str, Any]:
    base = upstream if isinstance(upstream, str) else upstream.url
    return {"api_base": base, "model": model, **kw}


def model_cfg(name: str, *deployments: dict[str, Any], **kw: Any) -> dict[str, Any]:
    return {"name": name, "deployments": list(deployments), **kw}


FAST_RETRY = {"num_retries": 0, "backoff_base_s": 0.01, "backoff_max_s": 0.05}


# --- assertions -------------------------------------------------------------------------------


def assert_error(resp: httpx.Response, status: int, *, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """``resp`` is an OpenAI-shaped error produced with ``status``; returns its ``error`` object."""
    assert "Traceback" not in resp.text, resp.text
    assert resp.status_code == status, f"expected {status}, got {resp.status_code}: {resp.text}"
    assert resp.headers.get("content-type", "").startswith("application/json"), resp.headers
    body = resp.json()
    validate(body, "ErrorResponse")
    err = body["error"]
    if param is not None:
        assert err["param"] == param or param in err["message"], err
    if code is not None:
        assert err["code"] == code, err
    return err
