from decimal import Decimal

import pytest

from modelyard.accounting.pricing import cost, from_nano, to_nano
from modelyard.config.schema import Price


def test_priced_cost_is_exact_decimal():
    c, priced = cost(Price(input_per_1k=0.0015, output_per_1k=0.002), 1000, 500)
    assert priced is True
    assert c == Decimal("0.0025")  # 1.5e-3 + 1.0e-3, no float drift
    assert isinstance(c, Decimal)


def test_unpriced_model_costs_zero_and_is_flagged():
    c, priced = cost(None, 1234, 567)
    assert (c, priced) == (Decimal(0), False)


def test_zero_tokens_and_free_price():
    assert cost(Price(input_per_1k=0.01, output_per_1k=0.03), 0, 0) == (Decimal(0), True)
    assert cost(Price(), 10_000, 10_000) == (Decimal(0), True)  # explicit 0/0 price: free, but priced


def test_rounds_half_even_to_nano_units():
    # 0.0000015 per 1k tokens * 1 token = 1.5e-9 -> 2e-9 (half-even), 2.5e-9 -> 2e-9
    assert cost(Price(input_per_1k=0.0000015), 1, 0)[0] == Decimal("0.000000002")
    assert cost(Price(input_per_1k=0.0000025), 1, 0)[0] == Decimal("0.000000002")
    assert cost(Price(input_per_1k=0.0000035), 1, 0)[0] == Decimal("0.000000004")
    assert cost(Price(output_per_1k=0.1), 0, 1)[0] == Decimal("0.0001")


def test_sum_of_many_costs_does_not_drift():
    one, _ = cost(Price(input_per_1k=0.1, output_per_1k=0.2), 1, 1)
    assert sum([one] * 1_000_000, Decimal(0)) == Decimal("300")


def test_negative_tokens_rejected():
    with pytest.raises(ValueError):
        cost(Price(), -1, 0)


def test_nano_round_trip():
    for s in ("0", "0.000000001", "123.456789012", "0.0025"):
        assert from_nano(to_nano(Decimal(s))) == Decimal(s)
