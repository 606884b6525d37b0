"""The pure half of virtual keys: key format, verification, field validation, durations and periods."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelyard.epoch import to_us
from modelyard.auth.keys import (
    KEY_PREFIX,
    Duration,
    KeyFieldError,
    VirtualKey,
    add_duration,
    new_key,
    parse_duration,
    period_bounds,
    split_key,
    verify,
)

UTC = dt.timezone.utc
T0 = dt.datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def at(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=UTC)


# --- parse_duration ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [("30s", (30, "s")), ("5m", (5, "m")), ("1h", (1, "h")), ("1d", (1, "d")), ("30d", (30, "d")),
     ("1mo", (1, "mo")), ("12mo", (12, "mo")), ("007d", (7, "d")), ("1200mo", (1200, "mo"))],
)  # fmt: skip
def test_parse_duration_accepts_litellm_forms(text, expected):
    assert parse_duration(text) == Duration(*expected)


@pytest.mark.parametrize(
    "bad",
    ["", "d", "30", "0d", "0mo", "-1d", "+1d", "1.5d", "30D", "1MO", " 30d", "30d ", "30 d", "30w", "1y", "1e3s",
     "3\u0663d", "\uff13d", "30dd", "1mon", "1201mo", "36601d", "99999999999999999999s"],
)  # fmt: skip
def test_parse_duration_rejects_anything_else(bad):
    with pytest.raises(ValueError) as info:
        parse_duration(bad)
    assert repr(bad) in str(info.value)  # the message quotes what it got


@pytest.mark.parametrize("bad", [None, 30, 30.0, True, b"30d", ["30d"]])
def test_parse_duration_rejects_non_strings(bad):
    with pytest.raises(ValueError, match="expected a duration string"):
        parse_duration(bad)


# --- add_duration ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "duration", "expected"),
    [
        (at(2025, 1, 31), "1mo", at(2025, 2, 28)),  # clamped to the month's end
        (at(2024, 1, 31), "1mo", at(2024, 2, 29)),  # leap year
        (at(2024, 1, 31), "2mo", at(2024, 3, 31)),  # from the start, not chained: back to the 31st
        (at(2025, 3, 31), "1mo", at(2025, 4, 30)),
        (at(2025, 12, 15, 8, 30), "1mo", at(2026, 1, 15, 8, 30)),  # year wrap, time kept
        (at(2024, 2, 29), "12mo", at(2025, 2, 28)),
        (at(2024, 2, 29), "48mo", at(2028, 2, 29)),
        (at(2100, 1, 31), "1mo", at(2100, 2, 28)),  # 2100 is not a leap year
        (at(2000, 1, 31), "1mo", at(2000, 2, 29)),  # 2000 is
        (at(2025, 1, 1), "30s", at(2025, 1, 1, 0, 0, 30)),
        (at(2025, 1, 1), "90m", at(2025, 1, 1, 1, 30)),
        (at(2025, 1, 1), "25h", at(2025, 1, 2, 1)),
        (at(2024, 2, 28), "2d", at(2024, 3, 1)),
    ],
)
def test_add_duration(start, duration, expected):
    assert add_duration(start, parse_duration(duration)) == expected


def test_add_duration_keeps_the_timezone():
    tz = dt.timezone(dt.timedelta(hours=5))
    got = add_duration(dt.datetime(2025, 1, 31, 23, 0, tzinfo=tz), Duration(1, "mo"))
    assert got == dt.datetime(2025, 2, 28, 23, 0, tzinfo=tz) and got.tzinfo is tz


# --- period_bounds -----------------------------------------------------------------------------


def _reference(anchor: dt.datetime, d: Duration, now: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    """The definition, walked period by period (slow, obviously right)."""
    k = 0
    while add_duration(anchor, Duration((k + 1) * d.amount, d.unit)) <= now:
        k += 1
    return add_duration(anchor, Duration(k * d.amount, d.unit)), add_duration(anchor, Duration((k + 1) * d.amount, d.unit))


def test_period_bounds_fixed_units():
    d = Duration(1, "h")
    assert period_bounds(T0, d, T0) == (T0, T0 + dt.timedelta(hours=1))
    assert period_bounds(T0, d, T0 + dt.timedelta(hours=5, minutes=30)) == (
        T0 + dt.timedelta(hours=5), T0 + dt.timedelta(hours=6))  # fmt: skip
    # a boundary belongs to the period it starts
    assert period_bounds(T0, d, T0 + dt.timedelta(hours=6))[0] == T0 + dt.timedelta(hours=6)
    assert period_bounds(T0, d, T0 + dt.timedelta(hours=6, microseconds=-1))[1] == T0 + dt.timedelta(hours=6)


def test_period_bounds_before_the_anchor_is_the_first_period():
    for d in (Duration(30, "d"), Duration(1, "mo"), Duration(5, "s")):
        assert period_bounds(T0, d, T0 - dt.timedelta(days=400)) == (T0, add_duration(T0, d))


def test_period_bounds_many_fixed_periods():
    d = Duration(30, "d")
    for k in range(0, 1500, 7):
        start = T0 + k * dt.timedelta(days=30)
        for offset in (dt.timedelta(0), dt.timedelta(days=12, seconds=5), dt.timedelta(days=30, microseconds=-1)):
            assert period_bounds(T0, d, start + offset) == (start, start + dt.timedelta(days=30))


def test_period_bounds_months_from_the_31st():
    anchor = at(2024, 1, 31, 10)
    d = Duration(1, "mo")
    assert period_bounds(anchor, d, at(2024, 2, 15)) == (anchor, at(2024, 2, 29, 10))
    assert period_bounds(anchor, d, at(2024, 2, 29, 10)) == (at(2024, 2, 29, 10), at(2024, 3, 31, 10))
    assert period_bounds(anchor, d, at(2024, 3, 31, 9, 59)) == (at(2024, 2, 29, 10), at(2024, 3, 31, 10))
    assert period_bounds(anchor, d, at(2024, 3, 31, 10)) == (at(2024, 3, 31, 10), at(2024, 4, 30, 10))
    assert period_bounds(anchor, d, at(2025, 2, 28, 12)) == (at(2025, 2, 28, 10), at(2025, 3, 31, 10))


def test_period_bounds_months_same_month_before_the_anchor_day():
    anchor = at(2025, 1, 15, 12)
    assert period_bounds(anchor, Duration(1, "mo"), at(2025, 6, 15, 11, 59)) == (at(2025, 5, 15, 12), at(2025, 6, 15, 12))
    assert period_bounds(anchor, Duration(3, "mo"), at(2025, 7, 15, 11)) == (at(2025, 4, 15, 12), at(2025, 7, 15, 12))
    assert period_bounds(anchor, Duration(3, "mo"), at(2025, 7, 15, 12)) == (at(2025, 7, 15, 12), at(2025, 10, 15, 12))


def test_period_bounds_many_month_periods_match_the_definition():
    anchor = at(2023, 8, 31, 23, 59, 59)
    for d in (Duration(1, "mo"), Duration(2, "mo"), Duration(7, "mo")):
        now = anchor - dt.timedelta(days=3)
        while now < anchor + dt.timedelta(days=3650):
            assert period_bounds(anchor, d, now) == _reference(anchor, d, now)
            now += dt.timedelta(days=6, hours=5)


def test_period_bounds_now_in_another_timezone():
    anchor = at(2025, 1, 31)
    plus14 = dt.timezone(dt.timedelta(hours=14))
    now = dt.datetime(2025, 3, 1, 5, tzinfo=plus14)  # 2025-02-28 15:00 UTC
    assert period_bounds(anchor, Duration(1, "mo"), now) == (at(2025, 2, 28), at(2025, 3, 31))


def test_period_bounds_needs_aware_datetimes():
    with pytest.raises(ValueError, match="timezone-aware"):
        period_bounds(dt.datetime(2025, 1, 1), Duration(1, "d"), T0)


_units = st.sampled_from([("s", 100_000), ("m", 5000), ("h", 500), ("d", 400), ("mo", 30)])


@settings(max_examples=400, deadline=None)
@given(
    anchor=st.datetimes(min_value=dt.datetime(2000, 1, 1), max_value=dt.datetime(2100, 1, 1), timezones=st.just(UTC)),
    offset_s=st.integers(min_value=-10 * 86_400, max_value=40 * 366 * 86_400),
    unit=_units,
    data=st.data(),
)
def test_period_bounds_property(anchor, offset_s, unit, data):
    u, max_amount = unit
    d = Duration(data.draw(st.integers(min_value=1, max_value=max_amount)), u)
    now = anchor + dt.timedelta(seconds=offset_s, microseconds=data.draw(st.integers(0, 999_999)))
    start, end = period_bounds(anchor, d, now)
    if now >= anchor:
        assert start <= now < end
    else:
        assert (start, end) == (anchor, add_duration(anchor, d))
    # Both bounds lie on the anchor's grid (anchor + k·d, computed from the anchor).
    if u != "mo":
        step = end - start
        assert step == add_duration(anchor, d) - anchor and (start - anchor) % step == dt.timedelta(0)
        assert end == add_duration(start, d)
    else:
        k = (start.year - anchor.year) * 12 + start.month - anchor.month
        assert k % d.amount == 0 and k >= 0
        assert start == add_duration(anchor, Duration(k, "mo"))
        assert end == add_duration(anchor, Duration(k + d.amount, "mo"))
        if anchor.day <= 28:  # no clamping: chaining from the start is the same thing
            assert end == add_duration(start, d)


# --- split_key / verify ------------------------------------------------------------------------


def test_new_key_plaintext_format_and_verification():
    plaintext, key = new_key(now=T0)
    assert len(plaintext) == 66 and plaintext.startswith(KEY_PREFIX)
    body = plaintext[len(KEY_PREFIX) :]
    assert all(c in "0123456789abcdef" for c in body)
    key_id, secret = split_key(plaintext)
    assert key_id == key.id and len(key_id) == 12 and len(secret) == 48
    assert verify(key, secret)
    assert len(key.salt) == 16 and len(key.digest) == 32
    assert secret.encode() not in key.digest and secret not in repr(key)


def test_keys_are_unique():
    made = [new_key(now=T0) for _ in range(200)]
    assert len({p for p, _ in made}) == len({k.id for _, k in made}) == len({k.salt for _, k in made}) == 200


def test_verify_rejects_wrong_secrets():
    plaintext, key = new_key(now=T0)
    other, _ = new_key(now=T0)
    _, secret = split_key(plaintext)
    flipped = ("0" if secret[0] != "0" else "1") + secret[1:]
    assert not verify(key, flipped)
    assert not verify(key, split_key(other)[1])
    assert not verify(key, "")
    assert not verify(key, secret.upper())


def _valid() -> str:
    return KEY_PREFIX + "0123456789ab" + "c" * 48


@pytest.mark.parametrize(
    "bad",
    [
        "", KEY_PREFIX, "sk-xx-" + "a" * 60, "SK-MY-" + "a" * 60, KEY_PREFIX + "A" * 60,  # upper-case hex
        _valid()[:-1], _valid() + "a", KEY_PREFIX + "g" * 60, KEY_PREFIX + "\u0663" * 60,  # Arabic-Indic digits
        KEY_PREFIX + "\uff41" * 60,  # full-width a
        KEY_PREFIX + "a" * 59 + "\n", " " + _valid()[1:], "Bearer " + _valid(), _valid()[:-1] + "é",
        "x" * 1_000_000, KEY_PREFIX + "a" * 1_000_000, None, 123, b"sk-my-" + b"a" * 60,
    ],
)  # fmt: skip
def test_split_key_rejects_malformed_input(bad):
    assert split_key(bad) is None


def test_split_key_accepts_exactly_the_format():
    assert split_key(_valid()) == ("0123456789ab", "c" * 48)


# --- new_key validation ------------------------------------------------------------------------


def test_new_key_keeps_every_field():
    tz = dt.timezone(dt.timedelta(hours=-3))
    now = dt.datetime(2025, 1, 31, 21, 0, 0, 123456, tzinfo=tz)  # 2025-02-01 00:00:00.123456 UTC
    _, key = new_key(
        now=now, alias="ci", team_id="team-a", models=["chat", "embed", "chat"], rpm_limit=0, tpm_limit=1000,
        max_budget=0.1, budget_duration="1mo", duration="90d", metadata={"owner": "ops"},
    )  # fmt: skip
    assert key.created_at == now and key.created_at.tzinfo == UTC
    assert key.expires_at == key.created_at + dt.timedelta(days=90)
    assert key.models == ("chat", "embed")  # deduplicated, order kept
    assert (key.alias, key.team_id, key.rpm_limit, key.tpm_limit) == ("ci", "team-a", 0, 1000)
    assert key.max_budget == Decimal("0.1")  # the float as written, not 0.1000000000000000055…
    assert key.budget_duration == "1mo" and key.revoked_at is None
    assert key.updated_us == to_us(now) and key.metadata == {"owner": "ops"}


@pytest.mark.parametrize(
    ("value", "expected"),
    [(10, Decimal(10)), ("2.50", Decimal("2.5")), (Decimal("1.2345678915"), Decimal("1.234567892")), (0, Decimal(0)),
     (1e9, Decimal(10**9)), ("1e-12", Decimal(0))],
)  # fmt: skip
def test_new_key_max_budget_forms(value, expected):
    assert new_key(now=T0, max_budget=value)[1].max_budget == expected


def test_new_key_defaults():
    _, key = new_key(now=T0)
    assert key.models == () and key.expires_at is None and key.max_budget is None and key.metadata == {}
    assert (key.alias, key.team_id, key.rpm_limit, key.tpm_limit, key.budget_duration) == (None,) * 5
    assert key.priority is None and key.allow_priority_header is False  # the rules decide; no header


@pytest.mark.parametrize("level", ["high", "normal", "low"])
def test_new_key_priority_levels(level):
    _, key = new_key(now=T0, priority=level, allow_priority_header=True)
    assert (key.priority, key.allow_priority_header) == (level, True)
    assert key.to_info()["priority"] == level and key.to_info()["allow_priority_header"] is True


@pytest.mark.parametrize(
    ("kwargs", "param", "says"),
    [
        ({"alias": 5}, "key_alias", "string"),
        ({"alias": "  "}, "key_alias", "empty"),
        ({"alias": "a" * 257}, "key_alias", "at most"),
        ({"team_id": ["t"]}, "team_id", "string"),
        ({"team_id": ""}, "team_id", "empty"),
        ({"models": "chat"}, "models", "list"),
        ({"models": 3}, "models", "list"),
        ({"models": ["chat", 1]}, "models", "item 1"),
        ({"models": [""]}, "models", "item 0"),
        ({"rpm_limit": -1}, "rpm_limit", ">= 0"),
        ({"rpm_limit": True}, "rpm_limit", "bool"),
        ({"rpm_limit": 1.5}, "rpm_limit", "float"),
        ({"rpm_limit": "10"}, "rpm_limit", "str"),
        ({"rpm_limit": 2**63}, "rpm_limit", "at most"),
        ({"tpm_limit": -5}, "tpm_limit", ">= 0"),
        ({"tpm_limit": False}, "tpm_limit", "bool"),
        ({"max_budget": -0.01}, "max_budget", ">= 0"),
        ({"max_budget": True}, "max_budget", "bool"),
        ({"max_budget": "ten"}, "max_budget", "'ten'"),
        ({"max_budget": ""}, "max_budget", "number"),
        ({"max_budget": float("nan")}, "max_budget", "finite"),
        ({"max_budget": float("inf")}, "max_budget", "finite"),
        ({"max_budget": "Infinity"}, "max_budget", "finite"),
        ({"max_budget": "1e400"}, "max_budget", "at most"),
        ({"max_budget": [1]}, "max_budget", "list"),
        ({"budget_duration": "30x"}, "budget_duration", "'30x'"),
        ({"budget_duration": 30}, "budget_duration", "int"),
        ({"budget_duration": "0d"}, "budget_duration", "positive"),
        ({"duration": "forever"}, "duration", "'forever'"),
        ({"duration": "-1d"}, "duration", "'-1d'"),
        ({"metadata": "x"}, "metadata", "object"),
        ({"metadata": {1: "a"}}, "metadata", "keys"),
        ({"metadata": {"a": 1}}, "metadata", "values"),
        ({"metadata": {f"k{i}": "v" for i in range(65)}}, "metadata", "at most 64"),
        ({"priority": "urgent"}, "priority", "'urgent'"),
        ({"priority": "HIGH"}, "priority", "high, normal, low"),  # the stored value is exact: no case folding
        ({"priority": 2}, "priority", "int"),
        ({"priority": ""}, "priority", "''"),
        ({"allow_priority_header": "true"}, "allow_priority_header", "str"),
        ({"allow_priority_header": 1}, "allow_priority_header", "true or false"),
    ],
)
def test_new_key_rejects_bad_fields(kwargs, param, says):
    with pytest.raises(KeyFieldError) as info:
        new_key(now=T0, **kwargs)
    assert info.value.param == param
    assert isinstance(info.value, ValueError)
    assert str(info.value).startswith(f"{param}: ") and says in str(info.value)


def test_new_key_needs_an_aware_now():
    with pytest.raises(ValueError, match="timezone-aware"):
        new_key(now=dt.datetime(2025, 1, 1))


# --- what may be shown -------------------------------------------------------------------------


def test_to_info_and_display_never_show_secret_salt_or_digest():
    plaintext, key = new_key(now=T0, alias="a", max_budget="12.5", duration="1d", metadata={"x": "y"})
    secret = split_key(plaintext)[1]
    info = key.to_info()
    assert set(info) == {"token", "key_alias", "team_id", "models", "rpm_limit", "tpm_limit", "max_budget",
                         "budget_duration", "expires", "created_at", "revoked", "metadata", "priority",
                         "allow_priority_header"}  # fmt: skip
    text = json.dumps(info)  # also proves it is plain JSON
    for hidden in (secret, key.salt.hex(), key.digest.hex(), plaintext):
        assert hidden not in text and hidden not in key.display()
    assert info["token"] == key.id and info["max_budget"] == 12.5 and info["revoked"] is False
    assert info["expires"] == "2025-03-02T12:00:00+00:00" and info["created_at"] == T0.isoformat()
    assert key.display() == f"{KEY_PREFIX}{key.id}…"


def test_to_info_of_a_revoked_key():
    _, key = new_key(now=T0)
    fields = {s: getattr(key, s) for s in VirtualKey.__slots__}
    revoked = VirtualKey(**{**fields, "revoked_at": T0})
    assert revoked.to_info()["revoked"] is True and revoked.to_info()["expires"] is None
