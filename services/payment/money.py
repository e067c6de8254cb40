"""Stripe counts money in the currency's smallest unit."""

from decimal import Decimal

# Stripe's zero-decimal currencies.
ZERO_DECIMAL = frozenset("bif clp djf gnf jpy kmf krw mga pyg rwf ugx vnd vuv xaf xof xpf".split())


def to_minor(amount: Decimal, currency: str) -> int:
    factor = 1 if currency.lower() in ZERO_DECIMAL else 100
    return int((amount * factor).to_integral_value())


def from_minor(amount: int, currency: str) -> Decimal:
    factor = 1 if currency.lower() in ZERO_DECIMAL else 100
    return (Decimal(amount) / factor).quantize(Decimal("0.01"))
