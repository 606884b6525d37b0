"""Health, metrics, graceful shutdown, ``modelyard validate`` and LiteLLM configs, on real processes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from .support import REPO, Gateway, MockUpstream, ProcessPool, deployment, model_cfg, until_refused, validate, wait_until

MSG = [{"role": "user", "content": "hello big world"}]
REPLY = "mock reply to: hello big world"


# --- health and metrics -------------------------------------------------------------------------


def test_health_probes(gateway, mock: MockUpstream) -> None:  # noqa: ANN001
    gw = gateway({"models": [model_cfg("m", deployment(mock, "up"))]})
    for path in ("/health/liveness", "/health"):
        r = gw.http.get(path)
        assert r.status_code == 200 and r.json() == {"status": "ok"}
    r = gw.http.get("/health/readiness")
    assert r.status_code == 200
    assert r.json()["status"] == "ready" and r.json()["models"] == {"m": 1}
    assert mock.stats()["requests"] == 0, "health probes must not call the upstream"


def test_metrics_series(gateway, mock: MockUpstream) -> None:  # noqa: ANN001
    gw = gateway(
        {
            "models": [
                model_cfg("m", deployment(mock, "up", name="dep-one"), deployment(mock, "up")),
                model_cfg("emb", deployment(mock, "up-emb")),
            ]
        }
    )
    c = gw.client()
    c.chat.completions.create(model="m", messages=MSG)
    assert "".join(ch.choices[0].delta.content or "" for ch in c.chat.completions.create(model="m", messages=MSG, stream=True)) == REPLY
    c.embeddings.create(model="emb", input="a b c", encoding_format="float")
    with pytest.raises(openai.NotFoundError):
        c.chat.completions.create(model="nope", messages=MSG)
    text = gw.metrics_text()
    assert gw.metric("modelyard_requests_total", model="m", endpoint="chat.completions", status="200") == 2
    assert gw.metric("modelyard_requests_total", model="emb", endpoint="embeddings", status="200") == 1
    assert gw.metric("modelyard_requests_total", status="404") == 1
    assert "nope" not in text, "an unknown model name became a metric label (unbounded cardinality)"
    assert gw.metric("modelyard_request_duration_seconds_count", model="m", endpoint="chat.completions") == 2
    assert gw.metric("modelyard_request_duration_seconds_bucket", model="m", endpoint="chat.completions", le="+Inf") == 2
    assert gw.metric("modelyard_time_to_first_token_seconds_count", model="m") == 1
    assert gw.metric("modelyard_time_to_first_token_seconds_bucket", model="m", le="+Inf") == 1
    # prompt "hello big world" = 3 tokens, reply = 6, once unary and once streamed (usage asked on the client's behalf)
    assert gw.metric("modelyard_tokens_total", model="m", direction="in") == 6
    assert gw.metric("modelyard_tokens_total", model="m", direction="out") == 12
    assert gw.metric("modelyard_tokens_total", model="emb", deployment="emb", direction="in") == 3
    assert gw.metric("modelyard_in_flight_requests", model="m") == 0
    assert gw.metric("modelyard_queue_depth", model="m") == 0
    for dep in ("dep-one", "m/1"):
        assert gw.metric("modelyard_breaker_state", model="m", deployment=dep) == 0
    assert gw.metric("modelyard_breaker_state", model="emb", deployment="emb") == 0
    assert gw.metric("modelyard_upstream_requests_total", model="m", outcome="ok") == 2
    assert gw.http.get("/metrics").headers["content-type"].startswith("text/plain")


# --- graceful shutdown --------------------------------------------------------------------------


def _refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"GET /health/liveness HTTP/1.1\r\nHost: x\r\n\r\n")
            return s.recv(100) == b""  # accepted by a dying socket, closed unanswered
    except (ConnectionRefusedError, ConnectionResetError):
        return True
    except TimeoutError:
        return False


def test_sigterm_drains_an_in_flight_stream(gateway, mock: MockUpstream) -> None:  # noqa: ANN001
    mock.control("stream-slow:150")
    grace = 8
    gw: Gateway = gateway(
        {"server": {"graceful_timeout_s": grace}, "models": [model_cfg("m", deployment(mock, "up", timeout_s=30))]}
    )
    chunks: list[str] = []
    outcome: dict[str, object] = {}
    first = threading.Event()

    def consume() -> None:
        try:
            with gw.client(timeout=20) as c:
                for ch in c.chat.completions.create(model="m", messages=MSG, stream=True):
                    chunks.append(ch.choices[0].delta.content or "")
                    first.set()
            outcome["ok"] = True
        except BaseException as exc:  # noqa: BLE001 - reported below
            outcome["error"] = exc
            first.set()

    with gw.http.stream("POST", "/v1/chat/completions", json={"model": "m", "messages": MSG, "stream": True}) as raw:
        t = threading.Thread(target=consume, daemon=True)
        t.start()
        assert first.wait(10), "no first chunk"
        assert "error" not in outcome, outcome
        signalled = time.monotonic()
        gw.signal(signal.SIGTERM)
        # while the stream drains, a new request gets a clean 503 (the port stays open), not a reset
        with httpx.Client(base_url=gw.url, timeout=5) as fresh:
            refused, served_before = until_refused(fresh, {"model": "m", "messages": MSG})
        assert refused.json()["error"]["code"] == "shutting_down" and int(refused.headers["retry-after"]) >= 1
        body = raw.read()
    t.join(15)
    assert not t.is_alive()
    assert outcome.get("ok") is True, outcome
    assert "".join(chunks) == REPLY
    assert body.endswith(b"data: [DONE]\n\n"), body[-200:]
    assert b'"error"' not in body
    code = gw.wait(grace + 5)
    assert code is not None, f"gateway still running {grace + 5}s after SIGTERM"
    assert time.monotonic() - signalled < grace + 2
    assert code == 0, gw.describe()
    assert mock.stats()["completed"] == 2 + served_before and mock.stats()["disconnects"] == 0


def _post_in_thread(gw: Gateway, body: dict) -> tuple[threading.Thread, dict[str, object]]:
    """POST in a thread (raw httpx, streaming read); the result dict gets status/headers/body or error."""
    result: dict[str, object] = {}

    def run() -> None:
        data = b""
        try:
            with httpx.stream("POST", f"{gw.url}/v1/chat/completions", json=body, timeout=20) as r:
                result["status"], result["headers"] = r.status_code, dict(r.headers)
                for part in r.iter_raw():
                    data += part
        except httpx.HTTPError as exc:
            result["error"] = exc
        result["body"] = data

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, result


def test_sigterm_past_the_grace_period_answers_unfinished_requests_cleanly(gateway, mock: MockUpstream) -> None:  # noqa: ANN001
    """A request still waiting when the grace period ends gets an OpenAI-shaped error, not uvicorn's
    plain-text 500, and the gateway logs no traceback for it."""
    mock.control("hang")
    gw: Gateway = gateway({"server": {"graceful_timeout_s": 1}, "models": [model_cfg("m", deployment(mock, "up", timeout_s=30))]})
    t, result = _post_in_thread(gw, {"model": "m", "messages": MSG})
    wait_until(lambda: mock.stats()["in_flight"] == 1, 10, "the request to reach the upstream")
    signalled = time.monotonic()
    gw.signal(signal.SIGTERM)
    code = gw.wait(10)
    assert code is not None and time.monotonic() - signalled < 4, "the grace period was not enforced"
    assert code == 0, gw.describe()
    t.join(10)
    assert "error" not in result, result
    status, body = result["status"], result["body"]
    assert isinstance(status, int) and 500 <= status < 600, result
    assert result["headers"]["content-type"].startswith("application/json"), (result, gw.stderr_text()[-3000:])
    validate(json.loads(body), "ErrorResponse")
    assert "Traceback" not in gw.stderr_text(), gw.stderr_text()[-3000:]
    logged = [r for r in gw.access_log() if r["path"] == "/v1/chat/completions"]
    assert [r["status"] for r in logged] == [status], logged
    assert mock.wait_idle()["disconnects"] == 1


def test_sigterm_past_the_grace_period_ends_streams_with_an_error_event(gateway, mock: MockUpstream) -> None:  # noqa: ANN001
    """A stream cut by the end of the grace period ends with an SSE error event, never silently."""
    mock.control("stream-slow:1000")
    gw: Gateway = gateway({"server": {"graceful_timeout_s": 1}, "models": [model_cfg("m", deployment(mock, "up", timeout_s=30))]})
    t, result = _post_in_thread(gw, {"model": "m", "messages": MSG, "stream": True})
    wait_until(lambda: mock.stats()["in_flight"] == 1, 10, "the stream to start")
    gw.signal(signal.SIGTERM)
    assert gw.wait(10) == 0, gw.describe()
    t.join(10)
    assert result.get("status") == 200, result
    body = result["body"]
    assert isinstance(body, bytes) and body.startswith(b"data: ")
    assert "error" not in result, f"the stream was cut without an error event: {result['error']!r}; body: {body[-300:]!r}"
    last = [e for e in body.split(b"\n\n") if e][-1]
    assert last.startswith(b'data: {"error"'), body[-300:]
    validate(json.loads(last[len(b"data: "):]), "ErrorResponse")
    assert "Traceback" not in gw.stderr_text(), gw.stderr_text()[-3000:]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_when_idle_exits_zero(gateway, mock: MockUpstream, sig: int) -> None:  # noqa: ANN001
    gw = gateway({"models": [model_cfg("m", deployment(mock, "up"))]})
    assert gw.client().chat.completions.create(model="m", messages=MSG).choices[0].message.content == REPLY
    t0 = time.monotonic()
    gw.signal(sig)
    assert gw.wait(5) == 0, gw.describe()
    assert time.monotonic() - t0 < 3, "an idle gateway should exit at once"
    assert "Traceback" not in gw.stderr_text()


def _children(pid: int) -> set[int]:
    out: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        out |= {int(p) for p in (task / "children").read_text().split()}
    return out


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc to find the demo upstream")
def test_demo_mode_serves_and_stops_its_upstream(procs: ProcessPool) -> None:
    gw = procs.gateway_args(["--demo"])
    c = gw.client()
    assert c.chat.completions.create(model="chat", messages=MSG).choices[0].message.content == REPLY
    assert {"gpt-4o-mini", "chat", "gpt-4o", "text-embedding-3-small"} <= {m.id for m in c.models.list()}
    assert len(c.embeddings.create(model="text-embedding-3-small", input="x").data) == 1
    children = _children(gw.pid)
    assert children, "the demo upstream is not a child of the gateway"
    gw.signal(signal.SIGTERM)
    assert gw.wait(10) == 0, gw.describe()
    wait_until(lambda: not any(_alive(p) for p in children), 5, "the demo upstream to exit with the gateway")


def test_busy_port_is_a_clean_error(mock: MockUpstream, tmp_path: Path) -> None:
    """Another process holds the port: a one-line error naming the address, no traceback."""
    port = int(mock.root_url.rsplit(":", 1)[1])
    path = tmp_path / "ok.yaml"
    path.write_text(yaml.safe_dump({"models": [model_cfg("m", deployment(mock, "up"))]}))
    res = subprocess.run(
        [sys.executable, "-m", "modelyard", "serve", "--config", str(path), "--port", str(port)],
        capture_output=True, text=True, timeout=30, cwd=str(REPO),
    )
    assert res.returncode != 0
    assert "listening" not in res.stdout
    assert "Traceback" not in res.stderr, res.stderr
    assert str(port) in res.stderr, res.stderr


# --- modelyard validate -------------------------------------------------------------------------


def _validate(path: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "modelyard", "validate", str(path)],
        capture_output=True, text=True, timeout=30, cwd=str(REPO), env={**os.environ, **(env or {})},
    )


def test_validate_good_file(tmp_path: Path) -> None:
    path = tmp_path / "good.yaml"
    path.write_text(yaml.safe_dump({"models": [model_cfg("m", deployment("http://127.0.0.1:9/v1", "up"))]}))
    res = _validate(path)
    assert res.returncode == 0, res.stderr
    assert "OK" in res.stdout and "good.yaml" in res.stdout


def test_validate_bad_file_names_the_field(tmp_path: Path) -> None:
    secret = "sk-LEAKCHECK-0a1b2c"
    path = tmp_path / "bad.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "router": {"timeout_s": -1},
                "models": [
                    model_cfg("m", {"api_base": "not-a-url", "model": "up", "api_key": secret}),
                    model_cfg("n", {"api_base": "http://127.0.0.1:9/v1", "model": "up", "wieght": 2}),
                ],
            }
        )
    )
    res = _validate(path)
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert "OK" not in res.stdout
    assert "models[0].deployments[0].api_base" in res.stderr
    assert "models[1].deployments[0].wieght" in res.stderr and "weight" in res.stderr
    assert "router.timeout_s" in res.stderr
    assert secret not in res.stderr + res.stdout
    assert "Traceback" not in res.stderr


@pytest.mark.parametrize(
    "text",
    ["models: [\n  - name: m\n    api_key: sk-LEAKCHECK-yaml\n   bad: [\n", "- just\n- a list\n"],
    ids=["yaml-syntax", "not-a-mapping"],
)
def test_validate_unparseable_file(tmp_path: Path, text: str) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    res = _validate(path)
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert "broken.yaml" in res.stderr
    assert "sk-LEAKCHECK" not in res.stderr and "Traceback" not in res.stderr


def test_validate_missing_file(tmp_path: Path) -> None:
    res = _validate(tmp_path / "absent.yaml")
    assert res.returncode == 2 and "not found" in res.stderr and "Traceback" not in res.stderr


def test_serve_refuses_a_bad_config(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"models": [model_cfg("m", {"api_base": "ftp://x", "model": "up"})]}))
    res = subprocess.run(
        [sys.executable, "-m", "modelyard", "serve", "--config", str(path), "--port", "0"],
        capture_output=True, text=True, timeout=30, cwd=str(REPO),
    )
    assert res.returncode == 2 and "models[0].deployments[0].api_base" in res.stderr
    assert "listening" not in res.stdout


# --- LiteLLM configs ----------------------------------------------------------------------------

LITELLM_CONFIG = {
    "model_list": [
        {
            "model_name": "gpt-lite",
            "litellm_params": {
                "model": "openai/up-lite",
                "api_base": "os.environ/LITE_MOCK_BASE",
                "api_key": "os.environ/LITE_MOCK_KEY",
                "rpm": 600,
                "drop_params": True,
            },
            "model_info": {"id": "lite-dep-1"},
        },
        {
            "model_name": "gpt-lite-backup",
            "litellm_params": {"model": "openai/up-backup", "api_base": "os.environ/LITE_MOCK_BASE"},
        },
        {"model_name": "claude", "litellm_params": {"model": "claude-3-haiku", "api_key": "x"}},  # no provider prefix: skipped
    ],
    "router_settings": {
        "routing_strategy": "simple-shuffle",
        "num_retries": 1,
        "timeout": 5,
        "enable_pre_call_checks": True,
        "fallbacks": [{"gpt-lite": ["gpt-lite-backup"]}],
        "model_group_alias": {"lite": "gpt-lite"},
    },
    "litellm_settings": {"drop_params": True, "success_callback": ["langfuse"]},
    "general_settings": {"master_key": "sk-litellm-master-1234", "alerting": ["slack"]},  # master_key → auth
}


def test_litellm_config_served_unchanged(gateway, mock: MockUpstream, tmp_path: Path) -> None:  # noqa: ANN001
    key = "sk-lite-upstream-77"
    env = {"LITE_MOCK_BASE": mock.url, "LITE_MOCK_KEY": key}
    gw = gateway(LITELLM_CONFIG, env=env)
    c = gw.client(api_key="sk-litellm-master-1234")
    raw = c.chat.completions.with_raw_response.create(model="gpt-lite", messages=MSG)
    assert raw.parse().choices[0].message.content == REPLY
    assert raw.headers["x-modelyard-model"] == "gpt-lite"
    last = mock.last_request()
    assert last["body"]["model"] == "up-lite"
    assert last["headers"]["authorization"] == f"Bearer {key}"
    assert c.chat.completions.create(model="lite", messages=MSG).choices[0].message.content == REPLY
    assert sorted(m.id for m in c.models.list()) == ["gpt-lite", "gpt-lite-backup", "lite"]
    assert gw.metric("modelyard_breaker_state", model="gpt-lite", deployment="lite-dep-1") == 0
    # the fallback chain survived the translation
    mock.control("error:500")
    with pytest.raises(openai.InternalServerError):
        c.chat.completions.create(model="gpt-lite", messages=MSG)
    assert gw.metric("modelyard_fallbacks_total", model="gpt-lite", to_model="gpt-lite-backup") == 1
    stderr = gw.stderr_text()
    for path in (
        "router_settings.enable_pre_call_checks",
        "litellm_settings.drop_params",
        "litellm_settings.success_callback",
        "general_settings.alerting",
        "model_list[0].litellm_params.drop_params",
        "model_list[2]",
    ):
        assert any(line.startswith("warning:") and path in line for line in stderr.splitlines()), (path, stderr)
    assert "general_settings.master_key" not in stderr  # honoured (auth.master_key), so not warned about
    assert "sk-litellm-master-1234" not in stderr
    assert key not in stderr
    # modelyard validate agrees with what serve did
    path = tmp_path / "litellm.yaml"
    path.write_text(yaml.safe_dump(LITELLM_CONFIG))
    res = _validate(path, env)
    assert res.returncode == 0, res.stderr
    assert "OK" in res.stdout and "litellm" in res.stdout
    assert "warning:" in res.stderr
