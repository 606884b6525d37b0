"""A managed engine that dies mid-request is back at once (issue 10 §2), for real: the mock engine
process exits in the middle of a chat request, with one deployment and the default router settings.

The crash request is retried on the restarted engine, requests that arrive during the restart wait
for it, nothing is refused in the seconds after the crash (no circuit breaker stands in the way),
and a restart longer than the queue TTL is a 503 whose ``Retry-After`` says when it will be back.
"""

from __future__ import annotations

import concurrent.futures
import sys
import time
from pathlib import Path

import httpx

from modelyard.engines.procs import pid_alive

from .support import ProcessPool, wait_until

BODY = {"model": "solo", "messages": [{"role": "user", "content": "hi"}]}


def _config(tmp_path: Path, *, backoff: float = 0.2, **model: object) -> dict:
    marker = tmp_path / "crashed-once"
    cmd = [sys.executable, "-m", "modelyard.testing.mock_engine", "--port", "{port}", "--mode", f"crash-once:{marker}"]
    return {
        "memory": {"data_dir": str(tmp_path / "home")},
        "models": [{"name": "solo", **model, "deployments": [
            {"kind": "process", "command": cmd, "restart_backoff_s": backoff, "health_timeout_s": 20, "preload": True},
        ]}],
    }


def _solo(gw) -> dict:  # noqa: ANN001
    return next(m for m in gw.http.get("/admin/models").json()["data"] if m["name"] == "solo")


def test_engine_dying_mid_request_is_restarted_and_nothing_is_refused(procs: ProcessPool, tmp_path: Path) -> None:
    gw = procs.gateway(_config(tmp_path))
    wait_until(lambda: _solo(gw)["state"] == "active", 20, "the engine to be preloaded")
    pid0 = _solo(gw)["engine"]["pid"]
    c = gw.client(timeout=30)

    t0 = time.monotonic()
    raw = c.chat.completions.with_raw_response.create(**BODY)  # this request kills the engine
    recovered_s = time.monotonic() - t0
    assert raw.http_response.status_code == 200 and raw.parse().choices[0].message.content == "mock reply"
    assert raw.headers["x-modelyard-fallbacks"] == "0"
    solo = _solo(gw)
    assert solo["engine"]["pid"] != pid0 and solo["engine"]["restarts"] == 1, solo
    wait_until(lambda: not pid_alive(pid0), 5, "the crashed engine to be gone")
    assert recovered_s < 5, recovered_s  # bounded, not a circuit breaker's 30 s cooldown (timing is in bench/)

    # the next 5 s: nothing refused, the breaker never opened
    statuses: list[int] = []
    with httpx.Client(base_url=gw.url, timeout=30) as h:
        end = time.monotonic() + 5
        while time.monotonic() < end:
            statuses.append(h.post("/v1/chat/completions", json=BODY).status_code)
    assert statuses and set(statuses) == {200}, statuses
    assert gw.metric("modelyard_breaker_state", model="solo", deployment="solo") == 0


def test_requests_in_flight_and_arriving_during_the_restart_all_succeed(procs: ProcessPool, tmp_path: Path) -> None:
    gw = procs.gateway(_config(tmp_path, backoff=0.5))
    wait_until(lambda: _solo(gw)["state"] == "active", 20, "the engine to be preloaded")
    with httpx.Client(base_url=gw.url, timeout=30) as h, concurrent.futures.ThreadPoolExecutor(8) as pool:
        def one(i: int) -> int:
            time.sleep(0.05 * i)  # some in flight at the crash, some arriving during the restart
            return h.post("/v1/chat/completions", json=BODY).status_code

        statuses = list(pool.map(one, range(24)))
    assert statuses == [200] * 24, statuses
    assert _solo(gw)["engine"]["restarts"] == 1


def test_a_restart_longer_than_the_queue_ttl_is_a_503_with_the_remaining_time(procs: ProcessPool, tmp_path: Path) -> None:
    gw = procs.gateway(_config(tmp_path, backoff=3.0, queue={"ttl_s": 0.5}))
    wait_until(lambda: _solo(gw)["state"] == "active", 20, "the engine to be preloaded")
    r = gw.http.post("/v1/chat/completions", json=BODY)
    assert r.status_code == 503, r.text
    err = r.json()["error"]
    assert err["code"] in ("model_not_ready", "engine_restarting") and "restart" in err["message"], err
    assert 2 <= int(r.headers["retry-after"]) <= 5, r.headers  # ~3 s of backoff left, plus the load
    assert _solo(gw)["state"] == "restarting"
    # the supervisor brings it back on its own, no request needed
    wait_until(lambda: _solo(gw)["state"] == "active", 10, "the engine to be restarted")
    assert gw.http.post("/v1/chat/completions", json=BODY).status_code == 200
