"""``modelyard cascade calibrate`` end to end on the real embedded chat and coder models: a gateway
in this process (``inprocess.Served``), the CLI as a subprocess against it through the openai SDK,
on 12 mixed items. The report's figures are recomputed from its own trials (not hard-coded: the
models decide them), and the bad inputs exit 2 with one ``error:`` line.

Heavy (two llama.cpp models): run under ``flock /tmp/modelyard-bench.lock``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelyard.registry.artifacts import ArtifactStore
from modelyard.registry.defaults import import_defaults
from modelyard.routing.cascade import Trial, apply, load_calibration, tier_alone

from .inprocess import Served



def _config(home: Path) -> dict[str, Any]:
    local = {"kind": "local", "n_ctx": 2048, "n_parallel": 2}
    return {
        "memory": {"data_dir": str(home)},
        "router": {"timeout_s": 120, "retry": {"num_retries": 0}},
        "routing": {"auto": {"default": "chat", "classifier": None,
                             "tasks": {"code": {"model": "coder"}, "chat": {"model": "chat"}}}},
        "models": [
            {"name": "chat", "deployments": [{**local, "artifact": "chat"}]},
            {"name": "coder", "deployments": [{**local, "artifact": "coder"}]},
            {"name": "casc", "cascade": {"tiers": [{"model": "chat"}, {"model": "coder"}]}},
        ],
    }


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Served, Path]]:
    home = tmp_path_factory.mktemp("home")
    store = ArtifactStore(home / "artifacts")  # where the CLI looks for sizes (its data_dir)
    import_defaults(store, names=["chat", "coder"])
    cfg = _config(home)
    path = home / "modelyard.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    with Served(cfg, store) as s:
        yield s, path


def cli(*args: str, timeout: float = 200) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "modelyard", "cascade", "calibrate", *args],
                          capture_output=True, text=True, timeout=timeout, env=env)


def test_calibrate_writes_consistent_files(served: tuple[Served, Path], tmp_path: Path) -> None:
    s, config = served
    report = tmp_path / "report"
    r = cli("--model", "casc", "--config", str(config), "--base-url", f"{s.url}/v1", "--limit", "12",
            "--holdout", "0.25", "--report", str(report), "--api-key", "sk-test")
    assert r.returncode == 0, r.stderr[-3000:]
    out = config.parent / "cascades" / "casc.json"  # the default: <data_dir>/cascades/<model>.json
    assert f"calibration: {out}" in r.stdout
    cal = load_calibration(out)
    assert [t.model for t in cal.tiers] == ["chat", "coder"]
    assert cal.tiers[1].threshold is None and cal.meta["items"] == 12

    summary = json.loads((report / "report.json").read_text())
    trials = [Trial(t["item"], t["task"], t["tier"], t["confidence"], t["correct"], t["cost"]) for t in summary["trials"]]
    assert len(trials) == 24 and {t.task for t in trials} == {"arithmetic", "facts", "code"}
    held = set(summary["held_out_items"])
    assert held and len(held) < 12
    train = [t for t in trials if t.item_id not in held]
    assert cal.meta["held_out_items"] == len(held)
    # the chosen threshold in the file is the one in the report, and the report's figures follow
    # from its own trials
    assert cal.tiers[0].threshold == summary["chosen"]["thresholds"][0]
    per_task = {task: tuple(v) for task, v in summary["per_task_thresholds"].items()}
    assert per_task == {}  # 12 items: no task reaches --min-task-items
    for key, part in (("calibration", train), ("held_out", [t for t in trials if t.item_id in held])):
        figures = summary[key]
        for k in (0, 1):
            acc, cost, n = tier_alone(part, k)
            assert figures["tiers"][k]["accuracy"] == pytest.approx(acc) and figures["tiers"][k]["n"] == n
            assert figures["tiers"][k]["cost"] == pytest.approx(cost)
        p = apply(part, 2, (cal.tiers[0].threshold,))
        assert figures["cascade"]["accuracy"] == pytest.approx(p.accuracy)
        assert figures["cascade"]["escalation"] == pytest.approx(p.escalation)
        assert figures["saving_vs_last"] == pytest.approx(1 - p.cost / tier_alone(part, 1)[1])
    # the real engines returned token logprobs for every answer (SmolLM2 and Qwen via llama.cpp)
    assert all(t.confidence is not None and t.confidence <= 0 for t in trials)
    assert all(t.cost > 0 for t in trials)
    assert summary["cost_basis"].startswith("size")  # no prices in this config
    # the answers the checkers judged are kept, and agree with the trials
    answers = [json.loads(line) for line in (report / "answers.jsonl").read_text().splitlines()]
    assert {(a["item"], a["tier"], a["correct"]) for a in answers} == {(t.item_id, t.tier, t.correct) for t in trials}
    for png in ("frontier.png", "reliability.png"):
        assert (report / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (report / "report.md").read_text()
    assert "Held-out split" in md and "saving vs last tier" in md
    assert "cascade casc" in r.stdout  # the rich table


def test_bad_inputs_exit_2(served: tuple[Served, Path], tmp_path: Path) -> None:
    s, config = served
    base = ["--config", str(config), "--base-url", f"{s.url}/v1"]
    bad = tmp_path / "bad.jsonl"
    good = json.dumps({"id": "a", "task": "facts", "messages": [{"role": "user", "content": "q"}], "check": {"number": 1}})
    bad.write_text(good + "\n" + '{"id": "b", "task": "facts"}\n')
    for args, message in (
        (["--model", "nope"], "unknown model 'nope'"),
        (["--model", "chat"], "model 'chat' is not a cascade"),
        (["--model", "casc", "--data", str(bad)], f"{bad}:2: messages"),
        (["--model", "casc", "--data", str(tmp_path / "missing.jsonl")], "cannot read"),
        (["--model", "casc", "--target-ratio", "0.9", "--max-escalation", "0.5"], "give one of"),
    ):
        r = cli(*base, *args, timeout=60)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert r.stderr.strip().splitlines()[-1].startswith("error: ") and message in r.stderr, r.stderr
        assert "Traceback" not in r.stderr
    r = cli("--config", str(config), "--model", "casc", "--base-url", "http://127.0.0.1:9/v1", timeout=60)
    assert r.returncode == 2 and "cannot reach a modelyard gateway" in r.stderr and "Traceback" not in r.stderr


def test_engines_return_token_and_top_logprobs_for_a_judge(served: tuple[Served, Path]) -> None:
    """What judge tiers rely on: the first token's top logprobs, through the gateway."""
    import openai

    from modelyard.routing.cascade import judge_confidence, judge_messages

    s, _ = served
    client = openai.OpenAI(base_url=f"{s.url}/v1", api_key="sk-test", max_retries=0, timeout=120)
    for model in ("chat", "coder"):
        r = client.chat.completions.create(
            model=model, messages=judge_messages([{"role": "user", "content": "What is 2 + 2?"}], "4"),
            max_tokens=1, temperature=0, logprobs=True, top_logprobs=10)
        choice = r.choices[0].model_dump()
        content = choice["logprobs"]["content"]
        assert len(content) == 1 and len(content[0]["top_logprobs"]) == 10
        assert all(t["logprob"] <= 0 for t in content[0]["top_logprobs"])
        p = judge_confidence(choice)
        assert p is None or 0.0 <= p <= 1.0
        if model == "coder":
            assert p is not None  # the 0.5B instruct model answers yes/no to a yes/no question
