"""``modelyard serve --ray ADDRESS``: local models as Ray Serve deployments behind the gateway.

A real local Ray (``ray.init(num_cpus=2)``) is started by this module; the real gateway runs as a
subprocess (``python -m modelyard serve --ray ADDRESS``) and calls the deployments through Ray
handles. The embedded ``chat`` model (SmolLM2 on xllamacpp) answers through the openai SDK, also
streaming; ``moderation`` (min 0 / max 2 replicas) is scaled up from zero by a burst and back to
zero when idle (watched with ``serve.status()`` from this driver); a chat replica killed mid-request
is answered on its replacement. Skipped when ``ray[serve]`` is not installed — except under
``CI=true``, where that fails.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from modelyard.config.loader import settings_from_dict
from modelyard.registry.artifacts import ArtifactStore
from modelyard.registry.defaults import import_defaults
from modelyard.scaling.ray_serve import autoscaling_config, deployment_name, deployment_options

from .services import missing
from .support import CLIENT_KEY, HTTP_TIMEOUT_S, Gateway, ManagedProcess, ProcessPool, wait_until

LISTENING = re.compile(r"modelyard listening on (http://127\.0\.0\.1:(\d+))")
# Ray's metric pushes default to every 10 s: the scale tests need them every half second.
RAY_ENV = {
    "RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.5",
    "RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.5",
}
CHAT = {"name": "chat", "fallbacks": [],
        "deployments": [{"kind": "local", "artifact": "chat", "n_ctx": 1024, "n_parallel": 2, "n_threads": 1}]}
MODERATION = {
    "name": "moderation",
    "deployments": [{"kind": "local", "artifact": "moderation"}],
    "autoscale": {"min_replicas": 0, "max_replicas": 2, "target_ongoing_requests": 1, "max_ongoing_requests": 2,
                  "upscale_delay_s": 0, "downscale_delay_s": 1, "scale_to_zero_after_s": 2},
}
# the same classifier with a queue TTL (1 s) shorter than a replica's cold start (~4 s here)
COLD = {"name": "moderation-cold", "deployments": [{"kind": "local", "artifact": "moderation"}],
        "queue": {"size": 8, "ttl_s": 1},
        "autoscale": {"min_replicas": 0, "max_replicas": 1, "downscale_delay_s": 1, "scale_to_zero_after_s": 2}}


def _config(home: Path) -> dict[str, Any]:
    return {
        "memory": {"data_dir": str(home)},
        "spend": {"enabled": False},
        "server": {"graceful_timeout_s": 3},
        "ray": {"look_back_period_s": 2, "num_cpus": 0.1},  # small replicas, a short load window: the test is quick
        "router": {"retry": {"num_retries": 2, "backoff_base_s": 0.2}, "queue": {"size": 64, "ttl_s": 40}, "timeout_s": 60},
        "models": [CHAT, MODERATION, COLD],
    }


# --- the policy rendered for Ray (pure: no Ray needed) ------------------------------------------


def test_autoscaling_config_is_rendered_from_the_policy() -> None:
    s = settings_from_dict({"models": [MODERATION, {**CHAT, "deployments": CHAT["deployments"]}]}).settings
    mod, chat = s.models
    cfg = autoscaling_config(mod.autoscale, look_back_period_s=2, metrics_interval_s=0.5)
    assert cfg == {"min_replicas": 0, "initial_replicas": 0, "max_replicas": 2, "target_ongoing_requests": 1.0,
                   "upscale_delay_s": 0.0, "downscale_delay_s": 1.0, "downscale_to_zero_delay_s": 2.0,
                   "look_back_period_s": 2, "metrics_interval_s": 0.5}
    opts = deployment_options(mod, queue=s.router.queue, num_gpus=0.25)
    assert opts["max_ongoing_requests"] == 2 and opts["max_queued_requests"] == s.router.queue.size
    assert opts["ray_actor_options"] == {"num_cpus": 0.5, "num_gpus": 0.25}
    assert opts["name"] == deployment_name("moderation") == "modelyard-moderation"
    # no policy: one replica, and an explicit cap (never Ray's default of 5): twice the llama.cpp slots
    plain = deployment_options(chat, queue=s.router.queue)
    assert plain["num_replicas"] == 1 and "autoscaling_config" not in plain and plain["max_ongoing_requests"] == 4
    # Ray itself accepts what was rendered
    try:
        from ray.serve.config import AutoscalingConfig
    except ImportError as exc:
        missing(f"ray[serve] is not installed ({exc}); pip install -e '.[ray]'")

    assert AutoscalingConfig(**cfg).downscale_to_zero_delay_s == 2.0


# --- a real Ray, a real gateway -----------------------------------------------------------------


class _RayGateway(Gateway):
    """``modelyard serve --ray``: listening only once the deployments are up (the chat model loaded
    and warm in its replica), which takes longer than the plain gateway's start-up wait."""

    def __init__(self, name: str, workdir: Path, serve_args: list[str], env: dict[str, str]) -> None:
        argv = [sys.executable, "-m", "modelyard", "serve", *serve_args, "--port", "0"]
        ManagedProcess.__init__(self, name, argv, workdir, env)
        m = self.wait_for_line(LISTENING, timeout=120)
        self.url, self.port = m.group(1), int(m.group(2))
        self.http = httpx.Client(base_url=self.url, timeout=HTTP_TIMEOUT_S)


@pytest.fixture(scope="module")
def ray_address() -> Iterator[str]:
    try:
        import ray
        from ray import serve
    except ImportError as exc:
        missing(f"ray[serve] is not installed ({exc}); pip install -e '.[ray]'")
    with pytest.MonkeyPatch.context() as mp:
        for k, v in RAY_ENV.items():
            mp.setenv(k, v)  # the raylet's workers (controller, replicas) inherit them
        ctx = ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 * 2**20, log_to_driver=False)
        try:
            yield ctx.address_info["address"]
        finally:
            serve.shutdown()
            ray.shutdown()


@pytest.fixture(scope="module")
def gw(module_procs: ProcessPool, ray_address: str, tmp_path_factory: pytest.TempPathFactory) -> Gateway:
    import yaml

    home = tmp_path_factory.mktemp("ray-home")
    import_defaults(ArtifactStore(home / "artifacts"), names=["chat", "moderation"])
    path = module_procs.workdir / "ray-gateway.yaml"
    path.write_text(yaml.safe_dump(_config(home), sort_keys=False))
    env = {**os.environ, **RAY_ENV}
    g = _RayGateway("ray-gateway", module_procs.workdir, ["--config", str(path), "--ray", ray_address], env)
    module_procs.procs.append(g)
    return g


def _running(app: str) -> int:
    from ray import serve

    st = serve.status().applications.get(app)
    if st is None:
        return -1
    return sum(d.replica_states.get("RUNNING", 0) for d in st.deployments.values())


def test_chat_is_served_through_ray_with_the_openai_sdk(gw: Gateway) -> None:
    assert _running("modelyard-chat") == 1  # deployed, loaded and warm before the gateway listened
    with open(f"/proc/{gw.pid}/maps") as f:
        assert "xllamacpp" not in f.read(), "the gateway loaded the engine itself: the model must be in the Ray replica"
    c = gw.client(timeout=60)
    raw = c.chat.completions.with_raw_response.create(
        model="chat", messages=[{"role": "user", "content": "Say hello."}], max_tokens=8, temperature=0)
    r = raw.parse()
    assert raw.headers["x-modelyard-model"] == "chat"
    assert r.choices[0].message.content and 0 < r.usage.completion_tokens <= 8 and r.usage.prompt_tokens > 0
    chunks = list(c.chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "Count to five."}], max_tokens=12, temperature=0,
        stream=True, stream_options={"include_usage": True}))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert len(chunks) >= 3 and text.strip()
    assert chunks[-1].usage is not None and 0 < chunks[-1].usage.completion_tokens <= 12
    assert any(ch.choices and ch.choices[0].finish_reason for ch in chunks)
    # the replica's own errors come back as the gateway's (a 400 is not retried, not a 502)
    bad = httpx.post(f"{gw.url}/v1/embeddings", json={"model": "chat", "input": "x"},
                     headers={"authorization": f"Bearer {CLIENT_KEY}"}, timeout=30)
    assert bad.status_code == 404 and "does not support" in bad.json()["error"]["message"], bad.text


def test_a_burst_scales_up_from_zero_and_idle_scales_back_to_zero(gw: Gateway) -> None:
    app = "modelyard-moderation"
    wait_until(lambda: _running(app) == 0, 30, "moderation at zero replicas (min_replicas 0, initial 0)", 0.2)
    seen: list[int] = []
    statuses: list[int] = []
    stop = threading.Event()

    async def client() -> None:
        async with httpx.AsyncClient(base_url=gw.url, timeout=60) as h:
            while not stop.is_set():
                r = await h.post("/v1/moderations", json={"model": "moderation", "input": "you idiot " * 20})
                statuses.append(r.status_code)

    def burst() -> None:
        async def main() -> None:
            await asyncio.gather(*(client() for _ in range(12)))

        asyncio.run(main())

    t = threading.Thread(target=burst, daemon=True)
    t.start()
    try:
        deadline = time.monotonic() + 45
        while time.monotonic() < deadline and max(seen, default=0) < 2:
            seen.append(_running(app))
            time.sleep(0.2)
    finally:
        stop.set()
        t.join(60)
    assert max(seen) == 2, f"the burst did not scale moderation to 2 replicas (seen {sorted(set(seen))})"
    assert statuses and set(statuses) == {200}, f"requests held while scaling must be answered: {sorted(set(statuses))}"
    # idle: downscale_delay_s 1, then downscale_to_zero_delay_s 2 → zero replicas
    t0 = time.monotonic()
    wait_until(lambda: _running(app) == 0, 40, "moderation back at zero replicas after idle", 0.2)
    idle_s = time.monotonic() - t0
    # and a request from zero is held until a replica is warm, not dropped
    t0 = time.monotonic()
    r = httpx.post(f"{gw.url}/v1/moderations", json={"model": "moderation", "input": "you damn idiot"}, timeout=60)
    assert r.status_code == 200 and r.json()["results"][0]["flagged"], r.text
    print(f"scaled to 0 after {idle_s:.1f} s idle; a cold request took {time.monotonic() - t0:.1f} s")


def test_a_request_waiting_for_a_cold_replica_longer_than_the_queue_ttl_gets_503_with_retry_after(gw: Gateway) -> None:
    assert _running("modelyard-moderation-cold") == 0
    t0 = time.monotonic()
    r = httpx.post(f"{gw.url}/v1/moderations", json={"model": "moderation-cold", "input": "hello"}, timeout=30)
    took = time.monotonic() - t0
    assert r.status_code == 503, r.text
    assert r.headers.get("retry-after") and int(r.headers["retry-after"]) >= 1, r.headers
    assert r.json()["error"]["code"] == "model_not_ready", r.text
    assert took < 4, f"held {took:.1f} s: longer than the queue TTL (1 s) allows"


def test_a_replica_killed_mid_request_is_answered_by_its_replacement(gw: Gateway) -> None:
    import ray

    c = gw.client(timeout=90)
    c.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    replicas = [a for a in ray.util.list_named_actors(all_namespaces=True)
                if a["name"].startswith(f"SERVE_REPLICA::{deployment_name('chat')}#")]
    assert len(replicas) == 1, replicas
    out: dict[str, Any] = {}

    def ask() -> None:
        try:
            raw = c.chat.completions.with_raw_response.create(
                model="chat", messages=[{"role": "user", "content": "Write a long story about a dragon."}],
                max_tokens=200, temperature=0)
            out["status"], out["body"] = raw.status_code, raw.parse()
        except Exception as exc:  # noqa: BLE001 - asserted below
            out["error"] = exc

    t = threading.Thread(target=ask)
    t.start()
    time.sleep(1.0)  # generating: 200 tokens take several seconds on 2 cores
    assert t.is_alive(), "the request finished before the replica could be killed"
    ray.kill(ray.get_actor(replicas[0]["name"], namespace=replicas[0]["namespace"]), no_restart=True)
    t.join(120)
    assert "error" not in out, f"the request failed instead of being retried: {out.get('error')!r}"
    assert out["status"] == 200 and out["body"].choices[0].message.content
    assert _running("modelyard-chat") == 1  # Ray replaced the replica
    retries = gw.metric("modelyard_retries_total")
    assert retries is not None and retries >= 1, gw.metrics_text()[:2000]
