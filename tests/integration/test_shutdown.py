"""Stopping the gateway (issue 10 §5): SIGTERM drains in-flight requests and streams while new ones
get 503 + Retry-After, flushes the spend rows and stops the engines; SIGKILL loses at most the
spend rows of the writer's last flush window, leaves no engine process behind, and the rows it had
spooled are replayed by the next process."""

from __future__ import annotations

import signal
import sqlite3
import sys
import threading
import time
from pathlib import Path

import httpx

from modelyard.engines.procs import pid_alive

from .support import MockUpstream, ProcessPool, assert_error, deployment, model_cfg, until_refused, wait_until

MSG = [{"role": "user", "content": "hi"}]
ENGINE = [sys.executable, "-m", "modelyard.testing.mock_engine", "--port", "{port}", "--mode", "ok"]


def _config(home: Path, mock: MockUpstream, *, delay: float = 0.0, **spend: object) -> dict:
    return {
        "memory": {"data_dir": str(home)},
        "server": {"graceful_timeout_s": 10, "shutdown_delay_s": delay},
        "spend": {"flush_interval_s": 0.2, **spend},
        "models": [
            model_cfg("m", deployment(mock, "up", timeout_s=30)),
            {"name": "e", "deployments": [{"kind": "process", "command": ENGINE, "preload": True, "health_timeout_s": 20}]},
        ],
    }


def _rows(db: Path) -> int:
    with sqlite3.connect(db, timeout=10) as c:
        return c.execute("select count(*) from spend_rows").fetchone()[0]


def _engine_pid(gw) -> int:  # noqa: ANN001
    return wait_until(lambda: next((m["engine"] or {}).get("pid") for m in gw.http.get("/admin/models").json()["data"]
                                   if m["name"] == "e" and m["state"] == "active"), 20, "the engine preloaded")


def test_sigterm_drains_refuses_new_work_flushes_spend_and_stops_engines(procs: ProcessPool, mock: MockUpstream,
                                                                         tmp_path: Path) -> None:
    home = tmp_path / "home"
    gw = procs.gateway(_config(home, mock, flush_interval_s=60))  # rows wait in memory until the shutdown flush
    pid = _engine_pid(gw)
    for model in ("m", "e", "m", "e"):
        assert gw.http.post("/v1/chat/completions", json={"model": model, "messages": MSG}).status_code == 200
    mock.control("stream-slow:200")
    body: dict[str, bytes] = {}

    def stream() -> None:
        with httpx.stream("POST", f"{gw.url}/v1/chat/completions", timeout=30,
                          json={"model": "m", "messages": MSG, "stream": True}) as r:
            body["data"] = r.read()

    t = threading.Thread(target=stream)
    t.start()
    wait_until(lambda: mock.stats()["in_flight"] == 1, 10, "the stream to start")
    gw.signal(signal.SIGTERM)
    with httpx.Client(base_url=gw.url, timeout=5) as c:  # a fresh connection, while the stream drains
        refused, served_before = until_refused(c, {"model": "m", "messages": MSG})
        ready = c.get("/health/readiness")
        assert t.is_alive(), "the checks must run while the stream drains (it holds the port open)"
    assert ready.status_code == 503 and ready.json()["status"] == "draining"
    err = assert_error(refused, 503, code="shutting_down")  # (validating loads the OpenAPI spec: ~1 s)
    assert int(refused.headers["retry-after"]) >= 1 and "shutting down" in err["message"]
    assert refused.headers["connection"] == "close"
    t.join(20)
    assert body["data"].endswith(b"data: [DONE]\n\n"), body["data"][-200:]  # the in-flight stream finished
    assert gw.wait(20) == 0, gw.describe()
    wait_until(lambda: not pid_alive(pid), 10, "the engine stopped with the gateway")
    # four requests, the stream, those served before the signal was acted on; the refusal served nothing
    assert _rows(home / "modelyard.db") == 5 + served_before


def test_sigkill_loses_at_most_the_last_flush_window_and_leaves_no_engine(procs: ProcessPool, mock: MockUpstream,
                                                                          tmp_path: Path) -> None:
    home = tmp_path / "home"
    flush = 0.2
    gw = procs.gateway(_config(home, mock, flush_interval_s=flush))
    pid = _engine_pid(gw)
    answered, stop = [0], threading.Event()
    lock = threading.Lock()

    def client(model: str) -> None:
        with httpx.Client(base_url=gw.url, timeout=5) as c:
            while not stop.is_set():
                try:
                    r = c.post("/v1/chat/completions", json={"model": model, "messages": MSG})
                except httpx.HTTPError:
                    return  # the gateway is gone
                if r.status_code == 200:
                    with lock:
                        answered[0] += 1

    threads = [threading.Thread(target=client, args=(m,)) for m in ("m", "m", "m", "e")]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    time.sleep(1.5)
    gw.proc.send_signal(signal.SIGKILL)
    killed_after = time.monotonic() - t0
    stop.set()
    for t in threads:
        t.join(10)
    gw.wait(10)
    wait_until(lambda: not pid_alive(pid), 10, "the engine to die with its SIGKILLed parent")
    rows = _rows(home / "modelyard.db")
    lost = answered[0] - rows
    rate = answered[0] / killed_after
    # a row is written after its response went out: the client may not have read the last few yet
    assert -len(threads) <= lost <= rate * (flush + 0.3) + len(threads), (answered[0], rows, rate)


def test_rows_spooled_before_a_sigkill_are_replayed_by_the_next_process(procs: ProcessPool, mock: MockUpstream,
                                                                        tmp_path: Path) -> None:
    home = tmp_path / "home"
    gw = procs.gateway(_config(home, mock, flush_interval_s=0.05))
    db = home / "modelyard.db"
    lock = sqlite3.connect(db, isolation_level=None, timeout=10)
    lock.execute("BEGIN EXCLUSIVE")  # inserts fail (after the busy timeout): rows go to the spool
    try:
        with httpx.Client(base_url=gw.url, timeout=30) as c:
            for _ in range(30):
                assert c.post("/v1/chat/completions", json={"model": "m", "messages": MSG}).status_code == 200
        spooled = wait_until(lambda: (n := gw.metric("modelyard_spend_spool_rows")) and n >= 30 and n, 20,
                             "the rows to be spooled")
        gw.proc.send_signal(signal.SIGKILL)
        gw.wait(10)
    finally:
        lock.execute("COMMIT")
        lock.close()
    assert _rows(db) == 0
    gw2 = procs.gateway(_config(home, mock))
    wait_until(lambda: _rows(db) == spooled, 20, f"the {spooled} spooled rows replayed by the next process")
    assert gw2.metric("modelyard_spend_spool_rows") == 0
