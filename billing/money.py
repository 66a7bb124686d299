"""Money arithmetic: integer minor units and the one rounding rule. Django-free."""

from __future__ import annotations

from fractions import Fraction

CURRENCY = "usd"
CREDIT = "credit"  # contributor credits: reputation points, never money


def cents_for(*, quantity: int, price_cents: Fraction | int, per: int = 1) -> int:
    """Cents owed for ``quantity`` units at ``price_cents`` per ``per`` units.

    The single rounding rule of the platform: exact rational arithmetic, then half-up to a whole
    cent. Negative quantities are refused: refunds and corrections are separate entries.
    """
    if quantity < 0:
        raise ValueError("quantity must not be negative")
    if per <= 0:
        raise ValueError("per must be positive")
    exact = Fraction(quantity) * Fraction(price_cents) / per
    if exact < 0:
        raise ValueError("price must not be negative")
    return (2 * exact.numerator + exact.denominator) // (2 * exact.denominator)


def format_cents(cents: int, currency: str = CURRENCY) -> str:
    """Human form: ``$12.34`` (or ``12 credits``)."""
    if currency == CREDIT:
        return f"{cents:,} credits"
    sign = "-" if cents < 0 else ""
    return f"{sign}${abs(cents) // 100:,}.{abs(cents) % 100:02d}"
