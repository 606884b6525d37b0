"""The pure priority decision (modelyard.routing.priority): precedence, header checks, rules."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from modelyard.config.routing import PriorityConfig
from modelyard.errors import InvalidRequestError, PermissionDeniedError
from modelyard.routing.priority import (
    HIGH,
    LEVELS,
    LOW,
    NORMAL,
    PriorityNotAllowedError,
    level_name,
    parse_level,
    request_priority,
)

CFG = PriorityConfig()  # embeddings/classifications/moderations high, prompts >= 2000 tokens low


def decide(cfg: PriorityConfig = CFG, *, key=None, header=None, allowed=True, endpoint="chat.completions", tokens=10):
    return request_priority(
        cfg, key_priority=key, header=header, header_allowed=allowed, endpoint=endpoint, prompt_tokens=tokens
    )


def test_levels_order_high_first():
    assert LEVELS == {"high": 2, "normal": 1, "low": 0}
    assert HIGH > NORMAL > LOW
    assert [level_name(v) for v in (0, 1, 2)] == ["low", "normal", "high"]


def test_nothing_given_is_normal():
    assert decide() == (NORMAL, "default")


@pytest.mark.parametrize(("raw", "level"), [(b"high", HIGH), (b"normal", NORMAL), (b"low", LOW), (b" High ", HIGH),
                                            (b"LOW", LOW), (b"\tnormal", NORMAL)])  # fmt: skip
def test_header_values(raw, level):
    assert decide(header=raw) == (level, "header")


def test_header_beats_key_and_rules():
    # a long embeddings request from a "low" key, asking for high in the header
    assert decide(key="low", header=b"high", endpoint="embeddings", tokens=10**6) == (HIGH, "header")
    assert decide(key="high", header=b"low", endpoint="embeddings") == (LOW, "header")


def test_key_beats_the_rules():
    assert decide(key="low", endpoint="embeddings") == (LOW, "key")  # a batch key stays low on embeddings
    assert decide(key="high", tokens=50_000) == (HIGH, "key")  # an explicit choice is not demoted
    assert decide(key="normal", endpoint="embeddings") == (NORMAL, "key")


def test_endpoint_rule_and_its_precedence_over_long_prompts():
    for ep in ("embeddings", "classifications", "moderations"):
        assert decide(endpoint=ep) == (HIGH, "rule:endpoint")
    assert decide(endpoint="embeddings", tokens=10**6) == (HIGH, "rule:endpoint")
    assert decide(endpoint="completions") == (NORMAL, "default")


def test_long_prompt_rule_at_the_threshold():
    assert decide(tokens=1999) == (NORMAL, "default")
    assert decide(tokens=2000) == (LOW, "rule:long_prompt")
    assert decide(PriorityConfig(long_prompt_tokens=None), tokens=10**9) == (NORMAL, "default")


def test_configured_endpoints_replace_the_defaults():
    cfg = PriorityConfig(endpoints={"completions": "low"})
    assert decide(cfg, endpoint="completions") == (LOW, "rule:endpoint")
    assert decide(cfg, endpoint="embeddings") == (NORMAL, "default")


def test_bad_header_is_400_naming_the_header():
    with pytest.raises(InvalidRequestError) as ei:
        decide(header=b"urgent")
    err = ei.value
    assert (err.status, err.param, err.code) == (400, "x-priority", "invalid_priority")
    assert "urgent" in err.message and "high, normal, low" in err.message
    body = err.body()["error"]
    assert body["type"] == "invalid_request_error" and body["param"] == "x-priority"


@pytest.mark.parametrize("raw", [b"", b"2", b"highest", b"hi gh", b"\xff\xfe", b"x" * 500])
def test_other_bad_headers(raw):
    with pytest.raises(InvalidRequestError) as ei:
        decide(header=raw)
    assert ei.value.param == "x-priority"
    assert len(ei.value.message) < 200  # the echoed value is cut


def test_header_name_follows_the_config():
    cfg = PriorityConfig(header="x-urgency")
    with pytest.raises(InvalidRequestError) as ei:
        decide(cfg, header=b"soon")
    assert ei.value.param == "x-urgency" and ei.value.message.startswith("x-urgency:")


def test_header_from_a_key_that_may_not_set_it_is_403():
    with pytest.raises(PriorityNotAllowedError) as ei:
        decide(header=b"high", allowed=False, key="low")
    err = ei.value
    assert isinstance(err, PermissionDeniedError)
    assert (err.status, err.code, err.param) == (403, "priority_not_allowed", "x-priority")
    assert "allow_priority_header" in err.message
    with pytest.raises(PriorityNotAllowedError):  # even a value that would change nothing
        decide(header=b"normal", allowed=False)


def test_not_allowed_is_checked_before_the_value():
    with pytest.raises(PriorityNotAllowedError):
        decide(header=b"garbage", allowed=False)


def test_disabled_is_normal_and_ignores_the_header():
    cfg = PriorityConfig(enabled=False)
    assert decide(cfg, header=b"garbage", allowed=False, key="high", endpoint="embeddings") == (NORMAL, "disabled")


def test_parse_level_accepts_str_too():
    assert parse_level("priority", "high") == HIGH
    with pytest.raises(InvalidRequestError):
        parse_level("priority", "x")


@given(
    key=st.sampled_from([None, "high", "normal", "low"]),
    header=st.sampled_from([None, b"high", b"normal", b"low"]),
    endpoint=st.sampled_from(["chat.completions", "completions", "embeddings", "moderations", "classifications"]),
    tokens=st.integers(min_value=0, max_value=10**6),
)
def test_precedence_property(key, header, endpoint, tokens):
    level, why = decide(key=key, header=header, endpoint=endpoint, tokens=tokens)
    assert level in (LOW, NORMAL, HIGH)
    if header is not None:
        assert (level, why) == (LEVELS[header.decode()], "header")
    elif key is not None:
        assert (level, why) == (LEVELS[key], "key")
    elif endpoint in CFG.endpoints:
        assert why == "rule:endpoint"
    elif tokens >= 2000:
        assert (level, why) == (LOW, "rule:long_prompt")
    else:
        assert (level, why) == (NORMAL, "default")
