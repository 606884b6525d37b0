"""Session affinity's table: pins, expiry on the injected clock, LRU bound, session ids."""

from __future__ import annotations

from modelyard.config.routing import AffinityConfig
from modelyard.routing.affinity import SessionTable, session_of
from modelyard.testing.clock import ManualClock


def test_a_pin_lives_ttl_after_its_last_use() -> None:
    clock = ManualClock()
    table = SessionTable(AffinityConfig(ttl_s=10), clock)
    table.put("s1", "chat", "chat")
    clock.t += 9.9
    pin = table.get("s1")
    assert pin is not None and (pin.model, pin.deployment) == ("chat", "chat")
    table.put("s1", "chat", "chat")  # used again: ten more seconds
    clock.t += 9.9
    assert table.get("s1") is not None
    clock.t += 0.2
    assert table.get("s1") is None and len(table) == 0


def test_the_table_is_bounded_and_drops_the_least_recently_used() -> None:
    clock = ManualClock()
    table = SessionTable(AffinityConfig(max_sessions=3), clock)
    for s in ("a", "b", "c"):
        table.put(s, "m", "m")
        clock.t += 1
    table.put("a", "m", "m/1")  # a is now the most recent
    table.put("d", "m", "m")
    assert len(table) == 3
    assert table.get("b") is None
    assert [table.get(s) is not None for s in ("a", "c", "d")] == [True, True, True]
    assert table.get("a").deployment == "m/1"  # type: ignore[union-attr]


def test_expired_entries_are_pruned_on_put() -> None:
    clock = ManualClock()
    table = SessionTable(AffinityConfig(ttl_s=5), clock)
    for i in range(100):
        table.put(f"s{i}", "m", "m")
    clock.t += 6
    table.put("new", "m", "m")
    assert len(table) == 1


def test_session_id_from_header_then_user_field() -> None:
    cfg = AffinityConfig()
    assert session_of(cfg, b"conv-1", {"user": "alice"}) == "conv-1"
    assert session_of(cfg, None, {"user": "alice"}) == "user:alice"
    assert session_of(cfg, None, {"user": ""}) is None
    assert session_of(cfg, None, {"user": 42}) is None
    assert session_of(AffinityConfig(use_user_field=False), None, {"user": "alice"}) is None
    assert session_of(AffinityConfig(enabled=False), b"conv-1", {}) is None
    assert len(session_of(cfg, b"x" * 10_000, {}) or "") == 256
