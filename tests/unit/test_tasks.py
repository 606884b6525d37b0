"""routing/tasks.py: what the user wrote, the built-in rules, and the linear task model."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from modelyard.errors import ArtifactError, ConfigError
from modelyard.routing.tasks import (
    DEFAULT_RULES,
    TASKS,
    Prediction,
    Rules,
    TaskModel,
    evaluate,
    packaged_dataset_path,
    packaged_model_path,
    split,
    train,
    user_text,
)

# --- user_text -------------------------------------------------------------------------------------


def test_chat_last_user_turn_with_earlier_user_turns_only() -> None:
    data = {"messages": [
        {"role": "system", "content": "SYSTEM PROMPT with ``` code words def f("},
        {"role": "developer", "content": "DEV"},
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "ASSISTANT ANSWER"},
        {"role": "tool", "content": "TOOL OUTPUT", "tool_call_id": "x"},
        {"role": "user", "content": "second question"},
    ], "tools": [{"type": "function", "function": {"name": "run_python", "description": "Traceback"}}]}
    assert user_text(data, 2000) == "first question\n\nsecond question"


def test_earlier_turns_only_while_they_fit_then_the_end_is_kept() -> None:
    data = {"messages": [{"role": "user", "content": "a" * 50}, {"role": "user", "content": "b" * 30}]}
    assert user_text(data, 40) == "b" * 30  # the earlier turn does not fit: dropped whole
    assert user_text(data, 82) == "a" * 50 + "\n\n" + "b" * 30
    long = {"messages": [{"role": "user", "content": "x" * 100 + "END"}]}
    assert user_text(long, 10) == "x" * 7 + "END"  # the last turn alone is cut from the front


def test_content_parts_text_only() -> None:
    data = {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "look at this"},
        {"type": "image_url", "image_url": {"url": "data:..."}},
        {"type": "text", "text": "picture"},
    ]}]}
    assert user_text(data, 2000) == "look at this\npicture"


def test_completions_prompt_string_and_list() -> None:
    assert user_text({"prompt": "hello " * 10}, 64) == ("hello " * 10)[-64:]
    assert user_text({"prompt": ["one", "two"]}, 2000) == "one\n\ntwo"
    assert user_text({"prompt": [1, 2, 3]}, 2000) == ""  # token ids: no words to read


def test_responses_input_string_and_items() -> None:
    assert user_text({"input": "write a poem"}, 2000) == "write a poem"
    data = {"input": [
        {"role": "system", "content": "SYS"},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "fix my code"}]},
        {"type": "function_call_output", "call_id": "c", "output": "TOOL"},
        {"role": "assistant", "content": "ASSISTANT"},
        {"role": "user", "content": "and explain it"},
    ]}
    assert user_text(data, 2000) == "fix my code\n\nand explain it"


@pytest.mark.parametrize("data", [
    None, 5, "text", [], {}, {"messages": None}, {"messages": "hi"}, {"messages": [None, 3, "x"]},
    {"messages": [{"role": "user", "content": None}]}, {"messages": [{"role": "user", "content": 42}]},
    {"messages": [{"role": "user", "content": [None, 3, {"type": "text", "text": 7}]}]},
    {"prompt": None}, {"prompt": {"a": 1}}, {"input": 3}, {"input": [None, {"role": "user", "content": {"x": 1}}]},
    {"messages": [{"role": "user"}]}, {"messages": [{"role": "system", "content": "only a system prompt"}]},
])
def test_odd_input_never_raises_and_gives_empty(data: object) -> None:
    assert user_text(data, 2000) == ""  # type: ignore[arg-type]


def test_odd_context_chars_never_raises() -> None:
    assert user_text({"prompt": "x"}, "lots") == ""  # type: ignore[arg-type]
    assert user_text({"prompt": "x"}, 0) == ""


# --- rules -----------------------------------------------------------------------------------------

RULES = Rules(DEFAULT_RULES)


@pytest.mark.parametrize("text", [
    "why?\n```js\nlet x\n```",
    "Traceback (most recent call last):\n  File \"a.py\", line 1",
    "TRACEBACK (MOST RECENT CALL LAST):",
    "def f(x):\n    return x",
    "#include <stdio.h>",
    "SELECT name FROM users WHERE id = 1",
    "select * from orders",
    "console.log(foo)",
    "How do I reverse a string in Python?",
    "can you do it in JavaScript instead",
    "write a java class for a bank account",
    "my python script is slow",
    "I need a regex for emails",
    "help me optimise this sql query",
    "I get a KeyError when I load the config",
    "import numpy as np",
])
def test_code_rules_fire(text: str) -> None:
    hit = RULES.match(text)
    assert hit is not None and hit[0] == "code", text


@pytest.mark.parametrize("text", [
    "How long do pythons live in captivity?",
    "Is a ball python a good pet?",
    "What should I see on a trip to Java and Bali?",
    "Is Java coffee stronger than espresso?",
    "Please select one from the list of restaurants",  # English "select ... from"
    "Tell me about Monty Python",
    "the app crashes when I click save",  # code, but for the classifier: no rule can see it
    "Write me a poem about recursion",
    "We went to Java last summer, in the rainy season.",
])
def test_code_rules_stay_quiet_on_hard_cases(text: str) -> None:
    hit = RULES.match(text)
    assert hit is None or hit[0] != "code", (text, hit)


def test_summarize_and_classify_rules_and_order() -> None:
    assert RULES.match("Summarize this article: the council met") == ("summarize", DEFAULT_RULES["summarize"][0])
    assert RULES.match("tl;dr please")[0] == "summarize"  # type: ignore[index]
    assert RULES.match("Classify this review as positive or negative")[0] == "classify"  # type: ignore[index]
    # code first: a pasted traceback goes to the coder even when the user says "summarize"
    assert RULES.match("summarize this stack trace\nTraceback (most recent call last):\n")[0] == "code"  # type: ignore[index]


def test_rules_first_task_in_dict_order_and_pattern_reported() -> None:
    rules = Rules({"b": ["zeta"], "a": ["ZETA", "eta"]})
    assert rules.match("Zeta and eta") == ("b", "zeta")
    assert rules.match("beta") == ("a", "eta")
    assert rules.match("nothing") is None


def test_bad_regex_names_task_and_index() -> None:
    with pytest.raises(ConfigError) as exc:
        Rules({"code": ["ok", "([unclosed"]})
    assert "rules.code[1]" in exc.value.message and "([unclosed" in exc.value.message


# --- the task model --------------------------------------------------------------------------------


def blobs(n_per: int, dim: int = 16, seed: int = 0, tasks: tuple[str, ...] = ("a", "b", "c")) -> tuple[np.ndarray, list[str]]:
    """Separable clusters around random centres, with noise: a task the model can learn but not
    trivially (the noise makes a few points ambiguous)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(tasks), dim))
    xs, ys = [], []
    for i, t in enumerate(tasks):
        xs.append(centres[i] + 0.6 * rng.normal(size=(n_per, dim)))
        ys += [t] * n_per
    return np.vstack(xs), ys


def test_train_predict_evaluate() -> None:
    x, y = blobs(60)
    model = train(x, y, tasks=("a", "b", "c"))
    assert model.tasks == ("a", "b", "c") and model.dim == 16
    xt, yt = blobs(30, seed=0)  # same centres, same distribution
    report = evaluate(model, xt, yt)
    assert report["accuracy"] > 0.9
    assert sum(map(sum, report["confusion"]["matrix"])) == 90
    assert report["per_task"]["a"]["support"] == 30
    p = model.predict(xt[0])
    assert isinstance(p, Prediction) and p.task in model.tasks and 1 / 3 < p.p <= 1


def test_predict_normalises_and_checks_dim() -> None:
    x, y = blobs(40)
    model = train(x, y)
    assert model.predict(x[5]) == model.predict(x[5] * 37.0)  # scale does not matter: unit vectors
    with pytest.raises(ConfigError, match="16-d"):
        model.predict(np.ones(8))


def test_training_is_deterministic() -> None:
    x, y = blobs(40)
    a, b = train(x, y, seed=3), train(x, y, seed=3)
    assert np.array_equal(a.weights, b.weights) and np.array_equal(a.bias, b.bias)


def test_two_tasks_and_unseen_task() -> None:
    x, y = blobs(40, tasks=("yes", "no"))
    model = train(x, y, tasks=("yes", "no", "never"))  # "never" has no example: never predicted
    assert {model.predict(v).task for v in x} <= {"yes", "no"}
    assert evaluate(model, x, y)["accuracy"] > 0.9


def test_train_rejects_bad_labels() -> None:
    x, y = blobs(10)
    with pytest.raises(ConfigError, match="not among"):
        train(x, y, tasks=("a", "b"))
    with pytest.raises(ConfigError, match="two tasks"):
        train(x[:10], y[:10])


def test_save_load_round_trip(tmp_path) -> None:  # noqa: ANN001
    x, y = blobs(40)
    model = train(x, y, max_chars=600, metadata={"dataset_sha256": "ab" * 32})
    path = model.save(tmp_path / "m.json")
    back = TaskModel.load(path)
    assert back.tasks == model.tasks and back.max_chars == 600 and back.metadata["dataset_sha256"] == "ab" * 32
    assert np.array_equal(back.weights, model.weights)  # rounded before saving: exact
    assert [back.predict(v) for v in x] == [model.predict(v) for v in x]
    raw = json.loads(path.read_text())
    assert raw["format"] == "modelyard-task-model" and raw["version"] == 1 and raw["dim"] == 16


def test_load_rejects_other_files(tmp_path) -> None:  # noqa: ANN001
    bad = tmp_path / "bad.json"
    for content, match in [("{not json", "cannot read"), ('{"format": "other"}', "not a"),
                           ('{"format": "modelyard-task-model", "version": 99}', "version"),
                           ('{"format": "modelyard-task-model", "version": 1, "tasks": ["a", "b"], "weights": [[1]], "bias": [0]}',
                            "damaged")]:
        bad.write_text(content)
        with pytest.raises(ArtifactError, match=match):
            TaskModel.load(bad)
    with pytest.raises(ArtifactError):
        TaskModel.load(tmp_path / "missing.json")


def test_clip_keeps_the_end() -> None:
    x, y = blobs(10)
    assert train(x, y, max_chars=4).clip("abcdefgh") == "efgh"
    assert train(x, y).clip("abcdefgh") == "abcdefgh"


# --- split -----------------------------------------------------------------------------------------


def test_split_is_stratified_deterministic_and_disjoint() -> None:
    items = [{"task": t, "i": i} for i, t in enumerate(["a"] * 50 + ["b"] * 20 + ["c"] * 5)]
    tr, te = split(items, 0.2, seed=1)
    assert Counter(it["task"] for it in te) == {"a": 10, "b": 4, "c": 1}
    assert len(tr) + len(te) == len(items) and not {it["i"] for it in tr} & {it["i"] for it in te}
    assert split(items, 0.2, seed=1) == (tr, te)
    assert split(items, 0.2, seed=2)[1] != te  # another seed, another split
    assert [it["i"] for it in te] == sorted(it["i"] for it in te)  # input order kept
    assert split(items, 0.0) == (items, [])
    with pytest.raises(ConfigError):
        split(items, 1.0)


# --- the shipped files -----------------------------------------------------------------------------


def test_shipped_dataset_shape() -> None:
    rows = [json.loads(line) for line in packaged_dataset_path().read_text().splitlines()]
    counts = Counter(r["task"] for r in rows)
    assert set(counts) == set(TASKS) and min(counts.values()) >= 300
    assert len({r["text"] for r in rows}) == len(rows)
    assert sum(1 for r in rows if r.get("hard")) >= 100


def test_shipped_model_loads_and_records_its_training() -> None:
    model = TaskModel.load(packaged_model_path())
    assert model.tasks == TASKS and model.dim == 384
    meta = model.metadata
    for key in ("trained_at", "n_train", "held_out_accuracy", "per_task", "dataset_sha256"):
        assert key in meta, key
    assert set(meta["per_task"]) == set(TASKS)
