"""Argument types of orderctl's options: each refuses a bad value with one line naming it (argparse's usage
error, exit 2), before anything connects."""

import argparse
from decimal import Decimal, InvalidOperation


def count(value: str) -> int:
    """A whole number, 0 or more (a quantity, a limit)."""
    try:
        number = int(value)
    except ValueError:
        number = -1
    if number < 0:
        raise argparse.ArgumentTypeError(f"invalid number {value!r}: a whole number, 0 or more")
    return number


def seconds(value: str) -> float:
    """A duration in seconds, 0 or more and finite (a wait, a timeout)."""
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if not 0 <= number < float("inf"):
        raise argparse.ArgumentTypeError(f"invalid duration {value!r}: seconds, e.g. 30 or 2.5")
    return number


def amount(value: str) -> Decimal:
    """Money in the order's currency: more than 0, at most two decimals."""
    try:
        money = Decimal(value)
    except InvalidOperation:
        money = Decimal("NaN")
    if not money.is_finite() or money <= 0 or money.as_tuple().exponent < -2:  # type: ignore[operator]
        raise argparse.ArgumentTypeError(f"invalid amount {value!r}: more than 0, e.g. 12.50")
    return money
