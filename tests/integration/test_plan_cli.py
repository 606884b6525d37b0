"""``modelyard plan`` run for real, as a subprocess: JSON, table, emitted config, report files,
bad input (exit 2, one ``error:`` line naming the field, never a traceback) and sizing from the
artifact store (the embedded SmolLM2 GGUF, its size and its header's KV shape)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelyard.planning.scenario import planner_spec

from .services import missing

CMD = [sys.executable, "-m", "modelyard", "plan"]
PNG = b"\x89PNG\r\n\x1a\n"
ONE_GPU = [{"gpu_type": "A100-40GB"}]


def plan(*args: str | Path, cwd: Path | None = None, columns: int | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ}
    if columns is not None:
        env["COLUMNS"] = str(columns)
    r = subprocess.run([*CMD, *map(str, args)], capture_output=True, text=True, timeout=120, env=env, cwd=cwd)
    assert "Traceback" not in r.stdout and "Traceback" not in r.stderr, r.stderr
    return r


def write_yaml(path: Path, data: Any) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_yaml(tmp_path_factory.mktemp("plan") / "scenario9.yaml", planner_spec())


@pytest.fixture(scope="module")
def scenario_json(scenario: Path) -> dict[str, Any]:
    r = plan(scenario, "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)  # raises on anything else printed on stdout (solver chatter)


# --- the nine-model scenario ------------------------------------------------------------------


def test_json_plan_of_the_scenario(scenario_json: dict[str, Any]) -> None:
    d = scenario_json
    assert d["gpu_count"] == 3 and len(d["bins"]) == 3
    assert d["cost_per_month"] == pytest.approx(3 * 3.20 * 730)
    assert d["ffd_gpu_count"] >= d["gpu_count"]
    assert isinstance(d["scenario_ffd_gpu_count"], int) and d["scenario_ffd_gpu_count"] >= 1
    models = {m["name"]: m for m in d["models"]}
    assert len(models) == 9 and set(models) == {m["name"] for m in planner_spec()["models"]}
    for m in d["models"]:
        assert isinstance(m["weights_bytes"], int) and isinstance(m["kv_bytes"], int) and isinstance(m["replicas"], int)
    assert models["llama-3-8b-chat"]["replicas"] == 2
    assert models["codestral-22b"]["replicas"] == 0
    assert all(m["replicas"] >= 1 for n, m in models.items() if n != "codestral-22b")
    for b in d["bins"]:
        assert b["gpu_type"] == "A100-40GB" and b["models"]
        assert len(set(b["models"])) == len(b["models"])  # replicas of one model on different GPUs
        assert b["used_bytes"] <= b["capacity_bytes"] == 34 * 10**9
        assert b["used_bytes"] == sum(models[n]["replica_bytes"] for n in b["models"])
        assert b["load_tokens_per_sec"] <= b["throughput_tokens_per_sec"]
    placed = [n for b in d["bins"] for n in b["models"]]
    assert {n: placed.count(n) for n in models} == {n: m["replicas"] for n, m in models.items()}
    [u] = d["unplaceable"]
    assert u["name"] == "codestral-22b"
    assert "44.0 GB" in u["reason"] and "34.0 GB usable" in u["reason"]


def test_gpu_override_places_codestral(scenario: Path) -> None:
    r = plan(scenario, "--json", "--gpu", "H100-80GB")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["unplaceable"] == []
    assert d["bins"] and {b["gpu_type"] for b in d["bins"]} == {"H100-80GB"}
    assert any("codestral-22b" in b["models"] for b in d["bins"])
    assert {m["name"]: m["replicas"] for m in d["models"]}["codestral-22b"] >= 1


def test_emit_config_has_one_entry_per_replica(scenario: Path, scenario_json: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "out.yaml"
    r = plan(scenario, "--emit-config", out)
    assert r.returncode == 0, r.stderr
    text = out.read_text()
    doc = yaml.safe_load(text)
    entries = [(m["name"], dep) for m in doc["models"] for dep in m["deployments"]]
    assert entries and all({"gpu", "memory"} <= set(dep) for _, dep in entries)
    assert all(isinstance(dep["gpu"], str) and dep["memory"].endswith("GB") for _, dep in entries)
    assert len(entries) == sum(m["replicas"] for m in scenario_json["models"])
    per_model = {name: sum(1 for n, _ in entries if n == name) for name, _ in entries}
    assert per_model == {m["name"]: m["replicas"] for m in scenario_json["models"] if m["replicas"]}
    assert "codestral-22b" not in per_model
    assert any(line.startswith("# not placed: codestral-22b") for line in text.splitlines())


def test_out_dir_writes_json_markdown_and_png(scenario: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    r = plan(scenario, "--out", out)
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "plan.json").read_text())["gpu_count"] == 3
    md = (out / "plan.md").read_text()
    assert "Unplaceable" in md and "codestral-22b" in md
    png = (out / "plan.png").read_bytes()
    assert png.startswith(PNG) and len(png) > 10_000


def test_table_output(scenario: Path) -> None:
    r = plan(scenario, columns=200)
    assert r.returncode == 0, r.stderr
    assert "exact" in r.stdout and "optimal" in r.stdout
    assert "unplaceable codestral-22b" in r.stdout


# --- bad input ----------------------------------------------------------------------------------


def assert_one_error_line(r: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert r.stdout == ""
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for n in needles:
        assert n in lines[0], (n, r.stderr)
    return lines[0]


@pytest.mark.parametrize(
    ("spec", "needles"),
    [
        ({"gpus": ONE_GPU, "models": [{"name": "a", "gpu_memory_gb": -1}]},
         ["models[0].gpu_memory_gb: ", "greater than 0"]),
        ({"gpus": [{"gpu_type": "WEIRD-GPU"}], "models": [{"name": "a", "gpu_memory_gb": 1}]},
         ["gpus[0].gpu_type: unknown GPU type 'WEIRD-GPU'", "memory_gb"]),
        ({"gpus": ONE_GPU, "models": [{"name": "a", "gpu_memory_gb": 1, "colour": "red"}]},
         ["models[0].colour: unknown field"]),
        (["a", "b"], ["a spec is a mapping"]),
    ],
    ids=["negative-memory", "unknown-gpu", "unknown-field", "list"],
)
def test_bad_spec_is_one_error_line(tmp_path: Path, spec: Any, needles: list[str]) -> None:
    path = write_yaml(tmp_path / "spec.yaml", spec)
    line = assert_one_error_line(plan(path), *needles)
    assert line.startswith(f"error: {path}: ")


def test_missing_file_and_invalid_yaml(tmp_path: Path) -> None:
    assert_one_error_line(plan(tmp_path / "nope.yaml"), "nope.yaml", "cannot read the spec")
    bad = tmp_path / "bad.yaml"
    bad.write_text("gpus: [A100-40GB\nmodels: {{\n")
    assert_one_error_line(plan(bad), f"{bad}: YAML syntax error at line 2")


def test_unknown_gpu_override(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "ok.yaml", {"gpus": ONE_GPU, "models": [{"name": "a", "gpu_memory_gb": 1}]})
    assert_one_error_line(plan(path, "--gpu", "NOPE"), "--gpu", "unknown GPU type 'NOPE'")


def test_several_problems_are_a_header_and_indented_lines(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "two.yaml",
                      {"gpus": ONE_GPU, "models": [{"name": "a", "gpu_memory_gb": -1, "colour": "red"}]})
    r = plan(path)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.splitlines() == [f"error: {path}: 2 problems",
                                     "  models[0].gpu_memory_gb: Input should be greater than 0",
                                     "  models[0].colour: unknown field"]


def test_a_bare_catalogue_gpu_name_is_enough(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "bare.yaml", {"gpus": ["A100-40GB"], "models": [{"name": "a", "gpu_memory_gb": 1}]})
    r = plan(path, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["bins"][0]["gpu_type"] == "A100-40GB"


# --- sizes from the artifact store ------------------------------------------------------------


class Store:
    def __init__(self, home: Path, config: Path, gguf: Path) -> None:
        self.home, self.config, self.gguf = home, config, gguf


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    from modelyard.errors import ArtifactError
    from modelyard.registry.artifacts import ArtifactStore
    from modelyard.registry.defaults import import_defaults

    home = tmp_path_factory.mktemp("plan-home")
    artifacts = ArtifactStore(home / "artifacts")
    try:
        [chat] = import_defaults(artifacts, ["chat"])
    except ArtifactError as exc:
        missing(f"the embedded default model 'chat' is not importable: {exc.message}")
    config = write_yaml(home / "modelyard.yaml", {"memory": {"data_dir": str(home)}})
    return Store(home, config, Path(artifacts.path(chat)))


def test_artifact_sizes_weights_and_kv_from_the_gguf(store: Store, tmp_path: Path) -> None:
    from modelyard.runtime.gguf import read_gguf_metadata

    meta = read_gguf_metadata(str(store.gguf))[0]
    arch = meta["general.architecture"]
    layers = meta[f"{arch}.block_count"]
    heads = meta[f"{arch}.attention.head_count"]
    kv_heads = meta.get(f"{arch}.attention.head_count_kv", heads)
    head_dim = meta.get(f"{arch}.attention.key_length") or meta[f"{arch}.embedding_length"] // heads
    context = meta[f"{arch}.context_length"]
    spec = write_yaml(tmp_path / "a.yaml", {"gpus": [{"gpu_type": "L4"}],
                                            "models": [{"name": "smol", "artifact": "chat", "kv": {"concurrency": 4}}]})
    r = plan(spec, "--json", "--config", store.config)
    assert r.returncode == 0, r.stderr
    [m] = json.loads(r.stdout)["models"]
    assert m["weights_bytes"] == os.path.getsize(store.gguf) > 0
    assert m["kv_bytes"] == 2 * layers * kv_heads * head_dim * 2 * context * 4 > 0
    assert m["replicas"] == 1


def test_an_unknown_artifact_is_named(store: Store, tmp_path: Path) -> None:
    spec = write_yaml(tmp_path / "a.yaml", {"gpus": [{"gpu_type": "L4"}],
                                            "models": [{"name": "x", "artifact": "no-such-model"}]})
    assert_one_error_line(plan(spec, "--config", store.config),
                          "models[0].artifact: 'no-such-model' is not in the artifact store")
