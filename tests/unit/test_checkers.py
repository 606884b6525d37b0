"""Answer checkers of the cascade eval set (routing/checkers.py), and the shipped set itself."""

from __future__ import annotations

import json
from importlib import resources

import pytest

from modelyard.routing.checkers import Verdict, check, check_accept, check_number, extract_code, run_tests, spec_problem


def test_number_takes_the_last_number() -> None:
    assert check_number(56, "7 * 8 = 56").ok
    assert not check_number(56, "56? no, 57").ok
    assert check_number(1234, "It is 1,234.").ok
    assert check_number(-3.5, "x = -3.5").ok
    assert check_number(0.5, "about .5").ok
    assert check_number(4, "no number here").reason == "no number"
    assert not check_number(12, "v12").ok  # a number glued to a word is not that number


def test_accept_whole_words_case_insensitive() -> None:
    assert check_accept(["Paris"], "The capital is paris.").ok
    assert not check_accept(["Paris"], "Parisian food").ok
    assert not check_accept(["Paris"], "paris", case_sensitive=True).ok
    assert check_accept(["New  York"], "It is new york city").ok


def test_spec_problems() -> None:
    assert spec_problem({"number": 3}) is None
    assert "exactly one" in (spec_problem({"number": 3, "accept": ["a"]}) or "")
    assert spec_problem({"number": True}) is not None
    assert spec_problem({"accept": []}) is not None
    assert "compile" in (spec_problem({"regex": "("}) or "")
    assert spec_problem({"tests": "assert 1"}) is not None
    assert spec_problem([1]) is not None
    with pytest.raises(ValueError):
        check({"nope": 1}, "x")


def test_extract_code_prefers_python_fence() -> None:
    assert extract_code("```js\nx\n```\n```python\ndef f(): pass\n```") == "def f(): pass"
    assert extract_code("Here:\ndef f():\n    return 1") == "def f():\n    return 1"
    assert extract_code("no code at all") is None


def test_tests_with_an_injected_runner() -> None:
    seen = []

    def runner(code: str, tests: list[str], timeout: float) -> Verdict:
        seen.append((code, tuple(tests), timeout))
        return Verdict(True, "fake")

    spec = {"tests": ["assert f(1) == 2"], "entry": "f", "timeout_s": 3}
    assert check(spec, "```python\ndef f(x):\n    return x + 1\n```", runner).ok
    assert seen == [("def f(x):\n    return x + 1", ("assert f(1) == 2",), 3.0)]
    assert check(spec, "```python\ndef g(x): return x\n```", runner).reason == "no function f"
    assert check(spec, "I cannot", runner).reason == "no code"


def test_run_tests_in_a_subprocess() -> None:
    assert run_tests("def f(x):\n    return x + 1", ["assert f(1) == 2"], 10).ok
    bad = run_tests("def f(x):\n    return x", ["assert f(1) == 2"], 10)
    assert not bad.ok and "AssertionError" in bad.reason
    spin = run_tests("while True: pass", [], 1)  # the CPU limit or the wall-clock timeout, whichever is first
    assert not spin.ok and ("timeout" in spin.reason or "signal" in spin.reason)
    blocked = run_tests("import socket\nsocket.socket()", [], 10)
    assert not blocked.ok and "blocked by the eval runner" in blocked.reason


def test_the_shipped_eval_set_is_well_formed() -> None:
    from modelyard.routing.cascade_cli import parse_items

    path = resources.files("modelyard.datasets") / "cascade_eval.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines()
    items = parse_items(lines, "cascade_eval.jsonl")
    assert len(items) >= 300
    tasks = {i["task"] for i in items}
    assert tasks == {"arithmetic", "facts", "code"}
    for task in tasks:
        assert sum(i["task"] == task for i in items) >= 60
    assert all(json.loads(line)["check"] for line in lines if line.strip())


def test_the_shipped_set_is_what_its_seeded_generator_makes() -> None:
    from modelyard.datasets import _make_cascade_eval as gen
    from modelyard.datasets import render

    path = resources.files("modelyard.datasets") / "cascade_eval.jsonl"
    assert path.read_text(encoding="utf-8") == render(gen.build())
