"""What a PaymentIntent's status means for the ProcessPayment step, from the SDK's answer or a webhook."""

from dataclasses import dataclass
from typing import Any

from contracts.payment import PaymentProcessed
from plumbing.errors import BusinessError
from services.payment import errors
from services.payment.money import from_minor

#: Statuses where the customer or the card network still has to act; Stripe's webhook tells the end.
WAITING = frozenset({"requires_action", "processing"})
#: Statuses a compensation may cancel, so the intent can no longer be charged.
CANCELABLE = frozenset({"requires_payment_method", "requires_confirmation", "requires_action", "requires_capture"})


@dataclass(frozen=True)
class Outcome:
    reply: PaymentProcessed | None = None
    error: BusinessError | None = None

    @property
    def waiting(self) -> bool:
        return self.reply is None and self.error is None


def plain(intent: Any) -> dict[str, Any]:
    """The SDK's StripeObject (no longer a dict in stripe 16) as a plain dict."""
    return intent.to_dict() if hasattr(intent, "to_dict") else dict(intent)


def outcome(stripe_intent: Any) -> Outcome:
    intent = plain(stripe_intent)
    status = intent["status"]
    if status == "succeeded":
        return Outcome(
            reply=PaymentProcessed(
                paymentIntentId=intent["id"],
                status=status,
                amount=from_minor(intent["amount"], intent["currency"]),
            )
        )
    if status in WAITING:
        return Outcome()
    last = intent.get("last_payment_error")
    if status == "requires_payment_method" and last:
        return Outcome(error=errors.card_error(last.get("code"), last.get("decline_code"), last.get("message") or ""))
    return Outcome(error=errors.PaymentFailed(f"PaymentIntent {intent['id']} is {status}"))
