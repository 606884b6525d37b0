"""``modelyard render k8s`` run for real, as a subprocess, its files checked offline against schemas.

* Every built-in object (Deployment, Service, HPA autoscaling/v2, ConfigMap, PodDisruptionBudget)
  against the Kubernetes OpenAPI schemas that ``kubernetes-validate`` ships, strict (unknown fields
  are errors), for Kubernetes 1.30.
* The KEDA ScaledObject against ``keda_scaledobject_schema.json``: the ``openAPIV3Schema`` of
  kedacore/keda ``config/crd/bases/keda.sh_scaledobjects.yaml`` (commit 756b2de7, controller-gen
  v0.6.1, KEDA 2.x, version v1alpha1), descriptions and status dropped, unknown fields refused.
* Bad input: exit 2 and one ``error:`` line, never a traceback.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from .services import missing

CMD = [sys.executable, "-m", "modelyard", "render", "k8s"]
K8S_VERSION = "1.30.0"
KEDA_SCHEMA = Path(__file__).with_name("keda_scaledobject_schema.json")


def config() -> dict[str, Any]:
    """As tests/unit/test_k8s_render.py: KEDA (MIG, scale to zero, two prewarm windows), HPA, fixed."""
    return {"models": [
        {"name": "coder", "deployments": [
            {"kind": "process", "preset": "vllm", "model_path": "Qwen/Qwen2.5-Coder-7B-Instruct",
             "gpu": "mig-3g.20gb", "memory": "16GiB", "env": {"HF_TOKEN": "os.environ/HF_TOKEN"}}],
         "autoscale": {"min_replicas": 0, "max_replicas": 3, "target_ongoing_requests": 4, "upscale_delay_s": 10,
                       "downscale_delay_s": 600, "scale_to_zero_after_s": 1200, "timezone": "Europe/Berlin",
                       "prewarm": [{"cron": "30 8 * * 1-5", "duration_s": 36000, "replicas": 2},
                                   {"cron": "0 22 * * 5", "duration_s": 14400, "replicas": 1}]}},
        {"name": "chat", "deployments": [{"kind": "process", "preset": "llamacpp-server", "artifact": "qwen-0.5b"}],
         "autoscale": {"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 2.5,
                       "upscale_delay_s": 30, "downscale_delay_s": 300}},
        {"name": "embed", "deployments": [
            {"kind": "process", "command": ["my-embedder", "--port", "{port}"], "health_path": "/ready"},
            {"kind": "openai", "api_base": "https://api.example.com/v1", "model": "text-embed",
             "api_key": "os.environ/EMBED_KEY"}]},
    ]}


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([*CMD, *map(str, args)], capture_output=True, text=True, timeout=120)
    assert "Traceback" not in r.stdout + r.stderr, r.stderr
    return r


def write_yaml(path: Path, data: Any) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    tmp = tmp_path_factory.mktemp("k8s")
    cfg = write_yaml(tmp / "config.yaml", config())
    out = tmp / "out"
    r = run("--config", cfg, "--out", out, "--namespace", "ml", "--image", "reg/modelyard:1",
            "--engine-image", "command=reg/embedder:2", "--prometheus-url", "http://prom.monitoring.svc:9090")
    assert r.returncode == 0, r.stderr
    docs = [d for d in yaml.safe_load_all((out / "all.yaml").read_text()) if d]
    return out, docs


def test_files_written(rendered: tuple[Path, list[dict[str, Any]]]) -> None:
    out, docs = rendered
    assert len(docs) == 12
    names = sorted(p.name for p in out.iterdir())
    assert "scaledobject-engine-coder.yaml" in names and "horizontalpodautoscaler-engine-chat.yaml" in names
    assert len(names) == len(docs) + 1  # one file each, plus all.yaml
    so = yaml.safe_load((out / "scaledobject-engine-coder.yaml").read_text())
    assert so["spec"]["triggers"][0]["metadata"]["serverAddress"] == "http://prom.monitoring.svc:9090"
    # the secret stays a reference: the CLI never resolves os.environ/NAME into a manifest
    env = yaml.safe_load((out / "deployment-engine-coder.yaml").read_text())["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "modelyard-secrets", "key": "HF_TOKEN"}}} in env
    gateway_config = yaml.safe_load(yaml.safe_load((out / "configmap-modelyard.yaml").read_text())["data"]["config.yaml"])
    assert gateway_config["models"][2]["deployments"][1]["api_key"] == "os.environ/EMBED_KEY"


def test_builtin_objects_pass_the_kubernetes_schemas(rendered: tuple[Path, list[dict[str, Any]]]) -> None:
    try:
        import kubernetes_validate
    except ImportError:
        missing("kubernetes-validate is not installed (pip install kubernetes-validate)")
    builtin = [d for d in rendered[1] if d["apiVersion"] != "keda.sh/v1alpha1"]
    assert {d["kind"] for d in builtin} == {"Deployment", "Service", "HorizontalPodAutoscaler", "ConfigMap",
                                            "PodDisruptionBudget"}
    for d in builtin:
        kubernetes_validate.validate(d, K8S_VERSION, strict=True)


def test_the_validator_can_fail(rendered: tuple[Path, list[dict[str, Any]]]) -> None:
    """The checks above mean something: a misspelt field is refused by both schemas."""
    try:
        import kubernetes_validate
    except ImportError:
        missing("kubernetes-validate is not installed (pip install kubernetes-validate)")
    hpa = next(d for d in rendered[1] if d["kind"] == "HorizontalPodAutoscaler")
    bad = json.loads(json.dumps(hpa))
    bad["spec"]["behavior"]["scaleUp"]["stabilisationWindowSeconds"] = 1
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)
    so = next(d for d in rendered[1] if d["kind"] == "ScaledObject")
    bad = json.loads(json.dumps(so))
    bad["spec"]["triggers"][1]["metadata"]["desiredReplicas"] = 2  # KEDA wants strings
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, json.loads(KEDA_SCHEMA.read_text()))


def test_scaled_object_passes_the_keda_crd_schema(rendered: tuple[Path, list[dict[str, Any]]]) -> None:
    schema = json.loads(KEDA_SCHEMA.read_text())
    (so,) = [d for d in rendered[1] if d["kind"] == "ScaledObject"]
    jsonschema.validate(so, schema)
    crons = [t["metadata"] for t in so["spec"]["triggers"] if t["type"] == "cron"]
    assert [(c["start"], c["end"]) for c in crons] == [("30 8 * * 1-5", "30 18 * * 1-5"), ("0 22 * * 5", "0 2 * * 6")]


def one_error_line(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    return lines[0]


def test_prewarm_without_an_end_cron_exits_2(tmp_path: Path) -> None:
    data = config()
    data["models"][0]["autoscale"]["prewarm"].append({"cron": "*/30 9 * * *", "duration_s": 600})
    line = one_error_line(run("--config", write_yaml(tmp_path / "c.yaml", data), "--out", tmp_path / "o"))
    assert "models[0].autoscale.prewarm[2]" in line
    assert not (tmp_path / "o").exists()


def test_missing_config_exits_2(tmp_path: Path) -> None:
    line = one_error_line(run("--config", tmp_path / "nope.yaml", "--out", tmp_path / "o"))
    assert "file not found" in line


def test_unwritable_out_exits_2(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    data = config()
    line = one_error_line(run("--config", write_yaml(tmp_path / "c.yaml", data), "--out", tmp_path / "file" / "o",
                              "--engine-image", "reg/all:1"))
    assert "cannot write" in line
