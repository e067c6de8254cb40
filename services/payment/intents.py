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
    """The SDK's StripeObject (no longer a dict in stripe 16) as a plain dict of its top-level fields.

    Shallow: nested objects stay as the SDK built them. Only top-level fields are read (:func:`outcome`
    converts the one nested object it reads), and a recursive copy of an intent cost about 35 µs against
    under 1 µs for this."""
    return intent.to_dict(recursive=False) if hasattr(intent, "to_dict") else dict(intent)


def outcome(intent: Any) -> Outcome:
    """What ``intent`` (the SDK's object, or a dict of it) means for ProcessPayment. Reads its fields in place
    rather than converting the whole object first."""
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
    raw = intent["last_payment_error"] if "last_payment_error" in intent else None
    last = plain(raw) if raw is not None else None
    if status == "requires_payment_method" and last:
        return Outcome(error=errors.card_error(last.get("code"), last.get("decline_code"), last.get("message") or ""))
    return Outcome(error=errors.PaymentFailed(f"PaymentIntent {intent['id']} is {status}"))
