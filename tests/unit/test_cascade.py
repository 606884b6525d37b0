"""The cascade's pure decisions (routing/cascade.py) and the calibrate command's pure helpers, on
hand-built choices and synthetic trials."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

from modelyard.config.routing import CascadeTier
from modelyard.errors import ConfigError
from modelyard.routing.cascade import (
    Calibration,
    TierThresholds,
    Trial,
    accept,
    apply,
    auroc,
    calibrate,
    choose,
    confidence,
    cut_by_tier_cap,
    judge_confidence,
    judge_messages,
    last_tier_point,
    load_calibration,
    reliability,
    save_calibration,
    sweep,
    threshold_for,
    threshold_warnings,
)
from modelyard.routing.cascade_cli import Rate, parse_items, rates, split, stratified


def choice(lps: list[float] | None, finish: str = "stop", top: list[list[tuple[str, float]]] | None = None) -> dict:
    content = None if lps is None else [
        {"token": f"t{i}", "logprob": v, "top_logprobs": [{"token": t, "logprob": lp} for t, lp in (top or [[]] * len(lps))[i]]}
        for i, v in enumerate(lps)]
    return {"index": 0, "message": {"role": "assistant", "content": "x"}, "finish_reason": finish,
            "logprobs": None if content is None else {"content": content, "refusal": None}}


# --- confidence ---------------------------------------------------------------------------------------


def test_mean_and_min_logprob() -> None:
    c = choice([-0.1, -0.5, -1.2])
    assert confidence("mean_logprob", c) == pytest.approx(-0.6)
    assert confidence("min_logprob", c) == pytest.approx(-1.2)


def test_no_logprobs_or_empty_or_length_is_none() -> None:
    assert confidence("mean_logprob", choice(None)) is None
    assert confidence("mean_logprob", choice([])) is None
    assert confidence("mean_logprob", {"finish_reason": "stop"}) is None
    assert confidence("mean_logprob", choice([-0.01, -0.02], finish="length")) == pytest.approx(-0.015)
    # non-finite entries are skipped, not averaged into -inf
    assert confidence("mean_logprob", choice([-0.2, float("-inf"), -0.4])) == pytest.approx(-0.3)
    with pytest.raises(ValueError):
        confidence("judge", choice([-0.1]))


def test_cut_by_tier_cap() -> None:
    cut, done = choice([-0.1], finish="length"), choice([-0.1])
    assert cut_by_tier_cap(cut, 16, 256) and cut_by_tier_cap(cut, 16, None)
    assert not cut_by_tier_cap(cut, 256, 16)  # the client's own cap: scored as it is
    assert not cut_by_tier_cap(cut, None, 16) and not cut_by_tier_cap(done, 16, 256)


def test_judge_confidence_sums_variants_and_normalises() -> None:
    top = [[("Yes", math.log(0.5)), (" yes", math.log(0.1)), ("No", math.log(0.2)), ("Maybe", math.log(0.2))]]
    assert judge_confidence(choice([math.log(0.5)], top=top)) == pytest.approx(0.6 / 0.8)
    only_no = [[(" NO", -0.1), ("no.", -3.0)]]
    assert judge_confidence(choice([-0.1], top=only_no)) == 0.0
    assert judge_confidence(choice([-0.1], top=[[("perhaps", -0.1)]])) is None
    assert judge_confidence(choice(None)) is None


def test_judge_confidence_without_top_list_uses_the_chosen_token() -> None:
    c = {"logprobs": {"content": [{"token": "yes", "logprob": -0.2, "top_logprobs": []}]}}
    assert judge_confidence(c) == 1.0


def test_judge_messages_quote_the_conversation_and_ask_yes_no() -> None:
    msgs = judge_messages([{"role": "system", "content": "Number only."}, {"role": "user", "content": "7*8?"}], " 56 ")
    assert [m["role"] for m in msgs] == ["system", "user"]
    assert "system: Number only." in msgs[1]["content"] and "user: 7*8?" in msgs[1]["content"]
    assert "Answer:\n56" in msgs[1]["content"] and "yes or no" in msgs[1]["content"]
    long = judge_messages([{"role": "user", "content": "q" * 100_000}], "a")
    assert len(long[1]["content"]) < 10_000


# --- thresholds ---------------------------------------------------------------------------------------


CAL = Calibration("c", (TierThresholds("chat", -1.0, {"code": -0.5}), TierThresholds("coder", None, {})), {})


def test_threshold_precedence() -> None:
    both = CascadeTier(model="chat", threshold=-2.0, thresholds={"code": -0.1})
    assert threshold_for(0, both, CAL, "code") == -0.1  # config task
    assert threshold_for(0, both, CAL, "facts") == -2.0  # config threshold
    plain = CascadeTier(model="chat")
    assert threshold_for(0, plain, CAL, "code") == -0.5  # calibrated task
    assert threshold_for(0, plain, CAL, "facts") == -1.0  # calibrated threshold
    assert threshold_for(0, plain, CAL, None) == -1.0
    assert threshold_for(0, plain, None, "code") is None
    # a calibration measured on another model (or signal) is stale and ignored
    assert threshold_for(0, CascadeTier(model="other"), CAL, None) is None
    meta = Calibration("c", CAL.tiers, {"confidence": ["min_logprob", "mean_logprob"]})
    assert threshold_for(0, plain, meta, None) is None
    assert threshold_for(0, CascadeTier(model="chat", confidence="min_logprob"), meta, None) == -1.0


def test_accept() -> None:
    assert accept(-0.5, -1.0) and accept(-1.0, -1.0)
    assert not accept(-1.5, -1.0)
    assert not accept(None, -1.0)  # no logprobs: escalate
    assert not accept(-0.1, None)  # no threshold: escalate


def test_threshold_warnings() -> None:
    tiers = [CascadeTier(model="chat"), CascadeTier(model="coder")]
    assert any("no threshold" in w for w in threshold_warnings("c", tiers, None))
    assert threshold_warnings("c", tiers, CAL) == []
    stale = threshold_warnings("c", [CascadeTier(model="x"), CascadeTier(model="coder")], CAL)
    assert any("ignored" in w for w in stale) and any("no threshold" in w for w in stale)


def test_calibration_round_trip_and_bad_files(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "c.json"
    save_calibration(path, CAL)
    assert load_calibration(path) == CAL
    for text in ("{", "[]", json.dumps({"version": 9}), json.dumps({"version": 1, "model": "c", "tiers": [{"model": "a"}]}),
                 json.dumps({"version": 1, "model": "c", "tiers": [{"model": "a", "threshold": "x"}, {"model": "b"}]})):
        path.write_text(text)
        with pytest.raises(ConfigError) as err:
            load_calibration(path)
        assert str(path) in str(err.value)
    with pytest.raises(ConfigError):
        load_calibration(tmp_path / "missing.json")


# --- sweep / choose -----------------------------------------------------------------------------------


def calibrated_trials(n: int = 400, seed: int = 7) -> list[Trial]:
    """Tier 0 perfectly calibrated: P(correct) = exp(confidence); tier 1 right 90% of the time."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        p = rng.random()
        out.append(Trial(f"i{i:04d}", "arithmetic" if i % 2 else "facts", 0, math.log(max(p, 1e-9)), rng.random() < p, 1.0))
        out.append(Trial(f"i{i:04d}", "arithmetic" if i % 2 else "facts", 1, -0.1, rng.random() < 0.9, 10.0))
    return out


def test_sweep_is_exact_for_two_tiers() -> None:
    trials = calibrated_trials(50)
    points = sweep(trials, 2)
    assert len(points) == 51  # every distinct tier-0 confidence, plus "escalate all"
    last = last_tier_point(points)
    assert last.shares == (0.0, 1.0) and last.cost == pytest.approx(11.0)
    assert last.accuracy == pytest.approx(sum(t.correct for t in trials if t.tier == 1) / 50)
    lowest = min((p for p in points if p.thresholds[0] is not None), key=lambda p: p.thresholds[0])
    assert lowest.shares == (1.0, 0.0) and lowest.cost == pytest.approx(1.0)
    assert lowest.accuracy == pytest.approx(sum(t.correct for t in trials if t.tier == 0) / 50)


def test_choose_meets_the_target_on_a_calibrated_tier() -> None:
    trials = calibrated_trials()
    points = sweep(trials, 2)
    last = last_tier_point(points)
    chosen = choose(points)
    assert chosen.accuracy >= 0.95 * last.accuracy
    assert chosen.cost < last.cost  # a calibrated small tier saves something
    assert 0 < chosen.escalation < 1
    cheaper = [p for p in points if p.cost < chosen.cost]
    assert all(p.accuracy < 0.95 * last.accuracy for p in cheaper)
    # escalation-capped choice: best accuracy within the cap
    capped = choose(points, max_escalation=0.3)
    assert capped.escalation <= 0.3
    assert all(p.accuracy <= capped.accuracy for p in points if p.escalation <= 0.3)
    with pytest.raises(ValueError):
        choose(points, target_accuracy=0.5, max_escalation=0.2)


def test_degenerate_cases() -> None:
    def trials(conf0: float | None, right0: bool, n: int = 10) -> list[Trial]:
        return [t for i in range(n) for t in (Trial(f"i{i}", "t", 0, conf0 if conf0 is None else conf0 - i / 100, right0, 1.0),
                                              Trial(f"i{i}", "t", 1, -0.1, True, 5.0))]
    all_right = choose(sweep(trials(-0.2, True), 2))
    assert all_right.escalation == 0.0 and all_right.accuracy == 1.0
    none_right = choose(sweep(trials(-0.2, False), 2))
    assert none_right.thresholds == (None,) and none_right.accuracy == 1.0
    no_logprobs = sweep(trials(None, True), 2)
    assert [p.thresholds for p in no_logprobs] == [(None,)]
    assert choose(no_logprobs).escalation == 1.0
    assert choose(no_logprobs, target_accuracy=1.1).thresholds == (None,)  # unreachable: the best there is


def test_three_tiers_grid() -> None:
    rng = random.Random(3)
    trials = []
    for i in range(60):
        for k, cost in enumerate((1.0, 3.0, 9.0)):
            trials.append(Trial(f"i{i}", "t", k, -rng.random() * 2, rng.random() < 0.5 + 0.2 * k, cost))
    points = sweep(trials, 3)
    assert len(points) == 17 * 17
    for p in points:
        assert sum(p.shares) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        sweep(trials[:-1], 3)  # an item without every tier


def test_calibrate_per_task_and_apply_on_held_out() -> None:
    trials = calibrated_trials(400)
    r = calibrate(trials, ["chat", "coder"], "c", min_task_items=150, task_names={"facts"})
    assert set(r.per_task) == {"facts"}  # arithmetic is not a task the gateway can name
    assert r.calibration.tiers[0].threshold == r.chosen.thresholds[0]
    assert set(r.calibration.tiers[0].thresholds) == {"facts"}
    assert r.calibration.tiers[1] == TierThresholds("coder", None, {})
    again = apply(trials, 2, r.chosen.thresholds, {t: p.thresholds for t, p in r.per_task.items()})
    assert again == r.overall
    assert r.met == (r.overall.accuracy >= r.target)


def test_reliability_and_auroc() -> None:
    trials = calibrated_trials(2000)
    bins = reliability(trials, 0, "mean_logprob")
    assert sum(b[2] for b in bins) == 2000
    for lo, hi, _n, conf, acc in bins:
        assert lo <= conf <= hi
        assert abs(acc - conf) < 0.12  # calibrated by construction (binomial noise on ~200 per bin)
    assert auroc(trials, 0) > 0.7
    assert auroc(trials, 1) is not None and abs(auroc(trials, 1) - 0.5) < 1e-9  # constant confidence: ties
    assert auroc([Trial("a", "t", 0, -0.1, True, 1.0)], 0) is None


# --- the calibrate command's pure helpers -------------------------------------------------------------


def item(i: int, task: str) -> str:
    return json.dumps({"id": f"{task}-{i}", "task": task, "messages": [{"role": "user", "content": "q"}],
                       "max_tokens": 8, "check": {"number": i}})


def test_parse_items_names_the_bad_line() -> None:
    good = [item(1, "a"), "", item(2, "a")]
    assert [i["id"] for i in parse_items(good, "f")] == ["a-1", "a-2"]
    for bad, why in (("{", "not JSON"), ("[1]", "not a JSON object"), (json.dumps({"id": "x"}), "task"),
                     (item(1, "a"), "duplicate"), (json.dumps({**json.loads(item(3, "a")), "check": {}}), "check needs"),
                     (json.dumps({**json.loads(item(4, "a")), "max_tokens": 0}), "max_tokens")):
        with pytest.raises(ValueError, match=rf"f:3: .*{why}"):
            parse_items([item(1, "a"), "", bad], "f")
    with pytest.raises(ValueError, match="no items"):
        parse_items(["", " "], "f")


def test_stratified_and_split() -> None:
    items = [json.loads(item(i, t)) for t in ("a", "b", "c") for i in range(20)]
    few = stratified(items, 9)
    assert len(few) == 9 and {i["task"] for i in few} == {"a", "b", "c"}
    assert stratified(items, None) == items
    train, held = split(items, 0.25)
    assert len(held) == 15 and {i["task"] for i in held} == {"a", "b", "c"}
    assert not {i["id"] for i in train} & {i["id"] for i in held}
    assert split(items, 0.25) == (train, held)  # the same split every run
    assert split(items, 0) == (items, [])


def test_rates_prefer_prices_else_size() -> None:
    from modelyard.config.loader import settings_from_dict

    def cfg(price: bool) -> object:
        p = {"price": {"input_per_1k": 0.5, "output_per_1k": 1.0}} if price else {}
        dep = [{"kind": "openai", "api_base": "http://127.0.0.1:9/v1", "model": "m"}]
        return settings_from_dict({"models": [{"name": "a", "deployments": dep, **p},
                                              {"name": "b", "deployments": dep, **p}]}).settings
    r, basis = rates(cfg(True), ["a", "b"], {})
    assert r["a"] == Rate(0.5, 1.0) and basis.startswith("price")
    r, basis = rates(cfg(False), ["a", "b"], {"a": 2_000_000_000, "b": None})
    assert r["a"] == Rate(0.5, 2.0) and r["b"] == Rate(0.25, 1.0) and basis.startswith("size") and "unknown" in basis
    assert Rate(2.0, 4.0).cost(500, 250) == pytest.approx(2.0)
