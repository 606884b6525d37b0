"""``scaling/k8s.py``: manifests from a config, pure (dicts in, dicts out). Schema validation of
the same output against Kubernetes and KEDA is tests/integration/test_k8s_validate.py."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from modelyard.config.loader import settings_from_dict
from modelyard.config.scaling import Prewarm
from modelyard.config.schema import Settings
from modelyard.errors import ConfigError
from modelyard.scaling.k8s import RenderOptions, cron_end, gpu_resources, render, slug

def coder_autoscale() -> dict[str, Any]:
    return {
        "min_replicas": 0, "max_replicas": 3, "target_ongoing_requests": 4, "upscale_delay_s": 10,
        "downscale_delay_s": 600, "scale_to_zero_after_s": 1200, "timezone": "Europe/Berlin",
        "prewarm": [{"cron": "30 8 * * 1-5", "duration_s": 36000, "replicas": 2},
                    {"cron": "0 22 * * 5", "duration_s": 14400, "replicas": 1}],
    }


def config() -> dict[str, Any]:
    """Three process deployments (KEDA, HPA, fixed) and one remote upstream."""
    return {"models": [
        {"name": "coder", "autoscale": coder_autoscale(), "deployments": [
            {"kind": "process", "preset": "vllm", "model_path": "Qwen/Qwen2.5-Coder-7B-Instruct",
             "gpu": "mig-3g.20gb", "memory": "16GiB", "env": {"HF_TOKEN": "os.environ/HF_TOKEN"}}]},
        {"name": "chat", "deployments": [
            {"kind": "process", "preset": "llamacpp-server", "artifact": "qwen-0.5b", "gpu": "0", "health_timeout_s": 300}],
         "autoscale": {"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 2.5,
                       "upscale_delay_s": 30, "downscale_delay_s": 300}},
        {"name": "embed", "deployments": [
            {"kind": "process", "command": ["my-embedder", "--port", "{port}", "--listen", "{host}"],
             "health_path": "/ready"},
            {"kind": "openai", "api_base": "https://api.example.com/v1", "model": "text-embed"}]},
    ]}


def settings(data: dict[str, Any] | None = None) -> Settings:
    return settings_from_dict(data or config(), environ={"HF_TOKEN": "os.environ/HF_TOKEN"}).settings


OPTS = RenderOptions(namespace="ml", image="reg/modelyard:1", engine_images={"command": "reg/embedder:2"})


def by_kind_name(manifests: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(m["kind"], m["metadata"]["name"]): m for m in manifests}


def container(m: dict[str, Any]) -> dict[str, Any]:
    (c,) = m["spec"]["template"]["spec"]["containers"]
    return c


@pytest.fixture(scope="module")
def out() -> dict[tuple[str, str], dict[str, Any]]:
    return by_kind_name(render(settings(), OPTS))


def test_kinds_and_names(out: dict) -> None:
    assert set(out) == {
        ("ConfigMap", "modelyard"), ("Deployment", "modelyard"), ("Service", "modelyard"),
        ("PodDisruptionBudget", "modelyard"),
        ("Deployment", "engine-coder"), ("Service", "engine-coder"), ("ScaledObject", "engine-coder"),
        ("Deployment", "engine-chat"), ("Service", "engine-chat"), ("HorizontalPodAutoscaler", "engine-chat"),
        ("Deployment", "engine-embed"), ("Service", "engine-embed"),
    }
    assert all(m["metadata"]["namespace"] == "ml" for m in out.values())


def test_engine_command_resources_and_probes(out: dict) -> None:
    c = container(out["Deployment", "engine-coder"])
    assert c["image"] == "vllm/vllm-openai:latest"
    assert c["command"][:3] == ["vllm", "serve", "Qwen/Qwen2.5-Coder-7B-Instruct"]
    assert c["command"][c["command"].index("--port") + 1] == "8000"
    assert c["command"][c["command"].index("--host") + 1] == "0.0.0.0"  # not loopback in a pod
    assert c["command"][c["command"].index("--served-model-name") + 1] == "coder"
    assert not any("{" in a for a in c["command"])
    assert c["resources"] == {"requests": {"nvidia.com/mig-3g.20gb": 1, "memory": "16Gi"},
                              "limits": {"nvidia.com/mig-3g.20gb": 1}}
    assert {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "modelyard-secrets", "key": "HF_TOKEN"}}} in c["env"]
    assert c["readinessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert c["startupProbe"]["failureThreshold"] * c["startupProbe"]["periodSeconds"] >= 120

    chat = out["Deployment", "engine-chat"]
    cc = container(chat)
    assert cc["image"] == "ghcr.io/ggml-org/llama.cpp:server"
    assert cc["command"][:3] == ["/app/llama-server", "-m", "/models/qwen-0.5b"]
    assert cc["resources"] == {"requests": {"nvidia.com/gpu": 1}, "limits": {"nvidia.com/gpu": 1}}
    assert cc["startupProbe"]["failureThreshold"] * cc["startupProbe"]["periodSeconds"] >= 300
    assert chat["spec"]["template"]["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] == "modelyard-models"
    assert "replicas" not in chat["spec"]  # the HPA owns it

    embed = out["Deployment", "engine-embed"]
    ce = container(embed)
    assert embed["spec"]["replicas"] == 1
    assert ce["image"] == "reg/embedder:2"
    assert ce["command"] == ["my-embedder", "--port", "8000", "--listen", "0.0.0.0"]
    assert ce["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert "resources" not in ce or ce["resources"] == {}


def test_services_select_their_pods(out: dict) -> None:
    for name in ("engine-coder", "engine-chat", "engine-embed", "modelyard"):
        svc, dep = out["Service", name], out["Deployment", name]
        assert svc["spec"]["selector"] == dep["spec"]["template"]["metadata"]["labels"]
        assert dep["spec"]["selector"]["matchLabels"] == dep["spec"]["template"]["metadata"]["labels"]
    assert out["Service", "engine-coder"]["spec"]["ports"][0]["port"] == 8000


def test_hpa_follows_the_policy(out: dict) -> None:
    spec = out["HorizontalPodAutoscaler", "engine-chat"]["spec"]
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "engine-chat"}
    assert (spec["minReplicas"], spec["maxReplicas"]) == (1, 4)
    assert spec["behavior"] == {"scaleUp": {"stabilizationWindowSeconds": 30},
                                "scaleDown": {"stabilizationWindowSeconds": 300}}
    (metric,) = spec["metrics"]
    assert metric["type"] == "External"
    assert metric["external"]["metric"] == {"name": "modelyard_pending_requests",
                                            "selector": {"matchLabels": {"model": "chat"}}}
    assert metric["external"]["target"] == {"type": "AverageValue", "averageValue": "2500m"}


def test_scaled_object_triggers(out: dict) -> None:
    spec = out["ScaledObject", "engine-coder"]["spec"]
    assert (spec["minReplicaCount"], spec["maxReplicaCount"], spec["cooldownPeriod"]) == (0, 3, 1200)
    assert spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"] == {
        "scaleUp": {"stabilizationWindowSeconds": 10}, "scaleDown": {"stabilizationWindowSeconds": 600}}
    prom, *crons = spec["triggers"]
    assert prom["type"] == "prometheus"
    assert prom["metadata"]["threshold"] == "4"
    assert 'modelyard_in_flight_requests{model="coder"}' in prom["metadata"]["query"]
    assert 'modelyard_queue_depth{model="coder"}' in prom["metadata"]["query"]
    assert [c["metadata"] for c in crons] == [
        {"timezone": "Europe/Berlin", "start": "30 8 * * 1-5", "end": "30 18 * * 1-5", "desiredReplicas": "2"},
        {"timezone": "Europe/Berlin", "start": "0 22 * * 5", "end": "0 2 * * 6", "desiredReplicas": "1"},
    ]
    assert all(isinstance(v, str) for t in spec["triggers"] for v in t["metadata"].values())


def test_gateway_config_is_loadable_and_points_at_services(out: dict) -> None:
    text = out["ConfigMap", "modelyard"]["data"]["config.yaml"]
    s = settings_from_dict(yaml.safe_load(text), environ={}).settings
    deps = {m.name: m.deployments for m in s.models}
    assert [d.kind for d in deps["coder"]] == ["openai"]
    assert deps["coder"][0].api_base == "http://engine-coder.ml.svc:8000/v1"
    assert deps["coder"][0].model == "coder"  # what vLLM was told to serve
    assert deps["chat"][0].api_base == "http://engine-chat.ml.svc:8000/v1"
    assert [(d.kind, d.api_base) for d in deps["embed"]] == [
        ("openai", "http://engine-embed.ml.svc:8000/v1"), ("openai", "https://api.example.com/v1")]
    assert all(m.autoscale is None for m in s.models)
    assert s.server.host == "0.0.0.0"
    gw = container(out["Deployment", "modelyard"])
    assert gw["image"] == "reg/modelyard:1"
    assert gw["readinessProbe"]["httpGet"]["path"] == "/health/readiness"
    assert out["PodDisruptionBudget", "modelyard"]["spec"]["maxUnavailable"] == 1


def test_render_is_pure_and_repeatable() -> None:
    s = settings()
    before = s.model_dump()
    assert render(s, OPTS) == render(s, OPTS)
    assert s.model_dump() == before


@pytest.mark.parametrize(("gpu", "expected"), [
    (None, {}), ("0", {"nvidia.com/gpu": 1}), ("MIG-4f2c9d1e-0000-1111-2222-333344445555", {"nvidia.com/gpu": 1}),
    ("3g.20gb", {"nvidia.com/mig-3g.20gb": 1}), ("mig-1g.5gb", {"nvidia.com/mig-1g.5gb": 1}),
    ("1g.10gb+me", {"nvidia.com/mig-1g.10gb+me": 1}),
])
def test_gpu_resources(gpu: str | None, expected: dict[str, int]) -> None:
    assert gpu_resources(gpu) == expected


@pytest.mark.parametrize(("cron", "duration_s", "end"), [
    ("30 8 * * 1-5", 3600, "30 9 * * 1-5"),
    ("0 9 * * *", 90, "2 9 * * *"),  # minute resolution: rounded up
    ("45 23 * * 0,6", 1800, "15 0 * * 0,1"),  # past midnight: the weekdays move on
    ("0 20 * * sat", 3 * 86400, "0 20 * * 2"),  # a weekly window of three days
    ("0 6 1 * *", 7200, "0 8 1 * *"),  # day of month kept when the end is the same day
])
def test_cron_end(cron: str, duration_s: float, end: str) -> None:
    assert cron_end(Prewarm(cron=cron, duration_s=duration_s), "w") == end


@pytest.mark.parametrize(("cron", "duration_s", "why"), [
    ("*/15 8 * * *", 600, "no single minute and hour"),
    ("0 9-17 * * 1-5", 600, "no single minute and hour"),
    ("0 9 * * *", 86400, "overlap"),
    ("0 9 * * 1,2", 2 * 86400, "overlap"),
    ("0 22 1 * *", 7200, "another day"),
    ("0 22 * 1-3 *", 7200, "another day"),
])
def test_cron_end_refuses(cron: str, duration_s: float, why: str) -> None:
    with pytest.raises(ConfigError, match=why) as err:
        cron_end(Prewarm(cron=cron, duration_s=duration_s), "models[3].autoscale.prewarm[1]")
    assert err.value.message.startswith("models[3].autoscale.prewarm[1]: ")


def test_bad_prewarm_names_its_path() -> None:
    data = config()
    data["models"][0]["autoscale"]["prewarm"].append({"cron": "*/30 9 * * *", "duration_s": 600})
    with pytest.raises(ConfigError, match=r"^models\[0\]\.autoscale\.prewarm\[2\]: "):
        render(settings(data), OPTS)


def test_too_long_delay_and_custom_command_without_image() -> None:
    data = config()
    data["models"][1]["autoscale"]["downscale_delay_s"] = 7200
    with pytest.raises(ConfigError, match=r"models\[1\]\.autoscale\.downscale_delay_s: .*3600"):
        render(settings(data), OPTS)
    with pytest.raises(ConfigError, match=r"models\[2\]: .*--engine-image"):
        render(settings(), RenderOptions())


def test_slug_and_clashing_names() -> None:
    assert slug("Qwen2.5:7B/1") == "engine-qwen2-5-7b-1"
    assert len(slug("x" * 100)) == 63
    data = {"models": [
        {"name": "a.b", "deployments": [{"kind": "process", "preset": "vllm"}]},
        {"name": "a_b", "deployments": [{"kind": "process", "preset": "vllm"}]}]}
    with pytest.raises(ConfigError, match=r"models\[1\]\.deployments\[0\]\.name: .*'engine-a-b'"):
        render(settings(data))
