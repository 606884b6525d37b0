"""Cost of one response: a pure function of the configured price and the token counts.

Money is ``Decimal`` quantized to 1e-9 currency units (nano-units), half-even: prices in the config
are floats (``Price.input_per_1k``), and summing floats over a million rows drifts, so each price is
taken at its shortest decimal repr (``0.0015`` stays ``0.0015``, not ``0.00149999…``) and every cost
is exact to the nano-unit. The store keeps costs as integer nano-units for the same reason.

A model without a ``Price`` costs 0 and is flagged *unpriced*, so a report can say "N responses had
no price" instead of silently under-reporting spend. A ``Price`` of 0/0 is a deliberate "free" and
counts as priced.
"""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal

from modelyard.config.schema import Price

NANO = Decimal("0.000000001")
_ZERO = Decimal(0).quantize(NANO)
_THOUSAND = Decimal(1000)


def to_decimal(value: float | int | str | Decimal) -> Decimal:
    """A price as written, not as its binary float (``repr`` is the shortest round-tripping form)."""
    if isinstance(value, Decimal):
        return value
    return Decimal(repr(value)) if isinstance(value, float) else Decimal(value)


def cost(price: Price | None, prompt_tokens: int, completion_tokens: int) -> tuple[Decimal, bool]:
    """``(cost, priced)``: cost in currency units, quantized to 1e-9; ``priced`` False without a price."""
    if prompt_tokens < 0 or completion_tokens < 0:
        raise ValueError(f"token counts must be >= 0, got prompt={prompt_tokens} completion={completion_tokens}")
    if price is None:
        return _ZERO, False
    total = (to_decimal(price.input_per_1k) * prompt_tokens + to_decimal(price.output_per_1k) * completion_tokens) / _THOUSAND
    return total.quantize(NANO, rounding=ROUND_HALF_EVEN), True


def to_nano(amount: Decimal) -> int:
    """Integer nano-units (what the store keeps)."""
    return int(amount.scaleb(9).to_integral_value(rounding=ROUND_HALF_EVEN))


def from_nano(nano: int) -> Decimal:
    return (Decimal(int(nano)) * NANO).quantize(NANO)
