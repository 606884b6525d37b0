"""Loading a sentence-transformers folder at the speed of reading its weights.

``SentenceTransformer(path)`` spent ~95 ms of CPU on all-MiniLM-L6-v2 before a byte of weights
mattered (profiled: ``from_pretrained`` 56 ms — random init of every layer, then a state-dict
conversion pass — and 31 ms rebuilding the tokenizer in Python from ``tokenizer.json`` twice), and
the engine then copied the weights once more into ``FlatWeights`` (27 ms). For the common folder
shape — ``modules.json`` = Transformer (at the root) → Pooling → optional Normalize, a
``tokenizer.json`` and a ``model.safetensors`` — this module builds the same pipeline directly:

* **weights**: ``model.safetensors`` is mapped (``MAP_PRIVATE``) and every tensor is a view into
  the mapping: no copy at all. A thread faults the whole file in (``pages.populate_mapping``, GIL
  released) while the calling thread builds the rest, so a cold load costs about one read of the
  file. The pages are the page cache's, shared with any other mapping of the same file (the
  ``intent`` model's encoder and ``text-embedding`` are the same MiniLM file).
* **model**: ``AutoConfig`` + ``AutoModel.from_config`` under transformers' ``no_init_weights``
  (3.5 ms instead of 23 ms of initialisation that the weights overwrite), then
  ``load_state_dict(assign=True)`` with the views; any missing weight, or an unexpected one that is
  not a non-persistent buffer, makes the plan fail and the engine falls back to the reference
  ``SentenceTransformer`` path.
* **tokenizer**: the ``tokenizers`` library's own ``Tokenizer.from_file`` with
  sentence-transformers' settings (truncation to ``max_seq_length``, longest-first; padding to the
  longest text of the batch, on the tokenizer's padding side).
* **pooling**: sentence-transformers' own arithmetic for ``mean``, ``mean_sqrt_len_tokens``,
  ``cls`` and ``max``; then ``Normalize`` if the folder has it.

The result is checked in ``tests/integration/test_engines_real.py`` against
``SentenceTransformer(path)``: the same token ids and bitwise-identical vectors on MiniLM. A folder
of any other shape (another module type, ``do_lower_case``, no ``tokenizer.json``, no safetensors)
loads through the reference path, as does any folder when ``LoadOptions.extra["loader"]`` is
``"sentence-transformers"``.

``plan_fast_load`` and ``safetensors_layout`` are pure decisions on parsed files; reading the
files, mapping and building are the effects around them.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import mmap
import os
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from modelyard.runtime.pages import populate, populate_mapping

POOLING_MODES = ("mean", "mean_sqrt_len_tokens", "cls", "max")
_LEGACY_POOLING = {"pooling_mode_mean_tokens": "mean", "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
                   "pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max",
                   "pooling_mode_weightedmean_tokens": "weightedmean", "pooling_mode_lasttoken": "lasttoken"}
_POOLING_KEYS = frozenset({"pooling_mode", "include_prompt", "word_embedding_dimension", "embedding_dimension", *_LEGACY_POOLING})
_ST_CONFIG_KEYS = frozenset({"max_seq_length", "do_lower_case"})
_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


class UnsupportedFolder(Exception):
    """The folder does not fit the fast path; the reason says why (the engine falls back)."""


@dataclass(frozen=True)
class FastPlan:
    pooling_path: str  # the Pooling module's folder, relative ("1_Pooling")
    max_seq_length: int
    pooling: str  # one of POOLING_MODES
    normalize: bool
    pad_token: str
    padding_side: str  # "right" | "left"


@dataclass(frozen=True)
class TensorSlot:
    name: str
    dtype: str  # safetensors' code: "F32", "I64", ...
    shape: tuple[int, ...]
    start: int  # absolute byte offsets in the file
    end: int


def _module_kind(entry: dict[str, Any]) -> str:
    return str(entry.get("type", "")).rsplit(".", 1)[-1]


def pooling_mode(config: dict[str, Any]) -> str:
    """The one pooling mode a Pooling config asks for (new ``pooling_mode`` or legacy flags)."""
    mode = config.get("pooling_mode")
    if mode is None:
        modes = [m for k, m in _LEGACY_POOLING.items() if config.get(k)]
        mode = modes[0] if len(modes) == 1 else ("mean" if not modes else tuple(modes))
    if isinstance(mode, (list, tuple)):
        mode = mode[0] if len(mode) == 1 else "+".join(mode)
    return str(mode)


def plan_fast_load(modules: Any, st_config: dict[str, Any] | None, pooling_config: dict[str, Any] | None,
                   tokenizer_config: dict[str, Any], special_tokens: dict[str, Any], files: set[str]) -> FastPlan | str:
    """The fast-path plan for a folder, or why it does not fit (pure)."""
    missing = [f for f in ("modules.json", "config.json", "tokenizer.json", "model.safetensors") if f not in files]
    if missing:
        return f"no {', '.join(missing)}"
    if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
        return "modules.json is not a list of modules"
    kinds = [_module_kind(m) for m in modules]
    if kinds not in (["Transformer", "Pooling"], ["Transformer", "Pooling", "Normalize"]):
        return f"modules {kinds} (only Transformer → Pooling → [Normalize])"
    if modules[0].get("path", "") not in ("", ".") or any(m.get("kwargs") for m in modules):
        return "the Transformer module is not the folder itself, or modules take kwargs"
    st = st_config or {}
    if set(st) - _ST_CONFIG_KEYS or st.get("do_lower_case"):
        return f"sentence_bert_config.json asks for {sorted(set(st) - _ST_CONFIG_KEYS) or 'do_lower_case'}"
    msl = st.get("max_seq_length")
    if not isinstance(msl, int) or isinstance(msl, bool) or msl <= 0:
        return "no max_seq_length in sentence_bert_config.json"
    if pooling_config is None or set(pooling_config) - _POOLING_KEYS:
        return "no Pooling config, or one with unknown keys"
    mode = pooling_mode(pooling_config)
    if mode not in POOLING_MODES:
        return f"pooling mode {mode!r}"
    pad = tokenizer_config.get("pad_token") or special_tokens.get("pad_token")
    pad = pad.get("content") if isinstance(pad, dict) else pad
    if not isinstance(pad, str) or not pad:
        return "no pad token"
    side = tokenizer_config.get("padding_side", "right")
    if side not in ("right", "left"):
        return f"padding side {side!r}"
    return FastPlan(pooling_path=str(modules[1].get("path", "")), max_seq_length=msl, pooling=mode,
                    normalize=len(kinds) == 3, pad_token=pad, padding_side=side)


def safetensors_layout(header: dict[str, Any], data_start: int, file_size: int) -> list[TensorSlot]:
    """The tensors of a safetensors header (pure); ValueError for a malformed one."""
    out = []
    for name, v in header.items():
        if name == "__metadata__":
            continue
        dtype, shape, (a, b) = v["dtype"], tuple(int(d) for d in v["shape"]), v["data_offsets"]
        if dtype not in _ITEMSIZE:
            raise ValueError(f"tensor {name!r}: dtype {dtype} is not supported")
        numel = 1
        for d in shape:
            numel *= d
        start, end = data_start + int(a), data_start + int(b)
        if not data_start <= start <= end <= file_size or end - start != numel * _ITEMSIZE[dtype]:
            raise ValueError(f"tensor {name!r}: offsets {a}..{b} do not fit its shape or the file")
        out.append(TensorSlot(name, dtype, shape, start, end))
    return out


def _read_json(path: str) -> Any:
    try:
        with open(path, "rb") as f:
            return json.loads(f.read())
    except FileNotFoundError:
        return None


def read_fast_plan(folder: str) -> FastPlan | str:
    """Read the small config files of ``folder`` and decide (``plan_fast_load``)."""
    files = {f for f in ("modules.json", "config.json", "tokenizer.json", "model.safetensors")
             if os.path.isfile(os.path.join(folder, f))}
    try:
        modules = _read_json(os.path.join(folder, "modules.json"))
        pooling = None
        if isinstance(modules, list) and len(modules) > 1 and isinstance(modules[1], dict):
            pooling = _read_json(os.path.join(folder, str(modules[1].get("path", "")), "config.json"))
        return plan_fast_load(modules, _read_json(os.path.join(folder, "sentence_bert_config.json")), pooling,
                              _read_json(os.path.join(folder, "tokenizer_config.json")) or {},
                              _read_json(os.path.join(folder, "special_tokens_map.json")) or {}, files)
    except (OSError, ValueError) as exc:
        return f"unreadable config: {exc}"


# --- effects -------------------------------------------------------------------------------------


def map_safetensors(path: str) -> tuple[dict[str, Any], int, int]:
    """(name → tensor viewing a private mapping of the file, mapping address, file size).
    A tensor whose offset is not a multiple of its element size is copied out instead."""
    import torch

    dtypes = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
              "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
              "BOOL": torch.bool}
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < 8:
            raise ValueError("not a safetensors file (too short)")
        mm = mmap.mmap(f.fileno(), size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    (n,) = struct.unpack("<Q", mm[:8])
    if 8 + n > size:
        raise ValueError("truncated safetensors header")
    slots = safetensors_layout(json.loads(mm[8 : 8 + n]), 8 + n, size)
    buf = torch.frombuffer(mm, dtype=torch.uint8)  # holds the mapping open as long as a view lives
    out = {}
    for s in slots:
        raw = buf[s.start : s.end]
        if s.start % _ITEMSIZE[s.dtype]:
            raw = raw.clone()
        out[s.name] = raw.view(dtypes[s.dtype]).view(s.shape)
    return out, buf.data_ptr(), size


@contextlib.contextmanager
def _no_init() -> Iterator[None]:
    try:
        from transformers.initialization import no_init_weights
    except ImportError:
        try:
            from transformers.modeling_utils import no_init_weights  # type: ignore[no-redef]
        except ImportError:
            no_init_weights = contextlib.nullcontext  # type: ignore[assignment]
    with no_init_weights():
        yield


def model_class(folder: str) -> Any:
    """The transformers class ``AutoModel`` builds for the folder (importing its module, which is
    what ``SentenceEngine.prepare`` wants done before the first load)."""
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.from_pretrained(folder, local_files_only=True)
    return AutoModel._model_mapping[type(config)]  # noqa: SLF001 - the class, without building a model


def warm_up_code_paths(folder: str) -> None:
    """Run, once per process, what a first load and a first forward pass do only the first time
    (measured: +20–50 ms on the first load after the imports): the tokenizer's first batch (its
    thread pool) and a forward pass of a one-layer, 128-token-vocabulary model of the folder's own
    architecture (torch's kernels and intra-op pool, transformers' attention-mask code). Nothing of
    it is kept."""
    import torch
    from tokenizers import Tokenizer
    from transformers import AutoConfig, AutoModel

    tok = Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))
    tok.enable_padding()
    tok.encode_batch(["warm-up text", "warm-up"])
    config = AutoConfig.from_pretrained(folder, local_files_only=True)
    for attr, value in (("num_hidden_layers", 1), ("vocab_size", 128)):
        if hasattr(config, attr):
            setattr(config, attr, min(int(getattr(config, attr)), value))
    model = AutoModel.from_config(config).eval()
    with torch.inference_mode():
        ids = torch.tensor([[1, 5, 7, 2], [1, 3, 2, 0]])
        model(input_ids=ids, attention_mask=(ids != 0).long(), return_dict=True)


def _fault_in(address: int, size: int, path: str) -> None:
    if not populate_mapping(address, size):  # an old kernel: fill the page cache by reading
        populate(path)


def _assign_weights(model: Any, tensors: dict[str, Any]) -> None:
    wanted = set(model.state_dict())
    prefix = f"{getattr(model, 'base_model_prefix', '')}."
    if not wanted & tensors.keys() and prefix != "." and all(k.startswith(prefix) for k in tensors):
        tensors = {k[len(prefix):]: v for k, v in tensors.items()}
    non_persistent = {f"{name}.{b}" if name else b for name, mod in model.named_modules()
                      for b in mod._non_persistent_buffers_set}  # noqa: SLF001
    missing = wanted - tensors.keys()
    unexpected = tensors.keys() - wanted - non_persistent
    if missing or unexpected:
        raise UnsupportedFolder(f"weights do not match the model: missing {sorted(missing)[:3]}, "
                                f"unexpected {sorted(unexpected)[:3]}")
    model.load_state_dict({k: tensors[k] for k in wanted}, strict=True, assign=True)
    for p in model.parameters():
        p.requires_grad_(False)


class TextEncoder:
    """Tokenizer → transformer → pooling → [normalize], built by ``build_encoder``."""

    def __init__(self, model: Any, tokenizer: Any, plan: FastPlan) -> None:
        self.model, self.tokenizer, self.plan = model, tokenizer, plan
        self.config = model.config
        self.max_seq_length = plan.max_seq_length
        self.dimensions = int(model.config.hidden_size)
        params = inspect.signature(model.forward).parameters
        self._type_ids = "token_type_ids" in params

    @property
    def module(self) -> Any:
        return self.model

    def features(self, texts: list[str]) -> dict[str, Any]:
        import torch

        encs = self.tokenizer.encode_batch(list(texts))
        out = {"input_ids": torch.tensor([e.ids for e in encs], dtype=torch.long),
               "attention_mask": torch.tensor([e.attention_mask for e in encs], dtype=torch.long)}
        if self._type_ids:
            out["token_type_ids"] = torch.tensor([e.type_ids for e in encs], dtype=torch.long)
        return out

    def embed(self, features: dict[str, Any]) -> Any:
        """Sentence embeddings, exactly as sentence-transformers' Pooling/Normalize compute them."""
        import torch

        tokens = self.model(**features, return_dict=True).last_hidden_state
        mask = features["attention_mask"]
        mode = self.plan.pooling
        acc = torch.float32 if tokens.dtype in (torch.float16, torch.bfloat16) else tokens.dtype
        if mode == "cls":
            first = mask.to(torch.int).argmax(dim=1)
            emb = torch.gather(tokens, 1, first.unsqueeze(-1).unsqueeze(1).expand(-1, 1, tokens.shape[-1])).squeeze(1)
        elif mode == "max":
            m = mask.unsqueeze(-1).expand_as(tokens).to(tokens.dtype)
            emb = tokens.masked_fill(m == 0, float("-inf")).max(dim=1).values
        else:
            m = mask.unsqueeze(-1).to(tokens.dtype)
            total = (tokens * m).sum(dim=1, dtype=acc)
            count = torch.clamp(m.sum(dim=1, dtype=acc), min=1e-9)
            emb = (total / (count if mode == "mean" else torch.sqrt(count))).to(tokens.dtype)
        if self.plan.normalize:
            emb = torch.nn.functional.normalize(emb, p=2, dim=1)
        return emb


def build_encoder(folder: str, plan: FastPlan) -> TextEncoder:
    """Map the weights (faulted in by a thread meanwhile), build tokenizer and model, assign.
    Raises ``UnsupportedFolder`` (fall back) or the underlying error."""
    from tokenizers import Tokenizer
    from transformers import AutoConfig, AutoModel

    weights = os.path.join(folder, "model.safetensors")
    tensors, address, size = map_safetensors(weights)
    reader = threading.Thread(target=_fault_in, args=(address, size, weights), name="modelyard-populate", daemon=True)
    reader.start()
    try:
        tokenizer = Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))
        pad_id = tokenizer.token_to_id(plan.pad_token)
        if pad_id is None:
            raise UnsupportedFolder(f"pad token {plan.pad_token!r} is not in the vocabulary")
        tokenizer.no_truncation()
        tokenizer.enable_truncation(max_length=plan.max_seq_length, stride=0, strategy="longest_first")
        tokenizer.enable_padding(direction=plan.padding_side, pad_id=pad_id, pad_type_id=0, pad_token=plan.pad_token)
        config = AutoConfig.from_pretrained(folder, local_files_only=True)
        with _no_init():
            model = AutoModel.from_config(config)
        model.eval()
        _assign_weights(model, tensors)
    finally:
        reader.join()
    return TextEncoder(model, tokenizer, plan)
