"""``modelyard simulate`` through click: the scenario's day writes its JSON and plots; a bad trace
is one line and exit status 2."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from modelyard.cli import main


def test_synthetic_day_writes_json_and_pngs(tmp_path: Path) -> None:
    out = tmp_path / "sim"
    r = CliRunner().invoke(main, ["simulate", "--synthetic", "scenario9", "--days", "1", "--scale", "small",
                                  "--out", str(out), "--seed", "2"])
    assert r.exit_code == 0, r.output
    doc = json.loads((out / "simulate.json").read_text())
    names = [p["policy"] for p in doc["policies"]]
    assert names == ["dedicated", "packed", "tiered", "tiered-prewarm"]
    assert all(p["requests"] == doc["meta"]["requests"] > 10_000 for p in doc["policies"])
    by = {p["policy"]: p for p in doc["policies"]}
    assert by["dedicated"]["gpus"] == 10 and by["packed"]["gpus"] < 10 and by["tiered"]["gpus"] == 3
    assert by["tiered"]["swaps"] >= 9  # it starts cold: each of the nine models loads at least once
    for png in ("cost_vs_slo.png", "gpus_over_day.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "tiered-prewarm" in r.output and "$/month" in r.output


def test_bad_trace_is_one_line_and_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("ts,model,prompt_tokens,completion_tokens\n0,llama-3-8b-chat,10,10\n1,llama-3-8b-chat,ten,10\n")
    r = CliRunner().invoke(main, ["simulate", "--trace", str(bad), "--policy", "tiered"])
    assert r.exit_code == 2
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "line 3" in lines[0] and "Traceback" not in r.output


def test_trace_and_synthetic_together_is_refused() -> None:
    r = CliRunner().invoke(main, ["simulate", "--synthetic", "scenario9", "--trace", "x.csv"])
    assert r.exit_code == 2 and "exactly one of" in r.output


def test_a_good_trace_runs(tmp_path: Path) -> None:
    t = tmp_path / "t.csv"
    t.write_text("ts,model,prompt_tokens,completion_tokens\n" + "".join(
        f"{i * 0.5},{'bert-classifier' if i % 3 else 'llama-3-8b-chat'},64,{i % 5}\n" for i in range(60)))
    r = CliRunner().invoke(main, ["simulate", "--trace", str(t), "--policy", "tiered", "--policy", "dedicated", "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    assert [p["policy"] for p in doc["policies"]] == ["tiered", "dedicated"] and doc["meta"]["requests"] == 60
