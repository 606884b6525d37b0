"""Autoscaling on one machine, for real: the gateway with two of the embedded models (real sklearn /
MiniLM engines) under the memory manager. A cron pre-warm loads both replicas of `intent` before any
request; `moderation` is loaded by its first request and scaled back to zero when idle. Desired vs
actual replicas and the reason are in `/admin/autoscale` and the metrics."""

from __future__ import annotations

import httpx

from modelyard.registry.artifacts import ArtifactStore
from modelyard.registry.defaults import import_defaults

from .support import ProcessPool, wait_until


def _tiers(url: str) -> dict[str, str]:
    return {m["name"]: m["tier"] for m in httpx.get(f"{url}/admin/models", timeout=10).json()["data"]}


def _status(url: str) -> dict[str, dict]:
    return {r["model"]: r for r in httpx.get(f"{url}/admin/autoscale", timeout=10).json()["data"]}


def test_prewarm_loads_replicas_and_idle_scales_to_zero(procs: ProcessPool, tmp_path) -> None:  # noqa: ANN001
    home = tmp_path / "home"
    import_defaults(ArtifactStore(home / "artifacts"), names=["moderation", "intent", "text-embedding"])  # intent encodes with MiniLM
    local_intent = {"kind": "local", "artifact": "intent", "keep_alive_s": None}
    gw = procs.gateway({
        "memory": {"data_dir": str(home)},
        "models": [
            {"name": "intent", "deployments": [local_intent, dict(local_intent)],  # two in-process replicas
             "autoscale": {"min_replicas": 0, "max_replicas": 2, "upscale_delay_s": 0, "scale_to_zero_after_s": 600,
                           "prewarm": [{"cron": "* * * * *", "duration_s": 300, "replicas": 2}]}},
            {"name": "moderation", "deployments": [{"kind": "local", "artifact": "moderation", "keep_alive_s": None},
                                                   {"kind": "local", "artifact": "moderation", "keep_alive_s": None}],
             "autoscale": {"min_replicas": 0, "max_replicas": 2, "target_ongoing_requests": 1, "downscale_delay_s": 0,
                           "scale_to_zero_after_s": 2}},
        ],
    })
    # no request has been sent: the pre-warm window (every minute, for 5 minutes) loads both replicas
    wait_until(lambda: _tiers(gw.url).get("intent") == "active" and _tiers(gw.url).get("intent/1") == "active", 60,
               "both intent replicas pre-warmed")
    st = _status(gw.url)["intent"]
    assert st["actual"] == 2 and st["desired"] == 2 and "prewarm" in st["reason"], st
    assert gw.metric("modelyard_autoscale_desired_replicas", model="intent") == 2
    assert gw.metric("modelyard_autoscale_actual_replicas", model="intent") == 2
    assert gw.metric("modelyard_autoscale_cause", model="intent", cause="prewarm") == 1
    # moderation: nothing until a request comes; the request is answered (the load happens under it) ...
    assert _tiers(gw.url)["moderation"] != "active"
    c = gw.client(timeout=60)
    assert c.moderations.create(model="moderation", input="you are a damn idiot").results[0].flagged
    assert _tiers(gw.url)["moderation"] == "active"
    # one request at a time needs one replica: the router keeps them on the resident one, so the
    # second replica is never loaded behind the autoscaler's back
    for text in ("hello", "thanks", "you idiot"):
        c.moderations.create(model="moderation", input=text)
    assert _tiers(gw.url)["moderation/1"] != "active"
    # ... and after 2 s without traffic the autoscaler takes it back to zero
    wait_until(lambda: _tiers(gw.url)["moderation"] != "active", 30, "moderation scaled to zero")
    st = _status(gw.url)["moderation"]
    assert st["actual"] == 0 and st["desired"] == 0 and "idle" in st["reason"], st
    assert (gw.metric("modelyard_autoscale_changes_total", model="moderation", cause="idle") or 0) >= 1
    # and it still answers: the next request loads it again (scale from zero under a request)
    assert c.moderations.create(model="moderation", input="have a nice day").results[0].flagged is False
