"""Unit tests of budget detection and size parsing (modelyard.memory.devices).

``auto`` is measured for real on this machine (a CPU machine in CI: the active tier is a share of
the available RAM); the GPU branch is exercised with a stand-in ``torch`` module.
"""

from __future__ import annotations

import sys
import types

import pytest

from modelyard.errors import ConfigError
from modelyard.memory import devices
from modelyard.memory.devices import available_ram_bytes, detect_budgets, parse_bytes, rss_bytes
from modelyard.memory.policy import Budgets

GiB = 1024**3


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (0, 0), (1234, 1234), ("1024", 1024), ("512B", 512), ("2GiB", 2 * GiB), ("2 GiB", 2 * GiB),
        ("1.5G", int(1.5 * GiB)), ("1.5g", int(1.5 * GiB)), ("512MB", 512_000_000), ("512MiB", 512 * 1024**2),
        ("512M", 512 * 1024**2), ("4KiB", 4096), ("4kb", 4000), ("1T", 1024**4), ("1TB", 10**12), (".5GiB", GiB // 2),
        (2.0 * GiB, 2 * GiB),
    ],
)
def test_parse_bytes(text: int | str, expected: int) -> None:
    assert parse_bytes(text) == expected


@pytest.mark.parametrize(
    ("bad", "words"),
    [
        ("", "cannot parse"), ("lots", "cannot parse"), ("-1GiB", "cannot parse"), ("2 XB", "unknown unit"),
        ("1.5.5G", "cannot parse"), (-5, ">= 0"), (True, "size"), (None, "size"),
    ],
)
def test_parse_bytes_errors(bad: object, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        parse_bytes(bad)  # type: ignore[arg-type]


def test_explicit_budgets() -> None:
    assert detect_budgets({"active": "2GiB", "host": 1000}) == Budgets(2 * GiB, 1000)


def test_explicit_errors_name_the_field() -> None:
    with pytest.raises(ConfigError, match=r"memory\.host: .*unknown unit"):
        detect_budgets({"active": "1GiB", "host": "3 parsecs"})
    with pytest.raises(ConfigError, match=r"memory\.active: .*between 0% and 100%"):
        detect_budgets({"active": "150%", "host": "1GiB"})
    with pytest.raises(ConfigError, match="unknown tier"):
        detect_budgets({"active": "1GiB", "gpu": "1GiB"})


def test_auto_on_this_machine_is_a_share_of_available_ram(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(devices, "gpu_free_bytes", lambda device="cuda:0": None)
    ram = available_ram_bytes()
    b = detect_budgets("auto")
    assert 0 < b.active <= ram * devices.CPU_ACTIVE_FRACTION * 1.1
    assert 0 < b.host <= ram * devices.CPU_HOST_FRACTION * 1.1
    assert b.active + b.host < ram * 1.1  # on a CPU machine both tiers share the RAM


def test_auto_really_measured_here() -> None:
    """No stand-ins: whatever this machine is, auto gives positive budgets that fit its memory."""
    b = detect_budgets({})
    assert b.active > 0 and b.host > 0
    assert b.host <= available_ram_bytes() * 1.1


def test_percent_of_the_device(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(devices, "gpu_free_bytes", lambda device="cuda:0": None)
    monkeypatch.setattr(devices, "available_ram_bytes", lambda: 1000 * GiB)
    assert detect_budgets({"active": "10%", "host": "auto"}) == Budgets(100 * GiB, 250 * GiB)


def test_auto_with_a_gpu_uses_free_device_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[object] = []
    cuda = types.SimpleNamespace(
        is_available=lambda: True,
        mem_get_info=lambda dev: (calls.append(dev), (10 * GiB, 80 * GiB))[1],
    )
    fake_torch = types.SimpleNamespace(cuda=cuda, device=lambda d: f"dev:{d}")
    monkeypatch.setitem(sys.modules, "torch", fake_torch)
    monkeypatch.setattr(devices.importlib.util, "find_spec", lambda name: object())
    monkeypatch.setattr(devices, "available_ram_bytes", lambda: 64 * GiB)
    b = detect_budgets("auto", device="cuda:1")
    assert b == Budgets(int(10 * GiB * devices.GPU_ACTIVE_FRACTION), int(64 * GiB * devices.GPU_HOST_FRACTION))
    assert calls == ["dev:cuda:1"]


def test_no_torch_means_no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(devices.importlib.util, "find_spec", lambda name: None)
    assert devices.gpu_free_bytes() is None


def test_importing_devices_does_not_import_torch() -> None:
    import subprocess

    code = "import sys, modelyard.memory.devices, modelyard.memory.manager; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_rss_bytes_grows_with_an_allocation() -> None:
    before = rss_bytes()
    blob = bytearray(64 * 1024 * 1024)
    blob[::4096] = b"x" * len(blob[::4096])  # touch every page so it is resident
    after = rss_bytes()
    assert before > 0 and after - before >= 32 * 1024 * 1024
    del blob
