"""Cold starts: the fast sentence-transformers plan, the safetensors layout, page population, and
preparing engines at start (imports before the first request)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import struct

import pytest

from modelyard.backends.local_models import LocalModels, prepare_engines
from modelyard.runtime.base import LoadOptions
from modelyard.runtime.pages import drop_from_cache, populate, resident_fraction
from modelyard.runtime.st_fast import FastPlan, plan_fast_load, pooling_mode, safetensors_layout

MINILM_MODULES = [
    {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
    {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
]
POOLING = {"word_embedding_dimension": 384, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True,
           "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False}
FILES = {"modules.json", "config.json", "tokenizer.json", "model.safetensors"}


def plan(**over):  # noqa: ANN003, ANN201
    args = {"modules": MINILM_MODULES, "st_config": {"max_seq_length": 256, "do_lower_case": False},
            "pooling_config": POOLING, "tokenizer_config": {"pad_token": "[PAD]"}, "special_tokens": {}, "files": FILES}
    return plan_fast_load(**{**args, **over})


def test_minilm_shape_gets_the_fast_plan() -> None:
    assert plan() == FastPlan(pooling_path="1_Pooling", max_seq_length=256, pooling="mean", normalize=True,
                              pad_token="[PAD]", padding_side="right")
    p = plan(modules=MINILM_MODULES[:2], tokenizer_config={}, special_tokens={"pad_token": {"content": "<pad>"}})
    assert isinstance(p, FastPlan) and not p.normalize and p.pad_token == "<pad>"
    assert plan(pooling_config={"pooling_mode": "cls"}).pooling == "cls"


@pytest.mark.parametrize("over, why", [
    ({"files": FILES - {"model.safetensors"}}, "model.safetensors"),
    ({"files": FILES - {"tokenizer.json"}}, "tokenizer.json"),
    ({"modules": [*MINILM_MODULES, {"path": "3_Dense", "type": "sentence_transformers.models.Dense"}]}, "modules"),
    ({"modules": [MINILM_MODULES[1], MINILM_MODULES[0]]}, "modules"),
    ({"st_config": {"max_seq_length": 256, "do_lower_case": True}}, "do_lower_case"),
    ({"st_config": {}}, "max_seq_length"),
    ({"pooling_config": {"pooling_mode": "weightedmean"}}, "weightedmean"),
    ({"pooling_config": {**POOLING, "pooling_mode_max_tokens": True}}, "mean+max"),
    ({"pooling_config": {**POOLING, "something_new": 1}}, "unknown keys"),
    ({"tokenizer_config": {}}, "pad token"),
    ({"tokenizer_config": {"pad_token": "[PAD]", "padding_side": "middle"}}, "padding side"),
])
def test_other_folders_fall_back_with_a_reason(over: dict, why: str) -> None:
    reason = plan(**over)
    assert isinstance(reason, str) and why in reason


def test_pooling_mode_reads_new_and_legacy_configs() -> None:
    assert pooling_mode({"pooling_mode": ["max"]}) == "max"
    assert pooling_mode({"pooling_mode_cls_token": True}) == "cls"
    assert pooling_mode({}) == "mean"


def _header(tensors: dict) -> tuple[dict, int]:
    raw = json.dumps(tensors).encode()
    return tensors, 8 + len(raw)


def test_safetensors_layout_checks_offsets_against_shapes_and_the_file() -> None:
    h, start = _header({"__metadata__": {"format": "pt"}, "a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
                        "b": {"dtype": "I64", "shape": [1], "data_offsets": [24, 32]}})
    slots = safetensors_layout(h, start, start + 32)
    assert [(s.name, s.shape, s.start - start, s.end - start) for s in slots] == [("a", (2, 3), 0, 24), ("b", (1,), 24, 32)]
    with pytest.raises(ValueError, match="do not fit"):
        safetensors_layout(h, start, start + 31)  # the file is one byte short
    with pytest.raises(ValueError, match="do not fit"):
        safetensors_layout({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 12]}}, start, start + 12)
    with pytest.raises(ValueError, match="not supported"):
        safetensors_layout({"a": {"dtype": "F8_E4M3", "shape": [1], "data_offsets": [0, 1]}}, start, start + 1)


def test_mapped_safetensors_views_the_file_without_copying(tmp_path) -> None:  # noqa: ANN001
    torch = pytest.importorskip("torch")
    from modelyard.runtime.st_fast import map_safetensors

    a = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    b = torch.tensor([7], dtype=torch.int64)
    header = json.dumps({"a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
                         "b": {"dtype": "I64", "shape": [1], "data_offsets": [24, 32]}}).encode()
    header += b" " * (-len(header) % 8)
    path = tmp_path / "model.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + a.numpy().tobytes() + b.numpy().tobytes())
    tensors, address, size = map_safetensors(str(path))
    assert torch.equal(tensors["a"], a) and torch.equal(tensors["b"], b)
    assert size == path.stat().st_size and tensors["a"].data_ptr() == address + 8 + len(header)


def test_populate_fills_the_page_cache(tmp_path) -> None:  # noqa: ANN001
    path = tmp_path / "blob"
    path.write_bytes(os.urandom(4 << 20))
    drop_from_cache(path)
    if resident_fraction(path) > 0.5:
        pytest.skip("this filesystem keeps the file cached (cannot drop it)")
    populate(path)
    assert resident_fraction(path) == 1.0


class _Prepared:
    calls: list = []

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail

    def prepare(self, path: str, opts: LoadOptions) -> None:
        _Prepared.calls.append(path)
        if self.fail:
            raise ImportError("no such package")


class _NoPrepare:
    pass


def test_prepare_engines_once_per_engine_and_artifact_and_records_failures() -> None:
    _Prepared.calls = []
    opts = LoadOptions()
    report = prepare_engines([("a", _Prepared, "/m1", opts), ("b", _Prepared, "/m1", opts), ("c", _NoPrepare, "/m2", opts),
                              ("d", lambda: _Prepared(fail=True), "/m3", opts)])
    assert _Prepared.calls == ["/m1", "/m3"]
    assert set(report.seconds) == {"a"} and "ImportError: no such package" in report.errors["d"]


class _Manager:
    def __init__(self, log: list) -> None:
        self.log = log

    async def start(self) -> None:
        self.log.append("manager.start")


async def test_local_models_start_waits_for_preparation_before_the_manager_starts() -> None:
    log: list = []
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        def prep():  # noqa: ANN202
            import time

            time.sleep(0.05)
            log.append("prepared")
            return prepare_engines([])

        local = LocalModels(_Manager(log), store=None, executor=pool)  # type: ignore[arg-type]
        local.preparing = pool.submit(prep)
        await asyncio.wait_for(local.start(), 5)
    assert log == ["prepared", "manager.start"] and local.prepared is not None
