"""The simulator's engine on cases small enough to compute by hand, its trace reader's errors, and
the scenario's dedicated vs packed cost."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelyard.errors import ConfigError
from modelyard.memory import policy as mem_policy
from modelyard.planning import sim_policies, simulate as sim
from modelyard.planning.simulate import PolicySetup, SimConfig, SimGpu, SimModel, simulate
from modelyard.planning.trace import build, read_csv, synthetic

GPU = SimGpu("T", usable_bytes=100, host_bytes=0, throughput_tps=1000.0, prefill_tps=2000.0, cost_per_hour=2.0,
             host_to_gpu_bps=100.0, disk_to_gpu_bps=10.0)


def test_one_model_one_gpu_no_swaps_ttft_is_prefill() -> None:
    trace = build([(0.0, "a", 100, 50), (10.0, "a", 400, 0)])
    r = simulate(trace, [SimModel("a", 50, 50)], GPU, PolicySetup("dedicated", 1, (("a",),)))
    assert r.swaps == 0 and r.unserved == 0
    assert r.ttft_p50_s == pytest.approx((100 / 2000 + 400 / 2000) / 2)  # 0.05 and 0.2: no queueing
    assert r.latency_p99_s == pytest.approx(0.4, rel=0.02)  # 400 tokens / 1000 tok/s (p99 of two values)
    assert r.gpu_hours == pytest.approx(10 / 3600)


def test_fifo_queueing_adds_the_wait() -> None:
    # two requests at t=0: the second waits for the first's 1 s of service
    trace = build([(0.0, "a", 1000, 0), (0.0, "a", 1000, 0)])
    r = simulate(trace, [SimModel("a", 50, 50)], GPU, PolicySetup("dedicated", 1, (("a",),)),
                 SimConfig(duration_s=10))
    # TTFTs 0.5 and 1.5: percentiles interpolate between them
    assert r.ttft_p50_s == pytest.approx(1.0)
    assert r.utilisation == pytest.approx(2.0 / 10)


def test_two_models_alternating_on_a_budget_for_one_swap_every_time() -> None:
    n = 10
    trace = build([(float(i * 100), "ab"[i % 2], 10, 0) for i in range(n)])
    models = [SimModel("a", 80, 80, load_s=2.0), SimModel("b", 60, 60)]  # b: 60 bytes / 10 B/s = 6 s
    r = simulate(trace, models, GPU, sim_policies.tiered(models, GPU, 1), SimConfig(slo_ttft_s=1.0))
    assert r.swaps == n and r.request_loads == n
    assert r.evictions == n - 1
    # every TTFT is its own load + prefill: a's 2 s, b's 6 s (10 / 2000 prefill)
    assert r.per_model["a"]["ttft_p50_s"] == pytest.approx(2.0 + 0.005)
    assert r.per_model["b"]["ttft_p50_s"] == pytest.approx(6.0 + 0.005)
    assert r.slo_attainment == 0.0


def test_models_that_fit_together_load_once() -> None:
    trace = build([(float(i), "ab"[i % 2], 10, 0) for i in range(20)])
    models = [SimModel("a", 50, 50), SimModel("b", 50, 50)]
    r = simulate(trace, models, GPU, sim_policies.tiered(models, GPU, 1))
    assert r.swaps == 2 and r.evictions == 0


def test_tiered_calls_the_memory_policy_and_never_evicts_a_pinned_model(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = mem_policy.plan

    def spy(target: str, *a: object, **kw: object) -> mem_policy.Plan:
        calls.append(target)
        return real(target, *a, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(sim, "plan", spy)
    # p is pinned and the oldest: plain LRU would evict it first; the policy must not
    models = [SimModel("p", 40, 40, pinned=True), SimModel("b", 50, 50), SimModel("c", 50, 50)]
    trace = build([(0.0, "p", 1, 0)] + [(float(10 + i * 10), "bc"[i % 2], 1, 0) for i in range(8)] + [(200.0, "p", 1, 0)])
    setup = PolicySetup("tiered", 1, None, initial=(("p",),))
    r = simulate(trace, models, GPU, setup)
    assert calls.count("b") + calls.count("c") == 8  # one plan per load, from the real policy
    assert r.swaps == 8 and r.evictions == 7  # b and c evict each other; p stays
    assert r.per_model["p"]["ttft_p50_s"] == pytest.approx(1 / 2000)  # never reloaded


def test_a_model_larger_than_the_gpu_is_unserved() -> None:
    trace = build([(0.0, "big", 1, 0), (1.0, "a", 1, 0)])
    models = [SimModel("big", 500, 500), SimModel("a", 10, 10)]
    r = simulate(trace, models, GPU, sim_policies.tiered(models, GPU, 1), SimConfig(slo_ttft_s=2.0))
    assert r.unserved == 1 and r.slo_attainment == 0.5  # a: 1 s load from disk + prefill, within 2 s
    d = simulate(trace, models, GPU, sim_policies.dedicated(models, GPU))
    assert d.gpus == 1 and d.unserved == 1 and any("big" in n for n in d.notes)


def test_host_tier_makes_the_second_load_faster() -> None:
    gpu = SimGpu("T", 100, 200, 1000.0, 2000.0, 1.0, host_to_gpu_bps=100.0, disk_to_gpu_bps=10.0)
    trace = build([(0.0, "a", 0, 0), (100.0, "b", 0, 0), (200.0, "a", 0, 0)])
    models = [SimModel("a", 80, 80), SimModel("b", 80, 80)]
    r = simulate(trace, models, gpu, sim_policies.tiered(models, gpu, 1))
    # a from disk 8 s, b from disk 8 s (a parked on host), a again from host 0.8 s
    assert r.swaps == 3 and r.per_model["a"]["ttft_p50_s"] == pytest.approx((8.0 + 0.8) / 2)


def test_same_seed_same_result() -> None:
    models = sim_policies.scenario_models()
    gpu = sim_policies.sim_gpu("A100-40GB")
    a = synthetic(0.05, 0.01, seed=3, start_hour=9)
    b = synthetic(0.05, 0.01, seed=3, start_hour=9)
    assert list(a.ts) == list(b.ts) and len(a) > 100
    ra = simulate(a, models, gpu, sim_policies.tiered(models, gpu, 2)).as_dict()
    rb = simulate(b, models, gpu, sim_policies.tiered(models, gpu, 2)).as_dict()
    assert ra == rb


def test_dedicated_costs_more_gpu_hours_than_packed_on_the_scenario() -> None:
    models = sim_policies.scenario_models()
    gpu = sim_policies.sim_gpu("A100-80GB")
    trace = synthetic(0.02, 0.01, seed=1, start_hour=10)
    cfg = SimConfig(duration_s=0.02 * 86400)
    ded = simulate(trace, models, gpu, sim_policies.dedicated(models, gpu), cfg)
    setup, plan = sim_policies.packed(sim_policies.SCENARIO9, gpu.gpu_type, time_limit_s=5.0)
    pk = simulate(trace, models, gpu, setup, cfg)
    assert ded.gpus == 10  # nine models, llama-3-8b-chat has two replicas
    assert pk.gpus == plan["gpu_count"] < ded.gpus
    assert pk.gpu_hours < ded.gpu_hours and pk.cost_per_month < ded.cost_per_month
    assert ded.requests == pk.requests == len(trace)


# --- CSV traces ---------------------------------------------------------------------------------

KNOWN = ["chat", "coder"]


def _csv(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "t.csv"
    p.write_text(text)
    return p


def test_csv_trace_reads_sorts_and_shifts(tmp_path: Path) -> None:
    t = read_csv(_csv(tmp_path, "ts,model,prompt_tokens,completion_tokens\n105.5,coder,3,4\n100,chat,1,2\n"), KNOWN)
    assert list(t.ts) == [0.0, 5.5] and [t.models[i] for i in t.model] == ["chat", "coder"]
    assert list(t.prompt) == [1, 3] and list(t.completion) == [2, 4]


def test_csv_iso_timestamps(tmp_path: Path) -> None:
    t = read_csv(_csv(tmp_path, "model,ts,prompt_tokens,completion_tokens\nchat,2026-12-01T10:00:00Z,1,1\n"
                                "chat,2026-12-01T10:00:02.5Z,1,1\n"), KNOWN)
    assert list(t.ts) == [0.0, 2.5]


@pytest.mark.parametrize("text, where, what", [
    ("ts,model,prompt_tokens\n1,chat,3\n", "line 1", "missing column(s) completion_tokens"),
    ("ts,model,prompt_tokens,completion_tokens\n1,chat,3,4\n2,chat,x,4\n", "line 3", "prompt_tokens: 'x'"),
    ("ts,model,prompt_tokens,completion_tokens\nsoon,chat,3,4\n", "line 2", "ts: 'soon'"),
    ("ts,model,prompt_tokens,completion_tokens\n1,chat,3,4\n\n3,gpt-9,3,4\n", "line 4", "unknown model 'gpt-9'"),
    ("ts,model,prompt_tokens,completion_tokens\n1,chat,3,-4\n", "line 2", "completion_tokens: -4 is negative"),
    ("ts,model,prompt_tokens,completion_tokens\n1,chat\n", "line 2", "2 field(s)"),
    ("ts,model,prompt_tokens,completion_tokens\n", "t.csv", "no requests"),
])
def test_csv_errors_name_the_line(tmp_path: Path, text: str, where: str, what: str) -> None:
    with pytest.raises(ConfigError) as e:
        read_csv(_csv(tmp_path, text), KNOWN)
    assert where in e.value.message and what in e.value.message


def test_csv_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the trace"):
        read_csv(tmp_path / "nope.csv", KNOWN)
