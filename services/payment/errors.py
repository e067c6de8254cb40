"""Payment's errors with the reference guide's names, and Stripe's errors mapped onto them."""

import stripe

from plumbing.errors import (
    SERVICE_THROTTLED,
    SERVICE_UNAVAILABLE,
    BusinessError,
    NamedError,
    TransientError,
)

SERVICE_CONNECTION = "Service.ConnectionError"


class PaymentDeclined(BusinessError):
    error_name = "PaymentDeclined"


class InsufficientFunds(BusinessError):
    error_name = "InsufficientFunds"


class CardError(BusinessError):
    error_name = "CardError"


class PaymentFailed(BusinessError):
    error_name = "PaymentFailed"


class RefundFailed(BusinessError):
    error_name = "RefundFailed"


class RefundExceedsCharge(BusinessError):
    """A refund above what the charge still holds (captured less refunded, as Stripe counts it): refused by
    Stripe, so no money moved. A manual refund's amount is checked here, where the truth is."""

    error_name = "RefundExceedsCharge"


def card_error(code: str | None, decline_code: str | None, message: str) -> BusinessError:
    """card_declined is PaymentDeclined, insufficient_funds InsufficientFunds, any other card error CardError."""
    if decline_code == "insufficient_funds" or code == "insufficient_funds":
        return InsufficientFunds(message)
    if code == "card_declined":
        return PaymentDeclined(message)
    return CardError(f"{code}: {message}")


def from_stripe(exc: stripe.StripeError) -> NamedError:
    """Name a Stripe error as the guide does; transient faults keep names the Retry tables know."""
    message = exc.user_message or str(exc)
    if isinstance(exc, stripe.CardError):
        decline = getattr(exc.error, "decline_code", None) if exc.error else None
        return card_error(exc.code, decline, message)
    if isinstance(exc, stripe.RateLimitError):
        return TransientError(message, name=SERVICE_THROTTLED)
    if isinstance(exc, stripe.APIConnectionError):
        return TransientError(message, name=SERVICE_CONNECTION)
    if (exc.http_status or 0) >= 500 or isinstance(exc, stripe.APIError):
        return TransientError(message, name=SERVICE_UNAVAILABLE)
    return PaymentFailed(f"{type(exc).__name__}: {message}")
