"""FlatWeights: packing a module's tensors into one storage per dtype, and moving it between tiers.

On a machine without CUDA the moves are exercised CPU→CPU (packing, views, tied weights, file
reads); the CUDA tests run where a GPU exists (the device machine) and are skipped elsewhere with
that reason — CI has no GPU by design.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch", reason="torch is installed with the test extras (torch==2.13.0)")
from torch import nn  # noqa: E402

from modelyard.runtime.torch_swap import FlatWeights, read_file_to_device  # noqa: E402

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device (run on the GPU machine)")


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(50, 16)
        self.lin = nn.Linear(16, 16)
        self.norm = nn.LayerNorm(16)
        self.head = nn.Linear(16, 50, bias=False)
        self.head.weight = self.emb.weight  # tied, as in most language models
        self.register_buffer("scale", torch.tensor([2.0]))
        self.half = nn.Linear(4, 4).to(torch.float16)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.lin(self.emb(ids)))) * self.scale


def _storage_ptr(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


def test_packs_every_tensor_into_one_storage_per_dtype_and_keeps_outputs() -> None:
    torch.manual_seed(0)
    m = Tiny().eval()
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        before = m(ids)
    fw = FlatWeights(m, pin=False)
    f32 = [p for p in m.parameters() if p.dtype == torch.float32] + [m.scale]
    assert len({_storage_ptr(t) for t in f32}) == 1, "float32 tensors are not views of one storage"
    f16 = [p for p in m.parameters() if p.dtype == torch.float16]
    assert len({_storage_ptr(t) for t in f16}) == 1 and _storage_ptr(f16[0]) != _storage_ptr(f32[0])
    assert m.head.weight is m.emb.weight, "tying was broken"
    expected = sum(p.numel() * p.element_size() for p in m.parameters()) + m.scale.numel() * 4
    assert fw.nbytes == expected
    with torch.no_grad():
        assert torch.equal(m(ids), before)


def test_moves_to_the_same_device_are_no_ops_and_to_host_keeps_values() -> None:
    m = Tiny()
    fw = FlatWeights(m, pin=False)
    ptr = _storage_ptr(m.lin.weight)
    fw.to_device("cpu")
    fw.to_host(pin=False)
    assert _storage_ptr(m.lin.weight) == ptr
    assert fw.device.type == "cpu"


def test_read_file_to_device_fills_exactly_and_refuses_short_files(tmp_path) -> None:  # noqa: ANN001
    data = bytes(range(256)) * 1000
    path = tmp_path / "w.bin"
    path.write_bytes(data)
    dst = torch.empty(len(data), dtype=torch.uint8)
    read_file_to_device(str(path), dst, staging_bytes=4096)
    assert bytes(dst.tolist()) == data
    too_big = torch.empty(len(data) + 1, dtype=torch.uint8)
    with pytest.raises(EOFError):
        read_file_to_device(str(path), too_big)


@needs_cuda
def test_cuda_round_trips_keep_outputs_and_free_device_memory() -> None:
    torch.manual_seed(0)
    m = Tiny().eval()
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        ref = m(ids)
    fw = FlatWeights(m)
    assert fw.is_pinned()
    base = torch.cuda.memory_allocated()
    fw.to_device("cuda")
    assert all(p.device.type == "cuda" for p in m.parameters()) and m.scale.device.type == "cuda"
    assert torch.cuda.memory_allocated() - base >= fw.nbytes
    with torch.no_grad():
        out = m(ids.cuda()).cpu()
    assert torch.allclose(out, ref, rtol=1e-4, atol=1e-5), (out - ref).abs().max()
    active = torch.cuda.memory_allocated()  # includes the BLAS workspace the forward pass allocated
    fw.to_host()
    assert fw.is_pinned()
    assert active - torch.cuda.memory_allocated() >= fw.nbytes, "demotion did not free the weights' device memory"
    host_ptr = _storage_ptr(m.lin.weight)
    fw.to_device("cuda", keep_host_copy=True)
    fw.to_host()  # reuses the kept copy: no transfer, the same host storage comes back
    assert fw.is_pinned() and _storage_ptr(m.lin.weight) == host_ptr
    with torch.no_grad():
        assert torch.equal(m(ids), ref)


@needs_cuda
def test_cuda_read_file_to_device(tmp_path) -> None:  # noqa: ANN001
    data = bytes(range(256)) * 50_000
    path = tmp_path / "w.bin"
    path.write_bytes(data)
    dst = torch.empty(len(data), dtype=torch.uint8, device="cuda")
    read_file_to_device(str(path), dst, staging_bytes=1 << 20)
    assert bytes(dst.cpu().tolist()) == data
