"""Stripe's documented test PaymentMethods and how each one behaves.

Ids and outcomes follow https://docs.stripe.com/testing ("Declined payments",
"3D Secure"): both the ``pm_card_chargeDeclined*`` and the newer
``pm_card_visa_chargeDeclined*`` spellings are accepted.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Decline:
    """What the issuer answers: becomes the 402 error and ``last_payment_error``."""

    code: str
    decline_code: str
    message: str
    param: str | None = None


@dataclass(frozen=True)
class SimCard:
    """Card details plus the simulated behaviour on confirmation."""

    brand: str
    last4: str
    funding: str = "credit"
    requires_auth: bool = False  # 3-D Secure challenge on every payment
    decline: Decline | None = None  # applied after any authentication


GENERIC = Decline("card_declined", "generic_decline", "Your card was declined.")
INSUFFICIENT = Decline("card_declined", "insufficient_funds", "Your card has insufficient funds.")
AUTH_REQUIRED = Decline(
    "authentication_required",
    "authentication_required",
    "Your card was declined. This transaction requires authentication.",
)

_DECLINING: dict[str, SimCard] = {
    "chargeDeclined": SimCard("visa", "0002", decline=GENERIC),
    "chargeDeclinedInsufficientFunds": SimCard("visa", "9995", decline=INSUFFICIENT),
    "chargeDeclinedLostCard": SimCard(
        "visa", "9987", decline=Decline("card_declined", "lost_card", "Your card was declined.")
    ),
    "chargeDeclinedStolenCard": SimCard(
        "visa", "9979", decline=Decline("card_declined", "stolen_card", "Your card was declined.")
    ),
    "chargeDeclinedFraudulentCard": SimCard(
        "visa", "0019", decline=Decline("card_declined", "fraudulent", "Your card was declined.")
    ),
    "chargeDeclinedExpiredCard": SimCard(
        "visa",
        "0069",
        decline=Decline("expired_card", "expired_card", "Your card has expired.", "exp_month"),
    ),
    "chargeDeclinedIncorrectCvc": SimCard(
        "visa",
        "0127",
        decline=Decline("incorrect_cvc", "incorrect_cvc", "Your card's security code is incorrect.", "cvc"),
    ),
    "chargeDeclinedProcessingError": SimCard(
        "visa",
        "0119",
        decline=Decline(
            "processing_error",
            "processing_error",
            "An error occurred while processing your card. Try again in a little bit.",
        ),
    ),
}

TEST_CARDS: dict[str, SimCard] = {
    "pm_card_visa": SimCard("visa", "4242"),
    "pm_card_visa_debit": SimCard("visa", "5556", funding="debit"),
    "pm_card_mastercard": SimCard("mastercard", "4444"),
    "pm_card_amex": SimCard("amex", "8431"),
    "pm_card_authenticationRequired": SimCard("visa", "3184", requires_auth=True),
    "pm_card_threeDSecure2Required": SimCard("visa", "3220", requires_auth=True),
    "pm_card_authenticationRequiredChargeDeclinedInsufficientFunds": SimCard(
        "visa", "3178", requires_auth=True, decline=INSUFFICIENT
    ),
    **{f"pm_card_{name}": card for name, card in _DECLINING.items()},
    **{f"pm_card_visa_{name}": card for name, card in _DECLINING.items()},
}


def payment_method_object(pm_id: str, card: SimCard) -> dict[str, Any]:
    """A ``payment_method`` object as Stripe returns it for a test card."""
    return {
        "id": pm_id,
        "object": "payment_method",
        "allow_redisplay": "unspecified",
        "billing_details": {"address": None, "email": None, "name": None, "phone": None},
        "card": {
            "brand": card.brand,
            "checks": {
                "address_line1_check": None,
                "address_postal_code_check": None,
                "cvc_check": "unchecked",
            },
            "country": "US",
            "display_brand": card.brand,
            "exp_month": 12,
            "exp_year": time.gmtime().tm_year + 2,
            "funding": card.funding,
            "last4": card.last4,
            "networks": {"available": [card.brand], "preferred": None},
            "three_d_secure_usage": {"supported": True},
        },
        "created": int(time.time()),
        "customer": None,
        "livemode": False,
        "metadata": {},
        "type": "card",
    }
